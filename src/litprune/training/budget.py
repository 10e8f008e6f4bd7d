"""Token budgets: runs are sized in tokens and converted to optimizer steps exactly.

One optimizer step consumes `micro_batch_size x accumulate_grad_batches x world_size` windows of `seq_len`
predicted tokens. A budget must be a whole number of steps, so a run stops at exactly `max_tokens` tokens;
anything else is an error that proposes the two nearest budgets that work.

The LR schedule is sized from this budget, never from `trainer.estimated_stepping_batches` (calling that breaks
the restore of stateful data loaders, Lightning issue 20550).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenBudget:
    """A training budget in tokens and the step arithmetic behind it.

    Attributes:
        max_tokens: training tokens of the run (predicted tokens, i.e. sequences x seq_len).
        seq_len: tokens per training sequence.
        micro_batch_size: sequences per device per forward pass.
        accumulate_grad_batches: micro-batches per optimizer step.
        world_size: data-parallel processes.
    """

    max_tokens: int
    seq_len: int
    micro_batch_size: int
    accumulate_grad_batches: int = 1
    world_size: int = 1

    def __post_init__(self) -> None:
        for name in ("max_tokens", "seq_len", "micro_batch_size", "accumulate_grad_batches", "world_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Token budget: {name}={value!r} must be a positive integer.")
        per_step = self.tokens_per_step
        if self.max_tokens < per_step:
            raise ValueError(
                f"max_tokens={self.max_tokens:,} is smaller than one optimizer step, which consumes "
                f"{per_step:,} tokens ({self.describe_step()}). Raise max_tokens to at least {per_step:,} "
                "or shrink the batch (data.micro_batch_size, data.seq_len, trainer.accumulate_grad_batches)."
            )
        if self.max_tokens % per_step:
            lower = self.max_tokens // per_step * per_step
            raise ValueError(
                f"max_tokens={self.max_tokens:,} is not a whole number of optimizer steps of {per_step:,} tokens "
                f"({self.describe_step()}), so the run could not stop at exactly that many tokens. "
                f"Use max_tokens={lower:,} or {lower + per_step:,}, or change the batch shape."
            )

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch_size * self.accumulate_grad_batches * self.world_size

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.max_tokens // self.tokens_per_step

    @property
    def micro_batches_per_rank(self) -> int:
        """Micro-batches each process reads during the whole run."""
        return self.steps * self.accumulate_grad_batches

    @property
    def sequences(self) -> int:
        """Training sequences read by all processes together."""
        return self.max_tokens // self.seq_len

    def describe_step(self) -> str:
        return (
            f"micro_batch_size {self.micro_batch_size} x accumulate_grad_batches {self.accumulate_grad_batches} "
            f"x world_size {self.world_size} x seq_len {self.seq_len}"
        )


def paper_token_label(tokens: int) -> str:
    """The paper's nominal label for a token count (its step counts assume 4.0M tokens per step).

    The paper calls 12,500 steps of 4,194,304 tokens "50B"; we report exact counts and this label beside them.
    """
    nominal = tokens / 4_194_304 * 4.0e6
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if nominal >= scale:
            return f"{nominal / scale:.3g}{unit}"
    return str(tokens)
