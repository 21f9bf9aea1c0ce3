"""`truthloop models`: each family's default checkpoint, its licence, size, the memory it needs,
and whether the user's Hugging Face cache holds it (nothing is downloaded or loaded to tell)."""

from __future__ import annotations

from typing import Any

from truthloop.families import CAPTIONERS, DEFAULT_CAPTIONER, DEFAULT_GENERATOR, GENERATORS
from truthloop.model_ids import CAPTION_MODEL_IDS, CLIP_HUB_IDS, DEFAULT_CLIP_MODEL, download_hint
from truthloop.named_measures import EMBEDDERS

# The file whose presence in the hub cache says a checkpoint was downloaded.
# (A generator that is a transformers model, an autoregressive family's, has a config.json.)
_MARKERS = {"generator": ("model_index.json",), "captioner": ("config.json",),
            "transformers": ("config.json",),
            "clip": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")}


def cached_file(repo_id: str, filename: str) -> str | None:
    """The path of `filename` in the user's hub cache for `repo_id`'s current revision, or None
    (looks only at the cache; the loaders in ml/models.py ask the same)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def in_cache(repo: str, kind: str) -> bool:
    return any(cached_file(repo, marker) is not None for marker in _MARKERS[kind])


def catalog() -> list[dict[str, Any]]:
    """One row per family: what `--generator NAME` / `--captioner NAME` loads by default."""
    rows = [_row("generator", family, family.default_model, family.name == DEFAULT_GENERATOR)
            for family in GENERATORS.values()]
    rows += [_row("captioner", family, CAPTION_MODEL_IDS.get(family.default_model,
                                                              family.default_model),
                  family.name == DEFAULT_CAPTIONER) for family in CAPTIONERS.values()]
    rows.append(_row("clip", CLIP_FAMILY, CLIP_HUB_IDS[DEFAULT_CLIP_MODEL], True))
    rows += [_embedder_row(named) for named in EMBEDDERS.values()]
    return rows


def _embedder_row(named: Any) -> dict[str, Any]:
    """`truthloop measure --embedder NAME`'s model: from the hub cache, or (dreamsim) a package
    that fetches its own weights."""
    if named.repo is None:
        missing = named.missing_package()
        checkpoint, cached = f"the {named.package} package", not missing
        download = f"pip install {missing}" if missing else ""
    else:
        checkpoint, cached = named.repo, in_cache(named.repo, "transformers")
        download = "" if cached else download_hint(named.repo)
    return {"kind": "measure", "family": named.name, "title": named.label, "default": False,
            "checkpoint": checkpoint, "licence": named.licence,
            "download_gb": named.download_gb, "memory_gb": None, "cached": cached,
            "download": download,
            "about": f"{named.label}: {', '.join(named.measures)} (truthloop measure)"}


class _Clip:
    name = DEFAULT_CLIP_MODEL
    title = "CLIP (every pair: drift measures, atlas; clip-interrogator's ranking)"
    licence = "MIT"
    download_gb = 1.7
    memory_gb = 1.0
    about = "OpenAI's CLIP ViT-L/14 through open_clip (--clip-model)"


CLIP_FAMILY = _Clip()


def _row(kind: str, family: Any, repo: str, default: bool) -> dict[str, Any]:
    cached = in_cache(repo, "transformers" if getattr(family, "autoregressive", False) else kind)
    return {
        "kind": kind, "family": family.name, "title": family.title, "default": default,
        "checkpoint": repo, "licence": family.licence,
        "download_gb": family.download_gb, "memory_gb": family.memory_gb,
        "cached": cached, "download": "" if cached else download_hint(repo),
        "about": family.about,
    }


def catalog_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table `truthloop models` prints."""
    header = ("", "family", "default checkpoint", "licence", "download", "memory", "in cache")
    body = [("*" if row["default"] else "", f"{row['kind'][:4]} {row['family']}",
             row["checkpoint"], row["licence"],
             "-" if row["download_gb"] is None else f"{row['download_gb']:g} GB",
             "-" if row["memory_gb"] is None else f"~{row['memory_gb']:g} GB",
             "yes" if row["cached"] else "no") for row in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in (header, *body)]
    lines.append("")
    lines.append("* the default pair. gene = --generator NAME, capt = --captioner NAME; every "
                 "pair also loads the CLIP (--clip-model).")
    lines.append("meas = truthloop measure --embedder NAME (after the fact, fp32; memory: a few "
                 "hundred MB).")
    lines.append("memory: GPU memory at the family's defaults (fp16/bf16); licences: the "
                 "weights' (not the code's, where they differ).")
    unified = sorted({row["family"] for row in rows if row["kind"] == "generator"}
                     & {row["family"] for row in rows if row["kind"] == "captioner"})
    if unified:
        lines.append(f"{', '.join(unified)}: one checkpoint for both sides, loaded once where "
                     f"--generator and --captioner both name it.")
    # One line per download (a unified family's two rows are one checkpoint).
    missing = {(row["family"], row["download"]): row for row in rows if not row["cached"]}
    if missing:
        lines.append("Not in your Hugging Face cache (HF_HOME); on a connected machine:")
        lines.extend(f"  {family}: {download}" for family, download in missing)
    return lines
