"""What a run records of how it captioned and of what it loaded (issue 30, item 13), end to end
on the tiny checkpoints, each shaped as its real model's generation config: run.json's "decoding"
(the captioner checkpoint's own settings with sampling turned off), and under --models tiny its
"models_loaded" naming the tiny directories actually loaded (the config keeps the ids that
--models real would load); a tiny run resumed still continues as an unbroken one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faulthelpers import run_main
from truthloop.families import CAPTIONERS
from truthloop.store import read_run

START = "a red house on a hill, at dusk"

# What each captioner family's checkpoint decodes with, as run.json must record it.
GREEDY = {"num_beams": 1, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0,
          "length_penalty": 1.0, "early_stopping": False, "do_sample": False,
          "sampling_dropped": {}}
EXPECTED_DECODING = {
    # BLIP decodes in its text decoder, configured by config.json's text_config.
    "clip-interrogator": GREEDY | {"max_new_tokens": 32, "from": "config.json"},
    "blip": GREEDY | {"max_new_tokens": 32, "from": "config.json"},
    # Florence-2's checkpoints ship beam search: 3 beams, no repeated 3-gram, early stopping.
    "florence-2": GREEDY | {"num_beams": 3, "no_repeat_ngram_size": 3, "early_stopping": True,
                            "max_new_tokens": 77, "from": "generation_config.json"},
    "llava-1.5": GREEDY | {"max_new_tokens": 77, "from": "generation_config.json"},
    # Qwen3-VL's samples: truthloop decodes greedily and says what it dropped.
    # Janus-Pro's generation config samples only its image mode (temperature 1 is read when
    # sampling, and text is not sampled): nothing dropped.
    "janus-pro": GREEDY | {"max_new_tokens": 77, "from": "generation_config.json"},
    "qwen3-vl": GREEDY | {"max_new_tokens": 77, "from": "generation_config.json",
                          "sampling_dropped": {"do_sample": True, "temperature": 0.7,
                                               "top_k": 20, "top_p": 0.8}},
}


def settings(decoding: dict) -> dict:
    """The decoding settings of a recorded decoding (it may also say how the decode ran)."""
    return {name: decoding.get(name) for name in GREEDY | {"max_new_tokens": 0, "from": 0}}


def tiny_run(out: Path, captioner: str, iters: int) -> list[str]:
    """`truthloop run` of the sd generator and `captioner` on the tiny checkpoints."""
    fast = ["--mode", "fast", "--chunk-size", "400"] if CAPTIONERS[captioner].interrogates else []
    return ["run", "--prompt", START, "--models", "tiny", "--device", "cpu", "--captioner",
            captioner, *fast, "--steps", "2", "--max-iters", str(iters), "--headless",
            "--out", str(out)]


@pytest.mark.parametrize("captioner", list(CAPTIONERS))
def test_run_json_records_the_decoding_and_the_tiny_directories_loaded(tmp_path, captioner):
    from truthloop.ml.tiny import tiny_family_model, tiny_root

    out = tmp_path / "run"
    assert run_main(tiny_run(out, captioner, iters=2)) == 0
    info = json.loads((out / "run.json").read_text())
    assert settings(info["decoding"]) == EXPECTED_DECODING[captioner]
    # The config keeps the checkpoint --models real loads (a fork or a --models real rerun
    # takes it from there); models_loaded says what this run loaded: the tiny directories.
    assert info["config"]["models"]["caption_model"] == CAPTIONERS[captioner].default_model
    loaded = info["models_loaded"]
    assert set(loaded) == {"generator_model", "caption_model", "clip_model"}
    assert loaded["caption_model"]["path"] == \
        str(Path(tiny_family_model("captioner", captioner)).resolve())
    assert loaded["generator_model"]["path"] == \
        str(Path(tiny_family_model("generator", "sd")).resolve())
    root = str(tiny_root().resolve())
    assert all(str(entry["path"]).startswith(root) for entry in loaded.values()), loaded
    assert loaded == read_run(out).summary["models_loaded"]


def test_a_tiny_run_resumes_as_an_unbroken_one_and_keeps_its_first_record(tmp_path):
    """florence-2 (beam search): a tiny run stopped at 2 iterations and resumed to 4 gives the
    prompts of an unbroken 4-iteration run; run.json's models_loaded and decoding stay the first
    load's, and each segment of summary.json names the decoding it used."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_main(tiny_run(whole, "florence-2", iters=4)) == 0
    assert run_main(tiny_run(resumed, "florence-2", iters=2)) == 0
    first = json.loads((resumed / "run.json").read_text())
    assert len(read_run(resumed).records) == 2
    assert run_main(["resume", resumed, "--headless", "--max-iters", "4"]) == 0
    ours, theirs = read_run(resumed), read_run(whole)
    assert len(ours.records) == len(theirs.records) > 2
    assert [r.compared for r in ours.records] == [r.compared for r in theirs.records]
    after = json.loads((resumed / "run.json").read_text())
    assert (after["models_loaded"], after["decoding"]) == \
        (first["models_loaded"], first["decoding"])
    segments = ours.summary["segments"]
    assert len(segments) == 2
    assert [settings(segment["decoding"]) for segment in segments] == \
        [EXPECTED_DECODING["florence-2"]] * 2


def test_a_run_from_before_decoding_was_recorded_resumes_with_the_one_beam_it_decoded_with(
        tmp_path):
    """A florence-2 run made before truthloop recorded its decoding (run.json without
    "decoding") decoded with one beam whatever its checkpoint asked; resumed, it keeps one beam
    (and the checkpoint's other settings, as then), where a new run decodes with three."""
    old = tmp_path / "old"
    assert run_main(tiny_run(old, "florence-2", iters=1)) == 0
    info = json.loads((old / "run.json").read_text())
    del info["decoding"]  # as a run.json from before issue 30's item 13 reads
    (old / "run.json").write_text(json.dumps(info))
    assert run_main(["resume", old, "--headless", "--max-iters", "2"]) == 0
    segments = read_run(old).summary["segments"]
    assert settings(segments[-1]["decoding"]) == EXPECTED_DECODING["florence-2"] | {
        "num_beams": 1, "from": "the resumed run's own over generation_config.json"}
    assert settings(segments[0]["decoding"])["num_beams"] == 3  # the new first segment's
    # Its config in run.json is the one it was made with; the kept decoding is not written in.
    assert json.loads((old / "run.json").read_text())["config"] == info["config"]
