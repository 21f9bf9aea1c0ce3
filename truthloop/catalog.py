"""`truthloop models`: each family's default checkpoint, its licence, size, the memory it needs,
and whether the user's Hugging Face cache holds it (nothing is downloaded or loaded to tell)."""

from __future__ import annotations

from typing import Any

from truthloop.families import CAPTIONERS, DEFAULT_CAPTIONER, DEFAULT_GENERATOR, GENERATORS
from truthloop.model_ids import CAPTION_MODEL_IDS, CLIP_HUB_IDS, DEFAULT_CLIP_MODEL, download_hint

# The file whose presence in the hub cache says a checkpoint was downloaded.
_MARKERS = {"generator": ("model_index.json",), "captioner": ("config.json",),
            "clip": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")}


def in_cache(repo: str, kind: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, marker), str)
               for marker in _MARKERS[kind])


def catalog() -> list[dict[str, Any]]:
    """One row per family: what `--generator NAME` / `--captioner NAME` loads by default."""
    rows = []
    for family in GENERATORS.values():
        repos = [(family.default_model, "generator")]
        rows.append(_row("generator", family, repos, family.name == DEFAULT_GENERATOR))
    for family in CAPTIONERS.values():
        repo = CAPTION_MODEL_IDS.get(family.default_model, family.default_model)
        rows.append(_row("captioner", family, [(repo, "captioner")],
                         family.name == DEFAULT_CAPTIONER))
    rows.append(_row("clip", CLIP_FAMILY, [(CLIP_HUB_IDS[DEFAULT_CLIP_MODEL], "clip")], True))
    return rows


class _Clip:
    name = DEFAULT_CLIP_MODEL
    title = "CLIP (every pair: drift measures, atlas; clip-interrogator's ranking)"
    licence = "MIT"
    download_gb = 1.7
    memory_gb = 1.0
    about = "OpenAI's CLIP ViT-L/14 through open_clip (--clip-model)"


CLIP_FAMILY = _Clip()


def _row(kind: str, family: Any, repos: list[tuple[str, str]], default: bool) -> dict[str, Any]:
    cached = [in_cache(repo, marker_kind) for repo, marker_kind in repos]
    return {
        "kind": kind, "family": family.name, "title": family.title, "default": default,
        "checkpoint": " + ".join(repo for repo, _ in repos), "licence": family.licence,
        "download_gb": family.download_gb, "memory_gb": family.memory_gb,
        "cached": all(cached),
        "download": " && ".join(download_hint(repo) for (repo, _), got in zip(repos, cached)
                                if not got),
        "about": family.about,
    }


def catalog_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table `truthloop models` prints."""
    header = ("", "family", "default checkpoint", "licence", "download", "memory", "in cache")
    body = [("*" if row["default"] else "", f"{row['kind'][:4]} {row['family']}",
             row["checkpoint"], row["licence"], f"{row['download_gb']:g} GB",
             f"~{row['memory_gb']:g} GB", "yes" if row["cached"] else "no") for row in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in (header, *body)]
    lines.append("")
    lines.append("* the default pair. gene = --generator NAME, capt = --captioner NAME; every "
                 "pair also loads the CLIP (--clip-model).")
    lines.append("memory: GPU memory at the family's defaults (fp16/bf16); licences as their "
                 "model cards give them.")
    missing = [row for row in rows if not row["cached"]]
    if missing:
        lines.append("Not in your Hugging Face cache (HF_HOME); on a connected machine:")
        lines.extend(f"  {row['family']}: {row['download']}" for row in missing)
    return lines
