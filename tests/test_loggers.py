"""The run directory, resume and the study's readers do not depend on the loggers attached: TensorBoard and CSV
loggers write where they are told, while config.yaml, checkpoints/, metrics.jsonl, export/ and results.json stay
directly under `trainer.default_root_dir`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.study.records import loss_curve

pytest.importorskip("tensorboard", reason="tensorboard is in the test extra: pip install -e '.[test]'")

MAX_TOKENS = 4096  # 16 steps of 256 tokens


def _args(run_dir: Path, *extra: str, max_tokens: int = MAX_TOKENS) -> list[str]:
    return tiny_run_args(run_dir, max_tokens, **{"trainer.enable_progress_bar": "false"}) + list(extra)


def _assert_layout(run_dir: Path) -> None:
    for name in ("config.yaml", "checkpoints/last.ckpt", "metrics.jsonl", "export/config.json", "results.json"):
        assert (run_dir / name).is_file(), name
    # A logger saving into the run directory keeps its own files in its own sub-directory, and only those.
    for path in (run_dir / "lightning_logs").rglob("*"):
        assert path.is_dir() or path.name in ("metrics.csv", "hparams.yaml"), path


def test_csv_logger_on_the_command_line_keeps_the_run_layout(embedded_cache, tmp_path):
    run_dir = tmp_path / "run"
    LitpruneCLI(args=_args(run_dir, "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={run_dir}"))
    _assert_layout(run_dir)
    csv_files = list(run_dir.rglob("metrics.csv"))
    assert len(csv_files) == 1 and "train/loss" in csv_files[0].read_text().splitlines()[0]
    assert json.loads((run_dir / "results.json").read_text())["export"] == str(run_dir / "export")


def test_tensorboard_and_csv_loggers_resume_and_feed_the_study(embedded_cache, tmp_path):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    loggers = (
        "trainer:\n  logger:\n"
        f"    - class_path: lightning.pytorch.loggers.TensorBoardLogger\n      init_args: {{save_dir: {logs / 'tb'}}}\n"
        f"    - class_path: lightning.pytorch.loggers.CSVLogger\n      init_args: {{save_dir: {logs / 'csv'}}}\n"
    )
    (tmp_path / "loggers.yaml").write_text(loggers)
    (tmp_path / "crash.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: run_dir_helpers.CrashAtStep\n      init_args: {step: 9}\n"
    )
    with_loggers = f"--config={tmp_path / 'loggers.yaml'}"
    with pytest.raises(RuntimeError, match="crash at step 9"):
        LitpruneCLI(args=_args(run_dir, with_loggers, f"--config={tmp_path / 'crash.yaml'}"))
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()

    with pytest.raises(ValueError, match=r"model\.init_args\.max_tokens: 4096 -> 8192"):
        LitpruneCLI(args=_args(run_dir, with_loggers, "--ckpt_path=last", max_tokens=8192))

    LitpruneCLI(args=_args(run_dir, with_loggers, "--ckpt_path=last"))
    _assert_layout(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"]["tokens_seen"] == MAX_TOKENS
    assert list((logs / "tb").rglob("events.out.tfevents.*")) and list((logs / "csv").rglob("metrics.csv"))
    curve = loss_curve(run_dir, tokens_per_step=256, steps=16, metric="train/loss")
    assert [tokens for tokens, _ in curve] == [256 * (step + 1) for step in range(16)]
