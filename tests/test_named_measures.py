"""`truthloop measure DIR --embedder NAME`: finished runs and sweeps re-scored by named embedders
(CLIP ViT-B/32, DINO, DINOv2, MPNet, MiniLM; DreamSim where installed), on their tiny
random-weight versions. The sweeps are made in this process over designed fake backends
(tests/fakes.py: flat-colour images, scripted captions), then measured for real by the tiny
checkpoints; every number is checked against a plain recomputation with the same checkpoint
loaded through transformers alone."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from fakes import FakeCaptioner, FakeEmbedder, SeedablePainter, start_image  # noqa: E402
from faulthelpers import assert_one_clean_error_line, cli_subprocess  # noqa: E402
from truthloop import cli  # noqa: E402
from truthloop import named_measures as nm  # noqa: E402
from truthloop.config import RunConfig  # noqa: E402
from truthloop.loop import Backends  # noqa: E402
from truthloop.store import RunWriter, read_run, read_run_info  # noqa: E402

EMBEDDER_FILES = ("measures-clip-vitb32.json", "measures-dino-vitb16.json",
                  "measures-minilm.json")


# Each caption names the next prompt (one clause is compared): chains that wander a few
# iterations, some into a cycle.
SCRIPT = {"start caption": "a green field, one", "s1": "a green field, two",
          "drift 0": "a red boat, three", "a red boat": "an old tree, four",
          "a green field": "a small house, five", "a small house": "an old tree, six",
          "an old tree": "two people on the sea, seven",
          "two people on the sea": "a small house, eight"}


def fake_pair(config, emit):
    """A sweep worker's backends (backend "test_named_measures:fake_pair"): flat-colour images
    by prompt and seed, captions from SCRIPT; the loop measures images only (FakeEmbedder)."""
    return Backends(captioner=FakeCaptioner(SCRIPT),
                    painter=SeedablePainter(config.generate.seed, config.generate.seed_mode),
                    embedder=FakeEmbedder(), device="cpu")


def make_sweep(sweep_dir: Path, prompts=("s1", "drift 0"), images=1) -> list[Path]:
    """A finished sweep of fake runs: `images` starts from the fake start image, `prompts`
    starts from prompts, two seeds (flat colours of another shade)."""
    from truthloop.store import atomic_write_json
    from truthloop.sweep.spec import make_spec, trajectories
    from truthloop.sweep.worker import TrajectoryWorker

    sweep_dir.mkdir(parents=True)
    starts = []
    for number in range(images):
        path = sweep_dir.parent / f"start{number}.png"
        start_image().save(path)
        starts.append(path)
    config = RunConfig()
    config.loop.clauses, config.loop.max_iters = 1, 6
    spec = make_spec(config, starts, list(prompts), [0, 1], {"guidance": [1.0, 3.0]},
                     backend="test_named_measures:fake_pair")
    atomic_write_json(sweep_dir / "sweep.json", spec)
    worker = TrajectoryWorker(spec["backend"])
    runs = []
    for trajectory in trajectories(spec):
        outcome = worker.run({"run_dir": str(trajectory.run_dir(sweep_dir)),
                              "config": trajectory.config})
        assert outcome["status"] in ("converged", "max_iters"), outcome
        runs.append(trajectory.run_dir(sweep_dir))
    return runs


class CountingLoader:
    """ml.embedders.load_embedder (tiny, CPU), counting the loads."""

    def __init__(self):
        self.loads: list[str] = []

    def __call__(self, named):
        from truthloop.ml.backends import quiet_libraries
        from truthloop.ml.embedders import load_embedder

        quiet_libraries()
        self.loads.append(named.name)
        return load_embedder(named, tiny=True, device="cpu")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A sweep (one image start, two prompt starts, two seeds, two guidance values: 12 runs)
    measured by three embedders; a copy of it before measuring."""
    root = tmp_path_factory.mktemp("named")
    sweep = root / "sweep"
    runs = make_sweep(sweep)
    shutil.copytree(sweep, root / "unmeasured")
    said: list[str] = []
    loader = CountingLoader()
    tally = nm.measure_dirs([sweep], ["clip-vitb32", "dino-vitb16", "minilm"], loader,
                            tiny=True, say=said.append)
    return sweep, runs, root / "unmeasured", tally, loader, said


# -- a plain recomputation: transformers alone, numpy ----------------------------------------------
def _plain_unit(matrix):
    import numpy as np

    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def plain_clip(path: str):
    """image(paths) and text(strings) of the tiny CLIP: projected features, unit length."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)

    def image(paths):
        pixels = processor(images=[Image.open(p).convert("RGB") for p in paths],
                           return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model.vision_model(pixel_values=pixels).pooler_output
            return _plain_unit(model.visual_projection(out))

    def text(strings):
        tokens = processor.tokenizer(strings, padding=True, truncation=True, max_length=77,
                                     return_tensors="pt")
        with torch.no_grad():
            out = model.text_model(**tokens).pooler_output
            return _plain_unit(model.text_projection(out))

    return image, text


def telephone_game_dino_transform(short: int, crop: int):
    """The Telephone Game code's DINO transform (torchvision: resize the short side, centre
    crop, ImageNet's mean and deviation), at any size."""
    transforms = pytest.importorskip("torchvision.transforms")

    return transforms.Compose([transforms.Resize(short), transforms.CenterCrop(crop),
                               transforms.ToTensor(),
                               transforms.Normalize([0.485, 0.456, 0.406],
                                                    [0.229, 0.224, 0.225])])


def plain_dino(path: str):
    """The tiny DINO's CLS token after the last norm (timm's DINO features), on images
    transformed as the Telephone Game's code does, at the tiny size (36, then 32)."""
    import torch
    from PIL import Image
    from transformers import ViTModel

    model = ViTModel.from_pretrained(path, add_pooling_layer=False).eval()
    transform = telephone_game_dino_transform(36, 32)

    def image(paths):
        pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        with torch.no_grad():
            return _plain_unit(model(pixel_values=pixels).last_hidden_state[:, 0])

    return image


def test_dino_sees_images_as_the_telephone_games_code_gives_them_to_timm():
    """Not as the hub conversion's preprocessor_config.json says (224 without a crop, mean and
    deviation 0.5): resize 256, centre crop 224, ImageNet's statistics."""
    import numpy as np
    from PIL import Image

    from truthloop.ml.embedders import DinoTransform

    image = Image.open(Path(cli.__file__).parent / "data" / "sample.png").convert("RGB")
    image = image.resize((384, 300))  # not square: the crop matters
    mine = DinoTransform(224)(images=[image], return_tensors="pt")["pixel_values"][0].numpy()
    theirs = telephone_game_dino_transform(256, 224)(image).numpy()
    assert mine.shape == theirs.shape == (3, 224, 224)
    assert np.abs(mine - theirs).max() < 1e-5


def plain_minilm(path: str):
    """The model card's recipe: mean pooling over the attention mask, then normalise."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def text(strings):
        tokens = tokenizer(strings, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**tokens)[0]
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        return _plain_unit((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

    return text


def _remembered(features):
    """features(list) -> rows, each input computed once (one at a time, as plainly as can be)."""
    if features is None:
        return None
    seen: dict = {}

    def remembered(items):
        for item in items:
            if str(item) not in seen:
                seen[str(item)] = features([item])[0]
        return [seen[str(item)] for item in items]

    return remembered


def plain_similarities(run_dir: Path, image=None, text=None) -> list[dict]:
    """Per log line, the loop's pairs from the files: image to the start image (input.png, or a
    prompt start's first drawing) and to the previous image; compared prompt to the first and
    the previous one; caption to the start image and to the image it describes."""
    import numpy as np

    image, text = _remembered(image), _remembered(text)
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    from_image = (run_dir / "input.png").exists()
    start = run_dir / ("input.png" if from_image else lines[0]["image"])
    out = []
    start_vec = image([start])[0] if image else None
    previous = start_vec if from_image else None
    for number, line in enumerate(lines):
        row = {}
        if text is not None:
            vec = text([line["compared"]])[0]
            first = text([lines[0]["compared"]])[0]
            row["text_start"] = float(vec @ first)
            if number:
                row["text_prev"] = float(vec @ text([lines[number - 1]["compared"]])[0])
            if image is not None and line.get("caption") is not None:
                caption = text([line["caption"]])[0]
                row["cross_start"] = float(caption @ start_vec)
                row["cross_prev"] = float(caption @ previous)
        if line.get("image"):
            vec = image([run_dir / line["image"]])[0] if image else None
            if image is not None:
                row["sim_start"] = float(vec @ start_vec)
                if previous is not None:
                    row["sim_prev"] = float(vec @ previous)
            previous = vec
        out.append(row)
    assert np.isfinite([v for row in out for v in row.values()]).all()
    return out


def tiny_path(name: str) -> str:
    from truthloop.ml.embedders import tiny_embedder

    return tiny_embedder(nm.EMBEDDERS[name])


def assert_same(measured_rows: list[dict], plain_rows: list[dict]) -> None:
    assert len(measured_rows) == len(plain_rows)
    for index, (mine, plain) in enumerate(zip(measured_rows, plain_rows)):
        assert mine["index"] == index
        assert set(mine) - {"index"} == set(plain), (index, mine, plain)
        for key, value in plain.items():
            assert mine[key] == pytest.approx(value, abs=2e-6), (index, key)


# -- the numbers -----------------------------------------------------------------------------------
def test_each_embedder_equals_a_plain_recomputation_with_its_tiny_model(measured):
    sweep, runs, _, tally, _, _ = measured
    assert tally.measured == 3 * len(runs) == 36 and tally.skipped == 0
    clip_image, clip_text = plain_clip(tiny_path("clip-vitb32"))
    dino_image = plain_dino(tiny_path("dino-vitb16"))
    minilm_text = plain_minilm(tiny_path("minilm"))
    for run_dir in runs:
        clip = nm.read_measured(run_dir, "clip-vitb32")
        assert clip["measures"] == ["image", "text", "cross"] and clip["tiny"] is True
        assert_same(clip["iterations"], plain_similarities(run_dir, clip_image, clip_text))
        dino = nm.read_measured(run_dir, "dino-vitb16")
        assert_same(dino["iterations"], plain_similarities(run_dir, image=dino_image))
        minilm = nm.read_measured(run_dir, "minilm")
        assert_same(minilm["iterations"], plain_similarities(run_dir, text=minilm_text))
        # what a start compares with itself is 1: a prompt start's first drawing, the first
        # compared prompt
        first = dino["iterations"][0]
        if not (run_dir / "input.png").exists():
            assert first["sim_start"] == pytest.approx(1.0, abs=1e-6)
            assert "sim_prev" not in first
        assert minilm["iterations"][0]["text_start"] == pytest.approx(1.0, abs=1e-6)


def test_features_are_unit_vectors_and_tell_inputs_apart(measured):
    from PIL import Image

    from truthloop.ml.embedders import load_embedder

    images = [Image.new("RGB", (20, 20), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    for name in ("clip-vitb32", "dino-vitb16", "dinov2-base", "mpnet", "minilm"):
        model = load_embedder(nm.EMBEDDERS[name], tiny=True, device="cpu")
        found = []
        if "image" in nm.EMBEDDERS[name].measures:
            found.append(model.image_features(images))
        if "text" in nm.EMBEDDERS[name].measures:
            found.append(model.text_features(["a red car", "two people on the sea"]))
        for pair in found:
            for vector in pair:
                assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-5)
            assert sum(a * b for a, b in zip(*pair)) < 0.9999, name


def test_run_json_names_them_and_its_config_and_log_are_untouched(measured):
    sweep, runs, unmeasured, _, _, _ = measured
    for run_dir in runs:
        before = unmeasured / run_dir.relative_to(sweep)
        info, old = read_run_info(run_dir), read_run_info(before)
        assert info["config"] == old["config"]
        assert {k: v for k, v in info.items() if k != "named_measures"} == old
        assert set(info["named_measures"]) == {"clip-vitb32", "dino-vitb16", "minilm"}
        assert info["named_measures"]["dino-vitb16"]["file"] == "measures-dino-vitb16.json"
        assert info["named_measures"]["dino-vitb16"]["measures"] == ["image"]
        assert (run_dir / "log.jsonl").read_bytes() == (before / "log.jsonl").read_bytes()
        assert not list(run_dir.glob(".*tmp*"))


def test_a_second_call_loads_nothing_and_changes_nothing(measured):
    sweep, runs, _, _, _, _ = measured
    before = {p: p.read_bytes() for run in runs for p in run.iterdir() if p.is_file()}
    loader = CountingLoader()
    said: list[str] = []
    tally = nm.measure_dirs([sweep], ["dino-vitb16", "minilm"], loader, tiny=True,
                            say=said.append)
    assert loader.loads == [] and tally.measured == 0 and tally.done == 2 * len(runs)
    assert {p: p.read_bytes() for p in before} == before
    assert "dino-vitb16 (DINO ViT-B/16, image): 0 runs measured, 12 already measured" in said


def test_a_resumed_run_with_more_records_is_measured_again(tmp_path):
    runs = make_sweep(tmp_path / "sweep", prompts=(), images=1)
    nm.measure_dirs([tmp_path / "sweep"], ["minilm"], CountingLoader(), tiny=True,
                    say=lambda line: None)
    run_dir = runs[0]
    log = run_dir / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]))  # as it stood two iterations in
    loader = CountingLoader()
    nm.measure_dirs([run_dir], ["minilm"], loader, tiny=True, say=lambda line: None)
    assert loader.loads == ["minilm"]
    assert len(nm.read_measured(run_dir, "minilm")["iterations"]) == 2
    # the same command on the same records: nothing to do
    again = CountingLoader()
    nm.measure_dirs([run_dir], ["minilm"], again, tiny=True, say=lambda line: None)
    assert again.loads == []


def test_a_run_being_written_is_skipped_with_one_line(tmp_path):
    runs = make_sweep(tmp_path / "sweep", prompts=("s1",), images=0)
    holder = RunWriter.hold(runs[0])  # as the loop holds it while it runs
    try:
        said: list[str] = []
        tally = nm.measure_dirs([tmp_path / "sweep"], ["dino-vitb16", "minilm"],
                                CountingLoader(), tiny=True, say=said.append)
    finally:
        holder.close()
    notes = [line for line in said if line.startswith("truthloop: note:")]
    assert len(notes) == 1 and str(runs[0]) in notes[0] and "being written" in notes[0]
    assert tally.skipped == 1 and tally.measured == 2 * (len(runs) - 1)
    assert not list(runs[0].glob("measures-*"))
    assert (runs[1] / "measures-dino-vitb16.json").exists()
    # once it has stopped, the same call measures it, and only it
    loader = CountingLoader()
    tally = nm.measure_dirs([tmp_path / "sweep"], ["dino-vitb16", "minilm"], loader,
                            tiny=True, say=lambda line: None)
    assert tally.measured == 2 and tally.done == 2 * (len(runs) - 1) and not tally.skipped


def test_an_unreadable_image_leaves_its_similarities_out(tmp_path):
    runs = make_sweep(tmp_path / "sweep", prompts=(), images=1)
    run_dir = runs[0]
    (run_dir / "images" / "0001.png").write_bytes(b"not a png")
    said: list[str] = []
    tally = nm.measure_dirs([run_dir], ["dino-vitb16"], CountingLoader(), tiny=True,
                            say=said.append)
    assert tally.incomplete == 1 and tally.measured == 1
    assert any("images/0001.png cannot be read" in line for line in said)
    rows = nm.read_measured(run_dir, "dino-vitb16")["iterations"]
    assert "sim_start" not in rows[1] and "sim_prev" not in rows[2]  # nor what compares with it
    assert "sim_start" in rows[0] and "sim_start" in rows[2]


def test_what_a_kill_leaves_is_finished_by_the_same_command(measured, tmp_path):
    """The states a kill can leave between renames: a temp file never renamed, and a measures
    file that run.json does not name yet (its run.json's own temp file beside it, when the kill
    came mid-write). The same command ends with the files of an unbroken run, measuring nothing
    twice."""
    sweep, runs, unmeasured, _, _, _ = measured
    copy = tmp_path / "sweep"
    shutil.copytree(unmeasured, copy)
    first, second = (copy / run.relative_to(sweep) for run in runs[:2])
    nm.measure_dirs([first], ["dino-vitb16"], CountingLoader(), tiny=True,
                    say=lambda line: None)
    info = read_run_info(first)
    info.pop("named_measures")
    (first / "run.json").write_text(json.dumps(info, indent=2) + "\n")  # killed before naming
    (first / ".run.json.tmp-99998").write_bytes(b'{"config": {')  # ... while writing run.json
    (second / ".measures-dino-vitb16.json.tmp-99999").write_bytes(b'{"format": 1, "embe')
    loader = CountingLoader()
    nm.measure_dirs([copy], ["dino-vitb16"], loader, tiny=True, say=lambda line: None)
    assert loader.loads == ["dino-vitb16"]
    for run in runs:
        mine = copy / run.relative_to(sweep)
        assert (mine / "measures-dino-vitb16.json").read_bytes() \
            == (run / "measures-dino-vitb16.json").read_bytes()
        assert read_run_info(mine)["named_measures"]["dino-vitb16"] \
            == read_run_info(run)["named_measures"]["dino-vitb16"]
        assert not list(mine.glob(".*tmp*"))


def test_sigkill_mid_way_then_the_same_command_gives_an_unbroken_runs_files(measured, tmp_path):
    sweep, runs, unmeasured, _, _, _ = measured
    copy = tmp_path / "sweep"
    shutil.copytree(unmeasured, copy)
    args = [sys.executable, "-m", "truthloop.cli", "measure", str(copy), "--models", "tiny",
            "--device", "cpu", "--embedder", "clip-vitb32", "--embedder", "dino-vitb16",
            "--embedder", "minilm"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if any(copy.glob("runs/*/measures-*.json")):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        process.wait(60)
    done = cli_subprocess(args[3:])
    assert done.returncode == 0, done.stderr
    for run in runs:
        mine = copy / run.relative_to(sweep)
        for name in EMBEDDER_FILES:
            assert (mine / name).read_bytes() == (run / name).read_bytes()
        assert read_run_info(mine) == read_run_info(run)
        assert not list(mine.glob(".*tmp*"))
    if process.returncode != -signal.SIGKILL:  # it had ended before the kill came
        pytest.skip("the first command finished before it could be killed mid-way")


# -- the command -----------------------------------------------------------------------------------
def test_the_command_measures_a_run_and_says_what_it_did(measured, tmp_path, capsys):
    sweep, runs, unmeasured, _, _, _ = measured
    run_dir = tmp_path / "run"
    shutil.copytree(unmeasured / runs[0].relative_to(sweep), run_dir)
    code = cli.main(["measure", str(run_dir), "--models", "tiny", "--device", "cpu",
                     "--embedder", "dino-vitb16"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "dino-vitb16 (DINO ViT-B/16, image): 1 run measured" in out.out
    assert (run_dir / "measures-dino-vitb16.json").read_bytes() \
        == (runs[0] / "measures-dino-vitb16.json").read_bytes()


@pytest.mark.parametrize("args, needles", [
    (["measure", "{tmp}/nowhere", "--embedder", "dino-vitb16"], ["nowhere: no such directory"]),
    (["measure", "{tmp}", "--embedder", "dino-vitb16"],
     ["is neither a run nor a sweep directory"]),
    (["measure", "{tmp}/file.txt", "--embedder", "dino-vitb16"], ["is not a directory"]),
    (["measure", "{tmp}", "--embedder", "dino-v3"], ["invalid choice", "dino-v3"]),
    (["measure", "{tmp}"], ["--embedder"]),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, needles):
    (tmp_path / "file.txt").write_text("x")
    code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert_one_clean_error_line(err, *needles)
    assert list(tmp_path.iterdir()) == [tmp_path / "file.txt"]


def test_dreamsim_without_its_package_is_refused_naming_the_install(measured, capsys):
    import importlib.util

    if importlib.util.find_spec("dreamsim") is not None:
        pytest.skip("dreamsim is installed here")
    sweep = measured[0]
    code = cli.main(["measure", str(sweep), "--embedder", "dreamsim"])
    assert code == 2
    assert_one_clean_error_line(capsys.readouterr().err, "pip install dreamsim")


def test_a_real_embedder_not_in_the_cache_is_one_line_before_anything_is_written(measured,
                                                                                 tmp_path):
    sweep, runs, unmeasured, _, _, _ = measured
    copy = tmp_path / "sweep"
    shutil.copytree(unmeasured, copy)
    done = cli_subprocess(["measure", copy, "--embedder", "dino-vitb16"],
                          env={"HF_HOME": str(tmp_path / "empty-hf")})
    assert done.returncode == 2
    assert_one_clean_error_line(done.stderr, "facebook/dino-vitb16",
                                "hf download facebook/dino-vitb16")
    assert not list(copy.glob("runs/*/measures-*"))


# -- the report ------------------------------------------------------------------------------------
def test_the_report_shows_mcd_and_sdr_by_each_embedder(measured, tmp_path):
    """groups.csv and the page carry MCD (the mean over generations past the start of each
    generation's mean similarity to the start) and SDR (the mean change per generation of those
    means) per named embedder and measure, equal to a plain recomputation from the files."""
    from truthloop.lookback.report import write_report

    sweep, runs, unmeasured, _, _, _ = measured
    report, out = write_report(sweep, tmp_path / "report")
    rows = {row["group"]: row for row in csv.DictReader((out / "tables" / "groups.csv").open())}
    title = "MCD (DINO ViT-B/16, image ↔ image)"
    for guidance in (1.0, 3.0):
        mine = [r for r in runs if json.loads((r / "run.json").read_text())["config"]
                ["generate"]["guidance"] == guidance]
        for name, label, measure, field in (
                ("dino-vitb16", "DINO ViT-B/16", "image ↔ image", "sim_start"),
                ("minilm", "all-MiniLM-L6-v2", "text ↔ text", "text_start"),
                ("clip-vitb32", "CLIP ViT-B/32", "caption ↔ image", "cross_start")):
            by_generation: dict[int, list[float]] = {}
            for run_dir in mine:
                from_image = (run_dir / "input.png").exists()
                for row in nm.read_measured(run_dir, name)["iterations"]:
                    if field in row:
                        shift = 1 if field == "sim_start" and from_image else 0
                        by_generation.setdefault(row["index"] + shift, []).append(row[field])
            means = [sum(v) / len(v) for g, v in sorted(by_generation.items()) if g > 0]
            mcd = sum(means) / len(means)
            sdr = (means[-1] - means[0]) / (len(means) - 1)
            row = rows[f"guidance={guidance}"]
            assert float(row[f"MCD ({label}, {measure})"]) == pytest.approx(mcd, abs=1e-6)
            assert float(row[f"SDR ({label}, {measure})"]) == pytest.approx(sdr, abs=1e-6)
    header = next(csv.reader((out / "tables" / "groups.csv").open()))
    # beside today's columns, after them
    assert header.index(title) > header.index("cross_mean_similarity")
    assert "MCD (all-MiniLM-L6-v2, text ↔ text)" in header
    page = (out / "report.html").read_text()
    assert "MCD (DINO ViT-B/16, image ↔ image)" in page
    assert "SDR (CLIP ViT-B/32, caption ↔ image)" in page
    series = list(csv.DictReader((out / "tables" / "series.csv").open()))
    assert any(row["measure"] == "image (DINO ViT-B/16)" for row in series)
    assert [n["name"] for n in report["named_embedders"]] == ["clip-vitb32", "dino-vitb16",
                                                              "minilm"]
    # a sweep measured by none: today's columns only
    _, plain = write_report(unmeasured, tmp_path / "plain")
    header = next(csv.reader((plain / "tables" / "groups.csv").open()))
    assert not any(column.startswith(("MCD", "SDR")) for column in header)
    assert "MCD (" not in (plain / "report.html").read_text()


def test_the_report_names_a_damaged_measures_file(measured, tmp_path):
    from truthloop.lookback.report import build_report

    sweep, runs, _, _, _, _ = measured
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    damaged = copy / runs[0].relative_to(sweep) / "measures-minilm.json"
    damaged.write_text('{"format": 1, "embedder": "mini')
    report = build_report(copy)
    notes = [n for n in report["skipped"] if "measures-minilm.json" in n]
    assert len(notes) == 1 and "no all-MiniLM-L6-v2 numbers" in notes[0]
    minilm = next(n for n in report["named_embedders"] if n["name"] == "minilm")
    assert minilm["runs"] == len(runs) - 1


# -- a sweep's own --embedder ----------------------------------------------------------------------
def test_a_sweeps_embedders_are_in_its_spec_and_measure_every_trajectory_at_the_end(
        tmp_path, monkeypatch, capsys):
    """`truthloop sweep --embedder NAME`: the spec names it, every trajectory is measured once
    the last has run; the same sweep again with another embedder adds it (no trajectory
    changes) and measures only what is new. The sweep's Ray part runs the workers in this
    process."""
    import truthloop.sweep.driver as driver
    import truthloop.sweep.localray as localray
    from truthloop.sweep import state as st
    from truthloop.sweep.worker import TrajectoryWorker

    def in_process(sweep_dir, trajs, backend, **kwargs):
        worker = TrajectoryWorker(backend)
        for trajectory in trajs:
            worker.run({"run_dir": str(trajectory.run_dir(sweep_dir)),
                        "config": trajectory.config})
        return st.table(sweep_dir, trajs)

    monkeypatch.setattr(driver, "run_sweep", in_process)
    monkeypatch.setattr(localray, "keep_to_loopback", lambda: None)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("s1\ndrift 0\n")
    sweep = tmp_path / "sweep"
    command = ["sweep", str(sweep), "--prompts", str(prompts), "--seeds", "0-1",
               "--max-iters", "6", "--clauses", "1", "--models", "tiny", "--no-atlas",
               "--backend", "test_named_measures:fake_pair"]
    assert cli.main([*command, "--embedder", "minilm"]) == 0
    out = capsys.readouterr().out
    assert "minilm (all-MiniLM-L6-v2, text): 4 runs measured" in out
    assert json.loads((sweep / "sweep.json").read_text())["embedders"] == ["minilm"]
    runs = sorted((sweep / "runs").iterdir())
    assert len(runs) == 4
    assert all(set(read_run_info(r)["named_measures"]) == {"minilm"} for r in runs)

    assert cli.main([*command, "--embedder", "dino-vitb16"]) == 0
    out = capsys.readouterr().out
    assert "minilm (all-MiniLM-L6-v2, text): 0 runs measured, 4 already measured" in out
    assert "dino-vitb16 (DINO ViT-B/16, image): 4 runs measured" in out
    assert json.loads((sweep / "sweep.json").read_text())["embedders"] == ["minilm",
                                                                            "dino-vitb16"]
    assert sorted((sweep / "runs").iterdir()) == runs
    assert all(set(read_run_info(r)["named_measures"]) == {"minilm", "dino-vitb16"}
               for r in runs)


def test_truthloop_models_lists_the_embedders_and_how_to_get_them(capsys):
    """`truthloop models` names each embedder's checkpoint, its weights' licence and, where the
    hub cache lacks it, the download line (the measure command's models, found the same way)."""
    assert cli.main(["models", "--json"]) == 0
    rows = {row["family"]: row for row in json.loads(capsys.readouterr().out)
            if row["kind"] == "measure"}
    assert list(rows) == list(nm.EMBEDDERS)
    for name, named in nm.EMBEDDERS.items():
        assert rows[name]["licence"] and not rows[name]["default"]
        if named.repo is not None:
            assert rows[name]["checkpoint"] == named.repo
            assert rows[name]["download"] == \
                ("" if rows[name]["cached"] else f"hf download {named.repo}")
    assert cli.main(["models"]) == 0
    table = capsys.readouterr().out
    assert "meas dino-vitb16" in table and "facebook/dino-vitb16" in table
