"""What the README promises a new user (issue 15): the install lines say what they download, and
the line CI runs is the README's own."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


CPU_BUILD = "--index-url https://download.pytorch.org/whl/cpu"


def _commands() -> list[str]:
    return re.findall(r"^python3 -m venv .*$", _quick_start(), flags=re.M)


def test_the_first_two_commands_need_only_the_package_index():
    # A machine that reaches PyPI alone (CI's, many clusters') must get in with the first line a
    # new user copies: no other index, no find-links, no URL (issue 30).
    for command in _commands()[:2]:
        assert "--index-url" not in command and "--extra-index-url" not in command
        assert "-f " not in command and "--find-links" not in command and "://" not in command
    assert _commands()[0].endswith("pip install -e . && truthloop demo")


def test_quick_start_says_what_torch_downloads_and_keeps_the_cpu_build_as_advice():
    text = _quick_start()
    # what the CUDA build downloads is said before the first line that would fetch it
    assert text.index("3 GB") < text.index(_commands()[0])
    cpu = [c for c in _commands() if CPU_BUILD in c]
    assert cpu and "pip install -e ." in cpu[0]
    # ... and what that line needs besides the package index
    assert "download.pytorch.org" in text.split(cpu[0], 1)[1].split("\n\n", 2)[1]


def test_ci_runs_the_readmes_second_command():
    ci = (REPO / ".ci/run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert _commands()[1].endswith(ci)


def test_quick_start_says_how_long_the_tests_take():
    text = _quick_start()
    # the suite's duration, as measured (tests, and the whole CI run with the install)
    assert re.search(r"2-core machine `python -m pytest` \(\d+ tests\) ran for \d+\s+minutes", text)
    assert re.search(r"whole CI run, install\s+included, took about \d+ minutes", text)


def test_the_sweeps_section_names_every_grid_setting():
    from truthloop.sweep.spec import GRID_FIELDS

    sentence = README.split("`--grid NAME=V1,V2` (repeatable) varies", 1)[1].split(";", 1)[0]
    assert [name for name in GRID_FIELDS if f"`{name}`" not in sentence] == []


def test_the_readmes_tiny_sweep_writes_nothing_git_would_track():
    # The example's files: its prompts are tracked, its output folder is ignored (issue 30).
    example = README.split("truthloop sweep sweeps/tiny", 1)[1].split("```", 1)[0]
    prompts = re.search(r"--prompts (\S+)", example).group(1)
    assert (REPO / prompts).is_file()
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/sweeps/" in ignored or "sweeps/" in ignored
