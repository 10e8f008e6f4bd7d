"""Task presets, name resolution and the offline tasks generated from held-out text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_support import stdlib_documents

from litprune.eval import tasks as tasks_module
from litprune.eval.offline_tasks import (
    NEXT_LINE,
    NEXT_SPAN,
    OfflineTaskError,
    next_line_examples,
    next_span_examples,
    prepare_offline_task,
)
from litprune.eval.tasks import PAPER_TASKS, UnknownTaskError, resolve_tasks


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))


PAPER_TASK_DIRS = ("winogrande", "arc", "hellaswag", "piqa", "sciq", "super_glue/boolq", "openbookqa")


def _paper_task_manager():
    """lm-eval's TaskManager over just the installed YAMLs of the paper's tasks (the full index takes seconds)."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.tasks.__file__).parent
    return TaskManager(include_path=[str(root / d) for d in PAPER_TASK_DIRS], include_defaults=False)


def test_paper_preset_is_the_eight_tasks_with_the_papers_metrics_and_lm_eval_defines_them():
    specs = resolve_tasks(["paper"])
    assert {s.name: s.metric for s in specs} == {
        "winogrande": "acc",
        "arc_easy": "acc_norm",
        "arc_challenge": "acc_norm",
        "hellaswag": "acc_norm",
        "piqa": "acc_norm",
        "sciq": "acc",
        "boolq": "acc",
        "openbookqa": "acc_norm",
    }
    assert not any(s.offline for s in specs)
    from lm_eval.tasks._yaml_loader import load_yaml

    index = _paper_task_manager().task_index
    for name, metric in PAPER_TASKS.items():
        # The task's installed YAML with its includes resolved (building the Task object would download data).
        config = load_yaml(index[name].yaml_path, resolve_func=False, recursive=True)
        assert config["output_type"] == "multiple_choice", name
        assert metric in [m["metric"] for m in config["metric_list"]], name


def test_unknown_hub_name_fails_with_close_matches(monkeypatch):
    monkeypatch.setattr(tasks_module, "lm_eval_task_manager", _paper_task_manager)
    assert [s.name for s in resolve_tasks(["piqa", "sciq:acc_norm"])] == ["piqa", "sciq"]
    with pytest.raises(UnknownTaskError, match=r"'hellaswg': did you mean 'hellaswag'"):
        resolve_tasks(["offline", "hellaswg"])


def test_any_task_lm_eval_ships_resolves_against_its_full_index():
    # Builds lm-eval's whole task index (every YAML it ships): 10-30 s on a small CPU.
    assert resolve_tasks(["lambada_openai"])[0].metric is None
    with pytest.raises(UnknownTaskError, match=r"'lambada_opnai': did you mean 'lambada_openai'"):
        resolve_tasks(["lambada_opnai"])


def test_unknown_litprune_name_fails_without_consulting_lm_eval():
    with pytest.raises(UnknownTaskError, match=r"'litprune_next_lines': did you mean 'litprune_next_line'"):
        resolve_tasks(["litprune_next_lines"])


def test_resolution_expands_presets_drops_duplicates_and_takes_a_metric():
    specs = resolve_tasks(["offline", "litprune_next_line", "litprune_next_span:acc_norm"])
    assert [(s.name, s.metric, s.offline) for s in specs] == [(NEXT_LINE, "acc", True), (NEXT_SPAN, "acc", True)]
    assert resolve_tasks(["litprune_next_span:acc_norm"])[0].metric == "acc_norm"
    with pytest.raises(ValueError, match="preset"):
        resolve_tasks(["paper:acc"])
    with pytest.raises(ValueError, match="No tasks"):
        resolve_tasks([])


def test_next_line_examples_are_well_formed():
    docs = stdlib_documents()
    texts = dict(docs)
    examples = next_line_examples(docs, max_examples=40, seed=1)
    assert len(examples) == 40
    for ex in examples:
        lines = texts[ex["source"]].splitlines()
        true_line = lines[ex["line"] - 1]
        assert ex["choices"][ex["label"]] == true_line
        assert ex["context"] == "\n".join(lines[ex["line"] - 5 : ex["line"] - 1]) + "\n"
        assert len(ex["choices"]) == 4 and len({c.strip() for c in ex["choices"]}) == 4
        others = {line for name, text in docs if name != ex["source"] for line in text.splitlines()}
        assert all(c in others for i, c in enumerate(ex["choices"]) if i != ex["label"])  # drawn from other files
    assert len({ex["label"] for ex in examples}) > 1  # the answer position varies


def test_next_span_examples_are_well_formed():
    docs = stdlib_documents()
    examples = next_span_examples(docs, max_examples=30, seed=0)
    assert len(examples) == 30
    for ex in examples:
        text = dict(docs)[ex["source"]]
        true_span = ex["choices"][ex["label"]]
        assert ex["context"] + true_span in text
        assert len(true_span.split()) == 8 and len(ex["context"].split()) == 48
        assert len(set(ex["choices"])) == 4


def test_generation_is_deterministic_and_depends_on_its_inputs(tmp_path):
    docs = stdlib_documents()
    first = prepare_offline_task(NEXT_LINE, docs, max_examples=30, cache_dir=tmp_path / "a")
    again = prepare_offline_task(NEXT_LINE, list(docs), max_examples=30, cache_dir=tmp_path / "b")
    assert first.fingerprint == again.fingerprint
    assert first.data_path.read_bytes() == again.data_path.read_bytes()
    other_seed = prepare_offline_task(NEXT_LINE, docs, max_examples=30, seed=1, cache_dir=tmp_path / "a")
    fewer_docs = prepare_offline_task(NEXT_LINE, docs[:4], max_examples=30, cache_dir=tmp_path / "a")
    assert len({first.fingerprint, other_seed.fingerprint, fewer_docs.fingerprint}) == 3
    assert first.data_path.read_bytes() != other_seed.data_path.read_bytes()


@pytest.mark.parametrize("generate", [next_line_examples, next_span_examples])
def test_examples_are_in_a_seeded_shuffled_order_so_a_prefix_samples_every_document(generate):
    docs = stdlib_documents()
    names = [name for name, _ in docs]
    examples = generate(docs, max_examples=60, seed=0)
    position = "line" if generate is next_line_examples else "word"
    keys = [(names.index(ex["source"]), ex[position]) for ex in examples]
    assert keys != sorted(keys)  # not in document order
    assert [ex["id"] for ex in examples] == list(range(len(examples)))
    # The first 20 examples (what `limit: 20` evaluates) come from most documents, not from the first ones only.
    assert len({ex["source"] for ex in examples[:20]}) >= 4
    assert generate(docs, max_examples=60, seed=0) == examples  # deterministic for a seed
    other = generate(docs, max_examples=60, seed=1)
    assert [ex["context"] for ex in other[:20]] != [ex["context"] for ex in examples[:20]]
    # With fewer targets than max_examples every target is kept, still shuffled.
    everything = generate(docs[:2], max_examples=100_000, seed=0)
    keys = [(ex["source"], ex[position]) for ex in everything]
    assert len(set(keys)) == len(keys) and keys != sorted(keys, key=lambda k: (names.index(k[0]), k[1]))


def test_prepared_task_records_its_seed_and_rejects_a_bad_one(tmp_path):
    docs = stdlib_documents()
    task = prepare_offline_task(NEXT_LINE, docs, max_examples=30, seed=3)
    assert task.seed == 3 and "_s3_g2" in task.name
    assert json.loads((task.directory / "manifest.json").read_text(encoding="utf-8"))["seed"] == 3
    with pytest.raises(OfflineTaskError, match="seed=-1 must be a non-negative integer"):
        prepare_offline_task(NEXT_LINE, docs, seed=-1)


def test_generated_yaml_is_an_lm_eval_task_over_the_generated_data():
    from lm_eval.tasks import TaskManager

    task = prepare_offline_task(NEXT_SPAN, stdlib_documents(), max_examples=25)
    assert str(task.data_path) in task.yaml_path.read_text(encoding="utf-8")
    loaded = TaskManager(include_path=str(task.include_path), include_defaults=False).load([task.name])["tasks"]
    docs = list(loaded[task.name].test_docs())
    assert len(docs) == task.num_examples == 25
    first = json.loads(task.data_path.read_text(encoding="utf-8").splitlines()[0])
    assert docs[0]["context"] == first["context"] and docs[0]["label"] == first["label"]


def test_default_cache_location_follows_litprune_cache(tmp_path):
    task = prepare_offline_task(NEXT_LINE, stdlib_documents(), max_examples=5)
    assert task.yaml_path.is_relative_to(tmp_path / "cache" / "eval_tasks" / f"corpus-{task.corpus_fingerprint[:16]}")


def test_too_few_documents_is_an_error():
    with pytest.raises(OfflineTaskError, match="at least two documents"):
        next_line_examples(stdlib_documents()[:1])
    with pytest.raises(OfflineTaskError, match="Unknown offline task"):
        prepare_offline_task("litprune_next_word", stdlib_documents())


def test_embedded_held_out_split_is_the_default_source():
    task = prepare_offline_task(NEXT_LINE, None, max_examples=10)
    assert task.num_examples == 10 and task.num_documents > 5
