"""Calibration windows and the sequential layer-by-layer engine (methods-spec 5.2, invariant 13)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama

from litprune.pruning.calibration import (
    HessianStatistic,
    InputNormStatistic,
    calibration_windows,
    run_sequential,
)
from litprune.pruning.targets import find_targets


def _collect_sequential(model, windows, prune_layers=(), batch_size=1, statistic="input_norms"):
    """Run the engine, record every statistic, zero o_proj/down_proj of the layers in `prune_layers`."""
    seen = {}

    def layer_fn(index, layer, stats):
        seen.update(stats)
        if index in prune_layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()

    run_sequential(model, windows, layer_fn, batch_size=batch_size, progress=False, statistic=statistic)
    return seen


@torch.no_grad()
def _dense_input_norms(model, windows):
    """Non-sequential reference: hooks on the whole model, one ordinary forward pass."""
    stats = {name: InputNormStatistic(m.in_features) for name, m in find_targets(model).items()}
    handles = [
        module.register_forward_hook(lambda _m, inputs, _o, s=stats[name]: s.add_batch(inputs[0]))
        for name, module in find_targets(model).items()
    ]
    for row in windows:
        model(row[None], use_cache=False)
    for handle in handles:
        handle.remove()
    return stats


def test_windows_are_seeded_contiguous_slices_with_provenance():
    stream = np.arange(1000, dtype=np.uint16)
    windows, prov = calibration_windows(stream, nsamples=5, seqlen=16, seed=3)
    assert windows.shape == (5, 16) and windows.dtype == torch.long
    rng = random.Random(3)
    assert prov["starts"] == [rng.randint(0, 1000 - 16 - 1) for _ in range(5)]
    for row, start in zip(windows, prov["starts"], strict=True):
        assert torch.equal(row, torch.arange(start, start + 16))
    assert prov["nsamples"] == 5 and prov["seqlen"] == 16 and prov["seed"] == 3
    assert prov["tokens_used"] == 80 and prov["stream_tokens"] == 1000
    again, _ = calibration_windows(torch.from_numpy(stream.astype(np.int64)), nsamples=5, seqlen=16, seed=3)
    assert torch.equal(windows, again)
    other, _ = calibration_windows(stream, nsamples=5, seqlen=16, seed=4)
    assert not torch.equal(windows, other)


def test_windows_need_a_long_enough_1d_stream():
    with pytest.raises(ValueError, match=r"has 16 tokens; a window of seqlen=16 needs at least 17"):
        calibration_windows(np.arange(16), nsamples=1, seqlen=16, seed=0)
    calibration_windows(np.arange(17), nsamples=1, seqlen=16, seed=0)
    with pytest.raises(ValueError, match=r"1-D stream"):
        calibration_windows(np.zeros((4, 8), dtype=np.int64), nsamples=1, seqlen=4, seed=0)


def test_layer0_statistics_come_from_the_embeddings(tiny_llama, token_windows):
    token_windows = token_windows[:4]
    seen = _collect_sequential(tiny_llama, token_windows)
    with torch.no_grad():
        normed = tiny_llama.model.layers[0].input_layernorm(tiny_llama.model.embed_tokens(token_windows))
    expected = normed.pow(2).sum(dim=(0, 1)) / token_windows.shape[0]
    torch.testing.assert_close(seen["model.layers.0.self_attn.q_proj"].sq_norms, expected, rtol=1e-5, atol=1e-6)
    assert seen["model.layers.0.self_attn.q_proj"].nsamples == token_windows.shape[0]
    assert seen["model.layers.0.self_attn.q_proj"].ntokens == token_windows.numel()


def test_without_pruning_the_engine_matches_a_dense_forward(tiny_llama, token_windows):
    token_windows = token_windows[:4]
    sequential = _collect_sequential(tiny_llama, token_windows)
    dense = _dense_input_norms(tiny_llama, token_windows)
    assert sequential.keys() == dense.keys()
    for name in dense:
        torch.testing.assert_close(sequential[name].sq_norms, dense[name].sq_norms, rtol=1e-4, atol=1e-6)


def test_layer_statistics_come_from_the_pruned_earlier_layers(tiny_llama, token_windows):
    token_windows = token_windows[:4]
    reference = make_tiny_llama()
    dense = _collect_sequential(reference, token_windows)
    pruned = _collect_sequential(tiny_llama, token_windows, prune_layers={0})
    name0, name1 = "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"
    torch.testing.assert_close(pruned[name0].sq_norms, dense[name0].sq_norms)
    assert not torch.allclose(pruned[name1].sq_norms, dense[name1].sq_norms, rtol=1e-3)
    # What the engine fed layer 1 is what layer 1 sees in the model whose layer 0 is pruned.
    with torch.no_grad():
        reference.model.layers[0].self_attn.o_proj.weight.zero_()
        reference.model.layers[0].mlp.down_proj.weight.zero_()
    actual = _dense_input_norms(reference, token_windows)
    torch.testing.assert_close(pruned[name1].sq_norms, actual[name1].sq_norms, rtol=1e-4, atol=1e-6)


def test_batch_size_changes_speed_not_statistics(token_windows):
    token_windows = token_windows[:4]  # batches of 3 and 1
    one = _collect_sequential(make_tiny_llama(), token_windows, batch_size=1, statistic="hessian")
    three = _collect_sequential(make_tiny_llama(), token_windows, batch_size=3, statistic="hessian")
    for name in one:
        assert three[name].nsamples == one[name].nsamples == token_windows.shape[0]
        torch.testing.assert_close(three[name].hessian, one[name].hessian, rtol=1e-4, atol=1e-5)


def test_hessian_statistic_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 5, 6, generator=g), torch.randn(3, 5, 6, generator=g)]
    stat = HessianStatistic(6)
    for batch in batches:
        stat.add_batch(batch)
    x = torch.cat([b.reshape(-1, 6) for b in batches])
    torch.testing.assert_close(stat.hessian, 2 / 5 * x.t() @ x, rtol=1e-5, atol=1e-5)


def test_bf16_model_accumulates_fp32_statistics(token_windows):
    model = make_tiny_llama().to(torch.bfloat16)
    model.train()
    seen = _collect_sequential(model, token_windows[:2], statistic="hessian")
    assert len(seen) == 28
    for stat in seen.values():
        assert stat.hessian.dtype == torch.float32 and torch.isfinite(stat.hessian).all()
        assert stat.hessian.diagonal().min() > 0
    assert model.training  # the engine restores the caller's mode


def test_engine_rejects_bad_inputs(tiny_llama, token_windows):
    with pytest.raises(ValueError, match=r"\[nsamples, seqlen\]"):
        run_sequential(tiny_llama, token_windows[0], lambda *a: None, progress=False)
    with pytest.raises(ValueError, match="integer token ids"):
        run_sequential(tiny_llama, token_windows.float(), lambda *a: None, progress=False)
    with pytest.raises(ValueError, match="Unknown statistic 'grads'"):
        run_sequential(tiny_llama, token_windows, lambda *a: None, progress=False, statistic="grads")
    with pytest.raises(ValueError, match="outside the decoder layers"):
        lm_head = find_targets(tiny_llama, r"lm_head\.weight")
        run_sequential(tiny_llama, token_windows, lambda *a: None, progress=False, targets=lm_head)


def test_captured_attention_mask_works_with_eager_attention(token_windows):
    # Eager attention needs the explicit causal mask the engine captures from the layer-0 call.
    windows = token_windows[:4]
    runs = []
    for implementation in ("sdpa", "eager"):
        model = make_tiny_llama()
        model.set_attn_implementation(implementation)
        runs.append(_collect_sequential(model, windows, batch_size=3))
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name].sq_norms, runs[1][name].sq_norms, rtol=1e-4, atol=1e-5)
