"""How far a trajectory has drifted, measured as the drift studies measure it: no torch, no GPU.

Per iteration the loop records cosine similarities of CLIP embeddings (unit vectors) in three
pairs, each to the start and to the previous iteration:

    image  sim_start / sim_prev      this iteration's image vs the start image / the previous image
    text   text_start / text_prev    this compared prompt vs the first one / the previous one
    cross  cross_start / cross_prev  this caption vs the start image / the image it describes

(Mollah et al. 2025, "The Telephone Game": within each modality and across them, to the start.)
This module holds what those numbers become: series over generations, a drift rate fitted to
them, their spread across runs, and the near-repeat test of `--converge text|image`. It imports
only the standard library at import time; numpy lazily, where it pays (comparing a vector with
many, fitting the drift of every run of a sweep at once).

Generations: generation 0 is the start, where every within-modality similarity is 1 by
definition. A run from an image starts at the input image, so iteration i's image is generation
i + 1; a run from a prompt draws its start image in iteration 0 (generation 0). Compared prompts
and captions count from iteration 0 either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Measure:
    name: str         # image | text | cross
    start_field: str  # the Record field of the similarity to the start
    prev_field: str   # ... and to the previous iteration
    label: str        # what a figure or a table calls it
    anchored: bool    # 1 at generation 0 by definition (within one modality)


MEASURES = {
    "image": Measure("image", "sim_start", "sim_prev", "image ↔ image", True),
    "text": Measure("text", "text_start", "text_prev", "text ↔ text", True),
    "cross": Measure("cross", "cross_start", "cross_prev", "caption ↔ image", False),
}


def cosine(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    """The dot product of two unit vectors (their cosine); None when either is missing or the
    result is not a number."""
    if a is None or b is None:
        return None
    value = float(sum(x * y for x, y in zip(a, b)))
    return value if math.isfinite(value) else None


def generation(measure: str, index: int, image_start: bool) -> int:
    """The generation of iteration `index`'s value of `measure` (see the module's docstring)."""
    return index + 1 if measure == "image" and image_start else index


def series(records: Iterable[Any], measure: str, image_start: bool) -> list[tuple[int, float]]:
    """(generation, similarity to the start) for one run, in order; the start itself (1.0 at
    generation 0) included for the image measure of a run from an image, whose records never
    hold it (its first image is generation 1)."""
    spec = MEASURES[measure]
    out: list[tuple[int, float]] = []
    if measure == "image" and image_start:
        out.append((0, 1.0))
    for record in records:
        value = getattr(record, spec.start_field, None)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append((generation(measure, record.index, image_start), float(value)))
    return out


# -- near repeats ---------------------------------------------------------------------------------
def best_match(vector: Sequence[float], history: Sequence[tuple[int, Sequence[float]]]
               ) -> tuple[int, float] | None:
    """The earlier (index, vector) most similar to `vector` and that similarity; the earliest
    of equals. None for an empty history."""
    if not history:
        return None
    try:
        import numpy as np
    except ImportError:  # the core runs on the standard library alone
        sims = [cosine(vector, other) for _, other in history]
        best = max(range(len(sims)), key=lambda i: (sims[i] if sims[i] is not None else -2.0,
                                                     -i))
        return history[best][0], float(sims[best] if sims[best] is not None else -1.0)
    matrix = np.asarray([other for _, other in history], dtype=np.float64)
    sims = matrix @ np.asarray(vector, dtype=np.float64)
    best = int(np.argmax(sims))  # argmax returns the first of equals
    return history[best][0], float(sims[best])


class NearRepeats:
    """The near-repeat criterion: an iteration is a near repeat when its vector's cosine to an
    earlier iteration's reaches `threshold`; the run has converged once `window` iterations in a
    row were. Exact repeats are near repeats too (cosine 1)."""

    def __init__(self, threshold: float, window: int):
        self.threshold = threshold
        self.window = window
        self.history: list[tuple[int, list[float]]] = []
        self.streak = 0  # near repeats in a row, ending with the last iteration observed

    def observe(self, index: int, vector: Sequence[float] | None
                ) -> tuple[int | None, float | None, bool]:
        """Compare iteration `index` with every earlier one, then remember it. Returns the
        earlier iteration it nearly repeats (None: none within the threshold), that similarity,
        and whether this iteration completed the window."""
        if vector is None:
            self.streak = 0
            return None, None, False
        match = best_match(vector, self.history)
        self.history.append((index, list(vector)))
        if match is None or match[1] < self.threshold:
            self.streak = 0
            return None, None, False
        self.streak += 1
        return match[0], match[1], self.streak >= self.window

    def restore(self, records: Sequence[Any]) -> None:
        """The streak as the records left it (a resumed run); the history is filled by the
        caller, which has the vectors."""
        self.streak = 0
        for record in records:
            self.streak = self.streak + 1 if getattr(record, "near_of", None) is not None else 0


def group_near(vectors: Sequence[Sequence[float] | None], threshold: float) -> list[int]:
    """Single-linkage groups of the vectors: two are together when a chain of pairs with cosine
    >= threshold joins them (the loop's criterion, which accepts a near repeat of any earlier
    iteration, is a chain too). Returns a group number per vector, numbered by first member;
    a missing vector is a group of its own."""
    parent = list(range(len(vectors)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(vectors):
        if a is None:
            continue
        for j in range(i):
            b = vectors[j]
            similarity = cosine(a, b)
            if b is not None and similarity is not None and similarity >= threshold:
                ri, rj = root(i), root(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(len(vectors))]


# -- statistics -----------------------------------------------------------------------------------
def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile with linear interpolation between order statistics (numpy's default
    method, "linear"); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float | None:
    return quantile(values, 0.5)


def curve(runs: Sequence[Sequence[tuple[int, float]]]) -> list[dict[str, Any]]:
    """Per generation, over the runs that reached it: how many, the median and the
    interquartile band (25th to 75th percentile) of their similarity to the start."""
    by_generation: dict[int, list[float]] = {}
    for points in runs:
        for g, value in points:
            by_generation.setdefault(g, []).append(value)
    return [{"generation": g, "n": len(values), "median": median(values),
             "q25": quantile(values, 0.25), "q75": quantile(values, 0.75)}
            for g, values in sorted(by_generation.items())]


@dataclass(frozen=True)
class DecayFit:
    """s(g) = floor + (start - floor) * exp(-rate * g), fitted by least squares.

    `rate` is per generation; `half_life` the generations in which the distance left to the floor
    halves (ln 2 / rate). `start` is fixed, not fitted: 1 for a within-modality similarity (the
    start is itself), the observed generation-0 value for caption-image."""

    rate: float
    floor: float
    start: float
    rmse: float
    points: int

    @property
    def half_life(self) -> float | None:
        return math.log(2) / self.rate if self.rate > 0 else None

    @property
    def no_drift(self) -> bool:
        """The points never left the start (a rate of 0: none the fit can see)."""
        return self.rate == 0.0

    @property
    def within_one_generation(self) -> bool:
        """The fall to the floor was over by generation 1 (the gap shrank a thousandfold): the
        points say the rate is at least ln 1000 per generation, not what it is."""
        return self.rate >= SUDDEN_RATE

    def predict(self, g: float) -> float:
        return self.floor + (self.start - self.floor) * math.exp(-self.rate * g)

    def to_json(self) -> dict[str, Any]:
        half = self.half_life
        return {"model": "floor + (start - floor) * exp(-rate * generation)",
                "rate": round(self.rate, 6), "floor": round(self.floor, 6),
                "start": round(self.start, 6), "half_life": None if half is None else round(half, 4),
                "rmse": round(self.rmse, 6), "points": self.points,
                "no_drift": self.no_drift, "within_one_generation": self.within_one_generation}


RATE_MIN, RATE_MAX = 1e-4, 50.0
SUDDEN_RATE = math.log(1000)  # exp(-rate) < 1/1000: gone by generation 1
FLAT = 1e-3  # a fitted fall (start - floor) smaller than this is no drift


GRID_STEPS = 240      # the log grid of rates the search starts from (241 rates)
GOLDEN_STEPS = 80     # golden-section steps between the best grid rate's neighbours


def _summed(points: Sequence[tuple[float, float]]) -> tuple[list[tuple[float, float, int]],
                                                           float, int]:
    """The points of generation > 0 summed by generation: ((generation, mean, count) in order,
    the squared error of the points from their generation's mean, the number of points). A
    point's squared error from the model is its error from its generation's mean plus that
    mean's, and the first part does not depend on the fit."""
    by_generation: dict[float, list[float]] = {}
    for g, s in points:
        if g > 0 and math.isfinite(s):
            by_generation.setdefault(float(g), []).append(float(s))
    groups = [(g, sum(v) / len(v), len(v)) for g, v in sorted(by_generation.items())]
    within = sum(sum((s - mean) ** 2 for s in by_generation[g]) for g, mean, _ in groups)
    return groups, within, sum(n for _, _, n in groups)


def _floors_and_errors(np: Any, g: Any, mean: Any, n: Any, start: Any, rate: Any
                       ) -> tuple[Any, Any]:
    """For fixed rates (one per fit) the model is linear in the floor: its least-squares value
    (kept within [-1, start], where a cosine floor can be) and the squared error it leaves,
    for every fit at once. g, mean, n: (fits, generations), summed by generation (`_summed`;
    a padding column has n = 0); start, rate: (fits,)."""
    decay = np.exp(-rate[:, None] * g)
    rest = 1.0 - decay
    num = (n * (mean - start[:, None] * decay) * rest).sum(axis=1)
    den = (n * rest * rest).sum(axis=1)
    floor = np.divide(num, den, out=start.copy(), where=den > 0)
    floor = np.minimum(start, np.maximum(-1.0, floor))
    model = floor[:, None] + (start - floor)[:, None] * decay
    return floor, (n * (mean - model) ** 2).sum(axis=1)


def fit_decay(points: Sequence[tuple[float, float]], start: float = 1.0) -> DecayFit | None:
    """Fit `DecayFit`'s model to (generation, similarity) points of generation > 0 (generation 0
    is the fixed start) by least squares, every point weighing the same (pooled runs: the
    generations more runs reached weigh more). None with fewer than two such points.

    The rate is searched on a log grid from 1e-4 to 50 per generation and refined by golden
    section between the grid neighbours of the best; the floor has a closed form for each rate.
    Deterministic: the same points always give the same fit."""
    return fit_decays([points], start)[0]


def fit_decays(point_sets: Sequence[Sequence[tuple[float, float]]],
               start: float | Sequence[float] = 1.0) -> list[DecayFit | None]:
    """`fit_decay` of each set of points (one run's series each, say), all searched at once
    with numpy: every step of the grid and of the golden section is one array operation over
    every fit. `start`: one for all, or one per set."""
    import numpy as np

    starts = [float(start)] * len(point_sets) if isinstance(start, (int, float)) \
        else [float(s) for s in start]
    summed = [_summed(points) for points in point_sets]
    usable = [i for i, (_, _, count) in enumerate(summed) if count >= 2]
    out: list[DecayFit | None] = [None] * len(point_sets)
    if not usable:
        return out
    width = max(len(summed[i][0]) for i in usable)
    g, mean, n = (np.zeros((len(usable), width)) for _ in range(3))
    for row, i in enumerate(usable):
        groups = summed[i][0]
        g[row, :len(groups)] = [x for x, _, _ in groups]
        mean[row, :len(groups)] = [x for _, x, _ in groups]
        n[row, :len(groups)] = [x for _, _, x in groups]
    first = np.asarray([starts[i] for i in usable])

    def error(log_rate: Any) -> Any:
        return _floors_and_errors(np, g, mean, n, first, np.exp(log_rate))[1]

    grid = np.log(RATE_MIN) + np.log(RATE_MAX / RATE_MIN) * np.arange(GRID_STEPS + 1) \
        / GRID_STEPS
    errors = np.stack([error(np.full(len(usable), x)) for x in grid], axis=1)
    best = np.argmin(errors, axis=1)  # the first of equals
    lo = grid[np.maximum(0, best - 1)]
    hi = grid[np.minimum(GRID_STEPS, best + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = error(a), error(b)
    for _ in range(GOLDEN_STEPS):
        left = fa <= fb  # the minimum lies in [lo, b]: b becomes a, a new a is probed
        lo, hi = np.where(left, lo, a), np.where(left, b, hi)
        probe = np.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
        found = error(probe)
        a, b = np.where(left, probe, b), np.where(left, a, probe)
        fa, fb = np.where(left, found, fb), np.where(left, fa, found)
    log_rate = (lo + hi) / 2
    grid_best = grid[best]
    log_rate = np.where(errors[np.arange(len(usable)), best] < error(log_rate), grid_best,
                        log_rate)
    rate = np.exp(log_rate)
    floor, sse = _floors_and_errors(np, g, mean, n, first, rate)
    for row, i in enumerate(usable):
        groups, within, count = summed[i]
        fit_rate, fit_floor, fit_sse = float(rate[row]), float(floor[row]), float(sse[row])
        if abs(starts[i] - fit_floor) < FLAT:  # no fall to speak of: its rate would be noise
            fit_rate, fit_floor = 0.0, starts[i]
            fit_sse = sum(k * (m - starts[i]) ** 2 for _, m, k in groups)
        out[i] = DecayFit(rate=fit_rate, floor=fit_floor, start=starts[i],
                          rmse=math.sqrt(max(0.0, fit_sse + within) / count), points=count)
    return out


def linear_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Ordinary least-squares slope of similarity over generations (generation > 0), per
    generation; None with fewer than two distinct generations."""
    pts = [(float(g), float(s)) for g, s in points if g > 0]
    if len({g for g, _ in pts}) < 2:
        return None
    mean_g = sum(g for g, _ in pts) / len(pts)
    mean_s = sum(s for _, s in pts) / len(pts)
    den = sum((g - mean_g) ** 2 for g, _ in pts)
    return sum((g - mean_g) * (s - mean_s) for g, s in pts) / den


def mean_step(values: Sequence[float]) -> float | None:
    """The mean change from one generation to the next of a per-generation curve: the "semantic
    drift rate" as the Telephone Game's published code computes it (the mean of successive
    differences, which is (last - first) / (n - 1): only the ends count)."""
    if len(values) < 2:
        return None
    return (values[-1] - values[0]) / (len(values) - 1)
