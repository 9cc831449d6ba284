"""bench/device_check.py's arithmetic against hand computations, and its rows' failure handling (seconds, no network).
The whole check runs in scripts/device/ci.sh (`--device cpu --small` in a fresh venv from the offline bundle)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("device_check", REPO / "bench" / "device_check.py")
dc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dc)


def test_qwen2_parameter_counts_by_hand():
    # Qwen2.5-0.5B: embedding 151936 x 896 (tied); a layer: q 896x896 + 896 bias, k and v 896x128 + 128 each (2 KV
    # heads of 64), o 896x896, MLP 3 x 896x4864, two RMSNorms of 896; 24 layers; the final norm
    layer = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    assert layer == 14_912_384
    assert dc.qwen2_params(**dc.SHAPES["Qwen2.5-0.5B"]) == 24 * layer + 896 + 151936 * 896 == 494_032_768
    # Qwen2.5-1.5B: 28 layers of 1536 (2 KV heads of 128), MLP 8960
    layer = (1536 * 1536 + 1536) + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
    assert dc.qwen2_params(**dc.SHAPES["Qwen2.5-1.5B"]) == 28 * layer + 1536 + 151936 * 1536 == 1_543_714_304
    untied = dict(dc.SHAPES["Qwen2.5-0.5B"], tie_word_embeddings=False)
    assert dc.qwen2_params(**untied) == 494_032_768 + 151936 * 896


@pytest.mark.parametrize("name", [*dc.SHAPES, *dc.SMALL_SHAPES])
def test_qwen2_parameter_count_matches_transformers(name):
    """The formula against the model transformers builds from the same hyperparameters (on the meta device: no
    memory, no init)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    shape = (dc.SHAPES | dc.SMALL_SHAPES)[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**shape))
    assert sum(p.numel() for p in model.parameters()) == dc.qwen2_params(**shape)


def test_mfu_and_roofline_by_hand():
    params = 494_032_768
    # 10,000 tokens learned in 0.5 s against a 400 TFLOP/s ceiling: 6 * N * T = 2.964e13 FLOPs -> 5.93e13 FLOP/s
    assert dc.train_flops(params, 10_000) == 6 * params * 10_000 == 29_641_966_080_000
    assert dc.mfu(params, 10_000, 0.5, 400e12) == pytest.approx(29_641_966_080_000 / 0.5 / 400e12)
    assert dc.mfu(params, 10_000, 0.5, 400e12) == pytest.approx(0.148209830)
    # decode roofline: bf16 weights (988,065,536 bytes) read once a step at 3.35 TB/s: 3,390 steps/s; x batch
    assert dc.decode_roofline(params, 2, 3.35e12, 1) == pytest.approx(3.35e12 / 988_065_536)
    assert dc.decode_roofline(params, 2, 3.35e12, 64) == pytest.approx(64 * 3390.46, rel=1e-5)
    assert dc.matmul_flops(8192) == 2 * 8192 ** 3


def test_a_failing_row_prints_one_line_and_the_check_goes_on(tmp_path, capsys):
    args = argparse.Namespace(device="cpu", small=True, out=str(tmp_path / "out.json"), quickstart_steps=0)
    check = dc.Check(args)
    check.header()

    def broken():
        raise ValueError("first line\nsecond line")

    check.row("broken row", broken)
    check.row("good row", lambda: ("fine", {"x": 1.0}))
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert table[0] == "| row | result | s |"
    assert table[1].startswith("| broken row | FAILED: ValueError: first line | ")
    assert table[2].startswith("| good row | fine | ")
    saved = json.loads((tmp_path / "out.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["broken row", "good row"]
    assert saved["failed"] == ["broken row"]
    assert saved["rows"][1]["values"] == {"x": 1.0}
    assert saved["meta"]["device"] == "cpu"


def test_rows_past_the_deadline_are_printed_as_skipped_not_run(tmp_path, capsys):
    args = argparse.Namespace(device="cpu", small=True, out=str(tmp_path / "out.json"), quickstart_steps=0,
                              deadline_s=1e-9)
    check = dc.Check(args)
    ran = []
    check.row("late row", lambda: ran.append(1) or ("ran", {}))
    assert not ran
    assert "| late row | SKIPPED: past --deadline-s" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["failed"] == ["late row"]


@pytest.mark.parametrize("script", ["scripts/device/bundle.sh", "scripts/device/install.sh", "scripts/device/ci.sh"])
def test_device_scripts_pass_shellcheck(script):
    import subprocess
    import sys

    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), "-x", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
