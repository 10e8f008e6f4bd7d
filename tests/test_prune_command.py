"""`litprune prune`: a pruning init run once, in one process, written as a Hugging Face checkpoint that retraining
runs start from with `FromPretrained`; and the refusal of in-fit pruning on runs of several processes.

The parent is the session's tiny parent (`conftest.tiny_parent`); the config is the tests' tiny fit config with the
pruning init as its `model.init_args.init`, exactly what a user passes to `litprune fit`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import tiny_run_args
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from litprune.cli import main
from litprune.cli.lightning_cli import LitpruneCLI, planned_world_size
from litprune.cli.prune import pruned_init_for_fit
from litprune.cli.run_sections import read_run_sections
from litprune.inits import FromPretrained, RandomInit, SparsePrune, StructuredPrune
from litprune.inits.pruned import PRUNING_RECORD, RUN_RECORD
from litprune.models.sparse_checkpoint import MASKS_FILE, RECORD_FILE, load_masks
from litprune.pruning.shapes import solve_shape

BASE = Path(__file__).parent / "configs" / "tiny_fit.yaml"
CALIBRATION = {"slice": "train", "nsamples": 4, "seqlen": 32, "seed": 3}
SPARSE_MASK = {"class_path": "litprune.callbacks.sparse_mask.SparseMask", "init_args": {"mask_source": "module"}}
RETRAIN_TOKENS = 1024  # 4 steps of 8 x 32 tokens


def _config(tmp_path: Path, init: dict, name: str = "pruned_run", callbacks: list | None = None) -> Path:
    """A fit config over the tests' tiny config whose init is `init` (what `litprune fit` would be given)."""
    override: dict = {"model": {"init_args": {"preset": None, "arm": "P_M-R_N", "init": init}}}
    if callbacks:
        override["trainer"] = {"callbacks": callbacks}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(override), encoding="utf-8")
    return path


def _magnitude(parent: Path) -> dict:
    return {"class_path": "litprune.inits.SparsePrune", "init_args": {"parent": str(parent), "method": "magnitude"}}


def _prune(config: Path, out: Path, *extra: str) -> dict:
    main(["prune", "--config", str(BASE), "--config", str(config), "--out", str(out), "--device", "cpu", *extra])
    return json.loads((out / PRUNING_RECORD).read_text(encoding="utf-8"))


def test_depth_pruning_writes_a_checkpoint_at_the_target_shape(tiny_parent, tiny_data, tmp_path, capsys):
    init = {
        "class_path": "litprune.inits.StructuredPrune",
        "init_args": {"parent": str(tiny_parent), "method": "shortgpt", "ratio": 0.5, "calibration": CALIBRATION},
    }
    out = tmp_path / "pruned"
    record = _prune(_config(tmp_path, init), out)
    printed = capsys.readouterr().out
    assert f"litprune prune: wrote {out}" in printed and "class_path: litprune.inits.FromPretrained" in printed

    # An ordinary HF checkpoint at the solved shape, with the run's tokenizer; no masks for a structured method.
    plan = solve_shape(AutoConfig.from_pretrained(tiny_parent), "depth", ratio=0.5)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == plan.shape.num_hidden_layers == record["target_shape"]["num_hidden_layers"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / MASKS_FILE).exists()

    # The record: method, ratio, calibration provenance, parent and its fingerprint, achieved ratio, sizes.
    assert record["strategy"] == "structured_prune" and record["method"] == "shortgpt"
    assert record["tokens"] == {"calibration": 4 * 32}
    calibration = record["calibration"]
    assert {k: calibration[k] for k in ("slice", "split", "nsamples", "seqlen", "seed", "tokens_used")} == {
        "slice": "train",
        "split": "train",
        "nsamples": 4,
        "seqlen": 32,
        "seed": 3,
        "tokens_used": 128,
    }
    assert 0 <= calibration["start"] < calibration["end"]
    assert record["parent"]["path"] == str(tiny_parent) and record["parent"]["fingerprint"].startswith("sha256:")
    summary = record["summary"]
    assert summary["achieved_ratio"] == record["achieved_ratio"]["non_embedding"] > 0.4
    assert summary["parameters_pruned"]["total"] < summary["parameters_parent"]["total"]
    assert record["init"]["class_path"] == "litprune.inits.StructuredPrune"
    assert record["job"]["device"] == "cpu" and record["job"]["command"].startswith("litprune prune --config")
    run_record = json.loads((out / RUN_RECORD).read_text(encoding="utf-8"))
    assert run_record["run"]["init_tokens"] == {"calibration": 128} and run_record["data"]["seq_len"] == 32

    # Pruning once is pruning in the run: the same layers are kept as by the init inside `litprune fit`.
    in_fit = StructuredPrune(str(tiny_parent), "shortgpt", ratio=0.5, calibration=CALIBRATION).build(None, tiny_data)
    assert in_fit.record["kept_layers"] == record["kept_layers"]


def test_wanda_2of4_artifact_retrains_with_its_mask_kept(tiny_parent, tmp_path):
    init = {
        "class_path": "litprune.inits.SparsePrune",
        "init_args": {
            "parent": str(tiny_parent),
            "method": "wanda",
            "ratio": 0.5,
            "pattern": "2:4",
            "calibration": CALIBRATION,
        },
    }
    out = tmp_path / "pruned"
    record = _prune(_config(tmp_path, init), out)
    assert record["strategy"] == "sparse_prune" and record["pattern"] == "2:4"
    assert record["summary"]["achieved_ratio"] == pytest.approx(0.5)
    assert (out / RECORD_FILE).is_file()

    # Exactly 2:4: two of every four input weights of each decoder linear are masked, and those are exactly 0.
    masks = load_masks(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    weights = dict(model.named_parameters())
    assert len(masks) == 4 * 7
    for name, keep in masks.items():
        groups = (~keep).reshape(keep.shape[0], -1, 4).sum(dim=-1)
        assert bool((groups == 2).all()), name
        assert int(weights[name].detach()[~keep].count_nonzero()) == 0, name

    # Every rank of the retraining run loads it with FromPretrained: masks handed over, provenance kept.
    result = FromPretrained(str(out)).build(None)
    assert result.masks.keys() == masks.keys()
    assert result.tokens == {"calibration": 128}
    assert result.record["strategy"] == "sparse_prune" and result.record["pruned_model"]["path"] == str(out)

    run_dir = tmp_path / "retrain"
    from_pruned = {"class_path": "litprune.inits.FromPretrained", "init_args": {"path": str(out)}}
    config = _config(tmp_path, from_pruned, "retrain", callbacks=[SPARSE_MASK])
    args = tiny_run_args(run_dir, RETRAIN_TOKENS, **{"trainer.enable_progress_bar": "false"})
    LitpruneCLI(args=[*args, "--config", str(config)])

    trained = load_file(run_dir / "export" / "model.safetensors")
    exported_masks = load_masks(run_dir / "export")
    changed = 0
    for name, keep in masks.items():
        assert torch.equal(exported_masks[name], keep), name
        assert int(trained[name][~keep].count_nonzero()) == 0, name  # still exactly 0 after training
        changed += int(not torch.equal(trained[name], weights[name].detach()))
    assert changed > 0  # the surviving weights did train
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert results["run"]["init_tokens"] == {"calibration": 4 * 32}
    assert results["run"]["init"]["calibration"]["tokens_used"] == 128
    assert results["run"]["init"]["pruned_model"]["path"] == str(out)
    sparsity = json.loads((run_dir / "export" / RECORD_FILE).read_text(encoding="utf-8"))
    assert sparsity["method"] == "wanda" and sparsity["pattern"] == "2:4"


def test_an_existing_output_is_refused(tiny_parent, tmp_path, capsys):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    init = _magnitude(tiny_parent)
    with pytest.raises(SystemExit) as info:
        _prune(_config(tmp_path, init), out)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--out {str(out)!r} already exists" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    # With --overwrite the directory is replaced by the pruned model.
    record = _prune(_config(tmp_path, init), out, "--overwrite")
    assert record["method"] == "magnitude" and record["tokens"] == {}
    assert not (out / "keep.txt").exists() and (out / MASKS_FILE).is_file()


def test_a_config_without_a_pruning_init_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--config", str(BASE), "--out", str(tmp_path / "pruned")])
    err = capsys.readouterr().err
    assert "model.init_args.init is RandomInit, which prunes no parent" in err
    assert not (tmp_path / "pruned").exists()


def test_pruning_in_a_fit_of_processes_started_outside_is_refused(tiny_parent):
    sparse = SparsePrune(str(tiny_parent), method="wanda", pattern="2:4", calibration=CALIBRATION)
    fit_args = ["fit", "--config", "runs.yaml", "--trainer.devices=8", "--ckpt_path", "last"]
    with pytest.raises(ValueError) as info:
        pruned_init_for_fit(sparse, 8, False, fit_args, "runs/x", launches_processes=False)
    message = str(info.value)
    assert "this run's 8 processes were started outside litprune" in message
    assert "litprune prune --config runs.yaml --trainer.devices=8 --out runs/x/pruned" in message
    assert "class_path: litprune.inits.FromPretrained" in message and "init_args: {path: runs/x/pruned}" in message
    assert "mask_source: module" in message

    structured = StructuredPrune(str(tiny_parent), "shortgpt", ratio=0.5, calibration=CALIBRATION)
    with pytest.raises(ValueError, match="StructuredPrune, which loads the parent") as info:
        pruned_init_for_fit(structured, 2, False, None, "runs/y", launches_processes=False)
    assert "mask_source" not in str(info.value)
    # One process prunes in the run as before; a resumed fit prunes nothing; other inits prune nothing.
    assert pruned_init_for_fit(sparse, 1, False, fit_args, "runs/x", launches_processes=False) is None
    assert pruned_init_for_fit(sparse, 8, True, fit_args, "runs/x", launches_processes=False) is None
    assert pruned_init_for_fit(RandomInit(seed=0), 8, False, fit_args, "runs/x", launches_processes=False) is None
    assert pruned_init_for_fit(FromPretrained(str(tiny_parent)), 8, False, None, "x", launches_processes=False) is None


def test_processes_started_outside_use_a_pruned_model_already_there(tiny_parent, tmp_path):
    run_dir = tmp_path / "run"
    _prune(_config(tmp_path, _magnitude(tiny_parent)), run_dir / "pruned")
    init = SparsePrune(str(tiny_parent), method="magnitude")
    chosen = pruned_init_for_fit(init, 4, False, None, run_dir, launches_processes=False)
    assert isinstance(chosen, FromPretrained) and chosen.path == str(run_dir / "pruned")
    # A pruned model of another ratio is not taken for this run's.
    other = SparsePrune(str(tiny_parent), method="magnitude", ratio=0.75)
    with pytest.raises(ValueError, match=r"holds a pruned model made with other settings \(ratio"):
        pruned_init_for_fit(other, 4, False, None, run_dir, launches_processes=False)


def test_the_run_size_counts_processes_not_yet_launched():
    assert planned_world_size(SimpleNamespace(world_size=1, num_nodes=2, num_devices=4)) == 8
    assert planned_world_size(SimpleNamespace(world_size=16, num_nodes=2, num_devices=8)) == 16


def test_the_prune_config_switches_an_experiment_to_its_pruned_model():
    repo = Path(__file__).resolve().parents[1]
    experiment = repo / "configs" / "experiment" / "tiny_sparse_wanda_2of4.yaml"
    args = ["--config", str(experiment), "--config", str(repo / "configs" / "prune" / "tiny_sparse_wanda_2of4.yaml")]
    sections = read_run_sections(args)
    init = sections.model.init_strategy
    assert isinstance(init, FromPretrained) and init.path == "runs/tiny_sparse_wanda_2of4/pruned"
    # The directory `litprune fit` suggests for the experiment's run is the one the config reads.
    assert init.path == str(Path(sections.config["trainer"]["default_root_dir"]) / "pruned")
    assert sections.config["trainer"]["callbacks"][0]["init_args"]["mask_source"] == "module"
