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


def test_quick_start_leads_with_the_cpu_build_and_says_how_long_the_tests_take():
    text = _quick_start()
    commands = re.findall(r"^python3 -m venv .*$", text, flags=re.M)
    cpu = "--index-url https://download.pytorch.org/whl/cpu"
    assert cpu in commands[0]  # the first line a new user copies needs no GPU
    # what the CUDA build downloads is said before the first line that would fetch it
    cuda_line = next(c for c in commands if "pip install torch" in c and cpu not in c)
    assert text.index("3.2 GB") < text.index(cuda_line)
    assert any(cpu in c and "python -m pytest" in c for c in commands)  # tests without a GPU
    # the suite's duration, as measured (tests, and the whole CI run with the install)
    assert re.search(r"2-core machine `python -m pytest` \(\d+ tests\) ran for \d+\s+minutes", text)
    assert re.search(r"whole CI run, install\s+included, took about \d+ minutes", text)
