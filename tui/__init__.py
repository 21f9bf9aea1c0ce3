"""The Textual app. Imports no torch: it drives the engine through truthloop.loop and the run dir."""


def run_tui(loop, preview: str = "auto", forker=None, live_preview: bool = True) -> int:
    from tui.app import run_live

    return run_live(loop, preview=preview, forker=forker, live_preview=live_preview)


def view_tui(run_dir, preview: str = "auto", forker=None) -> int:
    from tui.app import run_view

    return run_view(run_dir, preview=preview, forker=forker)


def compare_tui(run_a, run_b, preview: str = "auto") -> int:
    from tui.app import run_compare

    return run_compare(run_a, run_b, preview=preview)
