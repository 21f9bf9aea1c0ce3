"""FP8 drawing on Ada/Hopper GPUs (opt-in): the SD UNet's big linear layers run as float8 GEMMs.

torchao's `Float8DynamicActivationFloat8WeightConfig` stores each chosen layer's weight in
float8 (e4m3) with a scale, and at every call quantizes the activation to float8 with a scale
computed from that activation (dynamic), then calls `torch._scaled_mm`. Hopper's tensor cores do
float8 at twice the fp16 rate; the quantization itself is extra memory traffic, which
torch.compile fuses into the neighbouring kernels (eagerly it costs more than it saves).

Which layers: the linear layers of the transformer blocks, where every row is an image token
(self-attention's q/k/v/out, cross-attention's q/out, the feed-forward, the blocks' proj_in and
proj_out). Left in fp16: the convolutions (ResNet blocks, up/down sampling), cross-attention's k/v
(77 text tokens a row, the same text at every step: small GEMMs), the time embedding and the
ResNets' time projections (one row per image: the quantization would cost more than the GEMM),
and anything whose sides are not multiples of 16 (`torch._scaled_mm` needs them).

Scaling ("granularity"):
- "row" (default): one scale per token row of the activation and per output row of the weight.
  A row's result depends only on that row, so an image drawn in a lockstep batch does not depend
  on the other images of the batch or its padding rows. torchao's per-row path needs bfloat16
  (weights, and `_scaled_mm`'s row-wise output), so the chosen layers hold bf16 bias and scales and
  cast their input to bf16 and their output back to the UNet's dtype (fused away when compiled).
- "tensor": one scale per activation tensor (the whole batch) and one per weight: fp16 throughout,
  fewer ops, but a row's result depends on the largest value anywhere in the batch.

Order with the other fast paths: convert first, then compile and capture. `Painter` installs the
CUDA-graph wrapper and `compile_pipeline` compiles the UNet's forward after this has run; graphs
captured before a conversion would replay the old weights' memory, so converting a UNet whose
graph wrapper exists drops its graphs (they are captured again), and converting a UNet that is
already compiled is refused. Converting twice is a no-op (the first summary is returned).

FP8 attention: torchao 0.18 has it only as a prototype (`torchao.prototype.attention.
apply_low_precision_attention`, backend FP8_FA3), which needs FlashAttention-3's
`flash_attn_interface` package (built from source; no wheel) and wraps the module in a
monkey-patching wrapper around `F.scaled_dot_product_attention`; `fp8_attention_status()` says
whether it could run here. Attention stays fp16 (FlashAttention-2 via SDPA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from truthloop.errors import OneLineError

GRANULARITIES = ("row", "tensor")
MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada (8.9) and Hopper (9.0) onwards


class Fp8Unavailable(OneLineError):
    """--fp8 cannot run here: no CUDA GPU, one older than Ada/Hopper, or no torchao."""


@dataclass
class Fp8Summary:
    """What a conversion did, for run.json and the bench."""

    granularity: str
    converted: list[str] = field(default_factory=list)  # module names now float8
    kept: list[str] = field(default_factory=list)  # linear layers left as they were
    torchao: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "layers": len(self.converted),
                "kept_linear_layers": len(self.kept), "torchao": self.torchao}


def fp8_refusal(device: Any = None) -> str | None:
    """Why FP8 cannot run on `device` (a torch device or its name; None: the current CUDA
    device), in one line, or None when it can."""
    import torch

    name = str(device) if device is not None else "cuda"
    if not name.startswith("cuda") or not torch.cuda.is_available():
        where = f"this run draws on the {name.split(':')[0]}" if not name.startswith("cuda") \
            else "no usable CUDA GPU is here"
        return (f"--fp8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper); "
                f"{where}: leave --fp8 out")
    index = torch.device(name).index
    index = torch.cuda.current_device() if index is None else index
    capability = torch.cuda.get_device_capability(index)
    if tuple(capability) < MIN_CAPABILITY:
        return (f"--fp8 needs compute capability 8.9 or newer (Ada, Hopper); "
                f"{torch.cuda.get_device_name(index)} is {capability[0]}.{capability[1]}: "
                f"leave --fp8 out")
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "--fp8 needs torchao (pip install torchao), which is not installed"
    return None


def is_chosen(name: str, module: Any) -> bool:
    """A linear layer of a transformer block whose rows are image tokens, with both sides a
    multiple of 16 (what `torch._scaled_mm` takes)."""
    import torch

    if not isinstance(module, torch.nn.Linear):
        return False
    dotted = f".{name}."
    if ".attentions." not in dotted:  # the transformer blocks (down, mid and up)
        return False
    if ".attn2.to_k." in dotted or ".attn2.to_v." in dotted:  # cross-attention over the text
        return False
    out_features, in_features = module.weight.shape
    return out_features % 16 == 0 and in_features % 16 == 0


def chosen_layers(unet: Any) -> list[str]:
    """The names of the layers `convert_unet_to_fp8` converts, in module order."""
    return [name for name, module in unet.named_modules() if is_chosen(name, module)]


def convert_unet_to_fp8(unet: Any, granularity: str = "row") -> Fp8Summary:
    """Convert the UNet's chosen linear layers to float8 in place (see the module docstring).

    Call before torch.compile and CUDA-graph capture (Painter does it in that order). Raises
    Fp8Unavailable (one line) on a CPU, a GPU below compute capability 8.9, without torchao, or
    on a UNet that is offloaded (--low-vram) or already compiled."""
    done = unet.__dict__.get("_truthloop_fp8")
    if done is not None:
        if done.granularity != granularity:
            raise Fp8Unavailable(f"this UNet is already float8 with {done.granularity} scaling; "
                                 f"load it again for {granularity}")
        return done
    if granularity not in GRANULARITIES:
        raise Fp8Unavailable(f"unknown FP8 scaling {granularity!r}; choose one of: "
                             f"{', '.join(GRANULARITIES)}")
    if any(hasattr(m, "_hf_hook") for m in unet.modules()):
        raise Fp8Unavailable("--fp8 and --low-vram do not go together (offloading moves the "
                             "weights in and out around every call); choose one")
    graphed = unet.__dict__.get("_truthloop_graphed")
    if graphed is not None and graphed.compiled:
        raise Fp8Unavailable("the UNet is already compiled; FP8 must be applied before "
                             "torch.compile (load the models again)")
    reason = fp8_refusal(next(unet.parameters()).device)
    if reason is not None:
        raise Fp8Unavailable(reason)
    summary = _quantize_linears(unet, granularity)
    if graphed is not None:
        # Graphs captured so far read the old weights' memory: start them afresh.
        graphed.use_forward(graphed.original, compiled=False)
    return summary


def _quantize_linears(unet: Any, granularity: str) -> Fp8Summary:
    """The conversion itself, without the device checks (torchao's own checks still apply)."""
    import torch
    import torchao
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8Tensor,
                                      PerRow, PerTensor, quantize_)

    names = set(chosen_layers(unet))
    modules = dict(unet.named_modules())
    if granularity == "row":
        # torchao's row-wise path takes bf16 weights and `_scaled_mm` gives row-wise results in
        # bf16: the layer works in bf16 between casts from and back to the UNet's dtype.
        for name in names:
            layer = modules[name]
            dtype = layer.weight.dtype
            if dtype != torch.bfloat16:
                layer.to(torch.bfloat16)
                layer.register_forward_pre_hook(_cast_input(torch.bfloat16))
                layer.register_forward_hook(_cast_output(dtype))
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow() if granularity == "row" else PerTensor(),
        # torchao would otherwise switch on inductor's coordinate-descent tuning for the whole
        # process (on this UNet: 469 s more compile for no gain, measured on an H200).
        set_inductor_config=False)
    quantize_(unet, config, filter_fn=lambda module, name: name in names)
    converted = [n for n in sorted(names) if isinstance(modules[n].weight, Float8Tensor)]
    kept = [n for n, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and n not in converted]
    summary = Fp8Summary(granularity, converted, kept, torchao.__version__)
    unet.__dict__["_truthloop_fp8"] = summary
    return summary


def _cast_input(dtype: Any):
    def hook(module: Any, args: tuple) -> tuple:
        return (args[0].to(dtype),) + tuple(args[1:])
    return hook


def _cast_output(dtype: Any):
    def hook(module: Any, args: tuple, output: Any) -> Any:
        return output.to(dtype)
    return hook


def fp8_attention_status() -> str:
    """Whether torchao's FP8 attention could run here, in one line (it is not used either way:
    see the module docstring)."""
    try:
        from torchao.prototype.attention.utils import _is_fa3_available, _is_hopper
    except ImportError as error:
        return f"this torchao has no FP8 attention ({error})"
    if not _is_hopper():
        return "torchao's FP8 attention (prototype, FP8_FA3) needs a Hopper GPU"
    if not _is_fa3_available():
        return ("torchao's FP8 attention (prototype, FP8_FA3) needs FlashAttention-3's "
                "flash_attn_interface package, which is not installed")
    return "torchao's FP8 attention (prototype, FP8_FA3) could run here; not wired in"
