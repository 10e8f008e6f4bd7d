"""Sparse pruned inits (`SparsePrune`) retrained with `litprune fit`: masks kept, controls, resume, sparse export.

Every sparse arm starts from the export of the session's tiny parent (`conftest.tiny_parent`, trained once with
`litprune fit`) and retrains through `LitpruneCLI` with a `SparseMask(mask_source="module")` callback, as the tiny
study's configs do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_args
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.data.datamodule import TokenDataModule
from litprune.inits import FromPretrained
from litprune.inits.calibration import Calibration
from litprune.inits.sparse import SparsePrune
from litprune.models.sparse_checkpoint import MASKS_FILE, RECORD_FILE, load_masks

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    "tiny_sparse_wanda_2of4.yaml",
    "tiny_sparse_wanda_unstructured.yaml",
    "tiny_sparse_sparsegpt_unstructured.yaml",
    "tiny_sparse_magnitude_4of8.yaml",
    "tiny_sparse_reinit.yaml",
]
RETRAIN_TOKENS = 1024  # 4 steps of 8 x 32 tokens; the tests' config checkpoints every 2 steps
SMALL_CALIBRATION = {"slice": "train", "nsamples": 4, "seqlen": 32, "seed": 3}
SPARSE_MASK = {"class_path": "litprune.callbacks.sparse_mask.SparseMask", "init_args": {"mask_source": "module"}}
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def parent(tiny_parent) -> Path:
    return tiny_parent


@pytest.fixture(scope="module")
def data(tiny_data) -> TokenDataModule:
    return tiny_data


def _sparse_init(parent: Path, **init_args) -> dict:
    args = {"parent": str(parent), "calibration": SMALL_CALIBRATION, **init_args}
    return {"class_path": "litprune.inits.SparsePrune", "init_args": args}


def _fit(run_dir: Path, init: dict, arm: str = "P_M-R_N", callbacks: list | None = None, *extra: str) -> LitpruneCLI:
    """`litprune fit` of the tests' tiny config with `init` and a SparseMask callback (plus `callbacks`)."""
    override = {
        "model": {"init_args": {"preset": None, "arm": arm, "init": init}},
        "trainer": {"callbacks": [SPARSE_MASK, *(callbacks or [])]},
    }
    override_path = run_dir.parent / f"{run_dir.name}_override.yaml"
    override_path.parent.mkdir(parents=True, exist_ok=True)
    override_path.write_text(yaml.safe_dump(override), encoding="utf-8")
    args = tiny_run_args(run_dir, RETRAIN_TOKENS, **{"trainer.enable_progress_bar": "false"})
    return LitpruneCLI(args=[*args, "--config", str(override_path), *extra])


def _check_pattern(masks: dict[str, torch.Tensor], pattern: str, ratio: float, method: str) -> None:
    """Every decoder linear is masked, with exactly the sparsity the pattern promises."""
    assert sorted(masks) == sorted(
        f"model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}.weight"
        for i in range(4)
        for p in DECODER_LINEARS
    )
    for name, keep in masks.items():
        pruned = ~keep
        if pattern != "unstructured":
            n, m = (int(x) for x in pattern.split(":"))
            groups = pruned.reshape(keep.shape[0], -1, m).sum(dim=-1)
            assert bool((groups == n).all()), name  # exactly N pruned in every aligned group of M
        elif method == "wanda":
            per_row = pruned.sum(dim=1)
            assert bool((per_row == int(ratio * keep.shape[1])).all()), name  # Wanda's group is the row
        else:
            # SparseGPT compares a rows x 128 block (here the whole matrix): at least floor(ratio * numel).
            count = int(pruned.sum())
            assert int(ratio * keep.numel()) <= count <= int(ratio * keep.numel()) + keep.shape[0], name


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_sparse_arm_retrains_with_its_masks_kept(method, pattern, parent, tmp_path):
    run_dir = tmp_path / "run"
    cli = _fit(run_dir, _sparse_init(parent, method=method, pattern=pattern, ratio=0.5))
    export = run_dir / "export"
    init_masks = {name.removeprefix("model."): mask for name, mask in cli.model.pruning_masks.items()}
    exported_masks = load_masks(export)
    assert exported_masks.keys() == init_masks.keys()
    for name, mask in exported_masks.items():
        assert torch.equal(mask, init_masks[name].cpu()), name  # the retrained masks are the init's masks
    _check_pattern(exported_masks, pattern, 0.5, method)

    # Every masked weight is exactly 0 in the export loaded by plain transformers; survivors were trained.
    model = AutoModelForCausalLM.from_pretrained(export)
    parent_model = AutoModelForCausalLM.from_pretrained(parent)
    params = dict(model.named_parameters())
    parent_params = dict(parent_model.named_parameters())
    for name, keep in exported_masks.items():
        assert int(params[name][~keep].count_nonzero()) == 0, name
    changed = params["model.layers.0.mlp.up_proj.weight"] != parent_params["model.layers.0.mlp.up_proj.weight"]
    assert bool(changed[exported_masks["model.layers.0.mlp.up_proj.weight"]].any())

    sparsity = json.loads((export / RECORD_FILE).read_text(encoding="utf-8"))
    assert (sparsity["method"], sparsity["pattern"], sparsity["ratio"]) == (method, pattern, 0.5)
    measured = sum(int((~m).sum()) for m in exported_masks.values()) / sum(m.numel() for m in exported_masks.values())
    assert sparsity["sparsity"]["overall"] == pytest.approx(measured)
    if method != "sparsegpt" or pattern != "unstructured":
        assert measured == 0.5  # N:M and per-row patterns are exact

    run = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["run"]
    assert run["tokens_seen"] == RETRAIN_TOKENS and run["arm"] == "P_M-R_N"
    init = run["init"]
    assert init["strategy"] == "sparse_prune" and init["parent"]["path"] == str(parent)
    assert init["control"]["name"] == "none"
    if method == "magnitude":
        assert run["init_tokens"] == {} and init["calibration"] is None
    else:
        assert run["init_tokens"] == {"calibration": 4 * 32}
        calibration = init["calibration"]
        assert (calibration["slice"], calibration["nsamples"], calibration["seqlen"], calibration["seed"]) == (
            "train",
            4,
            32,
            3,
        )
        assert calibration["tokens_used"] == 128 and calibration["fallback_embedded"] is False


def test_resume_keeps_the_masks_and_ends_bit_identical(parent, tmp_path):
    init = _sparse_init(parent, method="wanda", pattern="2:4")
    straight = tmp_path / "straight"
    _fit(straight, init)

    interrupted = tmp_path / "interrupted"
    crash = {"class_path": "resume_helpers.FailAtStep", "init_args": {"step": 3}}
    with pytest.raises(RuntimeError, match="interrupted at step 3"):
        _fit(interrupted, init, "P_M-R_N", [crash])
    assert not (interrupted / "export").exists()
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2

    # The resumed run does not prune again: the module's masks stay empty and SparseMask restores its own.
    resumed = _fit(interrupted, init, "P_M-R_N", None, "--ckpt_path=last")
    assert resumed.model.pruning_masks == {}
    assert resumed.model.init_record["strategy"] == "sparse_prune"

    for name in ("model.safetensors", MASKS_FILE):
        a, b = load_file(straight / "export" / name), load_file(interrupted / "export" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    _check_pattern(load_masks(interrupted / "export"), "2:4", 0.5, "wanda")


def test_sparse_export_round_trips_through_from_pretrained(parent, tmp_path):
    first = tmp_path / "first"
    _fit(first, _sparse_init(parent, method="magnitude", pattern="unstructured", ratio=0.5))
    masks = load_masks(first / "export")

    result = FromPretrained(str(first / "export")).build(None)
    assert result.masks.keys() == masks.keys()
    assert all(torch.equal(result.masks[name], masks[name]) for name in masks)
    assert result.record["sparsity"]["method"] == "magnitude"
    assert result.model.training

    # Retraining the export keeps its masks and writes them again.
    second = tmp_path / "second"
    init = {"class_path": "litprune.inits.FromPretrained", "init_args": {"path": str(first / "export")}}
    _fit(second, init, "P_M-R_N")
    again = load_masks(second / "export")
    assert all(torch.equal(again[name], masks[name]) for name in masks)
    weights = load_file(second / "export" / "model.safetensors")
    first_weights = load_file(first / "export" / "model.safetensors")
    assert not torch.equal(
        weights["model.layers.0.mlp.up_proj.weight"], first_weights["model.layers.0.mlp.up_proj.weight"]
    )
    for name, keep in masks.items():
        assert int(weights[name][~keep].count_nonzero()) == 0, name


def test_a_sparse_init_without_a_mask_callback_is_refused_unless_dense(parent, tmp_path):
    override = {"model": {"init_args": {"preset": None, "init": _sparse_init(parent, method="magnitude")}}}
    override_path = tmp_path / "override.yaml"
    override_path.write_text(yaml.safe_dump(override), encoding="utf-8")
    args = tiny_run_args(tmp_path / "run", RETRAIN_TOKENS, **{"trainer.enable_progress_bar": "false"})
    with pytest.raises(ValueError, match=r"no SparseMask callback keeps them.*sparse_mask_from_init\.yaml"):
        LitpruneCLI(args=[*args, "--config", str(override_path)])
    # Training a sparse init densely is an explicit choice; the export is then an ordinary dense checkpoint.
    dense = tmp_path / "dense"
    args = tiny_run_args(dense, RETRAIN_TOKENS, **{"trainer.enable_progress_bar": "false", "export.sparse": "false"})
    LitpruneCLI(args=[*args, "--config", str(override_path)])
    assert (dense / "export" / "model.safetensors").is_file() and not (dense / "export" / MASKS_FILE).exists()
    weights = load_file(dense / "export" / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert (weights == 0).float().mean() < 0.5  # the pruned weights trained away from 0


# ------------------------------------------------------------------------------------------------- controls


def test_controls(parent, data):
    calibration = Calibration(**SMALL_CALIBRATION)
    pruned = SparsePrune(str(parent), "wanda", pattern="2:4", calibration=calibration).build(None, data)
    reinit = SparsePrune(str(parent), "wanda", pattern="2:4", calibration=calibration, control="reinit").build(
        None, data
    )
    same = SparsePrune(
        str(parent), "wanda", pattern="2:4", calibration=calibration, control="random_same_mask", control_seed=1
    ).build(None, data)
    fresh = SparsePrune(
        str(parent), "wanda", pattern="2:4", calibration=calibration, control="random_fresh_mask", control_seed=1
    ).build(None, data)
    params = {
        key: dict(result.model.named_parameters())
        for key, result in {"pruned": pruned, "reinit": reinit, "same": same, "fresh": fresh}.items()
    }

    # reinit and random_same_mask: the pruned arm's masks and exactly its zero pattern, with new survivors.
    for result, key in ((reinit, "reinit"), (same, "same")):
        assert result.masks.keys() == pruned.masks.keys()
        for name, keep in pruned.masks.items():
            assert torch.equal(result.masks[name], keep)
            assert torch.equal(params[key][name] == 0, params["pruned"][name] == 0), name
            assert not torch.equal(params[key][name], params["pruned"][name])
    survivors = torch.cat([params["reinit"][n][k] for n, k in pruned.masks.items()])
    assert abs(survivors.mean().item()) < 0.002 and abs(survivors.std().item() - 0.02) < 0.002
    assert not torch.equal(params["reinit"]["lm_head.weight"], params["pruned"]["lm_head.weight"])

    # Embeddings and norm gains: the parent's for reinit only.
    kept = [n for n in params["pruned"] if "embed_tokens" in n or "norm" in n]
    assert kept
    for name in kept:
        assert torch.equal(params["reinit"][name], params["pruned"][name]), name
        assert not torch.equal(params["same"][name], params["pruned"][name]), name
    assert bool((params["same"]["model.norm.weight"] == 1).all())

    # random_fresh_mask: a different mask with the same 2:4 pattern, applied to the weights.
    assert any(not torch.equal(fresh.masks[n], pruned.masks[n]) for n in pruned.masks)
    _check_pattern(fresh.masks, "2:4", 0.5, "wanda")
    for name, keep in fresh.masks.items():
        assert int(params["fresh"][name][~keep].count_nonzero()) == 0

    assert reinit.record["control"] == {
        "name": "reinit",
        "description": reinit.record["control"]["description"],
        "seed": 0,
        "std": 0.02,
    }
    assert reinit.tokens == {"calibration": 4 * 32} and reinit.model.training
    # The unstructured fresh mask prunes as many entries per row as the method's mask.
    unstructured = SparsePrune(str(parent), "magnitude", control="random_fresh_mask").build(None, data)
    original = SparsePrune(str(parent), "magnitude").build(None, data)
    for name, keep in unstructured.masks.items():
        assert torch.equal((~keep).sum(dim=1), (~original.masks[name]).sum(dim=1)), name
        assert not torch.equal(keep, original.masks[name]), name


# ------------------------------------------------------------------------------------------- early errors


def test_bad_arguments_fail_at_construction(parent, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown method 'wnada'\. Did you mean 'wanda'"):
        SparsePrune(str(parent), "wnada")
    with pytest.raises(ValueError, match=r"Pattern 2:4 prunes exactly 0\.5.*ratio=0\.6 cannot be reached"):
        SparsePrune(str(parent), "wanda", ratio=0.6, pattern="2:4")
    with pytest.raises(ValueError, match=r"Unknown control 'reinti'\. Did you mean 'reinit'"):
        SparsePrune(str(parent), "wanda", control="reinti")
    with pytest.raises(ValueError, match=r"Unknown sparsity pattern '2-4'"):
        SparsePrune(str(parent), "wanda", pattern="2-4")
    with pytest.raises(ValueError, match=r"ratio=1\.0 is out of range"):
        SparsePrune(str(tmp_path / "not_trained_yet"), "magnitude", ratio=1.0)
    with pytest.raises(ValueError, match=r"method_kwargs \['blocksize'\] do not apply to 'wanda'"):
        SparsePrune(str(parent), "wanda", method_kwargs={"blocksize": 64})
    with pytest.raises(ValueError, match=r"pattern='unstructured' needs a ratio"):
        SparsePrune(str(parent), "magnitude", ratio=None)
    with pytest.raises(ValueError, match=r"targets='mlp\(' is not a valid regex"):
        SparsePrune(str(parent), "wanda", targets="mlp(")
    # All problems at once.
    with pytest.raises(ValueError, match=r"Unknown method 'wnada'.*Unknown control 'reinti'"):
        SparsePrune(str(parent), "wnada", control="reinti")
    # With the parent on disk, windows longer than its positions are refused before any weight is read.
    with pytest.raises(ValueError, match=r"calibration.seqlen=2048 exceeds the parent.s max_position_embeddings=1024"):
        SparsePrune(str(parent), "sparsegpt", calibration={"seqlen": 2048})


def test_calibration_slice_must_exist(parent, data):
    init = SparsePrune(str(parent), "wanda", calibration=Calibration(slice="pretrain", nsamples=2, seqlen=16))
    with pytest.raises(ValueError, match=r"slice='pretrain' is not a slice.*\['test', 'train', 'val'\]"):
        init.build(None, data)


# ----------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", CONFIGS)
def test_study_configs_parse(name, capsys):
    path = REPO / "configs" / "experiment" / name
    with pytest.raises(SystemExit) as exit_info:
        LitpruneCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    init = model["init"]["init_args"]
    assert model["preset"] is None and init["parent"] == "runs/tiny_scratch/export" and init["ratio"] == 0.5
    assert model["arm"] == ("S_N" if "reinit" in name else "P_M-R_N")
    assert init["control"] == ("reinit" if "reinit" in name else "none")
    assert init["pattern"] in ("unstructured", "2:4", "4:8")
    callbacks = printed["trainer"]["callbacks"]
    assert [c["init_args"]["mask_source"] for c in callbacks if c["class_path"].endswith("SparseMask")] == ["module"]
    depth = yaml.safe_load((REPO / "configs" / "experiment" / "tiny_depth_minitron.yaml").read_text(encoding="utf-8"))
    # The data and budget of the other tiny arms (the parent's tokenizer and data settings).
    for key, value in depth["data"]["init_args"].items():
        printed_value = printed["data"]["init_args"][key]
        assert printed_value == value or printed_value.items() >= value.items(), key
    assert model["max_tokens"] == depth["model"]["init_args"]["max_tokens"]
