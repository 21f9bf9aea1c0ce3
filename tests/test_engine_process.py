"""The app's engine in a process of its own (truthloop.engine, issue 20): the same loop, its events
relayed, keys obeyed, and nothing left running or unsaid when either side goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from truthloop import events as ev
from truthloop.engine import EngineProcess
from truthloop.loop import LoopFailed, TruthLoop
from truthloop.store import RunDirError, read_run

import engine_fakes
from fakes import start_image
from tui_helpers import make_config, make_loop

TESTS = Path(__file__).resolve().parent


def engine(run_dir: Path, maker, max_iters: int = 20, tmp_log: Path | None = None) -> EngineProcess:
    loop = TruthLoop(make_config(max_iters=max_iters), run_dir, lambda config, emit: None,
                     input_image=start_image())
    return EngineProcess(loop, maker, log_dir=tmp_log)


def records_of(run_dir: Path) -> list:
    return read_run(run_dir).records


def wait_until(condition, timeout: float = 120.0) -> None:  # a hang's bound, not a speed's
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.02)


def test_the_engine_process_runs_the_same_loop_and_relays_its_events(tmp_path):
    process = engine(tmp_path / "child", engine_fakes.scripted, tmp_log=tmp_path / "logs")
    seen = []
    process.on_event = seen.append
    summary = process.run()

    alone = make_loop(tmp_path / "alone", painter=engine_fakes.SlowPainter())
    alone.run()
    assert summary["status"] == "converged"
    assert [r.fed_prompt for r in records_of(tmp_path / "child")] == \
        [r.fed_prompt for r in records_of(tmp_path / "alone")]
    kinds = [type(event).__name__ for event in seen]
    assert kinds[0] == "RunStarted" and kinds[-1] == "Finished"
    assert kinds.count("IterationDone") == len(records_of(tmp_path / "child"))
    assert any(isinstance(event, ev.DenoiseStep) for event in seen)
    assert process.done.is_set() and process.summary["status"] == "converged"
    # The engine ran in another process, which wrote the run, and is gone.
    assert read_run(tmp_path / "child").summary["pid"] != os.getpid()
    assert process.memory.startswith("RSS ")  # the child's own memory line came up


def test_keys_reach_the_engine_pause_step_and_stop(tmp_path):
    run_dir = tmp_path / "run"
    process = engine(run_dir, engine_fakes.endless, max_iters=1000)
    seen = []
    process.on_event = seen.append
    result = {}
    worker = threading.Thread(target=lambda: result.update(process.run()))
    worker.start()
    try:
        wait_until(lambda: len(records_of(run_dir)) >= 2 if (run_dir / "log.jsonl").exists()
                   else False)
        process.control.pause()
        wait_until(lambda: any(isinstance(e, ev.Paused) for e in seen))
        paused_at = len(records_of(run_dir))
        time.sleep(0.6)
        assert len(records_of(run_dir)) == paused_at  # paused means paused
        process.control.step()
        wait_until(lambda: len(records_of(run_dir)) == paused_at + 1)
        time.sleep(0.6)
        assert len(records_of(run_dir)) == paused_at + 1  # exactly one iteration
        process.live_preview = True  # a command the child takes without a word
        process.control.stop()
        worker.join(20)
    finally:
        process.control.stop()
        worker.join(20)
    assert result["status"] == "stopped"
    assert read_run(run_dir).summary["status"] == "stopped"


def test_a_setup_error_comes_back_as_its_one_line(tmp_path):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "somebody-elses.txt").write_text("x")
    process = engine(run_dir, engine_fakes.scripted)
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        process.run()
    assert (run_dir / "somebody-elses.txt").read_text() == "x"


def test_an_engine_that_dies_says_so_and_where_its_output_is(tmp_path):
    process = engine(tmp_path / "run", engine_fakes.dying, tmp_log=tmp_path / "logs")
    with pytest.raises(LoopFailed, match=r"engine process ended without a result \(exit code 3\)"
                                         r"; its output is in .*logs/engine-"):
        process.run()
    assert process.done.is_set()


def test_the_engines_output_goes_to_its_log_not_the_terminal(tmp_path, capfd):
    process = engine(tmp_path / "run", engine_fakes.noisy, tmp_log=tmp_path / "logs")
    process.run()
    out, err = capfd.readouterr()
    assert "NOISE" not in out + err
    logged = process.log_path.read_text()
    assert "NOISE ON STDOUT" in logged and "NOISE ON STDERR" in logged \
        and "NOISE FROM C" in logged


def test_the_engine_stops_resumably_when_the_app_is_killed(tmp_path):
    """SIGKILL the process that watches (the app): its engine stops after the current step,
    writes "stopped", and exits; the run resumes."""
    run_dir = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(TESTS)!r}]
        from pathlib import Path
        from test_engine_process import engine
        import engine_fakes
        if __name__ == "__main__":
            engine(Path({str(run_dir)!r}), engine_fakes.endless, max_iters=1000).run()
    """)
    path = tmp_path / "app.py"
    path.write_text(script)
    app = subprocess.Popen([sys.executable, str(path)], cwd=TESTS.parent)
    try:
        wait_until(lambda: (run_dir / "log.jsonl").exists() and len(records_of(run_dir)) >= 2,
                   timeout=60)
        engine_pid = json.loads((run_dir / "summary.json").read_text())["pid"]
        assert engine_pid != app.pid
        app.send_signal(signal.SIGKILL)
        app.wait(10)
        wait_until(lambda: read_run(run_dir).summary.get("status") == "stopped", timeout=20)
        wait_until(lambda: not _alive(engine_pid), timeout=20)
    finally:
        if app.poll() is None:
            app.kill()
    assert read_run(run_dir).status == "stopped"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (dead) parent's reaper counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_engine_started_inside_the_app_starts(tmp_path):
    """`f` in `view` starts the first engine while Textual holds sys.stderr (fileno() -1):
    multiprocessing's resource tracker must not be handed that."""
    run_dir = tmp_path / "run"
    script = textwrap.dedent(f"""
        import io, sys
        sys.path[:0] = [{str(TESTS)!r}]
        from pathlib import Path
        from test_engine_process import engine
        import engine_fakes

        class Captured(io.StringIO):  # as Textual's capture of stderr
            def fileno(self):
                return -1

        if __name__ == "__main__":
            sys.stderr = Captured()
            summary = engine(Path({str(run_dir)!r}), engine_fakes.scripted).run()
            print(summary["status"], file=sys.__stdout__)
    """)
    path = tmp_path / "app.py"
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path)], cwd=TESTS.parent, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "converged", done.stdout + done.stderr


def test_the_outbox_never_blocks_the_loop_and_keeps_order(tmp_path):
    """A reader that does not read: put() returns at once; steps and previews collapse to the
    newest since the last message kept in order; nothing else is lost or reordered."""
    import multiprocessing

    from truthloop.engine import Outbox

    reader, writer = multiprocessing.Pipe(duplex=False)
    outbox = Outbox(writer, on_broken=lambda: None)
    preview = bytes(96 * 96 * 3)

    def produce():
        for index in range(3):
            outbox.put(("event", ev.IterationStarted(index)))
            for step in range(1, 51):
                outbox.put(("event", ev.DenoiseStep(index, step, 50)))
                if step % 5 == 0:
                    outbox.put(("event", ev.DenoisePreview(index, step, 96, 96, preview)))
            outbox.put(("event", ev.IterationDone(make_record(index))))

    # 30 previews are ~830 KB, more than a pipe holds: a plain send would block for good, since
    # nobody reads yet. The bound is a deadlock's, not a speed's: a busy machine still finishes.
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(timeout=120)
    assert not producer.is_alive(), "put() blocked on a reader that does not read"
    outbox.put(("returned", {"status": "max_iters"}))
    got = []
    closer = threading.Thread(target=outbox.close)
    closer.start()
    while True:
        message = reader.recv()
        got.append(message)
        if message[0] == "returned":
            break
    closer.join(10)
    def kind(message):
        if message[0] != "event":
            return message[0]
        event = message[1]
        index = event.record.index if isinstance(event, ev.IterationDone) else event.index
        return type(event).__name__, index

    kinds = [kind(m) for m in got]
    for index in range(3):
        started_at = kinds.index(("IterationStarted", index))
        done_at = kinds.index(("IterationDone", index))
        assert started_at < done_at
        between = kinds[started_at + 1:done_at]
        assert set(between) <= {("DenoiseStep", index), ("DenoisePreview", index)}
    steps = [m[1].step for m in got if m[0] == "event" and isinstance(m[1], ev.DenoiseStep)]
    assert steps[-1] == 50  # the newest step of each iteration is never dropped
    assert kinds[-1] == "returned"


def make_record(index):
    from truthloop.record import Record

    return Record(index=index, caption="c", compared="c", fed_prompt="c")


def test_the_app_and_its_engine_draw_and_compute_on_different_cpus(tmp_path):
    """pin_watcher: the app keeps one CPU, an engine started afterwards (from the app's worker
    thread, which inherits the app's single CPU) moves itself to the others. Below
    PIN_FROM_CPUS nothing is pinned; here it is lowered to this machine's count."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    report = tmp_path / "affinity"
    script = textwrap.dedent(f"""
        import json, os, sys, threading
        sys.path[:0] = [{str(TESTS)!r}]
        from pathlib import Path
        from truthloop import engine as engine_module
        from test_engine_process import engine
        import engine_fakes

        if __name__ == "__main__":
            every = set(os.sched_getaffinity(0))
            engine_module.PIN_FROM_CPUS = len(every)
            engine_module.pin_watcher()
            mine = set(os.sched_getaffinity(0))
            process = engine(Path({str(tmp_path / "run")!r}), engine_fakes.affinity_reporting)
            worker = threading.Thread(target=process.run)  # as the app's thread worker
            worker.start(); worker.join(60)
            print(json.dumps([sorted(every), sorted(mine), process.summary.get("status")]))
    """)
    path = tmp_path / "app.py"
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path)], cwd=TESTS.parent, capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, TRUTHLOOP_TEST_AFFINITY=str(report)))
    every, mine, status = json.loads(done.stdout.strip().splitlines()[-1])
    engine_cpus = {int(cpu) for cpu in report.read_text().split(",")}
    assert status == "converged", done.stderr
    assert len(mine) < len(every) and set(mine) | engine_cpus == set(every)
    assert not set(mine) & engine_cpus


def test_engine_logs_do_not_pile_up(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(30):
        old = logs / f"engine-old-{i:02d}.log"
        old.write_text("a warning\n")
        os.utime(old, (1000 + i, 1000 + i))
    process = engine(tmp_path / "run", engine_fakes.noisy, tmp_log=logs)
    process.run()
    kept = sorted(path.name for path in logs.glob("engine-*.log"))
    assert len(kept) == 21  # the newest 20 before it, and its own (not empty: it wrote)
    assert "engine-old-09.log" not in kept and "engine-old-10.log" in kept
