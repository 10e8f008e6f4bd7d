"""SparseGPT invariants (methods-spec section 11, items 15-19) on random matrices and the tiny Llama."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_llama

from litprune.pruning.calibration import HessianStatistic
from litprune.pruning.sparse import prune_sparse
from litprune.pruning.sparsegpt import prune_sparsegpt, sparsegpt_prune_weight


def _hessian(x: torch.Tensor) -> torch.Tensor:
    stat = HessianStatistic(x.shape[-1])
    stat.add_batch(x)
    return stat.hessian


def _correlated_inputs(tokens: int, features: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / math.sqrt(features) + torch.eye(features)
    return torch.randn(1, tokens, features, generator=g) @ mixing


def test_empty_mask_changes_nothing_but_dead_columns():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 64, generator=g)
    x = torch.randn(2, 50, 64, generator=g)
    x[..., [5, 17]] = 0  # inputs that never fire
    new, keep = sparsegpt_prune_weight(weight, _hessian(x), ratio=0.0)
    assert keep.all()
    assert torch.all(new[:, [5, 17]] == 0)
    alive = torch.ones(64, dtype=torch.bool)
    alive[[5, 17]] = False
    assert torch.equal(new[:, alive], weight[:, alive])


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_identity_hessian_means_blockwise_magnitude_and_no_compensation(ratio):
    rows, columns, blocksize = 12, 256, 128
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(1))
    one_hot = 3.0 * torch.eye(columns)[None]  # orthogonal inputs with equal norms: H = c * I exactly
    hessian = _hessian(one_hot)
    assert torch.equal(hessian, torch.diag(hessian.diagonal())) and hessian.diagonal().unique().numel() == 1
    new, keep = sparsegpt_prune_weight(weight, hessian, ratio, blocksize=blocksize)
    for a in range(0, columns, blocksize):
        block = weight[:, a : a + blocksize].abs()
        threshold = block.flatten().sort().values[int(ratio * block.numel())]
        assert torch.equal(keep[:, a : a + blocksize], block > threshold)  # the reference `<=` threshold rule
    assert torch.equal(new[keep], weight[keep])
    assert torch.all(new[~keep] == 0)


@pytest.mark.parametrize("pattern,ratio", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)])
def test_compensation_reconstructs_better_than_the_bare_mask(pattern, ratio):
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(32, 256, generator=g)
    x = _correlated_inputs(1024, 256, seed=3)
    new, keep = sparsegpt_prune_weight(weight, _hessian(x), ratio, pattern)
    inputs = x[0].t()  # [in, tokens]
    target = weight @ inputs
    obs_error = torch.linalg.norm(target - new @ inputs)
    masked_error = torch.linalg.norm(target - (weight * keep) @ inputs)
    assert obs_error < 0.9 * masked_error
    assert not torch.equal(new[keep], weight[keep])  # survivors do move, unlike Wanda


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_each_block_prunes_at_least_floor_ratio_numel(ratio):
    rows, columns = 24, 320  # blocks of 128, 128 and a ragged 64
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(4))
    _, keep = sparsegpt_prune_weight(weight, _hessian(_correlated_inputs(600, columns, seed=5)), ratio)
    for a in range(0, columns, 128):
        block = keep[:, a : a + 128]
        assert int((~block).sum()) >= math.floor(ratio * block.numel())
    assert (~keep).float().mean() == pytest.approx(ratio, abs=0.01)


def test_nm_result_does_not_depend_on_the_block_size():
    # The lazy batch update is an exact regrouping of the column-by-column OBS updates.
    weight = torch.randn(16, 128, generator=torch.Generator().manual_seed(6))
    hessian = _hessian(_correlated_inputs(400, 128, seed=7))
    reference_weight, reference_keep = sparsegpt_prune_weight(weight, hessian, None, "2:4", blocksize=128)
    for blocksize in (8, 32):
        new, keep = sparsegpt_prune_weight(weight, hessian, None, "2:4", blocksize=blocksize)
        assert torch.equal(keep, reference_keep)
        torch.testing.assert_close(new, reference_weight, rtol=1e-4, atol=1e-5)


def test_ratio_zero_is_a_no_op_on_the_model(tiny_llama, token_windows):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    masks = prune_sparsegpt(tiny_llama, token_windows, 0.0, progress=False)
    assert all(mask.all() for mask in masks.values()) and len(masks) == 28
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    result = prune_sparse(make_tiny_llama(), "sparsegpt", 0.0, windows=token_windows, progress=False)
    assert result.sparsity == 0.0


def test_model_pruning_keeps_dtype_and_masks_match_zeros(token_windows):
    model = make_tiny_llama().to(torch.bfloat16)
    masks = prune_sparsegpt(model, token_windows[:4], 0.5, progress=False)
    for name, keep in masks.items():
        weight = model.get_submodule(name).weight
        assert weight.dtype == torch.bfloat16
        assert torch.all(weight[~keep] == 0)
        assert (~keep).float().mean() >= 0.5


def test_bad_hessians_and_shapes_are_explained():
    weight = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"not positive definite.*Increase percdamp"):
        sparsegpt_prune_weight(weight, -torch.eye(8), 0.5)
    with pytest.raises(ValueError, match=r"hessian must be \[8, 8\]"):
        sparsegpt_prune_weight(weight, torch.eye(4), 0.5)
    with pytest.raises(ValueError, match=r"multiples of 8"):
        sparsegpt_prune_weight(weight, torch.eye(8), None, "4:8", blocksize=12)
    with pytest.raises(ValueError, match=r"ratio=0.3 cannot be reached"):
        sparsegpt_prune_weight(weight, torch.eye(8), 0.3, "2:4")
