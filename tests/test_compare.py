"""compare: two runs aligned, where they first differ, same attractor; the HTML page; bad input;
the TUI screen (Pilot and snapshots). Fake backends: instant and deterministic."""

from __future__ import annotations

import json

import pytest

from fakes import FakeCaptioner, FakePainter, factory, start_image
from truthloop.compare import CompareError, compare_runs
from truthloop.config import RunConfig
from truthloop.loop import TruthLoop
from truthloop.record import canonical_cycle

# Two scripts that agree on the first two prompts, then part: A settles in a cycle of two,
# B enters the same cycle by its other member.
COMMON = {"start, s": "one, a", "one, a": "two, b"}
SCRIPT_A = {**COMMON, "two, b": "three, c", "three, c": "four, d", "four, d": "three, c"}
SCRIPT_B = {**COMMON, "two, b": "four, <b>bold</b> [red]x[/red]",
            "four, <b>bold</b> [red]x[/red]": "four, d", "three, c": "four, d",
            "four, d": "three, c"}


def make_run(tmp_path, name, script, generator_model=None, start="start, s"):
    config = RunConfig(input_image="start.png")
    config.models.models = "tiny"
    if generator_model:
        config.models.generator_model = generator_model
    TruthLoop(config, tmp_path / name, factory(FakeCaptioner(script, start=start), FakePainter()),
              input_image=start_image()).run()
    return tmp_path / name


def test_first_difference_and_same_attractor(tmp_path):
    a, b = make_run(tmp_path, "a", SCRIPT_A), make_run(tmp_path, "b", SCRIPT_B)
    comparison = compare_runs(a, b)
    assert comparison.relation == "" and (comparison.offset_a, comparison.offset_b) == (0, 0)
    difference = comparison.first_difference
    assert difference.kind == "caption" and difference.position == 3
    assert difference.a.fed_prompt == "three, c"
    assert difference.b.fed_prompt.startswith("four, <b>")
    # Both end in {three, four}: entered by different members, the same attractor.
    assert comparison.cycle_a is not None and comparison.cycle_b is not None
    assert comparison.same_attractor is True
    assert comparison.attractor_line() == "same attractor (cycle of length 2)"
    assert "first differ at A #3 / B #3: captions" in comparison.lines()


def test_identical_runs_do_not_differ(tmp_path):
    a, b = make_run(tmp_path, "a", SCRIPT_A), make_run(tmp_path, "b", SCRIPT_A)
    comparison = compare_runs(a, b)
    assert comparison.first_difference is None
    assert comparison.difference_line().startswith("the same through A #")


def test_different_attractors():
    assert canonical_cycle(["x", "y", "z"]) == canonical_cycle(["z", "x", "y"])
    assert canonical_cycle(["x", "y", "z"]) != canonical_cycle(["x", "z", "y"])


def test_runs_of_different_models_are_refused(tmp_path):
    a = make_run(tmp_path, "a", SCRIPT_A)
    b = make_run(tmp_path, "b", SCRIPT_A, generator_model="some/other-sd")
    with pytest.raises(CompareError, match="different models"):
        compare_runs(a, b)


@pytest.mark.parametrize("args, message", [
    (["compare", "{a}", "{nota}"], "not a truthloop run directory"),
    (["compare", "{a}", "{other}"], "different models"),
    (["compare", "{a}", "{missing}"], "no such run directory"),
    (["fork", "{a}", "--at", "40"], "--at 40 is past its end"),
    (["fork", "{nota}", "--at", "0"], "not a truthloop run directory"),
    (["fork", "{a}", "--at", "1", "--clauses", "-2"], "--clauses must be 0"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    from truthloop.cli import main

    runs = tmp_path / "runs"
    runs.mkdir()
    paths = {"a": make_run(runs, "a", SCRIPT_A), "other": make_run(runs, "o", SCRIPT_A, "x/y"),
             "nota": runs / "nota", "missing": runs / "missing"}
    (runs / "nota").mkdir()
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code = main([arg.format(**paths) for arg in args] + (
        ["--html", str(tmp_path / "page.html")] if args[0] == "compare" else ["--headless"]))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_compare_html_is_self_contained_and_escaped(tmp_path, capsys):
    from truthloop.cli import main

    a, b = make_run(tmp_path, "a", SCRIPT_A), make_run(tmp_path, "b", SCRIPT_B)
    page = tmp_path / "cmp.html"
    assert main(["compare", str(a), str(b), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "first differ at A #3 / B #3: captions" in out
    text = page.read_text()
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "src=\"data:image/png;base64," in text and "src=\"/" not in text
    assert "same attractor" in text and "first differ at A #3 / B #3" in text
    assert json.loads((a / "run.json").read_text())  # the runs untouched and readable


# -- the TUI screen ----------------------------------------------------------------------------
@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_compare_screen_shows_both_runs_aligned_and_jumps_to_the_difference(tmp_path):
    from fork_helpers import compare_app
    from tui.screens.compare import CompareScreen
    from tui.widgets.image import ImageView

    app = compare_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        c = screen.comparison
        first = c.first_difference
        assert (first.a.index, first.b.index, first.kind) == (2, 0, "image")
        assert screen.selected == first.position  # opens at the first difference
        summary = str(screen.query_one("#cmp-summary").render())
        assert "first differ at A #2 / B #0: images (same caption)" in summary
        assert "same attractor (cycle of length 2)" in summary
        table = screen.query_one("DataTable")
        assert table.row_count == len(c.rows)
        # Both images of the selected row, B's caption diffed against A's.
        assert screen.query_one("#cmp-img-a", ImageView).path == c.a.path / first.a.image
        assert screen.query_one("#cmp-img-b", ImageView).path == c.b.path / first.b.image
        await pilot.press("up", "up")
        assert screen.selected == first.position - 2
        caption = str(screen.query_one("#cmp-caption").render())
        assert "only one run has this iteration" in caption  # before the fork started
        await pilot.press("d")
        assert screen.selected == first.position
        await pilot.press("down")
        caption = str(screen.query_one("#cmp-caption").render())
        # Markup-looking caption text is shown as it is.
        assert "<b>x</b>" in caption or "[bold]" in caption or "watercolor" in caption
        await pilot.press("q")
    assert app.return_code == 0


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_compare_snapshot(snap_compare, tmp_path, size):
    from fork_helpers import compare_app

    assert snap_compare(compare_app(tmp_path), terminal_size=size)
