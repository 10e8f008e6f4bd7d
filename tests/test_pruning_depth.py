"""Depth pruning: layer removal, Minitron-depth window choice, ShortGPT Block Influence (methods-spec 11.1-3)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_tiny_llama
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from litprune.pruning.depth import (
    block_influence,
    minitron_depth_window,
    remove_layers,
    shortgpt_drop,
    skipped_layers,
)
from litprune.pruning.scorers import make_perplexity_scorer, perplexity
from litprune.pruning.structured import prune_structured


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _identity_forward(hidden_states, *args, **kwargs):
    return hidden_states


class FixedScorer:
    """Returns preset scores in call order and records which layers each scored model ran."""

    def __init__(self, values):
        self.values = list(values)
        self.seen_layers = []

    def __call__(self, model):
        self.seen_layers.append([id(layer) for layer in model.model.layers])
        return self.values[len(self.seen_layers) - 1]


@pytest.mark.parametrize("drop", [[1], [0, 3], [1, 2], [0, 1, 2]])
def test_remove_layers_equals_identity_layers(tiny_llama, token_windows, drop):
    reference = copy.deepcopy(tiny_llama)
    for i in drop:
        # A decoder layer replaced by identity is a pure residual pass-through.
        reference.model.layers[i].forward = _identity_forward
    pruned = remove_layers(copy.deepcopy(tiny_llama), drop)
    torch.testing.assert_close(_logits(pruned, token_windows), _logits(reference, token_windows), rtol=0, atol=0)


def test_remove_layers_updates_config_and_layer_idx(tiny_llama):
    survivors = [tiny_llama.model.layers[i] for i in (0, 2)]
    pruned = remove_layers(tiny_llama, [1, 3])
    assert pruned is tiny_llama  # documented: in place
    assert pruned.config.num_hidden_layers == 2
    assert list(pruned.model.layers) == survivors
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]


def test_remove_layers_rejects_bad_indices(tiny_llama):
    with pytest.raises(ValueError, match=r"out of range.*4 layers"):
        remove_layers(tiny_llama, [4])
    with pytest.raises(ValueError, match="duplicates"):
        remove_layers(tiny_llama, [1, 1])
    with pytest.raises(ValueError, match="keep at least one"):
        remove_layers(tiny_llama, [0, 1, 2, 3])
    assert tiny_llama.config.num_hidden_layers == 4


def test_remove_layers_slices_layer_types():
    config = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=8,
        use_sliding_window=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    remove_layers(model, [0, 1])
    assert model.config.layer_types == ["full_attention", "sliding_attention"]


def test_skipped_layers_restores_everything(tiny_llama, token_windows):
    before = _logits(tiny_llama, token_windows)
    layers = list(tiny_llama.model.layers)
    with pytest.raises(RuntimeError, match="boom"):
        with skipped_layers(tiny_llama, [1, 2]):
            assert tiny_llama.config.num_hidden_layers == 2
            assert [layer.self_attn.layer_idx for layer in tiny_llama.model.layers] == [0, 1]
            raise RuntimeError("boom")
    assert list(tiny_llama.model.layers) == layers
    assert tiny_llama.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    torch.testing.assert_close(_logits(tiny_llama, token_windows), before, rtol=0, atol=0)


def test_minitron_window_evaluates_every_contiguous_window(tiny_llama):
    layer_ids = [id(layer) for layer in tiny_llama.model.layers]
    # baseline 10; windows (start 0, 1, 2) score 12, 8, 9.5 -> gaps 2, 2, 0.5.
    scorer = FixedScorer([10.0, 12.0, 8.0, 9.5])
    start, scores, baseline = minitron_depth_window(tiny_llama, keep=2, scorer=scorer)
    assert (start, scores, baseline) == (2, [12.0, 8.0, 9.5], 10.0)
    assert len(scorer.seen_layers) == 1 + 3  # dense + (L - k + 1)
    assert scorer.seen_layers[0] == layer_ids
    assert scorer.seen_layers[1:] == [
        [layer_ids[2], layer_ids[3]],
        [layer_ids[0], layer_ids[3]],
        [layer_ids[0], layer_ids[1]],
    ]
    assert [id(layer) for layer in tiny_llama.model.layers] == layer_ids
    assert tiny_llama.config.num_hidden_layers == 4


def test_minitron_window_tie_goes_to_lowest_index_and_closest_not_best(tiny_llama):
    assert minitron_depth_window(tiny_llama, 2, FixedScorer([10.0, 11.0, 9.0, 13.0])).start == 0
    assert minitron_depth_window(tiny_llama, 2, FixedScorer([10.0, 13.0, 9.0, 11.0])).start == 1
    # Closest to baseline, not the lowest score: an accuracy ABOVE baseline may win.
    assert minitron_depth_window(tiny_llama, 3, FixedScorer([0.5, 0.1, 0.2, 0.55, 0.3])).start == 2


def test_minitron_window_perplexity_matches_physical_removal(tiny_llama, token_windows):
    scorer = make_perplexity_scorer(token_windows, batch_size=3)
    start, scores, baseline = minitron_depth_window(tiny_llama, keep=3, scorer=scorer)
    assert baseline == pytest.approx(perplexity(tiny_llama, token_windows))
    for i, score in enumerate(scores):
        removed = remove_layers(copy.deepcopy(tiny_llama), [i])
        assert score == pytest.approx(perplexity(removed, token_windows), rel=1e-5)
    gaps = [abs(s - baseline) for s in scores]
    assert start == gaps.index(min(gaps))


def test_minitron_window_rejects_bad_keep(tiny_llama):
    with pytest.raises(ValueError, match=r"keep=4 layers is out of range.*1 to 3"):
        minitron_depth_window(tiny_llama, 4, FixedScorer([1.0]))


def test_perplexity_does_not_depend_on_batch_size(tiny_llama, token_windows):
    assert perplexity(tiny_llama, token_windows, batch_size=1) == pytest.approx(
        perplexity(tiny_llama, token_windows, batch_size=8), rel=1e-5
    )


def test_block_influence_zero_for_pass_through_layer_and_dropped_first(tiny_llama, token_windows):
    with torch.no_grad():
        tiny_llama.model.layers[2].self_attn.o_proj.weight.zero_()
        tiny_llama.model.layers[2].mlp.down_proj.weight.zero_()
    bi = block_influence(tiny_llama, token_windows)
    assert bi.shape == (4,)
    assert bool(((bi >= 0) & (bi <= 2)).all())
    assert bi[2].item() == pytest.approx(0.0, abs=1e-6)
    assert bool((bi[[0, 1, 3]] > 1e-3).all())
    assert shortgpt_drop(bi, keep=3) == [2]


def test_block_influence_matches_hidden_states(tiny_llama, token_windows):
    bi = block_influence(tiny_llama, token_windows, batch_size=3)
    expected = torch.zeros(3)
    batches = token_windows.split(3)
    for batch in batches:
        with torch.no_grad():
            hidden = tiny_llama(input_ids=batch, output_hidden_states=True).hidden_states
        # hidden[l] enters layer l; hidden[l + 1] leaves it (the last entry is after the final norm).
        for layer in range(3):
            cos = torch.nn.functional.cosine_similarity(hidden[layer], hidden[layer + 1], dim=-1)
            expected[layer] += 1 - cos.mean()
    torch.testing.assert_close(bi[:3], expected / len(batches), rtol=1e-5, atol=1e-6)


def test_shortgpt_drop_is_stable_and_order_preserving():
    bi = torch.tensor([0.5, 0.2, 0.5, 0.2])
    assert shortgpt_drop(bi, keep=2) == [1, 3]
    assert shortgpt_drop(bi, keep=1) == [1, 2, 3]
    assert shortgpt_drop(torch.full((4,), 0.3), keep=2) == [2, 3]
    assert shortgpt_drop(torch.tensor([0.1, 0.9, 0.3, 0.7]), keep=2) == [0, 2]
    with pytest.raises(ValueError, match="keep=4"):
        shortgpt_drop(bi, keep=4)


@pytest.mark.parametrize("method", ["minitron_depth", "shortgpt"])
def test_prune_structured_depth_is_an_ordinary_llama(method, tiny_llama, token_windows, tmp_path):
    parent_logits = _logits(tiny_llama, token_windows)
    pruned, record = prune_structured(tiny_llama, method, ratio=0.5, windows=token_windows)
    torch.testing.assert_close(_logits(tiny_llama, token_windows), parent_logits, rtol=0, atol=0)  # parent kept
    assert isinstance(pruned, LlamaForCausalLM)
    assert pruned.config.num_hidden_layers == 2
    assert len(record["kept_layers"]) == 2 and len(record["dropped_layers"]) == 2
    assert record["achieved_ratio"]["non_embedding"] == pytest.approx(0.5, abs=0.01)
    assert record["params_after"]["non_embedding"] < record["params_before"]["non_embedding"]
    assert record["calibration"]["num_windows"] == 8 and record["calibration"]["seq_len"] == 32
    if method == "minitron_depth":
        assert record["dropped_layers"] == list(range(record["window_start"], record["window_start"] + 2))
        assert len(record["window_scores"]) == 3
    json.dumps(record)

    pruned.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2
    torch.testing.assert_close(_logits(reloaded, token_windows), _logits(pruned, token_windows), rtol=0, atol=0)


def test_generate_with_kv_cache_after_depth_pruning(token_windows):
    model = make_tiny_llama()
    pruned = remove_layers(model, [0, 2])
    prompt = token_windows[:2, :6]
    with torch.no_grad():
        cached = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        ids = prompt
        for _ in range(6):  # greedy decoding without any cache, for reference
            next_id = pruned(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(cached, ids)


def test_prune_structured_depth_with_callable_scorer_needs_no_windows(tiny_llama):
    scorer = FixedScorer([1.0, 3.0, 1.5, 0.9, 2.0])
    pruned, record = prune_structured(tiny_llama, "minitron_depth", target={"num_hidden_layers": 3}, scorer=scorer)
    assert record["dropped_layers"] == [2] and record["kept_layers"] == [0, 1, 3]
    assert record["calibration"] is None
    assert record["ratio_requested"] is None
    assert pruned.config.num_hidden_layers == 3
