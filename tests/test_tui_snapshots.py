"""SVG snapshots of the main states (fake backends, half-block preview, timings blanked)."""

from __future__ import annotations

import pytest

from tui_helpers import SCENARIOS, scenario


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_snapshot(snap_compare, tmp_path, name, size):
    app, run_before = scenario(name, tmp_path / "run")
    assert snap_compare(app, run_before=run_before, terminal_size=size)
