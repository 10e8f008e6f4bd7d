"""FLAP and Wanda-sp on a tiny random GQA Llama: the invariants of methods-spec section 14.8 (fp64, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from litprune.pruning.flap import FlapOptions, prune_flap, prune_wanda_sp
from litprune.pruning.flap_compress import (
    compensation_biases,
    effective_parameters,
    flap_keep_masks,
    mask_flap,
    slice_flap,
)
from litprune.pruning.flap_search import (
    FlapMasks,
    adaptive_masks,
    attention_unit_weight,
    group_scores,
    standardize,
    uniform_masks,
    wanda_sp_channel_scores,
)
from litprune.pruning.flap_statistics import SiteStatistic, flap_statistics
from litprune.pruning.shapes import solve_shape
from litprune.pruning.structured import pop_keep_masks, prune_structured

L, D, H, K, HD, F = 4, 64, 8, 2, 8, 128
G = H // K


def _config(**overrides) -> LlamaConfig:
    fields = dict(
        hidden_size=D,
        num_attention_heads=H,
        num_key_value_heads=K,
        head_dim=HD,
        intermediate_size=F,
        num_hidden_layers=L,
        vocab_size=256,
        max_position_embeddings=64,
    )
    return LlamaConfig(**{**fields, **overrides})


def _model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(_config(**overrides)).double().eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return _model()


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(7))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def _site_inputs(model, windows):
    """Per layer, the dense inputs `[N*T, C]` of o_proj and down_proj on the calibration windows."""
    captured = {"attention": [[] for _ in range(L)], "mlp": [[] for _ in range(L)]}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for site, linear in (("attention", layer.self_attn.o_proj), ("mlp", layer.mlp.down_proj)):
            handles.append(
                linear.register_forward_pre_hook(
                    lambda m, a, s=site, i=i: captured[s][i].append(a[0].reshape(-1, a[0].shape[-1]))
                )
            )
    _logits(model, windows)
    for handle in handles:
        handle.remove()
    return {site: [torch.cat(chunks) for chunks in rows] for site, rows in captured.items()}


# ------------------------------------------------------------------------------------------------ ratio 0


def test_ratio_zero_changes_nothing(model, windows):
    for options in (FlapOptions(), FlapOptions(structure="adaptive", output="masked")):
        pruned, masks, _ = prune_flap(model, windows, options, ratio=0.0)
        assert masks.groups.all() and masks.neurons.all()
        for layer in pruned.model.layers:
            assert torch.count_nonzero(layer.self_attn.o_proj.bias) == 0
            assert torch.count_nonzero(layer.mlp.down_proj.bias) == 0
        torch.testing.assert_close(_logits(pruned, windows), _logits(model, windows), rtol=0, atol=0)


def test_parity_adaptive_at_ratio_zero_removes_exactly_the_lowest_unit(model, windows):
    options = FlapOptions(structure="adaptive", output="masked", parity=True)
    _, masks, info = prune_flap(model, windows, options, ratio=0.0)
    removed = int((~masks.groups).sum() + (~masks.neurons).sum())
    assert removed == 1
    # The removed unit is the lowest standardised score of all groups and neurons.
    stats = flap_statistics(model, windows, parity=True)
    attention = torch.stack(
        [
            (layer.self_attn.o_proj.weight.pow(2).sum(0) * stats.attention[i].fluctuation).pow(2)
            for i, layer in enumerate(model.model.layers)
        ]
    )
    mlp = torch.stack(
        [
            layer.mlp.down_proj.weight.pow(2).sum(0) * stats.mlp[i].fluctuation
            for i, layer in enumerate(model.model.layers)
        ]
    )
    result = adaptive_masks(attention, mlp, 0.0, H, K, HD, parity=True)
    scores = torch.cat([result.group_z.flatten(), result.neuron_z.flatten()])
    keep = torch.cat([masks.groups.flatten(), masks.neurons.flatten()])
    assert float(scores[~keep]) == float(scores.min()) == info["threshold"]
    assert info["attn_unit_weight_value"] == 10.0  # int(4 * 8 / 3) under parity


# ------------------------------------------------------------------------------------- bias compensation


@pytest.mark.parametrize("structure", ["uniform", "adaptive"])
@torch.no_grad()
def test_compensated_projection_mean_equals_the_dense_one(model, windows, structure):
    options = FlapOptions(structure=structure, output="masked" if structure == "adaptive" else "sliced")
    counts = {"num_key_value_heads": 1, "intermediate_size": 80} if structure == "uniform" else {"ratio": 0.4}
    pruned, masks, _ = prune_flap(model, windows, options, **counts)
    inputs = _site_inputs(model, windows)
    for i, (dense_layer, layer) in enumerate(zip(model.model.layers, pruned.model.layers, strict=True)):
        kept_q = masks.channel_mask(i, G, HD)
        for site, dense, new, kept in (
            ("attention", dense_layer.self_attn.o_proj, layer.self_attn.o_proj, kept_q),
            ("mlp", dense_layer.mlp.down_proj, layer.mlp.down_proj, masks.neurons[i]),
        ):
            x = inputs[site][i]
            pruned_in = x[:, kept] if structure == "uniform" else x * kept
            dense_mean = dense(x).mean(0)
            pruned_out = new(pruned_in)
            torch.testing.assert_close(pruned_out.mean(0), dense_mean, rtol=1e-10, atol=1e-10)
            if not kept.all():
                assert not torch.allclose(pruned_out, dense(x))  # the tokens themselves do change


def test_constant_removed_channels_give_the_dense_output_token_by_token(windows):
    parent = _model(seed=3, attention_bias=True, mlp_bias=True)
    constant_neurons = torch.arange(0, F, 4)  # 32 neurons
    with torch.no_grad():
        for layer in parent.model.layers:
            # Group 1's values are a constant bias: its heads output that constant whatever the attention weights.
            layer.self_attn.v_proj.weight[HD:] = 0
            layer.self_attn.v_proj.bias.normal_()
            layer.mlp.gate_proj.weight[constant_neurons] = 0
            layer.mlp.up_proj.weight[constant_neurons] = 0
            layer.mlp.gate_proj.bias.normal_()
            layer.mlp.up_proj.bias.normal_()
    for metric in ("IFV", "WIFV"):
        pruned, masks, _ = prune_flap(
            parent, windows, FlapOptions(metric=metric), num_key_value_heads=1, intermediate_size=F - 32
        )
        assert masks.groups[:, 1].logical_not().all()
        assert (~masks.neurons).nonzero()[:, 1].unique().tolist() == constant_neurons.tolist()
        torch.testing.assert_close(_logits(pruned, windows), _logits(parent, windows), rtol=1e-9, atol=1e-9)
    # Without compensation the same removal changes the output.
    plain, _, _ = prune_flap(
        parent, windows, FlapOptions(compensate="none"), num_key_value_heads=1, intermediate_size=96
    )
    assert not torch.allclose(_logits(plain, windows), _logits(parent, windows), atol=1e-3)


# ------------------------------------------------------------------------------------------ structure search


def test_uniform_removes_the_lowest_units_with_the_reference_counts(model, windows):
    for ratio, kept_groups, kept_neurons in ((0.5, 1, 64), (0.3, 2, 90)):  # int(0.3 * 128) = 38 removed
        _, masks, _ = prune_flap(model, windows, FlapOptions(), ratio=ratio)
        assert masks.kept_groups == [kept_groups] * L and masks.kept_neurons == [kept_neurons] * L
    g = torch.Generator().manual_seed(0)
    groups, neurons = torch.rand(L, K, generator=g), torch.rand(L, F, generator=g)
    masks = uniform_masks(groups, neurons, 1, 100)
    for i in range(L):
        assert groups[i][~masks.groups[i]].max() < groups[i][masks.groups[i]].min()
        assert neurons[i][~masks.neurons[i]].max() < neurons[i][masks.neurons[i]].min()


@pytest.mark.parametrize("choice", ["ref", "exact"])
def test_adaptive_keeps_every_unit_above_every_removed_one_and_the_mass(choice):
    g = torch.Generator().manual_seed(1)
    attention, mlp = torch.rand(L, H * HD, generator=g) ** 3, torch.rand(L, F, generator=g)
    result = adaptive_masks(attention, mlp, 0.45, H, K, HD, attn_unit_weight=choice)
    scores = torch.cat([result.group_z.flatten(), result.neuron_z.flatten()])
    keep = torch.cat([result.masks.groups.flatten(), result.masks.neurons.flatten()])
    assert scores[keep].min() > scores[~keep].max()
    weight = attention_unit_weight(choice, H, K, HD, parity=False)
    assert weight == pytest.approx(32 / 3 if choice == "ref" else 80 / 3)
    assert abs(result.kept_mass - 0.55 * result.total_mass) <= weight
    assert result.total_mass == pytest.approx(L * (K * weight + F))


def test_exact_unit_weight_counts_the_parameters_removed(model, windows):
    options = FlapOptions(structure="adaptive", attn_unit_weight="exact", compensate="none", output="masked")
    pruned, masks, info = prune_flap(model, windows, options, ratio=0.5)
    removed = effective_parameters(model, FlapMasks(masks.groups | True, masks.neurons | True)).total - (
        effective_parameters(pruned, masks).total
    )
    assert removed == pytest.approx((info["total_unit_mass"] - info["kept_unit_mass"]) * 3 * D)


def test_standardisation_and_scale_invariance():
    g = torch.Generator().manual_seed(2)
    rows = torch.rand(L, 40, generator=g) * 5 + 3
    z = standardize(rows)
    torch.testing.assert_close(z.mean(1), torch.zeros(L, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.std(1, unbiased=True), torch.ones(L, dtype=torch.float64))
    assert torch.equal(standardize(torch.ones(2, 5)), torch.zeros(2, 5, dtype=torch.float64))
    attention, mlp = torch.rand(L, H * HD, generator=g), torch.rand(L, F, generator=g)
    base = adaptive_masks(attention, mlp, 0.5, H, K, HD).masks
    scaled = adaptive_masks(attention * 7.5, mlp * 1e-3, 0.5, H, K, HD).masks
    assert torch.equal(base.groups, scaled.groups) and torch.equal(base.neurons, scaled.neurons)
    uniform = uniform_masks(group_scores(attention, H, K), mlp, 1, 50)
    uniform_scaled = uniform_masks(group_scores(attention * 3, H, K), mlp * 9, 1, 50)
    assert torch.equal(uniform.groups, uniform_scaled.groups) and torch.equal(uniform.neurons, uniform_scaled.neurons)


# ----------------------------------------------------------------------------------------------- statistics


def test_fluctuation_estimators_match_their_closed_forms():
    g = torch.Generator().manual_seed(3)
    n, t, c = 7, 5, 6
    x = torch.randn(n, t, c, generator=g, dtype=torch.float64) + 2.0
    parity, exact, batched = SiteStatistic(c, parity=True), SiteStatistic(c), SiteStatistic(c, parity=True)
    for k in range(n):
        parity.add_batch(x[k : k + 1])
        exact.add_batch(x[k])
    for chunk in x.split(3):
        batched.add_batch(chunk)
    closed = torch.zeros(c, dtype=torch.float64)
    for k in range(2, n + 1):
        running_mean = x[:k].mean((0, 1))
        closed += (k - 1) / (k * (n - 1)) * (x[k - 1] - running_mean).pow(2).sum(0)
    torch.testing.assert_close(parity.fluctuation, closed)
    torch.testing.assert_close(batched.fluctuation, closed)  # every window is one sample, whatever the batch
    flat = x.reshape(-1, c)
    torch.testing.assert_close(exact.fluctuation, (flat - flat.mean(0)).pow(2).sum(0) / (n - 1))
    for stat in (parity, exact):
        torch.testing.assert_close(stat.mean, flat.mean(0))
        torch.testing.assert_close(stat.squared_norm, flat.pow(2).sum(0) / n)


def test_wanda_sp_scores_each_layer_on_the_pruned_outputs_of_the_layers_before(model, windows):
    pruned, masks, _ = prune_wanda_sp(model, windows, num_key_value_heads=1, intermediate_size=64)
    # Reference loop: score layer l on the model whose layers < l are already pruned (zeroed), no bias.
    current = copy.deepcopy(model)
    groups, neurons = torch.ones(L, K, dtype=torch.bool), torch.ones(L, F, dtype=torch.bool)
    for i in range(L):
        stats = flap_statistics(current, windows)
        layer = current.model.layers[i]
        channel = wanda_sp_channel_scores(layer.self_attn.o_proj.weight, stats.attention[i].squared_norm)
        neuron = wanda_sp_channel_scores(layer.mlp.down_proj.weight, stats.mlp[i].squared_norm)
        step = uniform_masks(group_scores(channel[None], H, K), neuron[None], 1, 64)
        groups[i], neurons[i] = step.groups[0], step.neurons[0]
        only_this = FlapMasks(torch.ones(L, K, dtype=torch.bool), torch.ones(L, F, dtype=torch.bool))
        only_this.groups[i], only_this.neurons[i] = groups[i], neurons[i]
        current = mask_flap(current, only_this, compensate="none", inplace=True)
    assert torch.equal(masks.groups, groups) and torch.equal(masks.neurons, neurons)
    # One-pass dense statistics would pick other neurons somewhere: the sequential pass matters here.
    dense_stats = flap_statistics(model, windows)
    dense_neurons = torch.stack(
        [
            uniform_masks(
                torch.ones(1, K),
                wanda_sp_channel_scores(layer.mlp.down_proj.weight, dense_stats.mlp[i].squared_norm)[None],
                1,
                64,
            ).neurons[0]
            for i, layer in enumerate(model.model.layers)
        ]
    )
    assert not torch.equal(dense_neurons, neurons)
    assert pruned.config.attention_bias is False and pruned.model.layers[0].self_attn.o_proj.bias is None
    torch.testing.assert_close(
        _logits(pruned, windows), _logits(mask_flap(model, masks, compensate="none"), windows), rtol=1e-10, atol=1e-10
    )


# ----------------------------------------------------------------------------------- representation, GQA


def test_gqa_consistency_of_the_sliced_model(model, windows):
    pruned, masks, info = prune_flap(model, windows, FlapOptions(), num_key_value_heads=1, intermediate_size=96)
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (G, 1, HD)
    assert config.num_attention_heads // config.num_key_value_heads == model.config.num_attention_heads // K
    assert info["kept_group_indices"] == [row.nonzero().flatten().tolist() for row in masks.groups]
    for i, (old, new) in enumerate(zip(model.model.layers, pruned.model.layers, strict=True)):
        kept = int(masks.groups[i].nonzero())
        q_rows = slice(kept * G * HD, (kept + 1) * G * HD)  # the kept group's query heads, and only them
        assert torch.equal(new.self_attn.q_proj.weight, old.self_attn.q_proj.weight[q_rows])
        assert torch.equal(new.self_attn.k_proj.weight, old.self_attn.k_proj.weight[kept * HD : (kept + 1) * HD])
        assert torch.equal(new.self_attn.o_proj.weight, old.self_attn.o_proj.weight[:, q_rows])
        for name in ("q_proj", "k_proj", "v_proj"):
            assert torch.count_nonzero(getattr(new.self_attn, name).bias) == 0
        assert torch.count_nonzero(new.mlp.gate_proj.bias) == 0 and torch.count_nonzero(new.mlp.up_proj.bias) == 0


def test_sliced_equals_masked_and_reloads_with_biases(model, windows, tmp_path):
    sliced, masks, _ = prune_flap(model, windows, FlapOptions(), num_key_value_heads=1, intermediate_size=72)
    masked, masked_masks, _ = prune_flap(
        model, windows, FlapOptions(output="masked"), num_key_value_heads=1, intermediate_size=72
    )
    assert torch.equal(masks.groups, masked_masks.groups) and torch.equal(masks.neurons, masked_masks.neurons)
    torch.testing.assert_close(_logits(sliced, windows), _logits(masked, windows), rtol=1e-10, atol=1e-10)
    assert effective_parameters(masked, masks).total == sum(p.numel() for p in sliced.parameters())
    keep = flap_keep_masks(masked, masks)
    assert len(keep) == 7 * L
    params = dict(masked.named_parameters())
    assert all(torch.count_nonzero(params[name][~mask]) == 0 for name, mask in keep.items())

    sliced.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert reloaded.config.attention_bias and reloaded.config.mlp_bias
    torch.testing.assert_close(_logits(reloaded, windows), _logits(sliced, windows), rtol=0, atol=0)
    prompt = windows[:2, :6]
    generated = reloaded.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 10)
    expected = sliced.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(generated, expected)


def test_a_layer_without_heads_outputs_only_its_attention_bias(model, windows):
    masks = FlapMasks(torch.ones(L, K, dtype=torch.bool), torch.ones(L, F, dtype=torch.bool))
    masks.groups[2] = False
    masks.neurons[1, :100] = False
    stats = flap_statistics(model, windows)
    o_terms, down_terms = compensation_biases(
        model, masks, stats.stacked("attention", "mean"), stats.stacked("mlp", "mean")
    )
    masked = mask_flap(model, masks, "all", o_terms, down_terms)
    outputs = []
    handle = masked.model.layers[2].self_attn.register_forward_hook(lambda m, a, out: outputs.append(out[0]))
    logits = _logits(masked, windows)
    handle.remove()
    assert torch.isfinite(logits).all()
    bias = masked.model.layers[2].self_attn.o_proj.bias
    torch.testing.assert_close(outputs[0], bias.expand_as(outputs[0]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"different widths per layer \(KV groups \[2, 2, 0, 2\].*output='masked'"):
        slice_flap(model, masks, "all", o_terms, down_terms)


# ------------------------------------------------------------------------------- prune_structured, errors


def test_prune_structured_records_flap_and_wanda_sp(model, windows):
    pruned, record = prune_structured(model, "flap", ratio=0.5, windows=windows, flap={"metric": "WIFN"})
    expected = solve_shape(model.config, "attention_mlp", ratio=0.5).shape
    assert record["target_shape"] == expected.as_dict()
    assert record["flap"]["metric"] == "WIFN" and record["flap"]["kept_groups"] == [expected.num_key_value_heads] * L
    assert record["kept_num_key_value_heads"] == pruned.config.num_key_value_heads == expected.num_key_value_heads
    assert record["calibration"]["num_windows"] == 6 and len(record["calibration"]["sha256"]) == 64
    assert 0.3 < record["achieved_ratio"]["non_embedding"] < 0.7
    _, record = prune_structured(
        model, "wanda_sp", target={"num_attention_heads": 4, "intermediate_size": 96}, windows=windows
    )
    assert record["wanda_sp"]["kept_neurons"] == [96] * L and record["kept_num_attention_heads"] == 4
    pruned, record = prune_structured(
        model, "flap", ratio=0.3, windows=windows, flap={"structure": "adaptive", "output": "masked"}
    )
    masks = pop_keep_masks(record)
    assert record["target_shape"] is None and len(masks) == 7 * L and "keep_masks" not in record
    assert record["params_after"]["total"] < sum(p.numel() for p in pruned.parameters())
    assert record["flap"]["unit_ratio_achieved"] == pytest.approx(0.3, abs=0.1)


def test_bad_targets_and_options_fail_early(model, windows):
    with pytest.raises(ValueError, match=r"num_attention_heads=6 cannot be reached by removing whole KV groups.*4"):
        solve_shape(model.config, "attention_mlp", target={"num_attention_heads": 6, "intermediate_size": 64})
    with pytest.raises(ValueError, match=r"num_key_value_heads=3 is out of range; the parent has 2"):
        solve_shape(model.config, "attention_mlp", target={"num_key_value_heads": 3, "intermediate_size": 64})
    with pytest.raises(ValueError, match=r"target keys \['hidden_size'\] do not apply to attention_mlp"):
        solve_shape(model.config, "attention_mlp", target={"hidden_size": 32})
    with pytest.raises(ValueError, match=r"flap option 'metrc' is unknown\. Did you mean 'metric'"):
        prune_structured(model, "flap", ratio=0.5, windows=windows, flap={"metrc": "IFV"})
    with pytest.raises(ValueError, match=r"flap.metric='WIVF' is unknown\. Did you mean 'WIFV'"):
        prune_structured(model, "flap", ratio=0.5, windows=windows, flap={"metric": "WIVF"})
    with pytest.raises(ValueError, match=r"structure='adaptive'.*output='sliced' is refused.*output: masked"):
        prune_structured(model, "flap", ratio=0.5, windows=windows, flap={"structure": "adaptive"})
    with pytest.raises(ValueError, match=r"fixes per-layer counts"):
        prune_structured(
            model, "flap", target={"num_key_value_heads": 1, "intermediate_size": 64}, windows=windows,
            flap={"structure": "adaptive", "output": "masked"},
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"flap=\{'metric': 'IFV'\} only applies to method 'flap'"):
        prune_structured(model, "wanda_sp", ratio=0.5, windows=windows, flap={"metric": "IFV"})
    with pytest.raises(ValueError, match=r"Method 'flap' needs calibration windows"):
        prune_structured(model, "flap", ratio=0.5)
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            num_hidden_layers=1,
            vocab_size=256,
        )
    )
    with pytest.raises(ValueError, match=r"compensate='all'.*model_type='qwen2'.*compensate: none"):
        prune_structured(qwen, "flap", ratio=0.5, windows=windows)


def test_the_paper_shape_on_llama_3_1_8b():
    config = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=14336,
        num_hidden_layers=32, vocab_size=128256,
    )  # fmt: skip
    # 20 query / 5 KV heads do not divide d = 4096, which transformers' LlamaConfig refuses: an early clear error.
    with pytest.raises(
        ValueError, match=r"num_attention_heads=20.*multiple of num_attention_heads.*fit: \[1, 2, 4, 8\]"
    ):
        solve_shape(config, "attention_mlp", target={"num_key_value_heads": 5, "intermediate_size": 6528})
    plan = solve_shape(config, "attention_mlp", target={"num_key_value_heads": 4, "intermediate_size": 6528})
    assert plan.shape.as_dict() == {
        "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 6528, "num_attention_heads": 16,
        "num_key_value_heads": 4, "head_dim": 128,
    }  # fmt: skip
    ratio_plan = solve_shape(config, "attention_mlp", ratio=0.5)
    shape = ratio_plan.shape
    assert shape.num_attention_heads == 4 * shape.num_key_value_heads and shape.head_dim == 128
    assert abs(ratio_plan.achieved["non_embedding"] - 0.5) < 0.01
