"""The paper's learning-rate schedule (FMS style, as in the authors' trainer).

    warmup(t) = 1 - (1 - t / W)^2            (concave quadratic ramp; 1 for t >= W)
    cosine(t) = r + (1 - r) * (1 + cos(pi * t / T)) / 2     (from 1 to r over the FULL run, not offset by warmup)
    factor(t) = min(warmup(t), cosine(t))

with W = min(floor(warmup_fraction * T), max_warmup_steps), T = total optimizer steps and r = min_lr_ratio
(0.1). The LR applied at step t is peak_lr * factor(t).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WarmupCosine:
    """Multiplicative LR factor for `torch.optim.lr_scheduler.LambdaLR`, stepped once per optimizer step.

    Attributes:
        total_steps: optimizer steps of the run (from the token budget).
        warmup_fraction: share of the run used for warmup (paper: 0.05).
        max_warmup_steps: cap on warmup steps (paper: 2000).
        min_lr_ratio: final LR as a fraction of the peak (paper: 0.1).
    """

    total_steps: int
    warmup_fraction: float = 0.05
    max_warmup_steps: int = 2000
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps} must be at least 1.")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={self.warmup_fraction} must be in [0, 1).")
        if self.max_warmup_steps < 0:
            raise ValueError(f"max_warmup_steps={self.max_warmup_steps} must be >= 0.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1].")

    @property
    def warmup_steps(self) -> int:
        return min(int(self.warmup_fraction * self.total_steps), self.max_warmup_steps)

    def __call__(self, step: int) -> float:
        w = self.warmup_steps
        warm = 1.0 if w == 0 or step >= w else 1.0 - (1.0 - step / w) ** 2
        progress = min(step, self.total_steps) / self.total_steps
        cos = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return min(warm, cos)


def resize_schedule_state(checkpoint: dict[str, Any], factor: Callable[[int], float]) -> None:
    """Make a checkpoint's LR-scheduler and optimizer state follow `factor` from its step on (a re-planned resume).

    `LambdaLR` stores the attributes of a callable factor (a `WarmupCosine`'s `total_steps`) and its last LRs, and
    the optimizer stores the LR of the next step; restored as they are, a resume whose steps were re-planned would
    keep the old schedule. This drops the stored factor (the run's own, sized from its budget, stays) and sets the
    LRs to `base_lr x factor(last_epoch)`, in place, before Lightning restores the state.
    """
    schedulers = checkpoint.get("lr_schedulers") or []
    optimizers = checkpoint.get("optimizer_states") or []
    for index, state in enumerate(schedulers):
        if "lr_lambdas" not in state:
            continue
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
        lrs = [base * factor(int(state["last_epoch"])) for base in state["base_lrs"]]
        state["_last_lr"] = lrs
        if index < len(optimizers):
            for group, lr in zip(optimizers[index]["param_groups"], lrs, strict=False):
                group["lr"] = lr
