"""The command palette (ctrl+p): the run screen's own commands, and "go to iteration N".

The screen's commands come from `RunScreen.palette_commands()` (pause/resume, step, stop, export,
diff base, image path; only those its `check_action` allows now), served as the app's system
commands (`TruthLoopApp.get_system_commands`). Iterations are found by `IterationCommands`: type
`go 12`, `#12` or words of a prompt.

Prompts are untrusted text: a hit's display is `Content` built from the plain string (Textual's
`Matcher.highlight` would read it as markup), its match offsets styled by position.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content

from truthloop.text import clip, visible

NUMBER = re.compile(r"^\s*(?:go(?:\s*to)?(?:\s*iteration)?)?\s*#?\s*(\d+)\s*$", re.IGNORECASE)


def wanted_index(query: str) -> int | None:
    """The iteration a query names by number ("12", "#12", "go 12", "go to iteration 12")."""
    match = NUMBER.match(query)
    return int(match.group(1)) if match else None


class IterationCommands(Provider):
    """`go to iteration #i: <prompt>` for every iteration of the run screen under the palette."""

    def _run_screen(self) -> Any:
        from tui.screens.run import RunScreen

        return self.screen if isinstance(self.screen, RunScreen) else None

    def _title(self, index: int, record: Any) -> str:
        return clip(f"go to iteration #{index}: {visible(record.fed_prompt or '')}", 64)

    async def discover(self) -> Hits:
        screen = self._run_screen()
        if screen is None or not screen.records:
            return
        newest = screen.history.newest
        yield DiscoveryHit(Content(f"Go to iteration… (type its number, 0-{newest})"),
                           partial(screen.go_to, newest), text="go to iteration",
                           help="Browse to an iteration of the log; the newest follows again")

    async def search(self, query: str) -> Hits:
        screen = self._run_screen()
        if screen is None:
            return
        matcher = self.matcher(query)
        number = wanted_index(query)
        for index, record in enumerate(list(screen.records)):
            title = self._title(index, record)
            if number is not None:
                if number != index:
                    continue
                score = 1.0
                display = Content(title).stylize("bold", 0, len(f"go to iteration #{index}"))
            else:
                score, offsets = matcher.fuzzy_search.match(query, title)
                if not score:
                    continue
                display = Content(title)
                for offset in offsets:
                    display = display.stylize("bold underline", offset, offset + 1)
            yield Hit(score, display, partial(screen.go_to, index), text=title,
                      help="Show its caption, images and diff")
