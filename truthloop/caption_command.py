"""`truthloop caption PATH...`: caption every image in folders (recursively), for the CLI.

cli.py registers it (`caption_command.add_parser(sub)`); the walking, resuming and writing are
caption_folder.py's, the captioner is the run's own: cli.py hands over
ml/backends.load_captioner_side, the loading path of `truthloop run` (--models tiny included).
Core only: no torch, and Rich only for the bar on a terminal.

Exit status: 0 when every image is captioned (now or by an earlier run); 1 when some image could
not be read (each named on stderr, the rest captioned), as cp or rsync exit non-zero when some
file failed: a script sees that the set is not complete without reading stderr, and a rerun
captions nothing twice; 2 for bad input, found before any model loads (one line on stderr); 130
when interrupted (what was written is whole, and a rerun goes on from there).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

from truthloop.config import CAPTION_MODES, DEVICES, INTERROGATORS
from truthloop.errors import OneLineError
from truthloop.families import CAPTIONERS, DEFAULT_INSTRUCTION
from truthloop.text import first_line, visible

FORMATS = ("txt", "csv", "jsonl")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "caption", help="caption every image in folders (recursively): a .txt beside each, "
                        "or one CSV / JSONL; resumable",
        description="Caption every image under PATH (folders recursively, hidden ones passed "
                    "over) with any --captioner family, as `truthloop run` captions: NAME.txt "
                    "beside each image NAME.png, or one table (--format csv|jsonl --out FILE: "
                    "columns filename, caption). Resumable: an image whose caption is written "
                    "is skipped, and a caption file is never left half-written (a kill at any "
                    "moment, then the same command, ends with the files of an unbroken run). "
                    "Images that cannot be read are named on stderr and skipped; the exit "
                    "status is then 1.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders and image files")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=FORMATS, default=None,
                     help="txt: NAME.txt beside each image; csv: one table, columns filename "
                          "(the path under PATH) and caption; jsonl: one {\"filename\", "
                          "\"caption\"} a line (default: txt, or what --out's name ends with)")
    out.add_argument("--out", metavar="FILE", help="the csv or jsonl file (appended to: the "
                     "images it holds are skipped)")
    out.add_argument("--batch", type=int, default=1, metavar="N",
                     help="images per captioner call, where the family can batch (the "
                          "vision-language ones and blip; clip-interrogator goes one at a "
                          "time). Faster on a GPU; a batched caption can differ from the "
                          "one-at-a-time caption by a rounding")
    models = parser.add_argument_group("models")
    models.add_argument("--models", choices=("real", "tiny"),
                        help="tiny: offline random-weight checkpoints (machinery, not truth)")
    models.add_argument("--captioner", choices=tuple(CAPTIONERS),
                        help="the family that describes (`truthloop models` lists them)")
    models.add_argument("--caption-model", help="a hub id or local directory of the --captioner "
                        "family; for clip-interrogator and blip also blip-large or blip-base")
    models.add_argument("--clip-model", help="clip-interrogator's CLIP: open_clip "
                        "ARCH/PRETRAINED or ARCH/path/to/ckpt")
    models.add_argument("--device", choices=DEVICES)
    models.add_argument("--low-vram", action="store_true", default=None,
                        help="memory over speed: no CUDA graphs (their buffers stay "
                             "allocated); this command never loads an image model, nor a CLIP "
                             "beside a family captioner")
    caption = parser.add_argument_group("caption step")
    caption.add_argument("--instruction", help="what a vision-language captioner is asked "
                         "(florence-2: a task token such as <CAPTION>) (default: the family's "
                         f"own: {DEFAULT_INSTRUCTION!r}; florence-2 <DETAILED_CAPTION>)")
    caption.add_argument("--mode", choices=CAPTION_MODES,
                         help="clip-interrogator's: best, fast, classic, negative, or the BLIP "
                              "caption alone")
    caption.add_argument("--caption-max-length", type=int)
    caption.add_argument("--chunk-size", type=int)
    caption.add_argument("--flavor-intermediate-count", type=int)
    caption.add_argument("--interrogator", choices=INTERROGATORS,
                         help="fast: truthloop's exact re-implementation; reference: "
                              "clip-interrogator itself")
    return parser


def cmd_caption(args: argparse.Namespace, config_from_args: Any, load_captioner: Any) -> int:
    """cli.py hands over its `config_from_args` (the run's options, the family's defaults, its
    checks) and `load_captioner(config, emit) -> (captioner, {"device", ...})`, the captioner
    side of the run's loading path (ml.backends.load_captioner_side), whose `check(config)`
    raises what would stop it before anything loads."""
    from truthloop.caption_folder import (
        CaptionInputError, Progress, caption_all, find_images, open_output, output_format,
        summary,
    )

    try:
        form = output_format(args.format, args.out)
        if args.batch < 1:
            raise CaptionInputError(f"--batch must be 1 or more, not {args.batch}")
        config = config_from_args(args)
        if args.clip_model is not None and not CAPTIONERS[config.models.captioner].interrogates:
            raise CaptionInputError(f"--clip-model is clip-interrogator's CLIP; --captioner "
                                    f"{config.models.captioner} loads none here")
        # The run's own checks of the caption side (a run needs a start: here, the folder).
        replace(config, input_image=args.paths[0]).validate()
        images = find_images(args.paths)
        output = open_output(images, form, args.out)
        # The loader's refusals that need no model: a checkpoint that is not there, --device
        # cuda without a GPU.
        getattr(load_captioner, "check", lambda config: None)(config)
    except OneLineError as error:  # CaptionInputError, ConfigError, ModelUnavailable
        print(f"truthloop: error: {visible(str(error))}", file=sys.stderr)
        return 2

    batch = args.batch
    if batch > 1 and CAPTIONERS[config.models.captioner].interrogates:
        print(f"truthloop: note: {config.models.captioner} captions one image at a time; "
              f"--batch {batch} changes nothing", file=sys.stderr)
        batch = 1
    progress = Progress()
    for note in output.notes:
        progress.line(f"truthloop: note: {note}")
    captioner = LoadOnFirstUse(config, load_captioner, progress)
    started = time.monotonic()
    try:
        tally = caption_all(images, output, captioner, batch, progress, _load_image)
    except KeyboardInterrupt:
        stopped = "truthloop: interrupted"
        code = 130
    except OneLineError as error:  # a refusal the check before loading could not foresee
        stopped = f"truthloop: error: {visible(str(error))}"
        code = 2
    except Exception as error:  # noqa: BLE001 - the captioner failed (out of memory, ...)
        stopped = (f"truthloop: error: captioning stopped: {type(error).__name__}: "
                   f"{visible(first_line(error))}")
        code = 1
    else:
        progress.close()
        output.close()
        print(summary(tally, output.where, time.monotonic() - started))
        return 1 if tally.bad else 0
    progress.close()
    output.close()
    print(stopped, file=sys.stderr)
    if code != 2:
        print("truthloop: every caption written is whole; the same command goes on from there",
              file=sys.stderr)
    return code


def _load_image(path: Any) -> Any:
    from truthloop.images import load_input_image

    return load_input_image(path)


class LoadOnFirstUse:
    """The captioner, loaded when the first image needs it: a rerun over a folder that is done
    (its unreadable images named again) loads no model."""

    def __init__(self, config: Any, load: Any, progress: Any):
        self.config = config
        self.load = load
        self.progress = progress
        self.captioner: Any = None
        self.batched: Any = None
        self.shown: set[str] = set()

    def _emit(self, event: Any) -> None:
        from truthloop import events as ev

        if isinstance(event, ev.Notice):
            self.progress.line(f"truthloop: note: {visible(event.message)}")
        elif isinstance(event, ev.Loading) and event.message not in self.shown:
            self.shown.add(event.message)  # counted stages repeat their message: once each
            self.progress.line(visible(event.message))

    def __call__(self, images: list[Any]) -> list[str]:
        if self.captioner is None:
            started = time.monotonic()
            self.captioner, loaded = self.load(self.config, self._emit)
            self.batched = getattr(self.captioner, "caption_batch", None)
            self.progress.line(f"{self.config.models.captioner} ready on {loaded['device']} "
                               f"in {time.monotonic() - started:.1f}s")
            self.progress.restart_clock()
        if len(images) > 1 and self.batched is not None:
            return list(self.batched(images))
        return [self.captioner.caption(image) for image in images]
