"""What a finished arm left on disk, read back for the ledger, the report and the plots.

An arm's run directory holds `results.json` (written by `litprune fit` when the run ends: exact tokens seen, init
record and calibration tokens, parameter counts, final validation loss), `metrics.jsonl` (the curves), `export/`
(the Hugging Face model) and, once the study evaluated it, `eval.json` (`litprune.eval.run.run_eval`'s record).
The token ranges an arm read (`TokenRange`) come from the same `results.json`: its training slice from the data
module's record (`data.train_read`), its calibration windows' slice from the init record (`run.init.calibration`).
The study adds `study_arm.json`: the hash of the config the arm was started with, so a changed config is never
mistaken for a finished arm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TokenRange:
    """Tokens `[start, end)` of one split that a run read, for one role (`train` or `calibration`).

    Attributes:
        role: `train` (the run's own training slice) or `calibration` (the slice its pruning method read).
        slice: the slice's name in the run's data settings.
        split: the prepared split the offsets refer to.
        start: first token offset in the split.
        end: end offset (exclusive) in the split; None in a plan whose slice runs to the end of its split.
        tokens: tokens read from the range (None when not recorded).
        epochs: passes over the range (training only; None when not recorded).
    """

    role: str
    slice: str
    split: str
    start: int
    end: int | None
    tokens: int | None = None
    epochs: float | None = None

    def overlaps(self, other: TokenRange) -> bool:
        """Same split and intersecting `[start, end)` (an open end reaches the end of the split)."""
        if self.split != other.split:
            return False
        return (other.end is None or self.start < other.end) and (self.end is None or other.start < self.end)

    def __str__(self) -> str:
        end = "end of split" if self.end is None else f"{self.end:,}"
        return f"{self.slice}: {self.split}[{self.start:,}, {end})"


def declared_range(slices: dict[str, Any] | None, name: str, role: str) -> TokenRange:
    """The range a data config declares for slice `name`; its end is None when the slice runs to the end of its
    split. A name the config does not define is a default slice: a whole split of that name."""
    declared = (slices or {}).get(name) or {"split": name}
    start = declared.get("start") or 0
    end = declared.get("end")
    if end is None and declared.get("tokens") is not None:
        end = int(start) + int(declared["tokens"])
    return TokenRange(role, str(name), str(declared.get("split", name)), int(start), None if end is None else int(end))


def train_range(result: dict[str, Any] | None) -> TokenRange | None:
    """The training range of a finished run's `results.json` (None when the record does not state it).

    Reads the data module's `train_read` record; records written before it existed still name the training slice
    (`train_slice`, `slices`) and its `epochs`, which give the same range.
    """
    data = (result or {}).get("data") or {}
    read = data.get("train_read")
    if isinstance(read, dict) and _has_range(read):
        return TokenRange(
            "train",
            str(read["slice"]),
            str(read["split"]),
            int(read["start"]),
            int(read["end"]),
            _int_or_none(read.get("tokens")),
            read.get("epochs"),
        )
    name = data.get("train_slice")
    found = (data.get("slices") or {}).get(name) if name is not None else None
    if not isinstance(found, dict) or not _has_range({"slice": name, **found}):
        return None
    return TokenRange(
        "train",
        str(name),
        str(found["split"]),
        int(found["start"]),
        int(found["end"]),
        _int_or_none(data.get("train_tokens_read")),
        (data.get("epochs") or {}).get(name),
    )


def calibration_range(result: dict[str, Any] | None) -> TokenRange | None:
    """The slice a finished run's pruning method calibrated on (None when the init record does not state it)."""
    init = ((result or {}).get("run") or {}).get("init") or {}
    record = init.get("calibration")
    if not isinstance(record, dict) or not _has_range(record):
        return None
    return TokenRange(
        "calibration",
        str(record["slice"]),
        str(record["split"]),
        int(record["start"]),
        int(record["end"]),
        _int_or_none(record.get("tokens_used")),
    )


def _has_range(record: dict[str, Any]) -> bool:
    return all(record.get(key) is not None for key in ("slice", "split", "start", "end"))


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


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
