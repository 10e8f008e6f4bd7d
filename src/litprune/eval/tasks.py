"""Which tasks to run, and which metric of each one the paper reports.

Names accepted wherever tasks are listed (`run_eval`, `EvalCallback`, `evaluate_tasks`):

- `paper`: the paper's eight zero-shot tasks, each with the metric the paper reports
  (WinoGrande acc, ARC-Easy acc_norm, ARC-Challenge acc_norm, HellaSwag acc_norm, PIQA acc_norm, SciQ acc,
  BoolQ acc, OpenBookQA acc_norm; the paper does not say which OBQA metric it used, acc_norm is assumed).
  They download their data from the Hugging Face hub.
- `offline`: litprune's two offline tasks (`litprune_next_line`, `litprune_next_span`), generated from held-out
  text with no download (see `litprune.eval.offline_tasks`).
- any single task name lm-eval knows (`lambada_openai`, `mmlu`, ...), optionally as `name:metric` to choose the
  reported metric (default: the paper's metric for the paper's tasks, else `acc` when the task has it, else the
  first metric lm-eval reports).

Unknown names fail before any model is loaded, with the closest known names. Checking a name that is not
litprune's needs lm-eval's task index, which parses every task YAML it ships (seconds); the index is built once
per process and reused.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litprune.eval.offline_tasks import NEXT_LINE, NEXT_SPAN
from litprune.utils.suggest import did_you_mean

PAPER_TASKS: dict[str, str] = {
    "winogrande": "acc",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "hellaswag": "acc_norm",
    "piqa": "acc_norm",
    "sciq": "acc",
    "boolq": "acc",
    "openbookqa": "acc_norm",
}
"""The paper's zero-shot tasks and the metric it reports for each."""

OFFLINE_TASKS: dict[str, str] = {NEXT_LINE: "acc", NEXT_SPAN: "acc"}
"""litprune's generated tasks and their headline metric (acc_norm is reported too)."""

PRESETS: dict[str, tuple[str, ...]] = {"paper": tuple(PAPER_TASKS), "offline": tuple(OFFLINE_TASKS)}

_RESERVED_PREFIX = "litprune_"


class UnknownTaskError(ValueError):
    """One or more task names that neither litprune nor lm-eval knows."""


@dataclass(frozen=True)
class TaskSpec:
    """One task to run.

    Attributes:
        name: the lm-eval task name.
        metric: the metric reported as the task's value; None means `acc` when present, else the first one.
        offline: True for litprune's generated tasks (data from held-out text, no download).
    """

    name: str
    metric: str | None
    offline: bool


def resolve_tasks(names: Sequence[str] | str) -> list[TaskSpec]:
    """Expand presets, attach metrics and check every name, all before anything is evaluated.

    Args:
        names: task names, presets (`paper`, `offline`) or `name:metric` entries. Duplicates are dropped.

    Returns:
        One `TaskSpec` per distinct task, in the order given.

    Raises:
        UnknownTaskError: every unknown name, each with its closest known names.
        ValueError: an empty list, or a metric given for a preset.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("No tasks given; name at least one task or a preset ('paper', 'offline').")
    specs: list[TaskSpec] = []
    hub: list[tuple[str, str | None]] = []
    unknown: list[str] = []
    for raw in names:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"Task names must be non-empty strings, got {raw!r}.")
        name, _, metric = raw.strip().partition(":")
        if name in PRESETS:
            if metric:
                raise ValueError(f"{raw!r}: a preset expands to tasks with their own metrics; drop ':{metric}'.")
            specs.extend(TaskSpec(task, _default_metric(task), task in OFFLINE_TASKS) for task in PRESETS[name])
        elif name in OFFLINE_TASKS:
            specs.append(TaskSpec(name, metric or OFFLINE_TASKS[name], True))
        elif name in PAPER_TASKS:
            specs.append(TaskSpec(name, metric or PAPER_TASKS[name], False))
        elif name.startswith(_RESERVED_PREFIX):
            unknown.append(name)
        else:
            hub.append((name, metric or None))
    if hub:
        known = set(lm_eval_task_names())
        for name, metric in hub:
            if name in known:
                specs.append(TaskSpec(name, metric or PAPER_TASKS.get(name), False))
            else:
                unknown.append(name)
    if unknown:
        raise UnknownTaskError(_unknown_message(unknown, consult_index=bool(hub)))
    seen: set[str] = set()
    distinct = []
    for spec in specs:
        if spec.name not in seen:
            seen.add(spec.name)
            distinct.append(spec)
    return distinct


def own_task_names() -> list[str]:
    """litprune's presets and offline tasks."""
    return [*PRESETS, *OFFLINE_TASKS]


@functools.lru_cache(maxsize=1)
def lm_eval_task_manager() -> Any:
    """lm-eval's `TaskManager` over its built-in tasks, built once per process (indexing takes seconds)."""
    from litprune.utils.extras import require

    return require("lm_eval.tasks", "eval", "Evaluating lm-eval tasks").TaskManager()


def lm_eval_task_names() -> list[str]:
    """Every task, group and tag name lm-eval ships."""
    return list(lm_eval_task_manager().all_tasks)


def _default_metric(task: str) -> str | None:
    return OFFLINE_TASKS.get(task) or PAPER_TASKS.get(task)


def _unknown_message(unknown: list[str], consult_index: bool) -> str:
    candidates = own_task_names() + (lm_eval_task_names() if consult_index else [])
    lines = []
    for name in unknown:
        hint = did_you_mean(name, candidates, sentence=False) or "no close match."
        lines.append(f"  {name!r}: {hint}")
    return (
        "Unknown task name(s):\n" + "\n".join(lines) + "\nUse a preset ('paper', 'offline'), litprune's offline tasks "
        f"({', '.join(OFFLINE_TASKS)}), or a task listed by `lm_eval ls tasks`."
    )
