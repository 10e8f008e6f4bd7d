"""A callback for the resume test: freezes the run at a chosen step so the test can kill it for real."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch import Callback


class StallAtStep(Callback):
    """After optimizer step `step`, write `flag` and sleep, waiting to be killed."""

    def __init__(self, step: int, flag: str, seconds: float = 600.0) -> None:
        self.step, self.flag, self.seconds = step, flag, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.flag).write_text(str(trainer.global_step))
            time.sleep(self.seconds)


class FailAtStep(Callback):
    """Raise at the start of optimizer step `step`: an in-process stand-in for a crashed run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"interrupted at step {self.step}")
