"""Target selection for sparse methods: the decoder linears by default, regexes on module names."""

from __future__ import annotations

import pytest
from torch import nn

from litprune.pruning.targets import DECODER_LINEARS, decoder_layers, find_targets, layer_index_of


def test_default_targets_are_the_seven_decoder_linears_of_every_layer(tiny_llama):
    targets = find_targets(tiny_llama)
    layers = tiny_llama.config.num_hidden_layers
    assert len(targets) == 7 * layers
    for index in range(layers):
        suffixes = [name.split(".")[-1] for name in targets if layer_index_of(name, "model.layers") == index]
        assert sorted(suffixes) == sorted(DECODER_LINEARS)
    assert all(isinstance(module, nn.Linear) for module in targets.values())
    assert "lm_head" not in targets
    assert not any("embed" in name or "norm" in name for name in targets)


def test_regex_is_searched_in_module_names(tiny_llama):
    mlp = find_targets(tiny_llama, r"mlp\.")
    assert len(mlp) == 3 * tiny_llama.config.num_hidden_layers
    assert all(".mlp." in name for name in mlp)
    one = find_targets(tiny_llama, r"^model\.layers\.2\.self_attn\.q_proj$")
    assert list(one) == ["model.layers.2.self_attn.q_proj"]


def test_lm_head_is_only_selected_when_named(tiny_llama):
    assert list(find_targets(tiny_llama, "lm_head")) == ["lm_head"]


def test_regex_matching_nothing_names_the_regex_and_some_modules(tiny_llama):
    with pytest.raises(ValueError, match=r"targets='qkv_proj' matches no nn.Linear.*model\.layers\.0\.self_attn"):
        find_targets(tiny_llama, "qkv_proj")


def test_invalid_regex_is_reported(tiny_llama):
    with pytest.raises(ValueError, match=r"not a valid regular expression"):
        find_targets(tiny_llama, "mlp(")


def test_decoder_layers_found_and_missing(tiny_llama):
    prefix, layers = decoder_layers(tiny_llama)
    assert prefix == "model.layers" and len(layers) == tiny_llama.config.num_hidden_layers
    with pytest.raises(ValueError, match="no nn.ModuleList named 'layers'"):
        decoder_layers(nn.Sequential(nn.Linear(4, 4)))
