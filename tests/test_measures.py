"""The drift measures as the studies take them: image, text and caption-image similarities to the
start and to the previous iteration, recorded per iteration from designed fake embedders whose
every cosine is known (tests/fakes.py), the drift rate fitted to them, and the control runs."""

from __future__ import annotations

import json
import math

import pytest

from fakes import DriftDesign, SeedablePainter, start_image
from truthloop.config import RunConfig
from truthloop.loop import TruthLoop
from truthloop.measures import (
    MEASURES, RATE_MAX, RATE_MIN, SUDDEN_RATE, NearRepeats, curve, fit_decay, fit_decays,
    group_near, linear_slope, mean_step, quantile, series,
)
from truthloop.record import Record
from truthloop.store import read_run

EPS = 2e-6  # the loop records similarities to 6 decimals


def drift_run(tmp_path, design, name="run", image_start=False, max_iters=25, **loop):
    config = RunConfig(input_image="start.png") if image_start \
        else RunConfig(start_prompt=design.prompt(0))
    config.loop.clauses = 1
    config.loop.max_iters = max_iters
    for key, value in loop.items():
        setattr(config.loop, key, value)
    backends = design.backends(config)
    loop_ = TruthLoop(config, tmp_path / name, lambda c, e: backends,
                      input_image=start_image() if image_start else None)
    return loop_.run(), read_run(tmp_path / name), backends


def test_each_iteration_records_the_designed_similarities(tmp_path):
    design = DriftDesign()
    summary, view, _ = drift_run(tmp_path, design)
    assert summary["status"] == "max_iters" and len(view.records) == 25
    a, b = design.image_similarity, design.text_similarity
    for r in view.records:
        i = r.index
        assert r.sim_start == pytest.approx(a(i), abs=EPS)          # image i is generation i
        assert r.text_start == pytest.approx(b(i), abs=EPS)
        if i == 0:  # the start prompt: no previous iteration, no caption
            assert r.sim_prev is None and r.text_prev is None
            assert r.cross_prev is None and r.cross_start is None
            continue
        # orthogonal own axes: the cosine of two drifted vectors is the product of their parts
        assert r.sim_prev == pytest.approx(a(i) * a(i - 1), abs=EPS)
        assert r.text_prev == pytest.approx(b(i) * b(i - 1), abs=EPS)
        # the caption of iteration i describes image i-1
        assert r.cross_prev == pytest.approx(0.3, abs=EPS)
        assert r.cross_start == pytest.approx(0.3 * a(i - 1), abs=EPS)
    # The embedding that made them is named in run.json, with what it measured.
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["measures"]["embedding"] == "designed (test)"
    assert set(info["measures"]["fields"]) == {"sim_start", "sim_prev", "text_start",
                                               "text_prev", "cross_start", "cross_prev"}
    line = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[3])
    assert {"sim_start", "sim_prev", "text_start", "text_prev", "cross_start",
            "cross_prev"} <= set(line)


def test_a_run_from_an_image_counts_the_input_as_generation_zero(tmp_path):
    design = DriftDesign(image_start=True)
    _, view, _ = drift_run(tmp_path, design, image_start=True, max_iters=6)
    first = view.records[0]
    assert first.caption == design.caption(0)
    assert first.sim_start == pytest.approx(design.image_similarity(1), abs=EPS)
    assert first.sim_prev == pytest.approx(design.image_similarity(1), abs=EPS)
    assert first.text_start == pytest.approx(1.0, abs=EPS)
    assert first.cross_prev == pytest.approx(0.3, abs=EPS)  # its caption vs the input image
    points = series(view.records, "image", image_start=True)
    assert points[0] == (0, 1.0) and points[1][0] == 1
    assert [g for g, _ in series(view.records, "text", image_start=True)] == list(range(6))


@pytest.mark.parametrize("image_rate,image_floor,text_rate,text_floor",
                         [(0.15, 0.4, 0.3, 0.2), (0.5, 0.6, 0.05, 0.0)])
def test_the_fitted_drift_rates_are_the_designed_ones(tmp_path, image_rate, image_floor,
                                                      text_rate, text_floor):
    design = DriftDesign(image_rate=image_rate, image_floor=image_floor, text_rate=text_rate,
                         text_floor=text_floor)
    _, view, _ = drift_run(tmp_path, design, max_iters=40)
    image = fit_decay(series(view.records, "image", False))
    text = fit_decay(series(view.records, "text", False))
    assert image.rate == pytest.approx(image_rate, rel=2e-3)
    assert image.floor == pytest.approx(image_floor, abs=2e-3)
    assert text.rate == pytest.approx(text_rate, rel=2e-3)
    assert text.floor == pytest.approx(text_floor, abs=5e-3)
    assert image.rmse < 1e-5 and image.points == 39
    assert image.half_life == pytest.approx(math.log(2) / image_rate, rel=2e-3)


def test_fit_of_pooled_runs_is_the_fit_of_their_points(tmp_path):
    """Runs of one rate pooled: the same rate; the fit weighs each point once."""
    runs = [[(g, 0.3 + 0.7 * math.exp(-0.2 * g) + noise) for g in range(1, 30)]
            for noise in (-0.01, 0.0, 0.01)]
    pooled = fit_decay([p for run in runs for p in run])
    assert pooled.rate == pytest.approx(0.2, rel=1e-3) and pooled.points == 87
    assert pooled.rmse == pytest.approx(math.sqrt(2 * 0.01 ** 2 / 3), rel=1e-3)


def former_fit(points, start=1.0):
    """The fit as measures.fit_decay computed it in pure Python, one point at a time (the
    reference its numpy form must reproduce): (rate, floor, rmse, points), or None."""
    by_generation = {}
    for g, s in points:
        if g > 0 and math.isfinite(s):
            by_generation.setdefault(float(g), []).append(float(s))
    count = sum(len(v) for v in by_generation.values())
    if count < 2:
        return None
    groups = [(g, sum(v) / len(v), len(v)) for g, v in sorted(by_generation.items())]
    within = sum(sum((s - mean) ** 2 for s in by_generation[g]) for g, mean, _ in groups)

    def floor_for(rate):
        num = den = 0.0
        decays = [math.exp(-rate * g) for g, _, _ in groups]
        for (g, mean, n), e in zip(groups, decays):
            num += n * (mean - start * e) * (1.0 - e)
            den += n * (1.0 - e) ** 2
        floor = min(start, max(-1.0, num / den if den > 0 else start))
        return floor, sum(n * (mean - (floor + (start - floor) * e)) ** 2
                          for (g, mean, n), e in zip(groups, decays))

    def error(log_rate):
        return floor_for(math.exp(log_rate))[1]

    grid = [math.log(RATE_MIN) + math.log(RATE_MAX / RATE_MIN) * i / 240 for i in range(241)]
    errors = [error(x) for x in grid]
    best = min(range(len(grid)), key=lambda i: (errors[i], i))
    lo, hi = grid[max(0, best - 1)], grid[min(240, best + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = error(a), error(b)
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = error(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = error(b)
    log_rate = (lo + hi) / 2
    if errors[best] < error(log_rate):
        log_rate = grid[best]
    rate = math.exp(log_rate)
    floor, sse = floor_for(rate)
    if abs(start - floor) < 1e-3:
        rate, floor = 0.0, start
        sse = sum(n * (mean - start) ** 2 for _, mean, n in groups)
    return rate, floor, math.sqrt(max(0.0, sse + within) / count), count


def test_the_fits_of_many_runs_at_once_are_the_former_one_at_a_time_fits():
    """fit_decays (numpy, every run's fit searched at once) gives what the pure-Python fit
    gave, run by run, within float rounding: runs of every length, noisy or exact, fast and
    slow, flat, all gone at once, a straight fall, too few points, a caption-image start."""
    import random

    rng = random.Random(7)
    sets, starts = [], []
    for number in range(160):
        rate = math.exp(rng.uniform(math.log(2e-3), math.log(20)))
        floor = rng.uniform(-0.2, 0.9)
        start = 1.0 if number % 4 else rng.uniform(0.2, 0.4)
        noise = rng.choice([0.0, 0.002, 0.02])
        last = rng.randint(2, 120)
        sets.append([(g, floor + (start - floor) * math.exp(-rate * g) + rng.gauss(0, noise))
                     for g in range(0, last)])
        starts.append(start)
    sets += [[(g, 1.0) for g in range(1, 10)], [(g, 0.3) for g in range(1, 8)],
             [(g, 1.0 - 0.2 * g) for g in range(1, 8)], [(0, 1.0), (1, 0.9)], [],
             [(g, 0.9) for g in (3, 3, 3)], [(1, 0.9), (1, 0.8), (2, float("nan")), (2, 0.7)]]
    starts += [1.0] * 7
    fits = fit_decays(sets, starts)
    checked = 0
    for points, start, fit in zip(sets, starts, fits):
        former = former_fit(points, start)
        if former is None:
            assert fit is None
            continue
        rate, floor, rmse, count = former
        generations = {g for g, v in points if g > 0 and math.isfinite(v)}
        if len(generations) == 1:
            # One generation: every (rate, floor) through its mean fits it exactly; both fits
            # are among them.
            (g,) = generations
            assert fit.predict(g) == pytest.approx(floor + (start - floor) * math.exp(-rate * g))
            assert fit.rmse == pytest.approx(rmse, abs=1e-12)
            continue
        if rate >= SUDDEN_RATE:
            # Past ln 1000 per generation exp(-rate) is under 1e-3 and the squared error is flat
            # to float rounding (a 1e-15 difference moves the search): both say "fell within
            # one generation", with the same floor and error, and the rate is not reported.
            assert fit.within_one_generation and fit.rate >= SUDDEN_RATE
        else:
            # A short run of a slow fall trades rate against floor along a valley whose floor
            # is flat to ~1e-15 (summing in another order moves the search's stop a little):
            # rate and floor agree to 1e-5, the error they leave to 1e-9.
            assert fit.rate == pytest.approx(rate, rel=1e-5, abs=1e-12)
        assert fit.floor == pytest.approx(floor, rel=1e-5, abs=1e-5)
        assert fit.rmse == pytest.approx(rmse, rel=1e-9, abs=1e-12)
        assert fit.points == count and fit.start == start
        checked += 1
    assert checked >= 160
    # One set at a time is the same fit as in a batch.
    assert fit_decay(sets[0], starts[0]) == fits[0]


def test_fit_edge_cases():
    assert fit_decay([(0, 1.0), (1, 0.9)]) is None  # one point past the start
    flat = fit_decay([(g, 1.0) for g in range(1, 10)])
    assert flat.predict(5) == pytest.approx(1.0, abs=1e-9) and flat.rmse < 1e-9
    # a fast fall to the floor in one generation
    fast = fit_decay([(g, 0.5) for g in range(1, 10)])
    assert fast.floor == pytest.approx(0.5, abs=1e-6) and fast.rate > 5
    assert linear_slope([(1, 0.9), (2, 0.8), (3, 0.7)]) == pytest.approx(-0.1)
    assert mean_step([0.9, 0.85, 0.7]) == pytest.approx(-0.1)
    assert quantile([1, 2, 3, 4], 0.25) == pytest.approx(1.75)  # numpy's "linear"
    band = curve([[(0, 1.0), (1, 0.8)], [(0, 1.0), (1, 0.6)], [(0, 1.0)]])
    assert band == [{"generation": 0, "n": 3, "median": 1.0, "q25": 1.0, "q75": 1.0},
                    {"generation": 1, "n": 2, "median": 0.7, "q25": pytest.approx(0.65),
                     "q75": pytest.approx(0.75)}]


def test_near_repeats_and_grouping_are_cosines_within_the_threshold():
    near = NearRepeats(threshold=0.9, window=2)
    x, y, xy = [1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]
    assert near.observe(0, x) == (None, None, False)
    assert near.observe(1, y) == (None, None, False)
    of, sim, done = near.observe(2, [0.99, math.sqrt(1 - 0.99 ** 2)])
    assert (of, round(sim, 6), done) == (0, 0.99, False)
    assert near.observe(3, y)[::2] == (1, True)  # two in a row
    assert group_near([x, xy, y, None, [0.999, math.sqrt(1 - 0.999 ** 2)]], 0.7) == \
        [0, 0, 0, 1, 0]  # single linkage: x ~ xy ~ y
    assert group_near([x, y], 0.7) == [0, 1]


def test_old_records_keep_their_fields_and_lines():
    old = {"index": 2, "caption": "a, b", "compared": "a", "fed_prompt": "a", "repeat_of": None,
           "seed": 42, "image": "images/0002.png", "rng_state": None, "sim_prev": 0.91,
           "sim_start": 0.8}
    record = Record.from_json(old)
    assert (record.sim_prev, record.sim_start, record.text_start) == (0.91, 0.8, None)
    assert record.to_json() == old  # nothing new written where nothing new was measured
    assert MEASURES["image"].start_field == "sim_start"


# -- control runs ---------------------------------------------------------------------------------
def test_generator_only_redraws_the_start_prompt_with_new_seeds(tmp_path):
    design = DriftDesign()
    painter = SeedablePainter(seed=7)
    config = RunConfig(start_prompt="drift 0")
    config.generate.seed = 7
    config.loop.control, config.loop.max_iters = "generator-only", 5
    backends = design.backends(config, painter=painter)
    summary = TruthLoop(config, tmp_path / "run", lambda c, e: backends).run()
    view = read_run(tmp_path / "run")
    assert summary["status"] == "max_iters" and summary["cycle"] is None
    assert [r.fed_prompt for r in view.records] == ["drift 0"] * 5
    assert backends.captioner.calls == 0  # never captions
    assert painter.seeds == [7, 8, 9, 10, 11] == [r.seed for r in view.records]
    assert all(r.repeat_of is None for r in view.records)
    assert all(r.image for r in view.records)
    assert view.records[-1].text_start == pytest.approx(1.0, abs=EPS)


def test_captioner_only_captions_the_start_image_again_and_resumes(tmp_path):
    design = DriftDesign(image_start=True)
    config = RunConfig(input_image="start.png")
    config.loop.clauses, config.loop.control, config.loop.max_iters = 1, "captioner-only", 3
    backends = design.backends(config)
    summary = TruthLoop(config, tmp_path / "run", lambda c, e: backends,
                        input_image=start_image()).run()
    assert summary["status"] == "max_iters" and summary["iterations"] == 0
    assert backends.painter.painted == []  # never draws
    assert backends.captioner.calls == 3
    resumed = TruthLoop.for_resume(tmp_path / "run", lambda c, e: backends, max_iters=5).run()
    view = read_run(tmp_path / "run")
    assert resumed["status"] == "max_iters" and len(view.records) == 5
    assert {r.compared for r in view.records} == {"drift 0"}
    assert all(r.image is None and r.sim_start is None for r in view.records)
    assert all(r.cross_prev == pytest.approx(0.3, abs=EPS) for r in view.records)
    assert all(r.text_start == pytest.approx(1.0, abs=EPS) for r in view.records)


def test_controls_and_near_criteria_are_validated_in_one_line():
    from truthloop.config import ConfigError

    config = RunConfig(start_prompt="x")
    config.loop.control, config.loop.converge = "generator-only", "text"
    with pytest.raises(ConfigError, match="never converge"):
        config.validate()
    config.loop.control, config.loop.converge = "painter-only", "exact"
    with pytest.raises(ConfigError, match="unknown --control"):
        config.validate()
    config.loop.control, config.loop.near_threshold = "", float("nan")
    with pytest.raises(ConfigError, match="--near-threshold"):
        config.validate()
    config.loop.near_threshold, config.loop.near_window = 0.9, 0
    with pytest.raises(ConfigError, match="--near-window"):
        config.validate()
    # An old run.json (no such keys) reads with the defaults: exact, no control.
    data = RunConfig(start_prompt="x").to_dict()
    for key in ("converge", "near_threshold", "near_window", "control"):
        del data["loop"][key]
    old = RunConfig.from_dict(data)
    assert (old.loop.converge, old.loop.control) == ("exact", "")


# -- the real CLIP of clip-interrogator -----------------------------------------------------------
def test_clip_embedder_text_features_share_the_image_space(tiny_interrogator):
    """ClipEmbedder.text_features: clip-interrogator's tokenizer and CLIP text tower, unit length,
    the same numbers as encoding the prompts through the interrogator's own tokenizer and CLIP."""
    torch = pytest.importorskip("torch")

    from truthloop.ml.interrogate import ClipEmbedder

    embedder = ClipEmbedder(tiny_interrogator)
    prompts = ["a red barn, at dusk", "<b>a sea</b>"]
    found = embedder.text_features(prompts)
    assert len(found) == 2 and len(found[0]) == len(embedder.features(start_image()))
    for row in found:
        assert sum(x * x for x in row) == pytest.approx(1.0, abs=1e-4)
    with torch.inference_mode():
        ci = tiny_interrogator
        again = ci.clip_model.encode_text(ci.tokenize(prompts).to(ci.device)).float()
        again = again / again.norm(dim=-1, keepdim=True)
    assert torch.allclose(torch.tensor(found), again, atol=1e-6)
    assert found[0] != found[1]


# -- the TUI's drift panel ------------------------------------------------------------------------
@pytest.fixture
def anyio_backend():
    return "asyncio"


def _screen_lines(app, region) -> list[str]:
    import io

    from rich.console import Console

    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(),
                      color_system=None, record=True, legacy_windows=False, force_terminal=True)
    console.print(app.screen._compositor.render_update(full=True,
                                                       screen_stack=app._background_screens))
    lines = console.export_text(styles=False).splitlines()
    return [line[region.x:region.right].rstrip() for line in lines[region.y:region.bottom]]


@pytest.mark.anyio
@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_drift_panel_says_the_three_pairs_of_a_recorded_run(tmp_path, size):
    from tui.app import TruthLoopApp
    from tui.widgets.drift import Drift

    design = DriftDesign()
    _, view, _ = drift_run(tmp_path, design, max_iters=6)
    last = view.records[-1]
    app = TruthLoopApp(run_dir=tmp_path / "run", preview="none", stable=True)
    async with app.run_test(size=size) as pilot:
        for _ in range(50):
            await pilot.pause()
            if len(app.query_one(Drift).numbers) == 6:
                break
        drift = app.query_one(Drift)
        lines = _screen_lines(app, drift.region)
    image = f"{design.image_similarity(5):.2f}"
    text = f"{design.text_similarity(5):.2f}"
    assert lines[0].startswith(("drift ≈st", "≈st")), lines
    assert f"img " in lines[0] and image in lines[0] and text in lines[0], lines
    if size == (120, 40):
        assert f"cap {last.cross_start:.2f}" in lines[0], lines  # four rows: the to-previous values on a line of their own
        assert lines[1] == f"≈prev img {last.sim_prev:.2f} txt {last.text_prev:.2f} " \
                           f"cap {last.cross_prev:.2f}", lines
        assert len(lines) == 4 and lines[2].strip() and lines[3].strip()  # the sparkline
    else:  # two rows (-short), 22 columns: the label, shortened, then the sparkline
        assert lines[0] == f"≈st img {image} txt {text}", lines
        assert len(lines) == 2 and not lines[1].startswith("≈")


def test_a_fit_says_when_it_cannot_see_a_rate():
    flat = fit_decay([(g, 0.9995) for g in range(1, 8)])  # a fall of 0.0005: no drift
    assert flat.no_drift and flat.rate == 0.0 and flat.half_life is None
    assert flat.to_json()["no_drift"] is True
    sudden = fit_decay([(g, 0.3) for g in range(1, 8)])  # all gone by generation 1
    assert sudden.within_one_generation and sudden.floor == pytest.approx(0.3, abs=1e-6)
    slow = fit_decay([(g, 0.5 + 0.5 * math.exp(-0.2 * g)) for g in range(1, 20)])
    assert not slow.within_one_generation and not slow.no_drift
