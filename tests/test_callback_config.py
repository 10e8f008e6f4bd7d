"""SparseMask from YAML: every option through jsonargparse, and every callbacks/*.yaml snippet through
LightningCLI (as a second `--config`), including one real fit driven only by YAML."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from sparse_mask_models import (
    MLP,
    TinyLlamaLM,
    single_thread,  # noqa: F401  (fixture)
    token_loader,
)

from litprune.callbacks.sparse_mask import SparseMask

pytestmark = pytest.mark.usefixtures("single_thread")

SNIPPETS = sorted((Path(__file__).parents[1] / "callbacks").glob("*.yaml"))

EVERY_OPTION = r"""
cb:
  class_path: litprune.callbacks.sparse_mask.SparseMask
  init_args:
    targets: 'model\..*\.(q_proj|down_proj)\.weight'
    mask_source: zeros
    schedule: gradual
    ratio: 0.5
    pattern: "4:8"
    score: wanda
    per_row: false
    initial_ratio: 0.25
    start_step: 10
    end_step: 50
    frequency: 5
    semantics: explicit
    clip_on: masked
    reset_optimizer_state: false
    strict_restore: false
    log_every_n_steps: 7
    log_per_parameter: false
    masks_attribute: my_masks
"""


def test_every_option_is_yaml_expressible():
    parser = ArgumentParser()
    parser.add_argument("--cb", type=SparseMask)
    config = parser.parse_string(EVERY_OPTION)
    callback = parser.instantiate_classes(config).cb
    init_args = yaml.safe_load(EVERY_OPTION)["cb"]["init_args"]
    # The YAML above sets every constructor argument; a new option must be added here (and be YAML-friendly).
    assert set(init_args) == set(inspect.signature(SparseMask.__init__).parameters) - {"self"}
    assert isinstance(callback, SparseMask)
    for key, value in init_args.items():
        assert getattr(callback, key) == value, key


def test_yaml_errors_come_from_validation():
    parser = ArgumentParser()
    parser.add_argument("--cb", type=SparseMask)
    config = parser.parse_string(
        "cb:\n  class_path: litprune.callbacks.sparse_mask.SparseMask\n  init_args:\n    mask_source: dense\n"
    )
    with pytest.raises(ValueError, match="mask_source='dense' with schedule='none' would never prune"):
        parser.instantiate_classes(config)


def cli(tmp_path: Path, model_class: type, *configs: Path) -> LightningCLI:
    base = tmp_path / "run.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "accelerator": "cpu",
                    "max_steps": 3,
                    "logger": False,
                    "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}],
                }
            }
        )
    )
    args = ["--config", str(base)]
    for config in configs:
        args += ["--config", str(config)]
    return LightningCLI(model_class, run=False, args=args, save_config_callback=None)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[p.stem for p in SNIPPETS])
def test_snippets_parse_as_second_config_and_keep_run_callbacks(tmp_path, snippet):
    entry = yaml.safe_load(snippet.read_text())["trainer"]["callbacks+"][0]
    expected = entry["init_args"]
    module, _, name = entry["class_path"].rpartition(".")
    callback_class = getattr(importlib.import_module(module), name)
    trainer = cli(tmp_path, MLP, snippet).trainer
    (callback,) = [cb for cb in trainer.callbacks if isinstance(cb, callback_class)]
    for key, value in expected.items():
        assert getattr(callback, key) == value, (snippet.name, key)
    # Appended with `callbacks+`, so the run's own callbacks survive.
    assert any(isinstance(cb, ModelCheckpoint) for cb in trainer.callbacks)


def test_snippets_cover_the_documented_recipes():
    assert {p.stem for p in SNIPPETS} >= {
        "sparse_mask_from_init",
        "one_shot_2of4",
        "gradual_magnitude",
        "gradual_wanda",
    }


def test_one_shot_2of4_snippet_trains_a_tiny_llama(tmp_path):
    snippet = next(p for p in SNIPPETS if p.stem == "one_shot_2of4")
    parsed = cli(tmp_path, TinyLlamaLM, snippet)
    parsed.trainer.fit(parsed.model, token_loader())
    (callback,) = [cb for cb in parsed.trainer.callbacks if isinstance(cb, SparseMask)]
    assert len(callback.masks) == 28
    for name, param in parsed.model.named_parameters():
        if name in callback.masks:
            groups = (param == 0).reshape(param.shape[0], -1, 4).sum(-1)
            assert torch.all(groups == 2), name
