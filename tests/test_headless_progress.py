"""Headless runs (issue 15): a transient progress line on stderr inside an iteration (step k/n,
s/it, time left to --max-iters) only when stderr is a terminal, stdout's lines unchanged; --notify
rings the bell / sends a desktop notification at convergence."""

from __future__ import annotations

import io

from rich.console import Console

from truthloop import cli
from truthloop import events as ev
from truthloop.record import Record


def record(index: int, total: float) -> Record:
    return Record(index=index, caption="a cat", compared="a cat", fed_prompt="a cat",
                  image=f"images/{index:04d}.png", timings={"total": total, "generate": total})


def feed(printer, events):
    for event in events:
        printer.handle(event)


def test_progress_inside_an_iteration_with_rate_and_eta(capsys):
    printer = cli.HeadlessPrinter()
    printer.show_steps = True  # as on a terminal
    printer.err = Console(file=io.StringIO(), force_terminal=True, width=120)
    feed(printer, [ev.RunStarted("run", {"loop": {"max_iters": 10}}, 0),
                   ev.IterationStarted(0), ev.DenoiseStep(0, 1, 4)])
    task = printer.steps.tasks[0]
    assert (task.completed, task.total, task.description) == (1, 4, "iteration 0  denoising")
    assert task.fields["rate"] == ""  # nothing drawn yet: no rate to tell
    feed(printer, [ev.IterationDone(record(0, 2.0))])
    assert printer.steps is None  # gone before the stdout line
    feed(printer, [ev.IterationStarted(1), ev.DenoiseStep(1, 3, 4)])
    task = printer.steps.tasks[0]
    assert task.completed == 3 and task.fields["rate"] == "2.00 s/it"
    assert task.fields["eta"].startswith("≤ 1") and task.fields["eta"].endswith(
        "s to --max-iters 10")  # 9 iterations of 2 s left, less what this one ran
    feed(printer, [ev.IterationDone(record(1, 2.0)),
                   ev.Finished({"status": "max_iters", "iterations": 2})])
    printer.close()
    out = capsys.readouterr().out.splitlines()
    assert out == ["[   0]   2.00s  a cat", "[   1]   2.00s  a cat"]  # unchanged


def test_no_progress_line_when_stderr_is_not_a_terminal(capsys):
    printer = cli.HeadlessPrinter()
    assert not printer.show_steps  # pytest captures stderr: not a terminal
    feed(printer, [ev.RunStarted("run", {"loop": {"max_iters": 10}}, 0),
                   ev.IterationStarted(0), ev.DenoiseStep(0, 1, 4)])
    assert printer.steps is None
    feed(printer, [ev.IterationDone(record(0, 1.5))])
    printer.close()
    captured = capsys.readouterr()
    assert captured.out == "[   0]   1.50s  a cat\n" and "denoising" not in captured.err


def test_duration():
    assert [cli._duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_notify_rings_and_sends_at_convergence_only(monkeypatch):
    sent, rung = [], io.StringIO()
    monkeypatch.setattr(cli, "_isatty", lambda stream: stream is rung)
    monkeypatch.setattr(cli.sys, "stderr", rung)
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/notify-send")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr("subprocess.Popen", lambda args, **kwargs: sent.append(args))
    printer = cli.HeadlessPrinter(notify=True)
    printer.err = Console(file=io.StringIO())
    printer.handle(ev.Finished({"status": "max_iters"}))
    assert not sent and rung.getvalue() == ""
    printer.handle(ev.Finished({"status": "converged", "truth_prompts": ["[bold]a dog[/]\x1b"]}))
    assert rung.getvalue() == "\a"
    assert sent == [["/usr/bin/notify-send", "--app-name=truthloop", "truthloop converged",
                     "[bold]a dog[/]\\x1b"]]
    quiet = cli.HeadlessPrinter()  # without --notify: nothing
    quiet.handle(ev.Finished({"status": "converged", "truth_prompts": ["x"]}))
    assert len(sent) == 1 and rung.getvalue() == "\a"


def test_notify_is_an_option_of_run_demo_and_resume():
    parser = cli.build_parser() if hasattr(cli, "build_parser") else None
    if parser is None:
        import pytest

        pytest.skip("no build_parser")
    for command in (["run", "x.png"], ["demo"], ["resume", "r"]):
        args = parser.parse_args([*command, "--notify"])
        assert args.notify
