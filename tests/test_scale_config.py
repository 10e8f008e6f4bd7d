"""The paper-scale config (Llama-3.1-8B, FSDP2, bf16, activation checkpointing) resolves, and its model builds on
the meta device with the paper's parameter count and step arithmetic (no GPU and no memory needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import ModelParallelStrategy

from litprune.models.params import count_parameters
from litprune.modules.causal_lm import CausalLM
from litprune.training.budget import TokenBudget

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "llama3.1-8b_scratch_fsdp.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_8b_model_instantiates_on_meta_with_paper_counts(config):
    parser = ArgumentParser()
    parser.add_argument("--model", type=CausalLM)
    parsed = parser.parse_object({"model": config["model"]})
    module = parser.instantiate_classes(parsed).model
    with torch.device("meta"):
        module.configure_model()
    counts = count_parameters(module.model)
    assert counts.total == 8_030_261_248
    assert all(p.is_meta for p in module.model.parameters())
    assert module.model.config.num_hidden_layers == 32 and module.model.config.num_key_value_heads == 8


def test_8b_budget_is_the_papers_step_count(config):
    trainer, data = config["trainer"], config["data"]["init_args"]
    budget = TokenBudget(
        max_tokens=config["model"]["init_args"]["max_tokens"],
        seq_len=data["seq_len"],
        micro_batch_size=data["micro_batch_size"],
        accumulate_grad_batches=trainer["accumulate_grad_batches"],
        world_size=trainer["devices"] * trainer["num_nodes"],
    )
    assert budget.tokens_per_step == 512 * 8192
    assert budget.steps == 50_000


def test_fsdp2_strategy_resolves_with_data_parallel_sharding_and_checkpointing(config):
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=ModelParallelStrategy)
    parsed = parser.parse_object({"strategy": config["trainer"]["strategy"]})
    strategy = parser.instantiate_classes(parsed).strategy
    assert isinstance(strategy, ModelParallelStrategy)
    assert config["trainer"]["precision"] == "bf16-mixed"
    trainer = config["trainer"]
    # Every process holds one shard: FSDP2 over all of them, no tensor parallelism.
    assert strategy._data_parallel_size == trainer["devices"] * trainer["num_nodes"]
    assert strategy._tensor_parallel_size == 1
    assert strategy._save_distributed_checkpoint is True
    assert config["model"]["init_args"]["activation_checkpointing"] is True
