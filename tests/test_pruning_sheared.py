"""Sheared-LLaMA's pure parts: hard-concrete math, deterministic masks, the Lagrangian, the hooks and materialisation.

Invariants of methods-spec section 11 (22-25) on the tiny Llama (L=4, d=64, H=4, KV=2, hd=16, F=128).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_llama
from transformers import AutoModelForCausalLM

from litprune.pruning import hard_concrete as hc
from litprune.pruning.shapes import count_config_parameters, solve_shape
from litprune.pruning.sheared_forward import attach_sheared_masks
from litprune.pruning.sheared_masks import MASK_MODULES, MaskLayout, ShearedMasks, noise_generator, target_counts
from litprune.pruning.sheared_materialise import materialise

# ------------------------------------------------------------------------------------------------ hard concrete


def test_constants_are_the_references():
    assert (hc.LIMIT_LEFT, hc.LIMIT_RIGHT, hc.TEMPERATURE, hc.EPSILON) == (-0.1, 1.1, 2.0 / 3.0, 1e-6)
    assert hc.LOG_ALPHA_MIN == pytest.approx(math.log(0.01)) and hc.LOG_ALPHA_MAX == pytest.approx(math.log(100))
    init = hc.init_log_alpha((20000,), torch.Generator().manual_seed(0))
    assert init.mean().item() == pytest.approx(5.0, abs=1e-3) and init.std().item() == pytest.approx(0.01, rel=0.05)


def test_prob_zero_at_the_upper_clamp_and_the_clamp():
    log_alpha = torch.tensor([math.log(100.0)])
    assert hc.prob_zero(log_alpha).item() == pytest.approx(0.00202, abs=5e-5)
    assert hc.keep_score(log_alpha).item() == pytest.approx(1 - 0.00202, abs=5e-5)
    wild = torch.tensor([-50.0, 0.0, 50.0])
    assert hc.clamp_log_alpha_(wild).tolist() == pytest.approx([math.log(0.01), 0.0, math.log(100.0)])


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.0, 3.0])
def test_sampled_zero_frequency_matches_prob_zero(log_alpha):
    n = 200_000
    alphas = torch.full((n,), log_alpha)
    z = hc.sample_mask(alphas, hc.uniform_noise((n,), torch.Generator().manual_seed(1)))
    assert 0.0 <= z.min().item() and z.max().item() <= 1.0
    assert (z == 0).float().mean().item() == pytest.approx(hc.prob_zero(alphas[:1]).item(), abs=0.005)
    assert (z == 1).any()  # the stretch makes exact ones possible too


def test_samples_are_differentiable_in_log_alpha():
    log_alpha = torch.zeros(64, requires_grad=True)
    hc.sample_mask(log_alpha, hc.uniform_noise((64,), torch.Generator().manual_seed(0))).sum().backward()
    assert log_alpha.grad.abs().sum() > 0


def test_deterministic_mask_keeps_exact_target_counts_per_row_at_soft_values():
    log_alpha = torch.randn(4, 128, generator=torch.Generator().manual_seed(0)) * 3
    mask = hc.deterministic_mask(log_alpha, keep=96)
    assert mask.count_nonzero(-1).tolist() == [96] * 4
    soft = hc.soft_mask(log_alpha)
    kept = mask != 0
    assert torch.equal(mask[kept], soft[kept])
    # The zeroed entries are each row's smallest soft values.
    for row in range(4):
        assert soft[row][~kept[row]].max() <= soft[row][kept[row]].min()


def test_deterministic_mask_without_target_zeroes_the_expected_count():
    log_alpha = torch.randn(3, 50, generator=torch.Generator().manual_seed(2)) * 3
    mask = hc.deterministic_mask(log_alpha)
    expected = torch.round(hc.prob_zero(log_alpha).sum(-1)).long()
    assert (50 - mask.count_nonzero(-1)).tolist() == expected.tolist()
    with pytest.raises(ValueError, match="keep=51"):
        hc.deterministic_mask(log_alpha, keep=51)


# ---------------------------------------------------------------------------------------------- masks and shape


def _masks(model=None, ratio: float = 0.5, kv: int | None = 1, **kwargs) -> ShearedMasks:
    model = model or make_tiny_llama()
    target = {"num_key_value_heads": kv} if kv is not None else None
    plan = solve_shape(model.config, "width", ratio=ratio, target=target)
    layout = MaskLayout.from_config(model.config)
    return ShearedMasks(layout, target_counts(layout, plan.shape), **kwargs)


def test_mask_shapes_use_kv_group_units():
    masks = _masks()
    shapes = {name: tuple(a.shape) for name, a in masks.log_alpha.items()}
    assert shapes == {"layer": (4,), "head": (4, 2), "intermediate": (4, 128), "hidden": (64,)}
    assert masks.targets == {"layer": 4, "head": 1, "intermediate": 96, "hidden": 48}


def test_a_gqa_parent_whose_heads_do_not_divide_is_refused():
    config = make_tiny_llama().config
    config.num_key_value_heads = 3
    with pytest.raises(ValueError, match="num_attention_heads=4 is not a multiple of num_key_value_heads=3"):
        MaskLayout.from_config(config)


def test_a_target_that_prunes_an_unmasked_module_is_refused():
    with pytest.raises(ValueError, match=r"prunes hidden \(48 of 64\).*modules=\['layer', 'head', 'intermediate'\]"):
        _masks(modules=("layer", "head", "intermediate"))


@pytest.mark.parametrize("tied", [False, True])
def test_expected_parameters_with_everything_kept_equal_the_parents_count(tied):
    model = make_tiny_llama(tie_word_embeddings=tied)
    layout = MaskLayout.from_config(model.config)
    counts = layout.parent_parameters()
    exact = count_config_parameters(model.config)
    assert (counts["total"], counts["embedding"]) == (exact.total, exact.embedding)
    masks = _masks(model)
    with torch.no_grad():
        for a in masks.log_alpha.values():
            a.fill_(1e4)  # keep score exactly 1
    assert masks.expected_ratios() == pytest.approx({"non_embedding": 0.0, "total": 0.0}, abs=1e-9)


def test_noise_is_a_function_of_seed_step_and_micro_batch():
    masks = _masks()
    a = masks.sample(noise_generator(0, 3, 1))
    b = masks.sample(noise_generator(0, 3, 1))
    c = masks.sample(noise_generator(0, 3, 2))
    assert all(torch.equal(a[m], b[m]) for m in a)
    assert not torch.equal(a["intermediate"], c["intermediate"])


# -------------------------------------------------------------------------------------------------- Lagrangian


def test_lagrangian_is_zero_on_target_and_its_multiplier_gradients_are_reversed():
    masks = _masks()
    with torch.no_grad():
        for m in masks.masked_modules:
            masks.lambda_1[m].fill_(0.7)
            masks.lambda_2[m].fill_(0.3)
            masks.log_alpha[m].fill_(1e4)  # keep score exactly 1: expected sparsity 0
    masks.warmup_steps = 100  # at step 0 every target sparsity is 0 as well
    assert masks.lagrangian(step=0).item() == 0.0

    _random_logits(masks)
    masks.warmup_steps = 0
    loss = masks.lagrangian(step=0)
    loss.backward()
    full, targets = masks.layout.full_counts(), masks.target_sparsity(0)
    expected_loss = 0.0
    for m, kept in masks.expected_kept().items():
        gap = (1.0 - kept.detach() / full[m]) - targets[m]
        expected_loss += (0.7 * gap + 0.3 * gap.pow(2)).mean().item()
        # d loss / d lambda1 = mean(s - t) and d loss / d lambda2 = mean((s - t)^2), reversed for ascent.
        assert masks.lambda_1[m].grad.item() == pytest.approx(-gap.mean().item(), abs=1e-6)
        assert masks.lambda_2[m].grad.item() == pytest.approx(-gap.pow(2).mean().item(), abs=1e-6)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)


def test_one_optimizer_step_ascends_the_multipliers_and_descends_the_logits():
    masks = _masks()
    masks.warmup_steps = 0  # the full target now: expected sparsity (about 0) is below every target
    with torch.no_grad():
        for m in masks.masked_modules:
            masks.lambda_1[m].fill_(1.0)
            masks.lambda_2[m].fill_(1.0)
    optimizer = torch.optim.AdamW(masks.param_groups(lr=1e-3), betas=(0.9, 0.95))
    before = masks.lagrangian(step=0)
    gaps = {
        m: (1 - masks.expected_kept()[m].detach() / masks.layout.full_counts()[m]) - masks.target_sparsity(0)[m]
        for m in masks.masked_modules
    }
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    for m in ("head", "intermediate", "hidden"):
        assert gaps[m].mean() < 0
        assert masks.lambda_1[m].item() < 1.0  # towards sign(s - t) = -1
        assert masks.lambda_2[m].item() > 1.0  # (s - t)^2 > 0: ascent increases it
    # With the multipliers held at their old values, the logits' step lowered the term.
    with torch.no_grad():
        for m in masks.masked_modules:
            masks.lambda_1[m].fill_(1.0)
            masks.lambda_2[m].fill_(1.0)
    assert masks.lagrangian(step=0).item() < before.item()


def test_the_target_warms_up_linearly():
    masks = _masks()
    masks.warmup_steps = 10
    final = 1 - 48 / 64
    assert masks.target_sparsity(0)["hidden"] == 0.0
    assert masks.target_sparsity(5)["hidden"] == pytest.approx(final / 2)
    assert masks.target_sparsity(10)["hidden"] == masks.target_sparsity(50)["hidden"] == pytest.approx(final)
    assert masks.target_sparsity(7)["layer"] == 0.0  # layers: target is all kept


def test_the_constraint_drives_expected_sizes_to_the_target():
    masks = _masks(seed=0)
    optimizer = torch.optim.AdamW(masks.param_groups(lr=1e-3), betas=(0.9, 0.95), eps=1e-8)
    steps = 200
    masks.warmup_steps = steps // 5
    for step in range(steps):
        masks.noise_key = (step, 0)
        masks.refresh(True)
        optimizer.zero_grad()
        masks.lagrangian(step).backward()
        optimizer.step()
    masks.clamp_()
    full = masks.layout.full_counts()
    for m, kept in masks.expected_kept().items():
        assert (kept.detach() - masks.targets[m]).abs().max().item() <= 0.05 * full[m], m
    # The evaluation masks without a target count land on the target as well.
    counts = {m: mask.count_nonzero(-1).float().mean().item() for m, mask in masks.deterministic(False).items()}
    for m in MASK_MODULES:
        assert abs(counts[m] - masks.targets[m]) <= 0.05 * full[m], (m, counts[m])


# ------------------------------------------------------------------------------------------ forward and folding


def _random_logits(masks: ShearedMasks, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in masks.log_alpha.values():
            a.copy_(torch.randn(a.shape, generator=generator) * 3)


def test_masks_of_ones_leave_the_model_unchanged(token_windows):
    model = make_tiny_llama()
    masks = _masks(model)
    reference = model(token_windows).logits
    attach_sheared_masks(model, masks)
    masks.refresh = lambda training: masks.current  # hold the masks fixed
    masks.current = {m: torch.ones_like(a) for m, a in masks.log_alpha.items()}
    torch.testing.assert_close(model(token_windows).logits, reference)


def test_a_zero_head_unit_removes_all_query_heads_of_its_kv_group(token_windows):
    model = make_tiny_llama()
    masks = _masks(model)
    reference_model = copy.deepcopy(model)
    with torch.no_grad():  # group 1 of layer 2 = query heads 2 and 3 (G = 2): zero their o_proj input columns
        reference_model.model.layers[2].self_attn.o_proj.weight[:, 32:64] = 0
    attach_sheared_masks(model, masks)
    masks.refresh = lambda training: masks.current
    head = torch.ones(4, 2)
    head[2, 1] = 0
    masks.current = {"head": head}
    torch.testing.assert_close(model(token_windows).logits, reference_model(token_windows).logits)


def test_training_forward_samples_and_evaluation_forward_is_deterministic(token_windows):
    model = make_tiny_llama()
    masks = _masks(model)
    _random_logits(masks)
    attach_sheared_masks(model, masks)
    model.train()
    masks.noise_key = (0, 0)
    first = model(token_windows).logits
    masks.noise_key = (1, 0)
    second = model(token_windows).logits
    assert not torch.allclose(first, second)
    model.eval()
    masks.eval_target_counts = True
    model(token_windows)
    assert masks.current["hidden"].count_nonzero().item() == 48


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kv", [None, 1])
def test_materialised_model_equals_the_deterministic_masked_model(token_windows, tied, kv):
    model = make_tiny_llama(tie_word_embeddings=tied).double()
    masks = _masks(model, kv=kv).double()
    _random_logits(masks, seed=3)
    masks.eval_target_counts = True
    hooks = attach_sheared_masks(model, masks)
    model.eval()
    masked = model(token_windows).logits
    deterministic = {m: z.clone() for m, z in masks.current.items()}
    hooks.remove()
    plain = model(token_windows).logits
    assert not torch.allclose(masked, plain, atol=1e-3)  # the masks do change the function
    small = materialise(copy.deepcopy(model), deterministic)
    config = small.config
    expected = solve_shape(make_tiny_llama().config, "width", ratio=0.5, target={"num_key_value_heads": kv or 2})
    assert {key: getattr(config, key) for key in expected.shape.as_dict()} == expected.shape.as_dict()
    assert config.num_key_value_heads == (kv or 2) and config.hidden_size < 64
    # RMSNorm computes in float32 inside transformers, so the match is to float32 rounding.
    torch.testing.assert_close(small(token_windows).logits, masked, atol=1e-5, rtol=1e-5)


def test_hidden_z_is_folded_once(token_windows):
    model = make_tiny_llama()
    masks = _masks(model)
    _random_logits(masks, seed=4)
    deterministic = masks.deterministic(target_counts=True)
    parent = copy.deepcopy(model)
    small = materialise(model, deterministic)
    hidden = deterministic["hidden"]
    kept = torch.nonzero(hidden).flatten()
    # lm_head is sliced, never scaled (the reference scales it too: a second factor of hidden_z).
    assert torch.equal(small.lm_head.weight, parent.lm_head.weight[:, kept])
    assert torch.equal(small.model.norm.weight, parent.model.norm.weight[kept] * hidden[kept])
    assert torch.equal(small.model.embed_tokens.weight, parent.model.embed_tokens.weight[:, kept] * hidden[kept])


def test_materialised_model_reloads_and_generates_with_a_kv_cache(tmp_path, token_windows):
    model = make_tiny_llama()
    masks = _masks(model)
    _random_logits(masks, seed=5)
    small = materialise(model, masks.deterministic(target_counts=True))
    small.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (reloaded.config.hidden_size, reloaded.config.num_key_value_heads) == (48, 1)
    reloaded.eval()
    torch.testing.assert_close(reloaded(token_windows).logits, small.eval()(token_windows).logits)
    prompt = token_windows[:2, :6]
    with_cache = reloaded.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=True)
    without = reloaded.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=False)
    assert with_cache.shape == (2, 10)
    assert torch.equal(with_cache, without)


def test_materialise_refuses_uneven_or_layer_removing_masks():
    model = make_tiny_llama()
    masks = _masks(model).deterministic(target_counts=True)
    uneven = dict(masks, intermediate=masks["intermediate"].clone())
    uneven["intermediate"][0, torch.nonzero(uneven["intermediate"][0])[0]] = 0
    with pytest.raises(ValueError, match="different counts per layer"):
        materialise(copy.deepcopy(model), uneven)
    no_layer = dict(masks, layer=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"removes layers \[1\]"):
        materialise(model, no_layer)
