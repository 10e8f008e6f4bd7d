"""lm-eval's own command line on an export: offline task variants get their own names under one include path, and
`litprune eval --print-lm-eval-command` prints a command whose accuracy equals litprune's."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_support import export_tiny, stdlib_documents

from litprune.cli import main
from litprune.eval.offline_tasks import NEXT_LINE, NEXT_SPAN, prepare_offline_task
from litprune.eval.run import run_eval

LIMIT = 8


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))


def test_variants_of_one_corpus_share_a_folder_under_distinct_names():
    from lm_eval.tasks import TaskManager

    docs = stdlib_documents()
    small = prepare_offline_task(NEXT_LINE, docs, max_examples=20)
    large = prepare_offline_task(NEXT_LINE, docs, max_examples=40)
    span = prepare_offline_task(NEXT_SPAN, docs, max_examples=20)
    other_seed = prepare_offline_task(NEXT_LINE, docs, max_examples=20, seed=1)
    variants = [small, large, span, other_seed]

    assert len({task.include_path for task in variants}) == 1
    assert len({task.name for task in variants}) == 4
    assert all(task.name.startswith(f"{NEXT_LINE}_") for task in (small, large, other_seed))
    assert span.name.startswith(f"{NEXT_SPAN}_") and small.base_name == NEXT_LINE and span.base_name == NEXT_SPAN
    assert "n20" in small.name and "n40" in large.name and small.corpus_fingerprint[:8] in small.name
    assert all(task.yaml_path.is_relative_to(task.include_path) for task in variants)
    # Another corpus gets its own folder.
    assert prepare_offline_task(NEXT_LINE, docs[:4], max_examples=20).include_path != small.include_path

    # One include path serves every variant, each with its own data (the 20-example one is never picked for 40).
    manager = TaskManager(include_path=str(small.include_path), include_defaults=False)
    loaded = manager.load([small.name, large.name])["tasks"]
    assert [len(list(loaded[task.name].test_docs())) for task in (small, large)] == [20, 40]


@pytest.fixture
def workspace(tmp_path):
    export_tiny(tmp_path / "model", seed=1)
    docs = tmp_path / "held_out"
    docs.mkdir()
    for name, text in stdlib_documents():
        (docs / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_printed_lm_eval_command_reproduces_litprune_accuracy(workspace, capsys):
    model_dir = workspace / "model"
    options = ["--tasks", "offline", "--task-documents", str(workspace / "held_out"), "--max-examples", "40"]
    options += ["--limit", str(LIMIT), "--batch-size", "8", "--device", "cpu", "--perplexity", "[]"]
    main(["eval", str(model_dir), *options, "--print-lm-eval-command"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert not (model_dir / "eval.json").exists()  # printing evaluates nothing

    command = shlex.split(printed)
    assert command[:3] == ["lm_eval", "--model", "hf"]
    assert command.count("--include_path") == 1
    tasks = command[command.index("--tasks") + 1].split(",")
    assert [task.rsplit("_", 4)[0] for task in tasks] == [NEXT_LINE, NEXT_SPAN]
    for flag, value in (("--num_fewshot", "0"), ("--batch_size", "8"), ("--limit", str(LIMIT))):
        assert command[command.index(flag) + 1] == value
    assert f"pretrained={model_dir.resolve()}" in command[command.index("--model_args") + 1]

    ours = run_eval(
        str(model_dir),
        tasks="offline",
        perplexity=[],
        task_documents=str(workspace / "held_out"),
        max_examples=40,
        limit=LIMIT,
        batch_size=8,
        device="cpu",
    )
    assert ours["lm_eval_command"] == printed

    # lm-eval's own command line indexes every task it ships before running (10-40 s on a small CPU).
    command[0] = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    out_dir = workspace / "cli_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([*command, "--output_path", str(out_dir)], check=True, env=env, capture_output=True, timeout=600)
    (results_file,) = out_dir.rglob("results_*.json")
    cli = json.loads(results_file.read_text(encoding="utf-8"))["results"]
    for task, result in zip(tasks, ours["tasks"], strict=True):
        assert result["offline_data"]["lm_eval_task"] == task
        assert cli[task]["acc,none"] == result["metrics"]["acc"], task
        assert cli[task]["acc_norm,none"] == result["metrics"]["acc_norm"], task


def test_printing_a_command_for_a_checkpoint_points_at_the_export(workspace):
    (workspace / "last.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"lm_eval.*Hugging Face model directory"):
        run_eval(str(workspace / "last.ckpt"), tasks="offline", perplexity=[], print_lm_eval_command=True)
