"""Magnitude and Wanda invariants (methods-spec section 11, items 9-12 and 14), plus N:M for all methods (10)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_llama

from litprune.pruning.calibration import InputNormStatistic
from litprune.pruning.magnitude import magnitude_mask, prune_magnitude
from litprune.pruning.patterns import unstructured_mask
from litprune.pruning.sparse import prune_sparse
from litprune.pruning.targets import find_targets
from litprune.pruning.wanda import prune_wanda, wanda_mask


def _weights(model):
    return {name: m.weight.detach().clone() for name, m in find_targets(model).items()}


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_magnitude_unstructured_prunes_exactly_floor_ratio_numel_smallest_per_matrix(tiny_llama, ratio):
    before = _weights(tiny_llama)
    masks = prune_magnitude(tiny_llama, ratio)
    for name, module in find_targets(tiny_llama).items():
        weight, keep, original = module.weight, masks[name], before[name]
        assert int((weight == 0).sum()) == math.floor(ratio * weight.numel())
        assert torch.equal(weight == 0, ~keep)
        assert original.abs()[~keep].max() <= original.abs()[keep].min()  # per-matrix threshold, not per row
        assert torch.equal(weight[keep], original[keep])


def test_wanda_unstructured_zeros_exactly_floor_ratio_in_per_row(tiny_llama, token_windows):
    ratio = 0.3
    masks = prune_wanda(tiny_llama, token_windows, ratio)  # with the default progress bar
    assert len(masks) == 28
    for name, module in find_targets(tiny_llama).items():
        zeros_per_row = (module.weight == 0).sum(dim=1)
        assert torch.all(zeros_per_row == math.floor(ratio * module.in_features)), name
        assert torch.equal(module.weight == 0, ~masks[name])


def test_wanda_leaves_survivors_bit_identical_and_uses_the_activations(tiny_llama, token_windows):
    before = _weights(tiny_llama)
    masks = prune_wanda(tiny_llama, token_windows, 0.5, progress=False)
    differs_from_magnitude = 0
    for name, module in find_targets(tiny_llama).items():
        assert torch.equal(module.weight[masks[name]], before[name][masks[name]])
        per_row_magnitude = unstructured_mask(before[name].abs(), 0.5, per_row=True)
        differs_from_magnitude += int((masks[name] != per_row_magnitude).sum())
    assert differs_from_magnitude > 0  # the input norms change the choice


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_every_aligned_group_has_exactly_n_zeros(method, pattern, token_windows):
    n, m = (int(v) for v in pattern.split(":"))
    model = make_tiny_llama()
    result = prune_sparse(model, method, pattern=pattern, windows=token_windows, progress=False)
    for name, module in find_targets(model).items():
        weight = module.weight
        zeros = (weight == 0).reshape(weight.shape[0], -1, m).sum(dim=-1)
        assert torch.all(zeros == n), f"{method} {pattern} {name}"
        keep = result.masks[f"{name}.weight"]
        assert torch.all((~keep).reshape(weight.shape[0], -1, m).sum(dim=-1) == n)
    assert result.sparsity == pytest.approx(n / m)


def test_nm_counts_zeros_already_present_as_at_least_n():
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    weight[:, :3] = 0  # three zeros in the first group of 4
    keep = magnitude_mask(weight, None, "2:4")
    pruned = weight.masked_fill(~keep, 0)
    zeros = (pruned == 0).reshape(4, 2, 4).sum(dim=-1)
    assert torch.all(zeros[:, 0] == 3) and torch.all(zeros[:, 1] == 2)


def test_wanda_with_equal_norms_is_per_row_magnitude_not_per_matrix():
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(64)
    assert torch.equal(wanda_mask(weight, ones, 0.5), unstructured_mask(weight.abs(), 0.5, per_row=True))
    assert not torch.equal(wanda_mask(weight, ones, 0.5), magnitude_mask(weight, 0.5))  # reference magnitude
    assert torch.equal(wanda_mask(weight, ones, None, "2:4"), magnitude_mask(weight, None, "2:4"))


def test_wanda_masks_are_invariant_to_scaling_the_activations():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(16, 32, generator=g)
    x = torch.randn(3, 10, 32, generator=g) * torch.linspace(0.1, 3.0, 32)
    for scale in (4.0, 0.25):
        plain, scaled = InputNormStatistic(32), InputNormStatistic(32)
        plain.add_batch(x)
        scaled.add_batch(x * scale)
        for pattern, ratio in (("unstructured", 0.5), ("unstructured", 0.3), ("4:8", None)):
            assert torch.equal(
                wanda_mask(weight, plain.norms, ratio, pattern), wanda_mask(weight, scaled.norms, ratio, pattern)
            )


def test_wanda_on_a_bf16_model(token_windows):
    model = make_tiny_llama().to(torch.bfloat16)
    before = _weights(model)
    masks = prune_wanda(model, token_windows[:4], 0.5, progress=False)
    for name, module in find_targets(model).items():
        assert module.weight.dtype == torch.bfloat16
        assert torch.all((module.weight == 0).sum(dim=1) == module.in_features // 2)
        assert torch.equal(module.weight[masks[name]], before[name][masks[name]])
