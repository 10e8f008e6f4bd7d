"""`litprune fit` end to end on the tiny preset, config parsing, and every early error a user can hit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TEST_VOCAB, tiny_run_args
from transformers import AutoTokenizer, LlamaForCausalLM

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.training.metrics_logger import read_metrics

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str]) -> LitpruneCLI:
    return LitpruneCLI(args=args)


@pytest.fixture(scope="module")
def finished_run(embedded_cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fit") / "run"
    run_cli(tiny_run_args(run_dir, max_tokens=8192))
    return run_dir


def test_fit_trains_exactly_the_budget_and_exports_a_loadable_model(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    assert results["run"]["tokens_seen"] == 8192
    assert results["run"]["steps"] == 8192 // (8 * 32)
    assert results["final"]["val/loss"] > 0
    model = LlamaForCausalLM.from_pretrained(finished_run / "export")
    tokenizer = AutoTokenizer.from_pretrained(finished_run / "export")
    assert len(tokenizer) == TEST_VOCAB == model.config.vocab_size
    ids = tokenizer("def main():\n    return 0\n", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    record = json.loads((finished_run / "export" / "litprune.json").read_text())
    assert record["run"]["tokens_seen"] == 8192
    corpus = record["data"]["corpus"]
    assert corpus["file_count"]["total"] > 100 and len(corpus["sha256"]) == 64 and corpus["python_version"]
    assert record["data"]["epochs"]["train"] > 0


def test_run_directory_holds_config_checkpoint_and_metrics(finished_run):
    assert (finished_run / "config.yaml").is_file()
    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["litprune"]["tokens_seen"] == 8192
    assert checkpoint["litprune"]["config"]["model"]["init_args"]["preset"] == "tiny"
    assert checkpoint["TokenDataModule"]["position"] == 8192 // 32
    metrics = read_metrics(finished_run / "metrics.jsonl")
    assert len(metrics["train/loss"]) == 32
    assert max(metrics["train/tokens_seen"].values()) == 8192
    assert "train/tokens_per_s" in metrics and "train/lr" in metrics and "val/loss" in metrics


def test_loss_goes_down_on_real_text(finished_run):
    losses = read_metrics(finished_run / "metrics.jsonl")["train/loss"]
    steps = sorted(losses)
    assert sum(losses[s] for s in steps[-4:]) / 4 < sum(losses[s] for s in steps[:4]) / 4 - 0.5


def test_validate_and_test_subcommands_use_a_checkpoint(finished_run, tmp_path):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    cli = run_cli(
        [
            "test",
            "--config",
            str(REPO / "tests/configs/tiny_fit.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            f"--ckpt_path={ckpt}",
        ]
    )
    assert cli.trainer.callback_metrics["test/loss"] > 0


def test_rerunning_into_a_used_run_directory_asks_to_resume(finished_run):
    with pytest.raises(ValueError, match="--ckpt_path last"):
        run_cli(tiny_run_args(finished_run))


def test_resume_with_different_model_settings_lists_the_differences(finished_run):
    with pytest.raises(ValueError, match=r"model\.init_args\.lr: 0\.003 -> 0\.001"):
        run_cli(tiny_run_args(finished_run) + ["--ckpt_path=last", "--model.init_args.lr=0.001"])


def test_resume_with_different_data_settings_lists_the_differences(finished_run):
    with pytest.raises(ValueError, match=r"data\.init_args\.seed: 0 -> 1"):
        run_cli(tiny_run_args(finished_run) + ["--ckpt_path=last", "--data.init_args.seed=1"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model.init_args.max_tokens=100"], r"smaller than one optimizer step.*at least 256"),
        (["--model.init_args.max_tokens=1000"], r"not a whole number of optimizer steps.*768 or 1,024"),
        (["--model.init_args.preset=tinyy"], r"Unknown model preset 'tinyy'.*'tiny'"),
        (
            ["--data.init_args.seq_len=2048", "--model.init_args.max_tokens=16384"],
            r"seq_len=2048 exceeds the model's max_position_embeddings=1024",
        ),
        (["--model.init_args.overrides={vocab_size: 300}"], r"tokenizer has 512 tokens.*vocab_size is 300"),
    ],
)
def test_bad_input_fails_before_training(embedded_cache, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_cli(tiny_run_args(tmp_path / "run") + extra)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_path_names_the_path(embedded_cache, tmp_path):
    source = "{kind: files, files: {train: [no/such/dir/*.jsonl]}}"
    with pytest.raises((ValueError, SystemExit)) as info:
        run_cli(tiny_run_args(tmp_path / "run") + [f"--data.init_args.source={source}"])
    assert "no/such/dir/*.jsonl" in str(info.value) or info.type is SystemExit


def test_command_line_reports_user_errors_without_traceback(embedded_cache, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "litprune", *tiny_run_args(tmp_path / "run", max_tokens=100)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "litprune: error: max_tokens=100 is smaller than one optimizer step" in result.stderr
    assert "Traceback" not in result.stderr
