"""FSDP2 building blocks without a second process: the strategy rules, the CPU config, building without weights,
the sharded random init and the full <-> local moves (on a one-process gloo group), distributed checkpoint reads.

The two-process runs are tests/test_fsdp2.py (slow tier)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import make_tiny_llama
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from transformers import LlamaForCausalLM

from litprune.inits.random import RandomInit
from litprune.models.sharding import (
    ShardingSettings,
    full_tensor,
    is_dtensor,
    local_slice,
    local_tensor,
    materialize_local_shards,
    mixed_precision_policy,
    parameters_on_meta,
    shard_model,
    unsharded_copy,
)
from litprune.training.checkpoint_io import DISTRIBUTED_METADATA, read_checkpoint_record
from litprune.training.mask_state import own_input_norms
from litprune.training.strategies import check_gradient_clipping

FSDP2_CPU = Path(__file__).resolve().parents[1] / "configs" / "trainer" / "fsdp2_cpu.yaml"


def test_fsdp1_with_norm_clipping_is_refused_naming_the_replacement():
    trainer = SimpleNamespace(strategy=FSDPStrategy(), gradient_clip_val=1.0, gradient_clip_algorithm=None)
    with pytest.raises(
        ValueError,
        match=r"FSDPStrategy cannot clip.*gradient_clip_val=1.0.*ModelParallelStrategy.*"
        r"configs/trainer/fsdp_8b.yaml",
    ):
        check_gradient_clipping(trainer)
    # Clipping by value, no clipping, and other strategies pass.
    check_gradient_clipping(
        SimpleNamespace(strategy=FSDPStrategy(), gradient_clip_val=1.0, gradient_clip_algorithm="value")
    )
    check_gradient_clipping(
        SimpleNamespace(strategy=FSDPStrategy(), gradient_clip_val=None, gradient_clip_algorithm=None)
    )
    check_gradient_clipping(
        SimpleNamespace(strategy=DDPStrategy(), gradient_clip_val=1.0, gradient_clip_algorithm=None)
    )


def test_fsdp2_cpu_config_is_two_fp32_cpu_processes_of_one_shard_each():
    config = yaml.safe_load(FSDP2_CPU.read_text())["trainer"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=ModelParallelStrategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": config["strategy"]})).strategy
    assert config["accelerator"] == "cpu" and config["precision"] == "32-true"
    assert strategy._data_parallel_size == config["devices"] * config["num_nodes"] == 2
    assert strategy._tensor_parallel_size == 1


def test_bf16_computes_in_bf16_and_reduces_in_fp32_other_precisions_keep_fp32():
    assert mixed_precision_policy("bf16-mixed") == (torch.bfloat16, torch.float32)
    assert mixed_precision_policy("32-true") == (None, None)
    assert mixed_precision_policy("16-mixed") == (None, None)


def test_parameters_on_meta_keeps_buffers_real():
    reference = make_tiny_llama()
    with parameters_on_meta():
        model = LlamaForCausalLM(reference.config)
    assert all(p.is_meta for p in model.parameters())
    buffers = dict(model.named_buffers())
    assert buffers and not any(b.is_meta for b in buffers.values())
    for name, buffer in reference.named_buffers():
        assert torch.equal(buffers[name], buffer), name
    assert type(model.model.layers[0].mlp.up_proj.weight) is torch.nn.Parameter


def test_unsharded_copy_holds_the_given_tensors():
    model = make_tiny_llama(seed=1)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    copy = unsharded_copy(model, state)
    assert type(copy) is LlamaForCausalLM and copy.config is model.config
    for name, tensor in copy.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_a_distributed_checkpoint_directory_reads_as_its_metadata(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.mkdir()
    torch.save({"litprune": {"tokens_seen": 512}, "global_step": 3}, ckpt / DISTRIBUTED_METADATA)
    assert read_checkpoint_record(ckpt) == {"tokens_seen": 512, "global_step": 3}


def test_wanda_statistics_resume_per_rank_or_summed_on_rank_0():
    state = {
        "input_norms": {"names": ["a"], "sum_sq": torch.zeros(3), "num_rows": 0},
        "input_norms_by_rank": {"sum_sq": torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]), "num_rows": [4, 5]},
    }
    # As many ranks as saved: each its own.
    own = own_input_norms(state, rank=1, world_size=2)
    assert torch.equal(own["sum_sq"], torch.tensor([10.0, 20.0, 30.0])) and own["num_rows"] == 5
    # One process resumes a two-process run: the sum is kept (the next event all-reduces the statistics anyway).
    own = own_input_norms(state, rank=0, world_size=1)
    assert torch.equal(own["sum_sq"], torch.tensor([11.0, 22.0, 33.0])) and own["num_rows"] == 9
    other = own_input_norms(state, rank=2, world_size=4)
    assert not other["sum_sq"].any() and other["num_rows"] == 0
    plain = {"input_norms": {"names": ["a"], "sum_sq": torch.ones(3), "num_rows": 2}}
    assert own_input_norms(plain, rank=0, world_size=1) == plain["input_norms"]


@pytest.fixture
def one_process_mesh(tmp_path):
    """A gloo process group of one rank and its 1-D mesh: DTensors and fully_shard work, every shard is whole."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_random_init_equals_the_unsharded_one(one_process_mesh):
    init = RandomInit(seed=3)
    reference = init.build(make_tiny_llama().config).model
    with parameters_on_meta():
        model = init.build(reference.config).model  # RandomInit leaves a weightless model alone
    shard_model(model, one_process_mesh, ShardingSettings())
    materialize_local_shards(model, torch.device("cpu"), init=init.apply)
    params = dict(model.named_parameters())
    assert all(is_dtensor(p) for p in params.values())
    for name, expected in reference.named_parameters():
        assert torch.equal(full_tensor(local_tensor(params[name]).detach(), params[name]), expected.detach()), name
        assert torch.equal(local_slice(expected.detach(), params[name]), local_tensor(params[name]).detach()), name
    for name, expected in reference.named_buffers():
        assert torch.equal(dict(model.named_buffers())[name], expected), name
    # Bool masks travel whole and come back as bool.
    weight = params["model.layers.0.mlp.up_proj.weight"]
    mask = local_tensor(weight).detach() > 0
    assert torch.equal(full_tensor(mask, weight), mask) and full_tensor(mask, weight).dtype == torch.bool
