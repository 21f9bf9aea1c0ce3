"""Every parameter of a run, and the one place where defaults live.

One dataclass per concern; `RunConfig` bundles them and round-trips through JSON (the run
directory's `run.json`), so a resumed run uses exactly the parameters it started with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from truthloop.errors import OneLineError
from truthloop.families import CAPTIONERS, DEFAULT_CAPTIONER, DEFAULT_GENERATOR, GENERATORS
from truthloop.model_ids import DEFAULT_CAPTION_MODEL, DEFAULT_CLIP_MODEL, DEFAULT_SD_MODEL

# The seed script's negative prompt, verbatim (typos and missing spaces included: they change the
# tokens, so they change the images).
SEED_NEGATIVE_PROMPT = (
    "low quality, worst quality, out of focus, ugly, error, jpeg artifacts, lowers, blurry, "
    "bokeh,bad anatomy, long_neck, long_body, longbody, deformed mutated disfigured, missing arms, "
    "extra_arms, mutated hands, extra_legs, bad hands, poorly_drawn_hands, malformed_hands, "
    "missing_limb, floating_limbs, disconnected_limbs, extra_fingers, bad fingers, liquid fingers, "
    "poorly drawn fingers, missing fingers, extra digit, fewer digits, ugly face, deformed eyes, "
    "partial face, partial head, bad face, inaccurate limb, cropped,multipul angle, two shot, "
    "split view, grid view"
)

CAPTION_MODES = ("best", "fast", "classic", "negative", "caption")
SEED_MODES = ("reseed", "shared")
FEED_MODES = ("cut", "full")
INTERROGATORS = ("fast", "reference")
# --scheduler name -> the diffusers class it loads ("default": the model's own scheduler).
SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
}
SCHEDULERS = ("default", *SCHEDULER_CLASSES)
DEVICES = ("auto", "cuda", "mps", "cpu")
PREVIEWS = ("auto", "tgp", "sixel", "halfcell", "none")
# Where new run directories go when neither --out nor --runs-dir says (relative to the current
# directory), and where `truthloop runs` looks.
DEFAULT_RUNS_DIR = "runs"



@dataclass
class ModelConfig:
    """Which checkpoints to load and where to run them."""

    # "real" loads the ids below; "tiny" swaps every one for the offline random-weight checkpoints.
    models: str = "real"
    # The pair: which family draws and which describes (families.py). A run starts with its
    # families' default checkpoints and settings unless the user names others.
    generator: str = DEFAULT_GENERATOR
    captioner: str = DEFAULT_CAPTIONER
    # Hub ids live in model_ids.py (the one table to change when a repository moves). The
    # generator's checkpoint (run.json before 0.x called it sd_model), the captioner's, and the
    # CLIP that ranks flavors (clip-interrogator) and embeds every pair's images and prompts.
    generator_model: str = DEFAULT_SD_MODEL
    caption_model: str = DEFAULT_CAPTION_MODEL
    clip_model: str = DEFAULT_CLIP_MODEL
    device: str = "auto"
    low_vram: bool = False
    # Replay the fixed-shape GPU work (UNet steps, BLIP's decode, CLIP's encoders) from CUDA
    # graphs: the same kernels as eager, so the same numbers, minus the launch cost. Off where
    # offloading (--low-vram) moves weights around each call.
    cuda_graphs: bool = True


@dataclass
class CaptionConfig:
    """The image -> text step (clip-interrogator)."""

    mode: str = "best"
    chunk_size: int = 2048
    flavor_intermediate_count: int = 2048
    # The most tokens a caption may have (BLIP's max_new_tokens; the vision-language models' too).
    caption_max_length: int = 32
    # What a vision-language captioner is asked (families.DEFAULT_INSTRUCTION); Florence-2 takes a
    # task token. Empty for the captioners that take no instruction.
    instruction: str = ""
    # "fast" is truthloop's exact re-implementation of clip-interrogator's ranking; "reference"
    # calls clip-interrogator itself. Both give the same string (tests check it).
    interrogator: str = "fast"
    # The decoding settings (DECODING_SETTINGS names) kept over the checkpoint's own generation
    # config; None: the checkpoint's. Only resume sets it, from what the run decoded with (its
    # run.json "decoding"), so a run keeps its captioner's decoding across truthloop versions.
    decoding: dict[str, Any] | None = None


# The generation-config settings a caption's decoding is recorded and kept by, with
# transformers' defaults (sampling is always off: ml/families/captioning.decode_greedily).
DECODING_SETTINGS: dict[str, Any] = {"num_beams": 1, "no_repeat_ngram_size": 0,
                                     "repetition_penalty": 1.0, "length_penalty": 1.0,
                                     "early_stopping": False}
# A run from before truthloop recorded its decoding (run.json without "decoding") decoded with
# one beam, whatever its checkpoint asked (Florence-2's 3): its resume keeps that.
UNRECORDED_DECODING: dict[str, Any] = {"num_beams": 1}


@dataclass
class GenerateConfig:
    """The text -> image step (diffusers Stable Diffusion)."""

    steps: int = 50
    guidance: float = 7.5
    # None = the model's own default size (768 for SD2, 512 for SD 1.x).
    width: int | None = None
    height: int | None = None
    scheduler: str = "default"
    negative_prompt: str = SEED_NEGATIVE_PROMPT
    seed: int = 42
    # reseed: a fresh generator seeded with `seed` for every image, so the loop is a pure function
    #         of the prompt and a repeated prompt proves a cycle.
    # shared: one generator for the whole run, as in the seed script; its state drifts.
    seed_mode: str = "reseed"
    # torch.compile the generator's denoiser (UNet or transformer: families.GeneratorFamily.
    # compiles) and VAE decoder, and a captioner family's decode step (CUDA only).
    # Faster per image after a one-time compile (cached across processes); not bit-equal to
    # eager, so a run records which it used.
    compile: bool = False
    # float8 UNet linear layers on Ada/Hopper GPUs (torchao, ml/fp8.py): faster drawing, but other
    # images, so other attractors: opt-in, recorded, and never changed on resume.
    fp8: bool = False


@dataclass
class LoopConfig:
    """Iteration and stop rules."""

    # Only the first N comma clauses count; 0 = the whole caption.
    clauses: int = 0
    # cut: feed the cut prompt to the image model (what the article's text says);
    # full: feed the whole caption and compare only the cut (what its printed code does).
    feed: str = "cut"
    max_iters: int = 1000
    # After the first repeat, keep going this many iterations to confirm the cycle.
    confirm_iters: int = 0
    # When the run has converged. exact: a compared prompt repeats word for word (the article's
    # rule). text / image: a near repeat, opt-in: the compared prompt's CLIP text embedding
    # (text) or the drawn image's CLIP image embedding (image) has cosine similarity of at least
    # `near_threshold` to an earlier iteration's, in `near_window` iterations in a row (real
    # captions drift by a word forever: the article's first run never repeated exactly). An exact
    # repeat ends a run under every criterion.
    converge: str = "exact"
    near_threshold: float = 0.95
    near_window: int = 3
    # A control run, not the loop: "generator-only" redraws the start prompt with a new seed each
    # iteration (never captions after the first), "captioner-only" captions the start image
    # again each iteration (never draws after the first). Both run to --max-iters. "": the loop.
    control: str = ""
    # A fixed-length chain, as the Telephone Game runs them (Mollah et al. 2025): exactly this
    # many of its generations after the start, each caption and each image one (its code reads
    # 20), and no stop at a repeat. 0: the loop's own stop rules. max_iters does not apply.
    generations: int = 0

    # (not fields: the choices validate() accepts)
    CONVERGE_CRITERIA = ("exact", "text", "image")
    CONTROLS = ("", "generator-only", "captioner-only")

    def iteration_limit(self, from_image: bool) -> int:
        """The records a run may write: a fixed-length chain's (chain_shape), else max_iters."""
        return chain_shape(self.generations, from_image)[0] if self.generations \
            else self.max_iters

    def draws_last(self, from_image: bool) -> bool:
        """Whether the run's last record draws an image (a fixed-length chain that ends on a
        caption does not)."""
        return not self.generations or chain_shape(self.generations, from_image)[1]


def chain_shape(generations: int, from_image: bool) -> tuple[int, bool]:
    """(records, whether the last one draws) of a chain of `generations` Telephone Game
    generations. Generation 0 is the start; after it captions and images alternate. From an
    image, record k's caption is generation 2k+1 and its image 2k+2; from a prompt, record 0's
    prompt is generation 0, record k's image 2k+1 and (k >= 1) its caption 2k."""
    if from_image:
        return (generations + 1) // 2, generations % 2 == 0
    return generations // 2 + 1, generations % 2 == 1


# Every run option, by its name (argparse dest) -> (RunConfig section, field): what `run`, `demo`,
# `sweep` and `fork` accept. The CLI keeps its defaults None so a preset can fill what the user
# did not say, and what the user said wins over the preset.
OPTION_FIELDS = {
    "models": ("models", "models"), "generator": ("models", "generator"),
    "captioner": ("models", "captioner"), "generator_model": ("models", "generator_model"),
    "caption_model": ("models", "caption_model"), "clip_model": ("models", "clip_model"),
    "device": ("models", "device"), "low_vram": ("models", "low_vram"),
    "cuda_graphs": ("models", "cuda_graphs"),
    "mode": ("caption", "mode"), "chunk_size": ("caption", "chunk_size"),
    "flavor_intermediate_count": ("caption", "flavor_intermediate_count"),
    "caption_max_length": ("caption", "caption_max_length"),
    "instruction": ("caption", "instruction"),
    "interrogator": ("caption", "interrogator"),
    "steps": ("generate", "steps"), "guidance": ("generate", "guidance"),
    "width": ("generate", "width"), "height": ("generate", "height"),
    "scheduler": ("generate", "scheduler"), "negative_prompt": ("generate", "negative_prompt"),
    "seed": ("generate", "seed"), "seed_mode": ("generate", "seed_mode"),
    "compile": ("generate", "compile"), "fp8": ("generate", "fp8"),
    "clauses": ("loop", "clauses"), "feed": ("loop", "feed"), "max_iters": ("loop", "max_iters"),
    "confirm_iters": ("loop", "confirm_iters"),
    "converge": ("loop", "converge"), "near_threshold": ("loop", "near_threshold"),
    "near_window": ("loop", "near_window"), "control": ("loop", "control"),
    "generations": ("loop", "generations"),
}


@dataclass
class RunConfig:
    models: ModelConfig = field(default_factory=ModelConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    # Exactly one of these starts a run.
    input_image: str | None = None
    start_prompt: str | None = None
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Rebuild from `to_dict` output; unknown keys are an error (an edited or newer run.json)."""
        parts = {}
        for name, kind in (
            ("models", ModelConfig),
            ("caption", CaptionConfig),
            ("generate", GenerateConfig),
            ("loop", LoopConfig),
        ):
            section = data.get(name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"section {name!r} is not an object")
            if name == "models" and "sd_model" in section and "generator_model" not in section:
                # A run.json from before the model families (always SD + clip-interrogator).
                section = dict(section)
                section["generator_model"] = section.pop("sd_model")
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = set(section) - known
            if unknown:
                raise ConfigError(f"unknown keys in {name!r}: {', '.join(sorted(unknown))}")
            parts[name] = kind(**section)
        top = {k: data.get(k) for k in ("input_image", "start_prompt", "preset")}
        config = cls(**parts, **top)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError with one readable line for the first bad value."""
        m, c, g, lp = self.models, self.caption, self.generate, self.loop
        _choice("models", m.models, ("real", "tiny"))
        _choice("generator", m.generator, tuple(GENERATORS))
        _choice("captioner", m.captioner, tuple(CAPTIONERS))
        _choice("device", m.device, DEVICES)
        _choice("mode", c.mode, CAPTION_MODES)
        _choice("interrogator", c.interrogator, INTERROGATORS)
        _choice("scheduler", g.scheduler, SCHEDULERS)
        _choice("seed-mode", g.seed_mode, SEED_MODES)
        _choice("feed", lp.feed, FEED_MODES)
        if c.decoding is not None and (not isinstance(c.decoding, dict)
                                       or set(c.decoding) - set(DECODING_SETTINGS)):
            raise ConfigError(f"caption decoding must name only {', '.join(DECODING_SETTINGS)}")
        _positive("steps", g.steps)
        _positive("chunk-size", c.chunk_size)
        _positive("flavor-intermediate-count", c.flavor_intermediate_count)
        _positive("caption-max-length", c.caption_max_length)
        _positive("max-iters", lp.max_iters)
        if lp.clauses < 0:
            raise ConfigError(f"--clauses must be 0 (whole caption) or more, not {lp.clauses}")
        if lp.confirm_iters < 0:
            raise ConfigError(f"--confirm-iters must be 0 or more, not {lp.confirm_iters}")
        _choice("converge", lp.converge, LoopConfig.CONVERGE_CRITERIA)
        _choice("control", lp.control, LoopConfig.CONTROLS)
        if not (0.0 < lp.near_threshold <= 1.0):  # also rejects NaN
            raise ConfigError(f"--near-threshold is a cosine similarity above 0, at most 1; "
                              f"not {lp.near_threshold}")
        _positive("near-window", lp.near_window)
        if lp.control and lp.converge != "exact":
            raise ConfigError(f"--control {lp.control} runs never converge (they run to "
                              f"--max-iters); leave --converge out")
        if lp.generations < 0:
            raise ConfigError(f"--generations must be 1 or more (0: the loop's own stop "
                              f"rules), not {lp.generations}")
        if lp.generations and lp.control:
            raise ConfigError(f"--generations makes fixed-length chains of the loop; a "
                              f"--control {lp.control} run is not one: choose one")
        if lp.generations and lp.converge != "exact":
            raise ConfigError(f"--generations chains never stop at a repeat; leave "
                              f"--converge out")
        if not (g.guidance >= 0):  # also rejects NaN
            raise ConfigError(f"--guidance must be 0 or more, not {g.guidance}")
        for name, size in (("width", g.width), ("height", g.height)):
            if size is not None and (size <= 0 or size % 8):
                raise ConfigError(f"--{name} must be a positive multiple of 8, not {size}")
        if g.fp8 and self.models.low_vram:
            raise ConfigError("--fp8 and --low-vram do not go together; choose one")
        if g.compile and self.models.low_vram:
            # Offloading swaps the UNet's weights in around every call; the compiled (and
            # graphed) forward would bypass that.
            raise ConfigError("--compile and --low-vram do not go together; choose one")
        check_pair(self)
        if not (0 <= g.seed < 2**63):
            raise ConfigError(f"--seed must be between 0 and 2**63-1, not {g.seed}")
        if (self.input_image is None) == (self.start_prompt is None):
            raise ConfigError("give either an input image or --prompt, not both or neither")


def options_given(args: Any) -> set[str]:
    """The OPTION_FIELDS an argparse namespace was given (the CLI keeps their defaults None)."""
    return {name for name in OPTION_FIELDS if getattr(args, name, None) is not None}


# clip-interrogator's own options: a run with another captioner has no use for them.
INTERROGATOR_OPTIONS = ("mode", "chunk_size", "flavor_intermediate_count", "interrogator")
# The options that choose a checkpoint: --models tiny swaps every one for a tiny checkpoint.
MODEL_OPTIONS = ("generator_model", "caption_model", "clip_model")


def check_options_given(config: "RunConfig", said: set[str] | frozenset[str]) -> None:
    """Options the user gave (`said`: OPTION_FIELDS names) that this run would ignore, in one
    line: clip-interrogator's own with another captioner, --steps with a generator that draws
    token by token, a checkpoint under --models tiny."""
    if not CAPTIONERS[config.models.captioner].interrogates:
        given = [name for name in INTERROGATOR_OPTIONS if name in said]
        if given:
            raise ConfigError(f"{_flag(given[0])} is clip-interrogator's; --captioner "
                              f"{config.models.captioner} has no such option")
    if GENERATORS[config.models.generator].autoregressive and "steps" in said:
        raise ConfigError(f"--steps: {config.models.generator} draws an image as its "
                          f"checkpoint's image tokens (Janus-Pro: 576), one step each; leave "
                          f"--steps out")
    if config.loop.generations and "max_iters" in said:
        raise ConfigError("--generations sets each chain's length; leave --max-iters out")
    if config.models.models == "tiny":
        given = [name for name in MODEL_OPTIONS if name in said]
        if given:
            flags = " and ".join(_flag(name) for name in given)
            one = len(given) == 1
            raise ConfigError(f"{flags} {'chooses a checkpoint' if one else 'choose checkpoints'}"
                              f", but this run's --models is tiny, which swaps every model for "
                              f"a tiny random-weight one: leave {'it' if one else 'them'} out, "
                              f"or add --models real")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_pair(config: "RunConfig") -> None:
    """Settings the run's generator or captioner family cannot honour; one line each."""
    m, c, g = config.models, config.caption, config.generate
    generator, captioner = GENERATORS[m.generator], CAPTIONERS[m.captioner]
    if generator.autoregressive:  # first: the diffusion families' reasons below are not its own
        _check_token_drawing(config)
    if g.compile and not generator.compiles:
        raise ConfigError(f"--compile is for the diffusion generators "
                          f"({', '.join(n for n, f in GENERATORS.items() if f.compiles)}); "
                          f"{generator.name} draws through its library's own call")
    if g.fp8 and not generator.fast_paths:
        raise ConfigError(f"--fp8 is truthloop's fast path for the sd generator; "
                          f"{generator.name} runs through diffusers' own pipeline")
    if g.scheduler != "default" and not generator.swaps_scheduler:
        raise ConfigError(f"--scheduler: {generator.name} is a flow-matching model trained for "
                          f"its own sampler; leave --scheduler out")
    if g.negative_prompt and not generator.takes_negative_prompt:
        raise ConfigError(f"--negative-prompt: {generator.name} is distilled and draws without "
                          f"classifier-free guidance, so it takes no negative prompt")
    if captioner.takes_instruction and not c.instruction.strip():
        raise ConfigError(f"--instruction is empty; {captioner.name} needs to be asked something")
    if c.instruction and not captioner.takes_instruction:
        raise ConfigError(f"--instruction is for the vision-language captioners "
                          f"({', '.join(n for n, f in CAPTIONERS.items() if f.takes_instruction)})"
                          f"; {captioner.name} takes none")


def _check_token_drawing(config: "RunConfig") -> None:
    """What a generator that draws its image token by token (janus-pro) cannot honour."""
    g, name = config.generate, config.models.generator
    refusals = (
        ("--width", g.width is not None, "draws its checkpoint's own size (Janus-Pro: 384x384)"),
        ("--height", g.height is not None, "draws its checkpoint's own size (Janus-Pro: 384x384)"),
        ("--scheduler", g.scheduler != "default", "samples image tokens; it has no sampler to "
                                                   "swap"),
        ("--negative-prompt", bool(g.negative_prompt), "guides its tokens with the prompt "
                                                        "against padding, not a negative prompt"),
        ("--low-vram", config.models.low_vram, "is one transformers model on the GPU, with no "
                                               "offloaded path"),
    )
    for flag, asked, why in refusals:
        if asked:
            raise ConfigError(f"{flag}: {name} {why}; leave {flag} out")


def apply_pair_defaults(config: "RunConfig", said: set[str] | frozenset[str] = frozenset(),
                        sides: tuple[str, ...] | None = None) -> None:
    """Write the run's families' default checkpoints and settings into `config`, except the
    options in `said` (OPTION_FIELDS names the user gave). `sides`: "generator", "captioner";
    default: the sides whose family is not the seed pair's (whose defaults are RunConfig's own,
    so a run of that pair keeps what a preset or the demo set). A fork that changes a family
    names that side, and gets the new family's settings, the seed pair's included."""
    if sides is None:
        sides = tuple(side for side, default in (("generator", DEFAULT_GENERATOR),
                                                 ("captioner", DEFAULT_CAPTIONER))
                      if getattr(config.models, side) != default)
    settings = pair_settings(config.models.generator, config.models.captioner, sides, said)
    for section, values in settings.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)


def pair_settings(generator: str, captioner: str, sides: tuple[str, ...],
                  said: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """{section: {field: value}}: what apply_pair_defaults writes (a sweep applies it to each
    grid point's config as plain JSON)."""
    out: dict[str, dict[str, Any]] = {"models": {}, "generate": {}, "caption": {}}
    if "generator" in sides and generator in GENERATORS:
        family = GENERATORS[generator]
        out["generate"] = _family_settings(GENERATORS, family, GenerateConfig())
        out["models"]["generator_model"] = family.default_model
    if "captioner" in sides and captioner in CAPTIONERS:
        family = CAPTIONERS[captioner]
        out["caption"] = _family_settings(CAPTIONERS, family, CaptionConfig())
        out["models"]["caption_model"] = family.default_model
    # The option names of these fields are the field names (OPTION_FIELDS).
    return {section: {key: value for key, value in values.items() if key not in said}
            for section, values in out.items()}


def _family_settings(table: dict[str, Any], family: Any, base: Any) -> dict[str, Any]:
    """The family's settings for every field some family sets: its own, else RunConfig's."""
    keys = {key for other in table.values() for key in other.defaults}
    return {key: family.defaults.get(key, getattr(base, key)) for key in sorted(keys)}


class ConfigError(OneLineError, ValueError):
    """A parameter value that cannot work; the message is one line meant for the user."""


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown --{name} {value!r}; choose one of: {', '.join(allowed)}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"--{name} must be 1 or more, not {value}")


# What `resume` may change: how a trajectory runs, not what it computes. Each resumed stretch of a
# run (a "segment") records these in summary.json, and the next resume starts from them.
# --compile is not here: compiled kernels give images that are not bit-equal to eager ones, so a
# trajectory keeps the setting it started with (resume refuses to change it). --device is, though
# a CPU computes in fp32 where CUDA uses fp16: resuming on another machine, or on the CPU after
# the GPU ran out of memory, is what resume is for, and each segment records its device.
RESUMABLE = {"device": ("models", "device"), "low_vram": ("models", "low_vram"),
             "cuda_graphs": ("models", "cuda_graphs"), "max_iters": ("loop", "max_iters")}


def resumable_options(config: "RunConfig") -> dict[str, Any]:
    return {name: getattr(getattr(config, section), field_name)
            for name, (section, field_name) in RESUMABLE.items()}


def apply_resume_options(config: "RunConfig", options: dict[str, Any]) -> dict[str, Any]:
    """Set the RESUMABLE `options` (None = keep) on `config`; returns those that changed.

    Raises ConfigError for --compile different from the run's, or a combination that cannot work.
    """
    options = {name: value for name, value in options.items() if value is not None}
    compile_asked = options.pop("compile", None)
    if compile_asked is not None and compile_asked != config.generate.compile:
        raise ConfigError("--compile cannot change on resume: compiled kernels draw images that "
                          "are not bit-equal to eager ones, and this trajectory was started "
                          "without it; start a new run with --compile")
    unknown = set(options) - set(RESUMABLE)
    if unknown:
        raise ConfigError(f"resume cannot change {', '.join(sorted(unknown))}")
    if config.loop.generations and options.get("max_iters", config.loop.max_iters) \
            != config.loop.max_iters:
        raise ConfigError(f"this run is a chain of --generations {config.loop.generations}; "
                          f"--max-iters does not apply to it")
    before = resumable_options(config)
    for name, value in options.items():
        section, field_name = RESUMABLE[name]
        setattr(getattr(config, section), field_name, value)
    if config.generate.compile and config.models.low_vram:
        raise ConfigError("this run was started with --compile, which --low-vram cannot use "
                          "(offloading moves the compiled UNet's weights); free the GPU or "
                          "resume with --device cpu")
    config.validate()
    after = resumable_options(config)
    return {name: after[name] for name in after if after[name] != before[name]}


# Presets override defaults; anything the user passes explicitly overrides the preset.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The seed script's stack: shared generator, best mode, blip-large + ViT-L-14/openai with
    # chunk_size=400, SD2 (its sd2-community mirror) at its own 768 size with the pipeline defaults (50 steps, guidance 7.5),
    # the seed negative prompt. Its printed code compared the whole caption (clauses 0); its
    # converging run is `--preset article --clauses 1`.
    "article": {
        "models": {"generator_model": DEFAULT_SD_MODEL, "caption_model": DEFAULT_CAPTION_MODEL,
                   "clip_model": DEFAULT_CLIP_MODEL},
        "caption": {"mode": "best", "chunk_size": 400, "flavor_intermediate_count": 2048},
        "generate": {"steps": 50, "guidance": 7.5, "width": None, "height": None,
                     "scheduler": "default", "negative_prompt": SEED_NEGATIVE_PROMPT, "seed": 42,
                     "seed_mode": "shared"},
    },
}


# `truthloop demo`: small and quick on a CPU with the tiny models; the user's options still win.
DEMO: dict[str, dict[str, Any]] = {
    "models": {"models": "tiny"},
    "caption": {"mode": "fast"},
    "generate": {"steps": 20},
    "loop": {"clauses": 1, "max_iters": 30},
}


def _apply(config: RunConfig, sections: dict[str, dict[str, Any]]) -> None:
    for section, values in sections.items():
        target = getattr(config, section)
        for key, value in values.items():
            setattr(target, key, value)


def apply_demo(config: RunConfig) -> None:
    _apply(config, DEMO)


def apply_preset(config: RunConfig, name: str) -> None:
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}")
    _apply(config, PRESETS[name])
    config.preset = name
