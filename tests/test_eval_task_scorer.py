"""Minitron-depth with a downstream-task scorer (`task:<lm-eval task>[:<metric>]`), scored by lm-eval itself.

The scorer is built on the eval floor (`litprune.eval.task_scorer`) and reaches the pure pruning functions as a
callable; `StructuredPrune` resolves a `task:` name from YAML. Everything runs offline: the tasks are litprune's
generated `litprune_next_line`, on a few standard-library files or on the embedded corpus's held-out split, with a
handful of examples so each lm-eval pass takes a fraction of a second on a tiny Llama.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
from conftest import TEST_VOCAB, make_tiny_llama
from eval_support import byte_tokenizer, stdlib_documents
from transformers import AutoModelForCausalLM

from litprune.data.datamodule import TokenDataModule
from litprune.eval.harness import evaluate_tasks
from litprune.eval.offline_tasks import NEXT_LINE
from litprune.eval.task_scorer import TASK_BATCH_SIZE, check_task_scorer, is_task_scorer, make_task_scorer
from litprune.inits.structured import StructuredPrune
from litprune.pruning.depth import remove_layers
from litprune.pruning.scorers import check_scorer
from litprune.pruning.structured import prune_structured

LIMIT = 12
MAX_EXAMPLES = 16


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Generated tasks land in a per-test cache (the embedded_cache fixture's own cache is left alone)."""
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))


def _window_scores_by_lm_eval(model, tokenizer, drop: int, **options) -> list[float]:
    """lm-eval's value for every candidate, each built independently by deleting its block of layers."""
    num_layers = model.config.num_hidden_layers
    scores = []
    for start in range(num_layers - drop + 1):
        candidate = copy.deepcopy(model)
        remove_layers(candidate, list(range(start, start + drop)))
        scores.append(evaluate_tasks(candidate, tokenizer, [NEXT_LINE], **options)[0].value)
    return scores


def _closest(scores: list[float], baseline: float) -> int:
    gaps = [abs(s - baseline) for s in scores]
    return gaps.index(min(gaps))  # the lowest index wins a tie, as in the reference


def test_task_scorer_runs_once_per_window_plus_baseline_and_returns_lm_evals_accuracy(private_cache):
    tokenizer = byte_tokenizer()
    model = make_tiny_llama(seed=1, vocab_size=len(tokenizer))
    documents = stdlib_documents()
    options = {"batch_size": 8, "limit": LIMIT, "num_fewshot": 1, "task_documents": documents}
    score = make_task_scorer(
        "task:litprune_next_line", tokenizer, num_fewshot=1, limit=LIMIT, batch_size=8, task_documents=documents
    )
    scored: list[int] = []

    def counting(candidate):
        scored.append(len(candidate.model.layers))
        return score(candidate)

    pruned, record = prune_structured(model, "minitron_depth", target={"num_hidden_layers": 2}, scorer=counting)

    # Dense baseline first, then the 3 windows of 2 layers of the 4-layer parent: 4 lm-eval passes in all.
    assert scored == [4, 2, 2, 2]
    assert score.__name__ == "task:litprune_next_line"
    assert score.details["metric"] == "acc" and score.details["num_examples"] == LIMIT
    assert score.details["num_fewshot"] == 1
    baseline = evaluate_tasks(model, tokenizer, [NEXT_LINE], **options)[0].value
    windows = _window_scores_by_lm_eval(model, tokenizer, drop=2, **options)
    assert record["baseline_score"] == baseline
    assert record["window_scores"] == windows
    assert all(value in {k / LIMIT for k in range(LIMIT + 1)} for value in [baseline, *windows])
    start = _closest(windows, baseline)
    assert record["window_start"] == start and record["dropped_layers"] == [start, start + 1]
    assert pruned.config.num_hidden_layers == 2
    # The scorer hands the model back as it found it: still the 4-layer parent.
    assert len(model.model.layers) == 4


def test_named_task_scorer_with_metric_limit_and_no_calibration_windows(private_cache):
    tokenizer = byte_tokenizer()
    model = make_tiny_llama(seed=2, vocab_size=len(tokenizer))
    score = make_task_scorer("task:litprune_next_line:acc_norm", tokenizer, limit=LIMIT)

    _, record = prune_structured(model, "minitron_depth", target={"num_hidden_layers": 3}, scorer=score)

    assert record["scorer"] == "task:litprune_next_line:acc_norm"
    assert record["calibration"] is None  # the task's examples were scored, not calibration windows
    task = score.details
    assert (task["task"], task["metric"], task["num_fewshot"], task["limit"]) == (NEXT_LINE, "acc_norm", 0, LIMIT)
    assert task["batch_size"] == TASK_BATCH_SIZE
    assert task["num_examples"] == LIMIT and task["lm_eval_version"]
    # Default documents: the embedded corpus's held-out split, as evaluate_tasks uses them.
    expected = evaluate_tasks(model, tokenizer, [f"{NEXT_LINE}:acc_norm"], limit=LIMIT)[0]
    assert record["baseline_score"] == expected.value == expected.metrics["acc_norm"]
    assert len(record["window_scores"]) == 4  # keep 3 of 4 layers: windows start at 0..3


def test_bad_task_scorers_fail_before_any_work(tmp_path):
    assert is_task_scorer("task:winogrande") and not is_task_scorer("perplexity") and not is_task_scorer(len)
    with pytest.raises(ValueError, match=r"'litprune_next_lin': did you mean 'litprune_next_line'"):
        check_task_scorer("task:litprune_next_lin")
    with pytest.raises(ValueError, match=r"preset 'offline', which is several tasks"):
        check_task_scorer("task:offline")
    with pytest.raises(ValueError, match=r"names no task"):
        check_task_scorer("task:")
    with pytest.raises(ValueError, match=r"Unknown scorer 'accuracy'.*'task:<lm-eval task>\[:<metric>\]'"):
        check_scorer("accuracy")
    with pytest.raises(ValueError, match=r"(?s)num_fewshot=-1 must be a non-negative integer.*limit=0 must be"):
        check_task_scorer("task:litprune_next_line", num_fewshot=-1, limit=0)
    with pytest.raises(ValueError, match=r"needs the model's tokenizer"):
        make_task_scorer("task:litprune_next_line", None)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer"):
        make_task_scorer("task:litprune_next_line", byte_tokenizer(), batch_size=0)

    missing = str(tmp_path / "not_trained_yet")
    with pytest.raises(ValueError, match=r"(?s)StructuredPrune: .*did you mean 'litprune_next_line'"):
        StructuredPrune(missing, "minitron_depth", ratio=0.5, scorer="task:litprune_next_lin")
    with pytest.raises(ValueError, match=r"scorer_limit=0 must be a positive integer"):
        StructuredPrune(missing, "minitron_depth", ratio=0.5, scorer="task:litprune_next_line", scorer_limit=0)
    with pytest.raises(ValueError, match=r"scorer_fewshot=5 and scorer_limit=None apply only to task scorers"):
        StructuredPrune(missing, "minitron_depth", ratio=0.5, scorer_fewshot=5)
    with pytest.raises(ValueError, match=r"scorer_limit=8 only applies to method .minitron_depth."):
        StructuredPrune(missing, "shortgpt", ratio=0.5, scorer_limit=8)

    # The pure pruning function takes the scorer as a callable and names the fix for a task name.
    fix = r"downstream-task scorer.*Pass make_task_scorer\('task:litprune_next_line'"
    with pytest.raises(ValueError, match=fix) as err:
        prune_structured(make_tiny_llama(), "minitron_depth", ratio=0.5, scorer="task:litprune_next_line")
    assert "needs calibration windows" not in str(err.value)


def test_pruning_imports_nothing_from_the_floors_above_it():
    """`litprune.pruning` holds pure functions: no Lightning and no litprune package above it, even lazily."""
    above = ("litprune.inits", "litprune.training", "litprune.modules", "litprune.callbacks", "litprune.eval")
    above += ("litprune.study", "litprune.cli")
    package = Path(__file__).resolve().parents[1] / "src" / "litprune" / "pruning"
    files, found = sorted(package.glob("*.py")), []
    assert files, f"no modules under {package}"
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "lightning" or n.startswith(above)]
    assert not found, found


def test_structured_prune_build_with_a_task_scorer(embedded_cache, tmp_path):
    data = TokenDataModule(vocab_size=TEST_VOCAB, seq_len=32, micro_batch_size=8, val_max_windows=16)
    data.setup("fit")
    parent = tmp_path / "parent"
    make_tiny_llama(seed=3, vocab_size=TEST_VOCAB).save_pretrained(parent)
    data.tokenizer.save_pretrained(parent)

    init = StructuredPrune(
        str(parent), "minitron_depth", ratio=0.5, scorer="task:litprune_next_line", scorer_limit=LIMIT
    )
    result = init.build(None, data)

    record = result.record
    assert record["strategy"] == "structured_prune" and record["scorer"] == "task:litprune_next_line"
    assert record["scorer_task"]["num_examples"] == LIMIT and record["scorer_task"]["metric"] == "acc"
    assert record["calibration"] is None and result.tokens == {}  # no training-corpus windows were read
    parent_model = AutoModelForCausalLM.from_pretrained(parent)
    baseline = evaluate_tasks(parent_model, data.tokenizer, [NEXT_LINE], limit=LIMIT)[0].value
    windows = _window_scores_by_lm_eval(parent_model, data.tokenizer, drop=2, limit=LIMIT)
    assert record["baseline_score"] == baseline and record["window_scores"] == windows
    start = _closest(windows, baseline)
    assert record["dropped_layers"] == [start, start + 1]
    assert result.model.config.num_hidden_layers == 2 and result.model.training
    for new_index, old_index in enumerate(record["kept_layers"]):
        new_layer, old_layer = result.model.model.layers[new_index], parent_model.model.layers[old_index]
        for (name, new), (_, old) in zip(new_layer.named_parameters(), old_layer.named_parameters(), strict=True):
            assert torch.equal(new, old), name
