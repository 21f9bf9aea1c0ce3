"""A live run: the loop runs in a thread worker and its events arrive as messages (tui/messages.py).

The loop knows nothing of Textual: its `on_event` posts `from_event(event)` to this screen
(`post_message` is thread-safe) and the UI never waits on it. Progress messages collapse in the
queue when the UI falls behind (`can_replace`). Keys act through the loop's `LoopControl`.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.binding import Binding
from textual.worker import Worker, WorkerState

from truthloop import events as ev
from truthloop.families import pair_label
from truthloop.store import read_records
from truthloop.text import visible
from tui import messages as m
from tui.screens.modals import ConfirmQuit
from tui.screens.run import BROWSE_BINDINGS, FINAL, RunScreen
from tui.throttle import Latest
from tui.widgets.status import StatusBar

STEP_HZ = 10
# Terminal graphics re-send the whole picture each frame (~100-200 KB of sixel for a pane, over
# SSH) and textual-image encodes it in Python: half the rate of half-blocks.
PREVIEW_HZ = {"halfcell": 4, "sixel": 2, "tgp": 2}


class LiveScreen(RunScreen):
    BINDINGS = [
        Binding("space", "pause", "Pause"),
        Binding("space", "resume", "Resume"),
        Binding("n", "step", "Step"),
        Binding("s", "stop", "Stop"),
        *BROWSE_BINDINGS,
        Binding("escape", "back", "Back", show=False),
        Binding("p", "toggle_preview", "Preview", show=False),
    ]

    mode = "live"

    def __init__(self, loop: Any, preview: str = "halfcell", stable: bool = False) -> None:
        super().__init__(loop.run_dir, preview=preview, stable=stable)
        self.loop = loop
        self.config = dict(loop.config.to_dict())
        self.loop_started = False
        self.loop_active = False
        self.failed = False
        self._quit_requested = False
        # The step counter at 10 Hz, the latent preview at PREVIEW_HZ (tui/throttle.py).
        self._steps = Latest(self, STEP_HZ, self._draw_step)
        self._previews = Latest(self, PREVIEW_HZ.get(preview, PREVIEW_HZ["halfcell"]),
                                self._draw_preview)

    def start(self) -> None:
        self.loop.live_preview = getattr(self.app, "live_preview", True)
        self.loop.on_event = lambda event: self.post_message(m.from_event(event))
        self.loop_active = True
        self.state = "loading"
        status = self.query_one(StatusBar)
        status.set(loading="starting")
        self.run_loop()
        if not self.stable:
            # An engine in its own process (truthloop.engine) reports its own memory.
            status.watch_memory(getattr(self.loop, "memory_line", None))

    @work(thread=True, exclusive=True, group="loop", exit_on_error=False, name="truthloop")
    def run_loop(self) -> dict[str, Any]:
        self.loop_started = True
        return self.loop.run()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "loop" or event.state not in (
                WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        self.loop_active = False
        # The loop may end while the app is already closing (quit, SIGHUP): this screen is gone
        # then, and only the flags that run_live reads still matter.
        on_screen = self.is_attached
        if event.state == WorkerState.ERROR:
            self.failed = True
            error = event.worker.error
            if self.state != "error":  # a setup error (bad run dir, lock held): no Failed event
                self.error_message = visible(str(error) or type(error).__name__)
                if on_screen:
                    self.state = "error"
                    self.show_banner()
                else:  # no watchers: they would draw on widgets that are gone
                    self.set_reactive(LiveScreen.state, "error")
        if on_screen:
            self.refresh_bindings()
        if self._quit_requested:
            self.app.exit(return_code=1 if self.failed else 0)

    # -- engine messages -----------------------------------------------------------------------
    @on(m.RunStarted)
    def _run_started(self, message: m.RunStarted) -> None:
        self.config = message.config or self.config
        self.show_max_iters()
        if message.resumed_at:  # a resumed run's history in one pass (a long run's too)
            self.add_records(read_records(self.run_dir))
        self.query_one(StatusBar).set(loading="loading models",
                                      iteration=message.resumed_at or None,
                                      pair=pair_label(self.config))
        self.refresh_views()  # the start image exists now

    @on(m.Loading)
    def _loading(self, message: m.Loading) -> None:
        self.query_one(StatusBar).set(loading=message.message, loading_done=message.done,
                                      loading_total=message.total)

    @on(m.Notice)
    def _notice(self, message: m.Notice) -> None:
        if message.message.startswith(ev.DEVICE_FALLBACK):
            # Said on the status line, not in a toast: the CPU is the device for the whole run,
            # and the status line says the device all along (a toast went away after 15 s, and
            # at 80x24 it covered the caption panel and the footer's keys meanwhile). Why, where
            # the line has room: "cpu (auto: this torch is a CPU-only build)".
            self._device_note = "auto: no usable GPU"
            why = message.message[len(ev.DEVICE_FALLBACK):].strip().removeprefix("(")
            why = why.removesuffix(")")
            self.query_one(StatusBar).set(device=f"cpu ({self._device_note})",
                                          device_detail=f"cpu (auto: {why})" if why else "")
            return
        # Plain text: the message can name a user-given id or path.
        self.notify(visible(message.message), markup=False, timeout=15)

    @on(m.Ready)
    def _models_ready(self, message: m.Ready) -> None:
        note = getattr(self, "_device_note", None)
        device = f"{message.device} ({note})" if note else message.device
        self.query_one(StatusBar).set(device=device, loading="")
        if self.state == "loading":
            self.state = "running"

    @on(m.IterationStarted)
    def _iteration_started(self, message: m.IterationStarted) -> None:
        self._steps.drop()
        self.query_one(StatusBar).set(iteration=message.index, step=None, steps=None)
        if self.state == "loading":
            self.state = "running"

    @on(m.CaptionReady)
    def _caption_ready(self, message: m.CaptionReady) -> None:
        self.add_record(message.pending_record())

    @on(m.DenoiseStep)
    def _denoise_step(self, message: m.DenoiseStep) -> None:
        self._steps.offer(message)

    def _draw_step(self, message: m.DenoiseStep) -> None:
        self.query_one(StatusBar).set(iteration=message.index, step=message.step,
                                      steps=message.total)

    @on(m.IterationDone)
    def _iteration_done(self, message: m.IterationDone) -> None:
        # Its timings leave out time spent paused (the loop's stage clock stops meanwhile).
        self._steps.drop()  # its image replaces any step or preview not drawn yet
        self._previews.drop()
        self.add_record(message.record)
        self.query_one(StatusBar).set(step=None, steps=None)

    @on(m.Paused)
    def _paused(self, message: m.Paused) -> None:
        self.query_one(StatusBar).set(iteration=message.index)
        if self.state not in FINAL and self.state != "stopping":
            self.state = "paused"

    @on(m.Resumed)
    def _resumed(self, message: m.Resumed) -> None:
        if self.state in ("paused", "pausing"):
            self.state = "running"

    @on(m.Finished)
    def _finished(self, message: m.Finished) -> None:
        self._end_of_drawing()
        self.summary = dict(message.summary)
        self.state = self.summary.get("status", "stopped")
        self.finished()

    @on(m.Failed)
    def _failed(self, message: m.Failed) -> None:
        self._end_of_drawing()
        self.summary = dict(message.summary)
        self.error_message = visible(message.message)
        self.failed = True
        self.state = "error"
        self.finished()

    def _end_of_drawing(self) -> None:
        """The run ended: no step or preview still to draw, and no step counter left behind."""
        self._steps.drop()
        self._previews.drop()
        self.query_one(StatusBar).set(step=None, steps=None)

    # -- keys ----------------------------------------------------------------------------------
    def palette_commands(self) -> list[tuple[str, str, str]]:
        return [
            ("Pause", "Pause the loop at its next checkpoint (space)", "pause"),
            ("Resume", "Let the paused loop run on (space)", "resume"),
            ("Step one iteration", "Run exactly one more iteration, then pause (n)", "step"),
            ("Stop the run", "Stop after the current denoising step; resumable (s)", "stop"),
            *self.browse_commands(),
        ]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "resume", "step", "stop"):
            if not self.loop_active or self.state in FINAL:
                return False
            if action == "pause":
                return self.state in ("loading", "running", "stepping")
            if action == "resume":
                return self.state in ("paused", "pausing")
            if action == "step":
                return True if self.state in ("paused", "pausing") else None
            return self.state != "stopping"
        if action == "back":  # a fork pushed over its parent: back once its loop has ended
            return len(self.app.screen_stack) > 1 and self.app.screen is self \
                and not self.loop_active
        return True

    def action_back(self) -> None:
        self.dismiss()

    def action_toggle_preview(self) -> None:
        """`p`: the live preview of the image being drawn, on / off (from the next image)."""
        self.loop.live_preview = not self.loop.live_preview
        self.notify(f"live preview {'on' if self.loop.live_preview else 'off'}", timeout=2)

    @on(m.DenoisePreview)
    def _denoise_preview(self, message: m.DenoisePreview) -> None:
        self._previews.offer(message)

    def _draw_preview(self, message: m.DenoisePreview) -> None:
        if not self.loop.live_preview or self.history.selected is not None:
            return  # off, or browsing an older iteration
        from PIL import Image

        picture = Image.frombytes("RGB", (message.width, message.height), message.rgb)
        self.query_one("#img-current").show_picture(
            picture, f"#{message.index} (drawing)", f"step {message.step}, latent preview")

    def action_pause(self) -> None:
        self.loop.control.pause()
        self.state = "pausing"  # until the loop reaches its next checkpoint and says Paused

    def action_resume(self) -> None:
        self.loop.control.resume()
        self.state = "running"

    def action_step(self) -> None:
        self.loop.control.step()
        self.state = "stepping"

    def action_stop(self) -> None:
        self.loop.control.stop()
        self.state = "stopping"

    def request_quit(self) -> None:
        if not self.loop_active:
            self.app.exit(return_code=1 if self.failed else 0)
            return
        if self._quit_requested or isinstance(self.app.screen, ConfirmQuit):
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._quit_requested = True
                self.loop.control.stop()
                self.state = "stopping"
                if not self.loop_active:
                    self.app.exit(return_code=1 if self.failed else 0)

        self.app.push_screen(ConfirmQuit(self.dir_label), answered)

    def on_unmount(self) -> None:
        self.loop.control.stop()  # never leave the engine running behind a closed UI
