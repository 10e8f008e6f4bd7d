"""The one-call entry point `prune_sparse`: result layout, record, and every misconfiguration's message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama

from litprune.pruning.calibration import calibration_windows
from litprune.pruning.sparse import prune_sparse
from litprune.pruning.targets import DEFAULT_TARGETS


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_result_masks_are_keyed_by_parameter_name_and_match_the_weights(tiny_llama):
    stream = np.arange(5000) % 256
    windows, provenance = calibration_windows(stream, nsamples=4, seqlen=32, seed=0)
    result = prune_sparse(
        tiny_llama, "wanda", 0.5, windows=windows, calibration={**provenance, "dataset": "arange"}, progress=False
    )
    params = dict(tiny_llama.named_parameters())
    assert len(result.masks) == 28
    assert "model.layers.0.self_attn.q_proj.weight" in result.masks
    for name, keep in result.masks.items():
        assert keep.dtype == torch.bool and keep.shape == params[name].shape
        assert torch.all(params[name][~keep] == 0)
    record = json.loads(json.dumps(result.record))  # JSON-ready
    assert record["method"] == "wanda" and record["pattern"] == "unstructured" and record["ratio"] == 0.5
    assert record["targets"] == DEFAULT_TARGETS and record["num_targets"] == 28
    assert record["calibration"]["nsamples"] == 4 and record["calibration"]["seqlen"] == 32
    assert record["calibration"]["dataset"] == "arange" and record["calibration"]["tokens_used"] == 128
    assert record["sparsity"]["overall"] == pytest.approx(0.5)
    assert set(record["sparsity"]["per_layer"]) == {"0", "1", "2", "3"}
    assert record["sparsity"]["per_matrix"]["model.layers.3.mlp.down_proj.weight"] == pytest.approx(0.5)


def test_magnitude_needs_no_data_and_records_no_calibration(tiny_llama):
    result = prune_sparse(tiny_llama, "magnitude", 0.6)
    assert result.record["calibration"] is None
    assert result.sparsity == pytest.approx(0.6, abs=1e-3)


def test_targets_regex_limits_what_is_pruned(tiny_llama, token_windows):
    before = _state(tiny_llama)
    result = prune_sparse(
        tiny_llama, "sparsegpt", pattern="2:4", windows=token_windows, targets=r".*\.mlp\..*", progress=False
    )
    assert len(result.masks) == 12 and all(".mlp." in name for name in result.masks)
    after = tiny_llama.state_dict()
    attention = [k for k in before if "self_attn" in k]
    assert attention and all(torch.equal(before[k], after[k]) for k in attention)
    assert result.record["targets"] == r".*\.mlp\..*" and result.record["ratio"] == 0.5


def test_ratio_zero_leaves_the_model_untouched(tiny_llama, token_windows):
    before = _state(tiny_llama)
    result = prune_sparse(tiny_llama, "wanda", 0.0, windows=token_windows, progress=False)
    assert _unchanged(tiny_llama, before)
    assert all(mask.all() for mask in result.masks.values()) and result.sparsity == 0.0


def test_unknown_method_suggests_close_matches(tiny_llama):
    with pytest.raises(ValueError, match=r"Unknown sparse method 'wandaa'.*Did you mean 'wanda'"):
        prune_sparse(tiny_llama, "wandaa", 0.5)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_out_of_range(tiny_llama, ratio):
    with pytest.raises(ValueError, match=rf"ratio={ratio} is out of range.*\[0, 1\)"):
        prune_sparse(tiny_llama, "magnitude", ratio)


def test_problems_are_reported_together_before_any_change(tiny_llama):
    before = _state(tiny_llama)
    with pytest.raises(ValueError) as info:
        prune_sparse(tiny_llama, "sparsegpt", 0.6, pattern="2:4", blocksize=128, damp=0.1)
    message = str(info.value)
    assert "ratio=0.6 cannot be reached" in message and "set it to 0.5" in message
    assert "needs calibration data: pass windows=" in message
    assert "Unknown option(s) ['damp'] for method 'sparsegpt'" in message
    assert _unchanged(tiny_llama, before)


def test_unstructured_needs_a_ratio(tiny_llama):
    with pytest.raises(ValueError, match=r"pattern='unstructured' needs a ratio"):
        prune_sparse(tiny_llama, "magnitude")


def test_bad_pattern_text(tiny_llama):
    with pytest.raises(ValueError, match=r"Unknown sparsity pattern '2-4'"):
        prune_sparse(tiny_llama, "magnitude", 0.5, pattern="2-4")


def test_in_features_not_divisible_by_m_names_the_layers():
    model = make_tiny_llama(intermediate_size=100)  # down_proj has 100 inputs: fine for 2:4, not for 4:8
    before = _state(model)
    with pytest.raises(ValueError, match=r"multiple of 8; not: model\.layers\.0\.mlp\.down_proj \(in_features=100\)"):
        prune_sparse(model, "magnitude", pattern="4:8")
    assert _unchanged(model, before)
    prune_sparse(model, "magnitude", pattern="2:4")


def test_sparsegpt_blocksize_must_fit_the_groups(tiny_llama, token_windows):
    with pytest.raises(ValueError, match=r"blocksize=60 must be a multiple of M=8"):
        prune_sparse(tiny_llama, "sparsegpt", pattern="4:8", windows=token_windows, blocksize=60)


def test_windows_are_checked_against_the_vocabulary_and_provenance(tiny_llama, token_windows):
    with pytest.raises(ValueError, match=r"token ids in \[0, 300\].*vocabulary has 256"):
        prune_sparse(tiny_llama, "wanda", 0.5, windows=torch.tensor([[0, 300, 5]]))
    with pytest.raises(ValueError, match=r"\[nsamples, seqlen\] LongTensor"):
        prune_sparse(tiny_llama, "wanda", 0.5, windows=token_windows[0])
    with pytest.raises(ValueError, match=r"calibration\['seqlen'\]=64 disagrees with windows of shape \(8, 32\)"):
        prune_sparse(tiny_llama, "wanda", 0.5, windows=token_windows, calibration={"seqlen": 64})


def test_calibrated_methods_cannot_target_lm_head(tiny_llama, token_windows):
    with pytest.raises(ValueError, match=r"cannot prune \['lm_head'\] outside 'model.layers'"):
        prune_sparse(tiny_llama, "wanda", 0.5, windows=token_windows, targets=r"lm_head\.weight")
    result = prune_sparse(tiny_llama, "magnitude", 0.5, targets=r"lm_head\.weight")
    assert list(result.masks) == ["lm_head.weight"]


def test_method_options_are_checked_before_calibration(tiny_llama, token_windows):
    before = _state(tiny_llama)
    with pytest.raises(ValueError) as info:
        prune_sparse(tiny_llama, "sparsegpt", 0.5, windows=token_windows, blocksize=0, percdamp=-1, batch_size=2.5)
    message = str(info.value)
    assert "blocksize=0 must be a positive integer" in message
    assert "batch_size=2.5 must be a positive integer" in message
    assert "percdamp=-1 must be a non-negative fraction" in message
    assert _unchanged(tiny_llama, before)
