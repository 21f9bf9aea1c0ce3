"""--compile for the generator families beyond sd (issue 29): SDXL's UNet and FLUX.2 [klein]'s and
Z-Image's transformers go through torch.compile (and their VAE decoders), under the CUDA-graph
wrapper, as sd's UNet does; the pair check takes --compile for every diffusion family and still
refuses it where it cannot work; a run records it; a batched sweep of these families takes it.

On this CPU the compile goes through dynamo with a counting backend that runs the traced graph
eagerly (torch._dynamo.testing.CompileCounter): the real library's tracing of the real tiny
models, without inductor's C++ compile. What inductor's kernels do to the pixels is measured on a
GPU (bench/bench_generators.py, "loop compiled"; tests/test_cuda_graphs.py)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from faulthelpers import fake_start_png, run_main, use_fakes
from family_helpers import PROMPT, generate_config
from truthloop.config import ConfigError, RunConfig, apply_pair_defaults

FAMILIES = ("sdxl", "flux2-klein", "z-image")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_compiled_familys_denoiser_is_traced_and_draws_the_eager_image(family, monkeypatch,
                                                                          truthloop_cache):
    import torch
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from truthloop.ml.families.painting import (FamilyPainter, denoiser, load_generator,
                                                speed_up, undo_speed_up)
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cpu")
    config = generate_config(family, steps=2, width=64, height=64, compile=True)
    # Off CUDA, --compile draws eagerly (as sd's does): nothing is installed or compiled.
    painter = FamilyPainter(pipe, family, config, "cpu", cuda_graphs=True)
    assert painter.graphed is None and "forward" not in vars(denoiser(pipe))
    eager = np.asarray(painter.paint(PROMPT, lambda step, total: None))

    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    # The second step's call must reuse the first's trace (another timestep, the same shapes):
    # a recompile per step would cost minutes per image under inductor.
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    graphed = speed_up(pipe, cuda_graphs=True, compile=True)  # what a CUDA painter does
    try:
        assert graphed.compiled and graphed.module is denoiser(pipe)
        assert denoiser(pipe).forward == graphed.forward  # the wrapper the pipeline calls
        compiled = np.asarray(painter.paint(PROMPT, lambda step, total: None))
        # The denoiser was traced (a forward in one or more frames) and the VAE decoder too.
        assert counter.frame_count >= 2 and counter.op_count > 0
        assert pipe.vae.decoder._compiled_call_impl is not None
    finally:
        undo_speed_up(pipe)
        torch._dynamo.reset()
    # Put back as it was: the model's own forward, nothing compiled.
    assert "forward" not in vars(denoiser(pipe)) and not graphed.compiled
    assert pipe.vae.decoder._compiled_call_impl is None
    # The traced graph run eagerly: the same arithmetic (inductor's kernels differ on a GPU).
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batched_sweeps_compiled_denoiser_traces_once_for_every_batch(family, monkeypatch,
                                                                        truthloop_cache):
    """`sweep --batch N --compile`: the lockstep batch's pipeline call (BatchedFamilyPainter,
    padded to a fixed size) through the compiled denoiser, dynamo with the counting backend as
    above. A later batch with other prompts reuses the traces (SDXL's and FLUX.2's prompt
    embeddings have one length; Z-Image's follow each prompt's length, so a new length may
    compile once more, dynamically); the images are the eager batch's within rounding."""
    import torch
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from truthloop.ml.families.batched import BatchedFamilyPainter
    from truthloop.ml.families.painting import (FamilyPainter, load_generator, speed_up,
                                                undo_speed_up)
    from truthloop.ml.generate import RandomStream
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cpu")
    config = generate_config(family, steps=2, width=64, height=64, compile=True)
    batched = BatchedFamilyPainter(FamilyPainter(pipe, family, config, "cpu"))
    batches = [[PROMPT, "an old train at night"], ["a red dog", "a lighthouse on a cliff"]]

    def draw(prompts):
        streams = [RandomStream(config, "cpu") for _ in prompts]
        return [np.asarray(image).astype(int) for image in batched.paint(
            prompts, [stream.generator() for stream in streams], lambda s, t: None, pad_to=3)]

    eager = [draw(prompts) for prompts in batches]
    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    torch._dynamo.reset()
    speed_up(pipe, cuda_graphs=True, compile=True)
    try:
        first = draw(batches[0])
        traced = counter.frame_count
        if family != "z-image":
            monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        second = draw(batches[1])
        retraced = counter.frame_count - traced
    finally:
        undo_speed_up(pipe)
        torch._dynamo.reset()
    assert traced >= 2 and retraced <= (1 if family == "z-image" else 0)
    for got, expected in zip(first + second, eager[0] + eager[1]):
        assert np.abs(got - expected).max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_qkv_and_channels_last_draw_within_rounding_and_undo(family, truthloop_cache):
    """The bench's `--fused` row (fuse_layout): SDXL's UNet fused and channels-last, FLUX.2's
    transformer fused, Z-Image's untouched (its model has no fusing); the image moves by rounding
    at most, and undoing it draws the eager image again, pixel for pixel."""
    import torch

    from truthloop.ml.families.painting import FamilyPainter, denoiser, fuse_layout, load_generator
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cpu")
    painter = FamilyPainter(pipe, family, generate_config(family, steps=2, width=64, height=64),
                            "cpu")

    def draw():
        return np.asarray(painter.paint(PROMPT, lambda step, total: None)).astype(int)

    eager = draw()
    done = fuse_layout(pipe)
    try:
        assert done == {"sdxl": ["fused QKV (UNet2DConditionModel)", "channels-last"],
                        "flux2-klein": ["fused QKV (Flux2Transformer2DModel)"],
                        "z-image": []}[family]
        if family == "sdxl":
            conv = next(m for m in denoiser(pipe).modules() if isinstance(m, torch.nn.Conv2d)
                        and m.weight.shape[-1] > 1)
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        fused = draw()
    finally:
        fuse_layout(pipe, on=False)
    assert np.abs(fused - eager).max() <= 2
    assert np.array_equal(draw(), eager)


def _config(generator: str, **models) -> RunConfig:
    config = RunConfig(start_prompt="x")
    config.models.generator = generator
    apply_pair_defaults(config)
    config.generate.compile = True
    for name, value in models.items():
        setattr(config.models, name, value)
    return config


def test_the_pair_check_takes_compile_for_every_diffusion_family_and_only_those():
    for family in ("sd", *FAMILIES):
        _config(family).validate()
    with pytest.raises(ConfigError, match="--compile is for the diffusion generators "
                                          r"\(sd, sdxl, flux2-klein, z-image\); janus-pro"):
        _config("janus-pro").validate()
    with pytest.raises(ConfigError, match="--compile and --low-vram do not go together"):
        _config("flux2-klein", low_vram=True).validate()
    fp8 = _config("sdxl")
    fp8.generate.compile, fp8.generate.fp8 = False, True  # still sd's alone
    with pytest.raises(ConfigError, match="--fp8 is truthloop's fast path for the sd generator"):
        fp8.validate()


def test_a_family_run_records_compile(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    use_fakes(monkeypatch)
    start = fake_start_png(tmp_path / "in" / "start.png")
    assert run_main(["run", start, "--headless", "--out", out, "--max-iters", "1",
                     "--generator", "z-image", "--compile"]) == 0
    recorded = json.loads((out / "run.json").read_text())["config"]
    assert recorded["models"]["generator"] == "z-image" and recorded["generate"]["compile"]
    capsys.readouterr()
    assert run_main(["run", start, "--headless", "--out", tmp_path / "token", "--generator",
                     "janus-pro", "--compile"]) == 2
    assert "--compile is for the diffusion generators" in capsys.readouterr().err
    assert not (tmp_path / "token").exists()


def test_a_batched_family_sweep_compiles_when_asked_and_only_then(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    import truthloop.sweep.command as command

    monkeypatch.setattr(command, "_run", lambda args, sweep_dir, spec: 0)  # Ray's part
    prompts = tmp_path / "p.txt"
    prompts.write_text("a house\n")
    common = ["--prompts", prompts, "--models", "tiny", "--device", "cpu", "--batch", "2",
              "--grid", "generator=sdxl,flux2-klein,z-image"]
    assert run_main(["sweep", tmp_path / "asked", *common, "--compile"]) == 0
    assert run_main(["sweep", tmp_path / "default", *common]) == 0
    capsys.readouterr()
    asked = json.loads((tmp_path / "asked" / "sweep.json").read_text())
    assert asked["batch"] == 2 and asked["config"]["generate"]["compile"] is True
    # Without --compile a family grid draws eagerly: compile by default is measured for sd only.
    default = json.loads((tmp_path / "default" / "sweep.json").read_text())
    assert default["config"]["generate"]["compile"] is False


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", FAMILIES)
def test_on_a_gpu_a_compiled_familys_images_are_the_same_every_time(family, truthloop_cache):
    """Inductor's kernels (the real compile), called, captured, then replayed from the graph: the
    three images are the same pixels; against eager they may move (opt-in), by little."""
    from truthloop.ml.families.painting import FamilyPainter, load_generator
    from truthloop.ml.tiny import tiny_family_model

    pipe, _ = load_generator(family, tiny_family_model("generator", family), "cuda")
    config = generate_config(family, steps=3, width=128, height=128)
    eager = np.asarray(FamilyPainter(pipe, family, config, "cuda").paint(PROMPT,
                                                                         lambda s, t: None))
    painter = FamilyPainter(pipe, family, generate_config(family, steps=3, width=128, height=128,
                                                          compile=True), "cuda", cuda_graphs=True)
    try:
        assert painter.graphed is not None and painter.graphed.compiled
        images = [np.asarray(painter.paint(PROMPT, lambda s, t: None)) for _ in range(3)]
    finally:
        painter.graphed.uninstall()
        pipe.vae.decoder._compiled_call_impl = None
    moved = np.abs(images[0].astype(int) - eager.astype(int))
    print(f"{family} compiled: {painter.graphed.replays} replays; capture failures "
          f"{list(painter.graphed.failures.values())[:1]}; vs eager max {moved.max()}/255, "
          f"mean {moved.mean():.2f}")
    for image in images[1:]:
        assert np.array_equal(image, images[0])
    assert moved.mean() < 4
    if family == "sdxl":  # the UNet's step is one fixed-shape call: it must replay
        assert painter.graphed.replays >= config.steps


def test_a_compiled_run_on_a_gpu_says_its_first_image_waits_for_the_compile():
    """load_backends' notice (headless prints it as a note, the app in its log): with --compile
    on CUDA the first image sits for minutes in torch.compile; elsewhere --compile draws
    eagerly and nothing is said."""
    from truthloop.ml.backends import compile_notice

    assert "waits for torch.compile" in compile_notice(_config("sdxl"), "cuda")
    assert compile_notice(_config("sdxl"), "cpu") is None
    eager = _config("sdxl")
    eager.generate.compile = False
    assert compile_notice(eager, "cuda") is None
