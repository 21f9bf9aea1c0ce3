"""A TruthLoop in a process of its own, for a watcher that must never slow it (the terminal app).

The app and the engine used to share one interpreter, the engine in a thread worker. Whatever the
app drew held the GIL the engine's thread needed to launch its next kernels, and a thread that
waits for the GIL waits a whole switch interval (5 ms) each time: on an H100 an iteration took
3.3 s in the app against 1.84 s headless (issue 20). Here the loop runs in a spawned child
process with an interpreter of its own; what the watcher sees is unchanged:

- `EngineProcess` stands where a `TruthLoop` stood: `run()` blocks (call it from a worker
  thread), hands each event to `on_event` in that thread, returns the summary or raises the
  loop's own errors (RunDirError, LoopFailed) with their one-line messages;
- `control` (pause / resume / step / stop) and `live_preview` go to the child as commands;
- the child stops its loop (a resumable "stopped") when the parent goes away, however it went.

The run directory is written by the child alone, as `truthloop resume` would write it. The child's
own stdout and stderr (library warnings, progress bars) go to a log file, never to the terminal
the app draws on; a child that dies without a word names that file in its error.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from truthloop import events as ev
from truthloop.loop import BackendFactory, LoopControl, LoopFailed, TruthLoop, describe_error
from truthloop.store import RunDirError

# The engine logs kept in the cache's logs/ (the newest; an empty one goes at a clean exit).
KEEP_LOGS = 20
# The child sends its memory this often (the status line's RSS and GPU figures).
MEMORY_INTERVAL_S = 2.0
# From this many CPUs on, the app keeps one CPU (and its SMT siblings) to itself and its engines
# get the others (`pin_watcher`); below it, a CPU-bound engine needs every core.
PIN_FROM_CPUS = 8
# The CPUs engines run on once `pin_watcher` gave the app its own (None: wherever they like).
ENGINE_CPUS: set[int] | None = None


def pin_watcher() -> None:
    """Keep the app's drawing off the CPUs its engines compute on. On an H100 box (16 CPUs) the
    captions, whose host work is many short multi-threaded steps, took 8% longer while the app
    drew half-block previews and 19% longer with sixel ones (the app using 9% and 30-60% of a
    CPU): whenever the app ran on a CPU one of the engine's threads wanted, a step waited for
    it. Call in the app's main thread before it starts other threads; engines started later
    move themselves to the CPUs left (ENGINE_CPUS)."""
    global ENGINE_CPUS
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return
    if len(cpus) < PIN_FROM_CPUS:
        return
    app = {max(cpus)} | (_siblings(max(cpus)) & cpus)
    try:
        os.sched_setaffinity(0, app)
    except OSError:
        return
    ENGINE_CPUS = cpus - app


def _siblings(cpu: int) -> set[int]:
    """The logical CPUs sharing `cpu`'s core (SMT), from sysfs; {} when it does not say."""
    try:
        text = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
    except OSError:
        return set()
    found: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            found.update(range(int(low), int(high or low) + 1))
    return found


@dataclass
class LoopRecipe:
    """What the child needs to build the same TruthLoop the parent made (and validated)."""

    config: Any
    run_dir: Path
    input_image: Any = None  # a PIL image (pickled with the recipe)
    resume: bool = False
    run_info: dict[str, Any] = field(default_factory=dict)
    changed_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, loop: TruthLoop) -> "LoopRecipe":
        return cls(loop.config, Path(loop.run_dir), loop.input_image, loop.resume,
                   dict(loop.run_info), dict(loop.changed_options))

    def build(self, backend_factory: BackendFactory, control: LoopControl) -> TruthLoop:
        loop = TruthLoop(self.config, self.run_dir, backend_factory, control=control,
                         input_image=self.input_image, resume=self.resume,
                         run_info=self.run_info)
        loop.changed_options = dict(self.changed_options)
        return loop


class RemoteControl:
    """LoopControl's verbs, sent to the child (queued in the pipe until it reads them)."""

    def __init__(self, send: Callable[[tuple], None]) -> None:
        self._send = send

    def pause(self) -> None:
        self._send(("pause",))

    def resume(self) -> None:
        self._send(("resume",))

    def step(self) -> None:
        self._send(("step",))

    def stop(self) -> None:
        self._send(("stop",))


class EngineProcess:
    """A TruthLoop (built and validated in this process) run in a child process."""

    def __init__(self, loop: TruthLoop, factory_maker: Callable[[LoopControl], BackendFactory],
                 log_dir: Path | None = None) -> None:
        """`factory_maker(control)` gives the backend factory in the child: a module-level
        function, since it travels by name (cli._loading_factory)."""
        self.recipe = LoopRecipe.of(loop)
        self.run_dir = Path(loop.run_dir)
        self.config = loop.config
        self.changed_options = dict(loop.changed_options)
        self.factory_maker = factory_maker
        self.log_dir = log_dir
        self.on_event: Callable[[ev.Event], None] = lambda event: None
        self.summary: dict[str, Any] = {}
        self.memory = ""  # the child's last memory line ("RSS 2.1 GiB  GPU 6.9/79 GiB")
        self.log_path: Path | None = None
        self.done = threading.Event()
        self._context = multiprocessing.get_context("spawn")
        _start_resource_tracker()
        # Two one-way pipes: events up, commands down (each end used by one thread only).
        self._events_in, self._events_out = self._context.Pipe(duplex=False)
        self._commands_in, self._commands_out = self._context.Pipe(duplex=False)
        self._send_lock = threading.Lock()
        self._process: Any = None
        self._live_preview = False
        self.control = RemoteControl(self._command)

    # -- what a watcher sets -------------------------------------------------------------------
    @property
    def live_preview(self) -> bool:
        return self._live_preview

    @live_preview.setter
    def live_preview(self, on: bool) -> None:
        self._live_preview = bool(on)
        self._command(("live_preview", self._live_preview))

    @property
    def opened(self) -> bool:
        """Whether the child was started (it may have opened the run directory)."""
        return self._process is not None

    def _command(self, command: tuple) -> None:
        with self._send_lock:
            try:
                self._commands_out.send(command)
            except (OSError, ValueError):  # the child is gone (or the pipe closed): nothing to do
                pass

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Start the child and relay its events until it ends; the child's result or error."""
        try:
            self.log_path = self._log_file()
            self._process = self._context.Process(
                target=serve, name="truthloop-engine", daemon=False,
                args=(self.recipe, self.factory_maker, self._events_out, self._commands_in,
                      str(self.log_path) if self.log_path else None, ENGINE_CPUS))
            self._process.start()
            # Only the child holds these ends now: its exit is our EOF, ours is its EOF.
            self._events_out.close()
            self._commands_in.close()
            return self._relay()
        finally:
            self._end_child()
            self.done.set()

    def _relay(self) -> dict[str, Any]:
        while True:
            try:
                message = self._events_in.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "event":
                event = message[1]
                if isinstance(event, (ev.Finished, ev.Failed)):
                    self.summary = dict(event.summary)
                self.on_event(event)
            elif kind == "memory":
                self.memory = message[1]
            elif kind == "returned":
                self.summary = dict(message[1])
                return dict(message[1])
            elif kind == "raised":
                error_class = {"RunDirError": RunDirError}.get(message[1], LoopFailed)
                raise error_class(message[2])
        self._process.join(timeout=5)
        code = self._process.exitcode
        where = f"; its output is in {self.log_path}" if self.log_path else ""
        raise LoopFailed(f"the engine process ended without a result (exit code {code}){where}")

    def _end_child(self) -> None:
        if self._process is None or self._process.pid is None:  # it never started
            return
        self._process.join(timeout=30)  # it sent its result: only its exit is left
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        self._events_in.close()
        with self._send_lock:
            self._commands_out.close()
        if self.log_path is not None and self._process.exitcode == 0:
            try:
                if self.log_path.stat().st_size == 0:
                    self.log_path.unlink()
            except OSError:
                pass

    def _log_file(self) -> Path | None:
        """Where the child's stdout and stderr go: the cache's logs/ (None: nowhere)."""
        try:
            if self.log_dir is None:
                from truthloop.paths import cache_dir

                self.log_dir = cache_dir() / "logs"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # Kept for a look after a crash, not forever: the newest KEEP_LOGS stay.
            older = sorted(self.log_dir.glob("engine-*.log"), key=lambda p: p.stat().st_mtime)
            for stale in older[:-KEEP_LOGS]:
                stale.unlink(missing_ok=True)
            return self.log_dir / f"engine-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}" \
                f"-{id(self) % 10000}.log"
        except OSError:
            return None

    def memory_line(self) -> str:
        return self.memory


def _start_resource_tracker() -> None:
    """Spawning starts multiprocessing's resource tracker once, handing it sys.stderr's fd.
    Inside the app (a fork made with `f`, or `view`'s first engine) sys.stderr is Textual's
    capture, whose fileno() is -1 ("bad value(s) in fds_to_keep"): the tracker gets the real
    stderr instead."""
    from multiprocessing import resource_tracker

    saved = sys.stderr
    try:
        try:
            usable = saved is not None and saved.fileno() >= 0
        except (AttributeError, OSError, ValueError):
            usable = False
        if not usable:
            sys.stderr = sys.__stderr__
        resource_tracker.ensure_running()
    finally:
        sys.stderr = saved


# -- the child ----------------------------------------------------------------------------------
def serve(recipe: LoopRecipe, factory_maker: Callable[[LoopControl], BackendFactory],
          events: Any, commands: Any, log_path: str | None,
          cpus: set[int] | None = None) -> None:
    """The child's main: build the loop, run it, send every event, then the result. `cpus`:
    the CPUs to run on (before torch counts them for its threads), not the app's."""
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass
    _detach_from_terminal(log_path)
    control = LoopControl()
    outbox = Outbox(events, on_broken=control.stop)
    loop = recipe.build(factory_maker(control), control)
    loop.on_event = lambda event: outbox.put(("event", event))
    signal.signal(signal.SIGTERM, lambda signum, frame: control.stop())
    threading.Thread(target=_obey, args=(commands, control, loop, outbox.put), daemon=True,
                     name="truthloop-commands").start()
    try:
        result: tuple = ("returned", loop.run())
    except RunDirError as error:
        result = ("raised", "RunDirError", str(error))
    except LoopFailed as error:
        result = ("raised", "LoopFailed", str(error))
    except BaseException as error:  # noqa: BLE001 - the parent shows one line, never a traceback
        import traceback

        traceback.print_exc()  # into the log file
        result = ("raised", "LoopFailed", describe_error(error, recipe.config))
    outbox.put(result)
    outbox.close()


class Outbox:
    """What the child sends, written to the pipe by a thread of its own: the loop never waits
    on the pipe. When the app is slow to read (its interpreter busy drawing), the pipe fills
    and a plain send() would stall the loop mid-iteration (seen on an H100: captions 14-29%
    slower in the app). Meanwhile the newest denoising step, latent preview and memory line
    replace an older one not sent yet; every other message is sent, in order."""

    def __init__(self, connection: Any, on_broken: Callable[[], None]) -> None:
        self.connection = connection
        self.on_broken = on_broken
        self.queue: deque[tuple] = deque()
        self.ready = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._send_all, daemon=True, name="truthloop-send")
        self.thread.start()

    def put(self, message: tuple) -> None:
        kind = _replaceable(message)
        with self.ready:
            if kind is not None:  # replace one queued since the last message kept in order
                for i in range(len(self.queue) - 1, -1, -1):
                    queued_kind = _replaceable(self.queue[i])
                    if queued_kind is None:
                        break
                    if queued_kind == kind:
                        self.queue[i] = message
                        return
            self.queue.append(message)
            self.ready.notify()

    def close(self) -> None:
        """Send what is queued, then close the pipe (the parent reads EOF after the result)."""
        with self.ready:
            self.closing = True
            self.ready.notify()
        self.thread.join(timeout=60)
        self.connection.close()

    def _send_all(self) -> None:
        broken = False
        while True:
            with self.ready:
                while not self.queue and not self.closing:
                    self.ready.wait()
                if not self.queue:
                    return
                message = self.queue.popleft()
            if broken:
                continue
            try:
                self.connection.send(message)
            except (OSError, ValueError):  # the parent is gone; the commands thread stops us
                broken = True
                self.on_broken()


def _replaceable(message: tuple) -> str | None:
    """The kind of a message a newer one of its kind makes worthless, else None."""
    if message[0] == "memory":
        return "memory"
    if message[0] == "event" and isinstance(message[1], (ev.DenoiseStep, ev.DenoisePreview)):
        return type(message[1]).__name__
    return None


def _obey(commands: Any, control: LoopControl, loop: TruthLoop,
          send: Callable[[tuple], None]) -> None:
    """The child's commands thread: keys from the parent, and the memory line every 2 s. The
    parent's end closing (it quit, crashed or was killed) stops the loop: resumable."""
    from truthloop.memory import memory_line

    next_memory = 0.0
    while True:
        now = time.monotonic()
        if now >= next_memory:
            send(("memory", memory_line()))
            next_memory = now + MEMORY_INTERVAL_S
        try:
            if not commands.poll(max(0.0, next_memory - time.monotonic())):
                continue
            command = commands.recv()
        except (EOFError, OSError):
            control.stop()
            return
        verb = command[0]
        if verb == "live_preview":
            loop.live_preview = bool(command[1])
        elif verb in ("pause", "resume", "step", "stop"):
            getattr(control, verb)()


def _detach_from_terminal(log_path: str | None) -> None:
    """The app owns the terminal: the child reads nothing from it and writes nothing to it, and
    a hang-up or Ctrl-C reaches the parent, which stops the loop (a SIGHUP would otherwise kill
    the child mid-iteration and leave the run "interrupted")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    target = null
    if log_path:
        try:
            target = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            target = null
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(target, 1)
    os.dup2(target, 2)
