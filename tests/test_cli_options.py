"""What the command line tells a new user and a script (issue 15): every option's --help shows
its default, --version, --json for headless runs and for export, --all says why it skips MP4,
and TRUTHLOOP_RUNS_DIR sets the runs folder whatever the current directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from faulthelpers import TRAJECTORY, fake_start_png, run_main, use_fakes
from truthloop import __version__
from truthloop.cli import build_parser

OWNED_ELSEWHERE = {"sweep", "atlas"}  # truthloop/sweep/command.py builds those parsers


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", sorted(set(_subcommands()) - OWNED_ELSEWHERE))
def test_every_option_help_shows_its_default(name):
    """Each option says what happens without it: its default, that it is required, or (a --no-X
    flag) what the program does when the flag is not given."""
    command = _subcommands()[name]
    missing = [action.option_strings[-1] for action in command._actions
               if action.option_strings and action.help != argparse.SUPPRESS
               and not isinstance(action, argparse._HelpAction)
               and not any(word in (action.help or "")
                           for word in ("default", "required", "without it"))]
    assert not missing, f"`truthloop {name} --help` gives no default for {missing}"
    command.format_help()  # a % in a default must not break argparse's formatting


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_help_never_reads_as_the_wrong_thing(name):
    command = _subcommands()[name]
    text = _flat(command.format_help())
    assert "==SUPPRESS==" not in text  # a hidden option stays hidden
    assert "default: []" not in text and "default: not set" not in text
    assert command.description, f"`truthloop {name} --help` does not say what {name} does"
    for action in command._actions:
        if isinstance(action, argparse._StoreFalseAction) and action.help != argparse.SUPPRESS:
            # `--no-live-preview (default: on)` read as if the --no flag were on
            assert "default: on" not in action.help and "without it:" in action.help, action.help
        if action.required and action.option_strings:
            assert "(required)" in action.help and "default" not in action.help, action.help


def test_fork_help_says_it_takes_the_parents_options():
    text = _flat(_subcommands()["fork"].format_help())
    for option in ("--models {real,tiny}", "--steps STEPS", "--max-iters MAX_ITERS",
                   "--seed SEED", "--negative-prompt NEGATIVE_PROMPT"):
        after = text.split(f"  {option} " if f"  {option} " in text else f" {option} ", 1)[1]
        assert "default: the parent's" in after[:200], option
    assert "default: real" not in text and "default: 50" not in text
    assert "default: 1000" not in text and "--at K the parent's iteration" in text
    assert "(required)" in text
    assert "--preset" not in text  # a fork refuses it: not offered


def test_demo_help_shows_the_demos_models():
    text = _flat(_subcommands()["demo"].format_help())
    assert "--models {real,tiny} tiny: offline random-weight checkpoints (machinery, not " \
           "truth) (default: tiny)" in text
    assert "default: sd2-community" not in text and "default: blip-large" not in text
    assert text.count("default: the tiny checkpoint") == 3
    assert "--steps STEPS default: 20" in text and "--mode {best,fast,classic,negative," \
           "caption} default: fast" in text


def test_bare_truthloop_prints_the_help(capsys):
    assert run_main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: truthloop") and "export" in out and "sweep" in out
    assert err == ""


def test_plurals_agree_with_their_numbers(monkeypatch, tmp_path, capsys):
    from truthloop.text import count

    assert [count(n, "iteration") for n in (0, 1, 2)] == \
        ["0 iterations", "1 iteration", "2 iterations"]
    assert count(1, "trajectory") == "1 trajectory" and count(3, "trajectory") == "3 trajectories"
    start = fake_start_png(tmp_path / "start.png")
    out = tmp_path / "run"
    use_fakes(monkeypatch)
    assert run_main(["run", start, "--headless", "--max-iters", "1", "--out", out]) == 0
    assert "no repeat within 1 iteration (--max-iters)" in capsys.readouterr().out
    assert run_main(["runs", out]) == 0
    assert "1 run in" in capsys.readouterr().out


def test_help_defaults_come_from_the_config():
    commands = _subcommands()
    run_help = " ".join(commands["run"].format_help().split())
    demo_help = " ".join(commands["demo"].format_help().split())
    assert "--max-iters MAX_ITERS default: 1000" in run_help
    assert "--max-iters MAX_ITERS default: 30" in demo_help  # the demo's own
    assert "--chunk-size CHUNK_SIZE default: 2048" in run_help


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"truthloop {__version__}"


def test_json_headless_is_one_object_per_line(monkeypatch, tmp_path, capsys):
    start = fake_start_png(tmp_path / "start.png")
    out = tmp_path / "run"
    use_fakes(monkeypatch)
    assert run_main(["run", start, "--json", "--out", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    objects = [json.loads(line) for line in lines]
    assert [o["type"] for o in objects] == ["started"] + ["iteration"] * 7 + ["summary"]
    iterations = [o for o in objects if o["type"] == "iteration"]
    assert [o["compared"] for o in iterations] == TRAJECTORY
    assert all(o["run_dir"] == str(out.resolve()) for o in objects)
    assert Path(iterations[0]["image_path"]).is_file() and iterations[-1]["image_path"] is None
    assert iterations[-1]["repeat_of"] == 2
    summary = objects[-1]
    assert summary["status"] == "converged" and summary["cycle"]["length"] == 4


def test_export_json_and_all_says_why_no_mp4(monkeypatch, tmp_path, capsys):
    import sys

    from truthloop.lookback.video import find_encoder

    start = fake_start_png(tmp_path / "start.png")
    out = tmp_path / "run"
    use_fakes(monkeypatch)
    assert run_main(["run", start, "--headless", "--out", out]) == 0
    capsys.readouterr()
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    assert find_encoder() is None
    assert run_main(["export", out, "--all"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("skipped mp4: no ffmpeg encoder here")
    assert run_main(["export", out, "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["kind"] for f in data["files"]] == ["gif", "sheet", "drift", "html"]
    for item in data["files"]:
        assert Path(item["path"]).stat().st_size == item["bytes"]
    assert data["skipped"][0]["kind"] == "mp4" and "ffmpeg" in data["skipped"][0]["reason"]


def test_runs_dir_from_the_environment(monkeypatch, tmp_path, capsys):
    runs = tmp_path / "my runs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("TRUTHLOOP_RUNS_DIR", str(runs))
    start = fake_start_png(tmp_path / "start.png")
    use_fakes(monkeypatch)
    assert run_main(["run", start, "--headless", "--max-iters", "1"]) == 0
    made = list(runs.iterdir())
    assert len(made) == 1 and made[0].name.endswith("-start")
    assert not (elsewhere / "runs").exists()
    capsys.readouterr()
    assert run_main(["runs", "--json"]) == 0  # `runs` looks there too
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == [str(made[0])]
