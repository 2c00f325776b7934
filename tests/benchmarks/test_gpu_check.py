"""The GPU check (issue 22) run as CI runs it: ``python benchmarks/gpu_check.py --smoke`` on the CPU.

The real run needs a GPU; the smoke run goes through every section with tiny sizes, so a change to the
training core, the data path, DDP, the predictor or the server that breaks the check fails here first.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import group_alive

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_mfu_needs_a_known_card_and_the_loss_check_fails_outside_its_tolerance():
    gpu_check = _module()
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert gpu_check.peak_bf16_tflops("NVIDIA H200") == pytest.approx(989.4)
    for other in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A100-SXM4-80GB", ""):
        assert gpu_check.peak_bf16_tflops(other) is None
    assert gpu_check.loss_check(1.0, 1.06)["pass"]  # allowed: 0.02 + 0.05 * 1.0
    assert not gpu_check.loss_check(1.0, 1.08)["pass"]
    assert not gpu_check.loss_check(1.0, math.nan)["pass"]


@pytest.mark.slow
def test_smoke_run_reports_every_section_and_its_checks(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not group_alive(proc.pid), "the check left processes behind (DDP workers or a server)"
    assert proc.returncode == 0, output[-4000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["errors"] == []
    for section in ("training", "input_pipeline", "ddp", "serving"):
        assert not {"skipped", "error"} & set(report[section]), (section, report[section])
        assert f"== {section}" in output

    models = report["training"]["models"]
    assert set(models) == {"digits", "text", "large_mlp"}
    for name, model in models.items():
        assert model["modes"]["tf32"] == {"skipped": "TF32 is a mode of NVIDIA GPUs"}
        for mode in ("fp32", "bf16"):
            assert model["modes"][mode]["samples_per_s"] > 0 and math.isfinite(model["modes"][mode]["loss_after_steps"])
        bf16 = model["loss_checks"]["bf16"]
        assert bf16["fp32_loss"] == model["modes"]["fp32"]["loss_after_steps"]
        assert bf16["allowed"] > 0 and bf16["difference"] <= bf16["allowed"] and bf16["pass"], (name, bf16)
        assert "mfu" not in model["modes"]["bf16"]  # no peak on a CPU
    assert models["digits"]["flops_per_sample"] > 0 and models["large_mlp"]["flops_per_sample"] > 0
    assert models["digits"]["fit"]["samples_per_s"] > 0 and models["text"]["fit"]["samples_per_s"] > 0

    for name in ("digits", "text"):
        for variant in report["input_pipeline"][name]["variants"].values():
            assert 0 <= variant["wait_share"] <= 1 and variant["step_ms"] > 0

    ddp = report["ddp"]
    assert ddp["backend"] == "gloo" and ddp["weights_equal"] is True
    (attempt,) = ddp["attempts"]
    assert attempt["world_size"] == 2 and attempt["max_abs_diff"] < 1e-4

    serving = report["serving"]
    assert serving["in_process"]["pytorch@cpu"]["batch_64_rows_per_s"] > 0
    assert serving["onnx"]["skipped"].startswith("--smoke")
    served = serving["served"]["cells"]["pytorch@cpu"]
    assert served["requests"] > 0 and served["errors"] == 0

    assert {c["check"].split(":")[0] for c in report["checks"] if "bf16" in c["check"]} == set(models)
    assert all(c["pass"] for c in report["checks"]) and any("DDP (gloo)" in c["check"] for c in report["checks"])
