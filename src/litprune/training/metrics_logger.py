"""`MetricsLogger`: an append-only JSON-lines metrics log in the run directory.

Every call appends one line `{"step": N, "metric": value, ...}` and flushes, so nothing logged is lost when a run
is killed, and a resumed run appends after it (Lightning's CSVLogger deletes an existing metrics.csv on resume).
Readers keep the last record of each (step, metric): `read_metrics` does that.
"""

from __future__ import annotations

import json
import math
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class MetricsLogger(Logger):
    """Write metrics to `<save_dir>/metrics.jsonl` (rank 0 only).

    Args:
        save_dir: the run directory; defaults to the Trainer's `default_root_dir` when built by `litprune`.
        filename: name of the metrics file.
    """

    def __init__(self, save_dir: str = ".", filename: str = "metrics.jsonl") -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self.filename = filename

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return self._save_dir

    @property
    def path(self) -> Path:
        return Path(self._save_dir) / self.filename

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters live in the run's config.yaml; nothing extra is written."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        record: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            record[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_metrics(path: str | Path) -> dict[str, dict[int, Any]]:
    """Read a metrics.jsonl into `{metric: {step: value}}`, later lines winning (resumed runs re-log steps)."""
    series: dict[str, dict[int, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        step = record.pop("step")
        for key, value in record.items():
            series.setdefault(key, {})[step] = value
    return series
