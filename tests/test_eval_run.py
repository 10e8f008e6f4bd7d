"""`run_eval` on an exported directory and on a Lightning checkpoint, and agreement with lm-eval's own CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_support import ascii_text, export_tiny, stdlib_documents

from litprune.eval.offline_tasks import NEXT_LINE, prepare_offline_task
from litprune.eval.run import run_eval, training_seq_len

LIMIT = 8


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def workspace(tmp_path):
    """An exported tiny model with a run record, a directory of held-out files and a perplexity text."""
    record = {"run": {"arm": "P200-R50", "tokens_seen": 123456, "max_tokens": 200000, "tokens_per_step": 2048}}
    export_tiny(tmp_path / "model", seed=1, record=record)
    docs = tmp_path / "held_out"
    docs.mkdir()
    for name, text in stdlib_documents():
        (docs / name).write_text(text, encoding="utf-8")
    (tmp_path / "ppl.txt").write_text(ascii_text(3000), encoding="utf-8")
    return tmp_path


def _run(path: Path, workspace: Path, **overrides) -> dict:
    args = {
        "tasks": [NEXT_LINE],
        "perplexity": [str(workspace / "ppl.txt")],
        "limit": LIMIT,
        "batch_size": 8,
        "device": "cpu",
        "seq_len": 128,
        "max_windows": 4,
        "task_documents": str(workspace / "held_out"),
        "max_examples": 40,
    }
    return run_eval(str(path), **{**args, **overrides})


def test_exported_directory_produces_the_full_record(workspace):
    record = _run(workspace / "model", workspace)
    written = json.loads((workspace / "model" / "eval.json").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(record))

    (task,) = written["tasks"]
    assert (task["task"], task["metric"], task["num_examples"], task["num_examples_total"]) == (NEXT_LINE, "acc", 8, 40)
    assert 0.0 <= task["value"] <= 1.0 and task["stderr"] is not None
    assert task["lm_eval_version"] == written["versions"]["lm_eval"] and task["task_version"] == 1.0
    assert task["offline_data"]["documents"] == 6 and task["offline_data"]["seed"] == 0
    assert task["offline_data"]["lm_eval_task"].endswith("_s0_g2")
    per = task["per_example"]
    assert (per["metric"], per["doc_ids"], len(per["values"])) == ("acc", list(range(LIMIT)), LIMIT)
    assert sum(per["values"]) / LIMIT == pytest.approx(task["value"])

    (ppl,) = written["perplexity"]
    assert (ppl["split"], ppl["window_length"], ppl["num_windows"], ppl["num_tokens"]) == ("file", 128, 4, 4 * 127)
    assert ppl["perplexity"] > 1.0 and ppl["text_tokens"] > 4 * 128
    assert ppl["selection"] == "spread" and ppl["window_tokens"] == [127] * 4 and len(ppl["window_nll"]) == 4
    assert ppl["window_starts"][0] == 0 and ppl["window_starts"][-1] == (ppl["text_tokens"] // 128 - 1) * 128

    model = written["model"]
    assert model["kind"] == "hf_dir" and model["fingerprint"].startswith("sha256:")
    assert model["fingerprint_of"] == "safetensors files"
    assert model["parameters"]["total"] == model["parameters"]["embedding"] + model["parameters"]["non_embedding"]
    assert written["training"]["tokens_seen"] == 123456 and written["training"]["arm"] == "P200-R50"
    assert written["training"]["token_counts"]["run.max_tokens"] == 200000
    settings = written["settings"]
    assert settings["limit"] == LIMIT and settings["seq_len"] == 128 and settings["seq_len_source"] == "explicit"
    assert (settings["task_seed"], settings["window_selection"]) == (0, "spread")
    assert not list((workspace / "model").glob(".eval.json*"))  # no temporary file left behind


def test_lightning_checkpoint_evaluates_like_the_exported_directory(workspace):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workspace / "model")
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "litprune": {
            "hf_config": model.config.to_dict(),
            "tokenizer_dir": "model",
            "tokens_seen": 4096,
            "step_shape": {"seq_len": 128},
        },
    }
    torch.save(checkpoint, workspace / "last.ckpt")

    from_dir = _run(workspace / "model", workspace, out=str(workspace / "dir.json"))
    from_ckpt = _run(workspace / "last.ckpt", workspace)  # relative tokenizer_dir: resolved beside the .ckpt

    assert (workspace / "last.eval.json").is_file()
    assert from_ckpt["model"]["kind"] == "lightning_ckpt"
    assert from_ckpt["model"]["fingerprint_of"] == "state_dict tensors"
    assert from_ckpt["training"]["tokens_seen"] == 4096
    assert from_ckpt["settings"]["seq_len_source"] == "explicit"
    from_ckpt_default = _run(workspace / "last.ckpt", workspace, seq_len=None, tasks=[], out=str(workspace / "d.json"))
    assert (from_ckpt_default["settings"]["seq_len"], from_ckpt_default["settings"]["seq_len_source"]) == (
        128,
        "training",
    )
    assert from_ckpt_default["perplexity"][0]["window_nll"] == pytest.approx(from_dir["perplexity"][0]["window_nll"])
    assert from_ckpt["tasks"][0]["metrics"] == from_dir["tasks"][0]["metrics"]
    assert from_ckpt["perplexity"][0]["perplexity"] == pytest.approx(from_dir["perplexity"][0]["perplexity"], 1e-6)


def test_bad_settings_are_reported_together_before_loading(workspace):
    with pytest.raises(ValueError) as info:
        _run(
            workspace / "model",
            workspace,
            batch_size=0,
            max_windows=-1,
            dtype="fp8",
            task_seed=-1,
            window_selection="x",
        )
    message = str(info.value)
    assert "batch_size=0" in message and "max_windows=-1" in message and "dtype='fp8'" in message
    assert "task_seed=-1 must be a non-negative integer" in message
    assert "window_selection='x' must be one of spread, first" in message
    with pytest.raises(FileNotFoundError, match="no such file"):
        _run(workspace / "missing", workspace)
    with pytest.raises(ValueError, match="max_position_embeddings=1024"):
        _run(workspace / "model", workspace, seq_len=4096)


def test_default_window_is_the_training_seq_len_when_the_run_record_has_one(workspace):
    # An export's litprune.json holds the data module's record; a checkpoint's `litprune` entry the step shape.
    export_tiny(workspace / "trained", seed=1, record={"run": {"arm": "S_N"}, "data": {"seq_len": 96}})
    record = _run(workspace / "trained", workspace, seq_len=None, tasks=[])
    assert (record["settings"]["seq_len"], record["settings"]["seq_len_source"]) == (96, "training")
    assert record["perplexity"][0]["window_length"] == 96

    explicit = _run(workspace / "trained", workspace, seq_len=64, tasks=[], out=str(workspace / "explicit.json"))
    assert (explicit["settings"]["seq_len"], explicit["settings"]["seq_len_source"]) == (64, "explicit")

    unknown = _run(workspace / "model", workspace, seq_len=None, tasks=[], max_windows=1)  # a record without it
    assert (unknown["settings"]["seq_len"], unknown["settings"]["seq_len_source"]) == (1024, "model_context")

    export_tiny(workspace / "long", seed=1, record={"data": {"seq_len": 4096}})
    with pytest.raises(ValueError, match=r"training run's seq_len=4096 \(read from .*litprune.json\)"):
        _run(workspace / "long", workspace, seq_len=None, tasks=[])


def test_training_seq_len_is_read_from_export_and_checkpoint_records():
    assert training_seq_len({"run": {"step_shape": {"seq_len": 128}}, "data": {"seq_len": 256}}) == 256
    assert training_seq_len({"run": {"step_shape": {"seq_len": 128}}, "data": None}) == 128
    assert training_seq_len({"arm": "S_N", "step_shape": {"seq_len": 512}, "tokenizer_dir": "tok"}) == 512
    assert training_seq_len({"run": {"step_shape": None}}) is None
    assert training_seq_len({"run": {"arm": "P_M-R_N"}}) is None and training_seq_len(None) is None


def test_checkpoint_without_litprune_record_is_rejected(workspace):
    torch.save({"state_dict": {}}, workspace / "plain.ckpt")
    with pytest.raises(ValueError, match=r"no checkpoint\['litprune'\]\['hf_config'\]"):
        _run(workspace / "plain.ckpt", workspace)


def test_lm_eval_cli_on_the_exported_directory_gives_identical_accuracy(workspace):
    # lm-eval's own command line indexes every task it ships before running (10-40 s on a small CPU).
    ours = _run(workspace / "model", workspace, perplexity=[])
    task = prepare_offline_task(NEXT_LINE, _held_out(workspace), max_examples=40)
    lm_eval_cli = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    out_dir = workspace / "cli_out"
    model_dir = workspace / "model"
    command = [
        lm_eval_cli,
        "--model", "hf",
        "--model_args", f"pretrained={model_dir},tokenizer={model_dir}",
        "--tasks", task.name,
        "--include_path", str(task.include_path),
        "--device", "cpu",
        "--batch_size", "8",
        "--limit", str(LIMIT),
        "--output_path", str(out_dir),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
    (results_file,) = out_dir.rglob("results_*.json")
    cli = json.loads(results_file.read_text(encoding="utf-8"))["results"][task.name]
    metrics = ours["tasks"][0]["metrics"]
    assert cli["acc,none"] == metrics["acc"] and cli["acc_norm,none"] == metrics["acc_norm"]


def _held_out(workspace: Path) -> list[tuple[str, str]]:
    from litprune.eval.text_sources import load_documents

    return load_documents(str(workspace / "held_out"))


def test_signature_and_docstring_make_a_command_line():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_function_arguments(run_eval)
    args = parser.parse_args(["--model", "m", "--tasks", "[offline]", "--perplexity", "[embedded:val]", "--limit", "5"])
    assert (args.model, args.tasks, args.perplexity, args.limit, args.seq_len) == (
        "m",
        ["offline"],
        ["embedded:val"],
        5,
        None,
    )
    help_text = parser.format_help()
    assert "litprune's next-line and next-span tasks" in help_text and "--max_windows" in help_text
    assert "--task_seed" in help_text and "--window_selection" in help_text and "seq_len_source" in help_text
    args = parser.parse_args(["--model", "m", "--task_seed", "3", "--window_selection", "first"])
    assert (args.task_seed, args.window_selection) == (3, "first")
