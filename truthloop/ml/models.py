"""The one loading path: a hub id, a local directory or "tiny" -> pipeline, BLIP, CLIP.

Hub ids go through the standard Hugging Face cache (HF_HOME, HF_HUB_OFFLINE are respected by the
libraries themselves). The tiny checkpoints are built on disk first and then loaded by exactly the
same calls as real ids.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from truthloop.catalog import cached_file
from truthloop.config import SCHEDULER_CLASSES, ModelConfig, RunConfig
from truthloop.errors import OneLineError
from truthloop.events import DEVICE_FALLBACK
from truthloop.model_ids import CAPTION_MODEL_IDS, download_hint, mirror_of
from truthloop.text import first_line

Progress = Callable[[str], None]


class ModelUnavailable(OneLineError):
    """A model that cannot be loaded; the message is one line naming it and how to provide it."""


@dataclass
class LoadedModels:
    pipe: Any
    caption_model: Any
    caption_processor: Any
    clip_model: Any
    clip_preprocess: Any
    # "ARCH/TAG": the name clip-interrogator needs (tokenizer lookup, label cache file names).
    clip_name: str
    device: str
    dtype: Any
    # What was really loaded, per model: {"requested", "repo", "revision", "path"} (see _source).
    loaded: dict[str, dict[str, str | None]]


def resolve(config: ModelConfig) -> ModelConfig:
    """Swap in the tiny checkpoints' locations when `models == "tiny"` (building them if needed):
    the tiny checkpoint of the run's generator family and of its captioner family."""
    if config.models != "tiny":
        return config
    from truthloop.ml.tiny import build_tiny_models, tiny_family_model

    tiny = build_tiny_models()
    return replace(config,
                   generator_model=tiny_family_model("generator", config.generator),
                   caption_model=tiny_family_model("captioner", config.captioner),
                   clip_model=tiny.clip_model)


def pick_device(requested: str, notice: Progress = lambda message: None) -> str:
    """The device for `requested`; `auto` on a machine whose CUDA is not usable says, through
    `notice`, that it falls back to the CPU and why (once per load)."""
    import torch

    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise ModelUnavailable("--device cuda was asked for but no CUDA GPU is visible")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise ModelUnavailable("--device mps was asked for but MPS is not available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    if torch.version.cuda is None:
        why = "this torch is a CPU-only build"
    else:
        why = (f"torch built for CUDA {torch.version.cuda} finds no usable GPU: none visible, "
               f"or the driver is too old")
    notice(f"{DEVICE_FALLBACK} ({why})")
    return "cpu"


# -- before loading: is every checkpoint there? -------------------------------------------------
@dataclass(frozen=True)
class Wanted:
    """One checkpoint a run will load, as the loaders below will look for it."""

    kind: str                   # "image model", "caption model", "CLIP"
    spec: str                   # as the user named it: a hub id, a directory, ARCH/PRETRAINED
    local: Path | None          # on disk: a directory (CLIP: a checkpoint file)
    repos: tuple[str, ...]      # hub repositories, any one of which will do (None: not known)
    markers: tuple[str, ...]    # files whose presence in the hub cache says it was downloaded


def wanted_models(config: ModelConfig, captioner_alone: bool = False) -> list[Wanted]:
    """The checkpoints `load_backends` will load for `config`, without loading any (the tiny
    ones are built on this machine, so none is wanted from elsewhere). `captioner_alone`: those
    `load_captioner_side` loads (`truthloop caption`): the caption model, and clip-interrogator's
    CLIP."""
    from truthloop.families import DEFAULT_CAPTIONER, GENERATORS, shares_model

    if config.models == "tiny":
        return []
    wanted = []
    spec = config.generator_model
    # A diffusers pipeline's checkpoint has a model_index.json; a transformers model's
    # (an autoregressive family's) a config.json.
    marker = "config.json" if GENERATORS[config.generator].autoregressive else "model_index.json"
    if captioner_alone:
        pass  # no image model
    elif _is_local(spec):
        wanted.append(Wanted("image model", spec, Path(spec).expanduser(), (), ()))
    else:
        # A withdrawn id: the user's cached copy of it, else its mirror (_hub_source).
        repos = (spec, mirror_of(spec)) if mirror_of(spec) else (spec,)
        wanted.append(Wanted("image model", spec, None, repos, (marker,)))
    if not captioner_alone and shares_model(config.generator, config.captioner) \
            and config.caption_model == spec:
        return wanted + _wanted_clip(config)  # one checkpoint serves both sides
    spec = config.caption_model
    # clip-interrogator's and blip's loaders take blip-large / blip-base for their hub ids.
    source = CAPTION_MODEL_IDS.get(spec, spec) if config.captioner in (DEFAULT_CAPTIONER, "blip") \
        else spec
    wanted.append(Wanted("caption model", spec, Path(source).expanduser(), (), ())
                  if _is_local(source) else
                  Wanted("caption model", spec, None, (source,), ("config.json",)))
    if captioner_alone and config.captioner != DEFAULT_CAPTIONER:
        return wanted
    return wanted + _wanted_clip(config)


def _wanted_clip(config: ModelConfig) -> list[Wanted]:
    """The CLIP `load_backends` loads for `config` (none where open_clip fetches it itself)."""
    from truthloop.model_ids import CLIP_HUB_IDS

    wanted = []
    spec = config.clip_model
    arch, _, pretrained = spec.partition("/")
    if not pretrained:
        raise ModelUnavailable(
            f"CLIP {spec!r}: give ARCH/PRETRAINED, e.g. ViT-L-14/openai or ViT-L-14/path/to/ckpt.pt"
        )
    if _is_local(pretrained):
        wanted.append(Wanted("CLIP", spec, Path(pretrained).expanduser(), (), ()))
    else:
        repo = CLIP_HUB_IDS.get(spec) or _clip_hub_repo(arch, pretrained)
        if repo:  # else a URL open_clip fetches itself, or a name it does not know: it says so
            wanted.append(Wanted("CLIP", spec, None, (repo,),
                                 ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")))
    return wanted


def check_models_available(configs: list[ModelConfig], captioner_alone: bool = False) -> None:
    """Raise ModelUnavailable, one line naming every checkpoint of `configs` that cannot be
    loaded here and how to get each, before anything is loaded or written: a local directory
    (or CLIP checkpoint file) that is not there, a hub id that is neither in the hub cache nor
    (when the hub can be reached) on the hub. Asks the hub only about ids not in the cache."""
    wanted: dict[tuple[str, str], Wanted] = {}
    for config in configs:
        for item in wanted_models(config, captioner_alone):
            wanted.setdefault((item.kind, item.spec), item)
    hub = _HubLookup()
    absent: list[str] = []     # "image model '/x': no such directory", "... is not on the hub"
    uncached: list[Wanted] = []  # not in the cache, and the hub cannot be asked
    for item in wanted.values():
        if item.local is not None:
            if not (item.local.is_file() if item.kind == "CLIP" else item.local.is_dir()):
                what = "checkpoint file" if item.kind == "CLIP" else "directory"
                absent.append(f"{item.kind} {item.spec!r}: no such {what}")
            continue
        if any(cached_file(repo, marker) for repo in item.repos for marker in item.markers):
            continue
        found = hub.exists(item.repos[-1])
        if found is None:
            uncached.append(item)
        elif not found:
            absent.append(f"{item.kind} {item.spec!r} is not on the Hugging Face hub (a typo, "
                          f"or a private repository)")
    if uncached:
        names = _and([f"{item.kind} {item.spec!r}" for item in uncached])
        hints = _and([f"`{download_hint(item.repos[-1])}`" for item in uncached])
        one = len(uncached) == 1
        absent.append(f"{names} {'is' if one else 'are'} not in the Hugging Face cache and "
                      f"cannot be downloaded here: run {hints} on a connected machine (and copy "
                      f"its HF_HOME cache), or pass {'a local directory' if one else 'local directories'}")
    if absent:
        raise ModelUnavailable("; ".join(absent))


class _HubLookup:
    """Whether a repository is on the hub: asked only while the hub answers (HF_HUB_OFFLINE, or
    one failed connection, and every later question answers None: cannot tell)."""

    def __init__(self) -> None:
        from huggingface_hub import constants

        self.reachable = not constants.HF_HUB_OFFLINE

    def exists(self, repo: str) -> bool | None:
        if not self.reachable:
            return None
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            HfApi().model_info(repo, timeout=10)
        except GatedRepoError:
            return True  # there; the download asks for the user's token
        except RepositoryNotFoundError:
            return False
        except Exception:  # noqa: BLE001 - no network, a proxy, the hub down: cannot tell
            self.reachable = False
            return None
        return True


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_before_loading(configs: list[RunConfig], captioner_alone: bool = False) -> None:
    """What would stop the load of these runs (a run, or a sweep's trajectories) on this
    machine, found before anything loads or is written, in one line: --fp8 where it cannot run
    (a CPU, a GPU older than Ada), --device cuda or mps where there is none, and every
    checkpoint that is neither on disk nor to be had (check_models_available). Imports torch
    only for --fp8 and --device. `captioner_alone`: for `truthloop caption` (wanted_models)."""
    for device in sorted({config.models.device for config in configs
                          if config.generate.fp8 or config.models.device in ("cuda", "mps")}):
        picked = pick_device(device)  # ModelUnavailable: --device cuda (mps) without one
        if any(config.generate.fp8 and config.models.device == device for config in configs):
            from truthloop.ml.fp8 import Fp8Unavailable, fp8_refusal

            refusal = fp8_refusal(picked)
            if refusal:
                raise Fp8Unavailable(refusal)
    check_models_available([config.models for config in configs], captioner_alone)


def set_determinism() -> None:
    """Eager inference repeatable on one machine and toolkit (see FACTS: Determinism)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def load_models(config: ModelConfig, scheduler: str = "default",
                progress: Progress = lambda message: None,
                notice: Progress = lambda message: None) -> LoadedModels:
    """Load the three models. `notice` gets one line for anything the user should know (a
    withdrawn hub id swapped for its mirror, or served from the user's cache)."""
    set_determinism()
    import torch

    config = resolve(config)
    device = pick_device(config.device, notice)
    dtype = torch.float16 if device == "cuda" else torch.float32
    loaded: dict[str, dict[str, str | None]] = {}
    progress(f"loading image model {config.generator_model}")
    pipe, loaded["generator_model"] = load_pipeline(config.generator_model, device, dtype,
                                                    scheduler, config.low_vram, notice)
    progress(f"loading caption model {config.caption_model}")
    caption_model, caption_processor, loaded["caption_model"] = load_caption_model(
        config.caption_model, device, dtype)
    progress(f"loading CLIP {config.clip_model}")
    clip_model, clip_preprocess, clip_name, loaded["clip_model"] = load_clip(config.clip_model,
                                                                             device)
    return LoadedModels(pipe, caption_model, caption_processor, clip_model, clip_preprocess,
                        clip_name, device, dtype, loaded)


def _is_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or os.path.exists(spec)


def _hub_source(kind: str, spec: str, marker: str, notice: Progress) -> str:
    """The repository to load for `spec`: a withdrawn id becomes its mirror, unless the user's
    hub cache still holds the withdrawn one (then that copy is used, and nothing is fetched)."""
    mirror = mirror_of(spec)
    if mirror is None:
        return spec
    if cached_file(spec, marker) is not None:
        notice(f"{kind} {spec} was withdrawn from the Hugging Face hub; "
               f"using the copy in your hub cache")
        return spec
    notice(f"{kind} {spec} was withdrawn from the Hugging Face hub; loading its mirror {mirror}")
    return mirror


def _source(spec: str, repo: str | None, marker: str) -> dict[str, str | None]:
    """Where a model really came from, for the run's record: the id asked for, the repository
    and revision (commit) loaded from the hub cache, or the local path."""
    if repo is None:
        return {"requested": spec, "repo": None, "revision": None,
                "path": str(Path(spec).expanduser().resolve())}
    cached = cached_file(repo, marker)
    # A cached file lives at .../models--org--name/snapshots/<commit>/<marker>.
    revision = Path(cached).parent.name if cached else None
    return {"requested": spec, "repo": repo, "revision": revision,
            "path": str(Path(cached).parent) if cached else None}


def _from_pretrained(kind: str, spec: str, load: Callable[[str], Any]) -> Any:
    """Call a from_pretrained, turning "not here and not downloadable" into one clear line."""
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ModelUnavailable(f"{kind} {spec!r}: no such directory")
        spec = str(path)
    try:
        return load(spec)
    except (OSError, ValueError) as error:
        if _is_local(spec):
            raise ModelUnavailable(
                f"{kind} {spec!r} could not be loaded from that directory: {first_line(error)}"
            ) from None
        raise ModelUnavailable(
            f"{kind} {spec!r} is not in the Hugging Face cache and cannot be downloaded here: "
            f"run `{download_hint(spec)}` on a connected machine (and copy its HF_HOME cache), "
            f"or pass a local directory"
        ) from None


def load_pipeline(spec: str, device: str, dtype: Any, scheduler: str = "default",
                  low_vram: bool = False, notice: Progress = lambda message: None,
                  pipeline: str = "StableDiffusionPipeline",
                  ) -> tuple[Any, dict[str, str | None]]:
    """A diffusers `pipeline` (class name; every generator family's, families.py) from a hub id
    or a local directory, in `dtype`, on `device` (or offloaded), with `scheduler` swapped in."""
    import diffusers

    pipeline_class = getattr(diffusers, pipeline)
    # Stable Diffusion 1.x/2.x checkpoints name a safety checker truthloop never loads.
    extra: dict[str, Any] = ({"safety_checker": None, "requires_safety_checker": False}
                             if pipeline == "StableDiffusionPipeline" else {})
    if pipeline == "StableDiffusionXLPipeline":
        # SDXL's pipeline stamps an invisible watermark into every image (DWT-DCT, on the CPU)
        # whenever the invisible-watermark package happens to be installed: the image the
        # captioner reads, and so a whole trajectory, would depend on an unrelated package on
        # the machine. truthloop's images are the model's, on every machine.
        extra["add_watermarker"] = False

    def load(source: str) -> Any:
        return pipeline_class.from_pretrained(source, dtype=dtype, **extra)

    repo = None if _is_local(spec) else _hub_source("image model", spec, "model_index.json",
                                                    notice)
    pipe = _from_pretrained("image model", repo or spec, load)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    loaded_dtype = getattr(denoiser, "dtype", dtype)
    if loaded_dtype != dtype:
        # diffusers 0.30-0.36 ignored `dtype=` (it wanted torch_dtype=): fp32 on CUDA is twice
        # the memory and slower, and it is not what the run says it used.
        notice(f"the image model loaded as {str(loaded_dtype).replace('torch.', '')}, not "
               f"{str(dtype).replace('torch.', '')} as asked (diffusers "
               f"{diffusers.__version__} ignores dtype=); truthloop needs diffusers >= 0.42")
    if scheduler != "default":
        scheduler_class = getattr(diffusers, SCHEDULER_CLASSES[scheduler])
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if low_vram and device == "cuda":
        # Each sub-model moves to the GPU only while it runs; the VAE decodes in slices.
        pipe.enable_model_cpu_offload()
        pipe.vae.enable_slicing()
    else:
        pipe = pipe.to(device)
    return pipe, _source(spec, repo, "model_index.json")


def load_caption_model(spec: str, device: str, dtype: Any,
                       ) -> tuple[Any, Any, dict[str, str | None]]:
    from transformers import AutoProcessor, BlipForConditionalGeneration

    source = CAPTION_MODEL_IDS.get(spec, spec)

    def load(path: str) -> tuple[Any, Any]:
        model = BlipForConditionalGeneration.from_pretrained(path, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path)
        return model, processor

    model, processor = _from_pretrained("caption model", source, load)
    model.eval()
    repo = None if _is_local(source) else source
    return model.to(device), processor, _source(source, repo, "config.json") | {"requested": spec}


def load_clip(spec: str, device: str) -> tuple[Any, Any, str, dict[str, str | None]]:
    """Load an open_clip model named "ARCH/PRETRAINED" (a tag like "openai", or a checkpoint file)."""
    import open_clip

    from truthloop.ml.tiny import TINY_CLIP_ARCH, register_tiny_clip, tiny_root

    if "/" not in spec:
        raise ModelUnavailable(
            f"CLIP {spec!r}: give ARCH/PRETRAINED, e.g. ViT-L-14/openai or ViT-L-14/path/to/ckpt.pt"
        )
    arch, pretrained = spec.split("/", 1)
    if arch == TINY_CLIP_ARCH:
        register_tiny_clip(Path(pretrained).parent.parent if Path(pretrained).exists()
                           else tiny_root())
    if arch not in open_clip.list_models():
        raise ModelUnavailable(f"CLIP {spec!r}: open_clip knows no architecture named {arch!r}")
    is_file = _is_local(pretrained)
    if is_file and not Path(pretrained).expanduser().is_file():
        raise ModelUnavailable(f"CLIP {spec!r}: no such checkpoint file {pretrained!r}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=str(Path(pretrained).expanduser()) if is_file else pretrained,
            precision="fp16" if device == "cuda" else "fp32",
            device=device,
        )
    except RuntimeError as error:
        if "not found" in str(error).lower() or "unknown" in str(error).lower():
            raise ModelUnavailable(f"CLIP {spec!r}: {first_line(error)}") from None
        raise
    except (OSError, ValueError) as error:
        hub_repo = None if is_file else _clip_hub_repo(arch, pretrained)
        fetch = f"run `{download_hint(hub_repo)}`" if hub_repo else "fetch it"
        raise ModelUnavailable(
            f"CLIP {spec!r} is not in the Hugging Face cache and cannot be downloaded here "
            f"({first_line(error)}): {fetch} on a connected machine, or pass "
            f"ARCH/path/to/checkpoint"
        ) from None
    model.eval()
    # clip-interrogator names its label cache after this; a checkpoint file is named by its
    # content's fingerprint, so two different files never share cached label embeddings.
    tag = f"file-{_file_fingerprint(Path(pretrained).expanduser())}" if is_file else pretrained
    if is_file:
        source = {"requested": spec, "repo": None, "revision": None,
                  "path": str(Path(pretrained).expanduser().resolve())}
    else:
        hub_repo = _clip_hub_repo(arch, pretrained)
        source = {"requested": spec, "repo": hub_repo, "revision": None, "path": None}
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if hub_repo and cached_file(hub_repo, name):
                source = _source(spec, hub_repo, name)
                break
    return model, preprocess, f"{arch}/{tag}", source


def _clip_hub_repo(arch: str, tag: str) -> str | None:
    """The hub repository open_clip's own table fetches ARCH/TAG from (None: a URL or unknown)."""
    import open_clip

    repo = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "")
    return repo.strip("/") or None


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
