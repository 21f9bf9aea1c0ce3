"""The engine process's memory, as the status line shows it (it never imports torch itself)."""

from __future__ import annotations

import os
import sys


def memory_line() -> str:
    """This process's RSS, and its GPU memory once torch is loaded with CUDA."""
    parts = []
    try:
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"RSS {rss / 2**30:.1f} GiB" if rss >= 2**30 else f"RSS {rss / 2**20:.0f} MiB")
    except (OSError, ValueError, IndexError):
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            used = torch.cuda.memory_allocated() / 2**30
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            parts.append(f"GPU {used:.1f}/{total:.0f} GiB")
    except Exception:  # noqa: BLE001 - memory is a nicety; never let it break the status line
        pass
    return "  ".join(parts)
