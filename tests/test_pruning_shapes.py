"""Shape solver: ratios to target shapes, both parameter conventions, errors (paper target shapes on meta)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama
from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

from litprune.models.params import count_parameters
from litprune.models.presets import build_llama_config
from litprune.pruning.shapes import count_config_parameters, default_multiple, solve_shape
from litprune.pruning.structured import prune_structured


@pytest.fixture(scope="module")
def llama8b():
    return build_llama_config("llama3.1-8b")


@pytest.fixture(scope="module")
def tiny():
    return build_llama_config("tiny", vocab_size=256)


def _meta_count(config):
    with torch.device("meta"):
        return count_parameters(AutoModelForCausalLM.from_config(config))


def test_count_config_parameters_matches_a_meta_model(llama8b):
    assert count_config_parameters(llama8b) == _meta_count(llama8b)
    assert count_config_parameters(llama8b).total == 8_030_261_248
    qwen = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4)
    assert count_config_parameters(qwen) == _meta_count(qwen)


def test_depth_half_of_llama31_8b_keeps_16_layers(llama8b):
    plan = solve_shape(llama8b, "depth", ratio=0.5)
    assert plan.shape.num_hidden_layers == 16
    assert plan.shape.hidden_size == 4096 and plan.shape.head_dim == 128
    assert plan.achieved["non_embedding"] == pytest.approx(0.5, abs=1e-5)
    # Embeddings (1.05B) are never removed, so far less than half of the total goes.
    assert plan.achieved["total"] == pytest.approx(0.4346, abs=1e-3)
    assert plan.params_target == _meta_count(plan.shape.apply(llama8b))
    assert plan.params_parent.total == 8_030_261_248


def test_depth_total_convention_and_other_ratios(llama8b):
    assert solve_shape(llama8b, "depth", ratio=0.5, convention="total").shape.num_hidden_layers == 14
    assert solve_shape(llama8b, "depth", ratio=0.75).shape.num_hidden_layers == 8
    plan = solve_shape(llama8b, "depth", target={"num_hidden_layers": 8})
    assert plan.ratio_requested is None and plan.achieved["non_embedding"] == pytest.approx(0.75, abs=1e-5)


def test_width_paper_target_is_expressible(llama8b):
    plan = solve_shape(llama8b, "width", target={"hidden_size": 3072, "intermediate_size": 9216})
    shape = plan.shape
    assert (shape.hidden_size, shape.intermediate_size, shape.head_dim) == (3072, 9216, 128)
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.num_hidden_layers) == (32, 8, 32)
    assert plan.params_target.total == 4_512_746_496  # the paper's 4.51B
    assert plan.params_target == _meta_count(shape.apply(llama8b))
    assert 1 - plan.achieved["total"] == pytest.approx(0.562, abs=1e-3)
    assert shape.apply(llama8b).head_dim == 128


def test_width_solver_at_half_lands_near_the_paper_target(llama8b):
    plan = solve_shape(llama8b, "width", ratio=0.5)
    shape = plan.shape
    assert shape.hidden_size % 64 == 0 and shape.intermediate_size % 256 == 0
    assert abs(shape.hidden_size - 3072) <= 384 and abs(shape.intermediate_size - 9216) <= 768
    assert plan.achieved["non_embedding"] == pytest.approx(0.5, abs=0.01)
    # Same factor on d and F: the parent's F/d = 3.5 is kept up to rounding.
    assert shape.intermediate_size / shape.hidden_size == pytest.approx(3.5, rel=0.05)
    assert shape.head_dim == 128 and shape.num_attention_heads == 32


def test_width_with_one_fixed_size_solves_the_other(llama8b):
    plan = solve_shape(llama8b, "width", ratio=0.5, target={"hidden_size": 3072})
    assert plan.shape.hidden_size == 3072 and plan.shape.intermediate_size % 256 == 0
    assert plan.achieved["non_embedding"] == pytest.approx(0.5, abs=0.005)
    plan = solve_shape(llama8b, "width", ratio=0.5, target={"intermediate_size": 9216}, convention="total")
    assert plan.shape.intermediate_size == 9216 and plan.shape.hidden_size % 64 == 0
    assert plan.achieved["total"] == pytest.approx(0.5, abs=0.01)


def test_default_multiples_scale_with_the_model(tiny):
    assert (default_multiple(4096, 64), default_multiple(14336, 256)) == (64, 256)
    assert (default_multiple(64, 64), default_multiple(128, 256)) == (8, 16)
    plan = solve_shape(tiny, "width", ratio=0.5)
    assert plan.shape.hidden_size % 8 == 0 and plan.shape.intermediate_size % 16 == 0
    assert plan.shape.hidden_size % tiny.num_attention_heads == 0
    plan = solve_shape(tiny, "width", ratio=0.5, hidden_multiple=16, mlp_multiple=64)
    assert plan.shape.hidden_size % 16 == 0 and plan.shape.intermediate_size % 64 == 0


def test_solver_agrees_with_the_pruned_model(token_windows):
    parent = make_tiny_llama()
    plan = solve_shape(parent.config, "width", ratio=0.6, convention="total")
    pruned, record = prune_structured(parent, "minitron_width", ratio=0.6, convention="total", windows=token_windows)
    assert count_parameters(pruned) == plan.params_target
    assert record["achieved_ratio"] == pytest.approx(plan.achieved)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2, "0.5", True])
def test_bad_ratio_is_rejected(tiny, ratio):
    with pytest.raises(ValueError, match=r"ratio=.* is out of range.*\(0, 1\)"):
        solve_shape(tiny, "depth", ratio=ratio)


def test_ratio_that_leaves_no_layer_or_removes_none(tiny):
    with pytest.raises(ValueError, match=r"ratio=0.97 \(non_embedding\) leaves no decoder layer.*keeps 1 layer"):
        solve_shape(tiny, "depth", ratio=0.97)
    with pytest.raises(ValueError, match=r"ratio=0.05 .* too small to remove a whole layer"):
        solve_shape(tiny, "depth", ratio=0.05)
    with pytest.raises(ValueError, match=r"ratio=0.999 .* leaves no channel"):
        solve_shape(tiny, "width", ratio=0.999)
    with pytest.raises(ValueError, match=r"ratio=0.01 .* too small to remove anything"):
        solve_shape(tiny, "width", ratio=0.01)


def test_shapes_that_break_head_grouping_are_rejected(tiny, llama8b):
    with pytest.raises(ValueError, match=r"hidden_size=3000 is not a multiple of num_attention_heads=32"):
        solve_shape(llama8b, "width", target={"hidden_size": 3000, "intermediate_size": 9216})
    with pytest.raises(ValueError, match=r"num_key_value_heads=3 is out of range.*2 KV groups"):
        solve_shape(tiny, "width", target={"hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 3})
    plan = solve_shape(tiny, "width", target={"hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 1})
    assert (plan.shape.num_attention_heads, plan.shape.num_key_value_heads) == (2, 1)


def test_argument_errors(tiny):
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        solve_shape(GPT2Config(), "depth", ratio=0.5)
    with pytest.raises(ValueError, match="method='length'"):
        solve_shape(tiny, "length", ratio=0.5)
    with pytest.raises(ValueError, match=r"target keys \['hidden_size'\] do not apply to depth"):
        solve_shape(tiny, "depth", target={"hidden_size": 32})
    with pytest.raises(ValueError, match="exactly one of ratio"):
        solve_shape(tiny, "depth", ratio=0.5, target={"num_hidden_layers": 2})
    with pytest.raises(ValueError, match="exactly one of ratio"):
        solve_shape(tiny, "depth")
    with pytest.raises(ValueError, match=r"keep between 1 and 3 layers"):
        solve_shape(tiny, "depth", target={"num_hidden_layers": 4})
    with pytest.raises(ValueError, match="the sizes alone fix the shape"):
        solve_shape(tiny, "width", ratio=0.5, target={"hidden_size": 32, "intermediate_size": 64})
    with pytest.raises(ValueError, match="needs a ratio"):
        solve_shape(tiny, "width", target={"hidden_size": 32})
    with pytest.raises(ValueError, match=r"convention='tokens' is unknown"):
        solve_shape(tiny, "depth", ratio=0.5, convention="tokens")
    with pytest.raises(ValueError, match=r"No hidden size is a multiple of 128"):
        solve_shape(tiny, "width", ratio=0.5, hidden_multiple=128)
