"""What a finished arm left on disk, read back for the ledger, the report and the plots.

An arm's run directory holds `results.json` (written by `litprune fit` when the run ends: exact tokens seen, init
record and calibration tokens, parameter counts, final validation loss), `metrics.jsonl` (the curves), `export/`
(the Hugging Face model) and, once the study evaluated it, `eval.json` (`litprune.eval.run.run_eval`'s record).
The study adds `study_arm.json`: the hash of the config the arm was started with, so a changed config is never
mistaken for a finished arm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litprune.training.metrics_logger import read_metrics

MARKER = "study_arm.json"
EVAL_RECORD = "eval.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it does not exist.

    Raises:
        ValueError: the file exists but is not valid JSON (named, with what to do).
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({err}). Delete it and rerun the study to rebuild it."
        ) from err


def run_result(run_dir: Path) -> dict[str, Any] | None:
    """`results.json` of a run directory (None until the run has finished)."""
    return read_json(Path(run_dir) / "results.json")


def eval_result(run_dir: Path) -> dict[str, Any] | None:
    """The study's evaluation record of a run (None until evaluated)."""
    return read_json(Path(run_dir) / EVAL_RECORD)


def loss_curve(
    run_dir: Path, tokens_per_step: int, steps: int | None = None, metric: str = "val/loss"
) -> list[tuple[int, float]]:
    """`(training tokens, value)` points of a metric from `metrics.jsonl`, in token order.

    Lightning logs a validation run inside training at the 0-based index of the optimizer step it follows, and the
    final validation after fit at the step count, so a point's tokens are `min(step + 1, steps) x tokens_per_step`
    (the later record wins when two land on the same count).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    series = read_metrics(path).get(metric, {})
    points: dict[int, float] = {}
    for step, value in sorted((s, v) for s, v in series.items() if s is not None):
        if isinstance(value, str):
            continue  # a non-finite value, logged as text
        done = int(step) + 1 if steps is None else min(int(step) + 1, int(steps))
        points[done * int(tokens_per_step)] = float(value)
    return sorted(points.items())


def task_accuracy(record: dict[str, Any] | None) -> dict[str, float]:
    """`{task: value}` of the reported metric of every task in an evaluation record."""
    if not record:
        return {}
    return {entry["task"]: float(entry["value"]) for entry in record.get("tasks", []) if entry.get("value") is not None}


def heldout_perplexity(record: dict[str, Any] | None) -> dict[str, float]:
    """`{source: perplexity}` of an evaluation record."""
    if not record:
        return {}
    out = {}
    for entry in record.get("perplexity", []):
        name = entry.get("source") or entry.get("name") or "text"
        split = entry.get("split")
        key = f"{name}:{split}" if split and ":" not in str(name) else str(name)
        if entry.get("perplexity") is not None:
            out[key] = float(entry["perplexity"])
    return out
