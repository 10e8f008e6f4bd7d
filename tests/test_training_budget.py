"""Token budgets convert to steps exactly, and bad budgets fail with the fix in the message."""

import math

import pytest

from litprune.training.budget import TokenBudget, paper_token_label
from litprune.training.lr_schedule import WarmupCosine


def test_budget_converts_tokens_to_steps_exactly():
    budget = TokenBudget(max_tokens=262_144, seq_len=128, micro_batch_size=16, accumulate_grad_batches=2, world_size=2)
    assert budget.tokens_per_step == 128 * 16 * 2 * 2
    assert budget.steps == 32
    assert budget.micro_batches_per_rank == 64
    assert budget.steps * budget.tokens_per_step == 262_144


def test_paper_batch_gives_paper_step_counts():
    budget = TokenBudget(
        max_tokens=12_500 * 4_194_304, seq_len=8192, micro_batch_size=2, accumulate_grad_batches=32, world_size=8
    )
    assert budget.steps == 12_500
    assert paper_token_label(budget.max_tokens) == "50B"


def test_budget_smaller_than_one_step_names_the_fix():
    with pytest.raises(ValueError, match=r"smaller than one optimizer step.*at least 2,048"):
        TokenBudget(max_tokens=1000, seq_len=128, micro_batch_size=16)


def test_budget_not_whole_steps_proposes_neighbours():
    with pytest.raises(ValueError, match=r"max_tokens=4,096 or 6,144"):
        TokenBudget(max_tokens=5000, seq_len=128, micro_batch_size=16)


@pytest.mark.parametrize("field", ["seq_len", "micro_batch_size", "world_size"])
def test_budget_rejects_non_positive_shapes(field):
    kwargs = dict(max_tokens=4096, seq_len=128, micro_batch_size=16)
    kwargs[field] = 0
    with pytest.raises(ValueError, match=field):
        TokenBudget(**kwargs)


def test_schedule_matches_the_reference_formula():
    total = 12_500
    schedule = WarmupCosine(total_steps=total)
    assert schedule.warmup_steps == 625  # min(5% of 12500, 2000), as in the authors' scripts
    assert WarmupCosine(total_steps=62_500).warmup_steps == 2000
    for t in (0, 1, 100, 624, 625, 5000, 12_499, 12_500):
        warm = 1.0 if t >= 625 else 1 - (1 - t / 625) ** 2
        cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / total))
        assert schedule(t) == pytest.approx(min(warm, cos), abs=1e-12)
    assert schedule(0) == 0.0
    assert schedule(total) == pytest.approx(0.1)


def test_schedule_validates_arguments():
    with pytest.raises(ValueError, match="warmup_fraction"):
        WarmupCosine(total_steps=10, warmup_fraction=1.5)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        WarmupCosine(total_steps=10, min_lr_ratio=-0.1)
