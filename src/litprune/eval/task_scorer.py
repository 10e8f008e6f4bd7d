"""Downstream-task scorers for Minitron depth: one lm-eval task run on each live candidate model.

Minitron-depth (`litprune.pruning.depth.minitron_depth_window`) scores the dense model and every candidate window
with a callable `model -> float` and keeps the window whose score is closest to the dense one. The pruning layer
knows only plain callables and the built-in "perplexity" on calibration windows; this module builds the callable
for a downstream task, named

    task:<lm-eval task name>[:<metric>]      e.g. "task:winogrande", "task:litprune_next_line", "task:piqa:acc"

The score is the task's metric (default: the paper's metric for the paper's tasks, else `acc`; see
`litprune.eval.tasks`). The reference's downstream criterion is `task:winogrande` with 5 few-shot examples and
`limit = calib_size` (the whole validation set in the 8B script); the few-shot count and the example limit are
passed next to the name (`num_fewshot` / `limit` here, `scorer_fewshot` / `scorer_limit` in
`litprune.inits.StructuredPrune`, which resolves a `task:` name with `make_task_scorer`). Minitron-depth keeps the
window whose score is closest to the dense score, so an accuracy is used as is: a window that scores *above* the
dense model can win, as in the reference. `litprune_next_line` and `litprune_next_span` are generated offline;
other tasks download their data from the hub.

    scorer = make_task_scorer("task:winogrande", tokenizer, num_fewshot=5, limit=1024)
    pruned, record = prune_structured(parent, "minitron_depth", ratio=0.5, scorer=scorer)

lm-eval itself is imported only when a scorer is built, so checking a name (`check_task_scorer`) stays cheap.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from litprune.eval.tasks import PRESETS, TaskSpec, resolve_tasks
from litprune.pruning.scorers import Scorer

TASK_PREFIX = "task:"
"""Prefix of downstream-task scorer names: `task:<lm-eval task name>[:<metric>]`."""

TASK_BATCH_SIZE = 16
"""lm-eval requests per forward pass of a named task scorer (`make_task_scorer` takes any batch size)."""


def is_task_scorer(scorer: object) -> bool:
    """True for a downstream-task scorer name (`task:...`)."""
    return isinstance(scorer, str) and scorer.startswith(TASK_PREFIX)


def parse_task_scorer(name: str) -> TaskSpec:
    """Resolve a task scorer name (`task:<task>[:<metric>]`, prefix optional) to its one `TaskSpec`.

    Checking a task that is neither the paper's nor litprune's builds lm-eval's task index (seconds, once per
    process); nothing is downloaded.

    Raises:
        ValueError: no task named, a preset or several tasks, or an unknown task (`UnknownTaskError`, with the
            closest known names).
    """
    task = name.removeprefix(TASK_PREFIX).strip() if isinstance(name, str) else ""
    if not task:
        raise ValueError(
            f"Scorer {name!r} names no task; write 'task:<lm-eval task name>[:<metric>]', e.g. 'task:winogrande' "
            "or 'task:litprune_next_line'."
        )
    if task.partition(":")[0] in PRESETS:
        raise ValueError(
            f"Scorer {name!r} names the preset {task.partition(':')[0]!r}, which is several tasks; a scorer is one "
            "task, e.g. 'task:winogrande' or 'task:litprune_next_line'."
        )
    return resolve_tasks([task])[0]


def task_option_problems(
    num_fewshot: object, limit: object, names: tuple[str, str] = ("num_fewshot", "limit")
) -> list[str]:
    """Problems with a task scorer's options, phrased with the caller's argument `names`; empty when valid."""
    problems = []
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        problems.append(f"{names[0]}={num_fewshot!r} must be a non-negative integer (the reference uses 5).")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"{names[1]}={limit!r} must be a positive integer or None (all examples).")
    return problems


def check_task_scorer(
    name: str,
    num_fewshot: int = 0,
    limit: int | None = None,
    option_names: tuple[str, str] = ("num_fewshot", "limit"),
) -> None:
    """Check a task scorer name and its options before any model is loaded; all problems are reported together.

    Args:
        name: `task:<lm-eval task>[:<metric>]`.
        num_fewshot: few-shot examples per prompt.
        limit: number of examples scored (None = all).
        option_names: the names the caller exposes the options under (e.g. `("scorer_fewshot", "scorer_limit")`),
            used in the messages.

    Raises:
        ValueError: unknown task (with close matches), a preset, no task, or invalid options.
    """
    problems: list[str] = []
    try:
        parse_task_scorer(name)
    except ValueError as err:
        problems.append(f"scorer={name!r}: {err}")
    problems.extend(task_option_problems(num_fewshot, limit, option_names))
    if problems:
        raise ValueError(" ".join(problems))


def make_task_scorer(
    task: str,
    tokenizer: Any,
    num_fewshot: int = 0,
    limit: int | None = None,
    batch_size: int = TASK_BATCH_SIZE,
    task_documents: Any = None,
    max_examples: int | None = None,
) -> Scorer:
    """A scorer `model -> metric of one lm-eval task`, for `minitron_depth_window` or `prune_structured`.

    Every call runs `litprune.eval.harness.evaluate_tasks` on the model as it is (a candidate with a block of
    layers skipped, or the dense model) and returns the task's metric value. The model's train/eval flag,
    device and the random states are restored by `evaluate_tasks`.

    Args:
        task: `<lm-eval task name>[:<metric>]`, with or without the `task:` prefix (e.g. "winogrande",
            "task:litprune_next_line", "piqa:acc"); exactly one task, not a preset.
        tokenizer: the model's tokenizer (the parent's).
        num_fewshot: few-shot examples per prompt (the reference's 8B script: 5 for winogrande).
        limit: score on the first `limit` examples only (the reference passes its `calib_size`); None = all.
        batch_size: lm-eval requests per forward pass.
        task_documents: documents for litprune's offline tasks; None uses the embedded corpus's held-out split.
        max_examples: size of a generated offline task; None uses `evaluate_tasks`' default.

    Returns:
        The scorer; its `__name__` is the full scorer name (`task:...`, which `prune_structured` records as
        `scorer`) and its `details` dict (task, metric, num_fewshot, limit, batch_size, and after the first call
        num_examples, num_examples_total and lm_eval_version) goes into pruning records.

    Raises:
        ValueError: an unknown task (with close matches), a preset or several tasks, a missing tokenizer, or a
            bad `num_fewshot` / `limit` / `batch_size`.
    """
    from litprune.eval.harness import evaluate_tasks

    spec = parse_task_scorer(task)
    problems = task_option_problems(num_fewshot, limit)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size={batch_size!r} must be a positive integer.")
    if tokenizer is None:
        problems.append(f"Scorer {_task_name(task)!r} runs lm-eval and needs the model's tokenizer; pass tokenizer=.")
    if problems:
        raise ValueError(" ".join(problems))
    options: dict[str, Any] = {"task_documents": task_documents}
    if max_examples is not None:
        options["max_examples"] = max_examples
    task_arg = f"{spec.name}:{spec.metric}" if spec.metric else spec.name
    details: dict[str, Any] = {
        "task": spec.name,
        "metric": spec.metric,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "batch_size": batch_size,
    }

    def score(model: nn.Module) -> float:
        result = evaluate_tasks(
            model, tokenizer, [task_arg], batch_size=batch_size, limit=limit, num_fewshot=num_fewshot, **options
        )[0]
        details.update(
            metric=result.metric,
            num_examples=result.num_examples,
            num_examples_total=result.num_examples_total,
            lm_eval_version=result.lm_eval_version,
        )
        return result.value

    score.__name__ = _task_name(task)
    score.details = details  # type: ignore[attr-defined]
    return score


def _task_name(task: str) -> str:
    return task if task.startswith(TASK_PREFIX) else TASK_PREFIX + task
