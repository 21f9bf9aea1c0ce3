"""Shared fixtures. Nothing here touches the network: the hub is forced offline for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def truthloop_cache(tmp_path_factory) -> Path:
    """One cache for the session (tiny checkpoints + label embeddings, ~30 s to build once).

    TRUTHLOOP_TEST_CACHE reuses a directory across sessions on a developer machine; CI starts clean.
    """
    chosen = os.environ.get("TRUTHLOOP_TEST_CACHE")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("truthloop-cache")
    os.environ["TRUTHLOOP_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(truthloop_cache):
    """Loaded tiny models (models.LoadedModels), built on first use."""
    from truthloop.ml.backends import quiet_libraries
    from truthloop.config import ModelConfig
    from truthloop.ml.models import load_models

    quiet_libraries()
    return load_models(ModelConfig(models="tiny"))


@pytest.fixture(scope="session")
def tiny_interrogator(tiny_models):
    """clip-interrogator over the tiny models, with its label tables (computed once, cached)."""
    from truthloop.config import CaptionConfig
    from truthloop.ml.interrogate import build_interrogator

    return build_interrogator(tiny_models, CaptionConfig(chunk_size=400))
