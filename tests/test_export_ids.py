"""The export of a run speaks its tokenizer's language: BOS/EOS/pad ids, and a config that generates with a KV cache.

A model built by any init (random, pretrained, pruned) takes its special-token ids from the run's tokenizer, so
`generate` on the export stops at the tokenizer's EOS, not at whatever id a default `LlamaConfig` names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_llama, tiny_run_args
from transformers import AutoModelForCausalLM, AutoTokenizer

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.modules.causal_lm import align_token_ids

RETRAIN_TOKENS = 1024  # 4 steps of 8 x 32 tokens


def _fit(run_dir: Path, *extra: str) -> LitpruneCLI:
    args = tiny_run_args(run_dir, RETRAIN_TOKENS, **{"trainer.enable_progress_bar": "false"})
    return LitpruneCLI(args=[*args, *extra])


def _fit_with_init(run_dir: Path, init: dict) -> LitpruneCLI:
    override = {"model": {"init_args": {"preset": None, "arm": "P_M-R_N", "init": init}}}
    override_path = run_dir.parent / f"{run_dir.name}_init.yaml"
    override_path.parent.mkdir(parents=True, exist_ok=True)
    override_path.write_text(yaml.safe_dump(override), encoding="utf-8")
    return _fit(run_dir, "--config", str(override_path))


def _assert_ids_match_tokenizer(export: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(export)
    config = json.loads((export / "config.json").read_text())
    generation = json.loads((export / "generation_config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert config["use_cache"] is True


@pytest.fixture(scope="module")
def scratch_run(embedded_cache, tmp_path_factory) -> tuple[Path, LitpruneCLI]:
    run_dir = tmp_path_factory.mktemp("export_ids") / "run"
    return run_dir, _fit(run_dir)


def test_scratch_export_ids_are_the_tokenizers(scratch_run):
    run_dir, cli = scratch_run
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 1)
    _assert_ids_match_tokenizer(run_dir / "export")
    # Training keeps the cache off in memory; only the export says use_cache: true.
    assert cli.model.model.config.use_cache is False
    # The pad id is the EOS row of the embedding: it stays out of the model config, where it would become the
    # embedding's padding_idx and freeze that row.
    assert cli.model.model.config.pad_token_id is None


def test_generate_from_the_export_uses_the_kv_cache_and_the_tokenizers_eos(scratch_run):
    run_dir, _ = scratch_run
    model = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    assert model.config.use_cache is True
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer("def main():\n    return", return_tensors="pt")
    kwargs = {"max_new_tokens": 12, "do_sample": False}
    cached = model.generate(**prompt, **kwargs, return_dict_in_generate=True)
    assert cached.past_key_values is not None and cached.past_key_values.get_seq_length() > 0
    uncached = model.generate(**prompt, **kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached)
    assert cached.sequences.shape[1] > prompt.input_ids.shape[1]
    # A generation that reaches EOS stops there; with the old default ids it stopped on `!` (id 2) instead.
    new = cached.sequences[0, prompt.input_ids.shape[1] :].tolist()
    assert tokenizer.eos_token_id not in new[:-1]


def test_a_parent_with_other_ids_is_corrected_to_the_run_tokenizers(tiny_parent, tmp_path):
    parent = tmp_path / "parent"
    shutil.copytree(tiny_parent, parent)
    for name in ("config.json", "generation_config.json"):
        fields = json.loads((parent / name).read_text())
        fields.update({"bos_token_id": 1, "eos_token_id": 2})
        (parent / name).write_text(json.dumps(fields))
    init = {"class_path": "litprune.inits.FromPretrained", "init_args": {"path": str(parent)}}
    with pytest.warns(UserWarning, match=r"bos_token_id 1 -> 0.*eos_token_id 2 -> 1"):
        _fit_with_init(tmp_path / "run", init)
    _assert_ids_match_tokenizer(tmp_path / "run" / "export")


def test_pruned_export_ids_are_the_tokenizers(tiny_parent, tmp_path):
    calibration = {"slice": "train", "nsamples": 4, "seqlen": 32, "seed": 3}
    init = {
        "class_path": "litprune.inits.StructuredPrune",
        "init_args": {"parent": str(tiny_parent), "method": "shortgpt", "ratio": 0.5, "calibration": calibration},
    }
    _fit_with_init(tmp_path / "run", init)
    _assert_ids_match_tokenizer(tmp_path / "run" / "export")


def test_align_token_ids_keeps_a_list_of_eos_ids_that_holds_the_tokenizers(tiny_parent):
    tokenizer = AutoTokenizer.from_pretrained(tiny_parent)
    model = make_tiny_llama(vocab_size=len(tokenizer))
    model.config.eos_token_id = [7, tokenizer.eos_token_id]
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id]
    changes = align_token_ids(model, tokenizer)
    assert model.config.eos_token_id == [7, tokenizer.eos_token_id]  # already names the tokenizer's EOS
    assert model.generation_config.eos_token_id == [7, tokenizer.eos_token_id]
    assert model.config.bos_token_id == model.generation_config.bos_token_id == tokenizer.bos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert "config.bos_token_id 1 -> 0" in changes and not any("eos" in change for change in changes)
