"""`truthloop sweep`: many trajectories on Ray, one ordinary run directory each, under one sweep
directory (spec in sweep.json, run directories in runs/, a state row per trajectory in
trajectories.jsonl). Ray is imported only inside this package (driver.py), never by the core.
"""

from __future__ import annotations

from importlib.util import find_spec

EXTRA_HINT = "pip install 'truthloop[sweep]'"


SWEEP_MODULES = (("ray", "ray"), ("scikit-learn", "sklearn"))


def missing_extras(modules: tuple[tuple[str, str], ...] = SWEEP_MODULES) -> str | None:
    """One line naming what is missing for sweeps and the atlas, or None."""
    missing = [name for name, module in modules if find_spec(module) is None]
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"{' and '.join(missing)} {verb} not installed: {EXTRA_HINT}"
