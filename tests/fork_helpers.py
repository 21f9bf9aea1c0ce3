"""Runs to fork and compare, for tests/test_compare.py, tests/test_fork.py's TUI parts and
screenshots/make.py: fake backends whose painter follows each run's own seed, deterministic."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeCaptioner, FakeEmbedder, FakePainter, start_image
from truthloop.config import RunConfig
from truthloop.fork import make_fork_loop, plan_fork
from truthloop.loop import Backends, LoopControl, TruthLoop

# start -> one -> two -> ... a cycle of two (three, four); captions with markup-looking text.
SCRIPT = {
    "a cat on a mat, [bold]oil[/bold]": "a cat on a red mat, oil painting, soft light",
    "a cat on a red mat, oil painting, soft light": "a dog on a red mat, oil painting, <b>x</b>",
    "a dog on a red mat, oil painting, <b>x</b>": "a dog on a rug, watercolor",
    "a dog on a rug, watercolor": "a dog asleep on a rug, watercolor, by greg rutkowski",
    "a dog asleep on a rug, watercolor, by greg rutkowski": "a dog on a rug, watercolor",
}
START = "a cat on a mat, [bold]oil[/bold]"


def seeded_factory(script=SCRIPT, start=START):
    def build(config, emit):
        painter = FakePainter(seed=config.generate.seed, seed_mode=config.generate.seed_mode,
                              steps=config.generate.steps)
        return Backends(captioner=FakeCaptioner(script, start=start), painter=painter,
                        embedder=FakeEmbedder())

    return build


def make_parent(run_dir: Path, steps: int = 4) -> Path:
    config = RunConfig(input_image="start.png")
    config.models.models = "tiny"
    config.generate.steps = steps
    TruthLoop(config, run_dir, seeded_factory(), input_image=start_image()).run()
    return run_dir


def fake_forker(factory=None):
    """What cli.py hands the TUI, with fakes: (parent, K, options, prompt=None) -> the fork's
    TruthLoop (`prompt`: a person's caption in place of K's)."""

    def make(parent_dir, at, options, prompt=None):
        plan = plan_fork(Path(parent_dir), at, options, prompt=prompt)
        return make_fork_loop(plan, factory or seeded_factory(), control=LoopControl())

    return make


def make_fork(parent: Path, at: int, out: Path, prompt: str | None = None, **options) -> Path:
    plan = plan_fork(parent, at, options, out=out, prompt=prompt)
    make_fork_loop(plan, seeded_factory()).run()
    return out


def compare_app(workdir: Path):
    """The compare screen of a parent and its fork at #1 with another seed (they first differ at
    the fork's first image, and end in the same cycle)."""
    from tui.app import TruthLoopApp

    parent = make_parent(workdir / "parent")
    fork = make_fork(parent, 1, workdir / "fork-at1-seed7", seed=7)
    return TruthLoopApp(compare=(parent, fork), preview="halfcell", stable=True)
