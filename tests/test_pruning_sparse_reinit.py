"""Sparse scratch controls: the paper's reinit (invariant 21) and the two fully random controls."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from litprune.inits.sparse_controls import random_init_random_mask, random_init_same_mask, reinit_surviving
from litprune.pruning.sparse import prune_sparse


def _pruned(pattern="unstructured", ratio=0.5):
    model = make_tiny_llama()
    result = prune_sparse(model, "magnitude", ratio if pattern == "unstructured" else None, pattern=pattern)
    return model, result.masks


def test_reinit_redraws_survivors_and_keeps_pattern_embeddings_and_norms():
    model, masks = _pruned()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert reinit_surviving(model, masks, std=0.05, seed=42) is masks
    after = model.state_dict()
    survivors = []
    for name, keep in masks.items():
        assert torch.equal(after[name] == 0, before[name] == 0)  # zero pattern unchanged
        assert torch.all(after[name][keep] != before[name][keep])  # every survivor redrawn
        survivors.append(after[name][keep])
    values = torch.cat(survivors)
    assert abs(values.mean().item()) < 0.002 and values.std().item() == pytest.approx(0.05, rel=0.03)
    head = after["lm_head.weight"]
    assert torch.all(head != 0) and torch.all(head != before["lm_head.weight"])  # fully redrawn
    assert head.std().item() == pytest.approx(0.05, rel=0.03)
    for name in (k for k in before if "embed" in k or "norm" in k):
        assert torch.equal(after[name], before[name]), name


def test_reinit_is_seeded():
    first, masks = _pruned()
    second, _ = _pruned()
    reinit_surviving(first, masks, seed=7)
    reinit_surviving(second, masks, seed=7)
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    third, _ = _pruned()
    reinit_surviving(third, masks, seed=8)
    assert not torch.equal(third.lm_head.weight, first.lm_head.weight)


def test_reinit_refuses_tied_embeddings():
    model = make_tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match=r"lm_head.weight is tied to the input embeddings"):
        reinit_surviving(model, {})


def test_random_init_same_mask_randomises_everything_and_applies_the_mask():
    model, masks = _pruned()
    embeddings_before = model.model.embed_tokens.weight.clone()
    random_init_same_mask(model, masks, seed=0)
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(params[name] == 0, ~keep)
    assert not torch.equal(model.model.embed_tokens.weight, embeddings_before)
    assert all(torch.all(p == 1) for n, p in params.items() if "norm" in n)
    linear = torch.cat([params[n][masks[n]] for n in masks] + [model.lm_head.weight.flatten()])
    assert linear.std().item() == pytest.approx(0.02, rel=0.03)
    again, _ = _pruned()
    random_init_same_mask(again, masks, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_random_mask_keeps_per_row_counts_for_unstructured():
    model, masks = _pruned(ratio=0.6)
    fresh = random_init_random_mask(model, masks, seed=1)
    params = dict(model.named_parameters())
    assert fresh.keys() == masks.keys()
    for name, keep in fresh.items():
        assert torch.equal((~keep).sum(dim=1), (~masks[name]).sum(dim=1))
        assert not torch.equal(keep, masks[name])
        assert torch.equal(params[name] == 0, ~keep)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_random_mask_stays_valid_nm(pattern):
    n, m = (int(v) for v in pattern.split(":"))
    model, masks = _pruned(pattern)
    fresh = random_init_random_mask(model, masks, seed=2, pattern=pattern)
    params = dict(model.named_parameters())
    for name, keep in fresh.items():
        assert torch.all((~keep).reshape(keep.shape[0], -1, m).sum(dim=-1) == n)
        assert not torch.equal(keep, masks[name])
        assert torch.equal(params[name] == 0, ~keep)


def test_masks_that_do_not_fit_are_explained():
    model, masks = _pruned()
    with pytest.raises(ValueError, match=r"'layers.0.mlp.up_proj.weight' is not a parameter of the model"):
        reinit_surviving(model, {"layers.0.mlp.up_proj.weight": torch.ones(128, 64, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\) != weight shape \(128, 64\)"):
        random_init_same_mask(model, {"model.layers.0.mlp.up_proj.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask dtype is torch.float32"):
        random_init_random_mask(model, {"model.layers.0.mlp.up_proj.weight": torch.ones(128, 64)})
