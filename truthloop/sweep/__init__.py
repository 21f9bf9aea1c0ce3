"""`truthloop sweep`: many trajectories on Ray, one ordinary run directory each, under one sweep
directory (spec in sweep.json, run directories in runs/, a state row per trajectory in
trajectories.jsonl). Ray is imported only inside this package (driver.py), never by the core.
"""

from __future__ import annotations

from importlib.util import find_spec

EXTRA_HINT = "pip install 'truthloop[sweep]'"


def missing_extras(modules: tuple[tuple[str, str], ...] = (("ray", "ray"),
                                                            ("scikit-learn", "sklearn"))) -> str | None:
    """One line naming what is missing for sweeps and the atlas, or None."""
    missing = [name for name, module in modules if find_spec(module) is None]
    if not missing:
        return None
    return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: {EXTRA_HINT}"
