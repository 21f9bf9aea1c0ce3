"""--fp8 (truthloop.ml.fp8): which layers become float8, the one-line refusals, and that the
converted UNet still draws nearly the same thing.

float8 GEMMs are a GPU feature (compute capability 8.9+), but torch's CPU `_scaled_mm` computes
them too: the CPU tests stand torchao's and truthloop's GPU checks aside and run the real
conversion and the real float8 arithmetic on the tiny UNet. torchao is an optional dependency:
those tests skip without it (the GPU box gets it from .whl/fp8/). The GPU test needs an Ada or
Hopper card.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from truthloop.ml import fp8

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed "
                                   "(pip install torchao; the GPU box gets .whl/fp8/)")


@pytest.fixture()
def tiny_unet(truthloop_cache):
    from diffusers import UNet2DConditionModel

    from truthloop.ml.tiny import build_tiny_models

    return UNet2DConditionModel.from_pretrained(build_tiny_models().generator_model,
                                                subfolder="unet").eval()


@pytest.fixture()
def gpu_checks_aside(monkeypatch):
    """The conversion and float8 arithmetic on the CPU: torchao's and truthloop's checks for a
    GPU of compute capability 8.9+ stand aside (nothing else is replaced)."""
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularities: None)
    monkeypatch.setattr(fp8, "fp8_refusal", lambda device=None: None)


def _inputs(unet, rows=2, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    side = unet.config.sample_size
    sample = torch.randn(rows, unet.config.in_channels, side, side, generator=generator)
    text = torch.randn(rows, 77, unet.config.cross_attention_dim, generator=generator)
    return (sample.to(device, dtype), torch.tensor(981, device=device),
            text.to(device, dtype))


def _run(unet, inputs):
    with torch.inference_mode():
        return unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample


def _plain_weights(unet) -> bool:
    return all(type(m.weight.data) is torch.Tensor for m in unet.modules()
               if isinstance(m, torch.nn.Linear))


def test_the_chosen_layers_are_the_transformer_blocks_image_token_linears(tiny_unet):
    chosen = fp8.chosen_layers(tiny_unet)
    blocks = [n for n, m in tiny_unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks
    for block in blocks:  # every block's attention projections and feed-forward
        for part in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                     "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"):
            assert f"{block}.{part}" in chosen
        # cross-attention's k/v see the 77 text tokens, not the image's: left in fp16
        assert f"{block}.attn2.to_k" not in chosen and f"{block}.attn2.to_v" not in chosen
    assert all(f"{n}.proj_in" in chosen and f"{n}.proj_out" in chosen
               for n, m in tiny_unet.named_modules() if type(m).__name__ == "Transformer2DModel")
    assert len(chosen) == 10 * len(blocks)
    modules = dict(tiny_unet.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in chosen)  # never a convolution
    # one row per image: the time embedding and the ResNets' time projections stay
    assert not [n for n in chosen if "time_emb" in n]
    assert any("time_emb_proj" in n for n in modules)


def test_refuses_the_cpu_in_one_line_and_leaves_the_unet_as_it_was(tiny_unet):
    with pytest.raises(fp8.Fp8Unavailable) as caught:
        fp8.convert_unet_to_fp8(tiny_unet)
    message = str(caught.value)
    assert "\n" not in message and "8.9" in message and "cpu" in message
    assert _plain_weights(tiny_unet) and "_truthloop_fp8" not in tiny_unet.__dict__


def _a_gpu(monkeypatch, capability, name):
    # The only way to meet another card on a CPU machine: torch's device queries answer for it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)


def test_refuses_a_gpu_older_than_ada(monkeypatch):
    _a_gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-80GB")
    message = fp8.fp8_refusal("cuda:0")
    assert message and "\n" not in message
    assert "A100" in message and "8.0" in message and "8.9" in message


def test_refuses_without_torchao(monkeypatch):
    _a_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    message = fp8.fp8_refusal("cuda")
    assert message and "\n" not in message and "torchao" in message and "pip install" in message


def test_refuses_a_unet_already_compiled_and_an_unknown_scaling(tiny_unet):
    from truthloop.ml.cudagraph import GraphedUNet

    with pytest.raises(fp8.Fp8Unavailable, match="row, tensor"):
        fp8.convert_unet_to_fp8(tiny_unet, "block")
    # compile_pipeline installs the compiled forward this way; FP8 must come before it
    GraphedUNet.on(tiny_unet).use_forward(tiny_unet.forward, compiled=True)
    with pytest.raises(fp8.Fp8Unavailable, match="before torch.compile"):
        fp8.convert_unet_to_fp8(tiny_unet)
    assert _plain_weights(tiny_unet)


@needs_torchao
@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_converted_unet_computes_in_float8_close_to_the_original(tiny_unet, gpu_checks_aside,
                                                                  granularity):
    from torchao.quantization import Float8Tensor

    inputs = _inputs(tiny_unet)
    before = _run(tiny_unet, inputs)
    summary = fp8.convert_unet_to_fp8(tiny_unet, granularity)
    chosen = set(fp8.chosen_layers(tiny_unet))
    assert sorted(summary.converted) == sorted(chosen)
    for name, module in tiny_unet.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert isinstance(module.weight, Float8Tensor) == (name in chosen), name
    after = _run(tiny_unet, inputs)
    assert after.dtype == before.dtype and after.shape == before.shape
    assert not torch.equal(after, before)  # the float8 arithmetic really ran
    cosine = torch.nn.functional.cosine_similarity(after.flatten(), before.flatten(), dim=0)
    assert cosine > 0.99
    assert (after - before).abs().max() < 0.1 * before.abs().max()
    # a second conversion (another Painter on the same pipeline) changes nothing
    assert fp8.convert_unet_to_fp8(tiny_unet, granularity) is summary
    assert torch.equal(_run(tiny_unet, inputs), after)
    with pytest.raises(fp8.Fp8Unavailable, match="already float8"):
        fp8.convert_unet_to_fp8(tiny_unet, "tensor" if granularity == "row" else "row")


@needs_torchao
def test_converting_drops_the_graphs_of_the_old_weights(tiny_unet, gpu_checks_aside):
    from truthloop.ml.cudagraph import GraphedUNet

    graphed = GraphedUNet.on(tiny_unet)
    old = graphed.graphed
    fp8.convert_unet_to_fp8(tiny_unet)
    assert graphed.graphed is not old and not graphed.graphed._graphs and not graphed.compiled


@needs_torchao
def test_painter_draws_nearly_the_same_image_with_a_float8_unet(truthloop_cache,
                                                                gpu_checks_aside):
    import numpy as np

    from truthloop.config import GenerateConfig
    from truthloop.ml.generate import Painter
    from truthloop.ml.models import load_pipeline
    from truthloop.ml.tiny import build_tiny_models

    pipe, _ = load_pipeline(build_tiny_models().generator_model, "cpu", torch.float32)
    painter = Painter(pipe, GenerateConfig(steps=6), "cpu")
    before = np.asarray(painter.paint("a red bicycle", lambda s, t: None), dtype=np.int16)
    fp8.convert_unet_to_fp8(pipe.unet)
    after = np.asarray(painter.paint("a red bicycle", lambda s, t: None), dtype=np.int16)
    difference = np.abs(after - before)
    assert difference.max() > 0  # another arithmetic: another image...
    assert difference.mean() < 8  # ...but nearly the same one (levels out of 255)


@needs_torchao
@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() < fp8.MIN_CAPABILITY,
                    reason="needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper)")
def test_on_the_gpu_float8_is_close_to_fp16_and_a_cuda_graph_replays_it_exactly(tiny_unet):
    from truthloop.ml.cudagraph import CudaGraphed

    unet = tiny_unet.to("cuda", torch.float16)
    inputs = _inputs(unet, device="cuda", dtype=torch.float16)
    before = _run(unet, inputs)
    summary = fp8.convert_unet_to_fp8(unet)
    assert summary.converted
    after = _run(unet, inputs)
    cosine = torch.nn.functional.cosine_similarity(after.float().flatten(),
                                                   before.float().flatten(), dim=0)
    assert cosine > 0.99 and not torch.equal(after, before)
    graphed = CudaGraphed(lambda s, t, e: unet(s, t, encoder_hidden_states=e).sample)
    with torch.inference_mode():
        for _ in range(3):  # eager, capture, replay
            assert torch.equal(graphed(*inputs), after)
    assert graphed.replays >= 1 and not graphed.failures
