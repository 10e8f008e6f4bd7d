"""Presets, parameter counts and initialisation strategies."""

import pytest
import torch
from transformers import LlamaForCausalLM

from litprune.inits import FromPretrained, RandomInit
from litprune.models.params import count_parameters
from litprune.models.presets import build_llama_config, preset_names


def _meta_model(preset, **overrides):
    with torch.device("meta"):
        return LlamaForCausalLM(build_llama_config(preset, overrides))


def test_llama31_8b_preset_has_the_paper_parameter_counts():
    counts = count_parameters(_meta_model("llama3.1-8b"))
    assert counts.total == 8_030_261_248
    assert counts.non_embedding == 6_979_588_096  # the spec's 6.98B of decoder parameters (+ norms)


def test_paper_target_shapes_at_ratio_half():
    depth = _meta_model("llama3.1-8b-depth16")
    width = _meta_model("llama3.1-8b-width")
    parent = count_parameters(_meta_model("llama3.1-8b"))
    assert depth.config.num_hidden_layers == 16
    assert count_parameters(depth).non_embedding * 2 == pytest.approx(parent.non_embedding, rel=1e-4)
    assert (width.config.hidden_size, width.config.intermediate_size, width.config.head_dim) == (3072, 9216, 128)
    assert width.model.layers[0].self_attn.q_proj.weight.shape == (32 * 128, 3072)
    assert count_parameters(width).total == pytest.approx(4.51e9, rel=0.01)


def test_overrides_replace_preset_fields_and_unknown_fields_fail():
    config = build_llama_config("tiny", {"num_hidden_layers": 2}, vocab_size=300)
    assert config.num_hidden_layers == 2 and config.vocab_size == 300
    with pytest.raises(ValueError, match="num_hiden_layers"):
        build_llama_config("tiny", {"num_hiden_layers": 2}, vocab_size=300)


def test_unknown_preset_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown model preset 'llama3.1-8B'.*'llama3.1-8b'"):
        build_llama_config("llama3.1-8B")
    assert "tiny" in preset_names()


def test_tokenizer_sized_presets_need_a_vocabulary():
    with pytest.raises(ValueError, match="vocab_size"):
        build_llama_config("tiny")


def test_bad_attention_grouping_is_rejected():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        build_llama_config("tiny", {"num_key_value_heads": 3}, vocab_size=256)


def test_random_init_is_seeded_and_documented_scheme():
    config = build_llama_config("tiny", vocab_size=256)
    a = RandomInit(seed=3).build(config).model
    torch.manual_seed(123)  # the global RNG must not matter
    b = RandomInit(seed=3).build(config).model
    c = RandomInit(seed=4).build(config).model
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    up = a.model.layers[0].mlp.up_proj.weight
    assert up.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(a.model.norm.weight == 1)


def test_fan_in_scheme_scales_by_input_width():
    config = build_llama_config("tiny", vocab_size=256)
    model = RandomInit(seed=0, scheme="fan_in").build(config).model
    down = model.model.layers[0].mlp.down_proj.weight  # in_features = 128
    assert down.std().item() == pytest.approx(128**-0.5, rel=0.1)
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_random_init_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="scheme"):
        RandomInit(scheme="xavier")


def test_from_pretrained_round_trip(tmp_path):
    config = build_llama_config("tiny", vocab_size=256)
    model = RandomInit(seed=1).build(config).model
    model.save_pretrained(tmp_path / "m")
    loaded = FromPretrained(str(tmp_path / "m")).build(None).model
    ids = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(model(ids).logits, loaded(ids).logits, rtol=0, atol=0)


def test_from_pretrained_missing_directory_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        FromPretrained(str(tmp_path / "nope")).build(None)


def test_from_pretrained_rejects_non_llama_family(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        FromPretrained(str(tmp_path / "g")).build(None)
