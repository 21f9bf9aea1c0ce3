"""Dependencies that tell the truth (issue 15): every third-party module the code imports is
declared, the floors are versions that were tested (none in a range known to break), and only the
libraries' known noise is filtered from the warnings."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "Pillow", "open_clip": "open_clip_torch", "clip_interrogator":
                 "clip-interrogator", "textual_image": "textual-image", "sklearn": "scikit-learn",
                 "imageio_ffmpeg": None, "torchao": None, "dreamsim": None}
# None: optional, looked for and used only if present (torchao: --fp8 only; dreamsim: the
# `measure --embedder dreamsim` embedder, refused in one line without it, never tested here, so
# no floor can be declared)
# Versions known to break truthloop: the floor must be above them.
KNOWN_BROKEN = {"diffusers": "0.36.99", "textual": "1.0.99"}


def _requirements() -> dict[str, Requirement]:
    lines = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        lines += [line for line in extra if not line.startswith("truthloop")]
    return {Requirement(line).name.lower().replace("_", "-"): Requirement(line) for line in lines}


def _imported_top_level_modules() -> set[str]:
    names = set()
    for folder in ("truthloop", "tui"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    local = {"truthloop", "tui"}
    return {name for name in names - local if name not in sys.stdlib_module_names}


def test_every_imported_package_is_declared():
    declared = _requirements()
    missing = []
    for module in sorted(_imported_top_level_modules()):
        dist = DISTRIBUTIONS.get(module, module)
        if dist is None:
            continue
        if dist.lower().replace("_", "-") not in declared:
            missing.append(f"{module} ({dist})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_floors_are_tested_versions():
    for name, requirement in _requirements().items():
        floors = [Version(spec.version) for spec in requirement.specifier
                  if spec.operator in (">=", "==")]
        assert floors, f"{name} has no floor"
        floor = max(floors)
        installed = Version(metadata.version(name))
        assert installed >= floor, f"{name} {installed} is below its declared floor {floor}"
        if name in KNOWN_BROKEN:
            assert floor > Version(KNOWN_BROKEN[name]), f"{name}>={floor} allows a broken version"


def test_declared_python_is_what_the_floors_need():
    needed = Version("3.11")  # diffusers, transformers, numpy, Pillow at their floors
    assert PROJECT["requires-python"] == f">={needed}"


WARNINGS_PROBE = r"""
import warnings
from truthloop.ml.backends import quiet_libraries
quiet_libraries()
import clip_interrogator.clip_interrogator as ci_module
# the known noise, as clip-interrogator makes it: filtered
warnings.warn_explicit("`torch.cuda.amp.autocast(args...)` is deprecated. Please use "
                       "`torch.amp.autocast('cuda', args...)` instead.", FutureWarning,
                       ci_module.__file__, 200, module="clip_interrogator.clip_interrogator")
# anything else: shown
warnings.warn("the image model loaded in float32", UserWarning)
warnings.warn("something will change", FutureWarning)
"""


def test_only_known_noise_is_filtered():
    done = subprocess.run([sys.executable, "-W", "default", "-c", WARNINGS_PROBE],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "loaded in float32" in done.stderr
    assert "something will change" in done.stderr
    assert "torch.cuda.amp.autocast" not in done.stderr


def test_an_ignored_dtype_is_said(monkeypatch, truthloop_cache):
    """diffusers 0.30-0.36 ignored dtype=; if a pipeline ever comes back in another dtype than
    asked, a note says so instead of a silent fp32 run."""
    import torch
    from diffusers import StableDiffusionPipeline

    from truthloop.ml import models
    from truthloop.ml.tiny import build_tiny_models

    original = StableDiffusionPipeline.from_pretrained.__func__

    def ignoring_dtype(cls, source, dtype=None, **kwargs):
        return original(cls, source, **kwargs)  # loads in the checkpoint's float32

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(ignoring_dtype))
    notes = []
    models.load_pipeline(build_tiny_models().generator_model, "cpu", torch.bfloat16, notice=notes.append)
    assert len(notes) == 1 and "float32, not bfloat16" in notes[0]
