"""A local sweep's own Ray, started by `truthloop sweep` in a child process (fake models, no GPU):
it listens on loopback only, its token file is its owner's alone, it heals itself when one of
Ray's agents dies, and nothing of it outlives a SIGKILLed driver.

Each test starts one Ray (~5-10 s on two cores); the sweep is 5 prompts x 2 seeds of designed
attractors (tests/sweep_fakes.py), slowed a little so a test can act mid-sweep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("sklearn")

from faulthelpers import prompts  # noqa: E402

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BACKEND = "sweep_fakes:attractor_factory"
PROMPTS = ["a1", "b1", "c1", "e1", "n1"]
SEEDS = [0, 1]


def sweep_env(tmp_path: Path, delay: float) -> dict[str, str]:
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    (fake / "delay").write_text(str(delay))
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]), HOME=str(home),
               TRUTHLOOP_FAKE_DIR=str(fake), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def start_sweep(tmp_path: Path, delay: float = 0.15) -> tuple[subprocess.Popen, Path]:
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "truthloop.cli", "sweep", str(sweep_dir), "--prompts",
         str(prompts_file), "--seeds", "0-1", "--max-iters", "8", "--backend", BACKEND,
         "--no-atlas"],
        env=sweep_env(tmp_path, delay), cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    return process, sweep_dir


def paints(tmp_path: Path) -> int:
    log = tmp_path / "fake" / "paints.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def wait_for_paints(tmp_path: Path, process: subprocess.Popen, count: int,
                    timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while paints(tmp_path) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep drew nothing"
        time.sleep(0.05)


def descendants(root: int) -> dict[int, str]:
    """Every live process below root: {pid: its name as ps shows it}."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(name))
    out: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return out


def alive(pids) -> list[int]:
    found = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(pid)
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address (little-endian words) as text: 127.0.0.1, ::ffff:127.0.0.1, ::"""
    import ipaddress

    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if address.version == 6 and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def listening_sockets(pids) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state that one of the pids holds."""
    table: dict[str, tuple[str, int]] = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                host, port = fields[1].split(":")
                table[fields[9]] = (_address(host), int(port, 16))
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in table:
                found.append((pid, *table[link[8:-1]]))
    return found


def is_loopback(address: str) -> bool:
    import ipaddress

    if address.startswith("::ffff:"):
        address = address[len("::ffff:"):]
    return ipaddress.ip_address(address).is_loopback


def reference_prompts(tmp_path: Path) -> dict[str, list[str]]:
    """The same trajectories run straight through in this process (no Ray, no faults)."""
    import sweep_fakes

    reference = tmp_path / "reference"
    sweep_fakes.make_sweep(reference, PROMPTS, SEEDS)
    return {d.name: prompts(d) for d in sorted((reference / "runs").iterdir())}


def test_a_local_sweep_listens_on_loopback_only_and_keeps_its_token_private(tmp_path):
    """Every socket any process of the sweep listens on (driver, GCS, raylet, agents, workers)
    is bound to a loopback address; Ray's token file is written 0600; the sweep still ends
    well, and leaves nothing running."""
    process, sweep_dir = start_sweep(tmp_path)
    seen: dict[int, str] = {}
    sockets: set[tuple[str, str, int]] = set()
    try:
        wait_for_paints(tmp_path, process, 3)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and process.poll() is None:
            tree = descendants(process.pid) | {process.pid: "driver"}
            seen.update(tree)
            sockets.update((tree.get(pid, "?"), address, port)
                           for pid, address, port in listening_sockets(tree))
            time.sleep(0.3)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    names = {name for name, _, _ in sockets}
    # Ray's own servers were seen listening (so the check looked at the right processes).
    assert any("gcs_server" in name for name in names), sockets
    assert any("raylet" in name for name in names), sockets
    assert len(sockets) >= 4, sockets
    exposed = sorted(s for s in sockets if not is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert len(token.read_text()) == 64
    # Everything the sweep started has ended with it.
    time.sleep(0.5)
    assert not alive(seen), {pid: seen[pid] for pid in alive(seen)}


def test_an_existing_token_file_readable_by_others_is_narrowed(tmp_path, monkeypatch):
    from truthloop.sweep import localray

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("f" * 64)
    token.chmod(0o644)
    note = localray.private_token()
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() == "f" * 64
    assert note and "0644" in note and "owner only" in note
    assert localray.private_token() is None  # nothing more to say once it is private


def test_a_killed_ray_agent_heals_and_the_trajectories_equal_an_unbroken_sweep(tmp_path):
    """SIGKILL Ray's dashboard agent mid-sweep: that takes the local node down (the raylet
    fate-shares with its agents). The sweep says so in one line, starts Ray again, and goes on
    by itself; every trajectory's prompts equal those of the same sweep run without a fault."""
    process, sweep_dir = start_sweep(tmp_path)
    try:
        wait_for_paints(tmp_path, process, 4)
        agents = [pid for pid, name in descendants(process.pid).items()
                  if name.startswith("ray::DashboardAgent")]
        assert agents, descendants(process.pid)
        os.kill(agents[0], signal.SIGKILL)
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    healed = [line for line in err.splitlines() if "restarting Ray" in line]
    assert len(healed) == 1 and "1 of 3" in healed[0], err
    assert "sweep: 8 converged, 2 max_iters" in out, out
    got = {d.name: prompts(d) for d in sorted((sweep_dir / "runs").iterdir())}
    assert got == reference_prompts(tmp_path)


def test_a_killed_driver_leaves_nothing_running(tmp_path):
    """SIGKILL the driver mid-sweep: within seconds no process it started is left (Ray's agents
    used to linger about a minute, one of them listening)."""
    process, _ = start_sweep(tmp_path, delay=0.3)
    try:
        wait_for_paints(tmp_path, process, 2)
        time.sleep(1.0)  # the reaper has seen every process
        tree = descendants(process.pid)
        assert any(name.startswith("ray::DashboardAgent") for name in tree.values()), tree
        process.kill()
        process.wait()
        deadline = time.monotonic() + 15
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: tree[pid] for pid in alive(tree)}
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert not left, left


def test_a_rerun_after_a_killed_driver_names_the_trajectories_it_continues(tmp_path):
    """SIGKILL the driver mid-sweep, then run the same command again: one line on stderr says
    how many trajectories continue from their run directories and names them (those a worker
    was drawing when the driver died); the sweep then finishes as an unbroken one would."""
    import json

    def status(run: Path) -> str:  # no summary yet: killed while its directory was made
        summary = run / "summary.json"
        return json.loads(summary.read_text())["status"] if summary.exists() else "running"

    def cut_off() -> list[str]:
        return sorted(run.name for run in (sweep_dir / "runs").iterdir()
                      if status(run) == "running")

    process, sweep_dir = start_sweep(tmp_path, delay=0.3)
    try:
        wait_for_paints(tmp_path, process, 3)
        # From now on every image a worker starts takes a minute: each worker is soon held in a
        # trajectory it has begun, where the kill must find one (killed at the third image, the
        # workers were at times between two trajectories, and none was cut off), and a worker
        # that outlives its driver a moment (until Ray's reaper ends it) draws nothing more.
        (tmp_path / "fake" / "delay").write_text("60")
        # Held: no image for 2 s (one took 0.3), and a trajectory begun and not ended. (Killed
        # while a trajectory's last image was being captioned, it ended before its worker did.)
        deadline, count, still_since = time.monotonic() + 60, paints(tmp_path), time.monotonic()
        while time.monotonic() < deadline:
            if paints(tmp_path) != count:
                count, still_since = paints(tmp_path), time.monotonic()
            elif time.monotonic() - still_since > 2 and cut_off():
                break
            time.sleep(0.1)
        tree = descendants(process.pid)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 15
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in alive(tree):  # not the reaper's test: none may draw into the rerun's runs
            os.kill(pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    cut = cut_off()
    assert cut, ("no trajectory was cut off mid-way",
                 {run.name: status(run) for run in (sweep_dir / "runs").iterdir()})
    again, _ = start_sweep(tmp_path, delay=0.0)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    notes = [line for line in err.splitlines() if "started before" in line]
    assert len(notes) == 1, err
    what = "trajectory" if len(cut) == 1 else "trajectories"
    assert notes[0].startswith(f"{len(cut)} {what} started before continue")
    assert f"({len(cut)} interrupted)" in notes[0]
    assert notes[0].endswith(": " + ", ".join(cut[:5]) + (f" and {len(cut) - 5} more"
                                                             if len(cut) > 5 else ""))
    assert "sweep: 8 converged, 2 max_iters" in out, out
    # What it drew, and its rate once past its first two images (the two max_iters
    # trajectories alone had more than a dozen images left to draw).
    assert re.search(r"^sweep: \d+ images drawn in .* an hour \(Ray's start and the models' "
                     r"loading included\); after the first 2 images, [\d,]+ an hour$", out,
                     re.MULTILINE), out
