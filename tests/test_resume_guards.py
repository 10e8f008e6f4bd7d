"""Resume guards on a real run stopped at step 16 of 32: another batch shape is refused (or re-planned exactly when
asked), a corrupt `last.ckpt` is named with the previous good checkpoint, a copied run directory resumes into its
own `last.ckpt`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.training.budget import TokenBudget, resume_budget
from litprune.training.lr_schedule import WarmupCosine
from litprune.training.metrics_logger import read_metrics

MAX_TOKENS = 8192  # 32 steps of 8 x 32 tokens, a checkpoint every 2 steps
PEAK_LR = 3.0e-3  # tests/configs/tiny_fit.yaml


def _args(run_dir: Path, *extra: str) -> list[str]:
    return tiny_run_args(run_dir, MAX_TOKENS, **{"trainer.enable_progress_bar": "false"}) + list(extra)


@pytest.fixture(scope="module")
def stopped_run(embedded_cache, tmp_path_factory) -> Path:
    """A run that crashed after step 17, so its `last.ckpt` is at step 16 (read-only: tests copy it)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    crash = run_dir.parent / "crash.yaml"
    crash.write_text(
        "trainer:\n  callbacks:\n    - class_path: run_dir_helpers.CrashAtStep\n      init_args: {step: 17}\n"
    )
    with pytest.raises(RuntimeError, match="crash at step 17"):
        LitpruneCLI(args=_args(run_dir, f"--config={crash}"))
    return run_dir


@pytest.fixture
def copied_run(stopped_run, tmp_path) -> Path:
    """The stopped run copied to another place (as a user copies a run directory)."""
    return Path(shutil.copytree(stopped_run, tmp_path / "copy"))


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True, mmap=True)["global_step"]


def test_checkpoint_stores_tokens_per_step_and_its_factors(stopped_run):
    record = torch.load(stopped_run / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["litprune"]
    assert record["tokens_per_step"] == 256
    assert record["step_shape"] == {
        "tokens_per_step": 256,
        "micro_batch_size": 8,
        "accumulate_grad_batches": 1,
        "world_size": 1,
        "seq_len": 32,
        "done_steps": 0,
        "done_tokens": 0,
    }


def test_resume_with_another_accumulation_is_refused_naming_both_shapes(copied_run):
    before = (copied_run / "checkpoints" / "last.ckpt").read_bytes()
    config = (copied_run / "config.yaml").read_text()
    with pytest.raises(ValueError) as info:
        LitpruneCLI(args=_args(copied_run, "--ckpt_path=last", "--trainer.accumulate_grad_batches=2"))
    message = str(info.value)
    assert "256 tokens per step" in message and "now 512 tokens per step" in message
    assert "trainer.accumulate_grad_batches 1 -> 2" in message
    assert "replan_on_resume=true" in message
    assert (copied_run / "checkpoints" / "last.ckpt").read_bytes() == before
    assert (copied_run / "config.yaml").read_text() == config
    assert not (copied_run / "export").exists()


def test_replanned_resume_trains_exactly_the_budget_and_ends_the_schedule(copied_run):
    LitpruneCLI(
        args=_args(
            copied_run,
            "--ckpt_path=last",
            "--trainer.accumulate_grad_batches=2",
            "--model.init_args.replan_on_resume=true",
        )
    )
    results = json.loads((copied_run / "results.json").read_text())
    # 16 steps of 256 tokens, then the 4,096 tokens left as 8 steps of 512.
    assert results["run"]["tokens_seen"] == MAX_TOKENS
    assert results["run"]["steps"] == 24
    assert results["run"]["step_shape"]["done_steps"] == 16
    lrs = read_metrics(copied_run / "metrics.jsonl")["train/lr"]
    schedule = WarmupCosine(total_steps=24)
    for step in range(16, 24):
        assert lrs[step] == pytest.approx(PEAK_LR * schedule(step + 1), rel=1e-6), step
    assert lrs[23] == pytest.approx(PEAK_LR * 0.1, rel=1e-6)
    last = torch.load(copied_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 24 and last["litprune"]["step_shape"]["tokens_per_step"] == 512


def test_replan_that_leaves_a_partial_step_names_the_shapes_that_work(copied_run):
    with pytest.raises(ValueError, match=r"leaves 4,096 tokens.*trainer\.accumulate_grad_batches 2 or 4"):
        LitpruneCLI(
            args=_args(
                copied_run,
                "--ckpt_path=last",
                "--trainer.accumulate_grad_batches=3",
                "--model.init_args.replan_on_resume=true",
            )
        )


def test_same_tokens_per_step_from_other_factors_is_accepted():
    saved = {"tokens_per_step": 256, "tokens_seen": 4096, "global_step": 16}
    budget = resume_budget(8192, 32, 4, 2, 1, saved=saved)
    assert budget == TokenBudget(8192, 32, 4, 2, 1)


def test_a_replanned_checkpoint_resumes_with_its_plan():
    plan = TokenBudget(8192, 32, 8, 2, 1, done_steps=16, done_tokens=4096)
    saved = {"tokens_per_step": 512, "tokens_seen": 6144, "global_step": 20, "step_shape": plan.record()}
    assert resume_budget(8192, 32, 8, 2, 1, saved=saved) == plan


def test_corrupt_last_checkpoint_is_named_with_the_previous_one(copied_run):
    last, previous = copied_run / "checkpoints" / "last.ckpt", copied_run / "checkpoints" / "previous.ckpt"
    assert _step(previous) == 14  # the last.ckpt that step 16 replaced
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        LitpruneCLI(args=_args(copied_run, "--ckpt_path=last"))
    message = str(info.value)
    assert f"{str(last)!r} is corrupt or truncated" in message
    assert f"mv {previous} {last}" in message
    previous.replace(last)
    LitpruneCLI(args=_args(copied_run, "--ckpt_path=last"))
    assert json.loads((copied_run / "results.json").read_text())["run"]["tokens_seen"] == MAX_TOKENS


def test_copied_run_directory_resumes_into_its_own_last_checkpoint(copied_run):
    LitpruneCLI(args=_args(copied_run, "--ckpt_path=last"))
    names = sorted(p.name for p in (copied_run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "previous.ckpt"]
    assert _step(copied_run / "checkpoints" / "last.ckpt") == 32
    assert json.loads((copied_run / "results.json").read_text())["run"]["tokens_seen"] == MAX_TOKENS


def test_last_is_refused_where_only_other_checkpoints_exist(copied_run):
    (copied_run / "checkpoints" / "last.ckpt").rename(copied_run / "checkpoints" / "epoch=0-step=16.ckpt")
    (copied_run / "checkpoints" / "previous.ckpt").unlink()
    with pytest.raises(ValueError, match=r"holds no last\.ckpt but holds epoch=0-step=16\.ckpt"):
        LitpruneCLI(args=_args(copied_run, "--ckpt_path=last"))
