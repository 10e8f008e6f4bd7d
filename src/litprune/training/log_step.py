"""The step index under which Lightning logs a training batch's metrics, for metrics logged outside `self.log`.

Lightning labels the metrics of optimizer step k (1-based, `trainer.global_step == k` once it ran) with k - 1: its
logger connector logs them from `on_train_batch_end` with the number of batches that stepped *before* this one.
A callback or module that calls `logger.log_metrics` itself must use the same label, or its value for a step
lands next to the loss of the following step. A validation run inside training gets the label of the optimizer
step it follows (k - 1), so a validation before any step is labelled `BEFORE_TRAINING_LOG_STEP` (-1), never 0,
which is the first optimizer step's (and the label of a validation right after it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch as pl


def training_log_step(trainer: pl.Trainer) -> int:
    """The step Lightning gives the metrics the current training batch logs (valid in `on_train_batch_end`)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def optimizer_stepped(trainer: pl.Trainer) -> bool:
    """Whether the current training batch ends with an optimizer step (False while accumulating gradients)."""
    return not trainer.fit_loop._should_accumulate()


# Lightning's label for metrics measured before the first optimizer step: one below the label of step 1's (0).
# `litprune.study.records.loss_curve` reads a label L as `L + 1` optimizer steps of tokens, so this one as 0 tokens.
BEFORE_TRAINING_LOG_STEP = -1


@contextmanager
def logged_at_step(trainer: pl.Trainer, step: int) -> Iterator[None]:
    """Label the metrics Lightning logs inside this block with `step`; the loop's counter is restored after it.

    Lightning labels what it logs with the fit loop's count of batches that stepped (also saved in checkpoints and
    restored on resume), so the count is set for the block only and put back even if the block raises.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    saved = epoch_loop._batches_that_stepped
    epoch_loop._batches_that_stepped = step
    try:
        yield
    finally:
        epoch_loop._batches_that_stepped = saved
