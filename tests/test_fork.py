"""Forks: a run started from another run's iteration K (its caption step first), recorded in
run.json; with the parent's options in reseed mode it replays the parent from there exactly.
Fake backends whose painter follows the run's own seed and seed mode (instant, deterministic)."""

from __future__ import annotations

import json
import random

import pytest

from fakes import FakeCaptioner, FakeEmbedder, FakePainter, start_image
from truthloop.config import RunConfig
from truthloop.fork import ForkError, forks_of, make_fork_loop, parent_of, plan_fork
from truthloop.loop import Backends, TruthLoop
from truthloop.store import read_run

# start -> p1 -> p2 -> ... -> p6 -> p6 (a fixed point at iteration 6).
CHAIN = [f"prompt {i}, clause" for i in range(1, 7)]
SCRIPT = {CHAIN[i]: CHAIN[min(i + 1, len(CHAIN) - 1)] for i in range(len(CHAIN))}
START = CHAIN[0]


def seeded_factory(script=SCRIPT):
    """Backends whose painter draws with the config's own seed and seed mode."""

    def build(config, emit):
        painter = FakePainter(seed=config.generate.seed, seed_mode=config.generate.seed_mode)
        return Backends(captioner=FakeCaptioner(script, start=START), painter=painter,
                        embedder=FakeEmbedder())

    return build


def make_parent(tmp_path, name="parent", **generate) -> RunConfig:
    config = RunConfig(input_image="start.png")
    config.models.models = "tiny"
    for key, value in generate.items():
        setattr(config.generate, key, value)
    TruthLoop(config, tmp_path / name, seeded_factory(), input_image=start_image()).run()
    return config


def run_fork(tmp_path, at, options=None, name="fork"):
    plan = plan_fork(tmp_path / "parent", at, options, out=tmp_path / name)
    summary = make_fork_loop(plan, seeded_factory()).run()
    return plan, summary, read_run(tmp_path / name)


def pixels(view, record):
    from PIL import Image

    with Image.open(view.path / record.image) as image:
        return image.convert("RGB").tobytes()


def other_seed(seed: int = 42) -> int:
    """A seed whose fake noise differs from `seed`'s (the fake painter has four)."""
    mine = random.Random(seed).randrange(4)
    return next(s for s in range(1000) if random.Random(s).randrange(4) != mine)


def test_fork_with_the_same_options_replays_the_parent(tmp_path):
    make_parent(tmp_path)
    parent = read_run(tmp_path / "parent")
    assert len(parent.records) == 7  # 0..5 drawn, 6 repeats 5
    k = 2
    plan, summary, fork = run_fork(tmp_path, k)
    assert plan.changed == {}
    # Its first caption is the parent's caption of image K (the parent's iteration K+1) ...
    assert fork.records[0].caption == parent.records[k + 1].caption
    # ... then the same prompts and the same images, pixel for pixel.
    for j, record in enumerate(fork.records):
        twin = parent.records[k + 1 + j]
        assert (record.caption, record.fed_prompt) == (twin.caption, twin.fed_prompt)
        if record.image:
            assert pixels(fork, record) == pixels(parent, twin)
    assert fork.records[-1].repeat_of is not None  # it found the same fixed point
    info = json.loads((tmp_path / "fork" / "run.json").read_text())
    assert info["parent"] == {"run": str((tmp_path / "parent").resolve()), "at": k,
                              "changed": {}}
    assert info["config"]["input_image"] == str((tmp_path / "parent/images/0002.png").resolve())
    assert (tmp_path / "fork" / "input.png").exists()
    assert summary["status"] == "converged"


def test_fork_with_another_seed_differs_and_says_so(tmp_path):
    from truthloop.compare import compare_runs

    make_parent(tmp_path)
    seed = other_seed()
    plan, _, fork = run_fork(tmp_path, 1, {"seed": seed, "clauses": None})
    assert plan.changed == {"seed": seed}
    info = json.loads((tmp_path / "fork" / "run.json").read_text())
    assert info["parent"]["changed"] == {"seed": seed}
    assert info["config"]["generate"]["seed"] == seed
    parent = read_run(tmp_path / "parent")
    assert fork.records[0].caption == parent.records[2].caption  # the same image captioned
    assert pixels(fork, fork.records[0]) != pixels(parent, parent.records[2])  # drawn otherwise
    comparison = compare_runs(tmp_path / "parent", tmp_path / "fork")
    assert comparison.relation.startswith("B is a fork of A at #1")
    difference = comparison.first_difference
    assert difference is not None and difference.kind == "image"
    assert (difference.a.index, difference.b.index) == (2, 0)
    assert "first differ at A #2 / B #0: images (same caption)" in comparison.lines()


def test_bad_forks_are_one_line_and_write_nothing(tmp_path):
    from truthloop.store import RunDirError

    make_parent(tmp_path)
    (tmp_path / "notarun").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ForkError, match=r"--at 9 is past its end: .* iterations 0\.\.5"):
        plan_fork(tmp_path / "parent", 9)
    with pytest.raises(ForkError, match="--at 6 is an iteration without an image"):
        plan_fork(tmp_path / "parent", 6)  # the repeat: found before drawing
    with pytest.raises(ForkError, match="--clauses must be 0"):
        plan_fork(tmp_path / "parent", 1, {"clauses": -1})
    with pytest.raises(RunDirError, match="not a truthloop run directory"):
        plan_fork(tmp_path / "notarun", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_parent_and_forks_are_found(tmp_path):
    make_parent(tmp_path)
    run_fork(tmp_path, 3, name="fork-b")
    run_fork(tmp_path, 1, {"seed": 7}, name="fork-a")
    forks = forks_of(tmp_path / "parent")
    assert [(f.path.name, f.at, f.changed) for f in forks] == [
        ("fork-a", 1, {"seed": 7}), ("fork-b", 3, {})]
    relation = parent_of(read_run(tmp_path / "fork-a"))
    assert relation.path == (tmp_path / "parent").resolve() and relation.at == 1
    assert parent_of(read_run(tmp_path / "parent")) is None
    assert forks_of(tmp_path / "fork-a") == []


def test_default_fork_directory_is_beside_the_parent(tmp_path):
    make_parent(tmp_path, name="20260101-000000-photo")
    plan = plan_fork(tmp_path / "20260101-000000-photo", 2)
    assert plan.out.parent == tmp_path.resolve()
    assert plan.out.name.endswith("-fork2-photo")


@pytest.mark.parametrize("argv, says", [
    (["--captioner", "blip", "--mode", "best"], "--mode is clip-interrogator's; --captioner blip "
                                                "has no such option"),
    (["--caption-model", "/nonexistent"], "--caption-model chooses a checkpoint, but this "
                                          "run's --models is tiny"),
])
def test_fork_refuses_what_run_refuses_before_loading(tmp_path, monkeypatch, capsys, argv, says):
    """`truthloop fork` checks the options given as `run` and `demo` do (its parent here ran the
    tiny models with clip-interrogator's best mode): one line, exit 2, no fork directory, no
    model loaded."""
    from faulthelpers import count_loads, run_main

    loads = count_loads(monkeypatch)
    make_parent(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_main(["fork", tmp_path / "parent", "--at", "1", *argv, "--headless"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("truthloop: error: ") and len(err.strip().splitlines()) == 1, err
    assert says in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and loads == []


def test_a_forms_unchanged_fields_are_not_options_given(tmp_path):
    """The TUI's form sends every field, the parent's values included: a fork to blip that
    carries the parent's caption mode is fine; the same mode given on the command line is not."""
    make_parent(tmp_path)
    options = {"captioner": "blip", "mode": "best", "seed": 42}  # best, 42: the parent's
    plan = plan_fork(tmp_path / "parent", 1, options, out=tmp_path / "fork")
    assert plan.config.models.captioner == "blip"
    with pytest.raises(ForkError, match="--mode is clip-interrogator's"):
        plan_fork(tmp_path / "parent", 1, options, out=tmp_path / "fork",
                  said={"captioner", "mode"})


# -- the TUI: `f` forks the selected iteration, `r` lists parent and forks, `C` compares ---------
@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_f_forks_the_selected_iteration_then_C_compares_it_with_its_parent(tmp_path):
    from fork_helpers import fake_forker, make_parent
    from tui.app import TruthLoopApp
    from tui.screens import LiveScreen, ViewScreen
    from tui.screens.compare import CompareScreen
    from tui.screens.fork import ForkForm, RelativesList
    from tui_helpers import wait_for

    parent = make_parent(tmp_path / "parent")
    app = TruthLoopApp(run_dir=parent, preview="none", stable=True, forker=fake_forker())
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.run_screen
        await wait_for(pilot, lambda: view.state == "converged")
        while view.current_index != 1:
            await pilot.press("left")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, ForkForm))
        form = app.screen
        assert form.at == 1
        assert form.query_one("#fork-seed").value == "42"  # the run's own, to change
        form.query_one("#fork-seed").value = "not a number"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ForkForm)  # said why, stayed
        assert "seed: a whole number" in str(form.query_one("#fork-error").render())
        form.query_one("#fork-seed").value = "7"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
        live = app.screen
        await wait_for(pilot, lambda: live.state == "converged" and not live.loop_active)
        info = json.loads((live.run_dir / "run.json").read_text())
        assert info["parent"] == {"run": str(parent.resolve()), "at": 1, "changed": {"seed": 7}}
        assert live.run_dir.parent == parent.parent  # beside its parent
        await pilot.press("C")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        comparison = app.screen.comparison
        assert comparison.relation.startswith("B is a fork of A at #1")
        assert comparison.first_difference.kind == "image"
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is live)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is view)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RelativesList))
        assert [p.name for p in app.screen.paths] == [live.run_dir.name]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ViewScreen) and app.screen is not view)
        assert app.screen.run_dir == live.run_dir
        await pilot.press("r")  # the fork's own list: its parent
        await wait_for(pilot, lambda: isinstance(app.screen, RelativesList))
        assert [p.resolve() for p in app.screen.paths] == [parent.resolve()]


@pytest.mark.anyio
async def test_f_without_a_forker_says_how(tmp_path):
    from fork_helpers import make_parent
    from tui.app import TruthLoopApp
    from tui_helpers import wait_for

    parent = make_parent(tmp_path / "parent")
    app = TruthLoopApp(run_dir=parent, preview="none", stable=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.run_screen.state == "converged")
        await pilot.press("f")
        await pilot.pause()
        assert app.screen is app.run_screen
        assert any("truthloop fork RUN --at K" in str(n.message) for n in app._notifications)
