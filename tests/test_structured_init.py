"""Structured pruned inits (`StructuredPrune`), their scratch twins (`ScratchTarget`) and `Calibration`, end to end.

Pruned and scratch arms start from the export of the session's tiny parent (`conftest.tiny_parent`, trained with
`litprune fit`), exactly as the tiny study's configs do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TEST_VOCAB, TINY_PARENT_TOKENS, make_tiny_llama, tiny_run_args
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.data.datamodule import TokenDataModule
from litprune.data.store import TokenStore
from litprune.data.tokenizer import train_bpe_tokenizer
from litprune.inits import ScratchTarget, StructuredPrune
from litprune.inits.calibration import Calibration
from litprune.pruning.shapes import solve_shape

REPO = Path(__file__).resolve().parents[1]
NEW_CONFIGS = [
    "tiny_depth_minitron.yaml",
    "tiny_depth_shortgpt.yaml",
    "tiny_width_minitron.yaml",
    "tiny_depth_scratch.yaml",
    "tiny_width_scratch.yaml",
]
SHAPE_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "head_dim",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
RETRAIN_TOKENS = 2048  # 8 steps of 8 x 32 tokens
SMALL_CALIBRATION = {"slice": "train", "nsamples": 8, "seqlen": 32, "seed": 3}


@pytest.fixture
def parent(tiny_parent) -> Path:
    return tiny_parent


@pytest.fixture(scope="module")
def data(tiny_data) -> TokenDataModule:
    return tiny_data


def _fit_with_init(run_dir: Path, init: dict, arm: str) -> dict:
    """Run `litprune fit` of the tests' tiny config with `init` replacing its random init; return results.json."""
    override = {"model": {"init_args": {"preset": None, "arm": arm, "init": init}}}
    override_path = run_dir.parent / f"{run_dir.name}_init.yaml"
    override_path.parent.mkdir(parents=True, exist_ok=True)
    override_path.write_text(yaml.safe_dump(override), encoding="utf-8")
    args = tiny_run_args(run_dir, RETRAIN_TOKENS, **{"trainer.enable_progress_bar": "false"})
    LitpruneCLI(args=args + ["--config", str(override_path)])
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("method", ["minitron_depth", "shortgpt", "minitron_width"])
def test_pruned_init_retrains_end_to_end(method, parent, tmp_path):
    init = {
        "class_path": "litprune.inits.StructuredPrune",
        "init_args": {"parent": str(parent), "method": method, "ratio": 0.5, "calibration": SMALL_CALIBRATION},
    }
    run_dir = tmp_path / method
    results = _fit_with_init(run_dir, init, arm="P_M-R_N")

    kind = "width" if method == "minitron_width" else "depth"
    expected = solve_shape(AutoConfig.from_pretrained(parent), kind, ratio=0.5).shape.as_dict()
    export = Path(results["export"])
    model = AutoModelForCausalLM.from_pretrained(export)
    assert isinstance(model, LlamaForCausalLM)
    assert {k: getattr(model.config, k) for k in expected} == expected
    assert model.config.vocab_size == TEST_VOCAB
    # The shape really shrank: depth drops layers, width drops channels.
    parent_config = AutoConfig.from_pretrained(parent)
    if kind == "depth":
        assert model.config.num_hidden_layers < parent_config.num_hidden_layers
    else:
        assert model.config.hidden_size < parent_config.hidden_size

    run = results["run"]
    assert run["tokens_seen"] == RETRAIN_TOKENS == run["max_tokens"]
    assert run["arm"] == "P_M-R_N"
    assert run["init_tokens"] == {"calibration": 8 * 32}

    record = json.loads((export / "litprune.json").read_text(encoding="utf-8"))["run"]["init"]
    assert record["strategy"] == "structured_prune"
    assert record["method"] == method
    assert record["ratio_requested"] == 0.5
    assert record["parent"]["path"] == str(parent)
    assert record["parent"]["run"]["tokens_seen"] == TINY_PARENT_TOKENS  # the parent's own budget, for the ledger
    assert record["target_shape"] == expected
    assert abs(record["achieved_ratio"]["non_embedding"] - 0.5) < 0.1
    calibration = record["calibration"]
    assert (calibration["slice"], calibration["split"]) == ("train", "train")
    assert (calibration["nsamples"], calibration["seqlen"], calibration["seed"]) == (8, 32, 3)
    assert calibration["tokens_used"] == 256 and len(calibration["starts"]) == 8
    assert calibration["fallback_embedded"] is False
    assert calibration["source"]["kind"] == "embedded"
    assert len(calibration["sha256"]) == 64
    if kind == "depth":
        assert len(record["kept_layers"]) == expected["num_hidden_layers"]
    if method == "minitron_depth":
        dropped = record["dropped_layers"]
        assert dropped == list(range(dropped[0], dropped[0] + len(dropped)))  # one contiguous block


def test_scratch_target_fit_end_to_end(parent, tmp_path):
    init = {
        "class_path": "litprune.inits.ScratchTarget",
        "init_args": {"parent": str(parent), "method": "width", "ratio": 0.5, "seed": 0},
    }
    results = _fit_with_init(tmp_path / "scratch", init, arm="S_N")
    expected = solve_shape(AutoConfig.from_pretrained(parent), "width", ratio=0.5).shape.as_dict()
    model = AutoModelForCausalLM.from_pretrained(results["export"])
    assert isinstance(model, LlamaForCausalLM)
    assert {k: getattr(model.config, k) for k in expected} == expected
    run = results["run"]
    assert run["tokens_seen"] == RETRAIN_TOKENS and run["arm"] == "S_N"
    assert run["init"]["strategy"] == "scratch_target" and run["init"]["target_shape"] == expected
    assert run["init_tokens"] == {}  # a scratch init reads no data


# ---------------------------------------------------------------------------------- what the inits build


def test_depth_prune_keeps_the_parents_surviving_layers(parent, data):
    result = StructuredPrune(str(parent), "shortgpt", ratio=0.5, calibration=Calibration(nsamples=4, seqlen=32)).build(
        None, data
    )
    parent_model = AutoModelForCausalLM.from_pretrained(parent)
    kept = result.record["kept_layers"]
    assert len(kept) == result.model.config.num_hidden_layers == 2
    for new_index, old_index in enumerate(kept):
        new_layer, old_layer = result.model.model.layers[new_index], parent_model.model.layers[old_index]
        for (name, new), (_, old) in zip(new_layer.named_parameters(), old_layer.named_parameters(), strict=True):
            assert torch.equal(new, old), name
    assert torch.equal(result.model.model.embed_tokens.weight, parent_model.model.embed_tokens.weight)
    assert result.model.training  # handed over ready to train
    assert result.tokens == {"calibration": 4 * 32}


def test_width_prune_keeps_a_subset_of_the_parents_channels(parent, data):
    result = StructuredPrune(
        str(parent), "minitron_width", ratio=0.5, calibration=Calibration(nsamples=4, seqlen=32)
    ).build(None, data)
    parent_embedding = AutoModelForCausalLM.from_pretrained(parent).model.embed_tokens.weight
    pruned_embedding = result.model.model.embed_tokens.weight
    # Every kept hidden channel is a column of the parent's embedding.
    for column in pruned_embedding.T:
        assert any(torch.equal(column, parent_column) for parent_column in parent_embedding.T)


@pytest.mark.parametrize(("method", "kind"), [("minitron_depth", "depth"), ("minitron_width", "width")])
def test_scratch_target_builds_the_pruned_module_tree(method, kind, parent, data):
    calibration = Calibration(nsamples=4, seqlen=32)
    pruned = StructuredPrune(str(parent), method, ratio=0.5, calibration=calibration).build(None, data).model
    scratch_init = ScratchTarget(str(parent), kind, ratio=0.5, seed=0)
    scratch = scratch_init.build(None, data).model

    assert type(scratch) is type(pruned)
    assert {n: tuple(p.shape) for n, p in scratch.named_parameters()} == {
        n: tuple(p.shape) for n, p in pruned.named_parameters()
    }
    assert {k: getattr(scratch.config, k) for k in SHAPE_FIELDS} == {k: getattr(pruned.config, k) for k in SHAPE_FIELDS}
    # A method name gives the same scratch shape as its kind; both depth methods share one.
    assert ScratchTarget(str(parent), method, ratio=0.5).plan().shape == scratch_init.plan().shape
    # Random weights, not the parent's, and reproducible from the seed.
    assert not torch.equal(scratch.model.embed_tokens.weight, pruned.model.embed_tokens.weight)
    assert abs(scratch.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    again = ScratchTarget(str(parent), kind, ratio=0.5, seed=0).build(None, data).model
    assert all(torch.equal(a, b) for a, b in zip(scratch.parameters(), again.parameters(), strict=True))


# ------------------------------------------------------------------------------------------- calibration


def test_calibration_draws_recorded_windows_of_the_slice(data):
    calibration = Calibration(slice="val", nsamples=6, seqlen=16, seed=5)
    windows, provenance = calibration.draw(data)
    assert windows.dtype == torch.long and tuple(windows.shape) == (6, 16)
    resolved = data.slices["val"]
    assert (provenance["slice"], provenance["split"]) == ("val", "val")
    assert (provenance["start"], provenance["end"]) == (resolved.start, resolved.end)
    assert provenance["tokens_used"] == 96 and provenance["fallback_embedded"] is False
    assert provenance["tokenizer"] == TokenStore(data.store_path).tokenizer_identity
    store = TokenStore(data.store_path)
    for row, start in zip(windows, provenance["starts"], strict=True):
        expected = store.read("val", resolved.start + start, resolved.start + start + 16)
        assert torch.equal(row, torch.from_numpy(expected))
    same, _ = Calibration(slice="val", nsamples=6, seqlen=16, seed=5).draw(data)
    other, _ = Calibration(slice="val", nsamples=6, seqlen=16, seed=6).draw(data)
    assert torch.equal(windows, same) and not torch.equal(windows, other)


def test_calibration_errors_name_the_problem(data, embedded_cache):
    with pytest.raises(ValueError, match=r"slice='pretrain'.*\['test', 'train', 'val'\]"):
        Calibration(slice="pretrain").draw(data)
    with pytest.raises(ValueError, match=r"calibration.seqlen=2048 exceeds the parent.s max_position_embeddings=1024"):
        Calibration(seqlen=2048).draw(data, model_config=LlamaConfig(max_position_embeddings=1024))
    with pytest.raises(ValueError, match=r"nsamples=0 must be a positive integer"):
        Calibration(nsamples=0)
    short = TokenDataModule(
        vocab_size=TEST_VOCAB,
        seq_len=8,
        slices={
            "train": {"split": "train"},
            "val": {"split": "val", "start": 100},
            "tiny": {"split": "val", "end": 20},
        },
        test_slice=None,
    )
    with pytest.raises(ValueError, match=r"slice 'tiny' holds 20 tokens, fewer than one window of seqlen \+ 1 = 33"):
        Calibration(slice="tiny", seqlen=32).draw(short)


# ------------------------------------------------------------------------------------------- early errors


def test_bad_arguments_fail_at_construction(parent, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown method 'minitron_dpeth'\. Did you mean 'minitron_depth'"):
        StructuredPrune(str(parent), "minitron_dpeth", ratio=0.5)
    with pytest.raises(ValueError, match=r"Unknown method 'widht'\. Did you mean 'width'"):
        ScratchTarget(str(parent), "widht", ratio=0.5)
    with pytest.raises(ValueError, match=r"ratio=1\.5 is out of range"):
        StructuredPrune(str(tmp_path / "not_trained_yet"), "shortgpt", ratio=1.5)
    with pytest.raises(ValueError, match=r"convention='params' is unknown"):
        StructuredPrune(str(parent), "shortgpt", ratio=0.5, convention="params")
    with pytest.raises(ValueError, match=r"target keys \['hidden_size'\] do not apply to depth"):
        StructuredPrune(str(parent), "shortgpt", target={"hidden_size": 32})
    with pytest.raises(ValueError, match=r"Give a ratio"):
        ScratchTarget(str(parent), "depth")
    with pytest.raises(ValueError, match=r"scorer='accuracy' only applies to method 'minitron_depth'"):
        StructuredPrune(str(parent), "shortgpt", ratio=0.5, scorer="accuracy")
    # With the parent on disk, an unreachable target is refused before any weight is read.
    with pytest.raises(ValueError, match=r"leaves no decoder layer of the 4-layer parent"):
        StructuredPrune(str(parent), "shortgpt", ratio=0.99)
    with pytest.raises(ValueError, match=r"leaves no decoder layer"):
        ScratchTarget(str(parent), "depth", ratio=0.99)


def test_parent_must_be_a_llama_family_checkpoint(tmp_path, data):
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=64)).save_pretrained(gpt2)
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*Llama-layout"):
        StructuredPrune(str(gpt2), "minitron_depth", ratio=0.5)
    with pytest.raises(ValueError, match=r"model_type='gpt2'"):
        ScratchTarget(str(gpt2), "depth", ratio=0.5)
    missing = StructuredPrune(str(tmp_path / "missing"), "shortgpt", ratio=0.5)
    with pytest.raises(FileNotFoundError, match=r"No parent checkpoint at .*missing"):
        missing.build(None, data)


def test_run_tokenizer_must_be_the_parents(parent, tmp_path, data):
    # A parent with another vocabulary and no tokenizer of its own: both sizes are named.
    other_vocab = tmp_path / "vocab1024"
    make_tiny_llama(vocab_size=1024).save_pretrained(other_vocab)
    for init in (
        StructuredPrune(str(other_vocab), "shortgpt", ratio=0.5),
        ScratchTarget(str(other_vocab), "depth", 0.5),
    ):
        with pytest.raises(ValueError, match=r"tokenizer has 512 tokens but the parent .* vocab_size=1024"):
            init.build(None, data)

    # Same model, but the parent was exported with a different tokenizer.
    retokenized = tmp_path / "retokenized"
    shutil.copytree(parent, retokenized)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (retokenized / name).unlink()
    train_bpe_tokenizer(["def f(x):\n    return x\n"] * 4, 258).save_pretrained(retokenized)
    with pytest.raises(ValueError, match=r"run's tokenizer \(512 tokens.*is not the parent's tokenizer \(258 tokens"):
        StructuredPrune(str(retokenized), "shortgpt", ratio=0.5).build(None, data)

    # A padded embedding is fine when the parent ships the run's tokenizer.
    padded = tmp_path / "padded"
    make_tiny_llama(vocab_size=TEST_VOCAB + 8).save_pretrained(padded)
    data.tokenizer.save_pretrained(padded)
    result = StructuredPrune(str(padded), "shortgpt", ratio=0.5, calibration=Calibration(nsamples=2, seqlen=16)).build(
        None, data
    )
    assert result.model.config.vocab_size == TEST_VOCAB + 8


def test_training_windows_must_fit_the_parent(parent, embedded_cache):
    long_windows = TokenDataModule(vocab_size=TEST_VOCAB, seq_len=2048, micro_batch_size=1)
    long_windows.setup("fit")
    with pytest.raises(ValueError, match=r"seq_len=2048 exceeds the parent's max_position_embeddings=1024"):
        ScratchTarget(str(parent), "depth", ratio=0.5).build(None, long_windows)


# ----------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_study_configs_parse(name, capsys):
    path = REPO / "configs" / "experiment" / name
    with pytest.raises(SystemExit) as exit_info:
        LitpruneCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert model["preset"] is None
    assert model["init"]["init_args"]["parent"] == "runs/tiny_scratch/export"
    assert model["init"]["init_args"]["ratio"] == 0.5
    assert model["arm"] == ("S_N" if "scratch" in name else "P_M-R_N")
    assert printed["data"]["init_args"]["train_slice"] == "train"
    # Pruned and scratch arms of one shape share budget and data settings.
    twin = "tiny_width_scratch.yaml" if "width" in name else "tiny_depth_scratch.yaml"
    twin_config = yaml.safe_load((REPO / "configs" / "experiment" / twin).read_text(encoding="utf-8"))
    assert printed["data"]["init_args"]["seq_len"] == twin_config["data"]["init_args"]["seq_len"]
    assert model["max_tokens"] == twin_config["model"]["init_args"]["max_tokens"]
