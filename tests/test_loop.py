"""The loop's own logic with instant fake backends: repeats, clauses, seeds, limits, control, resume."""

from __future__ import annotations

import json
import threading

import pytest

from fakes import FakeCaptioner, FakePainter, factory, start_image
from truthloop import events as ev
from truthloop.config import RunConfig
from truthloop.loop import LoopControl, TruthLoop, cut_prompt
from truthloop.store import read_run


def make_config(**loop_options) -> RunConfig:
    config = RunConfig(input_image="start.png")
    for key, value in loop_options.items():
        setattr(config.loop, key, value)
    return config


def run_loop(tmp_path, script, config=None, painter=None, control=None, name="run", events=None,
             start="start, s"):
    config = config or make_config(clauses=1)
    painter = painter or FakePainter(seed_mode=config.generate.seed_mode)
    captioner = FakeCaptioner(script, start=start)
    loop = TruthLoop(config, tmp_path / name, factory(captioner, painter),
                     on_event=(events.append if events is not None else lambda e: None),
                     control=control, input_image=start_image())
    return loop.run(), read_run(tmp_path / name)


def fed(view):
    return [r.fed_prompt for r in view.records]


def test_cut_prompt_keeps_text_exactly():
    caption = "arafed man looking at his phone, yee chong,telegram sticker"
    assert cut_prompt(caption, 1) == "arafed man looking at his phone"
    assert cut_prompt(caption, 2) == "arafed man looking at his phone, yee chong"
    assert cut_prompt(caption, 0) == caption
    assert cut_prompt(caption, 9) == caption


def test_fixed_point_is_detected_before_drawing_again(tmp_path):
    script = {"start": "man, phone", "man": "golf course, green", "golf course": "golf course, sky"}
    summary, view = run_loop(tmp_path, script)
    assert fed(view) == ["start", "man", "golf course", "golf course"]
    assert summary["status"] == "converged"
    assert summary["cycle"] == {"start": 2, "length": 1, "kind": "fixed_point", "found_at": 3}
    assert summary["truth_prompts"] == ["golf course"]
    assert summary["truth_images"] == ["images/0002.png"]
    last = view.records[-1]
    assert last.repeat_of == 2 and last.image is None  # nothing drawn for the repeat
    assert summary["iterations"] == 3


def test_cycle_start_and_length(tmp_path):
    script = {"start": "a, 1", "a": "b, 2", "b": "c, 3", "c": "b, 4"}
    summary, view = run_loop(tmp_path, script)
    assert fed(view) == ["start", "a", "b", "c", "b"]
    assert summary["cycle"]["start"] == 2
    assert summary["cycle"]["length"] == 2
    assert summary["cycle"]["kind"] == "cycle"
    assert summary["truth_prompts"] == ["b", "c"]


def test_whole_caption_compared_when_clauses_zero(tmp_path):
    # With the whole caption compared, "x, 1" and "x, 2" differ: no repeat where clauses=1 has one.
    script = {"start, s": "x, 1", "x, 1": "x, 2", "x, 2": "x, 1"}
    summary, view = run_loop(tmp_path, script, config=make_config(clauses=0))
    assert fed(view) == ["start, s", "x, 1", "x, 2", "x, 1"]
    assert summary["cycle"]["start"] == 1 and summary["cycle"]["length"] == 2
    summary1, view1 = run_loop(tmp_path, {"start": "x, 1", "x": "x, 2"}, name="cut1",
                               config=make_config(clauses=1))
    assert fed(view1) == ["start", "x", "x"]


def test_feed_full_compares_the_cut_but_draws_the_whole_caption(tmp_path):
    script = {"start, s": "a, 1", "a, 1": "a, 2"}
    painter = FakePainter()
    summary, view = run_loop(tmp_path, script, config=make_config(clauses=1, feed="full"),
                             painter=painter)
    assert painter.painted == ["start, s", "a, 1"]
    assert [r.compared for r in view.records] == ["start", "a", "a"]
    assert summary["status"] == "converged"
    assert summary["truth_prompts"] == ["a, 1"]


def test_max_iters_stops_a_run_that_never_repeats(tmp_path):
    script = {f"p{i}": f"p{i + 1}, x" for i in range(50)}
    summary, view = run_loop(tmp_path, script, config=make_config(clauses=1, max_iters=5),
                             start="p0, x")
    assert summary["status"] == "max_iters"
    assert summary["iterations"] == 5 and len(view.records) == 5
    assert summary["cycle"] is None


def test_prompt_start_draws_first(tmp_path):
    config = RunConfig(start_prompt="a red car, fast")
    config.loop.clauses = 1
    painter = FakePainter()
    captioner = FakeCaptioner({"a red car, fast": "car, road", "car": "car, blue"})
    loop = TruthLoop(config, tmp_path / "p", factory(captioner, painter))
    summary = loop.run()
    view = read_run(tmp_path / "p")
    assert view.records[0].caption is None
    assert painter.painted[0] == "a red car, fast"  # the user's prompt is drawn as given
    assert fed(view) == ["a red car, fast", "car", "car"]
    assert summary["cycle"]["start"] == 1
    assert view.input_path is None


def test_reseed_gives_same_image_for_same_prompt_shared_does_not():
    reseed, shared = FakePainter(seed_mode="reseed"), FakePainter(seed_mode="shared")
    noop = lambda step, total: None  # noqa: E731
    assert reseed.paint("x", noop).tobytes() == reseed.paint("x", noop).tobytes()
    images = {shared.paint("x", noop).tobytes() for _ in range(12)}
    assert len(images) > 1


def test_confirm_iters_keeps_going_and_checks_the_cycle(tmp_path):
    script = {"start": "a, 1", "a": "b, 2", "b": "a, 3"}
    summary, view = run_loop(tmp_path, script, config=make_config(clauses=1, confirm_iters=3))
    assert fed(view) == ["start", "a", "b", "a", "b", "a", "b"]
    assert summary["cycle"] == {"start": 1, "length": 2, "kind": "cycle", "found_at": 3}
    assert summary["cycle_held"] is True
    assert summary["confirmed_iterations"] == 3


def test_stop_mid_denoising_leaves_a_consistent_run(tmp_path):
    control = LoopControl()
    calls = {"n": 0}

    def hook(step):
        calls["n"] += 1
        if calls["n"] == 4 * 2 + 2:  # third image, second denoising step
            control.stop()

    painter = FakePainter(step_hook=hook)
    script = {f"p{i}": f"p{i + 1}, x" for i in range(50)}
    summary, view = run_loop(tmp_path, script, painter=painter, control=control, start="p0, x")
    assert summary["status"] == "stopped"
    assert [r.index for r in view.records] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == \
        ["0000.png", "0001.png"]
    assert view.problems == []


def test_pause_then_step_runs_exactly_one_iteration(tmp_path):
    control = LoopControl()
    control.pause()
    events: list = []
    done = threading.Event()
    script = {f"p{i}": f"p{i + 1}, x" for i in range(50)}
    config = make_config(clauses=1, max_iters=40)

    def on_event(event):
        events.append(event)
        if isinstance(event, (ev.Paused, ev.Finished)):
            done.set()

    loop = TruthLoop(config, tmp_path / "r", factory(FakeCaptioner(script, start="p0, x"),
                                                     FakePainter()),
                     on_event=on_event, control=control, input_image=start_image())
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        assert done.wait(5)
        assert len(read_run(tmp_path / "r").records) == 0
        for expected in (1, 2):
            done.clear()
            control.step()
            assert done.wait(5)
            assert len(read_run(tmp_path / "r").records) == expected
            assert control.paused
        done.clear()
        control.resume()
        control.stop()
    finally:
        thread.join(5)
    assert not thread.is_alive()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "stopped"


@pytest.mark.parametrize("seed_mode", ["reseed", "shared"])
def test_resume_continues_the_same_trajectory(tmp_path, seed_mode):
    # A script whose next caption depends on the image, so a drifting random stream shows.
    script = {f"p{i}": f"p{i + 1}, x" for i in range(50)}
    config = make_config(clauses=1, max_iters=8)
    config.generate.seed_mode = seed_mode
    _, whole = run_loop(tmp_path, script, config=config, name="whole", start="p0, x")

    short = make_config(clauses=1, max_iters=3)
    short.generate.seed_mode = seed_mode
    run_loop(tmp_path, script, config=short, name="part", start="p0, x")
    painter = FakePainter(seed_mode=seed_mode)
    loop = TruthLoop.for_resume(tmp_path / "part",
                                factory(FakeCaptioner(script, start="p0, x"), painter),
                                max_iters=8)
    loop.run()
    resumed = read_run(tmp_path / "part")
    assert fed(resumed) == fed(whole)
    for a, b in zip(resumed.records, whole.records):
        assert (tmp_path / "part" / a.image).read_bytes() == \
            (tmp_path / "whole" / b.image).read_bytes()


def test_resume_of_converged_run_draws_nothing(tmp_path):
    script = {"start": "a, 1", "a": "a, 2"}
    run_loop(tmp_path, script)
    painter = FakePainter()
    loop = TruthLoop.for_resume(tmp_path / "run", factory(FakeCaptioner(script), painter))
    summary = loop.run()
    assert summary["status"] == "converged"
    assert painter.painted == []


def test_similarities_and_timings_recorded(tmp_path):
    script = {"start": "a, 1", "a": "b, 2", "b": "b, 3"}
    _, view = run_loop(tmp_path, script)
    drawn = [r for r in view.records if r.image]
    for record in drawn:
        assert -1.0 <= record.sim_start <= 1.0001
        assert -1.0 <= record.sim_prev <= 1.0001
        assert set(record.timings) >= {"caption", "generate", "total"}
    assert drawn[1].sim_prev == pytest.approx(
        sum(a * b for a, b in zip(*(view_features(tmp_path, r) for r in drawn[:2]))), abs=1e-5)


def test_time_spent_paused_is_left_out_of_the_timings(tmp_path):
    """Paused mid-drawing for ~0.4 s: the iteration's draw and total times leave it out, and
    `paused` says how long it was (the log is what `view` and the exports show later)."""
    control = LoopControl()

    def hook(step, paints=[0]):
        if step == 1:
            paints[0] += 1
        if paints[0] == 2 and step == 2:  # inside the second image's denoising
            control.pause()
            threading.Timer(0.4, control.resume).start()

    script = {"start": "a, 1", "a": "b, 2", "b": "b, 3"}
    _, view = run_loop(tmp_path, script, painter=FakePainter(step_hook=hook), control=control)
    timings = [r.timings for r in view.records if r.image]
    assert "paused" not in timings[0]
    assert 0.4 <= timings[1]["paused"] < 1.0
    assert timings[1]["generate"] < 0.3 and timings[1]["total"] < 0.4


def view_features(tmp_path, record):
    from PIL import Image

    from fakes import FakeEmbedder

    with Image.open(tmp_path / "run" / record.image) as image:
        return FakeEmbedder().features(image)


def test_events_follow_the_iteration_order(tmp_path):
    events: list = []
    run_loop(tmp_path, {"start": "a, 1", "a": "a, 2"}, events=events)
    kinds = [type(e).__name__ for e in events if not isinstance(e, ev.DenoiseStep)]
    assert kinds[:3] == ["RunStarted", "Ready", "IterationStarted"]
    assert kinds[-1] == "Finished"
    steps = [e for e in events if isinstance(e, ev.DenoiseStep) and e.index == 0]
    assert [e.step for e in steps] == [1, 2, 3, 4] and steps[0].total == 4


def test_error_in_a_backend_ends_as_error_summary(tmp_path):
    from truthloop.loop import LoopFailed

    class Broken(FakePainter):
        def paint(self, prompt, on_step):
            if len(self.painted) == 1:
                raise RuntimeError("CUDA error: device-side assert")
            return super().paint(prompt, on_step)

    script = {f"p{i}": f"p{i + 1}, x" for i in range(9)}
    with pytest.raises(LoopFailed, match="device-side assert"):
        run_loop(tmp_path, script, painter=Broken(), start="p0, x")
    view = read_run(tmp_path / "run")
    assert view.summary["status"] == "error"
    assert len(view.records) == 1
    assert (tmp_path / "run" / "error.log").exists()


def test_an_images_png_is_written_while_the_next_caption_runs_and_before_its_log_line(
        tmp_path, monkeypatch):
    """The save leaves the loop's critical path (issue 24): the next caption starts while the
    last image is still being written, and a record reaches log.jsonl only once its image is on
    disk (a reader, or a resume after a kill, never sees a record without its image)."""
    import threading
    import time

    from truthloop.store import RunWriter

    events: list[str] = []
    original_write, original_append = RunWriter.write_image, RunWriter.append_record

    def slow_write(self, index, image):
        events.append(f"write {index} starts")
        time.sleep(0.3)
        name = original_write(self, index, image)
        events.append(f"write {index} done")
        return name

    def checked_append(self, record):
        if record.image:
            assert (self.path / record.image).exists(), record.image
        events.append(f"record {record.index}")
        original_append(self, record)

    monkeypatch.setattr(RunWriter, "write_image", slow_write)
    monkeypatch.setattr(RunWriter, "append_record", checked_append)

    class NotingCaptioner(FakeCaptioner):
        def caption(self, image):
            events.append(f"caption on {threading.current_thread().name}")
            return super().caption(image)

    script = {"start": "b, x", "b": "c, y", "c": "b, z"}
    config = make_config(clauses=1)
    loop = TruthLoop(config, tmp_path / "run", factory(NotingCaptioner(script, start="start, s"),
                                                       FakePainter()),
                     input_image=start_image())
    summary = loop.run()
    view = read_run(tmp_path / "run")
    assert summary["status"] == "converged" and view.problems == []
    assert [r.fed_prompt for r in view.records] == ["start", "b", "c", "b"]
    # Image 0's write overlaps the caption of iteration 1; its record comes after both.
    first_write = events.index("write 0 starts")
    assert events[first_write + 1].startswith("caption on MainThread")
    assert events.index("record 0") > events.index("write 0 done")
    assert all(r.timings["save"] >= 0 for r in view.records if r.image)
