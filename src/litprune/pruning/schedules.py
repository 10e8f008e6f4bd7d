"""Pruning schedules as pure functions of the optimizer step: no Lightning, no tensors.

A schedule answers two questions for a training run: at which optimizer steps does the mask change (the
"pruning events"), and what fraction of each targeted tensor is pruned (the pruning ratio) after the event at a
given step. `PruningSchedule` holds one schedule's settings, checks them, and answers both; the functions before
it are the arithmetic it uses.

- `none`: no events; the masks a run starts with are kept.
- `one_shot`: a single event at `start_step` that prunes straight to the final ratio.
- `gradual` (Zhu & Gupta 2017, "To prune, or not to prune"): events every `frequency` steps from `start_step`
  to `end_step`, following the cubic curve

      s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (n * dt)) ** 3,    t in {t_0, t_0 + dt, ..., t_0 + n * dt}

  with `t_0 = start_step`, `dt = frequency`, `n * dt = end_step - start_step`. It prunes fast while many
  redundant weights remain and slowly near the end. When `end_step - start_step` is not a multiple of
  `frequency`, the last regular event is followed by one more event at exactly `end_step`, so the final
  ratio is always reached at `end_step`.

Steps count completed optimizer steps (Lightning's `trainer.global_step`), so gradient accumulation does not
change a schedule; convert a token budget with `steps = tokens // (global_batch * seq_len)`.

Ratios returned here are the ones *in effect* after the latest event at or before a step; before the first
event nothing is pruned by the schedule and the value is 0.0. An N:M pattern prunes `floor(ratio_t * M)` entries
of every group of M at each event (`nm_prune_count`), so only the final event (ratio N/M) yields the exact N:M
pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from litprune.pruning.patterns import SparsityPattern, parse_pattern

ScheduleKind = Literal["none", "one_shot", "gradual"]
SCHEDULE_KINDS: tuple[str, ...] = ("none", "one_shot", "gradual")
"""The schedule names a run can ask for."""


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


def _is_step(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def gradual_problems(s0: Any, s_final: Any, start_step: Any, end_step: Any, frequency: Any) -> list[str]:
    """Every problem with a gradual schedule's settings, one message each naming the argument and its value."""
    problems = []
    for name, value in (("initial_ratio", s0), ("ratio", s_final)):
        if not _is_fraction(value):
            problems.append(f"{name}={value!r} must be a pruned fraction in [0, 1)")
    if not problems and s0 > s_final:
        problems.append(f"initial_ratio={s0!r} is above ratio={s_final!r}; masks only ever shrink")
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
    return problems


def validate_schedule(s0: float, s_final: float, start_step: int, end_step: int, frequency: int) -> None:
    """Raise one clear error listing every problem with a gradual schedule's settings.

    Raises:
        ValueError: a ratio outside [0, 1), `s0 > s_final`, a negative start, `end_step <= start_step`
            or `frequency < 1`.
    """
    problems = gradual_problems(s0, s_final, start_step, end_step, frequency)
    if problems:
        raise ValueError("Invalid gradual pruning schedule: " + "; ".join(problems) + ".")


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


def cubic_ratio(step: int, s0: float, s_final: float, start_step: int, end_step: int, frequency: int) -> float:
    """Pruning ratio in effect at `step` under the cubic schedule of Zhu & Gupta (2017).

    Args:
        step: completed optimizer steps (Lightning's `trainer.global_step`).
        s0: ratio applied at the first event (`start_step`), usually 0.
        s_final: ratio reached at `end_step` and kept afterwards.
        start_step: first pruning event.
        end_step: last pruning event; the schedule reaches `s_final` here.
        frequency: optimizer steps between events.

    Returns:
        0.0 before `start_step`; otherwise the cubic value at the latest event at or before `step`
        (piecewise constant between events), exactly `s_final` from `end_step` on.

    Example:
        >>> cubic_ratio(50, 0.0, 0.8, 0, 100, 10)
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


def nm_prune_count(ratio: float, m: int) -> int:
    """Entries to prune in each group of `m` at a given ratio: `floor(ratio * m)`.

    A gradual N:M schedule prunes this many per group at every event, so the count climbs from 0 to N in whole
    steps and only the final event (ratio N/M) yields the exact N:M pattern.
    """
    if m < 1:
        raise ValueError(f"m={m} must be a positive group size.")
    return int(math.floor(ratio * m + 1e-9))


@dataclass(frozen=True)
class PruningSchedule:
    """When a training run prunes and how much: one schedule's settings, checked, and its arithmetic.

    The field names are `SparseMask`'s YAML names, with `kind` for its `schedule` argument. Construction checks
    every field and reports all problems in one `ValueError`; `problems` returns the same messages without
    raising, for a caller that gathers the problems of more arguments before raising once. After construction
    `ratio` is the resolved final ratio (N/M for an N:M pattern, by `SparsityPattern.resolve_ratio`) and
    `pattern` its canonical text.

    Example:
        >>> schedule = PruningSchedule("gradual", ratio=0.8, start_step=0, end_step=100, frequency=10)
        >>> schedule.last_event(57), schedule.ratio_at(57)
        (50, 0.7)

    Attributes:
        kind: "none" (no events), "one_shot" (one event at `start_step`) or "gradual" (cubic events every
            `frequency` steps from `start_step` to `end_step`).
        ratio: pruned fraction in [0, 1) reached by the last event; None only for "none". An N:M pattern
            prunes N/M, so give None or N/M.
        initial_ratio: ratio of the first gradual event (s_0 of the cubic schedule); 0 unless "gradual".
        start_step: optimizer step of the first event.
        end_step: optimizer step of the last gradual event; None unless "gradual".
        frequency: optimizer steps between gradual events.
        pattern: "unstructured" or "N:M" such as "2:4" (N pruned in every M inputs); N:M needs a schedule.
    """

    kind: ScheduleKind = "none"
    ratio: float | None = None
    initial_ratio: float = 0.0
    start_step: int = 0
    end_step: int | None = None
    frequency: int = 100
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        problems = self.problems(
            self.kind, self.ratio, self.initial_ratio, self.start_step, self.end_step, self.frequency, self.pattern
        )
        if problems:
            raise ValueError("Invalid pruning schedule: " + "; ".join(problems) + ".")
        parsed = parse_pattern(self.pattern)
        ratio = self.ratio if self.kind == "none" else parsed.resolve_ratio(self.ratio)
        object.__setattr__(self, "pattern", str(parsed))
        object.__setattr__(self, "ratio", None if ratio is None else float(ratio))
        object.__setattr__(self, "initial_ratio", float(self.initial_ratio))

    @staticmethod
    def problems(
        kind: Any = "none",
        ratio: Any = None,
        initial_ratio: Any = 0.0,
        start_step: Any = 0,
        end_step: Any = None,
        frequency: Any = 100,
        pattern: Any = "unstructured",
    ) -> list[str]:
        """Every problem with these settings, one message each naming the argument, its value and the fix."""
        problems: list[str] = []
        if kind not in SCHEDULE_KINDS:
            problems.append(f"schedule={kind!r} is not one of {', '.join(repr(k) for k in SCHEDULE_KINDS)}")
        parsed: SparsityPattern | None = None
        if not isinstance(pattern, str):
            problems.append(f"pattern={pattern!r} must be a string such as 'unstructured' or '2:4'")
        else:
            try:
                parsed = parse_pattern(pattern)
            except ValueError as err:
                problems.append(f"pattern={pattern!r}: {str(err).rstrip('.')}")
        for name, value in (("ratio", ratio), ("initial_ratio", initial_ratio)):
            if value is not None and not _is_fraction(value):
                problems.append(f"{name}={value!r} must be a pruned fraction in [0, 1)")
        if not _is_step(start_step, 0):
            problems.append(f"start_step={start_step!r} must be an integer >= 0")
        if not _is_step(frequency, 1):
            problems.append(f"frequency={frequency!r} must be an integer >= 1")
        if end_step is not None and not _is_step(end_step, 1):
            problems.append(f"end_step={end_step!r} must be an integer >= 1")
        if problems:
            return problems  # the rules below relate the values to each other and need each one valid

        if kind == "none":
            if parsed.is_nm:
                problems.append(f"pattern={pattern!r} is only used by a schedule, but schedule='none'")
            elif ratio is not None:
                problems.append(f"ratio={ratio!r} is only used by a schedule, but schedule='none'")
        else:
            try:
                ratio = parsed.resolve_ratio(ratio)
            except ValueError as err:
                problems.append(f"schedule={kind!r}: {str(err).rstrip('.')}")
                ratio = None
        if kind == "gradual":
            if end_step is None:
                problems.append("schedule='gradual' needs `end_step` (the step that reaches `ratio`)")
            elif ratio is not None:
                problems += gradual_problems(initial_ratio, ratio, start_step, end_step, frequency)
        else:
            if end_step is not None:
                problems.append(f"end_step={end_step!r} is only used by schedule='gradual'")
            if initial_ratio != 0.0:
                problems.append(f"initial_ratio={initial_ratio!r} is only used by schedule='gradual'")
        return problems

    @property
    def sparsity_pattern(self) -> SparsityPattern:
        """`pattern`, parsed."""
        return parse_pattern(self.pattern)

    @property
    def final_step(self) -> int | None:
        """The step of the last event (`end_step` for gradual, `start_step` for one-shot); None without events."""
        if self.kind == "gradual":
            return self.end_step
        if self.kind == "one_shot":
            return self.start_step
        return None

    def events(self) -> list[int]:
        """Every step at which the masks change, in increasing order."""
        if self.kind == "gradual":
            return pruning_steps(self.start_step, self.end_step, self.frequency)
        if self.kind == "one_shot":
            return [self.start_step]
        return []

    def last_event(self, step: int) -> int | None:
        """The latest event at or before `step`; None before the first one, and always for "none"."""
        if self.kind == "gradual":
            return last_pruning_step(step, self.start_step, self.end_step, self.frequency)
        if self.kind == "one_shot" and step >= self.start_step:
            return self.start_step
        return None

    def is_event(self, step: int) -> bool:
        """Whether the masks change at exactly `step`."""
        return self.last_event(step) == step

    def ratio_at(self, step: int) -> float:
        """The target ratio in effect after the latest event at or before `step` (0.0 before the first)."""
        if self.kind == "gradual":
            return cubic_ratio(step, self.initial_ratio, self.ratio, self.start_step, self.end_step, self.frequency)
        return self.ratio if self.last_event(step) is not None else 0.0

    def nm_prune_count(self, step: int) -> int:
        """Entries pruned in each group of M at `step` under an N:M pattern: `floor(ratio_at(step) * M)`.

        Raises:
            ValueError: the pattern is unstructured.
        """
        pattern = self.sparsity_pattern
        if not pattern.is_nm:
            raise ValueError(f"nm_prune_count needs an N:M pattern; this schedule's pattern is {self.pattern!r}.")
        return nm_prune_count(self.ratio_at(step), pattern.m)
