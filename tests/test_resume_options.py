"""`truthloop resume` with options that change how a run runs, not what it computes (issue 15):
--device, --low-vram, --cuda-graphs, --max-iters are accepted and recorded per segment in
summary.json; --compile cannot change; the out-of-memory advice works as written."""

from __future__ import annotations

import shlex

import pytest

import fakes
from faulthelpers import (
    TRAJECTORY, assert_one_clean_error_line, fake_start_png, prompts, run_main, summary,
    use_fakes,
)


@pytest.fixture
def start_png(tmp_path):
    return fake_start_png(tmp_path / "in" / "start.png")


def test_resume_options_are_recorded_per_segment_and_carried(monkeypatch, tmp_path, start_png,
                                                              capsys):
    out = tmp_path / "run"
    use_fakes(monkeypatch)
    assert run_main(["run", start_png, "--headless", "--out", out, "--max-iters", "2"]) == 0
    first = summary(out)["segments"]
    assert len(first) == 1 and first[0]["first_iteration"] == 0 and first[0]["changed"] == {}
    assert first[0]["options"] == {"device": "auto", "low_vram": False, "cuda_graphs": True,
                                   "max_iters": 2}
    assert first[0]["device"] == "cpu" and first[0]["status"] == "max_iters"
    capsys.readouterr()

    use_fakes(monkeypatch)
    assert run_main(["resume", out, "--headless", "--device", "cpu", "--low-vram",
                     "--no-cuda-graphs", "--max-iters", "4"]) == 0
    assert "changed for this segment: device cpu, low-vram on, cuda-graphs off, max-iters 4" \
        in capsys.readouterr().err
    segments = summary(out)["segments"]
    assert len(segments) == 2
    assert segments[1]["first_iteration"] == 2 and segments[1]["records"] == 4
    assert segments[1]["changed"] == {"device": "cpu", "low_vram": True, "cuda_graphs": False,
                                      "max_iters": 4}

    # A later resume starts from the last segment's options; --no-low-vram turns one back.
    use_fakes(monkeypatch)
    assert run_main(["resume", out, "--headless", "--no-low-vram", "--max-iters", "30"]) == 0
    segments = summary(out)["segments"]
    assert segments[2]["options"] == {"device": "cpu", "low_vram": False, "cuda_graphs": False,
                                      "max_iters": 30}
    assert segments[2]["changed"] == {"low_vram": False, "max_iters": 30}
    assert summary(out)["status"] == "converged"
    assert prompts(out) == TRAJECTORY  # the same trajectory as one uninterrupted run


def test_compile_cannot_change_on_resume(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"
    use_fakes(monkeypatch)
    assert run_main(["run", start_png, "--headless", "--out", out, "--max-iters", "2"]) == 0
    capsys.readouterr()
    assert run_main(["resume", out, "--headless", "--compile"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "--compile cannot change on resume",
                                "not bit-equal")
    assert len(summary(out)["segments"]) == 1  # nothing was started

    compiled = tmp_path / "compiled"
    use_fakes(monkeypatch)
    assert run_main(["run", start_png, "--headless", "--out", compiled, "--max-iters", "2",
                     "--compile"]) == 0
    use_fakes(monkeypatch)
    assert run_main(["resume", compiled, "--headless", "--compile", "--max-iters", "3"]) == 0
    capsys.readouterr()
    assert run_main(["resume", compiled, "--headless", "--low-vram"]) == 2
    assert_one_clean_error_line(capsys.readouterr().err, "started with --compile")


def test_the_out_of_memory_advice_works_on_resume(monkeypatch, tmp_path, start_png, capsys):
    out = tmp_path / "run"

    def hook(step):
        if len(painter.painted) == 2 and step == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    painter = fakes.FakePainter(step_hook=hook)
    use_fakes(monkeypatch, painter=painter)
    assert run_main(["run", start_png, "--headless", "--out", out]) == 1
    err = capsys.readouterr().err
    assert_one_clean_error_line(err, "out of memory", "--low-vram")
    advice = [line for line in err.splitlines() if line.startswith("continue with: ")]
    assert advice == [f"continue with: truthloop resume {out} --low-vram"]
    advice = advice[0].removeprefix("continue with: ")
    use_fakes(monkeypatch)
    assert run_main(shlex.split(advice)[1:] + ["--headless"]) == 0
    last = summary(out)["segments"][-1]
    assert last["changed"] == {"low_vram": True} and last["status"] == "converged"
    assert summary(out)["segments"][0]["status"] == "error"
    assert prompts(out) == TRAJECTORY


def test_device_auto_says_when_it_falls_back_to_the_cpu(monkeypatch):
    import torch

    from truthloop.ml.models import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    notes = []
    assert pick_device("auto", notes.append) == "cpu"
    assert len(notes) == 1 and notes[0].startswith("--device auto: running on the CPU (")
    assert pick_device("cpu", notes.append) == "cpu" and len(notes) == 1  # asked for: no note
