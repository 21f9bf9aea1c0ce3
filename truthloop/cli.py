"""The `truthloop` command: run / demo / resume headless or in the TUI, view, runs, export.

The TUI is imported only when it is asked for and stdout is a terminal, so the headless path never
pays for Textual (a test checks it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from truthloop import __version__, caption_command, measure_command
from truthloop import events as ev
from truthloop.config import (
    CAPTION_MODES, DEFAULT_RUNS_DIR, DEVICES, FEED_MODES, INTERROGATORS, OPTION_FIELDS, PRESETS,
    PREVIEWS, SCHEDULERS, SEED_MODES, SEED_NEGATIVE_PROMPT, ConfigError, LoopConfig, RunConfig,
    apply_demo, apply_pair_defaults, apply_preset, chain_shape, check_options_given,
    options_given,
)
from truthloop.families import CAPTIONERS, DEFAULT_INSTRUCTION, GENERATORS
from truthloop.lookback import report_command, telephone_command
from truthloop.text import clip, count, visible
from truthloop.text import duration as _duration

SAMPLE_IMAGE = Path(__file__).parent / "data" / "sample.png"

class UserError(Exception):
    """One line for the user, exit code 2 (bad input) unless given."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="truthloop", description="Caption an image, draw the caption, caption "
                     "the drawing... until a caption repeats: that image's 'truth'.")
    parser.add_argument("--version", action="version", version=f"truthloop {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser(
        "run", help="start a run from an image (or --prompt)",
        description="Caption IMAGE, draw the caption, caption the drawing... until a caption "
                    "repeats, with the real models (a GPU helps). The run directory keeps "
                    "everything; `truthloop resume` continues it.")
    run.add_argument("image", nargs="?", help="start image (PNG, JPEG, ...)")
    run.add_argument("--prompt", help="start by drawing this prompt instead of captioning an image")
    _add_run_options(run)

    demo = sub.add_parser(
        "demo", help="offline demo: tiny random models on the bundled image",
        description="A run of the tiny random-weight models on the bundled sample image: "
                    "offline, on a CPU, in seconds. It shows the loop, not any truth. The "
                    "defaults below are the demo's own; any run option may change them.")
    _add_run_options(demo)

    resume = sub.add_parser(
        "resume", help="continue a stopped or interrupted run",
        description="Continue a run on the same trajectory. Options that change how it runs but "
                    "not what it computes may change; each is recorded per segment in "
                    "summary.json, and a later resume starts from the last segment's.")
    resume.add_argument("run_dir")
    same = "(default: as the run last ran)"
    resume.add_argument("--max-iters", type=int, help=f"the iteration limit {same}")
    resume.add_argument("--device", choices=DEVICES,
                        help=f"where to run; fp16 on CUDA, fp32 elsewhere {same}")
    resume.add_argument("--low-vram", action=argparse.BooleanOptionalAction, default=None,
                        help=f"offload models to the CPU between uses; same images {same}")
    resume.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help=f"replay CUDA graphs (--no-cuda-graphs: launch eagerly); same "
                             f"numbers either way {same}")
    resume.add_argument("--compile", action="store_true", default=None,
                        help="accepted only for a run started with --compile: compiled images "
                             "are not bit-equal to eager ones, so a trajectory keeps its "
                             "setting (default: the run's)")
    _add_ui_options(resume)

    view = sub.add_parser(
        "view", help="browse a run or sweep directory (follows it while it grows)",
        description="Open a run directory read-only in the terminal app (the iteration log, "
                    "caption diffs, images), following it while its run goes on; a sweep "
                    "directory opens as its table of trajectories. Needs a terminal; for a "
                    "plain listing use `truthloop runs`.")
    view.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or a sweep directory")
    view.add_argument("--preview", choices=PREVIEWS, default="auto",
                      help="image preview: terminal graphics, half-blocks or none")

    models_parser = sub.add_parser(
        "models", help="the generator and captioner families, their default checkpoints, "
                       "licences, sizes, and whether your hub cache has them",
        description="Each --generator and --captioner family with its default checkpoint, "
                    "licence, download size, the GPU memory it needs, and whether your Hugging "
                    "Face cache (HF_HOME) holds it; then the embedders of `truthloop measure "
                    "--embedder`. Looks only at the cache; downloads nothing.")
    models_parser.add_argument("--json", action="store_true", help="JSON instead of a table")

    sub.add_parser("tiny", help="build the tiny offline checkpoints now and print where they are",
                   description="Build the tiny random-weight checkpoints (SD, BLIP, CLIP) that "
                               "`demo` and `--models tiny` use, in the user cache "
                               "($TRUTHLOOP_CACHE moves it), and print where they are. A run "
                               "builds them itself when needed; this does it ahead of time.")

    _add_lookback_commands(sub)
    _add_fork_compare_commands(sub)
    _add_sweep_commands(sub)
    report_command.add_parser(sub)
    telephone_command.add_parser(sub)
    caption_command.add_parser(sub)
    measure_command.add_parser(sub)
    for name, command in sub.choices.items():
        config = RunConfig()
        if name == "demo":
            apply_demo(config)
        if command.description is None:  # `truthloop NAME --help` says what NAME does
            command.description = DESCRIPTIONS.get(name)
        _show_defaults(command, config, fork=name == "fork")
    return parser


# Descriptions of commands whose parsers are built elsewhere (truthloop/sweep/command.py), for
# their own --help; a description given there wins.
DESCRIPTIONS = {
    "atlas": "Map where a sweep's trajectories ended: the exact attractors (the same fixed "
             "point or cycle) with their basin sizes, and motifs (attractors clustered by the "
             "meaning of their images and prompts). Writes atlas.json, atlas.png and atlas.html "
             "into SWEEP_DIR/atlas/ (or --out). Needs no GPU and no Ray.",
}

# What happens without a --no-X flag (its help says so instead of "default: on").
WITHOUT_FLAG = {
    "live_preview": "the image is shown while it denoises",
    "cuda_graphs": "CUDA graphs are replayed",
    "captions": "each frame and tile carries its index and prompt",
    "compile": "eager unless --compile is given, but `sweep --batch N` compiles on GPUs",
    "atlas": "the atlas is written when the sweep ends",
}


def _show_defaults(parser: argparse.ArgumentParser, config: RunConfig,
                   fork: bool = False) -> None:
    """Every option's help line ends with what happens without it: its default (a RunConfig
    option's from `config`, the one place defaults live, the demo's own for `demo`; for a fork,
    the parent's), "required", or for a --no-X flag what happens without the flag."""
    tiny = config.models.models == "tiny"
    for action in parser._actions:
        if not action.option_strings or argparse.SUPPRESS in (action.help, action.default):
            continue
        said = action.help or ""
        if action.required:
            note = "required"
        elif "default" in said or "without it" in said:
            continue
        elif fork and action.dest in OPTION_FIELDS:
            takes_value = action.nargs != 0
            note = "default: the parent's" if takes_value else "without it: as the parent ran"
        elif isinstance(action, argparse._StoreFalseAction) and action.dest in WITHOUT_FLAG:
            note = f"without it: {WITHOUT_FLAG[action.dest]}"
        else:
            note = f"default: {_default_text(action, config, tiny)}"
        note = note.replace("%", "%%")
        action.help = f"{said} ({note})" if said else note


def _default_text(action: argparse.Action, config: RunConfig, tiny: bool) -> str:
    if action.dest in OPTION_FIELDS:
        section, name = OPTION_FIELDS[action.dest]
        value = getattr(getattr(config, section), name)
        if action.dest in ("generator_model", "caption_model", "clip_model") and tiny:
            value = f"the tiny checkpoint, since --models tiny; with --models real: {value}"
        elif action.dest == "generator_model":
            value = f"the --generator family's own; for {config.models.generator}: {value}"
        elif action.dest == "caption_model":
            value = f"the --captioner family's own; for {config.models.captioner}: {value}"
        elif action.dest in ("width", "height", "scheduler"):
            value = "the model's own" if value in (None, "default") else value
        elif action.dest == "negative_prompt" and value == SEED_NEGATIVE_PROMPT:
            value = "the seed script's negative prompt"
        elif action.dest == "cuda_graphs":
            value = "graphs on" if value else "graphs off"
        elif action.dest == "generations" and not value:
            value = "off: the loop's own stop rules"
    elif action.dest == "preset":
        value = "none"
    elif action.dest in ("size", "columns") and action.default is None:
        value = "fitted to the run"
    else:
        value = action.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == []:
        return "none"
    return str(value)


def _add_ui_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--headless", action="store_true",
                        help="no TUI: print one line per iteration (default: when stdout is not "
                             "a TTY)")
    parser.add_argument("--json", action="store_true",
                        help="headless, for scripts: one JSON object per line on stdout (started, "
                             "one per iteration, then the summary); notes and errors on stderr "
                             "(default: off)")
    parser.add_argument("--notify", action="store_true",
                        help="headless: ring the terminal's bell when the run converges, and "
                             "send a desktop notification where notify-send is (default: off)")
    parser.add_argument("--preview", choices=PREVIEWS, default="auto",
                        help="TUI image preview: terminal graphics, half-blocks or none")
    parser.add_argument("--no-live-preview", dest="live_preview", action="store_false",
                        help="TUI: do not show the image while it denoises; p toggles it "
                             "either way")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="run directory (default: RUNS_DIR/<time>-<input name>)")
    parser.add_argument("--runs-dir", default=None,
                        help="where new run directories go (default: $TRUTHLOOP_RUNS_DIR if "
                             f"set, else ./{DEFAULT_RUNS_DIR})")
    _add_config_options(parser)
    _add_ui_options(parser)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """Every RunConfig option (OPTION_FIELDS): `run`, `demo` and `sweep` share them."""
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="article: the seed script's exact stack (shared generator, best "
                             "mode, chunk_size 400, SD2 768, 50 steps)")
    models = parser.add_argument_group("models")
    models.add_argument("--models", choices=("real", "tiny"),
                        help="tiny: offline random-weight checkpoints (machinery, not truth)")
    models.add_argument("--generator", choices=tuple(GENERATORS),
                        help="the family that draws (`truthloop models` lists them)")
    models.add_argument("--captioner", choices=tuple(CAPTIONERS),
                        help="the family that describes (`truthloop models` lists them)")
    models.add_argument("--generator-model", "--sd-model", dest="generator_model",
                        help="a hub id or local directory of the --generator family "
                             "(Stability AI's withdrawn SD2 ids load their mirror)")
    models.add_argument("--caption-model", help="a hub id or local directory of the --captioner "
                        "family; for clip-interrogator and blip also blip-large or blip-base")
    models.add_argument("--clip-model", help="open_clip ARCH/PRETRAINED or ARCH/path/to/ckpt")
    models.add_argument("--device", choices=DEVICES)
    models.add_argument("--low-vram", action="store_true", default=None,
                        help="offload models to the CPU between uses")
    caption = parser.add_argument_group("caption step")
    caption.add_argument("--instruction", help="what a vision-language captioner is asked "
                         "(florence-2: a task token such as <CAPTION>) (default: the family's "
                         f"own: {DEFAULT_INSTRUCTION!r}; florence-2 <DETAILED_CAPTION>)")
    caption.add_argument("--mode", choices=CAPTION_MODES)
    caption.add_argument("--chunk-size", type=int)
    caption.add_argument("--flavor-intermediate-count", type=int)
    caption.add_argument("--caption-max-length", type=int)
    caption.add_argument("--interrogator", choices=INTERROGATORS,
                         help="fast: truthloop's exact re-implementation; reference: "
                              "clip-interrogator itself")
    generate = parser.add_argument_group("image step")
    generate.add_argument("--steps", type=int)
    generate.add_argument("--guidance", type=float)
    generate.add_argument("--width", type=int)
    generate.add_argument("--height", type=int)
    generate.add_argument("--scheduler", choices=SCHEDULERS)
    generate.add_argument("--negative-prompt", help="what the image should not show (\"\" for "
                          "none)")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--seed-mode", choices=SEED_MODES)
    generate.add_argument("--compile", action="store_true", default=None,
                          help="torch.compile the generator's UNet or transformer and VAE, "
                               "and a captioner family's decode step (CUDA; pays off on long "
                               "runs)")
    generate.add_argument("--no-compile", dest="compile", action="store_false",
                          help="eager kernels, nothing compiled")
    generate.add_argument("--fp8", action="store_true", default=None,
                          help="float8 UNet linear layers (torchao; Ada/Hopper GPUs): faster "
                               "drawing, other images; recorded in run.json")
    generate.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                          default=None, help="launch every kernel eagerly instead of replaying "
                          "CUDA graphs; same numbers either way (for debugging)")
    loop = parser.add_argument_group("loop")
    loop.add_argument("--clauses", type=int, help="compare (and feed) only the first N comma "
                      "clauses; 0 = whole caption")
    loop.add_argument("--feed", choices=FEED_MODES, help="cut: feed the cut prompt; full: feed "
                      "the whole caption, compare the cut (the article's printed code)")
    loop.add_argument("--max-iters", type=int)
    loop.add_argument("--confirm-iters", type=int,
                      help="after the first repeat, keep going N iterations to confirm the cycle")
    loop.add_argument("--converge", choices=LoopConfig.CONVERGE_CRITERIA,
                      help="exact: a compared prompt repeats word for word; text / image: a near "
                           "repeat (CLIP cosine >= --near-threshold to an earlier iteration, "
                           "--near-window in a row)")
    loop.add_argument("--near-threshold", type=float, metavar="COSINE",
                      help="--converge text|image: the cosine that makes a near repeat")
    loop.add_argument("--near-window", type=int, metavar="N",
                      help="--converge text|image: near repeats in a row that end the run")
    loop.add_argument("--control", choices=[c for c in LoopConfig.CONTROLS if c],
                      help="a control run: generator-only redraws the start prompt with a new "
                           "seed each iteration; captioner-only captions the start image again; "
                           "both run to --max-iters")
    loop.add_argument("--generations", type=int, metavar="N",
                      help="a fixed-length chain, as the Telephone Game runs them: N of its "
                           "generations after the start (each caption and each image one; its "
                           "scripts read 20: 10 images and 10 captions), never stopping at a "
                           "repeat; instead of --max-iters")


def config_from_args(args: argparse.Namespace, demo: bool = False) -> RunConfig:
    """Defaults, then the demo's, the preset's and the pair's (the --generator and --captioner
    families' checkpoints and settings), then what the user said."""
    config = RunConfig()
    said = options_given(args)
    if demo:
        apply_demo(config)
    if getattr(args, "preset", None):
        if said & {"generator", "captioner"}:
            raise UserError(f"--preset {args.preset} is the seed script's own pair (sd + "
                            f"clip-interrogator); leave out --generator and --captioner")
        apply_preset(config, args.preset)
    for dest in ("generator", "captioner"):
        if dest in said:
            setattr(config.models, dest, getattr(args, dest))
    apply_pair_defaults(config, said)
    for dest, (section, name) in OPTION_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            setattr(getattr(config, section), name, value)
    try:
        check_options_given(config, said)
    except ConfigError as error:
        raise UserError(str(error)) from None
    return config


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # bare `truthloop` (or only --options): what it can do
            parser.print_help()
            return 0
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("truthloop: interrupted", file=sys.stderr)
        return 130


# -- commands ---------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace, demo: bool = False) -> int:
    from truthloop.images import BadImage, load_input_image
    from truthloop.store import run_dir_name

    if demo:
        args.image, args.prompt = str(SAMPLE_IMAGE), None
    if args.image and args.prompt is not None:
        raise UserError("give an image or --prompt, not both")
    if not args.image and args.prompt is None:
        raise UserError("give a start image, or --prompt TEXT")
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty")
    config = config_from_args(args, demo=demo)
    input_image = None
    if args.image:
        try:
            input_image = load_input_image(args.image)
        except BadImage as error:
            raise UserError(str(error)) from None
        config.input_image = str(Path(args.image).resolve())
    else:
        config.start_prompt = args.prompt
    try:
        config.validate()
    except ConfigError as error:
        raise UserError(str(error)) from None
    label = Path(args.image).stem if args.image else "prompt"
    if args.out:
        out = Path(args.out)
    else:
        from truthloop.paths import runs_dir

        out = (Path(args.runs_dir) if args.runs_dir else runs_dir()) / run_dir_name(label)
    return _drive(args, config, out, input_image=input_image)


def cmd_demo(args: argparse.Namespace) -> int:
    return cmd_run(args, demo=True)


def cmd_resume(args: argparse.Namespace) -> int:
    from truthloop.store import RunDirError, read_run

    try:
        view = read_run(Path(args.run_dir))
    except RunDirError as error:
        raise UserError(str(error)) from None
    if view.status == "converged" and args.max_iters is None:
        print(f"{visible(args.run_dir)} already converged; nothing to resume")
        return 0
    return _drive(args, None, Path(args.run_dir), resume=True, iterations=len(view.records))


def _refuse_nothing_to_resume(run_dir: Path, iterations: int, config: RunConfig,
                              asked: int | None) -> None:
    """A resume whose iteration limit the run has already reached would load the models only to
    stop: say so at once, with the flag that goes on."""
    lp = config.loop
    if iterations < lp.iteration_limit(config.start_prompt is None):
        return
    if lp.generations:
        raise UserError(f"{run_dir} already ran its --generations {lp.generations}; a "
                        f"fixed-length chain does not go on")
    max_iters = lp.max_iters
    if asked is None:
        raise UserError(f"{run_dir} already ran to its --max-iters {max_iters} "
                        f"({count(iterations, 'iteration')}); to go on, pass --max-iters "
                        f"with a number above {iterations}")
    raise UserError(f"--max-iters {asked} is not above the {count(iterations, 'iteration')} "
                    f"{run_dir} already has; pass a number above {iterations} to go on")


def cmd_view(args: argparse.Namespace) -> int:
    from truthloop.store import RunDirError, read_run
    from truthloop.sweep.spec import is_sweep_dir

    if is_sweep_dir(Path(args.run_dir)):
        return _view_sweep(args)
    try:
        read_run(Path(args.run_dir))
    except RunDirError as error:
        raise UserError(str(error)) from None
    if not sys.stdout.isatty():
        raise UserError("`view` needs a terminal; for a plain listing use `truthloop runs`")
    from tui import view_tui

    return view_tui(Path(args.run_dir), preview=args.preview, forker=_fork_maker())


def _view_sweep(args: argparse.Namespace) -> int:
    """`view SWEEP_DIR`: the sweep's table (tui/sweep_view.py); Enter opens a trajectory."""
    from truthloop.sweep.spec import SpecError, read_spec

    try:
        read_spec(Path(args.run_dir))
    except SpecError as error:
        raise UserError(str(error)) from None
    if not sys.stdout.isatty():
        raise UserError("`view` needs a terminal; for a plain listing read "
                        f"{args.run_dir}/trajectories.jsonl")
    from tui.sweep_view import run_sweep_view

    return run_sweep_view(Path(args.run_dir), preview=args.preview)


def cmd_models(args: argparse.Namespace) -> int:
    from truthloop.catalog import catalog, catalog_lines

    rows = catalog()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("\n".join(catalog_lines(rows)))
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from truthloop.ml.backends import quiet_libraries
    from truthloop.ml.tiny import build_tiny_models

    quiet_libraries()
    tiny = build_tiny_models()
    print(f"tiny checkpoints in {tiny.root}")
    return 0


# -- looking back: runs, export ----------------------------------------------------------------
# -- the commands -----------------------------------------------------------------------------
def _add_lookback_commands(sub: Any) -> None:
    runs = sub.add_parser(
        "runs", help="a table of the runs in a directory "
                     f"(default: $TRUTHLOOP_RUNS_DIR if set, else ./{DEFAULT_RUNS_DIR})",
        description="One row per run directory in DIR (a sweep directory's runs, or DIR "
                    "itself, if it is a run): its start, status, images drawn, cycle, truth "
                    "prompt, work time, models, seed mode and clauses; one line each, the truth "
                    "cut to fit, the least needed columns left out in a narrow terminal. A "
                    "fork's start is its parent and iteration.")
    runs.add_argument("dir", nargs="?", default=None, metavar="DIR",
                      help=f"default: $TRUTHLOOP_RUNS_DIR if set, else ./{DEFAULT_RUNS_DIR}")
    runs.add_argument("--json", action="store_true", help="JSON instead of a table")

    export_parser = sub.add_parser(
        "export", help="GIF / MP4 / contact sheet / drift plot / HTML page of a run",
        description="Export a run (finished, stopped or still running) into RUN_DIR/exports/ "
                    "(or --out). With no kind flag: --gif and --sheet.")
    export_parser.add_argument("run_dir", metavar="RUN_DIR")
    kinds = export_parser.add_argument_group("what to export")
    kinds.add_argument("--gif", action="store_true", help="animated GIF of the trajectory")
    kinds.add_argument("--mp4", action="store_true",
                       help="MP4 of the trajectory (needs ffmpeg on PATH or imageio-ffmpeg)")
    kinds.add_argument("--sheet", action="store_true", help="contact sheet PNG")
    kinds.add_argument("--drift", action="store_true",
                       help="PNG plot of similarity to start / previous image")
    kinds.add_argument("--html", action="store_true",
                       help="one HTML page of the run (open it in a browser); its images are "
                            "hard links to the run's beside it, or where the file system "
                            "cannot link, the run's own by relative path")
    kinds.add_argument("--all", action="store_true", help="every kind (mp4 if an encoder exists)")
    kinds.add_argument("--telephone-game", metavar="OUT",
                       help="(RUN_DIR: a sweep run with --generations) its chains in the "
                            "Telephone Game's layout, which its published scripts read "
                            "unchanged: OUT/text-first/ and OUT/image-first/, gen-k.csv "
                            "(filename, caption) and gen-k/ (images); one layout per grid point")
    export_parser.add_argument("--out", metavar="DIR", help="where to write (default "
                               "RUN_DIR/exports/)")
    export_parser.add_argument("--fps", type=float, default=2.0,
                               help="frames per second of GIF/MP4 (default 2)")
    export_parser.add_argument("--no-captions", dest="captions", action="store_false",
                               help="frames and tiles without the prompt text")
    export_parser.add_argument("--cycle-only", action="store_true",
                               help="the contact sheet shows only the truth cycle")
    export_parser.add_argument("--self-contained", action="store_true",
                               help="the page's folder works on its own (moved, sent): its "
                                    "images are copied where they cannot be hard-linked")
    export_parser.add_argument("--size", type=int, help="image side in pixels on frames/tiles")
    export_parser.add_argument("--columns", type=int, help="contact sheet columns")
    export_parser.add_argument("--json", action="store_true",
                               help="print what was written as one JSON object (files with "
                                    "their kind, path, bytes and layout; kinds skipped and why)")


def cmd_lookback(args: argparse.Namespace) -> int:
    """`runs` and `export`: their one-line errors become UserErrors (exit 2; 1 for no encoder)."""
    from truthloop.lookback import telephone_command
    from truthloop.lookback.export import EXPORT_KINDS
    from truthloop.lookback.runs import ExportError
    from truthloop.lookback.video import MP4_NEEDS_ENCODER

    try:
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "export" and args.telephone_game is not None:
            others = [kind for kind in (*EXPORT_KINDS, "all") if getattr(args, kind, False)]
            if others:
                raise UserError(f"--telephone-game writes a layout of its own; leave out "
                                f"--{others[0]}")
            return telephone_command.cmd_export_layout(args.run_dir, args.telephone_game)
        if args.command == "export":
            return cmd_export(args)
    except ExportError as error:
        code = 1 if str(error) == MP4_NEEDS_ENCODER else 2
        raise UserError(str(error), code=code) from None
    except BrokenPipeError:  # `truthloop runs --json | head`: the reader left, that is fine
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        except OSError:
            pass
        return 0
    raise UserError(f"unknown command {args.command!r}")


def cmd_runs(args: argparse.Namespace) -> int:
    from truthloop.lookback.runs import list_runs, runs_folder, runs_table
    from truthloop.paths import runs_dir

    if args.dir is None:
        args.dir = str(runs_dir())
    rows = list_runs(args.dir)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console

    # A terminal's own width, or COLUMNS where it is set; 160 into a pipe or a file.
    console = Console(highlight=False, markup=False, emoji=False,
                      width=None if os.isatty(1) or os.environ.get("COLUMNS", "").isdigit()
                      else 160)
    folder = runs_folder(args.dir)
    if not rows:
        console.print(f"no runs in {visible(str(folder))}")
        return 0
    console.print(runs_table(rows, title=f"{count(len(rows), 'run')} in {folder}",
                             width=console.width))
    return 0



def cmd_export(args: argparse.Namespace) -> int:
    from truthloop.lookback.export import DEFAULT_KINDS, EXPORT_KINDS, export
    from truthloop.lookback.video import find_encoder

    from truthloop.lookback.video import MP4_SKIPPED

    kinds = [kind for kind in EXPORT_KINDS if getattr(args, kind, False)]
    skipped = []
    if args.all:
        kinds = [kind for kind in EXPORT_KINDS if kind != "mp4" or find_encoder() or args.mp4]
        if "mp4" not in kinds:
            skipped.append({"kind": "mp4", "reason": MP4_SKIPPED})
    if not kinds:
        kinds = list(DEFAULT_KINDS)
    started = time.perf_counter()
    results = export(args.run_dir, kinds, out=args.out, fps=args.fps, captions=args.captions,
                     cycle_only=args.cycle_only, size=args.size, columns=args.columns,
                     self_contained=args.self_contained)
    if args.json:
        files = [{key: str(value) if isinstance(value, Path) else value
                  for key, value in result.items()} | {"bytes": Path(result["path"]).stat().st_size}
                 for result in results]
        print(json.dumps({"run_dir": str(Path(args.run_dir).resolve()),
                          "files": files, "skipped": skipped,
                          "seconds": round(time.perf_counter() - started, 3)},
                         ensure_ascii=False, indent=2))
        return 0
    for item in skipped:
        print(f"skipped {item['kind']}: {item['reason']}")
    for result in results:
        path = Path(result["path"])
        details = ""
        if "frames" in result:
            details = f"{count(result['frames'], 'frame')}, {result['width']}x{result['height']}"
        elif "tiles" in result:
            details = f"{count(result['tiles'], 'tile')}, {result['columns']}x{result['rows']} grid"
        elif "points" in result:
            details = f"{count(result['points'], 'point')}; series in {result['csv'].name}"
        elif "iterations" in result:
            details = (f"{count(result['iterations'], 'iteration')}; {_page_images(result)}; "
                       f"open file://{path.resolve()}")
        size_kb = path.stat().st_size / 1024
        print(f"wrote {visible(str(path))} ({details}, {size_kb:.0f} KB)")
    print(f"exported in {time.perf_counter() - started:.1f}s")
    return 0


def _page_images(result: dict[str, Any]) -> str:
    """Where the page's images are, for the line that says it was written."""
    ways = result.get("images") or {}
    said = []
    if ways.get("linked"):
        said.append(f"{count(ways['linked'], 'image')} hard-linked in index_files/")
    if ways.get("copied"):
        said.append(f"{count(ways['copied'], 'image')} copied into index_files/")
    if ways.get("referenced"):
        said.append(f"{count(ways['referenced'], 'image')} shown from the run by relative path "
                    f"(no hard links here; --self-contained copies them)")
    return ", ".join(said) or "no images"


# -- fork and compare ------------------------------------------------------------------------------
def _add_fork_compare_commands(sub: Any) -> None:
    fork = sub.add_parser(
        "fork", help="a new run from iteration K's image of a run (change any run option), or "
                     "from your caption in place of K's (--prompt)",
        description="A new run that starts from iteration K's image of RUN_DIR (captioned first), "
                    "with RUN_DIR's options and the ones given here; run.json records the parent "
                    "and K. With the same options (reseed mode) it replays the parent from there. "
                    "With --prompt TEXT, your text takes the place of iteration K's caption: the "
                    "fork's iteration 0 draws it (cut by --clauses like any caption), marked as "
                    "yours in its record.")
    fork.add_argument("run_dir", metavar="RUN_DIR")
    fork.add_argument("--at", type=int, required=True, metavar="K",
                      help="the parent's iteration whose image the fork starts from (with "
                           "--prompt: whose caption your text replaces)")
    fork.add_argument("--prompt", metavar="TEXT", default=None,
                      help="your caption in place of iteration K's: the fork draws it first "
                           "(a person's turn, marked as such)")
    fork.add_argument("--out", help="the fork's run directory (default: beside the parent)")
    fork.add_argument("--runs-dir", help="where the fork's directory goes (default: the "
                      "parent's folder)")
    _add_config_options(fork)
    _add_ui_options(fork)
    for action in fork._actions:  # a fork takes its parent's options: no preset (refused)
        if action.dest == "preset":
            action.help = argparse.SUPPRESS

    compare = sub.add_parser(
        "compare", help="two runs side by side: where they first differ, same attractor?",
        description="Two runs' iterations aligned (a fork beside its parent from where it "
                    "started), the captions diffed, where they first differ and whether they end "
                    "in the same attractor. In the terminal app, or --html PAGE.")
    compare.add_argument("run_a", metavar="RUN_A")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.add_argument("--html", metavar="PAGE", help="write a self-contained HTML page")
    compare.add_argument("--preview", choices=PREVIEWS, default="auto")


def _fork_options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in OPTION_FIELDS}


def cmd_fork(args: argparse.Namespace) -> int:
    from truthloop.config import ConfigError
    from truthloop.fork import ForkError, plan_fork
    from truthloop.store import RunDirError

    if args.preset:
        raise UserError("a fork starts from its parent's options; give the ones to change, "
                        "not --preset")
    try:
        plan = plan_fork(Path(args.run_dir), args.at, _fork_options(args),
                         out=Path(args.out) if args.out else None,
                         runs_dir=Path(args.runs_dir) if args.runs_dir else None,
                         said=options_given(args), prompt=args.prompt)
    except (ForkError, RunDirError, ConfigError) as error:
        raise UserError(str(error)) from None
    try:
        image = plan.input_image()
    except OSError as error:
        raise UserError(f"cannot read {plan.image_path}: {error}") from None
    from truthloop.fork import describe_changed

    yours = ", your prompt in place of its caption" if plan.prompt is not None else ""
    print(f"fork of {visible(str(plan.parent.path))} at #{plan.at}{yours} "
          f"({visible(describe_changed(plan.changed))})", file=sys.stderr)
    return _drive(args, plan.config, plan.out, input_image=image, run_info=plan.run_info)


def _fork_maker() -> Any:
    """For the TUI's `f` and `w`: (parent run, K, options, prompt=None: a person's caption in
    place of K's) -> a fork's TruthLoop, not yet run. Raises the core's one-line errors
    (ForkError, RunDirError, ConfigError) for the form to show."""

    def make(parent_dir: Path, at: int, options: dict[str, Any],
             prompt: str | None = None) -> Any:
        from truthloop.fork import make_fork_loop, plan_fork
        from truthloop.loop import LoopControl

        plan = plan_fork(Path(parent_dir), at, options, prompt=prompt)
        control = LoopControl()
        factory = _loading_factory(control)
        factory.check(plan.config)  # before the fork's directory is made
        return _in_own_process(make_fork_loop(plan, factory, control=control))

    return make


def cmd_compare(args: argparse.Namespace) -> int:
    from truthloop.compare import CompareError, compare_runs
    from truthloop.store import RunDirError

    try:
        comparison = compare_runs(Path(args.run_a), Path(args.run_b))
    except (RunDirError, CompareError) as error:
        raise UserError(str(error)) from None
    if args.html:
        from truthloop.lookback.compare_page import write_page

        out = Path(args.html)
        if out.is_dir():
            raise UserError(f"{out} is a directory; give --html a file name")
        try:
            write_page(comparison, out)
        except OSError as error:
            raise UserError(f"cannot write {out}: {error.strerror or error}") from None
        for line in comparison.lines():
            print(visible(line))
        print(f"wrote {visible(str(out))}; open file://{out.resolve()}")
        return 0
    if sys.stdout.isatty() and sys.stdin.isatty():
        from tui import compare_tui

        return compare_tui(comparison.a.path, comparison.b.path, preview=args.preview)
    for line in comparison.lines():
        print(visible(line))
    for row in comparison.rows:
        a = f"#{row.a.index} {visible(row.a.fed_prompt)}" if row.a else "-"
        b = f"#{row.b.index} {visible(row.b.fed_prompt)}" if row.b else "-"
        print(f"{a}\t{b}")
    return 0


# -- sweeps: the sweep and atlas commands live in truthloop.sweep.command --------------------------
def _add_sweep_commands(sub: Any) -> None:
    from truthloop.sweep.command import add_parsers  # light: no Ray, no torch

    add_parsers(sub, _add_config_options)


def cmd_sweep_or_atlas(args: argparse.Namespace) -> int:
    from truthloop.sweep.command import CommandError, cmd_atlas, cmd_sweep

    try:
        if args.command == "atlas":
            return cmd_atlas(args)
        return cmd_sweep(args, config_from_args(args))
    except CommandError as error:
        raise UserError(str(error), code=error.code) from None


def cmd_caption(args: argparse.Namespace) -> int:
    def load(config: RunConfig, emit: Any) -> Any:  # the run's loading path, captioner side
        from truthloop.ml.backends import load_captioner_side

        return load_captioner_side(config, emit)

    def check(config: RunConfig) -> None:  # its refusals before anything loads (OneLineError)
        from truthloop.ml.models import check_before_loading

        check_before_loading([config], captioner_alone=True)

    load.check = check  # type: ignore[attr-defined]
    return caption_command.cmd_caption(args, config_from_args, load)


def cmd_measure(args: argparse.Namespace) -> int:
    def load(named: Any, tiny: bool, device: str) -> Any:
        from truthloop.ml.backends import quiet_libraries
        from truthloop.ml.embedders import load_embedder

        quiet_libraries()
        return load_embedder(named, tiny, device)

    def check(chosen: list[Any], tiny: bool) -> None:  # OneLineError before anything loads
        from truthloop.ml.embedders import check

        check(chosen, tiny)

    load.check = check  # type: ignore[attr-defined]
    return measure_command.cmd_measure(args, load)


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "resume": cmd_resume, "view": cmd_view,
            "tiny": cmd_tiny, "models": cmd_models, "report": report_command.cmd_report,
            "import-telephone-game": telephone_command.cmd_import,
            "caption": cmd_caption, "measure": cmd_measure,
            "runs": cmd_lookback, "export": cmd_lookback,
            "sweep": cmd_sweep_or_atlas, "atlas": cmd_sweep_or_atlas,
            "fork": cmd_fork, "compare": cmd_compare}


# -- driving a loop ---------------------------------------------------------------------------
def _loading_factory(control: Any) -> Any:
    """The real backends, with a stop check at every progress report so Ctrl-C works mid-load.
    Imports the torch stack only when called (the app's process never does: its engine runs in
    a process of its own, truthloop.engine, which calls this by name)."""

    def factory(config: RunConfig, emit: Any) -> Any:
        from truthloop.ml.backends import load_backends

        def emit_and_check(event: ev.Event) -> None:
            emit(event)
            control.checkpoint(on_pause=lambda: emit(ev.Paused(0)),
                               on_resume=lambda: emit(ev.Resumed(0)))

        return load_backends(config, emit_and_check)

    factory.check = _check_before_loading  # type: ignore[attr-defined]
    return factory


def _check_before_loading(config: RunConfig) -> None:
    """The real backends' refusals that need no model loaded (--fp8 on a CPU, a checkpoint that
    is not there), as one UserError: run before the run directory is made."""
    from truthloop.errors import OneLineError
    from truthloop.ml.models import check_before_loading

    try:
        check_before_loading([config])
    except OneLineError as error:
        raise UserError(str(error)) from None


def _drive(args: argparse.Namespace, config: RunConfig | None, run_dir: Path,
           input_image: Any = None, resume: bool = False,
           run_info: dict[str, Any] | None = None, iterations: int = 0) -> int:
    """Run (or resume: `iterations`, the run's records so far) a loop headless or in the TUI."""
    from truthloop.loop import LoopControl, TruthLoop
    from truthloop.store import RunDirError, is_locked

    control = LoopControl()
    factory = _loading_factory(control)
    try:
        if resume:
            loop = TruthLoop.for_resume(
                run_dir, factory, control=control, max_iters=getattr(args, "max_iters", None),
                options={name: getattr(args, name, None)
                         for name in ("device", "low_vram", "cuda_graphs", "compile")})
        else:
            loop = TruthLoop(config, run_dir, factory, control=control, input_image=input_image,
                             run_info=run_info)
        # What can be refused before the run directory is made or reopened, unless another
        # process writes it (the loop then says so first). Fake backends (tests) check nothing.
        check = getattr(factory, "check", None)
        if not is_locked(run_dir):
            if resume:
                _refuse_nothing_to_resume(run_dir, iterations, loop.config,
                                          getattr(args, "max_iters", None))
            if check is not None:
                check(loop.config)
    except (RunDirError, ConfigError) as error:
        raise UserError(str(error)) from None

    if not args.headless and not getattr(args, "json", False) and sys.stdout.isatty() \
            and sys.stdin.isatty():
        from tui import run_tui

        return run_tui(_in_own_process(loop), preview=args.preview, forker=_fork_maker(),
                       live_preview=args.live_preview)
    return _run_headless(loop, control, as_json=getattr(args, "json", False),
                         notify=getattr(args, "notify", False))


def _in_own_process(loop: Any) -> Any:
    """The app's loop runs in a process of its own, so drawing never slows it (issue 20);
    TRUTHLOOP_ENGINE=thread keeps it in the app's process (to measure the difference)."""
    if os.environ.get("TRUTHLOOP_ENGINE") == "thread":
        return loop
    from truthloop.engine import EngineProcess

    return EngineProcess(loop, _loading_factory)


def _run_headless(loop: Any, control: Any, as_json: bool = False, notify: bool = False) -> int:
    from truthloop.loop import OUT_OF_MEMORY, LoopFailed
    from truthloop.store import RunDirError

    printer = JsonPrinter(notify=notify) if as_json else HeadlessPrinter(notify=notify)
    printer.changed = dict(getattr(loop, "changed_options", {}) or {})
    loop.on_event = printer.handle
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the current step
        control.stop()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # `nohup` (or a background job): the user asked this run to outlive it
        previous[signum] = signal.signal(signum, on_signal)
    try:
        summary = loop.run()
    except RunDirError as error:
        raise UserError(str(error)) from None
    except LoopFailed as error:
        printer.close()
        if as_json:
            printer.print_summary(loop.summary, loop.run_dir)
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        print(f"run directory kept: {visible(str(loop.run_dir))}", file=sys.stderr)
        if str(error) == OUT_OF_MEMORY:  # the advice, as a command that works
            print(f"continue with: truthloop resume {visible(str(loop.run_dir))} --low-vram",
                  file=sys.stderr)
        return 1
    finally:
        printer.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    printer.print_summary(summary, loop.run_dir)
    if summary.get("status") == "stopped" and received:
        return 128 + received[0]
    return 0


class HeadlessPrinter:
    """Rich progress while loading; then one plain line per iteration on stdout. While an
    iteration runs, and only when stderr is a terminal, a transient progress line on stderr:
    its denoising step k/n, s/it and the time left to --max-iters (stdout's lines unchanged).
    With `notify`, the terminal's bell (and a desktop notification, where notify-send is) when
    the run converges."""

    def __init__(self, notify: bool = False) -> None:
        from rich.console import Console

        # soft_wrap: Rich would otherwise break long lines (a deep run directory's path) at
        # its width, 80 columns when stderr is not a terminal, and a log or a script would
        # read half a path.
        self.err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
        self.progress = None
        self.task = None
        self.iteration_start = time.perf_counter()
        self.notify = notify
        self.show_steps = _isatty(sys.stderr)
        self.steps = None  # the iteration's progress line (rich Progress), while one is shown
        self.steps_task = None
        self.max_iters: int | None = None
        self.generations = 0  # a fixed-length chain's (--generations), said at its end
        self.totals: list[float] = []  # wall seconds of the iterations drawn so far

    def _step_progress(self, event: ev.DenoiseStep) -> None:
        """The transient line: `iteration i  denoising ━━━━━ k/n  12.3 s/it  ≤ 4m05s to
        --max-iters 20`."""
        if self.steps is None:
            from rich.progress import BarColumn, Progress, TextColumn

            self.steps = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                  TextColumn("{task.completed}/{task.total}"),
                                  TextColumn("{task.fields[rate]}", markup=False),
                                  TextColumn("{task.fields[eta]}", markup=False),
                                  console=self.err, transient=True)
            self.steps.start()
            self.steps_task = self.steps.add_task("", total=event.total, rate="", eta="")
        rate, eta = "", ""
        recent = self.totals[-5:]
        if recent:
            per_iteration = sum(recent) / len(recent)
            rate = f"{per_iteration:.2f} s/it"
            if self.max_iters:
                elapsed = time.perf_counter() - self.iteration_start
                left = max(0.0, (self.max_iters - event.index) * per_iteration - elapsed)
                eta = (f"≤ {_duration(left)} to --generations {self.generations}"
                       if self.generations else
                       f"≤ {_duration(left)} to --max-iters {self.max_iters}")
        self.steps.update(self.steps_task, description=f"iteration {event.index}  denoising",
                          completed=event.step, total=event.total, rate=rate, eta=eta)

    def _end_steps(self) -> None:
        if self.steps is not None:
            self.steps.stop()
            self.steps = None

    def _notify(self, summary: dict[str, Any]) -> None:
        """The bell on the terminal (stderr), and notify-send where there is one."""
        import shutil
        import subprocess

        truths = summary.get("truth_prompts") or []
        message = clip(visible(str(truths[0])), 200) if truths else "a caption repeated"
        for stream in (sys.stderr, sys.stdout):
            if _isatty(stream):
                stream.write("\a")
                stream.flush()
                break
        sender = shutil.which("notify-send")
        if sender and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            try:
                subprocess.Popen([sender, "--app-name=truthloop", "truthloop converged", message],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            except OSError:
                pass  # a notification is a nicety

    def _progress(self) -> Any:
        if self.progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"),
                                     TimeElapsedColumn(), console=self.err, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("loading", total=None)
        return self.progress

    def close(self) -> None:
        self._end_steps()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    dead = False
    changed: dict[str, Any] = {}

    def handle(self, event: ev.Event) -> None:
        # Watching is best effort: a closed pipe (`| head`) or a dead SSH terminal must not end
        # the run; once a write fails, the rest goes nowhere and the run directory has it all.
        if self.dead:
            return
        try:
            self._handle(event)
        except OSError:
            self._die()

    def _die(self) -> None:
        self.dead = True
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # this one is gone: point it at /dev/null so the exit flush is quiet
                try:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
                except (OSError, ValueError):
                    pass

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            max_iters = (event.config or {}).get("loop", {}).get("max_iters")
            self.max_iters = max_iters if isinstance(max_iters, int) else None
            generations = (event.config or {}).get("loop", {}).get("generations")
            self.generations = generations if isinstance(generations, int) else 0
            if self.generations:  # the records its chain writes
                self.max_iters = chain_shape(self.generations,
                                             (event.config or {}).get("start_prompt") is None)[0]
            what = "resuming" if event.resumed_at else "run directory"
            self.err.print(f"{what}: {visible(event.run_dir)}")
            if self.changed:
                changed = ", ".join(f"{name.replace('_', '-')} {_option_text(value)}"
                                    for name, value in self.changed.items())
                self.err.print(f"changed for this segment: {changed}")
        elif isinstance(event, ev.Loading):
            progress = self._progress()
            progress.update(self.task, description=event.message, total=event.total,
                            completed=event.done or 0)
        elif isinstance(event, ev.Notice):
            if self.progress is not None:
                self.progress.console.print(f"note: {visible(event.message)}")
            else:
                self.err.print(f"note: {visible(event.message)}")
        elif isinstance(event, ev.Ready):
            self.close()
            self.err.print(f"models ready on {event.device} in {event.load_seconds:.1f}s")
        elif isinstance(event, ev.IterationStarted):
            self.iteration_start = time.perf_counter()
        elif isinstance(event, ev.DenoiseStep):
            if self.show_steps:
                self._step_progress(event)
        elif isinstance(event, ev.Finished):
            self._end_steps()
            if self.notify and event.summary.get("status") == "converged":
                self._notify(event.summary)
        elif isinstance(event, ev.IterationDone):
            self._end_steps()  # off the terminal before the line goes to stdout
            record = event.record
            if record.image and isinstance(record.timings.get("total"), (int, float)):
                self.totals.append(record.timings["total"])
            seconds = record.timings.get("total", 0.0)
            mark = f"  = #{record.repeat_of}" if record.repeat_of is not None else ""
            line = f"[{record.index:4d}] {seconds:6.2f}s  {visible(record.fed_prompt)}{mark}"
            print(line, flush=True)

    def print_summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        if self.dead:
            return
        try:
            self._print_summary(summary, run_dir)
        except OSError:
            self._die()

    def _print_summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        status = summary.get("status")
        cycle = summary.get("cycle")
        if status == "converged" and cycle:
            kind = "fixed point" if cycle["kind"] == "fixed_point" else \
                f"cycle of length {cycle['length']}"
            print(f"converged: {kind} starting at iteration {cycle['start']} "
                  f"(after {count(summary['iterations'], 'image')})")
            for prompt, image in zip(summary["truth_prompts"], summary["truth_images"]):
                print(f"truth: {visible(prompt)}  [{visible(str(run_dir / image))}]")
        elif status == "max_iters" and self.generations:
            print(f"ran its {count(self.generations, 'generation')} (--generations; "
                  f"{count(summary['iterations'], 'image')})")
        elif status == "max_iters":
            print(f"no repeat within {count(summary['iterations'], 'iteration')} "
                  "(--max-iters)")
        elif status == "stopped":
            print(f"stopped after {count(summary['iterations'], 'iteration')}; "
                  f"continue with: truthloop resume {visible(str(run_dir))}")
        print(f"run directory: {visible(str(run_dir))}")


class JsonPrinter(HeadlessPrinter):
    """`--json`: one JSON object per line on stdout, for scripts. {"type": "started", run_dir,
    resumed_at, config}; per iteration {"type": "iteration", run_dir, image_path (absolute, or
    null), ...the log.jsonl record}; last {"type": "summary", run_dir, ...summary.json}.
    Loading progress, notes and errors go to stderr as in the plain headless mode."""

    def _emit(self, data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.run_dir = Path(event.run_dir)
            self._emit({"type": "started", "run_dir": str(self.run_dir.resolve()),
                        "resumed_at": event.resumed_at, "changed": self.changed,
                        "config": event.config})
        elif isinstance(event, ev.IterationDone):
            record = event.record
            image = str((self.run_dir / record.image).resolve()) if record.image else None
            self._emit({"type": "iteration", "run_dir": str(self.run_dir.resolve()),
                        "image_path": image, **record.to_json()})
        elif not isinstance(event, ev.IterationStarted):
            super()._handle(event)

    def _print_summary(self, summary: dict[str, Any], run_dir: Path) -> None:
        self._emit({"type": "summary", "run_dir": str(Path(run_dir).resolve()), **summary})


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (ValueError, OSError):  # closed
        return False


def _option_text(value: Any) -> str:
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) \
        else str(value)


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
