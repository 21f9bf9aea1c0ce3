#!/usr/bin/env python3
"""Make transformers' wheel small enough to travel to the lent GPU box with Ray's in one call.

    python bench/slim_transformers_wheel.py transformers-5.25.0-py3-none-any.whl .whl/

A call to the box carries at most 64 MiB (the working tree included). Ray's slim wheel
(../shared/tools/slim_ray_wheel.py) is 43 MB and transformers' 13.8 MB, most of it the code of
~560 model families truthloop never loads. This keeps `transformers/models/<name>/` only for the
families in MODELS and rewrites RECORD to match: 13.8 MB -> ~2.8 MB. transformers imports a model's
package only when that model is asked for (its `models` package is lazy, the auto mappings are
names), so what is left loads exactly as before.

MODELS is what a run of every generator x captioner family, `truthloop measure` with every
embedder, and the benches' full-size builds imported (sys.modules after each, 2026-12-07:
transformers 5.25), and a few near relatives kept to spare a surprise on the box (t5, siglip2,
mistral, qwen2_5_vl, llava_next). Checked: the tiny runs of every pair give the same captions with
the slim package as with the whole one, and tests/test_fast_decode.py and
tests/test_family_janus_pro.py pass with it.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

MODELS = frozenset("""
    aimv2 align audioflamingo3 auto bart bert bit blip blip_2 clip dinov2 dinov2_with_registers
    encoder_decoder florence2 janus llama llava mpnet qwen2 qwen2_vl qwen3 qwen3_vl roberta siglip
    vit vit_mae
    t5 siglip2 mistral qwen2_5_vl llava_next
    bloom gpt2
""".split())

_MODEL_DIR = re.compile(r"transformers/models/([^/]+)/")


def _kept(name: str) -> bool:
    match = _MODEL_DIR.match(name)
    return match is None or match.group(1) in MODELS


def slim(src: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED,
                                                      compresslevel=9) as zout:
        for item in zin.infolist():
            if not _kept(item.filename):
                continue
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                rows = [r for r in data.decode().splitlines() if r.strip() and _kept(r.split(",")[0])]
                data = ("\n".join(rows) + "\n").encode()
            zout.writestr(item, data)
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: slim_transformers_wheel.py TRANSFORMERS_WHEEL OUT_DIR")
    out = slim(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{out}: {Path(sys.argv[1]).stat().st_size / 1e6:.1f} MB -> {out.stat().st_size / 1e6:.1f} MB")
