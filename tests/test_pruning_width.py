"""Minitron-width: importance, slicing, GQA head-group extension, export (methods-spec 11.4-8)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_tiny_llama
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from litprune.pruning.structured import prune_structured
from litprune.pruning.width import WidthImportance, prune_width, slice_width, width_importance


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _importance(model, hidden=None, mlp=None, heads=None):
    config = model.config
    layers = config.num_hidden_layers
    return WidthImportance(
        hidden=torch.rand(config.hidden_size) if hidden is None else hidden,
        mlp=torch.rand(layers, config.intermediate_size) if mlp is None else mlp,
        heads=torch.rand(layers, config.num_attention_heads) if heads is None else heads,
        num_calls=1,
        num_windows=1,
        batch_size=1,
    )


def test_keep_all_gives_identical_logits(tiny_llama, token_windows):
    importance = width_importance(tiny_llama, token_windows)
    pruned = prune_width(tiny_llama, 64, 128, importance)
    torch.testing.assert_close(_logits(pruned, token_windows), _logits(tiny_llama, token_windows), rtol=0, atol=0)


def test_keep_all_with_permuted_indices_gives_same_logits(tiny_llama, token_windows):
    g = torch.Generator().manual_seed(0)
    permuted = slice_width(
        tiny_llama,
        torch.randperm(64, generator=g),
        [torch.randperm(128, generator=g) for _ in range(4)],
        [torch.randperm(2, generator=g) for _ in range(4)],
    )
    torch.testing.assert_close(_logits(permuted, token_windows), _logits(tiny_llama, token_windows))


def test_permuting_kept_indices_leaves_logits_unchanged(tiny_llama, token_windows):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randperm(64, generator=g)[:48].sort().values
    mlp = [torch.randperm(128, generator=g)[:96].sort().values for _ in range(4)]
    ordered = slice_width(tiny_llama, hidden, mlp)
    shuffled = slice_width(
        tiny_llama, hidden[torch.randperm(48, generator=g)], [m[torch.randperm(96, generator=g)] for m in mlp]
    )
    torch.testing.assert_close(_logits(shuffled, token_windows), _logits(ordered, token_windows))
    # Hidden pruning is not channel zeroing (RMSNorm now averages over d' channels): the logits really change.
    assert not torch.allclose(_logits(ordered, token_windows), _logits(tiny_llama, token_windows), atol=1e-3)


def test_mlp_only_pruning_equals_zeroing_removed_neurons(tiny_llama, token_windows):
    importance = width_importance(tiny_llama, token_windows)
    pruned = prune_width(tiny_llama, 64, 80, importance)
    zeroed = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for i, layer in enumerate(zeroed.model.layers):
            removed = torch.sort(importance.mlp[i], descending=True, stable=True).indices[80:]
            layer.mlp.gate_proj.weight[removed] = 0
            layer.mlp.up_proj.weight[removed] = 0
    torch.testing.assert_close(_logits(pruned, token_windows), _logits(zeroed, token_windows))


def test_shapes_and_explicit_head_dim_after_pruning(tiny_llama, token_windows, tmp_path):
    pruned = prune_width(tiny_llama, 48, 96, width_importance(tiny_llama, token_windows))
    assert isinstance(pruned, LlamaForCausalLM)
    config = pruned.config
    assert (config.hidden_size, config.intermediate_size, config.head_dim) == (48, 96, 16)
    assert (config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers) == (4, 2, 4)
    assert pruned.model.embed_tokens.weight.shape == (256, 48)
    assert pruned.lm_head.weight.shape == (256, 48)
    assert pruned.model.norm.weight.shape == (48,)
    for layer in pruned.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj.weight.shape == (4 * 16, 48)
        assert attn.k_proj.weight.shape == (2 * 16, 48)
        assert attn.v_proj.weight.shape == (2 * 16, 48)
        assert attn.o_proj.weight.shape == (48, 4 * 16)
        assert mlp.gate_proj.weight.shape == (96, 48) and mlp.up_proj.weight.shape == (96, 48)
        assert mlp.down_proj.weight.shape == (48, 96)
        assert layer.input_layernorm.weight.shape == (48,)
        assert layer.post_attention_layernorm.weight.shape == (48,)

    pruned.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["head_dim"] == 16
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, token_windows), _logits(pruned, token_windows), rtol=0, atol=0)


def test_prune_width_keeps_the_most_important_indices(tiny_llama):
    hidden = torch.arange(64.0)  # channels 40..63 are the most important
    mlp = torch.zeros(4, 128)
    mlp[:, :8] = 1.0  # ties among the rest: the stable sort keeps the lowest indices next
    pruned = prune_width(tiny_llama, 24, 12, _importance(tiny_llama, hidden=hidden, mlp=mlp))
    keep_h = torch.arange(40, 64)
    torch.testing.assert_close(pruned.model.embed_tokens.weight, tiny_llama.model.embed_tokens.weight[:, keep_h])
    torch.testing.assert_close(pruned.lm_head.weight, tiny_llama.lm_head.weight[:, keep_h])
    down = tiny_llama.model.layers[1].mlp.down_proj.weight
    torch.testing.assert_close(pruned.model.layers[1].mlp.down_proj.weight, down[keep_h][:, :12])
    gate = tiny_llama.model.layers[3].mlp.gate_proj.weight
    torch.testing.assert_close(pruned.model.layers[3].mlp.gate_proj.weight, gate[:12][:, keep_h])
    o_proj = tiny_llama.model.layers[0].self_attn.o_proj.weight
    torch.testing.assert_close(pruned.model.layers[0].self_attn.o_proj.weight, o_proj[keep_h])


def test_importance_equals_closed_form_from_captured_activations(tiny_llama, token_windows):
    batch_size = 3  # uneven last batch (8 = 3 + 3 + 2) and a real mean over the batch
    importance = width_importance(tiny_llama, token_windows, batch_size=batch_size)
    captured = {"in_norm": [], "post_norm": [], "o_in": []}
    hooks = []
    for layer in tiny_llama.model.layers:
        hooks.append(layer.input_layernorm.register_forward_hook(lambda m, a, o: captured["in_norm"].append(o)))
        hooks.append(
            layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: captured["post_norm"].append(o))
        )
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: captured["o_in"].append(a[0])))
    with torch.no_grad():
        for batch in token_windows.split(batch_size):
            tiny_llama(input_ids=batch)
    for hook in hooks:
        hook.remove()

    def closed_form(a):  # sum_t (mean_b |A[b,t,c]|)^2
        return (a.abs().mean(dim=0) ** 2).sum(dim=0)

    layers = 4
    calls = len(captured["in_norm"]) // layers
    hidden = sum(closed_form(a) for a in captured["in_norm"] + captured["post_norm"])
    mlp = torch.zeros(layers, 128)
    heads = torch.zeros(layers, 4)
    for call in range(calls):
        for i, layer in enumerate(tiny_llama.model.layers):
            x = captured["post_norm"][call * layers + i]
            with torch.no_grad():  # the input of down_proj, rebuilt from the MLP's own input
                a = torch.nn.functional.silu(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x)
            mlp[i] += closed_form(a)
            heads[i] += closed_form(captured["o_in"][call * layers + i]).reshape(4, 16).sum(-1)
    assert importance.num_calls == calls == 3
    torch.testing.assert_close(importance.hidden, hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(importance.mlp, mlp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(importance.heads, heads, rtol=1e-5, atol=1e-5)


def test_kv_group_pruning_equals_zeroing_removed_heads(tiny_llama, token_windows, tmp_path):
    heads = torch.tensor([[1.0, 1.0, 5.0, 0.0], [9.0, 0.0, 1.0, 1.0], [0.0, 3.0, 1.0, 1.0], [2.0, 0.0, 0.0, 1.0]])
    # Group scores (heads 0-1 share KV group 0, heads 2-3 group 1): layer 0 keeps group 1, the others group 0.
    importance = _importance(tiny_llama, heads=heads)
    pruned = prune_width(tiny_llama, 64, 128, importance, num_key_value_heads=1)
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    assert pruned.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    assert pruned.model.layers[0].self_attn.k_proj.weight.shape == (16, 64)
    assert pruned.model.layers[0].self_attn.o_proj.weight.shape == (64, 32)
    torch.testing.assert_close(
        pruned.model.layers[0].self_attn.k_proj.weight, tiny_llama.model.layers[0].self_attn.k_proj.weight[16:]
    )
    zeroed = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for i, layer in enumerate(zeroed.model.layers):
            removed_heads = slice(0, 32) if i == 0 else slice(32, 64)
            layer.self_attn.o_proj.weight[:, removed_heads] = 0
    torch.testing.assert_close(_logits(pruned, token_windows), _logits(zeroed, token_windows))
    pruned.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, token_windows), _logits(pruned, token_windows), rtol=0, atol=0)


def test_tied_embeddings_stay_tied(token_windows):
    model = make_tiny_llama(tie_word_embeddings=True)
    pruned = prune_width(model, 32, 64, width_importance(model, token_windows))
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert pruned.lm_head.weight.shape == (256, 32)


def test_qwen2_biases_are_sliced(token_windows, tmp_path):
    config = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.bias.normal_()
    importance = width_importance(model, token_windows)
    keep_all = prune_width(model, 64, 128, importance)
    torch.testing.assert_close(_logits(keep_all, token_windows), _logits(model, token_windows), rtol=0, atol=0)
    pruned = prune_width(model, 32, 64, importance, num_key_value_heads=1)
    assert pruned.model.layers[0].self_attn.k_proj.bias.shape == (16,)
    pruned.save_pretrained(tmp_path)
    reloaded = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, token_windows), _logits(pruned, token_windows), rtol=0, atol=0)


def test_prune_width_errors_name_the_value(tiny_llama):
    importance = _importance(tiny_llama)
    with pytest.raises(ValueError, match=r"hidden_size=50 must be a multiple of num_attention_heads=4"):
        prune_width(tiny_llama, 50, 64, importance)
    with pytest.raises(ValueError, match=r"intermediate_size=200 must be in 1..128"):
        prune_width(tiny_llama, 32, 200, importance)
    with pytest.raises(ValueError, match=r"num_key_value_heads=3 must be in 1..2"):
        prune_width(tiny_llama, 32, 64, importance, num_key_value_heads=3)
    other = make_tiny_llama(intermediate_size=64)
    with pytest.raises(ValueError, match="measure it on this model"):
        prune_width(other, 32, 32, importance)


def test_prune_structured_width_record_and_round_trip(tiny_llama, token_windows, tmp_path):
    parent_logits = _logits(tiny_llama, token_windows)
    pruned, record = prune_structured(tiny_llama, "minitron_width", ratio=0.5, windows=token_windows)
    torch.testing.assert_close(_logits(tiny_llama, token_windows), parent_logits, rtol=0, atol=0)
    assert record["method"] == "minitron_width" and record["ratio_requested"] == 0.5
    assert record["kept_hidden_size"] == pruned.config.hidden_size < 64
    assert record["kept_intermediate_size"] == pruned.config.intermediate_size < 128
    assert record["head_dim"] == 16 and record["kept_num_attention_heads"] == 4
    assert record["achieved_ratio"]["non_embedding"] == pytest.approx(0.5, abs=0.05)
    assert set(record["achieved_ratio"]) == {"non_embedding", "total"}
    assert record["calibration"]["batch_size"] == 1 and len(record["calibration"]["sha256"]) == 64
    json.dumps(record)
    pruned.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, token_windows), _logits(pruned, token_windows), rtol=0, atol=0)


def test_prune_structured_width_explicit_target_with_kv_groups(tiny_llama, token_windows):
    target = {"hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 1}
    pruned, record = prune_structured(tiny_llama, "minitron_width", target=target, windows=token_windows)
    assert (pruned.config.hidden_size, pruned.config.intermediate_size) == (32, 64)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 1)
    assert record["ratio_requested"] is None and record["target_requested"] == target


def test_prune_structured_reports_all_argument_problems(tiny_llama, token_windows):
    with pytest.raises(ValueError) as info:
        prune_structured(tiny_llama, "minitron_widht", ratio=1.5, convention="params")
    message = str(info.value)
    assert "Unknown method 'minitron_widht'" in message and "Did you mean 'minitron_width'" in message
    assert "ratio=1.5 is out of range" in message
    assert "convention='params'" in message
    with pytest.raises(ValueError, match=r"'shortgpt' needs calibration windows"):
        prune_structured(tiny_llama, "shortgpt", ratio=0.5)
    with pytest.raises(ValueError, match=r"outside the model's vocabulary \[0, 256\)"):
        prune_structured(tiny_llama, "minitron_width", ratio=0.5, windows=token_windows + 300)
    with pytest.raises(ValueError, match=r"Unknown scorer 'perplexty'.*Did you mean 'perplexity'"):
        prune_structured(tiny_llama, "minitron_depth", ratio=0.5, windows=token_windows, scorer="perplexty")
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer"):
        prune_structured(tiny_llama, "shortgpt", ratio=0.5, windows=token_windows, batch_size=0)
    with pytest.raises(ValueError, match=r"integer token ids"):
        prune_structured(tiny_llama, "shortgpt", ratio=0.5, windows=token_windows.float())


def test_prune_structured_rejects_non_llama_parent():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    windows = torch.randint(0, 64, (2, 8))
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*Llama-family"):
        prune_structured(model, "shortgpt", ratio=0.5, windows=windows)
