"""lm-eval on the live model: real lm-eval runs on an offline task, side effects undone, same numbers as lm-eval."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama
from eval_support import byte_tokenizer, export_tiny, stdlib_documents

from litprune.eval.harness import LiveHFLM, evaluate_tasks
from litprune.eval.offline_tasks import NEXT_LINE, NEXT_SPAN, prepare_offline_task
from litprune.eval.tasks import UnknownTaskError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def documents():
    return stdlib_documents()


def test_offline_tasks_run_and_leave_model_tokenizer_and_rng_untouched(documents):
    tokenizer = byte_tokenizer()
    model = make_tiny_llama(vocab_size=len(tokenizer))
    model.train()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)

    results = evaluate_tasks(model, tokenizer, ["offline"], batch_size=8, limit=4, task_documents=documents)

    assert (random.random(), np.random.rand(), torch.rand(1)) == expected  # lm-eval reseeds; we restore
    assert model.training
    assert tokenizer.pad_token is None  # lm-eval sets a pad token on its own copy only
    assert [r.task for r in results] == [NEXT_LINE, NEXT_SPAN]
    for result in results:
        assert result.metric == "acc" and set(result.metrics) == {"acc", "acc_norm"}
        assert result.value in {k / 4 for k in range(5)}  # a fraction of the 4 examples
        assert result.num_examples == 4 and result.num_examples_total == 500
        p = result.value
        assert result.stderr == pytest.approx((p * (1 - p) / 3) ** 0.5)  # lm-eval's standard error of a mean
        assert result.task_version == 1.0 and result.lm_eval_version
        assert result.offline and result.num_fewshot == 0


def test_per_example_values_are_paired_across_models_and_tied_to_their_documents(documents):
    tokenizer = byte_tokenizer()
    models = [make_tiny_llama(seed=seed, vocab_size=len(tokenizer)) for seed in (0, 1)]
    options = {"batch_size": 8, "limit": 12, "task_documents": documents, "max_examples": 40}
    first, second = (evaluate_tasks(model, tokenizer, [NEXT_LINE, NEXT_SPAN], **options) for model in models)
    for result in first + second:
        per = result.per_example
        assert per["metric"] == result.metric == "acc" and per["filter"] == "none"
        assert per["doc_ids"] == list(range(12)) and len(per["values"]) == result.num_examples
        assert set(per["values"]) <= {0.0, 1.0}
        assert sum(per["values"]) / 12 == pytest.approx(result.value)  # the reported mean of these values
        assert set(per) == {"metric", "filter", "values", "doc_ids", "docs_sha256"}  # compact: no prompts
    for a, b in zip(first, second, strict=True):
        assert a.per_example["docs_sha256"] == b.per_example["docs_sha256"]  # same examples: a paired comparison
    assert first[0].per_example["docs_sha256"] != first[1].per_example["docs_sha256"]
    reseeded = evaluate_tasks(models[0], tokenizer, [NEXT_LINE], task_seed=1, **options)[0]
    assert reseeded.per_example["docs_sha256"] != first[0].per_example["docs_sha256"]  # another sample of examples
    assert reseeded.lm_eval_task != first[0].lm_eval_task and "_s1_" in reseeded.lm_eval_task


def test_same_accuracy_as_lm_evals_own_hflm_loading_the_saved_model(tmp_path, documents):
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = export_tiny(tmp_path / "model", seed=5)
    ours = evaluate_tasks(model, tokenizer, [NEXT_LINE], batch_size=4, limit=8, task_documents=documents)[0]

    task = prepare_offline_task(NEXT_LINE, documents)
    theirs_lm = HFLM(pretrained=str(tmp_path / "model"), tokenizer=str(tmp_path / "model"), batch_size=4, device="cpu")
    manager = TaskManager(include_path=str(task.directory), include_defaults=False)
    theirs = evaluator.simple_evaluate(model=theirs_lm, tasks=[task.name], limit=8, task_manager=manager)
    assert ours.lm_eval_task == task.name
    assert ours.metrics["acc"] == theirs["results"][task.name]["acc,none"]
    assert ours.metrics["acc_norm"] == theirs["results"][task.name]["acc_norm,none"]


def test_adapter_is_batched_and_checks_the_vocabulary():
    tokenizer = byte_tokenizer()
    model = make_tiny_llama(vocab_size=len(tokenizer))
    lm = LiveHFLM(model, tokenizer, batch_size=32)
    assert lm.batch_size == 32 and lm.tokenizer is not tokenizer
    with pytest.raises(ValueError, match="batch_size=0"):
        LiveHFLM(model, tokenizer, batch_size=0)
    small = make_tiny_llama(vocab_size=256)
    with pytest.raises(ValueError, match="258 tokens but the model's embedding has only 256 rows"):
        evaluate_tasks(small, tokenizer, ["offline"], limit=2)


def test_unknown_task_fails_before_anything_runs():
    tokenizer = byte_tokenizer()
    model = make_tiny_llama(vocab_size=len(tokenizer))
    with pytest.raises(UnknownTaskError, match="did you mean 'litprune_next_span'"):
        evaluate_tasks(model, tokenizer, ["litprune_nxt_span"])
