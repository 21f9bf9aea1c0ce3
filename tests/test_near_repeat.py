"""Near-repeat convergence (--converge text | image), opt-in beside the exact criterion: fake
backends whose prompts come in families of known cosine (fakes.NearDesign: two members 0.98
apart, anything else 0) reach the designed near attractors; the exact criterion and the article
preset stay as they were; the atlas groups near attractors by the same criterion."""

from __future__ import annotations

import json

import pytest

from fakes import NEAR_SCRIPT, FakeCaptioner, FakeEmbedder, FakePainter, NearDesign, factory
from fakes import run_sweep, start_image
from truthloop.config import RunConfig, apply_preset
from truthloop.loop import LoopFailed, TruthLoop
from truthloop.store import read_run


def near_run(tmp_path, start, converge="text", name="run", max_iters=20, design=None,
             **loop):
    config = RunConfig(start_prompt=start)
    config.loop.clauses, config.loop.max_iters, config.loop.converge = 1, max_iters, converge
    config.loop.near_threshold, config.loop.near_window = 0.95, 3
    for key, value in loop.items():
        setattr(config.loop, key, value)
    backends = (design or NearDesign(NEAR_SCRIPT)).backends(config)
    summary = TruthLoop(config, tmp_path / name, lambda c, e: backends).run()
    return summary, read_run(tmp_path / name), backends


def compared(view):
    return [r.compared for r in view.records]


def test_text_near_fixed_point_is_found_where_designed(tmp_path):
    # s1, barn 1, barn 2, barn 3, barn 4: barn 2..4 are near repeats of barn 1 (0.98 >= 0.95;
    # of equals the earliest), three in a row at iteration 4, decided before drawing it.
    summary, view, backends = near_run(tmp_path, "s1")
    assert compared(view) == ["s1", "barn 1", "barn 2", "barn 3", "barn 4"]
    assert summary["status"] == "converged"
    assert summary["cycle"] == {"start": 1, "length": 1, "kind": "fixed_point", "found_at": 4,
                                "criterion": "text"}
    assert summary["truth_prompts"] == ["barn 1"]
    assert summary["truth_images"] == ["images/0001.png"]
    assert [r.near_of for r in view.records] == [None, None, 1, 1, 1]
    assert [r.near_sim for r in view.records][2:] == [pytest.approx(0.98, abs=1e-6)] * 3
    last = view.records[-1]
    assert last.converged_by == "text" and last.image is None and last.repeat_of is None
    assert backends.painter.painted == ["s1", "barn 1", "barn 2", "barn 3"]
    assert summary["iterations"] == 4
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["loop"]
    assert (config["converge"], config["near_threshold"], config["near_window"]) == \
        ("text", 0.95, 3)


def test_the_exact_criterion_never_sees_a_near_repeat(tmp_path):
    summary, view, _ = near_run(tmp_path, "s1", converge="exact", max_iters=6)
    assert summary["status"] == "max_iters" and summary["cycle"] is None
    assert compared(view) == ["s1", "barn 1", "barn 2", "barn 3", "barn 4", "barn 5"]
    assert all(r.near_of is None and r.converged_by is None for r in view.records)
    # the measures are recorded all the same
    assert view.records[2].text_prev == pytest.approx(0.98, abs=1e-6)


def test_text_near_two_cycle(tmp_path):
    # s3, sea 1, moon 1, sea 2, moon 2, sea 3: each sea/moon nearly repeats the first of its
    # family; the window of three opens at sea 2 (iteration 3), which came back to sea 1.
    summary, view, _ = near_run(tmp_path, "s3")
    assert compared(view) == ["s3", "sea 1", "moon 1", "sea 2", "moon 2", "sea 3"]
    assert summary["cycle"] == {"start": 1, "length": 2, "kind": "cycle", "found_at": 5,
                                "criterion": "text"}
    assert summary["truth_prompts"] == ["sea 1", "moon 1"]


def test_image_near_repeat_is_decided_on_the_image_just_drawn(tmp_path):
    summary, view, backends = near_run(tmp_path, "s1", converge="image")
    assert summary["status"] == "converged"
    assert summary["cycle"] == {"start": 1, "length": 1, "kind": "fixed_point", "found_at": 4,
                                "criterion": "image"}
    last = view.records[-1]
    assert last.index == 4 and last.image == "images/0004.png" and last.converged_by == "image"
    assert [r.near_of for r in view.records] == [None, None, 1, 1, 1]
    assert summary["truth_images"] == ["images/0001.png"] and summary["iterations"] == 5
    assert len(backends.painter.painted) == 5


def test_an_exact_repeat_ends_a_near_run_too(tmp_path):
    summary, view, _ = near_run(tmp_path, "s4")
    assert compared(view) == ["s4", "fixZ", "fixZ"]
    assert summary["cycle"] == {"start": 1, "length": 1, "kind": "fixed_point", "found_at": 2}
    assert view.records[-1].repeat_of == 1


@pytest.mark.parametrize("converge", ["text", "image"])
def test_resumed_near_run_ends_as_an_uninterrupted_one(tmp_path, converge):
    whole, view_whole, _ = near_run(tmp_path, "s2", converge=converge, name="whole")
    near_run(tmp_path, "s2", converge=converge, name="cut", max_iters=4)
    design = NearDesign(NEAR_SCRIPT)
    resumed = TruthLoop.for_resume(tmp_path / "cut",
                                   lambda c, e: design.backends(c), max_iters=20).run()
    view_cut = read_run(tmp_path / "cut")
    assert resumed["cycle"] == whole["cycle"] and resumed["cycle"]["criterion"] == converge
    assert [r.to_json() | {"timings": None} for r in view_cut.records] == \
        [r.to_json() | {"timings": None} for r in view_whole.records]
    # and a converged near run, resumed, draws nothing
    again = design.backends(RunConfig(start_prompt="s2"))
    TruthLoop.for_resume(tmp_path / "cut", lambda c, e: again, max_iters=30).run()
    assert again.painter.painted == [] and len(read_run(tmp_path / "cut").records) == \
        len(view_whole.records)


def test_confirm_iterations_follow_a_near_repeat(tmp_path):
    summary, view, _ = near_run(tmp_path, "s1", confirm_iters=2)
    assert summary["cycle"]["found_at"] == 4 and summary["confirmed_iterations"] == 2
    assert summary["cycle_held"] is True
    assert compared(view)[-1] == "barn 6" and view.records[-1].image is None


def test_near_text_needs_a_text_encoder(tmp_path):
    config = RunConfig(start_prompt="a")
    config.loop.converge = "text"
    loop = TruthLoop(config, tmp_path / "run", factory(FakeCaptioner({}), FakePainter()))
    with pytest.raises(LoopFailed, match="--converge text compares CLIP text features"):
        loop.run()


def test_article_preset_keeps_the_exact_criterion_and_its_prompts(tmp_path):
    """--preset article compares word for word, as before: the same prompts and images as the
    plain exact loop, no near-repeat fields, even with an embedder that has text features."""
    script = {"start": "man, phone", "man": "golf course, green", "golf course": "golf course, sky"}
    runs = {}
    for name, preset in (("plain", False), ("article", True)):
        config = RunConfig(input_image="start.png")
        if preset:
            apply_preset(config, "article")
        config.loop.clauses = 1
        design = NearDesign(script, start_caption="start, s")
        backends = design.backends(config)
        backends.painter = FakePainter(seed_mode=config.generate.seed_mode)
        if not preset:  # the loop as it was: no text features at all
            backends.embedder = FakeEmbedder()
        TruthLoop(config, tmp_path / name, lambda c, e, b=backends: b,
                  input_image=start_image()).run()
        runs[name] = read_run(tmp_path / name)
    article = runs["article"]
    assert article.config["loop"]["converge"] == "exact"
    assert article.config["generate"]["seed_mode"] == "shared"
    assert [r.fed_prompt for r in article.records] == \
        [r.fed_prompt for r in runs["plain"].records] == \
        ["start", "man", "golf course", "golf course"]
    lines = [json.loads(line) for line in
             (tmp_path / "article" / "log.jsonl").read_text().splitlines()]
    assert not any({"near_of", "near_sim", "converged_by"} & set(line) for line in lines)
    assert "text_start" in lines[1]  # measured, not used to stop


# -- the atlas -------------------------------------------------------------------------------------
def test_atlas_groups_near_attractors_with_the_runs_criterion(tmp_path):
    pytest.importorskip("sklearn")
    from truthloop.lookback.atlas import build_atlas

    base = RunConfig()
    base.loop.clauses, base.loop.max_iters, base.loop.converge = 1, 10, "text"
    run_sweep(tmp_path / "sweep", base, ["s1", "s2", "s3", "s4", "s5"], [0, 1], {})
    atlas = build_atlas(tmp_path / "sweep")
    found = {tuple(a["prompts"]): a for a in atlas["attractors"]}
    # s1 ends near "barn 1", s2 near "barn 7": different words, one place (cosine 0.98)
    assert set(found) == {("barn 1",), ("moon 1", "sea 1"), ("fixZ",)}
    barn = found[("barn 1",)]
    assert barn["basin_size"] == 4 and barn["criterion"] == "text"
    assert sorted(barn["variants"]) == [["barn 1"], ["barn 7"]]
    assert found[("moon 1", "sea 1")]["basin_size"] == 2
    assert found[("fixZ",)]["criterion"] == "exact" and "variants" not in found[("fixZ",)]
    assert atlas["converged"] == 8 and atlas["trajectories"] == 10
