"""One iteration of a run, typed: what the loop writes, the store reads back, the TUI shows and the
exports draw. Its JSON form is one line of `log.jsonl`.

Also the one place that finds a run's cycle (fixed point or longer) in its records, so the loop,
the summary, the viewers and the atlas all agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Who wrote a record's caption: absent (None) = the captioner; PERSON = a person, whose text took
# the caption's place (a fork's first iteration: `truthloop fork RUN --at K --prompt TEXT`, `w` in
# the app). Runs written before there were human turns have no author: the model's, every one.
PERSON = "person"


@dataclass
class Record:
    """Iteration `index`: the caption of the current image (None for a --prompt start's first
    iteration), the part that is compared, the prompt fed to the image model, and the image drawn
    from it (None for the last record of a converged run: the repeat is found before drawing)."""

    index: int
    caption: str | None
    compared: str
    fed_prompt: str
    repeat_of: int | None = None  # the earlier iteration whose compared prompt this repeats
    seed: int | None = None
    image: str | None = None      # relative to the run directory, e.g. "images/0003.png"
    rng_state: str | None = None  # the shared generator's state after drawing (seed mode shared)
    sim_prev: float | None = None   # CLIP cosine of this image to the previous / the start image
    sim_start: float | None = None
    # The same for the compared prompt's CLIP text embedding (to the previous iteration's and to
    # the first iteration's compared prompt), and across the modalities: this caption's text
    # embedding against the image it describes (the previous iteration's, or the start image)
    # and against the start image. None where not measured (no text encoder, no caption).
    text_prev: float | None = None
    text_start: float | None = None
    cross_prev: float | None = None
    cross_start: float | None = None
    # Near repeats (--converge text / image): the earlier iteration most similar to this one
    # when that similarity reaches the threshold, and the similarity; `converged_by` names the
    # criterion on the iteration that completed `near_window` near repeats in a row.
    near_of: int | None = None
    near_sim: float | None = None
    converged_by: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # PERSON where a person wrote the caption (a human turn); None: the captioner did.
    author: str | None = None
    # Shown while the image is still being drawn (a live view); never written.
    pending: bool = False

    # Keys in the order log.jsonl has always had them; the drawing fields only when drawn.
    _BASE = ("index", "caption", "compared", "fed_prompt", "repeat_of", "seed", "image")
    _DRAWN = ("rng_state", "sim_prev", "sim_start")
    # Written only when measured, so a run without them keeps the lines it always had.
    _MEASURED = ("text_prev", "text_start", "cross_prev", "cross_start", "near_of", "near_sim",
                 "converged_by")

    def to_json(self) -> dict[str, Any]:
        data = {key: getattr(self, key) for key in self._BASE}
        if self.image is not None:
            data.update({key: getattr(self, key) for key in self._DRAWN})
        data.update({key: getattr(self, key) for key in self._MEASURED
                     if getattr(self, key) is not None})
        if self.author is not None:  # absent: the model's (every line of an older run)
            data["author"] = self.author
        if self.timings:
            data["timings"] = dict(self.timings)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Record":
        """From a log line; raises ValueError when it is not a record (a damaged or foreign line).

        Unknown keys are ignored: a run written by a newer truthloop of the same format stays
        readable (a newer format is refused when the run is opened, see store.read_run)."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        index, compared, fed = data.get("index"), data.get("compared"), data.get("fed_prompt")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError("no valid 'index'")
        if not isinstance(compared, str) or not isinstance(fed, str):
            raise ValueError("no 'compared' / 'fed_prompt' text")
        caption = data.get("caption")
        repeat_of = data.get("repeat_of")
        image = data.get("image")
        timings = data.get("timings")
        return cls(
            index=index,
            caption=caption if isinstance(caption, str) else None,
            compared=compared,
            fed_prompt=fed,
            repeat_of=repeat_of if isinstance(repeat_of, int) else None,
            seed=data.get("seed") if isinstance(data.get("seed"), int) else None,
            image=image if isinstance(image, str) and image else None,
            rng_state=data.get("rng_state") if isinstance(data.get("rng_state"), str) else None,
            sim_prev=_number(data.get("sim_prev")),
            sim_start=_number(data.get("sim_start")),
            text_prev=_number(data.get("text_prev")),
            text_start=_number(data.get("text_start")),
            cross_prev=_number(data.get("cross_prev")),
            cross_start=_number(data.get("cross_start")),
            near_of=data.get("near_of") if isinstance(data.get("near_of"), int)
            and not isinstance(data.get("near_of"), bool) else None,
            near_sim=_number(data.get("near_sim")),
            converged_by=data.get("converged_by")
            if isinstance(data.get("converged_by"), str) else None,
            timings={k: v for k, v in timings.items() if isinstance(v, (int, float))}
            if isinstance(timings, dict) else {},
            author=data.get("author") if isinstance(data.get("author"), str) else None,
        )

    @property
    def by_person(self) -> bool:
        """Whether a person wrote this iteration's caption (a human turn), not the captioner."""
        return self.author == PERSON

    @property
    def total_seconds(self) -> float | None:
        return self.timings.get("total")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Cycle:
    """Where a run's compared prompts started repeating: iterations start .. start+length-1
    repeat forever (length 1: a fixed point). Found at iteration start+length.

    A near repeat (criterion "text" or "image") is found later, where its window of near
    repeats in a row ended (`found`): its members are the iterations the first near repeat of
    that window came back to."""

    start: int
    length: int
    criterion: str = "exact"
    found: int | None = None

    @property
    def kind(self) -> str:
        return "fixed_point" if self.length == 1 else "cycle"

    @property
    def found_at(self) -> int:
        return self.start + self.length if self.found is None else self.found

    @property
    def near(self) -> bool:
        return self.criterion != "exact"

    def describe(self) -> str:
        shape = "fixed point" if self.length == 1 else f"cycle of length {self.length}"
        return f"near {shape} ({self.criterion})" if self.near else shape

    def to_json(self) -> dict[str, Any]:
        data = {"start": self.start, "length": self.length, "kind": self.kind,
                "found_at": self.found_at}
        if self.near:
            data["criterion"] = self.criterion
        return data


def find_cycle(records: list[Record]) -> Cycle | None:
    """The run's first repeat, or None: an exact repeat (the loop marks it with `repeat_of`),
    or the end of a window of near repeats (marked with `converged_by`), whichever came first."""
    for position, record in enumerate(records):
        if record.repeat_of is not None:
            return Cycle(record.repeat_of, record.index - record.repeat_of)
        if record.converged_by is not None:
            first = position  # back to the first of the near repeats in a row
            while first > 0 and records[first - 1].near_of is not None:
                first -= 1
            opening = records[first]
            if opening.near_of is None:  # a damaged log: the window is not there
                continue
            return Cycle(opening.near_of, opening.index - opening.near_of,
                         record.converged_by, record.index)
    return None


def cycle_prompts(records: list[Record]) -> list[str] | None:
    """The compared prompts of the run's cycle, in the order the run met them; None: no cycle."""
    cycle = find_cycle(records)
    if cycle is None:
        return None
    return [r.compared for r in records[cycle.start:cycle.start + cycle.length]]


def canonical_cycle(cycle: list[str]) -> tuple[str, ...]:
    """The rotation of a cycle's prompts that sorts first: one key for every phase of entry, so two
    runs that entered the same cycle by different members have the same key (the atlas's
    attractors, `compare`'s "same attractor")."""
    if not cycle:
        return ()
    return min(tuple(cycle[i:] + cycle[:i]) for i in range(len(cycle)))


def result_fields(records: list[Record]) -> dict[str, Any]:
    """The summary's result: images drawn, the cycle, its truth prompts and images, and whether
    the iterations after the first repeat followed the cycle (--confirm-iters)."""
    images = sum(1 for r in records if r.image)
    fields: dict[str, Any] = {"iterations": images, "records": len(records),
                              "cycle": None, "truth_prompts": None, "truth_images": None}
    cycle = find_cycle(records)
    if cycle is not None:
        members = records[cycle.start:cycle.start + cycle.length]
        fields["cycle"] = cycle.to_json()
        fields["truth_prompts"] = [r.fed_prompt for r in members]
        fields["truth_images"] = [r.image for r in members]
        after = records[cycle.found_at:]
        fields["confirmed_iterations"] = len(after) - 1
        if cycle.near:  # near repeats held: each later iteration again a near repeat
            fields["cycle_held"] = all(r.near_of is not None for r in after)
        else:
            fields["cycle_held"] = all(
                r.compared == records[r.index - cycle.length].compared for r in after
            )
    return fields
