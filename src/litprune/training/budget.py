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
        problem = self.budget_problem(
            self.max_tokens, self.tokens_per_step, f"max_tokens={self.max_tokens:,}", "max_tokens", self.describe_step()
        )
        if problem:
            raise ValueError(problem)

    @staticmethod
    def step_tokens(seq_len: int, micro_batch_size: int, accumulate_grad_batches: int = 1, world_size: int = 1) -> int:
        """Tokens one optimizer step consumes: `seq_len x micro_batch_size x accumulate_grad_batches x world_size`.

        The one home of that product: a run's budget (`tokens_per_step`) and the study's checks of every arm's
        budget before any run starts both call it.
        """
        return seq_len * micro_batch_size * accumulate_grad_batches * world_size

    @staticmethod
    def budget_problem(
        tokens: int, tokens_per_step: int, label: str, setting: str | None = None, step: str | None = None
    ) -> str | None:
        """Why `tokens` is not a usable budget (less than one step, or not a whole number of steps), or None.

        Args:
            tokens: the budget to check.
            tokens_per_step: tokens of one optimizer step (`step_tokens`).
            label: how the message names the budget and its value, e.g. "max_tokens=1,000".
            setting: the key to change, named in the proposed values (e.g. "max_tokens" gives "use
                max_tokens=768 or 1,024"); None proposes bare numbers.
            step: the batch shape behind `tokens_per_step`, shown where the message suggests changing it.

        Returns:
            The problem as a sentence that proposes the nearest budgets that work, or None when `tokens` is fine.
        """
        shape = f" ({step})" if step else ""
        if tokens < tokens_per_step:
            return (
                f"{label} is smaller than one optimizer step of {tokens_per_step:,} tokens; raise {setting or 'it'} "
                f"to at least {tokens_per_step:,}, or shrink the batch{shape}."
            )
        if tokens % tokens_per_step:
            lower = tokens // tokens_per_step * tokens_per_step
            key = f"{setting}=" if setting else ""
            return (
                f"{label} is not a whole number of optimizer steps of {tokens_per_step:,} tokens; use {key}{lower:,} "
                f"or {lower + tokens_per_step:,} so the run stops at exactly that many tokens, or change the "
                f"batch{shape}."
            )
        return None

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step of this run (`step_tokens` of its batch shape)."""
        return self.step_tokens(self.seq_len, self.micro_batch_size, self.accumulate_grad_batches, self.world_size)

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
        """The batch shape of one step, named by the settings that change it."""
        return (
            f"data.micro_batch_size {self.micro_batch_size} x trainer.accumulate_grad_batches "
            f"{self.accumulate_grad_batches} x world_size {self.world_size} x data.seq_len {self.seq_len}"
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
