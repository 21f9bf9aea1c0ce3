"""Recompress a wheel with LZMA so that .whl/ fits one device call's 64 MiB (docs/model-families.md).

pip reads a wheel with Python's zipfile, which reads LZMA members, and checks the files it writes
against the wheel's RECORD (hashes of the uncompressed files), so the installed files are the
same. Ray's slim wheel (../shared/tools/slim_ray_wheel.py) goes 42.8 -> 31.7 MB (~2 min here).

    python bench/recompress_wheel.py SRC.whl DEST_DIR
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def recompress(source: Path, destination: Path) -> Path:
    target = destination / source.name
    with zipfile.ZipFile(source) as wheel, zipfile.ZipFile(target, "w", zipfile.ZIP_LZMA) as out:
        for member in wheel.infolist():
            copied = zipfile.ZipInfo(member.filename, member.date_time)
            copied.external_attr = member.external_attr  # keeps the executable bits
            copied.compress_type = zipfile.ZIP_LZMA
            out.writestr(copied, wheel.read(member))
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/recompress_wheel.py SRC.whl DEST_DIR")
    source, destination = Path(sys.argv[1]), Path(sys.argv[2])
    if source.resolve().parent == destination.resolve():
        sys.exit("recompress_wheel: give another DEST_DIR than the wheel's own")
    target = recompress(source, destination)
    print(f"{source.name}: {source.stat().st_size / 1e6:.1f} -> {target.stat().st_size / 1e6:.1f} MB")
