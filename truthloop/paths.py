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
