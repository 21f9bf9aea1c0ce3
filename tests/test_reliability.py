"""Faults a long run meets on a shared box over a flaky link: kills, signals, full disks, OOM, a
second process, a damaged run directory. The loop's logic runs in-process on fake backends; kills
and real signals run the CLI in a subprocess on the tiny models (scripts/fault_trials.py has the
30-trial version of the kill test)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fakes
from faulthelpers import (
    REPO, SCRIPT, TRAJECTORY, assert_one_clean_error_line, cli_subprocess, fake_start_png,
    image_ok, prompts, run_main, summary, use_fakes,
)
from truthloop import store
from truthloop.store import RunWriter, is_locked, read_run, resume_problem


@pytest.fixture
def start_png(tmp_path):
    return fake_start_png(tmp_path / "in" / "start.png")


def fake_run(monkeypatch, start_png, out, *extra, painter=None, captioner=None):
    use_fakes(monkeypatch, captioner=captioner, painter=painter)
    return run_main(["run", start_png, "--headless", "--out", out, *extra])


def resume_with_fakes(monkeypatch, out, *extra, painter=None):
    use_fakes(monkeypatch, painter=painter)
    return run_main(["resume", out, "--headless", *extra])


def assert_intact(out: Path, records: int | None = None) -> None:
    """Readable, nothing half-written visible, every recorded image decodes."""
    view = read_run(out)
    assert [p for p in view.problems if "last line is incomplete" not in p] == []
    for number, record in enumerate(view.records):
        assert record.index == number
        if record.image:
            assert image_ok(out / record.image)
    for png in (out / "images").glob("*.png"):
        assert image_ok(png), png
    if records is not None:
        assert len(view.records) == records


# -- kills at chosen instants (the real CLI, tiny models) --------------------------------------
def _load_trials_script():
    spec = importlib.util.spec_from_file_location("fault_trials", REPO / "scripts/fault_trials.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_trials"] = module
    spec.loader.exec_module(module)
    return module


def _log_torn(out: Path) -> bool:
    log = out / "log.jsonl"
    data = log.read_bytes() if log.exists() else b""
    return bool(data) and not data.endswith(b"\n")


def _after_first_line(delay: float):
    seen: list[float] = []

    def when(out: Path, elapsed: float) -> bool:
        log = out / "log.jsonl"
        if not seen and log.exists() and log.read_bytes().count(b"\n") >= 1:
            seen.append(elapsed)
        return bool(seen) and elapsed - seen[0] >= delay

    return when


KILLS = {
    # name: (seed mode, slow writes, when to SIGKILL, the phase it must land in)
    "model-load": ("reseed", False, lambda out, t: (out / "summary.json").exists(), "model load"),
    "mid-denoising": ("shared", False, _after_first_line(0.35), "iteration"),
    "torn-log-line": ("shared", True, lambda out, t: _log_torn(out), "mid log line"),
    "mid-png-write": ("reseed", True,
                      lambda out, t: any((out / "images").glob(".0001.png.tmp-*")),
                      "mid file write"),
}


@pytest.fixture(scope="module")
def trials_env(tmp_path_factory, truthloop_cache):
    module = _load_trials_script()
    workdir = tmp_path_factory.mktemp("kills")
    env = module.child_env(str(truthloop_cache))
    refs = {mode: module.reference(mode, workdir, env, slow_too=False) for mode in module.MODES}
    return module, workdir, env, refs


@pytest.mark.parametrize("name", list(KILLS))
def test_sigkill_then_resume_equals_uninterrupted(trials_env, name):
    module, workdir, env, refs = trials_env
    mode, slow, when, phase = KILLS[name]
    trial = module.Trial(number=list(KILLS).index(name), mode=mode, slow=slow, kill_at=0.0)
    trial = module.run_trial(trial, refs[mode], workdir, env, kill_when=when)
    assert trial.killed, "the run ended before the kill point"
    assert trial.phase.startswith(phase), trial.phase  # "iteration" = mid-denoising on a fast box
    assert trial.corrupt == []
    assert trial.resumed, trial.note
    assert trial.equal, trial.note


# -- signals ----------------------------------------------------------------------------------
@pytest.fixture
def terminal_signals():
    """The signals as a terminal's foreground job has them, whoever started pytest: under
    nohup SIGHUP is ignored, and in a background job (`cmd &`) SIGINT is, and truthloop rightly
    leaves an ignored signal alone."""
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_DFL) for signum in signums}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_denoising_stops_cleanly_and_resumes(monkeypatch, tmp_path, start_png, capsys,
                                                        signum, terminal_signals):
    out = tmp_path / "run"

    def hook(step):
        if len(painter.painted) == 2 and step == 2:  # third image, second denoising step
            os.kill(os.getpid(), signum)

    painter = fakes.FakePainter(step_hook=hook)
    code = fake_run(monkeypatch, start_png, out, painter=painter)
    captured = capsys.readouterr()
    assert code == 128 + signum
    assert "Traceback" not in captured.err
    assert f"truthloop resume {out}" in captured.out
    assert summary(out)["status"] == "stopped"
    assert read_run(out).status == "stopped" and not is_locked(out)
    assert_intact(out, records=2)
    assert resume_problem(read_run(out)) is None
    assert resume_with_fakes(monkeypatch, out) == 0
    assert prompts(out) == TRAJECTORY
    assert summary(out)["status"] == "converged"


def test_second_ctrl_c_abandons_the_step_and_still_stops_cleanly(monkeypatch, tmp_path, start_png,
                                                                 capsys, terminal_signals):
    out = tmp_path / "run"

    def hook(step):
        if len(painter.painted) == 1 and step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    painter = fakes.FakePainter(step_hook=hook)
    assert fake_run(monkeypatch, start_png, out, painter=painter) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert summary(out)["status"] == "stopped"
    assert_intact(out, records=1)
    assert resume_with_fakes(monkeypatch, out) == 0
    assert prompts(out) == TRAJECTORY


def _default_hangup() -> None:
    # A child of a pytest run under nohup would inherit SIGHUP ignored, and truthloop keeps
    # nohup's meaning; these tests are about an ordinary terminal.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_sighup_to_the_tui_stops_the_run_cleanly(tmp_path, truthloop_cache):
    """The TUI over a dropped SSH link: the terminal hangs up mid-run; the run must end as
    "stopped", intact and resumable, and the app must exit with 128 + SIGHUP."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    out = tmp_path / "run"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TERM="xterm-256color")
    proc = subprocess.Popen([sys.executable, "-m", "truthloop.cli", "demo", "--clauses", "0",
                             "--steps", "20", "--max-iters", "50", "--out", str(out)],
                            env=env, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=_default_hangup, start_new_session=True)
    os.close(slave)
    screen = bytearray()

    def drain() -> None:  # the app blocks if nobody reads its terminal
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        log = out / "log.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and log.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the TUI ended before the hang-up"
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        reader.join(timeout=5)
    assert code == 128 + signal.SIGHUP, bytes(screen[-2000:]).decode(errors="replace")
    # Nothing but the app on the terminal (textual-image's probe warning included, on a
    # terminal that does not answer it, like this pty).
    assert b"Traceback" not in screen and b"Failed to get cell size" not in screen
    assert summary(out)["status"] == "stopped"
    assert_intact(out)
    assert read_run(out).status == "stopped" and not is_locked(out)
    assert resume_problem(read_run(out)) is None


def test_sighup_and_sigterm_on_the_real_cli(tmp_path, truthloop_cache):
    """The SSH-drop case end to end: SIGHUP mid-run, SIGTERM mid-load; both stop as "stopped"."""
    for signum, wait_for in ((signal.SIGHUP, "line"), (signal.SIGTERM, "dir")):
        out = tmp_path / f"run-{signum}"
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        proc = subprocess.Popen([sys.executable, "-m", "truthloop.cli", "demo", "--headless",
                                 "--clauses", "0", "--max-iters", "5", "--out", str(out)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_hangup)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            log = out / "log.jsonl"
            if wait_for == "dir" and (out / "summary.json").exists():
                break
            if wait_for == "line" and log.exists() and log.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.01)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 128 + signum, stderr
        assert "Traceback" not in stderr
        assert f"truthloop resume {out}" in stdout
        assert summary(out)["status"] == "stopped"
        assert_intact(out)
        assert resume_problem(read_run(out)) is None


# -- disk full, permission denied -------------------------------------------------------------
def _failing_writes(monkeypatch, error_no, when):
    real = store.atomic_write_bytes

    def atomic_write_bytes(path, data):
        if when(Path(path)):
            raise OSError(error_no, os.strerror(error_no), str(path))
        return real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", atomic_write_bytes)


def test_disk_full_at_an_image_stops_as_error_with_everything_before_intact(
        monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"
    _failing_writes(monkeypatch, errno.ENOSPC, lambda p: p.name == "0003.png")
    assert fake_run(monkeypatch, start_png, out) == 1
    err = capsys.readouterr().err
    assert_one_clean_error_line(err, "disk full", "free space, then resume")
    assert summary(out)["status"] == "error"
    assert "disk full" in summary(out)["message"]
    assert_intact(out, records=3)
    monkeypatch.undo()
    assert resume_with_fakes(monkeypatch, out) == 0
    assert prompts(out) == TRAJECTORY


def test_disk_full_everywhere_leaves_an_interrupted_resumable_run(monkeypatch, tmp_path, start_png,
                                                                  capsys):
    out = tmp_path / "run"
    full = []
    _failing_writes(monkeypatch, errno.ENOSPC,
                    lambda p: bool(full) or (p.name == "0002.png" and not full.append(1)))
    assert fake_run(monkeypatch, start_png, out) == 1
    assert_one_clean_error_line(capsys.readouterr().err, "disk full")
    assert read_run(out).status == "interrupted"  # the summary could not be written either
    assert_intact(out, records=2)
    monkeypatch.undo()
    assert resume_with_fakes(monkeypatch, out) == 0
    assert prompts(out) == TRAJECTORY


def test_disk_full_mid_log_line_tears_nothing_a_reader_sees(monkeypatch, tmp_path, start_png,
                                                            capsys):
    """A short write of a log line (ENOSPC partway): the torn tail is invisible, then trimmed."""
    out = tmp_path / "run"
    real_os = os

    class ShortWriteOs:
        failing = False

        def __getattr__(self, name):
            return getattr(real_os, name)

        def write(self, fd, data):
            if self.failing:
                return real_os.write(fd, data[: len(data) // 2])
            return real_os.write(fd, data)

    proxy = ShortWriteOs()
    monkeypatch.setattr(store, "os", proxy)

    def hook(step):
        if len(painter.painted) == 3:
            proxy.failing = True

    painter = fakes.FakePainter(step_hook=hook)
    assert fake_run(monkeypatch, start_png, out, painter=painter) == 1
    assert_one_clean_error_line(capsys.readouterr().err, "disk full")
    assert (out / "log.jsonl").read_bytes()[-1:] != b"\n"  # the torn half-line is on disk...
    assert_intact(out, records=3)  # ...and no reader sees it
    monkeypatch.undo()
    assert resume_with_fakes(monkeypatch, out) == 0
    assert prompts(out) == TRAJECTORY
    assert all(json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())


def test_permission_denied_at_an_image(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"
    _failing_writes(monkeypatch, errno.EACCES, lambda p: p.name == "0001.png")
    assert fake_run(monkeypatch, start_png, out) == 1
    assert_one_clean_error_line(capsys.readouterr().err, "cannot write the run directory")
    assert summary(out)["status"] == "error"
    assert_intact(out, records=1)


@pytest.mark.parametrize("error_no", [errno.ENOSPC, errno.EACCES])
def test_write_error_while_creating_the_run_leaves_nothing(monkeypatch, tmp_path, start_png, capsys,
                                                           error_no):
    out = tmp_path / "runs" / "run"
    _failing_writes(monkeypatch, error_no, lambda p: p.name in ("input.png", "run.json"))
    assert fake_run(monkeypatch, start_png, out) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "cannot create run directory",
                                os.strerror(error_no))
    assert list((tmp_path / "runs").iterdir()) == []  # no half-made run, no staging directory
    monkeypatch.undo()
    assert fake_run(monkeypatch, start_png, out) == 0  # the same command works once fixed
    assert prompts(out) == TRAJECTORY


def test_disk_full_when_opening_a_resume(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"
    assert fake_run(monkeypatch, start_png, out, "--max-iters", "2") == 0
    before = (out / "log.jsonl").read_bytes()
    _failing_writes(monkeypatch, errno.ENOSPC, lambda p: p.name == "summary.json")
    capsys.readouterr()
    assert resume_with_fakes(monkeypatch, out, "--max-iters", "10") == 2
    assert_one_clean_error_line(capsys.readouterr().err, "disk full")
    assert (out / "log.jsonl").read_bytes() == before
    assert not is_locked(out)


# -- GPU out of memory ------------------------------------------------------------------------
class OutOfMemoryError(RuntimeError):
    pass


def _oom_error(kind):
    if kind == "torch":
        import torch

        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    if kind == "mps":
        return RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)")
    return OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("kind", ["named", "torch", "mps"])
def test_gpu_oom_mid_run_suggests_low_vram(monkeypatch, tmp_path, start_png, capsys, kind):
    out = tmp_path / "run"
    error = _oom_error(kind)

    def hook(step):
        if len(painter.painted) == 2 and step == 3:
            raise error

    painter = fakes.FakePainter(step_hook=hook)
    assert fake_run(monkeypatch, start_png, out, painter=painter) == 1
    line = assert_one_clean_error_line(capsys.readouterr().err, "out of memory", "--low-vram",
                                       "--width")
    assert "Tried to allocate" not in line
    assert summary(out)["status"] == "error"
    assert "Traceback" in (out / "error.log").read_text()  # the details are kept, not shown
    assert_intact(out, records=2)
    assert resume_problem(read_run(out)) is None


def test_gpu_oom_while_loading_models(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"

    def build(config, emit):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    use_fakes(monkeypatch, factory=build)
    assert run_main(["run", start_png, "--headless", "--out", out]) == 1
    assert_one_clean_error_line(capsys.readouterr().err, "--low-vram")
    assert summary(out)["status"] == "error"
    assert_intact(out, records=0)


# -- two processes, one run directory ---------------------------------------------------------
def test_second_process_refuses_a_locked_run(monkeypatch, tmp_path, start_png):
    out = tmp_path / "run"
    assert fake_run(monkeypatch, start_png, out, "--max-iters", "2") == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    holder = RunWriter.reopen(out)  # this process now writes the run
    try:
        for args in (["resume", out, "--headless"],
                     ["resume", out, "--headless", "--max-iters", "9"],
                     ["run", start_png, "--headless", "--out", out]):
            done = cli_subprocess(args, timeout=120)
            assert done.returncode == 2, done.stderr
            assert_one_clean_error_line(done.stderr, "being written by")
        assert str(os.getpid()) in cli_subprocess(["resume", out, "--headless"]).stderr
    finally:
        holder.close()
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == files  # nothing was written by the refused processes


def test_run_into_an_existing_run_is_refused(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"
    assert fake_run(monkeypatch, start_png, out, "--max-iters", "2") == 0
    before = (out / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert fake_run(monkeypatch, start_png, out) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "already exists", "truthloop resume")
    assert (out / "log.jsonl").read_bytes() == before


# -- damaged run directories ------------------------------------------------------------------
@pytest.fixture
def finished_run(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"
    assert fake_run(monkeypatch, start_png, out, "--max-iters", "4") == 0
    capsys.readouterr()
    return out


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


CORRUPTIONS = {
    # name: (damage, fragments of the one-line message; None = resume must succeed)
    "truncated-last-line": (lambda d: (d / "log.jsonl").write_bytes(
        (d / "log.jsonl").read_bytes()[:-40]), None),
    "garbage-summary": (lambda d: (d / "summary.json").write_text("{not json"), None),
    "no-summary": (lambda d: (d / "summary.json").unlink(), None),
    "stale-temp-files": (lambda d: (d / "images/.0004.png.tmp-99999").write_bytes(b"\x89PNG"),
                         None),
    "garbage-middle-line": (lambda d: _replace_line(d, 1, b"{\"index\": 1, \"capt"),
                            ["log.jsonl: line 2", "cannot be resumed"]),
    "record-out-of-sequence": (lambda d: _replace_line(d, 2, b'{"index": 7}'),
                               ["log.jsonl: line 3 is not a record", "cannot be resumed"]),
    "record-renumbered": (lambda d: _replace_line(d, 2, json.dumps(dict(
        json.loads((d / "log.jsonl").read_text().splitlines()[2]), index=7)).encode()),
        ["log.jsonl: record 3", "cannot be resumed"]),
    "image-path-escapes": (lambda d: _replace_line(d, 0, json.dumps(dict(
        json.loads((d / "log.jsonl").read_text().splitlines()[0]), image="../../x.png")).encode()),
        ["log.jsonl: record 1"]),
    "missing-image": (lambda d: (d / "images/0002.png").unlink(),
                      ["images/0002.png is missing", "cannot be resumed"]),
    "truncated-last-image": (lambda d: (d / "images/0003.png").write_bytes(
        (d / "images/0003.png").read_bytes()[:30]), ["images/0003.png", "cannot be resumed"]),
    "run-json-garbage": (lambda d: (d / "run.json").write_text("{\"config\": "),
                         ["run.json is not valid"]),
    "run-json-missing": (lambda d: (d / "run.json").unlink(), ["not a truthloop run directory"]),
    "config-unknown-key": (lambda d: _edit_json(d / "run.json", lambda j: j["config"]["generate"]
                                                .update(stepz=3)), ["run.json", "stepz"]),
    "config-bad-value": (lambda d: _edit_json(d / "run.json", lambda j: j["config"]["generate"]
                                              .update(steps=-3)), ["run.json", "--steps"]),
    "config-wrong-type": (lambda d: _edit_json(d / "run.json", lambda j: j["config"]["loop"]
                                               .update(max_iters="many")), ["run.json"]),
    "config-not-object": (lambda d: _edit_json(d / "run.json", lambda j: j.update(config=[1])),
                          ["run.json"]),
}


def _replace_line(run_dir: Path, number: int, line: bytes) -> None:
    lines = (run_dir / "log.jsonl").read_bytes().splitlines()
    lines[number] = line
    (run_dir / "log.jsonl").write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_resume_a_damaged_run(monkeypatch, finished_run, capsys, name):
    damage, message = CORRUPTIONS[name]
    out = finished_run
    damage(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    code = resume_with_fakes(monkeypatch, out, "--max-iters", "10")
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        assert "Traceback" not in err
        assert prompts(out) == TRAJECTORY
        assert_intact(out, records=len(TRAJECTORY))
        assert not list(out.rglob(".*.tmp-*"))
        return
    assert code == 2
    line = assert_one_clean_error_line(err, *message)
    assert str(out) in line
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before  # a refused resume changes nothing
    if (out / "run.json").exists() and "run-json" not in name and "config" not in name:
        view = read_run(out)  # everything readable is still there for `view` and friends
        assert len(view.records) >= 3


def test_resume_of_a_converged_run_is_a_no_op(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"
    assert fake_run(monkeypatch, start_png, out) == 0
    before = (out / "log.jsonl").read_bytes()
    assert resume_with_fakes(monkeypatch, out) == 0
    assert "already converged" in capsys.readouterr().out
    assert (out / "log.jsonl").read_bytes() == before


def test_resume_of_a_missing_directory(monkeypatch, tmp_path, capsys):
    assert resume_with_fakes(monkeypatch, tmp_path / "nope") == 2
    assert_one_clean_error_line(capsys.readouterr().err, "no such run directory")


def test_shared_mode_resume_continues_the_random_stream(monkeypatch, tmp_path, start_png,
                                                       terminal_signals):
    """Stopped mid-run in shared mode, the resumed run draws the same images as an unbroken one."""
    whole = tmp_path / "whole"
    captioner = fakes.FakeCaptioner(SCRIPT, start="step 0")
    assert fake_run(monkeypatch, start_png, whole, "--seed-mode", "shared", "--max-iters", "8",
                    captioner=captioner, painter=fakes.FakePainter(seed_mode="shared")) == 0

    def hook(step):
        if len(painter.painted) == 3 and step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    painter = fakes.FakePainter(seed_mode="shared", step_hook=hook)
    part = tmp_path / "part"
    assert fake_run(monkeypatch, start_png, part, "--seed-mode", "shared", "--max-iters", "8",
                    captioner=captioner, painter=painter) == 128 + signal.SIGTERM
    assert resume_with_fakes(monkeypatch, part,
                             painter=fakes.FakePainter(seed_mode="shared")) == 0
    assert prompts(part) == prompts(whole)
    for record in read_run(whole).records:
        if record.image:
            assert (part / record.image).read_bytes() == (whole / record.image).read_bytes()


# -- the terminal goes away -------------------------------------------------------------------
def test_nohup_keeps_a_run_alive_through_sighup(monkeypatch, tmp_path, start_png):
    """Under `nohup` SIGHUP is ignored; the headless run must not re-arm it and stop."""
    out = tmp_path / "run"

    def hook(step):
        if len(painter.painted) == 1 and step == 1:
            os.kill(os.getpid(), signal.SIGHUP)

    painter = fakes.FakePainter(step_hook=hook)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert fake_run(monkeypatch, start_png, out, painter=painter) == 0
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert summary(out)["status"] == "converged"
    assert prompts(out) == TRAJECTORY


def test_closed_stdout_does_not_end_the_run(monkeypatch, tmp_path, start_png):
    """`truthloop run ... | head -1`, or an SSH terminal gone dead: the run still finishes."""
    out = tmp_path / "run"

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise ValueError("no fd")

        def isatty(self):
            return False

    monkeypatch.setattr(sys, "stdout", Gone())
    assert fake_run(monkeypatch, start_png, out) == 0
    assert summary(out)["status"] == "converged"
    assert prompts(out) == TRAJECTORY


def test_headless_pipe_closed_early_real_process(tmp_path, start_png):
    """A real pipe closed by the reader after one line: exit without a traceback, run complete."""
    out = tmp_path / "run"
    code = (
        "import sys, time, fakes, faulthelpers as h\n"
        "class MP:\n"
        "    def setattr(self, obj, name, value): setattr(obj, name, value)\n"
        "h.use_fakes(MP(), painter=fakes.FakePainter(step_hook=lambda s: time.sleep(0.05)))\n"
        f"sys.exit(h.run_main(['run', {str(start_png)!r}, '--headless', '--out', {str(out)!r}]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert summary(out)["status"] == "converged"


# -- `truthloop runs` over damaged run directories ---------------------------------------------
def test_runs_listing_survives_damaged_directories(monkeypatch, tmp_path, start_png, capsys):
    runs = tmp_path / "runs"
    for name in ("good", "torn", "no-image", "bad-summary", "bad-run-json", "killed"):
        assert fake_run(monkeypatch, start_png, runs / name, "--max-iters", "3") == 0
    log = runs / "torn" / "log.jsonl"
    log.write_bytes(log.read_bytes()[:-25])
    (runs / "no-image" / "images" / "0001.png").unlink()
    (runs / "bad-summary" / "summary.json").write_text("{")
    (runs / "bad-run-json" / "run.json").write_text("[")
    _edit_json(runs / "killed" / "summary.json", lambda j: j.update(status="running"))
    capsys.readouterr()
    assert run_main(["runs", runs, "--json"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    rows = {row["run"]: row for row in json.loads(captured.out)}
    assert set(rows) == {"good", "torn", "no-image", "bad-summary", "bad-run-json", "killed"}
    assert rows["good"]["status"] == "max_iters" and rows["good"]["problems"] == []
    assert rows["torn"]["records"] == 2 and "log.jsonl" in rows["torn"]["problems"][0]
    assert rows["no-image"]["records"] == 3
    assert "images/0001.png" in rows["no-image"]["problems"][0]
    assert rows["bad-summary"]["records"] == 3 and "summary.json" in rows["bad-summary"]["problems"][0]
    assert rows["bad-run-json"]["status"] == "unreadable"
    assert "run.json" in rows["bad-run-json"]["problems"][0]
    assert rows["killed"]["status"] == "interrupted"
    assert run_main(["runs", runs]) == 0  # the table too
    assert "Traceback" not in capsys.readouterr().err


def test_stale_half_created_directory_is_cleaned_by_the_next_run(monkeypatch, tmp_path, start_png):
    runs = tmp_path / "runs"
    stale = runs / ".old.creating-99999"
    (stale / "images").mkdir(parents=True)
    (stale / "run.json").write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert fake_run(monkeypatch, start_png, runs / "new", "--max-iters", "1") == 0
    assert sorted(p.name for p in runs.iterdir()) == ["new"]


def test_next_run_removes_a_killed_writers_half_created_directory(tmp_path):
    """A SIGKILL while a run directory is being created leaves a hidden staging folder; the
    next run in the same place removes it at once (its creator is gone), whatever its age."""
    import subprocess
    import sys as _sys

    from truthloop.store import RunWriter

    dead = subprocess.run([_sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stray = tmp_path / f".run.creating-{dead}"
    (stray / "images").mkdir(parents=True)
    writer = RunWriter.create(tmp_path / "run", {"config": {}}, None)
    writer.close()
    assert not stray.exists()
    assert (tmp_path / "run" / "run.json").exists()


def test_a_deep_run_directory_is_printed_on_one_line(monkeypatch, tmp_path, start_png, capsys):
    """stderr is no terminal here (Rich then assumes 80 columns): a long path must still come
    out whole on its line, for the user's log and for scripts that read it."""
    out = tmp_path / ("deeply-nested-" * 8) / "run"
    assert fake_run(monkeypatch, start_png, out, "--max-iters", "1") == 0
    assert f"run directory: {out}" in capsys.readouterr().err.splitlines()


def test_a_readers_probe_of_the_lock_does_not_make_a_new_run_directory_fail(tmp_path):
    """`is_locked` (a reader: the sweep table, `view`) takes a shared lock for an instant; a
    writer creating or reopening the run at that moment waits it out (seen on an H200: 16
    trajectories of one batch created side by side, one refused as 'being written')."""
    import fcntl
    import threading

    from truthloop.store import LOCK_FILE, RunWriter

    run = tmp_path / "run"
    RunWriter.create(run, {"format": 1, "config": {}}, None).close()
    fd = os.open(run / LOCK_FILE, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe in progress
    threading.Timer(0.1, lambda: os.close(fd)).start()
    writer = RunWriter.reopen(run)  # raised RunLocked before the fix
    writer.close()
