"""benchmarks/gpu_check.py: the MFU arithmetic on known inputs, its argument errors, and a `--device cpu --smoke` run
in a subprocess (about 15 s) whose JSON must hold every section with figures or a recorded reason.

What this cannot check without a GPU: the figures themselves, the peak table's match on a real device name, CUDA
event timing, and the semi-structured section (skipped on CPU with its reason).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SECTIONS = ("train_throughput", "sparse_mask_overhead", "prune_time", "semi_structured")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def test_flops_per_token_and_mfu_on_known_values():
    # 6 x 1e9 + 12 x 16 x 2048 x 2048 = 6e9 + 805,306,368
    flops = gpu_check.training_flops_per_token(10**9, 16, 2048, 2048)
    assert flops == 6_805_306_368.0
    # 10,000 tokens/s on a 989 TFLOPs GPU
    assert gpu_check.mfu(10_000, flops, 989.0) == pytest.approx(6.805306368e13 / 9.89e14, rel=1e-12)
    assert gpu_check.mfu(1.0, 1e12, 1.0) == 1.0


def test_peak_table_matches_the_most_specific_name():
    assert gpu_check.peak_tflops_for("NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops_for("Tesla T4") is None


def test_argument_problems_are_reported_together(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu", "--steps", "0", "--prune-pattern", "unstructured"])
    err = capsys.readouterr().err
    assert "--steps=0 must be >= 1" in err
    assert "--prune-pattern='unstructured' must be an N:M pattern" in err
    assert "--device=cpu trains a 1B model for hours; add --smoke" in err


def test_cpu_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "x.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--peak-tflops", "0.5", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {"meta", *SECTIONS}
    for name in SECTIONS:
        section = results[name]
        assert "seconds" in section
        assert "error" not in section, section.get("traceback")
    meta = results["meta"]
    assert meta["failed_sections"] == []
    assert meta["not_measured_sections"] == ["semi_structured"]
    assert meta["complete"] is False
    assert "CUDA-only" in results["semi_structured"]["skipped"]

    train = results["train_throughput"]
    assert train["fsdp2_sharded"] is True
    assert train["timed_steps"] == len(train["step_s"]) == 2
    assert train["tokens_per_s"] > 0
    expected = gpu_check.mfu(train["tokens_per_s"], train["flops_per_token"], 0.5)
    assert train["mfu"] == pytest.approx(expected)
    assert "torchtitan" in train["reference"]
    assert "[train_throughput] mfu:" in proc.stdout  # every figure is printed as well as written

    overhead = results["sparse_mask_overhead"]
    assert overhead["mask_sparsity"] == 0.5
    assert overhead["step_time_ratio"] == pytest.approx(
        overhead["sparse_median_step_s"] / overhead["dense_median_step_s"]
    )

    prune = results["prune_time"]
    for method in ("wanda", "sparsegpt"):
        assert prune[f"{method}_sparsity"] == 0.5
        per_layer = prune[f"{method}_per_layer_s"]
        assert len(per_layer) == 4 and all(s >= 0 for s in per_layer)
        assert sum(per_layer) == pytest.approx(prune[f"{method}_total_s"])


def test_time_linear_records_each_backend_or_its_error():
    import torch

    x, weight = torch.randn(8, 16), torch.randn(4, 16)
    # A plain dense tensor stands in for a compressed one: the CPU exercises the bookkeeping, not the kernels.
    case = gpu_check.time_linear(x, weight, {"refused": "RuntimeError: no kernel", "stand_in": weight.clone()}, 1, 3)
    assert (case["dtype"], case["in_features"], case["out_features"], case["tokens"]) == ("float32", 16, 4, 8)
    assert case["dense_ms"] > 0 and case["dense_tflops"] > 0
    assert case["refused"] == {"error": "RuntimeError: RuntimeError: no kernel"}
    assert case["stand_in"]["max_rel_diff"] == 0.0
    assert case["stand_in"]["speedup"] == pytest.approx(case["dense_ms"] / case["stand_in"]["ms"])


def test_exhausted_budget_skips_every_section_and_fails(tmp_path):
    out = tmp_path / "x.json"
    assert gpu_check.main(["--device", "cpu", "--smoke", "--budget-s", "1e-9", "--out", str(out)]) == 1
    results = json.loads(out.read_text())
    assert results["meta"]["failed_sections"] == list(SECTIONS)
    assert all("--budget-s=1e-09 exceeded" in results[name]["skipped"] for name in SECTIONS)
