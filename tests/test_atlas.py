"""The atlas reads a sweep directory only (no Ray, no GPU): these sweeps are made by running the
sweep worker in this process over fake backends with designed attractors (tests/sweep_fakes.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")

import sweep_fakes  # noqa: E402
from sweep_fakes import make_sweep  # noqa: E402
from faulthelpers import assert_one_clean_error_line, run_main  # noqa: E402
from truthloop.lookback.atlas import build_atlas, write_atlas  # noqa: E402
from truthloop.record import canonical_cycle as canonical  # noqa: E402


def test_cycles_entered_at_any_phase_are_one_attractor():
    assert canonical(["cyc3y", "cyc3z", "cyc3x"]) == canonical(["cyc3x", "cyc3y", "cyc3z"])
    assert canonical(["b", "a"]) == ("a", "b")
    assert canonical(["x", "y", "z"]) != canonical(["x", "z", "y"])  # the other direction


def test_atlas_of_designed_attractors(tmp_path):
    sweep_dir = tmp_path / "sweep"
    make_sweep(sweep_dir, ["a1", "c1", "d1", "e1", "n1"], [0, 1])
    atlas = build_atlas(sweep_dir)
    found = {tuple(a["prompts"]): a for a in atlas["attractors"]}
    assert set(found) == {("fixA",), ("cyc3x", "cyc3y", "cyc3z"), ("fixE",)}
    three = found[("cyc3x", "cyc3y", "cyc3z")]
    # c1 and d1 enter the 3-cycle at different members: one attractor, basin 2 starts × 2 seeds.
    assert three["basin_size"] == 4 and three["kind"] == "cycle" and three["length"] == 3
    # c1 draws c1, c2 then the three members: 5 images; d1 draws d1 then three: 4 images.
    assert three["iterations_to_converge"] == {"min": 4, "median": 4.5, "max": 5}
    assert found[("fixA",)]["basin_size"] == 2 and found[("fixA",)]["kind"] == "fixed_point"
    assert atlas["never_converged_fraction"] == pytest.approx(0.2)
    assert atlas["cycle_length_histogram"] == {"1": 4, "3": 4}
    # The 3-cycle and fixE share a motif (designed embeddings); fixA is alone.
    by_motif = {}
    for a in atlas["attractors"]:
        by_motif.setdefault(a["motif"], set()).add(tuple(a["prompts"]))
    assert sorted(by_motif.values(), key=len) == [
        {("fixA",)}, {("cyc3x", "cyc3y", "cyc3z"), ("fixE",)}]
    motif = next(m for m in atlas["motifs"] if m["basin_size"] == 6)
    assert motif["medoid_image"] and (sweep_dir / motif["medoid_image"]).exists()
    assert len(atlas["map"]) == 8  # every converged truth on the 2-D map


def test_atlas_files_show_untrusted_captions_literally(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    make_sweep(sweep_dir, ["h1", "a1"], [0])
    assert run_main(["atlas", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31m" in out  # the escape shown, not sent
    page = (sweep_dir / "atlas" / "atlas.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "[bold red]boom[/bold red]" in page
    assert "src='data:image/png;base64," in page  # self-contained: images inlined
    atlas = json.loads((sweep_dir / "atlas" / "atlas.json").read_text())
    assert {tuple(a["prompts"]) for a in atlas["attractors"]} == {(sweep_fakes.HOSTILE,),
                                                                  ("fixA",)}
    from PIL import Image

    with Image.open(sweep_dir / "atlas" / "atlas.png") as image:
        assert image.size[0] >= 320


def test_atlas_without_embeddings_keeps_each_attractor_a_motif(tmp_path):
    sweep_dir = tmp_path / "sweep"
    make_sweep(sweep_dir, ["a1", "b1", "c1", "e1"], [0])
    for stored in sweep_dir.glob("runs/*/embedding.json"):
        stored.unlink()
    atlas, out = write_atlas(sweep_dir)
    assert len(atlas["attractors"]) == 4 and len(atlas["motifs"]) == 4
    assert (out / "atlas.png").exists()


def test_atlas_of_something_else_is_one_line(tmp_path, capsys):
    assert run_main(["atlas", str(tmp_path)]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "not a sweep directory")


def _tiny(sweep_dir):
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    spec["config"]["models"]["models"] = "tiny"
    (sweep_dir / "sweep.json").write_text(json.dumps(spec))


def test_atlas_png_has_axes_a_legend_whole_prompts_and_says_tiny(tmp_path):
    from truthloop.lookback.atlas import LEGEND_WIDTH, MARGIN, TINY_COLOUR, render_atlas
    from truthloop.text import visible

    sweep_dir = tmp_path / "sweep"
    make_sweep(sweep_dir, ["a1", "c1", "e1", "h1"], [0, 1])
    atlas = build_atlas(sweep_dir)
    image, layout = render_atlas(sweep_dir, atlas)
    # the map's axes say what they are and how much of the spread each shows
    x_name, y_name = layout["axes"]
    shares = atlas["map_explained_variance"]
    assert x_name == f"PC 1 ({shares[0]:.0%} of the variance)" and y_name.startswith("PC 2 (")
    # a legend entry per motif, in its colour on the map
    assert [text for _, text in layout["legend"]] == [
        f"motif {m['id']} · basin {m['basin_size']}" for m in atlas["motifs"]]
    colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 20)}
    assert all(colour in colours for colour, _ in layout["legend"])
    # the map fills the width beside its legend (no blank half of a canvas)
    assert layout["map_box"][2] == image.width - MARGIN - LEGEND_WIDTH
    # a 60-character prompt is shown whole (it was cut at 24), as visible text
    hostile = next(m for m in atlas["motifs"] if m["representative_prompt"] == sweep_fakes.HOSTILE)
    shown = " ".join(layout["tiles"][hostile["id"]][1:])
    assert shown == " ".join(visible(sweep_fakes.HOSTILE).split())
    # real models: no warning; tiny random weights: said in red under the title, as the sheet does
    assert TINY_COLOUR not in colours and len(layout["header"]) == 2
    _tiny(sweep_dir)
    tiny_atlas = build_atlas(sweep_dir)
    assert tiny_atlas["models"] == "tiny"
    image, layout = render_atlas(sweep_dir, tiny_atlas)
    assert "tiny random-weight models" in layout["header"][2]
    assert TINY_COLOUR in {colour for _, colour in image.convert("RGB").getcolors(1 << 20)}
    _, out = write_atlas(sweep_dir)
    assert "tiny random-weight models" in (out / "atlas.html").read_text()
