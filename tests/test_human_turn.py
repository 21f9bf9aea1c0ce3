"""A person in the loop (issue 31, item 5): a fork whose first prompt a person wrote, in place of
the parent's caption of iteration K (`truthloop fork RUN --at K --prompt TEXT`, `w` in the app).

It is drawn first, cut and fed as every caption is, takes part in repeat detection like any
caption, and is marked as the person's: `"author": "person"` in its record, `prompt_by: person`
in run.json's parent block, in the app (✎, `you`), `truthloop runs`, the exports and `compare`
(its #0 beside the parent's #K). Fake backends whose painter follows each run's own seed:
instant and deterministic (the loop's logic; the drawing itself is the same call as any run's)."""

from __future__ import annotations

import json

import pytest

from fakes import FakeCaptioner, FakeEmbedder, FakePainter, start_image
from fork_helpers import SCRIPT, fake_forker, make_fork, make_parent, seeded_factory
from truthloop.compare import compare_runs
from truthloop.config import RunConfig
from truthloop.fork import ForkError, forks_of, make_fork_loop, parent_of, plan_fork
from truthloop.loop import Backends, LoopControl, TruthLoop
from truthloop.record import Record
from truthloop.store import read_run

MINE = "a [red]fox[/red] in the snow, <i>pencil</i> sketch"  # markup-looking: shown verbatim


def pixels(view, record) -> bytes:
    from PIL import Image

    with Image.open(view.path / record.image) as image:
        return image.convert("RGB").tobytes()


def first_line(run_dir) -> dict:
    return json.loads((run_dir / "log.jsonl").read_text().splitlines()[0])


# -- the run it makes ----------------------------------------------------------------------------
def test_a_persons_prompt_is_drawn_first_and_marked_as_theirs(tmp_path):
    parent = make_parent(tmp_path / "parent")
    painted: list[str] = []

    def build(config, emit):
        backends = seeded_factory()(config, emit)
        backends.painter.painted = painted
        return backends

    plan = plan_fork(parent, 2, None, out=tmp_path / "mine", prompt=MINE)
    assert plan.image_path is None and plan.input_image() is None
    summary = make_fork_loop(plan, build).run()
    fork = read_run(tmp_path / "mine")
    assert painted[0] == MINE  # drawn first: no image was captioned before it
    first = fork.records[0]
    assert (first.caption, first.compared, first.fed_prompt) == (MINE, MINE, MINE)
    assert first.author == "person" and first.by_person
    assert first_line(tmp_path / "mine")["author"] == "person"
    assert all(r.author is None for r in fork.records[1:])  # the model's from there on
    assert "author" not in first_line(parent)  # a model's record says nothing (older runs too)
    info = json.loads((tmp_path / "mine" / "run.json").read_text())
    assert info["parent"] == {"run": str(parent.resolve()), "at": 2, "changed": {},
                              "prompt_by": "person"}
    assert info["config"]["start_prompt"] == MINE and info["config"]["input_image"] is None
    assert not (tmp_path / "mine" / "input.png").exists()
    assert summary["status"] == "converged"


def test_the_parents_own_caption_replays_the_parent_from_there(tmp_path):
    """The person's text in place of K's caption, and that text the parent's own caption of K:
    the fork is the parent from K on, prompt for prompt and pixel for pixel (reseed mode). Under
    --clauses 1 too: the person's caption is cut as the captioner's was."""
    chain = [f"step {i}, with, clauses" for i in range(6)]
    script = {f"step {i}": chain[min(i + 1, 5)] for i in range(6)}  # keyed by what was drawn

    def build(config, emit):
        return Backends(captioner=FakeCaptioner(script, start=chain[0]),
                        painter=FakePainter(seed=config.generate.seed,
                                            seed_mode=config.generate.seed_mode),
                        embedder=FakeEmbedder())

    config = RunConfig(input_image="start.png")
    config.models.models = "tiny"
    config.loop.clauses = 1
    TruthLoop(config, tmp_path / "parent", build, input_image=start_image()).run()
    parent = read_run(tmp_path / "parent")
    assert parent.records[3].compared == "step 3"  # cut to one clause
    k = 3
    plan = plan_fork(tmp_path / "parent", k, None, out=tmp_path / "mine",
                     prompt=parent.records[k].caption)
    make_fork_loop(plan, build).run()
    fork = read_run(tmp_path / "mine")
    assert len(fork.records) == len(parent.records) - k
    for j, record in enumerate(fork.records):
        twin = parent.records[k + j]
        assert (record.caption, record.compared, record.fed_prompt, record.repeat_of) == (
            twin.caption, twin.compared, twin.fed_prompt,
            None if twin.repeat_of is None else twin.repeat_of - k)
        if twin.image:
            assert pixels(fork, record) == pixels(parent, twin)
    assert fork.records[0].by_person and not parent.records[k].by_person
    comparison = compare_runs(tmp_path / "parent", tmp_path / "mine")
    assert comparison.relation == ("B is a fork of A at #3, a person's prompt in place of its "
                                   "caption: B #0 sits beside A #3")
    assert comparison.first_difference is None
    assert comparison.difference_line().startswith("the same through A #6 / B #3")


def test_a_persons_caption_is_cut_like_any_caption(tmp_path):
    config = RunConfig(input_image="start.png")
    config.models.models = "tiny"
    config.loop.clauses = 1
    TruthLoop(config, tmp_path / "parent", seeded_factory(), input_image=start_image()).run()
    plan = plan_fork(tmp_path / "parent", 1, None, out=tmp_path / "mine", prompt=MINE)
    make_fork_loop(plan, seeded_factory()).run()
    first = read_run(tmp_path / "mine").records[0]
    assert first.caption == MINE
    assert first.compared == first.fed_prompt == "a [red]fox[/red] in the snow"


def test_a_persons_prompt_takes_part_in_repeat_detection(tmp_path):
    """A later caption that comes back to the person's prompt repeats #0: here the person wrote
    a member of the parent's cycle of two, which comes back two captions later."""
    parent = make_parent(tmp_path / "parent")
    fixed = "a dog on a rug, watercolor"  # SCRIPT: it comes back after two steps
    make_fork(parent, 1, tmp_path / "mine", prompt=fixed)
    fork = read_run(tmp_path / "mine")
    assert [r.compared for r in fork.records] == [
        fixed, SCRIPT[fixed], SCRIPT[SCRIPT[fixed]]]
    assert fork.records[-1].repeat_of == 0 and fork.records[0].by_person
    assert fork.summary["cycle"]["start"] == 0


def test_the_mark_survives_a_resume_from_before_the_first_iteration(tmp_path):
    """Stopped before its first record, resumed: the first record is still the person's."""
    parent = make_parent(tmp_path / "parent")
    plan = plan_fork(parent, 0, None, out=tmp_path / "mine", prompt=MINE)
    control = LoopControl()
    control.stop()
    assert make_fork_loop(plan, seeded_factory(), control=control).run()["status"] == "stopped"
    assert read_run(tmp_path / "mine").records == []
    TruthLoop.for_resume(tmp_path / "mine", seeded_factory()).run()
    first = read_run(tmp_path / "mine").records[0]
    assert first.caption == MINE and first.by_person


def test_old_records_and_odd_authors_read(tmp_path):
    line = {"index": 0, "caption": "a", "compared": "a", "fed_prompt": "a"}
    assert Record.from_json(line).author is None
    assert Record.from_json({**line, "author": 7}).author is None  # a damaged field: the model's
    assert Record.from_json({**line, "author": "person"}).by_person


def test_bad_human_turns_are_one_line_and_write_nothing(tmp_path):
    parent = make_parent(tmp_path / "parent")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ForkError, match="--prompt is empty"):
        plan_fork(parent, 1, prompt="  ")
    with pytest.raises(ForkError, match=r"--at 6 is past its end: .* iterations 0\.\.5"):
        plan_fork(parent, 6, prompt="words")
    # The repeat a converged run ended on has a caption and no image: a person may answer it.
    assert plan_fork(parent, 5, prompt="words").at == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_relatives_and_compare_say_whose_prompt(tmp_path):
    parent = make_parent(tmp_path / "parent")
    make_fork(parent, 2, tmp_path / "mine", prompt=MINE)
    make_fork(parent, 1, tmp_path / "image-fork", seed=7)
    relation = parent_of(read_run(tmp_path / "mine"))
    assert relation.by_person and relation.beside == 2
    assert [(f.path.name, f.describe_start()) for f in forks_of(parent)] == [
        ("image-fork", "from #1"), ("mine", "from #2, your prompt")]
    both = compare_runs(tmp_path / "image-fork", tmp_path / "mine")
    # The image fork's #0 stands for the parent's #2 (it captions image 1), so does the person's.
    assert (both.offset_a, both.offset_b) == (0, 0)
    assert "B at #2, a person's prompt in place of its caption" in both.relation
    comparison = compare_runs(parent, tmp_path / "mine")
    assert comparison.first_difference.describe() == "first differ at A #2 / B #0: captions"


# -- the command line ------------------------------------------------------------------------------
def test_cli_fork_with_a_prompt(tmp_path, monkeypatch, capsys):
    from faulthelpers import run_main, use_fakes

    parent = make_parent(tmp_path / "parent")
    painter = FakePainter()
    use_fakes(monkeypatch, captioner=FakeCaptioner(SCRIPT), painter=painter)
    assert run_main(["fork", parent, "--at", "1", "--prompt", MINE, "--out",
                     tmp_path / "mine", "--headless"]) == 0
    err = capsys.readouterr().err
    assert f"fork of {parent} at #1, your prompt in place of its caption" in err
    assert painter.painted[0] == MINE
    record = first_line(tmp_path / "mine")
    assert (record["caption"], record["fed_prompt"], record["author"]) == (MINE, MINE, "person")
    info = json.loads((tmp_path / "mine" / "run.json").read_text())
    assert info["parent"]["prompt_by"] == "person" and info["parent"]["at"] == 1


@pytest.mark.parametrize("argv, says", [
    (["--at", "1", "--prompt", ""], "--prompt is empty"),
    (["--at", "9", "--prompt", "a fox"], "--at 9 is past its end"),
])
def test_cli_bad_human_turns(tmp_path, monkeypatch, capsys, argv, says):
    from faulthelpers import assert_one_clean_error_line, count_loads, run_main

    loads = count_loads(monkeypatch)
    parent = make_parent(tmp_path / "parent")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_main(["fork", parent, *argv, "--headless"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and loads == []


# -- runs, exports -----------------------------------------------------------------------------
def test_runs_table_and_json_show_the_mark(tmp_path, monkeypatch, capsys):
    from truthloop.cli import main

    monkeypatch.setenv("COLUMNS", "250")  # every column (a narrow one leaves the start out)
    parent = make_parent(tmp_path / "runs" / "20261207-101500-photo")
    make_fork(parent, 2, tmp_path / "runs" / "20261207-101600-fork2-yours-photo", prompt=MINE)
    make_fork(parent, 1, tmp_path / "runs" / "20261207-101700-fork1-photo", seed=7)
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    mine = next(line for line in out.splitlines() if "fork2-yours-photo" in line)
    theirs = next(line for line in out.splitlines() if "101700-fork1-photo" in line)
    assert f"fork of {parent.name} #2, your prompt" in mine
    assert f"fork of {parent.name} #1" in theirs and "your prompt" not in theirs
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["20261207-101600-fork2-yours-photo"]["parent"]["prompt_by"] == "person"
    assert rows["20261207-101700-fork1-photo"]["parent"]["prompt_by"] is None


def test_exports_say_your_prompt(tmp_path):
    from PIL import ImageChops

    from truthloop.lookback.export import export_default
    from truthloop.lookback.html import write_html
    from truthloop.lookback.render import frame_layout, make_sheet, render_frame

    parent = make_parent(tmp_path / "parent")
    mine = make_fork(parent, 2, tmp_path / "mine", prompt=MINE)
    view = read_run(mine)
    (tmp_path / "page").mkdir()
    write_html(view, tmp_path / "page" / "index.html")
    page = (tmp_path / "page" / "index.html").read_text()
    assert "fork of parent #2, your prompt" in page  # the page's start
    assert "#0</span><span class=\"mark\">your prompt</span>" in page
    assert "a [red]fox[/red] in the snow, &lt;i&gt;pencil&lt;/i&gt; sketch" in page
    assert "<i>pencil</i>" not in page
    # The GIF's frame and the sheet's tile of #0 carry the mark: the same record as the model's
    # is drawn without it (only the label differs).
    first = view.records[0]
    model = Record.from_json({**first.to_json(), "author": None})
    layout = frame_layout(128, captions=True)
    from PIL import Image

    image = Image.open(mine / first.image).convert("RGB")
    theirs, yours = render_frame(image, model, layout, None), render_frame(image, first, layout,
                                                                            None)
    box = ImageChops.difference(theirs, yours).getbbox()
    assert box is not None and box[1] >= 128  # in the caption band under the image
    sheet, _ = make_sheet(view)
    model_view = read_run(mine)
    model_view.records[0] = model
    assert ImageChops.difference(sheet, make_sheet(model_view)[0]).getbbox() is not None
    assert {path.name for path in export_default(mine)} == {"trajectory.gif", "sheet.png"}


# -- the app: `w` writes a caption and continues from it ---------------------------------------
@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_w_edits_the_caption_and_continues_from_it(tmp_path, size):
    from tui.app import TruthLoopApp
    from tui.screens import LiveScreen
    from tui.screens.compare import CompareScreen
    from tui.screens.fork import CaptionEditor, CaptionForm
    from tui_helpers import screen_text, wait_for

    parent = make_parent(tmp_path / "parent")
    app = TruthLoopApp(run_dir=parent, preview="none", stable=True, forker=fake_forker())
    async with app.run_test(size=size) as pilot:
        view = app.run_screen
        await wait_for(pilot, lambda: view.state == "converged")
        while view.current_index != 2:
            await pilot.press("left" if view.current_index > 2 else "right")
        caption = view.records[2].caption
        assert caption == "a dog on a red mat, oil painting, <b>x</b>"
        # Esc: nothing happens.
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, CaptionForm))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is view)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["parent"]
        # The form, filled with the selected iteration's caption, all of it on screen.
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, CaptionForm))
        form = app.screen
        shown = screen_text(app)
        assert "your caption in place of #2's" in shown
        assert "enter: go on from it (a fork) · ctrl+u: clear to the start · esc: cancel" \
            in shown
        editor = form.query_one(CaptionEditor)
        assert editor.text == caption
        box = editor.region  # the caption, in the editor's own cells on screen
        assert box.right <= size[0] and box.bottom <= size[1]
        in_editor = [line[box.x:box.right] for line in shown.splitlines()[box.y:box.bottom]]
        assert caption in " ".join(" ".join(in_editor).split())
        # Emptied (ctrl+u: all before the cursor, which starts at the end): said, the form stays.
        editor.load_text(caption * 6)  # long: wrapped over rows, ctrl+u takes them all
        editor.move_cursor(editor.document.end)
        await pilot.press("ctrl+u")
        assert editor.text == ""
        await pilot.press("space", "enter")
        await pilot.pause()
        assert app.screen is form
        assert "write a caption first (esc cancels)" in screen_text(app)
        editor.load_text(MINE)
        await pilot.press("end", "enter")  # a key in the editor edits; enter continues
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
        live = app.screen
        await wait_for(pilot, lambda: live.state == "converged" and not live.loop_active)
        assert live.run_dir.parent == parent.parent and "fork2-yours-parent" in live.run_dir.name
        assert first_line(live.run_dir)["author"] == "person"
        assert first_line(live.run_dir)["caption"] == MINE
        await pilot.press("home")
        await wait_for(pilot, lambda: live.current_index == 0)
        shown = screen_text(app)
        row = next(line for line in shown.splitlines() if "✎ a [red]fox" in line)
        if size[0] >= 120:
            assert " you " in row  # the caption time column: a person's, not timed
        assert "#0 caption  ✎ yours, not the model's" in shown
        assert MINE in shown  # the caption panel, verbatim
        await pilot.press("C")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        shown = screen_text(app)
        assert "✎ a [red]fox" in shown
        assert "B is a fork of A at #2, a person's prompt" in " ".join(shown.split())


# -- the study report --------------------------------------------------------------------------
def test_the_report_lists_forks_beside_the_sweep_and_says_whose_prompt(tmp_path):
    """A person's fork of a sweep's run lands in its runs folder: the report's numbers are the
    sweep's trajectories alone, and the fork is listed apart, its start saying `your prompt`."""
    pytest.importorskip("sklearn")
    from fakes import run_sweep
    from truthloop.lookback.report import build_report, describe, html_page

    config = RunConfig()
    config.loop.clauses, config.loop.max_iters = 1, 8
    trajs = run_sweep(tmp_path / "sweep", config, ["s1", "s2"], [0], {})
    before = build_report(tmp_path / "sweep")
    assert before["forks"] == []
    parent = trajs[0].run_dir(tmp_path / "sweep")
    plan = plan_fork(parent, 1, prompt=MINE)
    assert plan.out.parent == parent.parent  # beside it, in the sweep's runs folder
    make_fork_loop(plan, seeded_factory()).run()
    report = build_report(tmp_path / "sweep")
    assert report["trajectories"] == before["trajectories"] == 2
    assert report["converged"] == before["converged"]
    assert report["forks"] == [{"run": plan.out.name, "parent": parent.name, "at": 1,
                                "prompt_by": "person",
                                "start": f"fork of {parent.name} #1, your prompt"}]
    assert any("1 fork of its runs, not counted (1 from your prompt)" in line
               for line in describe(report))
    page = html_page(report, {})
    assert f"{plan.out.name}: fork of {parent.name} #1, your prompt" in page


@pytest.mark.anyio
async def test_while_the_models_load_the_caption_panel_shows_the_persons_caption(tmp_path):
    """A person's fork is on screen before its models are ready: the caption panel shows their
    caption (marked, verbatim), not "waiting for the first caption"."""
    import threading

    from tui.app import TruthLoopApp
    from tui.screens import LiveScreen
    from tui.screens.fork import CaptionEditor, CaptionForm
    from tui_helpers import screen_text, wait_for

    loaded = threading.Event()

    def slow_factory(config, emit):
        loaded.wait(60)  # the models are still loading until the test says otherwise
        return seeded_factory()(config, emit)

    parent = make_parent(tmp_path / "parent")
    app = TruthLoopApp(run_dir=parent, preview="none", stable=True,
                       forker=fake_forker(slow_factory))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            view = app.run_screen
            await wait_for(pilot, lambda: view.state == "converged")
            await pilot.press("w")
            await wait_for(pilot, lambda: isinstance(app.screen, CaptionForm))
            app.screen.query_one(CaptionEditor).load_text(MINE)
            await pilot.press("end", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
            live = app.screen
            await wait_for(pilot, lambda: "drawn once the models are ready" in
                           " ".join(screen_text(app).split()))
            shown = " ".join(screen_text(app).split())
            assert "✎ your caption, drawn once the models are ready: " + MINE in shown
            assert "waiting for the first caption" not in shown
            loaded.set()
            await wait_for(pilot, lambda: live.state == "converged" and not live.loop_active)
            await pilot.press("home")
            await wait_for(pilot, lambda: live.current_index == 0)
            assert "#0 caption ✎ yours, not the model's" in " ".join(screen_text(app).split())
    finally:
        loaded.set()
