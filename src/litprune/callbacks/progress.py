"""`TokenProgressBar`: a TQDM bar sized by the token budget, showing exact tokens seen."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class TokenProgressBar(TQDMProgressBar):
    """Progress over the whole run (all micro-batches of the budget), also after a resume.

    The training stream is infinite (slices are re-read in epochs), so Lightning's default bar has no total;
    this one takes it from the step budget and labels the run by tokens rather than epochs.
    """

    @property
    def total_train_batches(self) -> int | float:
        steps = self.trainer.max_steps
        if steps is not None and steps > 0:
            return steps * self.trainer.accumulate_grad_batches
        return super().total_train_batches

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("Training")

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        tokens = getattr(pl_module, "tokens_seen", None)
        if tokens is not None:
            items["tokens"] = _human(tokens)
        return items


def _human(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)
