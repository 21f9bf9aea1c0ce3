"""What the README promises a new user (issue 15): the install lines say what they download, and
the line CI runs is the README's own."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_quick_start_says_what_torch_downloads_and_gives_the_cpu_build():
    text = _quick_start()
    assert "3 GB" in text  # the CUDA build's libraries, said before anyone installs them
    cpu_lines = [line for line in text.splitlines()
                 if "--index-url https://download.pytorch.org/whl/cpu" in line]
    assert cpu_lines and "pip install -e ." in cpu_lines[0]


def test_ci_runs_the_readmes_second_command():
    ci = (REPO / ".ci/run").read_text(encoding="utf-8").strip().splitlines()[-1]
    commands = re.findall(r"^python3 -m venv .*$", _quick_start(), flags=re.M)
    assert commands[1].endswith(ci)
