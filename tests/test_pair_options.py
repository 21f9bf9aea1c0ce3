"""Choosing a pair on the command line (issue 22): each family's defaults under what the user
said, the settings a family cannot honour refused in one line, `truthloop models`, and run.json
files from before the families."""

from __future__ import annotations

import json

import pytest

from faulthelpers import run_main
from truthloop.cli import build_parser, config_from_args
from truthloop.config import RunConfig, SEED_NEGATIVE_PROMPT
from truthloop.families import CAPTIONERS, DEFAULT_INSTRUCTION, GENERATORS
from truthloop.model_ids import CAPTIONER_MODEL_IDS, GENERATOR_MODEL_IDS


def config_for(*argv: str) -> RunConfig:
    args = build_parser().parse_args(["run", "--prompt", "x", *argv])
    config = config_from_args(args)
    config.start_prompt = "x"
    config.validate()
    return config


def test_a_family_brings_its_checkpoint_and_settings_and_the_user_wins():
    config = config_for("--generator", "flux2-klein", "--steps", "6")
    assert config.models.generator_model == GENERATOR_MODEL_IDS["flux2-klein"]
    assert config.generate.steps == 6  # said
    assert config.generate.guidance == GENERATORS["flux2-klein"].defaults["guidance"]
    assert config.generate.negative_prompt == ""
    config = config_for("--captioner", "llava-1.5", "--instruction", "Name the main object.")
    assert config.models.caption_model == CAPTIONER_MODEL_IDS["llava-1.5"]
    assert config.caption.instruction == "Name the main object."
    assert config.caption.caption_max_length == CAPTIONERS["llava-1.5"].defaults[
        "caption_max_length"]
    config = config_for("--captioner", "qwen3-vl")
    assert config.caption.instruction == DEFAULT_INSTRUCTION


def test_the_seed_pair_is_what_it_was():
    config = config_for()
    assert (config.models.generator, config.models.captioner) == ("sd", "clip-interrogator")
    assert config.generate.steps == 50 and config.generate.guidance == 7.5
    assert config.generate.negative_prompt == SEED_NEGATIVE_PROMPT
    assert config.caption.instruction == ""
    article = config_for("--preset", "article")
    assert article.caption.chunk_size == 400 and article.generate.seed_mode == "shared"


@pytest.mark.parametrize("argv, says", [
    (["--preset", "article", "--generator", "sdxl"], "--preset article is the seed script's"),
    (["--captioner", "llava-1.5", "--mode", "fast"], "--mode is clip-interrogator's"),
    (["--captioner", "blip", "--chunk-size", "400"], "--chunk-size is clip-interrogator's"),
    (["--generator", "flux2-klein", "--negative-prompt", "blurry"], "takes no negative prompt"),
    (["--generator", "janus-pro", "--compile"], "--compile is for the diffusion generators"),
    (["--generator", "sdxl", "--fp8"], "--fp8 is truthloop's fast path"),
    (["--generator", "z-image", "--scheduler", "ddim"], "leave --scheduler out"),
    (["--instruction", "Describe it."], "--instruction is for the vision-language"),
    (["--captioner", "qwen3-vl", "--instruction", "  "], "--instruction is empty"),
    (["--generator", "dalle"], "invalid choice"),
])
def test_what_a_pair_cannot_do_is_one_line(capsys, argv, says):
    code = run_main(["run", "--prompt", "x", "--models", "tiny", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert says in " ".join(err.split())
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3  # argparse: usage+line


def test_a_batched_sweep_takes_every_pair_and_compiles_only_an_sd_only_sweep(tmp_path, capsys,
                                                                              monkeypatch):
    """--batch runs any pair (tests/test_family_batch.py runs one); it turns --compile on by
    default for sd alone (measured there), so a grid with another generator draws eagerly
    throughout unless --compile is given (tests/test_family_compile.py)."""
    pytest.importorskip("sklearn")
    import truthloop.sweep.command as command

    monkeypatch.setattr(command, "_run", lambda args, sweep_dir, spec: 0)  # Ray's part
    prompts = tmp_path / "p.txt"
    prompts.write_text("a house\n")
    common = ["--prompts", prompts, "--models", "tiny", "--device", "cpu", "--batch", "4"]
    assert run_main(["sweep", tmp_path / "pairs", *common, "--grid", "generator=sd,sdxl",
                     "--grid", "captioner=blip,clip-interrogator"]) == 0
    assert run_main(["sweep", tmp_path / "sd", *common]) == 0
    capsys.readouterr()
    pairs = json.loads((tmp_path / "pairs" / "sweep.json").read_text())
    assert pairs["batch"] == 4 and pairs["config"]["generate"]["compile"] is False
    sd = json.loads((tmp_path / "sd" / "sweep.json").read_text())
    assert sd["batch"] == 4 and sd["config"]["generate"]["compile"] is True


def test_models_lists_every_family_with_its_licence_and_cache_state(tmp_path, monkeypatch,
                                                                    capsys):
    hub = tmp_path / "hf" / "hub"
    repo = hub / ("models--" + GENERATOR_MODEL_IDS["sdxl"].replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    import huggingface_hub.constants

    # The hub reads HF_HOME once, at import (earlier tests imported it): point it here.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert run_main(["models", "--json"]) == 0
    rows = {row["family"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(GENERATORS) | set(CAPTIONERS) <= set(rows)
    assert rows["sdxl"]["cached"] is True and rows["sdxl"]["download"] == ""
    assert rows["flux2-klein"]["cached"] is False
    assert rows["flux2-klein"]["download"] == f"hf download {GENERATOR_MODEL_IDS['flux2-klein']}"
    assert rows["flux2-klein"]["licence"] == "Apache-2.0"
    assert [row["family"] for row in rows.values() if row["default"]] == \
        ["sd", "clip-interrogator", "ViT-L-14/openai"]
    # No default is gated or non-commercial.
    assert not any("non-commercial" in row["licence"].lower() for row in rows.values())
    assert run_main(["models"]) == 0
    table = capsys.readouterr().out
    assert "stabilityai/stable-diffusion-xl-base-1.0" in table and "Apache-2.0" in table
    assert max(len(line) for line in table.splitlines()) <= 120


def test_a_run_json_from_before_the_families_reads_as_the_seed_pair():
    old = RunConfig(start_prompt="x").to_dict()
    models = old["models"]
    models["sd_model"] = models.pop("generator_model")
    del models["generator"], models["captioner"]
    del old["caption"]["instruction"]
    config = RunConfig.from_dict(old)
    assert config.models.generator == "sd" and config.models.captioner == "clip-interrogator"
    assert config.models.generator_model == GENERATOR_MODEL_IDS["sd"]


def test_the_status_line_names_a_pair_other_than_the_seed_one():
    from truthloop.families import pair_label
    from tui.widgets.status import StatusBar, StatusInfo

    config = RunConfig(start_prompt="x").to_dict()
    assert pair_label(config) == "" and pair_label({"models": {"sd_model": "a/b"}}) == ""
    config["models"].update(generator="sdxl", captioner="llava-1.5")
    line = StatusBar.second_line(StatusInfo(pair=pair_label(config), device="cuda",
                                            run_dir="/runs/a", sec_per_iter=2.5), 100)
    assert line == "/runs/a  ·  sdxl + llava-1.5  ·  2.50 s/it  ·  device cuda"


def test_fp8_is_opt_in_recorded_and_refused_where_it_cannot_work(capsys, tmp_path):
    assert RunConfig().generate.fp8 is False  # never on by default: it changes images
    assert config_for("--fp8").generate.fp8 is True
    for argv, says in ((["--fp8", "--generator", "sdxl"], "--fp8 is truthloop's fast path"),
                       (["--fp8", "--low-vram"], "--fp8 and --low-vram do not go together")):
        assert run_main(["run", "--prompt", "x", "--models", "tiny", *argv]) == 2
        assert says in capsys.readouterr().err
    # On the CPU a run asking for it is refused in one line naming why, before anything loads
    # or is written (tests/test_bad_input.py checks that no model loads).
    out = tmp_path / "fp8-refused"
    code = run_main(["run", "--prompt", "x", "--models", "tiny", "--device", "cpu", "--fp8",
                     "--headless", "--max-iters", "1", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "this run draws on the cpu: leave --fp8 out" in err
    assert "Traceback" not in err and not out.exists()


def test_report_of_a_directory_that_is_no_sweep_is_one_line(tmp_path, capsys):
    assert run_main(["report", tmp_path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("truthloop: error: ") and "not a sweep directory" in err
    assert len(err.strip().splitlines()) == 1
