"""Two CPU processes (DDP over gloo) train real steps with exact global token accounting."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import tiny_run_args

from litprune.training.metrics_logger import read_metrics


def test_ddp_two_processes_count_tokens_globally(embedded_cache, tmp_path):
    run_dir = tmp_path / "ddp"
    max_tokens = 4096  # 8 steps of 2 processes x 8 sequences x 32 tokens
    cmd = [
        sys.executable,
        "-m",
        "litprune",
        *tiny_run_args(run_dir, max_tokens),
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.enable_progress_bar=false",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["run"]["tokens_seen"] == max_tokens
    assert record["run"]["steps"] == 8 and record["run"]["tokens_per_step"] == 2 * 8 * 32
    # Both processes read disjoint parts of one global stream: all windows consumed are counted once.
    assert record["data"]["train_windows_read"] == max_tokens // 32
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert max(metrics["train/tokens_seen"].values()) == max_tokens
    assert len(metrics["train/loss"]) == 8
