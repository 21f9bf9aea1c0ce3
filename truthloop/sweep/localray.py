"""The Ray a local sweep starts on this machine: kept to loopback, its token file private, and
nothing of it left running once the driver is gone (no Ray import here; driver.py calls these
around `ray.init`).

- **Loopback.** Ray picks a node address before it starts its servers, and its gRPC servers and
  agents listen on that address when it is 127.0.0.1 (on all interfaces otherwise). Ray 2.60 takes
  127.0.0.1 only when `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` is false (its default on macOS and
  Windows: `ray_constants.ENABLE_RAY_CLUSTER`, read by `services.get_node_ip_address`); a
  `_node_ip_address="127.0.0.1"` is rewritten to the machine's own address. The variable is read
  when `ray` is first imported, so it is set before that, and the children inherit it. A cluster
  (`--address`) is left as it is.
- **The token file.** Ray writes `~/.ray/auth_token` with the process's umask (0644 here); we write
  it first, 0600, or narrow an existing one of ours to 0600.
- **Nothing left behind.** Ray kills its GCS and raylet when the driver dies (PR_SET_PDEATHSIG),
  but the raylet's agents poll for their parent and then wait about a minute on the dead GCS, and
  a worker may outlive the raylet by seconds. A `Reaper` (a small process of its own session, not
  hit by the terminal's signals) is told every process the driver's Ray starts, and kills those
  still alive once the driver has gone, however it went.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
SCAN_INTERVAL = 0.5  # s between looks at the driver's process tree


def keep_to_loopback() -> None:
    """Make the Ray this process starts take 127.0.0.1 as its node address."""
    os.environ[LOOPBACK_VAR] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        # Ray was imported before we could set the variable (a library did): its module
        # constant is what `get_node_ip_address` reads.
        constants.ENABLE_RAY_CLUSTER = False


def is_loopback(address: str) -> bool:
    address = address.strip("[]")
    if address.startswith("::ffff:"):
        address = address[len("::ffff:"):]
    return address == "::1" or address.startswith("127.") or address == "localhost"


def token_path() -> Path | None:
    """Where Ray reads (and would write) its token: None when the environment gives it."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    given = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(given).expanduser() if given else Path.home() / ".ray" / "auth_token"


def private_token() -> str | None:
    """Make sure the token file exists and only its owner can read it. Returns a one-line note
    when an existing file's mode was narrowed, None otherwise; OSError when it cannot be made."""
    path = token_path()
    if path is None:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        # Written whole under a temporary name, then linked in: a reader never sees half a
        # token, and a token another process wrote meanwhile wins (link fails: it exists).
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())  # what `ray get-auth-token` writes
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077 and path.stat().st_uid == os.getuid():
        os.chmod(path, 0o600)
        return (f"{path} was readable by others (mode {stat.S_IMODE(mode):04o}); made it "
                f"readable by its owner only")
    return None


# -- processes ------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live process below `root`: {pid: start time}."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    for name in names:
        if not name.isdigit():
            continue
        found = _stat(int(name))
        if found is not None:
            children.setdefault(found[0], []).append(int(name))
            starts[int(name)] = found[1]
    out: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in out:
            out[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return out


def kill_all(processes: dict[int, int]) -> int:
    """SIGKILL each process still alive with the same start time (not a reused pid)."""
    killed = 0
    for pid, start in processes.items():
        found = _stat(pid)
        if found is not None and found[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


class Reaper:
    """Records the driver's descendants (Ray's processes) every SCAN_INTERVAL and hands them to a
    watcher process; when the driver dies, the watcher's pipe ends and it kills them. `close()`
    (the end of a sweep, after ray.shutdown) kills what is left and lets the watcher go."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watcher: subprocess.Popen | None = None
        if sys.platform.startswith("linux"):
            try:
                self._watcher = subprocess.Popen(
                    [sys.executable, "-c", WATCHER], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True)
            except OSError:
                self._watcher = None
        self._thread = threading.Thread(target=self._scan_loop, name="sweep-reaper",
                                        daemon=True)
        self._thread.start()

    def _scan_loop(self) -> None:
        while not self._stop.wait(SCAN_INTERVAL):
            self.scan()

    def scan(self) -> None:
        found = descendants(os.getpid())
        if self._watcher is not None:
            found.pop(self._watcher.pid, None)
        with self._lock:
            new = {pid: start for pid, start in found.items() if self.seen.get(pid) != start}
            self.seen.update(new)
            if new and self._watcher is not None and self._watcher.stdin is not None:
                try:
                    self._watcher.stdin.write("".join(f"{p} {s}\n" for p, s in new.items())
                                              .encode())
                    self._watcher.stdin.flush()
                except (OSError, ValueError):
                    pass

    def kill_leftovers(self) -> int:
        """Kill every recorded process still alive (after ray.shutdown: Ray's stragglers)."""
        self.scan()
        with self._lock:
            seen, self.seen = dict(self.seen), {}
        return kill_all(seen)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.kill_leftovers()
        if self._watcher is not None:
            try:
                self._watcher.stdin.close()  # the watcher kills nothing more: all are gone
            except OSError:
                pass
            try:
                self._watcher.wait(5)
            except subprocess.TimeoutExpired:
                self._watcher.kill()


# The watcher: reads "pid start" lines until its pipe ends (the driver exited or died), then kills
# those still alive with the same start time. Standard library only; ignores the terminal's
# signals (its own session) so it outlives a Ctrl-C'd or SIGKILLed driver.
WATCHER = r"""
import os, signal, sys
seen = {}
for line in sys.stdin.buffer:
    try:
        pid, start = map(int, line.split())
    except ValueError:
        continue
    seen[pid] = start
for pid, start in seen.items():
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        if fields[0] not in (b"Z", b"X") and int(fields[19]) == start:
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
"""
