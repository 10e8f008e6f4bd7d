"""Token budgets: runs are sized in tokens and converted to optimizer steps exactly.

One optimizer step consumes `micro_batch_size x accumulate_grad_batches x world_size` windows of `seq_len`
predicted tokens. A budget must be a whole number of steps, so a run stops at exactly `max_tokens` tokens;
anything else is an error that proposes the two nearest budgets that work.

The LR schedule is sized from this budget, never from `trainer.estimated_stepping_batches` (calling that breaks
the restore of stateful data loaders, Lightning issue 20550).

A resume keeps the checkpoint's tokens per step (`resume_budget`): another batch shape would end the run at a
different token count with a schedule sized for other steps. Asked explicitly (`replan_on_resume`), the tokens
left are re-planned as whole steps of the new shape, and the budget remembers the steps and tokens done before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The factors of tokens per step, named by the settings that change them (the order of `describe_step`).
STEP_FACTORS = {
    "micro_batch_size": "data.micro_batch_size",
    "accumulate_grad_batches": "trainer.accumulate_grad_batches",
    "world_size": "world_size (trainer.devices x trainer.num_nodes)",
    "seq_len": "data.seq_len",
}


@dataclass(frozen=True)
class TokenBudget:
    """A training budget in tokens and the step arithmetic behind it.

    Attributes:
        max_tokens: training tokens of the run (predicted tokens, i.e. sequences x seq_len).
        seq_len: tokens per training sequence.
        micro_batch_size: sequences per device per forward pass.
        accumulate_grad_batches: micro-batches per optimizer step.
        world_size: data-parallel processes.
        done_steps: optimizer steps trained with another batch shape before a re-planned resume (0 otherwise).
        done_tokens: tokens of those steps; the rest of `max_tokens` must be whole steps of this shape.
    """

    max_tokens: int
    seq_len: int
    micro_batch_size: int
    accumulate_grad_batches: int = 1
    world_size: int = 1
    done_steps: int = 0
    done_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("max_tokens", "seq_len", "micro_batch_size", "accumulate_grad_batches", "world_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Token budget: {name}={value!r} must be a positive integer.")
        for name in ("done_steps", "done_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Token budget: {name}={value!r} must be a non-negative integer.")
        if self.done_tokens:
            problem = self._replan_problem()
        else:
            problem = self.budget_problem(
                self.max_tokens,
                self.tokens_per_step,
                f"max_tokens={self.max_tokens:,}",
                "max_tokens",
                self.describe_step(),
            )
        if problem:
            raise ValueError(problem)

    def _replan_problem(self) -> str | None:
        left = self.max_tokens - self.done_tokens
        head = (
            f"Re-planning the resume: max_tokens={self.max_tokens:,} minus the {self.done_tokens:,} tokens of the "
            f"checkpoint's {self.done_steps} steps leaves {left:,} tokens"
        )
        if left < 0:
            return f"{head}, fewer than none; the checkpoint has already trained past the budget."
        if left % self.tokens_per_step == 0:
            return None
        options = []
        for factor in ("accumulate_grad_batches", "micro_batch_size"):
            values = self.dividing_values(left, factor)
            if values:
                options.append(f"{STEP_FACTORS[factor]} {' or '.join(str(v) for v in values)}")
        hint = f"; use {', or '.join(options)}" if options else "; resume with the checkpoint's batch shape"
        return (
            f"{head}, not a whole number of the new steps of {self.tokens_per_step:,} tokens per step "
            f"({self.describe_step()}){hint}."
        )

    def dividing_values(self, tokens: int, factor: str) -> list[int]:
        """The values of `factor` nearest to the current one (below and above) whose steps divide `tokens`."""
        current = getattr(self, factor)
        rest = self.tokens_per_step // current
        if tokens % rest:
            return []
        units = tokens // rest
        below = [v for v in range(current - 1, 0, -1) if units % v == 0][:1]
        above = [v for v in range(current + 1, units + 1) if units % v == 0][:1]
        return below + above

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
        """Optimizer steps of the whole run (those done before a re-planned resume included)."""
        return self.done_steps + (self.max_tokens - self.done_tokens) // self.tokens_per_step

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
        return describe_step(self.record())

    def record(self) -> dict[str, int]:
        """Tokens per step, its factors and the re-planned part: what a checkpoint stores to check a resume."""
        return {
            "tokens_per_step": self.tokens_per_step,
            "micro_batch_size": self.micro_batch_size,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "world_size": self.world_size,
            "seq_len": self.seq_len,
            "done_steps": self.done_steps,
            "done_tokens": self.done_tokens,
        }


def describe_step(shape: Mapping[str, Any]) -> str:
    """A batch shape (`TokenBudget.record`) as `data.micro_batch_size 8 x trainer.accumulate_grad_batches 1 x ...`."""
    return " x ".join(f"{STEP_FACTORS[key].split(' ')[0]} {shape.get(key, '?')}" for key in STEP_FACTORS)


def resume_budget(
    max_tokens: int,
    seq_len: int,
    micro_batch_size: int,
    accumulate_grad_batches: int,
    world_size: int,
    saved: Mapping[str, Any],
    replan: bool = False,
    source: str = "the checkpoint",
) -> TokenBudget:
    """The budget of a run resumed from a checkpoint whose litprune record is `saved`.

    The tokens per step must equal the checkpoint's; a shape with the same product (e.g. micro-batch 16 x
    accumulation 1 for 8 x 2) reads the same windows per step and is accepted. With `replan`, another product is
    accepted when the tokens left (`max_tokens - saved["tokens_seen"]`) are a whole number of the new steps; the
    returned budget then counts the checkpoint's `global_step` steps as done.

    Args:
        max_tokens, seq_len, micro_batch_size, accumulate_grad_batches, world_size: the run's settings now.
        saved: the checkpoint's litprune record: `tokens_per_step`, `tokens_seen`, `global_step` and, from
            checkpoints that store it, `step_shape` (`TokenBudget.record`).
        replan: re-plan the tokens left with the new shape instead of refusing it.
        source: how messages name the checkpoint (its path).

    Raises:
        ValueError: the tokens per step changed and `replan` is off (both shapes and the changed factors named),
            or the tokens left are not whole new steps (the nearest shapes that work named).
    """
    now = {"max_tokens": max_tokens, "seq_len": seq_len, "micro_batch_size": micro_batch_size}
    now.update(accumulate_grad_batches=accumulate_grad_batches, world_size=world_size)
    shape = dict(saved.get("step_shape") or {})
    before = shape.get("tokens_per_step", saved.get("tokens_per_step"))
    current = TokenBudget.step_tokens(seq_len, micro_batch_size, accumulate_grad_batches, world_size)
    if before is None or int(before) == current:
        done = {"done_steps": int(shape.get("done_steps", 0)), "done_tokens": int(shape.get("done_tokens", 0))}
        return TokenBudget(**now, **done)
    changed = [
        f"{STEP_FACTORS[key].split(' ')[0]} {shape[key]} -> {now[key]}"
        for key in STEP_FACTORS
        if key in shape and shape[key] != now[key]
    ]
    if not replan:
        saved_shape = f" ({describe_step(shape)})" if shape else ""
        now_shape = describe_step(now)
        raise ValueError(
            f"Cannot resume from {source}: it was trained with {int(before):,} tokens per step{saved_shape}, "
            f"now {current:,} tokens per step ({now_shape})"
            + (f"; changed: {', '.join(changed)}" if changed else "")
            + ". The run would stop at another token count with an LR schedule sized for other steps. Resume with "
            "the checkpoint's batch shape, or re-plan the tokens left with the new shape by adding "
            "--model.init_args.replan_on_resume=true."
        )
    return TokenBudget(
        **now, done_steps=int(saved.get("global_step") or 0), done_tokens=int(saved.get("tokens_seen") or 0)
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
