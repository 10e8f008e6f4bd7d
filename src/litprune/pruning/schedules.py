"""Sparsity schedules as pure functions of the optimizer step: no Lightning, no tensors.

A schedule answers two questions for a training run: at which optimizer steps does the mask change (the
"pruning events"), and what fraction of each targeted tensor is pruned after the event at a given step.

- `one_shot`: a single event at `start_step` that prunes straight to the final sparsity.
- `gradual` (Zhu & Gupta 2017, "To prune, or not to prune"): events every `frequency` steps from `start_step`
  to `end_step`, following the cubic curve

      s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (n * dt)) ** 3,    t in {t_0, t_0 + dt, ..., t_0 + n * dt}

  with `t_0 = start_step`, `dt = frequency`, `n * dt = end_step - start_step`. It prunes fast while many
  redundant weights remain and slowly near the end. When `end_step - start_step` is not a multiple of
  `frequency`, the last regular event is followed by one more event at exactly `end_step`, so the final
  sparsity is always reached at `end_step`.

Steps count completed optimizer steps (Lightning's `trainer.global_step`), so gradient accumulation does not
change a schedule; convert a token budget with `steps = tokens // (global_batch * seq_len)`.

Sparsity values returned here are the ones *in effect* after the latest event at or before a step; before the
first event nothing is pruned by the schedule and the value is 0.0.
"""

from __future__ import annotations

import math


def validate_schedule(s0: float, s_final: float, start_step: int, end_step: int, frequency: int) -> None:
    """Raise one clear error listing every problem with a gradual schedule's settings.

    Raises:
        ValueError: a sparsity outside [0, 1), `s0 > s_final`, a negative start, `end_step <= start_step`
            or `frequency < 1`.
    """
    problems = []
    for name, value in (("initial_sparsity", s0), ("sparsity", s_final)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            problems.append(f"{name}={value!r} must be a pruned fraction in [0, 1)")
    if not problems and s0 > s_final:
        problems.append(f"initial_sparsity={s0!r} is above sparsity={s_final!r}; masks only ever shrink")
    for name, value in (("start_step", start_step), ("end_step", end_step), ("frequency", frequency)):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name}={value!r} must be an integer number of optimizer steps")
    if not problems:
        if start_step < 0:
            problems.append(f"start_step={start_step} must be >= 0")
        if end_step <= start_step:
            problems.append(f"end_step={end_step} must be greater than start_step={start_step}")
        if frequency < 1:
            problems.append(f"frequency={frequency} must be >= 1 (optimizer steps between pruning events)")
    if problems:
        raise ValueError("Invalid gradual sparsity schedule: " + "; ".join(problems) + ".")


def pruning_steps(start_step: int, end_step: int, frequency: int) -> list[int]:
    """All optimizer steps at which a gradual schedule updates the masks, in increasing order.

    Example:
        >>> pruning_steps(0, 10, 4)
        [0, 4, 8, 10]
    """
    validate_schedule(0.0, 0.0, start_step, end_step, frequency)
    steps = list(range(start_step, end_step, frequency))
    steps.append(end_step)
    return steps


def last_pruning_step(step: int, start_step: int, end_step: int, frequency: int) -> int | None:
    """The latest pruning event at or before `step`, or None if the schedule has not started yet."""
    validate_schedule(0.0, 0.0, start_step, end_step, frequency)
    if step < start_step:
        return None
    if step >= end_step:
        return end_step
    return start_step + (step - start_step) // frequency * frequency


def is_pruning_step(step: int, start_step: int, end_step: int, frequency: int) -> bool:
    """Whether the masks change at exactly this optimizer step."""
    return last_pruning_step(step, start_step, end_step, frequency) == step


def cubic_sparsity(step: int, s0: float, s_final: float, start_step: int, end_step: int, frequency: int) -> float:
    """Sparsity in effect at `step` under the cubic schedule of Zhu & Gupta (2017).

    Args:
        step: completed optimizer steps (Lightning's `trainer.global_step`).
        s0: sparsity applied at the first event (`start_step`), usually 0.
        s_final: sparsity reached at `end_step` and kept afterwards.
        start_step: first pruning event.
        end_step: last pruning event; the schedule reaches `s_final` here.
        frequency: optimizer steps between events.

    Returns:
        0.0 before `start_step`; otherwise the cubic value at the latest event at or before `step`
        (piecewise constant between events), exactly `s_final` from `end_step` on.

    Example:
        >>> cubic_sparsity(50, 0.0, 0.8, 0, 100, 10)
        0.7
    """
    validate_schedule(s0, s_final, start_step, end_step, frequency)
    event = last_pruning_step(step, start_step, end_step, frequency)
    if event is None:
        return 0.0
    if event >= end_step:
        return float(s_final)
    progress = (event - start_step) / (end_step - start_step)
    value = s_final + (s0 - s_final) * (1.0 - progress) ** 3
    # Round away float noise (e.g. 0.7000000000000001) so logged targets and per-group counts are stable.
    return float(round(value, 12))


def nm_prune_count(sparsity: float, m: int) -> int:
    """Entries to prune in each group of `m` at a given sparsity: `floor(sparsity * m)`.

    A gradual N:M schedule prunes this many per group at every event, so the count climbs from 0 to N in whole
    steps and only the final event (sparsity N/M) yields the exact N:M pattern.
    """
    if m < 1:
        raise ValueError(f"m={m} must be a positive group size.")
    return int(math.floor(sparsity * m + 1e-9))
