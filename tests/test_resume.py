"""A run killed half-way (SIGKILL of the real process) and resumed with `--ckpt_path last` ends bit-identical
to an uninterrupted run: same parameters, same logged loss at every step, same token count and data position."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import tiny_run_args
from safetensors.torch import load_file

from litprune.training.metrics_logger import read_metrics

TESTS = Path(__file__).resolve().parent
MAX_TOKENS = 8192  # 32 steps of 8 x 32 tokens; checkpoints every 2 steps


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _fit(run_dir: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "litprune",
        *tiny_run_args(run_dir, MAX_TOKENS),
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return proc


def test_killed_run_resumes_bit_identically(embedded_cache, tmp_path):
    straight = tmp_path / "straight"
    _fit(straight)

    interrupted = tmp_path / "interrupted"
    flag = tmp_path / "stalled"
    stall = tmp_path / "stall.yaml"
    stall.write_text(
        "trainer:\n  callbacks:\n    - class_path: resume_helpers.StallAtStep\n"
        f"      init_args: {{step: 17, flag: '{flag}'}}\n"
    )
    proc = _fit(interrupted, f"--config={stall}", wait=False)
    deadline = time.monotonic() + 600
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the stall step"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (interrupted / "export").exists() and not (interrupted / "results.json").exists()
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 16 and saved["litprune"]["tokens_seen"] == 16 * 256

    _fit(interrupted, "--ckpt_path=last")

    a = load_file(straight / "export" / "model.safetensors")
    b = load_file(interrupted / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    loss_a = read_metrics(straight / "metrics.jsonl")["train/loss"]
    loss_b = read_metrics(interrupted / "metrics.jsonl")["train/loss"]
    assert sorted(loss_a) == sorted(loss_b) == list(range(32))
    assert loss_a == loss_b

    result_a = json.loads((straight / "results.json").read_text())
    result_b = json.loads((interrupted / "results.json").read_text())
    assert result_a["run"]["tokens_seen"] == result_b["run"]["tokens_seen"] == MAX_TOKENS
    assert result_a["data"]["train_windows_read"] == result_b["data"]["train_windows_read"] == MAX_TOKENS // 32
    assert result_a["final"] == result_b["final"]
