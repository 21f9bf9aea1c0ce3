"""The live preview: the image pane shows the latent of the image being drawn, only when a watcher
asked (the TUI, on by default, `p` toggles); a headless loop never hands the painter a callback."""

from __future__ import annotations

import pytest

from fakes import FakeCaptioner, FakePainter, factory, start_image
from truthloop import events as ev
from truthloop.config import RunConfig
from truthloop.loop import LoopControl, TruthLoop
from tui_helpers import HoldAt, SCRIPT, START, wait_for


class PreviewPainter(FakePainter):
    """Calls `preview` (as the real Painter does) at step 2 of every image with a 2x2 picture."""

    preview = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.previews_asked = []

    def paint(self, prompt, on_step):
        def step(number, total):
            self.previews_asked.append(self.preview is not None)
            if number == 2 and self.preview is not None:
                self.preview(2, 2, 2, bytes([255, 0, 0] * 4))
            on_step(number, total)

        return super().paint(prompt, step)


def make(tmp_path, painter):
    config = RunConfig(input_image="start.png")
    config.models.models = "tiny"
    config.loop.max_iters = 3
    return TruthLoop(config, tmp_path / "run", factory(FakeCaptioner(SCRIPT, start=START), painter),
                     control=LoopControl(), input_image=start_image())


def test_headless_never_asks_for_the_latents(tmp_path):
    painter = PreviewPainter()
    events = []
    loop = make(tmp_path, painter)
    loop.on_event = events.append
    loop.run()
    assert painter.previews_asked and not any(painter.previews_asked)
    assert not any(isinstance(event, ev.DenoisePreview) for event in events)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_tui_shows_the_latent_while_drawing_and_p_turns_it_off(tmp_path):
    from tui.app import TruthLoopApp
    from tui.widgets.image import HalfcellImage

    hold = HoldAt(paint=2, step=3)
    painter = PreviewPainter(step_hook=hold)
    loop = make(tmp_path, painter)
    hold.control = loop.control
    app = TruthLoopApp(loop=loop, preview="halfcell", stable=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, hold.reached.is_set)
        image = app.screen.query_one("#img-current")
        await wait_for(pilot, lambda: image.query_one(HalfcellImage).picture is not None)
        assert image.query_one(HalfcellImage).picture.getpixel((0, 0)) == (255, 0, 0)
        assert "latent preview" in str(image.query_one(".image-title").render())
        await pilot.press("p")
        assert loop.live_preview is False
        hold.release.set()
        await wait_for(pilot, lambda: not app.run_screen.loop_active)
        # The image drawn replaced the preview; the next image was drawn without one.
        assert image.query_one(HalfcellImage).picture is None
        assert painter.previews_asked[-1] is False
