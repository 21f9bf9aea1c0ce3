"""Where truthloop keeps things between runs: one cache directory, overridable for tests and CI."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache (tiny checkpoints, label embeddings); TRUTHLOOP_CACHE overrides it."""
    override = os.environ.get("TRUTHLOOP_CACHE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("truthloop"))


def runs_dir() -> Path:
    """Where new run directories go and where `truthloop runs` looks, when no option says:
    TRUTHLOOP_RUNS_DIR if set (so it does not depend on the current directory), else
    config.DEFAULT_RUNS_DIR relative to the current directory."""
    from truthloop.config import DEFAULT_RUNS_DIR

    override = os.environ.get("TRUTHLOOP_RUNS_DIR")
    return Path(override).expanduser() if override else Path(DEFAULT_RUNS_DIR)
