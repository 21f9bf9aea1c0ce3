"""The caption panel: the full caption, its diff against a base, and the prompt that was fed."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from truthloop.diff import Segment, caption_diff
from truthloop.record import Record
from truthloop.text import visible
from tui.widgets.log_table import YOURS_MARK, YOURS_STYLE

# How the TUI draws the core diff's marks (the marks' brackets keep it readable without colour).
REMOVED = "strike red"
ADDED = "bold underline green"
STYLES = {"equal": "", "removed": REMOVED, "added": ADDED}


def diff_text(segments: list[Segment]) -> Text:
    """The core diff as Rich Text: every segment is already plain visible() text, never markup."""
    text = Text()
    for segment in segments:
        text.append(segment.text, STYLES[segment.mark])
    return text


def caption_of(record: Record | None) -> str | None:
    if record is None:
        return None
    return record.caption if record.caption is not None else record.fed_prompt


class CaptionPanel(Static):
    DEFAULT_CSS = """
    CaptionPanel { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)

    def show(self, record: Record | None, base: Record | None,
             base_label: str, empty: str = "waiting for the first caption…",
             note: str = "") -> None:
        self.update(self.build(record, base, base_label, empty, note))

    @staticmethod
    def build(record: Record | None, base: Record | None,
              base_label: str, empty: str = "waiting for the first caption…",
              note: str = "") -> Text:
        """A header line (which iteration, the diff's base and what changed), then the caption
        once: diffed against the base, its changes marked inline, or plain when there is nothing
        to compare; the prompt that was fed, when it is not the whole caption, before it. A caption of
        real length (60-75 words) takes 5-6 lines at 80 columns: shown twice (caption, then its
        diff), the diff was out of sight on an 80x24 screen."""
        if record is None:
            return Text(empty, style="dim italic")
        index = record.index
        caption = record.caption
        fed = record.fed_prompt or ""
        text = Text()
        text.append(f"#{index} caption", style="bold")
        if record.by_person:  # a human turn is not the model's
            text.append(f"  {YOURS_MARK}yours, not the model's", style=YOURS_STYLE)
        if caption is None:
            text.append("  (none: this iteration drew the --prompt start)", style="dim")
        diff = None
        if caption is not None:
            if base is None or base is record:
                text.append(f"  vs {base_label}: nothing to compare", style="dim")
            else:
                diff, stats = caption_diff(caption_of(base), caption_of(record))
                text.append(f"  vs {base_label}: {stats.describe()}", style="dim")
            if fed == caption:
                text.append("  · fed whole", style="dim")
        repeat = record.repeat_of
        if repeat is not None:
            text.append(f"  ↺ repeats #{repeat}", style="bold yellow")
        if note:  # the run ended before this iteration was drawn
            text.append(f"  ■ {note}", style="bold magenta")
        # The prompt that was fed comes before the caption: a caption of real length fills an
        # 80x24 screen's panel, and the line after it was out of sight.
        if caption is None or fed != caption:
            text.append("\nfed  ", style="bold")
            text.append(visible(fed))
        if caption is not None:
            text.append("\n")
            if diff is not None:
                text.append_text(diff_text(diff))
            else:
                text.append(visible(caption))
        return text
