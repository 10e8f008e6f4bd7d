"""Reloading a trained module from its checkpoint: `CausalLM.load_from_checkpoint` and `litprune validate|test`.

Both build the model from the architecture (and masks) stored in the checkpoint, whatever the init: a scratch run
needs no tokenizer, and a pruned run neither reads its parent nor prunes again, which the tests prove by moving the
parent's directory away before loading.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_args

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.models.sparse_checkpoint import load_masks
from litprune.modules.causal_lm import CausalLM

REPO = Path(__file__).resolve().parents[1]
RETRAIN_TOKENS = 1024  # 4 steps of 8 x 32 tokens; the tests' config checkpoints every 2 steps
CALIBRATION = {"slice": "train", "nsamples": 4, "seqlen": 32, "seed": 3}
SPARSE_MASK = {"class_path": "litprune.callbacks.sparse_mask.SparseMask", "init_args": {"mask_source": "module"}}
NO_BAR = {"trainer.enable_progress_bar": "false"}


def _fit(run_dir: Path, override: dict | None = None) -> Path:
    args = tiny_run_args(run_dir, RETRAIN_TOKENS, **NO_BAR)
    if override is not None:
        override_path = run_dir.parent / f"{run_dir.name}_override.yaml"
        override_path.parent.mkdir(parents=True, exist_ok=True)
        override_path.write_text(yaml.safe_dump(override), encoding="utf-8")
        args += ["--config", str(override_path)]
    LitpruneCLI(args=args)
    return run_dir


@pytest.fixture(scope="module")
def runs(tiny_parent, tmp_path_factory) -> dict[str, Path]:
    """A scratch run, a structured (ShortGPT depth) and a sparse (Wanda 2:4) pruned run of a private parent copy."""
    root = tmp_path_factory.mktemp("reload")
    parent = root / "parent"
    shutil.copytree(tiny_parent, parent)
    structured = {"parent": str(parent), "method": "shortgpt", "ratio": 0.5, "calibration": CALIBRATION}
    sparse = {"parent": str(parent), "method": "wanda", "pattern": "2:4", "calibration": CALIBRATION}

    def pruned(class_path: str, init_args: dict) -> dict:
        init = {"class_path": class_path, "init_args": init_args}
        return {"model": {"init_args": {"preset": None, "arm": "P_M-R_N", "init": init}}}

    return {
        "parent": parent,
        "scratch": _fit(root / "scratch"),
        "structured": _fit(root / "structured", pruned("litprune.inits.StructuredPrune", structured)),
        "sparse": _fit(
            root / "sparse",
            {**pruned("litprune.inits.SparsePrune", sparse), "trainer": {"callbacks": [SPARSE_MASK]}},
        ),
    }


@contextmanager
def parent_moved_away(parent: Path) -> Iterator[None]:
    """Rename the parent's directory for the duration: any attempt to read it fails."""
    hidden = parent.with_name(parent.name + "_moved")
    parent.rename(hidden)
    try:
        yield
    finally:
        hidden.rename(parent)


def _assert_weights_are_the_checkpoints(module: CausalLM, checkpoint_path: Path) -> None:
    saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    loaded = module.state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_load_from_checkpoint_of_a_scratch_run(runs):
    ckpt = runs["scratch"] / "checkpoints" / "last.ckpt"
    module = CausalLM.load_from_checkpoint(ckpt, map_location="cpu")
    _assert_weights_are_the_checkpoints(module, ckpt)
    assert module.tokens_seen == RETRAIN_TOKENS
    assert module.init_record["strategy"] == "random"
    assert module.pruning_masks == {}
    assert (module.model.config.bos_token_id, module.model.config.eos_token_id) == (0, 1)
    assert module.model.generation_config.pad_token_id == 1


@pytest.mark.parametrize("kind", ["structured", "sparse"])
def test_load_from_checkpoint_of_a_pruned_run_needs_no_parent(runs, kind):
    ckpt = runs[kind] / "checkpoints" / "last.ckpt"
    with parent_moved_away(runs["parent"]):
        module = CausalLM.load_from_checkpoint(ckpt, map_location="cpu")
    _assert_weights_are_the_checkpoints(module, ckpt)
    exported = json.loads((runs[kind] / "export" / "config.json").read_text())
    assert module.model.config.num_hidden_layers == exported["num_hidden_layers"]
    assert module.init_record["strategy"] == {"structured": "structured_prune", "sparse": "sparse_prune"}[kind]
    if kind == "structured":
        assert (
            module.model.config.num_hidden_layers
            < json.loads((runs["parent"] / "config.json").read_text())["num_hidden_layers"]
        )
        assert module.pruning_masks == {}
        return
    masks = load_masks(runs[kind] / "export")  # the run's final masks, keyed by Hugging Face names
    assert module.pruning_masks.keys() == {f"model.{name}" for name in masks}
    parameters = dict(module.named_parameters())
    for name, keep in masks.items():
        assert torch.equal(module.pruning_masks[f"model.{name}"], keep), name
        assert int(parameters[f"model.{name}"][~keep].count_nonzero()) == 0, name


@pytest.mark.parametrize("kind", ["structured", "sparse"])
def test_validate_and_test_from_a_checkpoint_need_no_parent(runs, kind, tmp_path):
    run_dir = runs[kind]
    final = json.loads((run_dir / "results.json").read_text())["final"]["val/loss"]
    args = ["--config", str(run_dir / "config.yaml"), f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
    trained_config = (run_dir / "config.yaml").read_text(encoding="utf-8")
    with parent_moved_away(runs["parent"]):
        validated = LitpruneCLI(args=["validate", *args, "--trainer.enable_progress_bar=false"])
        tested = LitpruneCLI(
            args=["test", *args, f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
        )
    assert float(validated.trainer.callback_metrics["val/loss"]) == pytest.approx(final, rel=1e-6)
    assert float(tested.trainer.callback_metrics["test/loss"]) > 0
    # validate ran in the run's own directory: the config the run was trained with is kept as it was
    assert (run_dir / "config.yaml").read_text(encoding="utf-8") == trained_config
    assert (run_dir / "validate_config.yaml").is_file()
    assert validated.model.init_record["strategy"] == tested.model.init_record["strategy"]
    if kind == "sparse":
        assert len(validated.model.pruning_masks) == len(load_masks(run_dir / "export"))


def test_readme_reload_snippet_runs(runs, capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Reload a trained module", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "CausalLM.load_from_checkpoint" in snippet
    exec(snippet.replace("runs/tiny_scratch", str(runs["scratch"])), {})
    assert capsys.readouterr().out.strip()
    command = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1).replace("\\\n", " ")
    args = command.replace("runs/tiny_scratch", str(runs["scratch"])).split()
    assert args[:2] == ["litprune", "validate"] and any(arg.startswith("--ckpt_path") for arg in args)
    cli = LitpruneCLI(args=[*args[1:], "--trainer.enable_progress_bar=false"])
    final = json.loads((runs["scratch"] / "results.json").read_text())["final"]["val/loss"]
    assert float(cli.trainer.callback_metrics["val/loss"]) == pytest.approx(final, rel=1e-6)
