"""`truthloop view SWEEP_DIR`: a sweep as a table (one row per trajectory: state, iteration, current
caption, truth), following the directory while it grows; Enter opens that trajectory's own view.

Reads the sweep directory only (sweep.json and the run directories, through truthloop.sweep.state),
like the run view reads a run directory: it works beside a running sweep, on any node that sees the
directory, and after the sweep is over. Polling is cheap: a run directory is re-read only when its
log.jsonl or summary.json changed (or its writer's lock may have gone).

The trajectory view is the run view itself: `tui.screens.ViewScreen` (what `truthloop view
RUN_DIR` shows), pushed over the table; Escape or q there comes back here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from truthloop.store import LOG_FILE, SUMMARY_FILE
from truthloop.sweep import state as st
from truthloop.sweep.spec import read_spec, trajectories
from truthloop.text import clip, visible
from tui.screens import HelpScreen, ViewScreen
from tui.screens.modals import HELP_ROWS
from tui.terminal import RepliesAreNotKeys
from tui.widgets.image import resolve_preview
from tui.widgets.status import middle, short_path

STATE_STYLE = {"converged": "bold green", "running": "bold cyan", "error": "bold red",
               "damaged": "bold white on red", "interrupted": "yellow", "stopped": "yellow",
               "max_iters": "magenta", "pending": "dim"}
COLUMNS = (("#", "number"), ("start", "start"), ("seed", "seed"), ("grid", "grid"),
           ("state", "state"), ("it", "it"), ("caption now", "caption"), ("truth", "truth"))


# The `?` help of the table: (keys, what they do).
SWEEP_HELP = [
    ("↑ ↓", "move through the trajectories"),
    ("enter", "open the trajectory: its own run view (q or esc there: back to this table)"),
    ("end / f", "jump to the first running trajectory"),
    ("?", "this help (esc closes it)"),
    ("q", "quit (the sweep itself runs on; this only watches its directory)"),
]
# A trajectory's run view inside the sweep: q and escape go back to the table.
BACK_HELP = ("q / escape", "back to the sweep's table")


def split_at_word(text: str, width: int) -> tuple[str, str]:
    """`text` as two cells: the words that fit in `width`, then the rest."""
    if len(text) <= width:
        return text, ""
    cut = text.rfind(" ", 0, width + 1)
    if cut <= 0:
        cut = width
    return text[:cut], text[cut:].lstrip()


class TrajectoryScreen(ViewScreen):
    """One trajectory of the sweep: the run view, where q (as escape) goes back to the table."""

    BINDINGS = [
        *ViewScreen.BINDINGS,
        Binding("q", "back", "Back to the sweep", key_display="q/esc"),
    ]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return self.app.screen is self
        return super().check_action(action, parameters)


class SweepApp(RepliesAreNotKeys, App[int]):
    TITLE = "truthloop sweep"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("enter", "open", "Open trajectory"),
        Binding("end,f", "follow", "Newest running", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]
    DEFAULT_CSS = """
    #sweep-header { height: 1; background: $boost; padding: 0 1; }
    #sweep-table { height: 1fr; }
    """

    def __init__(self, sweep_dir: Path, preview: str = "halfcell",
                 poll_interval: float | None = None) -> None:
        """`preview` must already be resolved (`resolve_preview`, before the app starts)."""
        super().__init__()
        self.sweep_dir = Path(sweep_dir)
        self.preview = preview
        spec = read_spec(self.sweep_dir) or {}
        self.trajectories = trajectories(spec) if spec else []
        # Each poll stats three files per trajectory: once a second up to 2,000 trajectories,
        # then proportionally less often (a shared file system pays for every stat).
        self.poll_interval = poll_interval or max(1.0, len(self.trajectories) / 2000)
        self.rows: dict[int, dict[str, Any]] = {}
        self._stamps: dict[int, tuple] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="sweep-header", markup=False)
        table: DataTable = DataTable(id="sweep-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    @property
    def table(self) -> DataTable:
        """The sweep's table, on the app's first screen whichever screen is on top (help, a
        trajectory): the poll timer and resizes use it under any of them."""
        return self.screen_stack[0].query_one(DataTable)

    def on_mount(self) -> None:
        table = self.table
        for trajectory in self.trajectories:
            self.rows[trajectory.number] = st.trajectory_row(self.sweep_dir, trajectory)
        self.widths = self.column_widths(self.size.width)
        self._fill(table)
        self._update_header()
        self.set_interval(self.poll_interval, self.poll)
        table.focus()

    def _fill(self, table: DataTable) -> None:
        """The columns at `self.widths`, and every row's cells clipped to them."""
        for label, key in COLUMNS:
            table.add_column(label, key=key, width=self.widths[key])
        for number, row in self.rows.items():
            table.add_row(*self._cells(row), key=str(number))

    def on_resize(self) -> None:
        # Once the new layout is drawn: the columns fit the table's width again.
        self.call_after_refresh(self._fit)
        if self.is_running and self.widths:  # mounted (the header and the rows are there)
            self._update_header()

    def _fit(self) -> None:
        if not self.is_running:  # a resize's deferred fit, reached while closing (as poll)
            return
        table = self.table
        widths = self.column_widths(table.scrollable_content_region.width or self.size.width)
        if widths == self.widths:
            return
        self.widths = widths
        cursor = table.cursor_row
        table.clear(columns=True)
        self._fill(table)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1), animate=False)

    def column_widths(self, width: int) -> dict[str, int]:
        """Every column inside `width` (nothing scrolls sideways): the short ones as wide as
        their longest cell, start and grid up to 24 (less on a narrow screen), and what is left
        shared by the caption now and the truth, each clipped with an ellipsis."""
        rows = list(self.rows.values())

        def longest(key: str, values: list[str]) -> int:
            label = next(label for label, k in COLUMNS if k == key)
            return max([len(label), *(len(value) for value in values)])

        grids = [visible(self.grid(row)) for row in rows]
        widths = {
            "number": longest("number", [str(row["number"]) for row in rows]),
            "seed": longest("seed", [str(row["seed"]) for row in rows]),
            "state": longest("state", list(STATE_STYLE)),
            "it": longest("it", ["999"]),
            "start": min(24, longest("start", [visible(row["start"]) for row in rows])),
            "grid": min(24, longest("grid", grids)),
        }
        # Two columns of cell padding each (DataTable's default), and the vertical scrollbar.
        free = width - sum(widths.values()) - 2 * len(COLUMNS) - 1
        for key in ("grid", "start"):  # a narrow screen: start and grid give up to half
            if free < 2 * 20:
                give = min(widths[key] - max(8, widths[key] // 2), 2 * 20 - free)
                widths[key] -= max(0, give)
                free += max(0, give)
        free = max(16, free)
        widths["caption"] = free // 2
        widths["truth"] = free - free // 2
        return widths

    @staticmethod
    def grid(row: dict[str, Any]) -> str:
        """The grid point: a pair as `sdxl + llava-1.5` (its names first, since a narrow column
        keeps the start), then the other settings as name=value."""
        settings = row["settings"]
        pair = [str(settings[side]) for side in ("generator", "captioner") if side in settings]
        rest = [f"{k}={v if v != '' else 'none'}" for k, v in settings.items()
                if k not in ("generator", "captioner")]
        return " ".join(([" + ".join(pair)] if pair else []) + rest)

    # -- following the directory ------------------------------------------------------------------
    def _stamp(self, number: int) -> tuple:
        run_dir = self.trajectories[number].run_dir(self.sweep_dir)
        stamp = []
        for name in (LOG_FILE, SUMMARY_FILE, st.EMBEDDING_FILE):
            try:
                info = os.stat(run_dir / name)
                stamp.append((info.st_size, info.st_mtime_ns))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def poll(self) -> None:
        if not self.is_running:
            # Closing: Textual removes the screens before it stops the app's timers, so a last
            # tick can come with the table gone (NoMatches in a busy CI run).
            return
        table = self.table
        for trajectory in self.trajectories:
            number = trajectory.number
            stamp = self._stamp(number)
            # A "running" row is re-read every poll: its writer may have died (no file changes).
            if stamp == self._stamps.get(number) and self.rows[number]["state"] != "running":
                continue
            self._stamps[number] = stamp
            row = st.trajectory_row(self.sweep_dir, trajectory)
            if row == self.rows[number]:
                continue
            self.rows[number] = row
            for (_, key), value in zip(COLUMNS, self._cells(row)):
                table.update_cell(str(number), key, value)
        self._update_header()

    def _update_header(self) -> None:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        said = f": {len(self.rows)} trajectories ({parts})"
        keys = "  ·  enter: open  ·  q: quit"
        # The counts whole: on a narrow screen the keys go first (the footer has them), then the
        # sweep's path is shortened in the middle (its name kept).
        width = self.size.width - 2
        where = short_path(visible(str(self.sweep_dir)))
        if len(where) + len(said) + len(keys) > width:
            keys = ""
        where = middle(where, max(12, width - len(said) - len(keys)))
        header = self.screen_stack[0].query_one("#sweep-header", Static)
        header.update(Text(where + said + keys))

    widths: dict[str, int] = {}

    def _cells(self, row: dict[str, Any]) -> list[Any]:
        # Captions are untrusted: plain Text from visible(), never markup.
        widths = self.widths
        grid = self.grid(row)
        cycle = row.get("cycle") or {}
        truth = ""
        if row["state"] == "converged":
            kind = "fixed" if cycle.get("length") == 1 else f"{cycle.get('length')}-cycle"
            truth = f"{kind}: {row.get('truth') or ''}"
        elif row["state"] == "error":
            truth = row.get("message") or ""
        caption = visible(row.get("caption") or "")
        if row["state"] == "damaged":
            # Nothing of it can be trusted: why takes the caption's place, and the truth's.
            caption, truth = split_at_word(visible(row.get("message") or ""),
                                           widths.get("caption", 40))
        return [
            Text(str(row["number"]), justify="right"),
            Text(clip(visible(row["start"]), widths.get("start", 24))),
            Text(str(row["seed"]), justify="right"),
            Text(clip(visible(grid), widths.get("grid", 24))),
            Text(row["state"], style=STATE_STYLE.get(row["state"], "")),
            Text(str(row["iterations"]), justify="right"),
            Text(clip(caption, widths.get("caption", 40))),
            Text(clip(visible(truth), widths.get("truth", 40))),
        ]

    # -- actions ----------------------------------------------------------------------------------
    def selected(self) -> int | None:
        table = self.table
        if not self.trajectories or table.cursor_row is None:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        return int(key.value)

    def action_open(self) -> None:
        number = self.selected()
        if number is None:
            return
        trajectory = self.trajectories[number]
        run_dir = trajectory.run_dir(self.sweep_dir)
        if not (run_dir / "run.json").exists():
            self.notify("this trajectory has not started yet", severity="warning")
            return
        self.push_screen(TrajectoryScreen(run_dir, preview=self.preview))

    @on(DataTable.RowSelected)
    def _on_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_follow(self) -> None:
        """Jump to the first running trajectory (or the last one that moved)."""
        table = self.table
        for number, row in self.rows.items():
            if row["state"] == "running":
                table.move_cursor(row=table.get_row_index(str(number)))
                return


    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        if isinstance(self.screen, ViewScreen):
            # The run view's keys, with q and escape going back here (not quitting).
            rows = [(keys, what) for keys, what, actions, modes in HELP_ROWS
                    if "view" in modes and actions not in (("quit",), ("back",))
                    and actions != ("command_palette",)]
            self.push_screen(HelpScreen(mode="view", rows=[*rows, BACK_HELP]))
        else:
            self.push_screen(HelpScreen(rows=SWEEP_HELP, legend=False,
                                        title="truthloop sweep — keys of the table"))

    async def action_quit(self) -> None:
        """q: back to the table from a trajectory (as Escape), or leave from the table."""
        if isinstance(self.screen, ViewScreen):
            self.pop_screen()
            return
        self.exit(return_code=0)


def run_sweep_view(sweep_dir: Path, preview: str = "auto") -> int:
    app = SweepApp(Path(sweep_dir), preview=resolve_preview(preview))
    app.run()
    return app.return_code or 0
