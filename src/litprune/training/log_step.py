"""The step index under which Lightning logs a training batch's metrics, for metrics logged outside `self.log`.

Lightning labels the metrics of optimizer step k (1-based, `trainer.global_step == k` once it ran) with k - 1: its
logger connector logs them from `on_train_batch_end` with the number of batches that stepped *before* this one.
A callback or module that calls `logger.log_metrics` itself must use the same label, or its value for a step
lands next to the loss of the following step.
"""

from __future__ import annotations

import lightning.pytorch as pl


def training_log_step(trainer: pl.Trainer) -> int:
    """The step Lightning gives the metrics the current training batch logs (valid in `on_train_batch_end`)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def optimizer_stepped(trainer: pl.Trainer) -> bool:
    """Whether the current training batch ends with an optimizer step (False while accumulating gradients)."""
    return not trainer.fit_loop._should_accumulate()
