"""`ValidateAtStart` through `litprune fit`: every loss curve starts with the initial model's validation loss.

The step-0 point is checked against a loss computed here, without Lightning, from the same initial model (random,
depth-pruned or sparse) on the same validation windows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TEST_VOCAB, tiny_run_args
from transformers import AutoModelForCausalLM

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.data.datamodule import TokenDataModule
from litprune.inits import RandomInit, SparsePrune, StructuredPrune
from litprune.models.presets import build_llama_config
from litprune.study.records import loss_curve
from litprune.training.log_step import BEFORE_TRAINING_LOG_STEP
from litprune.training.metrics_logger import read_metrics

TOKENS = 2048  # 8 steps of 8 x 32 tokens; validation every 4 steps (tests/configs/tiny_fit.yaml)
TOKENS_PER_STEP = 8 * 32
CALIBRATION = {"slice": "train", "nsamples": 8, "seqlen": 32, "seed": 3}
SPARSE_MASK = {"class_path": "litprune.callbacks.sparse_mask.SparseMask", "init_args": {"mask_source": "module"}}


def _fit(run_dir: Path, override: dict | None = None, *extra: str) -> Path:
    args = tiny_run_args(run_dir, TOKENS, **{"trainer.enable_progress_bar": "false"})
    if override:
        path = run_dir.parent / f"{run_dir.name}_override.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(override), encoding="utf-8")
        args += ["--config", str(path)]
    LitpruneCLI(args=[*args, *extra])
    return run_dir


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _start_records(run_dir: Path) -> list[dict]:
    return [r for r in _records(run_dir) if r["step"] == BEFORE_TRAINING_LOG_STEP]


def _val_loss(model: torch.nn.Module, data: TokenDataModule) -> float:
    """Token-weighted mean next-token loss over the run's validation windows, computed without Lightning."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            logits = model(input_ids=batch["input_ids"]).logits
            total += F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), reduction="sum").item()
            count += batch["labels"].numel()
    return total / count


@pytest.fixture(scope="module")
def data(tiny_data) -> TokenDataModule:
    return tiny_data


@pytest.fixture(scope="module")
def fresh_run(embedded_cache, tmp_path_factory) -> Path:
    return _fit(tmp_path_factory.mktemp("validate_at_start") / "run")


def test_fresh_run_starts_with_the_initial_models_validation_loss(fresh_run, data):
    start = _start_records(fresh_run)
    assert len(start) == 1 and set(start[0]) == {"step", "val/loss", "val/ppl", "epoch"}
    initial = RandomInit(seed=0).build(build_llama_config("tiny", {}, vocab_size=TEST_VOCAB), data).model
    assert start[0]["val/loss"] == pytest.approx(_val_loss(initial, data), rel=1e-5)
    # It is the file's first record, before step 0's training loss.
    assert _records(fresh_run)[0] == start[0]

    curve = loss_curve(fresh_run, TOKENS_PER_STEP, TOKENS // TOKENS_PER_STEP)
    assert curve[0] == (0, start[0]["val/loss"])
    assert [tokens for tokens, _ in curve] == [0, 4 * TOKENS_PER_STEP, 8 * TOKENS_PER_STEP]
    assert curve[-1][1] < curve[0][1]  # later points: the model trained


def test_turning_it_off_removes_the_point_and_changes_nothing_else(fresh_run, tmp_path):
    off = _fit(tmp_path / "off", None, "--validate_at_start=false")
    assert _start_records(off) == []
    on_metrics, off_metrics = read_metrics(fresh_run / "metrics.jsonl"), read_metrics(off / "metrics.jsonl")
    assert on_metrics["train/loss"] == off_metrics["train/loss"]  # same batches, same weights, step for step
    assert on_metrics["train/tokens_seen"] == off_metrics["train/tokens_seen"]
    assert {s: v for s, v in on_metrics["val/loss"].items() if s != BEFORE_TRAINING_LOG_STEP} == off_metrics["val/loss"]
    on_ckpt = torch.load(fresh_run / "checkpoints" / "last.ckpt", weights_only=True)
    off_ckpt = torch.load(off / "checkpoints" / "last.ckpt", weights_only=True)
    assert on_ckpt["TokenDataModule"] == off_ckpt["TokenDataModule"]
    assert on_ckpt["litprune"]["tokens_seen"] == off_ckpt["litprune"]["tokens_seen"] == TOKENS
    assert on_ckpt["global_step"] == off_ckpt["global_step"]
    assert (
        on_ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"] == off_ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]
    )
    on_final = json.loads((fresh_run / "results.json").read_text())["final"]
    assert on_final == json.loads((off / "results.json").read_text())["final"]


def test_resumed_run_adds_no_second_start_point(fresh_run, tmp_path):
    run_dir = tmp_path / "run"
    crash = {"trainer": {"callbacks": [{"class_path": "resume_helpers.FailAtStep", "init_args": {"step": 3}}]}}
    with pytest.raises(RuntimeError, match="interrupted at step 3"):
        _fit(run_dir, crash)
    assert len(_start_records(run_dir)) == 1
    _fit(run_dir, None, "--ckpt_path=last")
    assert len(_start_records(run_dir)) == 1
    assert read_metrics(run_dir / "metrics.jsonl")["val/loss"] == read_metrics(fresh_run / "metrics.jsonl")["val/loss"]


def test_no_validation_slice_no_start_point(embedded_cache, tmp_path):
    run_dir = _fit(tmp_path / "run", None, "--data.init_args.val_slice=null")
    assert not any("val/loss" in record for record in _records(run_dir))


def _pruned_run(run_dir: Path, init: dict, callbacks: list | None = None) -> Path:
    override = {"model": {"init_args": {"preset": None, "arm": "P_M-R_N", "init": init}}}
    if callbacks:
        override["trainer"] = {"callbacks": callbacks}
    return _fit(run_dir, override)


def test_depth_pruned_init_starts_from_the_pruned_model(tiny_parent, data, tmp_path):
    args = {"parent": str(tiny_parent), "method": "shortgpt", "ratio": 0.5, "calibration": CALIBRATION}
    run_dir = _pruned_run(tmp_path / "run", {"class_path": "litprune.inits.StructuredPrune", "init_args": args})
    [start] = _start_records(run_dir)
    pruned = StructuredPrune(**args).build(None, data).model
    parent = AutoModelForCausalLM.from_pretrained(tiny_parent)
    assert pruned.config.num_hidden_layers < parent.config.num_hidden_layers
    assert start["val/loss"] == pytest.approx(_val_loss(pruned, data), rel=1e-5)
    assert start["val/loss"] != pytest.approx(_val_loss(parent, data), rel=1e-3)


def test_sparse_init_starts_from_the_masked_model(tiny_parent, data, tmp_path):
    # A high ratio: pruning half of the tiny parent's smallest weights barely moves its loss.
    args = {"parent": str(tiny_parent), "method": "magnitude", "ratio": 0.9, "calibration": CALIBRATION}
    init = {"class_path": "litprune.inits.SparsePrune", "init_args": args}
    run_dir = _pruned_run(tmp_path / "run", init, [SPARSE_MASK])
    [start] = _start_records(run_dir)
    result = SparsePrune(**args).build(None, data)
    with torch.no_grad():
        for name, parameter in result.model.named_parameters():
            if name in result.masks:
                parameter.mul_(result.masks[name])
    parent = AutoModelForCausalLM.from_pretrained(tiny_parent)
    assert start["val/loss"] == pytest.approx(_val_loss(result.model, data), rel=1e-5)
    assert start["val/loss"] != pytest.approx(_val_loss(parent, data), rel=1e-3)
