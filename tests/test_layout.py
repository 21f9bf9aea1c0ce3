"""The shape of the code: rooms by what they import, read from the import statements themselves.

- the core (truthloop/*.py but cli.py) imports neither torch & co., nor Textual, nor ml/, tui/,
  lookback/ or sweep/: a viewer, a notebook or a sweep driver can use it with no GPU libraries;
- ml/ (the torch stack) never imports Textual, tui/, lookback/ or sweep/;
- lookback/ imports neither torch & co. nor Textual, nor ml/ or tui/;
- tui/ never imports torch & co. or ml/;
- a sweep directory's format (sweep/__init__, spec, state) is read like a run directory: it
  imports only the core, so `view` and `atlas` read sweeps with no Ray; only the rest of sweep/
  (driver, workers) imports Ray;
- no circle between modules; only cli.py wires rooms together.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TORCH_STACK = ("torch", "torchvision", "diffusers", "transformers", "open_clip",
               "clip_interrogator", "accelerate")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*REPO.glob("truthloop/**/*.py"), *REPO.glob("tui/**/*.py")]
    return {_module_name(path): path for path in files}


def _imports(path: Path, module: str) -> set[str]:
    """Every module named by an import statement anywhere in the file (lazy ones too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _room(module: str) -> str:
    if module == "truthloop.cli":
        return "cli"
    for room in ("ml", "lookback", "sweep"):
        if module == f"truthloop.{room}" or module.startswith(f"truthloop.{room}."):
            return room
    if module == "tui" or module.startswith("tui."):
        return "tui"
    return "core"


SWEEP_FORMAT = {"truthloop.sweep", "truthloop.sweep.spec", "truthloop.sweep.state"}


def _room_of(module: str) -> str:
    return "sweep-format" if module in SWEEP_FORMAT else _room(module)


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    graph = {}
    for module, path in sources.items():
        graph[module] = {name for name in _imports(path, module) if name in sources} - {module}
    return graph


def _third_party(module: str) -> set[str]:
    path = _sources()[module]
    return {name.split(".")[0] for name in _imports(path, module)}


FORBIDDEN = {
    # room: (rooms it may not import, third-party top-level packages it may not import)
    "core": ({"ml", "lookback", "sweep", "tui", "cli"}, {*TORCH_STACK, "textual", "ray", "sklearn"}),
    "ml": ({"lookback", "sweep", "tui", "cli"}, {"textual", "ray", "sklearn"}),
    "lookback": ({"ml", "tui", "sweep", "cli"}, {*TORCH_STACK, "textual", "ray"}),
    "tui": ({"ml", "cli"}, {*TORCH_STACK, "ray", "sklearn"}),
    "sweep": ({"tui", "cli"}, {"textual"}),
    "sweep-format": ({"ml", "lookback", "sweep", "tui", "cli"},
                     {*TORCH_STACK, "textual", "ray", "sklearn"}),
}


def test_each_room_imports_only_what_it_may():
    graph = _graph()
    wrong = []
    for module, targets in graph.items():
        room = _room_of(module)
        if room not in FORBIDDEN:
            continue
        rooms, packages = FORBIDDEN[room]
        for target in targets:
            if _room_of(target) in rooms:
                wrong.append(f"{module} ({room}) imports {target} ({_room_of(target)})")
        for package in _third_party(module) & packages:
            wrong.append(f"{module} ({room}) imports {package}")
    assert wrong == []


def test_no_import_circles():
    graph = _graph()
    # A module importing its own package's __init__ (or the reverse) is how packages work; every
    # other cycle is a circle.
    def edges(module):
        return {t for t in graph[module]
                if not (module.startswith(t + ".") or t.startswith(module + "."))}

    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert circles == []


def test_the_layout_test_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The checks above read real import statements: a lazy torch import in the core is seen."""
    fake = REPO / "truthloop" / "record.py"
    assert "torch" not in _third_party("truthloop.record")
    source = fake.read_text() + "\n\ndef _probe():\n    import torch  # noqa\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake
                        else Path.read_bytes(self).decode())
    assert "torch" in _third_party("truthloop.record")


@pytest.mark.timeout(120)
def test_the_core_runs_with_only_the_standard_library(tmp_path):
    """A venv with no packages at all: the core's reader, record, config, loop and diff import,
    read a run directory, and torch/textual never load."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"format": 1, "config": {}}))
    (run / "log.jsonl").write_text(json.dumps({"index": 0, "caption": "a, b", "compared": "a",
                                               "fed_prompt": "a", "repeat_of": None,
                                               "image": None}) + "\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import truthloop.store, truthloop.record, truthloop.config, truthloop.loop,"
        " truthloop.diff, truthloop.events;"
        "view = truthloop.store.read_run(sys.argv[2]);"
        "assert view.records[0].compared == 'a', view.records;"
        "heavy = [m for m in ('torch', 'textual', 'PIL', 'numpy', 'rich') if m in sys.modules];"
        "assert not heavy, heavy; print('ok')"
    )
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-S", "-c", code, str(REPO), str(run)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_run_of_a_newer_format_is_refused_in_one_line(tmp_path):
    from faulthelpers import cli_subprocess

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"format": 99, "config": {}}))
    for command in (["view", run], ["resume", run, "--headless"], ["export", run]):
        done = cli_subprocess(command, timeout=60)
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "newer truthloop" in lines[0] and "format 99" in lines[0], \
            (command, done.stderr)
