"""`ValidateAtStart`: measure the initial model on the validation windows before the first optimizer step.

Every loss curve then starts from the model training began with: the pruned model of a `P_M-R_N` arm before any
retraining, the random model of an `S_N` arm. The validation runs inside `fit`, through Lightning's own validation
loop, so it sees exactly what the periodic validations see (same windows, same token-weighted mean over all
processes, masks re-applied by `SparseMask.on_validation_start`) and no second model is built: the init (pruning
included) ran once, in `configure_model`.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from litprune.training.log_step import BEFORE_TRAINING_LOG_STEP, logged_at_step


class ValidateAtStart(Callback):
    """Run the validation loop once at the start of a fresh `fit`, before the first optimizer step.

    `litprune fit` adds it unless `--validate_at_start false`; with another LightningCLI or a plain Trainer, list it
    in the callbacks. Sample YAML (`trainer.callbacks` of a LightningCLI config)::

        trainer:
          callbacks:
            - class_path: litprune.callbacks.ValidateAtStart

    The metrics it logs (`val/loss`, `val/ppl` for `CausalLM`) carry the step label `-1`
    (`litprune.training.log_step.BEFORE_TRAINING_LOG_STEP`): Lightning labels a validation inside training with the
    label of the optimizer step it follows (`0` after the first step), and the study's `loss_curve` reads label `-1`
    as 0 training tokens. In `metrics.jsonl`: `{"step": -1, "val/loss": 6.24, "val/ppl": 515.1, "epoch": 0}`.

    Lifecycle:

    - `on_train_start` (every process, after `on_fit_start`, so `SparseMask` has built and applied its masks):
      unless the fit resumes from a checkpoint (its curve already has the point), has already stepped, or has no
      validation (no validation dataloader, `limit_val_batches=0`, no `validation_step`), run the fit's validation
      loop with the step label `-1`. Training counters (tokens seen, data position, optimizer steps) are not touched:
      the data module counts windows only while the trainer is training, and `SparseMask`'s Wanda statistics only
      during training batches.
    - Afterwards the validation metrics are removed from `trainer.callback_metrics`, so a `ModelCheckpoint` or
      `EarlyStopping` monitoring `val/loss` never ranks a trained checkpoint with the initial model's loss; a
      checkpoint due before the first periodic validation waits for it, as without this callback. (Lightning's
      ModelCheckpoint never saves at step 0.)

    Under DDP every process runs the loop (the decision depends only on state all processes share), as the
    validation's all-reduce requires.
    """

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None or trainer.global_step > 0 or not trainer.enable_validation:
            return
        callback_metrics = trainer.callback_metrics
        before = dict(callback_metrics)
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        connector = trainer._logger_connector
        first_loop_iter = connector._first_loop_iter
        # What Lightning's training epoch loop does around a validation inside training.
        trainer.validating = True
        try:
            with logged_at_step(trainer, BEFORE_TRAINING_LOG_STEP):
                val_loop.run()
        finally:
            trainer.training = True
            connector._first_loop_iter = first_loop_iter
        # "No validation has run during training yet": ModelCheckpoint raises, rather than warns, on a missing
        # monitored metric once one has.
        val_loop._has_run = False
        callback_metrics.clear()
        callback_metrics.update(before)
