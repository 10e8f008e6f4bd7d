"""Target selection: one `targets` regex, fully matching parameter names, with one default for every component."""

from __future__ import annotations

import re

import pytest
from sparse_mask_models import TinyLlamaLM
from torch import nn

from litprune.callbacks.sparse_mask import SparseMask
from litprune.inits.sparse import SparsePrune
from litprune.pruning.sparse import prune_sparse
from litprune.pruning.targets import (
    DECODER_LINEARS,
    DEFAULT_TARGETS,
    compile_targets,
    decoder_layers,
    find_targets,
    layer_index_of,
)


def _decoder_linears_by_structure(model: nn.Module) -> list[str]:
    """The 7 linears of every decoder layer, found by walking the layers (no regex): what the default must select."""
    prefix, layers = decoder_layers(model)
    names = []
    for index, layer in enumerate(layers):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[-1] in DECODER_LINEARS:
                names.append(f"{prefix}.{index}.{name}")
    return names


def test_default_targets_are_the_seven_decoder_linears_of_every_layer(tiny_llama):
    targets = find_targets(tiny_llama)
    layers = tiny_llama.config.num_hidden_layers
    assert list(targets) == _decoder_linears_by_structure(tiny_llama)
    assert len(targets) == 7 * layers
    for index in range(layers):
        suffixes = [name.split(".")[-1] for name in targets if layer_index_of(name, "model.layers") == index]
        assert sorted(suffixes) == sorted(DECODER_LINEARS)
    assert all(isinstance(module, nn.Linear) for module in targets.values())
    assert "lm_head" not in targets
    assert not any("embed" in name or "norm" in name for name in targets)


def test_default_regex_selects_the_same_weights_in_the_model_and_in_a_lightning_module(tiny_llama):
    expected = [f"{name}.weight" for name in _decoder_linears_by_structure(tiny_llama)]
    regex = re.compile(DEFAULT_TARGETS)
    # Every parameter of the HF model, lm_head and embeddings included, is tested against the regex.
    assert [name for name, _ in tiny_llama.named_parameters() if regex.fullmatch(name)] == expected
    module = TinyLlamaLM()  # holds the HF model under `model.`, as litprune's CausalLM does
    assert [name for name, _ in module.named_parameters() if regex.fullmatch(name)] == [f"model.{n}" for n in expected]


def test_every_component_defaults_to_the_one_constant():
    import inspect

    assert inspect.signature(SparseMask).parameters["targets"].default == DEFAULT_TARGETS
    assert inspect.signature(SparsePrune).parameters["targets"].default == DEFAULT_TARGETS
    assert inspect.signature(prune_sparse).parameters["targets"].default == DEFAULT_TARGETS
    assert inspect.signature(find_targets).parameters["targets"].default == DEFAULT_TARGETS


def test_regex_must_match_the_whole_parameter_name(tiny_llama):
    mlp = find_targets(tiny_llama, r".*\.mlp\..*\.weight")
    assert len(mlp) == 3 * tiny_llama.config.num_hidden_layers
    assert all(".mlp." in name for name in mlp)
    one = find_targets(tiny_llama, r"model\.layers\.2\.self_attn\.q_proj\.weight")
    assert list(one) == ["model.layers.2.self_attn.q_proj"]
    # A part of a name is not enough (re.fullmatch, not re.search), and module names without `.weight` do not match.
    for partial in (r"mlp\.", r"model\.layers\.2\.self_attn\.q_proj", "q_proj"):
        with pytest.raises(ValueError, match="matches no nn.Linear weight"):
            find_targets(tiny_llama, partial)


def test_lm_head_is_only_selected_when_named(tiny_llama):
    assert list(find_targets(tiny_llama, r"lm_head\.weight")) == ["lm_head"]


def test_regex_matching_nothing_names_the_regex_and_some_parameters(tiny_llama):
    with pytest.raises(
        ValueError, match=r"targets='qkv_proj' matches no nn.Linear weight.*model\.layers\.0\.self_attn\.q_proj\.weight"
    ):
        find_targets(tiny_llama, "qkv_proj")


def test_invalid_regex_is_reported(tiny_llama):
    with pytest.raises(ValueError, match=r"targets='mlp\(' is not a valid regex"):
        find_targets(tiny_llama, "mlp(")
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="must be a non-empty regex string"):
            compile_targets(bad)


def test_decoder_layers_found_and_missing(tiny_llama):
    prefix, layers = decoder_layers(tiny_llama)
    assert prefix == "model.layers" and len(layers) == tiny_llama.config.num_hidden_layers
    with pytest.raises(ValueError, match="no nn.ModuleList named 'layers'"):
        decoder_layers(nn.Sequential(nn.Linear(4, 4)))
