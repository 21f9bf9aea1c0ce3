"""The caption panel: the full caption, its diff against a base, and the prompt that was fed."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from truthloop.diff import Segment, caption_diff
from truthloop.record import Record
from truthloop.text import visible

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
             base_label: str) -> None:
        self.update(self.build(record, base, base_label))

    @staticmethod
    def build(record: Record | None, base: Record | None,
              base_label: str) -> Text:
        if record is None:
            return Text("waiting for the first caption…", style="dim italic")
        index = record.index
        caption = record.caption
        text = Text()
        text.append(f"#{index} caption  ", style="bold")
        if caption is None:
            text.append("(none: this iteration drew the --prompt start)\n", style="dim")
        else:
            text.append(visible(caption))
            text.append("\n")
        text.append("fed  ", style="bold")
        fed = record.fed_prompt or ""
        if caption is not None and fed == caption:
            text.append("(the whole caption)", style="dim")
        else:
            text.append(visible(fed))
        text.append("\n")
        text.append("diff ", style="bold")
        if base is None or base is record:
            text.append(f"vs {base_label}: nothing to compare", style="dim")
        else:
            diff, stats = caption_diff(caption_of(base), caption_of(record))
            text.append(f"vs {base_label}", style="dim")
            text.append(f" ({stats.describe()})  ", style="dim")
            text.append("[-", REMOVED)
            text.append("removed", REMOVED)
            text.append("-]", REMOVED)
            text.append(" ", "dim")
            text.append("{+", ADDED)
            text.append("added", ADDED)
            text.append("+}", ADDED)
            text.append("\n")
            text.append_text(diff_text(diff))
        repeat = record.repeat_of
        if repeat is not None:
            text.append(f"\n↺ repeats the prompt of iteration #{repeat}", style="bold yellow")
        return text
