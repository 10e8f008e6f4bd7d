"""Callbacks for the run-directory tests: stop a real run at a chosen step, as a crash would."""

from __future__ import annotations

from lightning.pytorch import Callback


class CrashAtStep(Callback):
    """Raise after optimizer step `step` (before that step's checkpoint), as a crash or a kill would end the run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")
