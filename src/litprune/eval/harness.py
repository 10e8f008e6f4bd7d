"""lm-eval-harness on the live model: no save, no conversion, batched, on whatever device the model is on.

`evaluate_tasks(model, tokenizer, ["paper"])` runs lm-eval's own task code and metrics on the in-memory Hugging
Face model through `LiveHFLM`, a thin subclass of lm-eval's `HFLM`, so the numbers are the ones lm-eval's CLI
gives for the same model saved to disk (same tasks, same batch size => identical accuracies; a test checks it).

Why lm-eval's Python API is often much slower than its CLI (lm-eval issue 3207), found in lm-eval 0.4.x's
`evaluator.simple_evaluate` and `models/huggingface.py`, and what is done here instead:

1. `simple_evaluate(model=<LM object>, batch_size=64)` ignores `batch_size`: it is only forwarded when the
   model is given as a string. An `HFLM` built without `batch_size` keeps its default of 1, so every request
   is its own forward pass. `LiveHFLM` is always built with the batch size (default 16).
2. Without a `task_manager`, every `simple_evaluate` call re-indexes every task YAML lm-eval ships (about
   15,000 files, seconds each time). The index is built once per process and reused; runs with only litprune's
   offline tasks use a manager over just their directories.
3. After evaluating, `simple_evaluate` collects an environment report by running `pip list`, `nvidia-smi` and
   `git` as subprocesses, on every call (about 0.5 s here; often more on GPU hosts). `_simple_evaluate` performs
   the same task preparation and the same `evaluator.evaluate` call, without the report.
4. `simple_evaluate` reseeds Python, NumPy and torch globally and `HFLM` switches the model to eval mode and
   mutates the tokenizer (it sets a padding token). Inside training, those are silent side effects: the model's
   flag and device and all random states are restored afterwards, and lm-eval gets a copy of the tokenizer.

Per-example values: lm-eval is run with `log_samples=True`, and each `TaskResult` keeps, of those samples, only the
reported metric's value for every example with its `doc_id`, in document order (`TaskResult.per_example`), plus a
hash of the documents. Two models evaluated with the same settings can then be compared example by example (a
paired bootstrap of their difference), and the hash says whether they really saw the same documents.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from litprune.eval.borrow import borrowed, check_tokenizer_fits, resolve_device
from litprune.eval.offline_tasks import DEFAULT_MAX_EXAMPLES, OfflineTask, prepare_offline_task
from litprune.eval.tasks import TaskSpec, lm_eval_task_manager, resolve_tasks
from litprune.eval.text_sources import Document
from litprune.utils.extras import require

HFLM = require("lm_eval.models.huggingface", "eval", "Evaluating lm-eval tasks").HFLM


class LiveHFLM(HFLM):
    """lm-eval's `HFLM` over a model and tokenizer that are already in memory.

    Differences from `HFLM(pretrained=model)`: the batch size is required (never a silent 1), the tokenizer is
    checked against the model's embedding size and copied (lm-eval sets a padding token on the tokenizer it is
    given), the model's train/eval flag is left as it was, and lm-eval's warnings about pre-built models are
    silenced. Build it while the model sits on the device it will be evaluated on (`HFLM` records the device at
    construction); `evaluate_tasks` does that for you.

    Args:
        model: a Hugging Face causal LM.
        tokenizer: its tokenizer.
        batch_size: requests per forward pass.
        max_length: longest input in tokens; default the model's `max_position_embeddings`.
        add_bos_token: force (True) or forbid (False) a BOS token in front of every request; None uses the
            tokenizer's own behaviour, which is what lm-eval's CLI does.

    Raises:
        ValueError: a non-positive batch size, or a tokenizer with more tokens than the model has embeddings.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        check_tokenizer_fits(model, tokenizer)
        was_training = model.training
        with _quiet("lm_eval.models.huggingface"):
            super().__init__(
                pretrained=model,
                tokenizer=copy.deepcopy(tokenizer),
                batch_size=batch_size,
                max_length=max_length,
                add_bos_token=add_bos_token,
            )
        model.train(was_training)


@dataclass(frozen=True)
class TaskResult:
    """One task's result, with what is needed to reproduce and compare it.

    Attributes:
        task: the lm-eval task name.
        metric: the reported metric (the paper's metric for the paper's tasks).
        value: the metric's value.
        stderr: its standard error as lm-eval computes it (None when lm-eval gives none).
        num_examples: examples evaluated (after `limit`).
        num_examples_total: examples the task has.
        num_fewshot: few-shot examples per prompt.
        task_version: the task's version in lm-eval.
        lm_eval_version: the installed lm-eval version.
        metrics: every metric lm-eval reported for the task (filter `none`), by name.
        offline: True for litprune's generated tasks.
        lm_eval_task: the name lm-eval ran the task under: for an offline task the generated variant
            (`litprune_next_line_<corpus>_n<N>_s<seed>_g<version>`), else `task`.
        per_example: the reported metric on every evaluated example, for paired comparisons between models:
            `{"metric": str, "filter": "none", "values": [float] * num_examples, "doc_ids": [int] * num_examples,
            "docs_sha256": str}`, sorted by `doc_id` (the task's document order); `docs_sha256` hashes lm-eval's
            per-document hashes in that order, so equal digests mean the same documents. None when lm-eval gives
            no numeric per-example value for the metric (corpus-level metrics such as BLEU).
    """

    task: str
    metric: str
    value: float
    stderr: float | None
    num_examples: int
    num_examples_total: int
    num_fewshot: int
    task_version: str | float | int | None
    lm_eval_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    offline: bool = False
    lm_eval_task: str | None = None
    per_example: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str] | str,
    batch_size: int = 16,
    limit: int | None = None,
    num_fewshot: int = 0,
    device: str | None = None,
    task_documents: Sequence[Document] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    add_bos_token: bool | None = None,
    task_seed: int = 0,
) -> list[TaskResult]:
    """Run lm-eval tasks on a live model and return one result per task.

    Args:
        model: a Hugging Face causal LM, in any mode; its flag, device and the random states are restored.
        tokenizer: its tokenizer (not modified).
        tasks: task names or presets, see `litprune.eval.tasks`.
        batch_size: requests per forward pass.
        limit: evaluate only the first `limit` examples of each task (for quick checks; None = all).
        num_fewshot: few-shot examples per prompt; the paper's protocol is zero-shot.
        device: evaluate on this device (`"cpu"`, `"cuda"`, `"auto"`) and move the model back afterwards;
            None keeps it where it is.
        task_documents: documents for the offline tasks; None uses the embedded corpus's held-out split.
        max_examples: size of each generated offline task.
        add_bos_token: see `LiveHFLM`.
        task_seed: seed of the offline tasks' example sampling and order (`limit` keeps the first examples).

    Returns:
        `TaskResult`s in the order the tasks were resolved.

    Raises:
        UnknownTaskError: an unknown task name (raised before anything runs).
        ValueError: bad arguments, or a tokenizer that does not fit the model.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r} must be a positive integer or None.")
    if not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise ValueError(f"num_fewshot={num_fewshot!r} must be a non-negative integer.")
    check_tokenizer_fits(model, tokenizer)
    specs = resolve_tasks(tasks)
    offline = {
        spec.name: prepare_offline_task(spec.name, task_documents, max_examples=max_examples, seed=task_seed)
        for spec in specs
        if spec.offline
    }
    return run_specs(model, tokenizer, specs, offline, batch_size, limit, num_fewshot, device, add_bos_token)


def run_specs(
    model: Any,
    tokenizer: Any,
    specs: Sequence[TaskSpec],
    offline: dict[str, OfflineTask],
    batch_size: int = 16,
    limit: int | None = None,
    num_fewshot: int = 0,
    device: str | None = None,
    add_bos_token: bool | None = None,
) -> list[TaskResult]:
    """Evaluate already resolved tasks (offline ones already generated); see `evaluate_tasks`."""
    from lm_eval.tasks import TaskManager

    # Offline tasks are passed as YAML paths, which any TaskManager loads; only hub tasks need the full index.
    task_args = [str(offline[spec.name].yaml_path) if spec.offline else spec.name for spec in specs]
    if all(spec.offline for spec in specs):
        manager = TaskManager(include_path=[str(task.directory) for task in offline.values()], include_defaults=False)
    else:
        manager = lm_eval_task_manager()
    with borrowed(model, resolve_device(device)):
        lm = LiveHFLM(model, tokenizer, batch_size=batch_size, add_bos_token=add_bos_token)
        output = _simple_evaluate(lm, task_args, manager, limit, num_fewshot)
    return [_task_result(output, spec, offline[spec.name].name if spec.offline else spec.name) for spec in specs]


def _simple_evaluate(lm: Any, task_args: list[str], manager: Any, limit: int | None, num_fewshot: int) -> dict:
    """lm-eval's `simple_evaluate` for a pre-built model, without its per-call environment report.

    Mirrors lm-eval 0.4.x `simple_evaluate` step by step (global seeds 0/1234/1234, tasks loaded by the task
    manager, every task's few-shot count set as `num_fewshot=<int>` sets it, few-shot sampler seed 1234, then
    `evaluator.evaluate` with the same arguments), so the results are the CLI's. What it leaves out is the
    metadata `simple_evaluate` appends after evaluating: `pip list`, `nvidia-smi` and `git` subprocesses
    (about 0.5 s on every call, more on GPU hosts), which an evaluation every N training tokens pays again
    and again. litprune's records carry their own version information.
    """
    from lm_eval import evaluator
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED

    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    torch.manual_seed(DEFAULT_OTHER_SEED)
    loaded = manager.load(task_args)
    for task in loaded["tasks"].values():
        # simple_evaluate(num_fewshot=n): a task whose YAML fixes 0 shots keeps 0, every other task gets n.
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return evaluator.evaluate(
        lm=lm,
        task_dict=loaded,
        limit=limit,
        bootstrap_iters=100000,
        log_samples=True,  # per-example values for paired comparisons; `_per_example` keeps only those
        fewshot_as_multiturn=True,
        verbosity=None,
    )


def _task_result(output: dict[str, Any], spec: TaskSpec, lm_eval_name: str) -> TaskResult:
    """`spec`'s result from lm-eval's output, where it is filed under `lm_eval_name` (the name lm-eval ran it under)."""
    import lm_eval

    results = output["results"].get(lm_eval_name)
    if results is None:
        raise RuntimeError(f"lm-eval returned no result for task {lm_eval_name!r} (got {sorted(output['results'])}).")
    metrics, stderrs = {}, {}
    for key, value in results.items():
        name, _, filter_name = key.partition(",")
        if filter_name != "none" or not isinstance(value, int | float):
            continue
        if name.endswith("_stderr"):
            stderrs[name.removesuffix("_stderr")] = float(value)
        else:
            metrics[name] = float(value)
    metric = spec.metric or ("acc" if "acc" in metrics else next(iter(metrics), None))
    if metric not in metrics:
        raise ValueError(
            f"Task {spec.name!r} reported metrics {sorted(metrics)}, not {metric!r}; choose one as "
            f"'{spec.name}:<metric>'."
        )
    samples = output.get("n-samples", {}).get(lm_eval_name, {})
    return TaskResult(
        task=spec.name,
        metric=metric,
        value=metrics[metric],
        stderr=stderrs.get(metric),
        num_examples=int(samples.get("effective", 0)),
        num_examples_total=int(samples.get("original", 0)),
        num_fewshot=int(output.get("n-shot", {}).get(lm_eval_name, 0)),
        task_version=output.get("versions", {}).get(lm_eval_name),
        lm_eval_version=lm_eval.__version__,
        metrics=metrics,
        offline=spec.offline,
        lm_eval_task=lm_eval_name,
        per_example=_per_example(output.get("samples", {}).get(lm_eval_name), metric),
    )


def _per_example(samples: list[dict[str, Any]] | None, metric: str) -> dict[str, Any] | None:
    """The compact per-example record of `TaskResult.per_example` from lm-eval's logged samples of one task."""
    rows = [sample for sample in samples or [] if sample.get("filter") == "none" and metric in sample]
    if not rows or not all(isinstance(row[metric], int | float) for row in rows):
        return None
    rows.sort(key=lambda row: row["doc_id"])
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row['doc_id']}:{row.get('doc_hash', '')}\n".encode())
    return {
        "metric": metric,
        "filter": "none",
        "values": [float(row[metric]) for row in rows],
        "doc_ids": [int(row["doc_id"]) for row in rows],
        "docs_sha256": digest.hexdigest(),
    }


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    # lm-eval warns on every construction that the model is pre-built, which is the point here; keep errors.
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
