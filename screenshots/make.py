"""Regenerate the README screenshots: `python screenshots/make.py` (from the repo root).

Same scenarios as the snapshot tests (tests/tui_helpers.py): fake backends, half-block preview,
timings blanked, so the SVGs only change when the UI does.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from tui_helpers import SCENARIOS, scenario  # noqa: E402

SIZE = (120, 40)


async def shoot(name: str, workdir: Path) -> Path:
    app, run_before = scenario(name, workdir / name / "run")
    async with app.run_test(size=SIZE) as pilot:
        await run_before(pilot)
        await pilot.pause()
        app.save_screenshot(f"{name}.svg", path=str(HERE))
    return HERE / f"{name}.svg"


async def shoot_compare(workdir: Path) -> Path:
    """`truthloop compare PARENT FORK`: a fork at #1 with another seed beside its parent."""
    from fork_helpers import compare_app

    app = compare_app(workdir / "compare")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.save_screenshot("compare.svg", path=str(HERE))
    return HERE / "compare.svg"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCENARIOS:
            print(asyncio.run(shoot(name, Path(tmp))))
        print(asyncio.run(shoot_compare(Path(tmp))))


if __name__ == "__main__":
    main()
