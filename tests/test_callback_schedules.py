"""Pruning schedules without a Trainer: cubic values, event steps, N:M counts, `PruningSchedule`, argument errors."""

from __future__ import annotations

import dataclasses
import re

import pytest

from litprune.pruning.schedules import (
    PruningSchedule,
    cubic_ratio,
    is_pruning_step,
    last_pruning_step,
    nm_prune_count,
    pruning_steps,
    validate_schedule,
)


def zhu_gupta(t: int, s0: float, sf: float, t0: int, n: int, dt: int) -> float:
    """The paper's formula, written out independently."""
    return sf + (s0 - sf) * (1 - (t - t0) / (n * dt)) ** 3


def test_cubic_matches_zhu_gupta_at_every_event():
    s0, sf, t0, dt, n = 0.1, 0.8, 20, 5, 8
    end = t0 + n * dt
    for k in range(n + 1):
        t = t0 + k * dt
        assert cubic_ratio(t, s0, sf, t0, end, dt) == pytest.approx(zhu_gupta(t, s0, sf, t0, n, dt), abs=1e-12)


def test_cubic_known_values_and_endpoints():
    assert cubic_ratio(50, 0.0, 0.8, 0, 100, 10) == pytest.approx(0.7)
    assert cubic_ratio(0, 0.0, 0.8, 0, 100, 10) == 0.0
    assert cubic_ratio(100, 0.0, 0.8, 0, 100, 10) == 0.8
    assert cubic_ratio(10_000, 0.0, 0.8, 0, 100, 10) == 0.8
    # Before the schedule starts nothing is pruned, even with a non-zero s0.
    assert cubic_ratio(4, 0.3, 0.8, 5, 100, 10) == 0.0
    assert cubic_ratio(5, 0.3, 0.8, 5, 100, 10) == pytest.approx(0.3)


def test_cubic_is_piecewise_constant_between_events_and_monotone():
    values = [cubic_ratio(t, 0.0, 0.9, 10, 70, 20) for t in range(0, 100)]
    assert values[10:30] == [values[10]] * 20
    assert values[30:50] == [values[30]] * 20
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    # Front-loaded: the first interval prunes more than the last one.
    assert values[30] - values[10] > values[70] - values[50]


def test_event_steps_include_end_when_not_a_multiple():
    assert pruning_steps(0, 10, 4) == [0, 4, 8, 10]
    assert pruning_steps(3, 9, 3) == [3, 6, 9]
    assert [t for t in range(15) if is_pruning_step(t, 0, 10, 4)] == [0, 4, 8, 10]
    assert last_pruning_step(2, 3, 9, 3) is None
    assert last_pruning_step(7, 3, 9, 3) == 6
    assert last_pruning_step(50, 3, 9, 3) == 9
    # Between the last regular event (8) and end_step (10) the value of event 8 holds.
    assert cubic_ratio(9, 0.0, 0.5, 0, 10, 4) == cubic_ratio(8, 0.0, 0.5, 0, 10, 4) < 0.5


def test_nm_prune_count_climbs_in_whole_steps():
    counts = [nm_prune_count(cubic_ratio(t, 0.0, 0.5, 0, 8, 2), 4) for t in (0, 2, 4, 6, 8)]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] == 2
    assert nm_prune_count(0.5, 8) == 4
    assert nm_prune_count(0.4999999999999, 4) == 2  # float noise just below a whole count still reaches it
    with pytest.raises(ValueError, match="m=0"):
        nm_prune_count(0.5, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1.0, 0, 10, 1), "ratio=1.0 must be a pruned fraction in"),
        ((0.6, 0.5, 0, 10, 1), "initial_ratio=0.6 is above ratio=0.5"),
        ((0.0, 0.5, 10, 10, 1), "end_step=10 must be greater than start_step=10"),
        ((0.0, 0.5, 0, 10, 0), "frequency=0 must be >= 1"),
        ((0.0, 0.5, -1, 10, 1), "start_step=-1 must be >= 0"),
        ((0.0, 0.5, 0, 10.5, 1), "end_step=10.5 must be an integer"),
    ],
)
def test_invalid_schedules_name_the_argument(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_schedule(*args)


# ---------------------------------------------------------------------------------------------- PruningSchedule


def test_gradual_schedule_answers_events_and_ratios():
    schedule = PruningSchedule("gradual", ratio=0.8, initial_ratio=0.1, start_step=5, end_step=30, frequency=10)
    assert schedule.events() == [5, 15, 25, 30] == [t for t in range(40) if schedule.is_event(t)]
    assert schedule.final_step == 30
    assert [schedule.last_event(t) for t in (0, 4, 5, 14, 15, 29, 30, 99)] == [None, None, 5, 5, 15, 25, 30, 30]
    for step in range(40):
        assert schedule.ratio_at(step) == cubic_ratio(step, 0.1, 0.8, 5, 30, 10), step
    assert schedule.ratio_at(4) == 0.0 and schedule.ratio_at(5) == pytest.approx(0.1) and schedule.ratio_at(31) == 0.8


def test_one_shot_and_none_schedules():
    one_shot = PruningSchedule("one_shot", ratio=0.5, start_step=3)
    assert one_shot.events() == [3] and one_shot.final_step == 3
    assert [one_shot.last_event(t) for t in (0, 2, 3, 50)] == [None, None, 3, 3]
    assert [one_shot.ratio_at(t) for t in (2, 3, 50)] == [0.0, 0.5, 0.5]
    assert [t for t in range(10) if one_shot.is_event(t)] == [3]

    none = PruningSchedule()
    assert none.kind == "none" and none.ratio is None and none.events() == [] and none.final_step is None
    assert none.last_event(10**6) is None and none.ratio_at(10**6) == 0.0
    assert not any(none.is_event(t) for t in range(5))


def test_nm_schedule_resolves_its_ratio_and_counts_per_group():
    schedule = PruningSchedule("gradual", pattern=" 2 : 4 ", start_step=0, end_step=6, frequency=2, initial_ratio=0.25)
    assert schedule.pattern == "2:4" and schedule.ratio == 0.5  # N/M, through SparsityPattern.resolve_ratio
    assert [schedule.nm_prune_count(t) for t in (0, 2, 4, 6, 7)] == [1, 1, 1, 2, 2]
    assert PruningSchedule("one_shot", ratio=0.5, pattern="2:4").ratio == 0.5
    with pytest.raises(ValueError, match="needs an N:M pattern; this schedule's pattern is 'unstructured'"):
        PruningSchedule("one_shot", ratio=0.5).nm_prune_count(0)


def test_schedule_is_frozen_and_compares_by_value():
    schedule = PruningSchedule("one_shot", ratio=0.5)
    assert schedule == PruningSchedule("one_shot", ratio=0.5, pattern="unstructured")
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.ratio = 0.7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "cubic"}, "schedule='cubic' is not one of 'none', 'one_shot', 'gradual'"),
        ({"kind": "one_shot"}, "schedule='one_shot': pattern='unstructured' needs a ratio"),
        ({"kind": "one_shot", "ratio": 1.0}, "ratio=1.0 must be a pruned fraction in [0, 1)"),
        ({"kind": "one_shot", "ratio": 0.6, "pattern": "2:4"}, "prunes exactly 0.5 of each group; ratio=0.6"),
        ({"kind": "one_shot", "pattern": "2-4"}, "pattern='2-4': Unknown sparsity pattern"),
        ({"kind": "gradual", "ratio": 0.5}, "schedule='gradual' needs `end_step`"),
        ({"kind": "gradual", "ratio": 0.5, "end_step": 4, "start_step": 4}, "end_step=4 must be greater than"),
        ({"kind": "gradual", "ratio": 0.5, "end_step": 9, "initial_ratio": 0.6}, "initial_ratio=0.6 is above ratio"),
        ({"kind": "one_shot", "ratio": 0.5, "end_step": 9}, "end_step=9 is only used by schedule='gradual'"),
        ({"kind": "one_shot", "ratio": 0.5, "initial_ratio": 0.1}, "initial_ratio=0.1 is only used by schedule="),
        ({"ratio": 0.5}, "ratio=0.5 is only used by a schedule, but schedule='none'"),
        ({"pattern": "2:4"}, "pattern='2:4' is only used by a schedule"),
        ({"frequency": 0}, "frequency=0 must be an integer >= 1"),
        ({"start_step": -1}, "start_step=-1 must be an integer >= 0"),
        ({"kind": "one_shot", "ratio": 0.5, "start_step": 1.5}, "start_step=1.5 must be an integer >= 0"),
    ],
)
def test_invalid_schedules_say_what_and_how_to_fix(kwargs, message):
    assert any(message in problem for problem in PruningSchedule.problems(**kwargs)), PruningSchedule.problems(**kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        PruningSchedule(**kwargs)


def test_schedule_problems_are_gathered_not_raised_one_by_one():
    problems = PruningSchedule.problems("gradual", ratio=2.0, initial_ratio=-0.1, frequency=0, pattern=7)
    assert len(problems) == 4, problems
    with pytest.raises(ValueError, match=r"^Invalid pruning schedule: .*ratio=2\.0.*initial_ratio=-0\.1.*frequency=0"):
        PruningSchedule("gradual", ratio=2.0, initial_ratio=-0.1, frequency=0, pattern=7)
    assert PruningSchedule.problems("gradual", ratio=0.5, end_step=10, frequency=3) == []
