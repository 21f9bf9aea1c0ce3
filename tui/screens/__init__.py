"""The app's screens: a live run, a run directory (read-only, followed), and the modals.

    RunScreen   (run.py)    layout, browsing, diff base, image path, export: both run screens
    LiveScreen  (live.py)   a loop in a thread worker; engine messages; pause/step/stop; quit asks
    ViewScreen  (view.py)   a run directory, polled; can be pushed by another screen (escape: back)
    HelpScreen, ConfirmQuit (modals.py)
"""

from tui.screens.live import LiveScreen
from tui.screens.modals import ConfirmQuit, HelpScreen
from tui.screens.run import RunScreen
from tui.screens.view import ViewScreen

__all__ = ["ConfirmQuit", "HelpScreen", "LiveScreen", "RunScreen", "ViewScreen"]
