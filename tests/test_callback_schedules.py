"""Pure sparsity schedules (no Trainer): cubic values, event steps, N:M counts, argument errors."""

from __future__ import annotations

import pytest

from litprune.pruning.schedules import (
    cubic_sparsity,
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
        assert cubic_sparsity(t, s0, sf, t0, end, dt) == pytest.approx(zhu_gupta(t, s0, sf, t0, n, dt), abs=1e-12)


def test_cubic_known_values_and_endpoints():
    assert cubic_sparsity(50, 0.0, 0.8, 0, 100, 10) == pytest.approx(0.7)
    assert cubic_sparsity(0, 0.0, 0.8, 0, 100, 10) == 0.0
    assert cubic_sparsity(100, 0.0, 0.8, 0, 100, 10) == 0.8
    assert cubic_sparsity(10_000, 0.0, 0.8, 0, 100, 10) == 0.8
    # Before the schedule starts nothing is pruned, even with a non-zero s0.
    assert cubic_sparsity(4, 0.3, 0.8, 5, 100, 10) == 0.0
    assert cubic_sparsity(5, 0.3, 0.8, 5, 100, 10) == pytest.approx(0.3)


def test_cubic_is_piecewise_constant_between_events_and_monotone():
    values = [cubic_sparsity(t, 0.0, 0.9, 10, 70, 20) for t in range(0, 100)]
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
    assert cubic_sparsity(9, 0.0, 0.5, 0, 10, 4) == cubic_sparsity(8, 0.0, 0.5, 0, 10, 4) < 0.5


def test_nm_prune_count_climbs_in_whole_steps():
    counts = [nm_prune_count(cubic_sparsity(t, 0.0, 0.5, 0, 8, 2), 4) for t in (0, 2, 4, 6, 8)]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] == 2
    assert nm_prune_count(0.5, 8) == 4
    assert nm_prune_count(0.4999999999999, 4) == 2  # float noise just below a whole count still reaches it
    with pytest.raises(ValueError, match="m=0"):
        nm_prune_count(0.5, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1.0, 0, 10, 1), "sparsity=1.0 must be a pruned fraction in"),
        ((0.6, 0.5, 0, 10, 1), "initial_sparsity=0.6 is above sparsity=0.5"),
        ((0.0, 0.5, 10, 10, 1), "end_step=10 must be greater than start_step=10"),
        ((0.0, 0.5, 0, 10, 0), "frequency=0 must be >= 1"),
        ((0.0, 0.5, -1, 10, 1), "start_step=-1 must be >= 0"),
        ((0.0, 0.5, 0, 10.5, 1), "end_step=10.5 must be an integer"),
    ],
)
def test_invalid_schedules_name_the_argument(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_schedule(*args)
