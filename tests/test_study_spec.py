"""The study YAML: expansion into fit configs the CLI accepts, dry runs, and early, clear errors for bad input."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.study.arms import expand_study, write_arm_configs
from litprune.study.ledger import build_ledger
from litprune.study.runner import run_study
from litprune.study.spec import StudyError, check_study, load_study, study_from_dict, tokens_per_step

REPO = Path(__file__).resolve().parents[1]

MICRO: dict = {
    "name": "micro",
    "out_dir": "OUT",
    "parents": {"parent": {"preset": "tiny", "tokens": 8192}},
    "retrain_tokens": [2048],
    "arms": ["S_N", "P_M-R_N", "S_M+N"],
    "methods": [
        {"method": "minitron_depth", "ratios": [0.5]},
        {"method": "wanda", "ratios": [0.5]},
    ],
    "slices": {"parent": "pretrain", "retrain": "retrain", "calibration": "calib"},
    "calibration": {"nsamples": 8, "seqlen": 32, "seed": 0},
    "model": {"lr": 3.0e-3},
    "data": {
        "vocab_size": 512,
        "seq_len": 32,
        "micro_batch_size": 8,
        "val_max_windows": 16,
        "test_slice": None,
        "slices": {
            "calib": {"split": "train", "start": 0, "end": 32768},
            "pretrain": {"split": "train", "start": 32768, "end": 131072},
            "retrain": {"split": "train", "start": 131072, "end": 262144},
            "val": {"split": "val"},
            "heldout": {"split": "test"},
        },
    },
    "trainer": {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "curve_points": 4,
    "eval": {
        "tasks": ["litprune_next_line"],
        "perplexity": ["embedded"],
        "limit": 20,
        "max_windows": 2,
        "seq_len": 64,
        "max_examples": 40,
        "loss_slice": "heldout",
        "loss_tokens": 512,
    },
}


def micro_study(out_dir: Path, **changes) -> dict:
    """The micro study (tiny preset, 512-token BPE, a few thousand tokens per arm) writing into `out_dir`."""
    study = copy.deepcopy(MICRO)
    study["out_dir"] = str(out_dir)
    study.update(changes)
    return study


def _write(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _problems(tmp_path: Path, study: dict) -> str:
    with pytest.raises(StudyError) as info:
        load_study(_write(tmp_path, study))
    return str(info.value)


def test_expansion_writes_fit_configs_the_cli_accepts(tmp_path, capsys):
    spec = load_study(_write(tmp_path, micro_study(tmp_path / "out")))
    arms = expand_study(spec)
    write_arm_configs(arms)
    labels = [(a.id, a.label) for a in arms]
    assert labels == [
        ("parent", "P_M"),
        ("minitron_depth-0.5.P_M-R_N.N2048", "P_M-R_N"),
        ("depth-0.5.S_N.N2048", "S_N"),
        ("wanda-unstructured-0.5.P_M-R_N.N2048", "P_M-R_N"),
        ("wanda-unstructured-0.5.S_N.N2048", "S_N"),
        ("depth-0.5.S_M+N.N2048", "S_M+N"),
        ("wanda-unstructured-0.5.S_M+N.N2048", "S_M+N"),
    ]
    for arm in arms:
        assert arm.config_path.is_file()
        with pytest.raises(SystemExit) as info:
            LitpruneCLI(args=["fit", "--config", str(arm.config_path), "--print_config"])
        assert info.value.code in (0, None), capsys.readouterr().err
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["default_root_dir"] == str(arm.run_dir)
        assert printed["model"]["init_args"]["max_tokens"] == arm.train_tokens
        assert printed["model"]["init_args"]["arm"] == arm.label
    by_id = {a.id: a for a in arms}
    pruned, scratch = by_id["minitron_depth-0.5.P_M-R_N.N2048"], by_id["depth-0.5.S_N.N2048"]
    # The equal-training pair differs only in its init, label and run directory: same data (and order), recipe.
    assert pruned.config["data"] == scratch.config["data"]
    assert pruned.config["data"]["init_args"]["train_slice"] == "retrain"
    assert pruned.config["model"]["init_args"]["init"]["init_args"]["parent"] == str(by_id["parent"].run_dir / "export")
    assert scratch.config["model"]["init_args"]["init"]["class_path"].endswith("ScratchTarget")
    # S_M+N reads the parent's and the retraining tokens, joined; the sparse one keeps its calibration slice.
    long = by_id["wanda-unstructured-0.5.S_M+N.N2048"].config["data"]["init_args"]
    assert long["train_slice"] == "pretrain_and_retrain"
    assert long["slices"]["pretrain_and_retrain"] == {"split": "train", "start": 32768, "end": 262144}
    assert set(long["slices"]) == {"pretrain_and_retrain", "calib", "val"}
    sparse = by_id["wanda-unstructured-0.5.S_N.N2048"].config
    assert sparse["model"]["init_args"]["init"]["init_args"]["control"] == "reinit"
    assert sparse["trainer"]["callbacks"][0]["class_path"] == "litprune.callbacks.sparse_mask.SparseMask"
    assert all(a.depends_on == ["parent"] for a in arms[1:])


def test_dry_run_lists_arms_budgets_and_configs_without_training(tmp_path):
    out = tmp_path / "out"
    path = _write(tmp_path, micro_study(out))
    result = subprocess.run(
        [sys.executable, "-m", "litprune", "study", "--config", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for arm_id in ("parent", "minitron_depth-0.5.P_M-R_N.N2048", "depth-0.5.S_M+N.N2048"):
        assert arm_id in text
        assert str(out / "configs" / f"{arm_id}.yaml") in text
    assert "10,240" in text and "| planned |" in text and "| ok |" not in text and "FAILED" not in text
    assert not (out / "runs").exists()  # nothing trained
    assert (out / "configs" / "parent.yaml").is_file()


def test_planned_ledger_matches_the_budget_definitions(tmp_path):
    spec = load_study(_write(tmp_path, micro_study(tmp_path / "out", retrain_tokens=[2048, 4096])))
    ledger = build_ledger(spec, expand_study(spec), measured=False)
    assert ledger.ok and {c.status for c in ledger.checks} == {"planned"}
    checks = {(c.pair, c.check): (c.left, c.right) for c in ledger.checks}
    assert checks[("minitron_depth-0.5 N=4,096", "S_M+N.train == M + N")] == (8192 + 4096, 8192 + 4096)
    assert checks[("wanda-unstructured-0.5 N=2,048", "S_N.train == P_M-R_N.train")] == (2048, 2048)
    entries = {e.arm: e for e in ledger.entries}
    pruned = entries["minitron_depth-0.5.P_M-R_N.N2048"]
    assert (pruned.pretrain_tokens, pruned.calibration_tokens, pruned.total_tokens) == (8192, 8 * 32, 8192 + 2048)
    assert entries["depth-0.5.S_N.N2048"].total_tokens == 2048
    # 6 x non-embedding params x tokens for training, 2 x parent params x tokens for calibration.
    parent_params = entries["parent"].params_non_embedding
    assert pruned.flops["calibration"] == 2 * parent_params * 256
    assert (
        pruned.flops["total"]
        == 6 * parent_params * 8192 + 2 * parent_params * 256 + 6 * pruned.params_non_embedding * 2048
    )


def test_an_arm_that_needs_an_undefined_parent_fails_early(tmp_path):
    study = micro_study(tmp_path / "out")
    study["methods"][0]["parent"] = "llama_200b"
    message = _problems(tmp_path, study)
    assert "prunes parent 'llama_200b', which the study does not define" in message
    assert "defined: ['parent']" in message
    no_parent = micro_study(tmp_path / "out", parents={})
    assert "no parent is defined" in _problems(tmp_path, no_parent)


def test_a_ratio_a_method_cannot_reach_fails_early(tmp_path):
    study = micro_study(tmp_path / "out")
    study["methods"][0]["ratios"] = [0.99]  # no 4-layer parent keeps a layer at 99% pruned
    message = _problems(tmp_path, study)
    assert "ratio 0.99 cannot be reached on the parent's shape" in message and "leaves no decoder layer" in message
    sparse = micro_study(tmp_path / "out")
    sparse["methods"][1].update({"pattern": "2:4", "ratios": [0.6]})
    assert "pattern 2:4 prunes exactly 0.5 of the weights, so ratio 0.6 cannot be reached" in _problems(
        tmp_path, sparse
    )


def test_budgets_too_small_for_one_step_fail_early(tmp_path):
    study = micro_study(tmp_path / "out", retrain_tokens=[100])
    message = _problems(tmp_path, study)
    assert "retrain_tokens N=100 is smaller than one optimizer step of 256 tokens" in message
    uneven = micro_study(tmp_path / "out", retrain_tokens=[1000])
    assert "not a whole number of optimizer steps of 256 tokens; use 768 or 1,024" in _problems(tmp_path, uneven)
    parent = micro_study(tmp_path / "out")
    parent["parents"]["parent"]["tokens"] = 128
    assert "parents.parent.tokens M=128 is smaller than one optimizer step" in _problems(tmp_path, parent)


def test_every_problem_is_reported_at_once_with_close_matches(tmp_path):
    study = micro_study(tmp_path / "out", retrain_tokens=[100])
    study["methods"][0]["method"] = "minitron_dept"
    study["slices"]["retrain"] = "retrian"
    study["curve_point"] = 3
    message = _problems(tmp_path, study)
    assert "unknown key curve_point (did you mean 'curve_points'" in message  # keys are checked first
    study.pop("curve_point")
    message = _problems(tmp_path, study)
    assert "Did you mean 'minitron_depth'" in message
    assert "slices.retrain='retrian' is not a slice of data.slices" in message
    assert "N=100 is smaller than one optimizer step" in message
    assert message.count("\n  - ") == 3


def test_sparse_scratch_arms_need_a_calibration_slice_outside_the_joined_one(tmp_path):
    study = micro_study(tmp_path / "out")
    study["slices"]["calibration"] = "pretrain"
    assert "overlaps the tokens S_M+N trains on" in _problems(tmp_path, study)
    # By ranges, not names: a slice of another name over the same tokens is refused too.
    study = micro_study(tmp_path / "out")
    study["data"]["slices"]["everything"] = {"split": "train", "start": 0, "end": 262144}
    study["slices"]["long"] = "everything"
    problems = _problems(tmp_path, study)
    assert "calib: train[0, 32,768)" in problems and "overlaps the tokens S_M+N trains on" in problems
    study["arms"] = ["S_N", "P_M-R_N"]
    check_study(study_from_dict(study))  # without S_M+N the parent's slice may serve calibration


def test_shipped_study_configs_are_valid(tmp_path):
    for name in ("tiny.yaml", "tiny_full.yaml"):
        spec = load_study(REPO / "configs" / "study" / name)
        arms = expand_study(spec)
        assert arms[0].label == "P_M" and {"S_N", "P_M-R_N", "S_M+N"} <= {a.label for a in arms}
        assert build_ledger(spec, arms, measured=False).ok
    tiny = load_study(REPO / "configs" / "study" / "tiny.yaml")
    assert {m.kind for m in tiny.methods} == {"depth", "width", "sparse"}
    assert all(m.ratios == [0.5] for m in tiny.methods)
    # The sizing rule of the main job: about the paper's tokens per non-embedding parameter for the parent (200B over
    # Llama-3.1-8B's 6,979,588,096: 28.7; 29 x the parent's count), to the nearest whole number of steps; N = M/16 and
    # M/4 (the paper's main N is M/4).
    from litprune.models.presets import build_llama_config
    from litprune.pruning.shapes import count_config_parameters

    parent = tiny.parents["parent"]
    non_embedding = count_config_parameters(build_llama_config(parent.preset, vocab_size=1024)).non_embedding
    step = tokens_per_step(tiny)
    assert abs(parent.tokens - 29 * non_embedding) <= step / 2 and parent.tokens % step == 0
    assert tiny.retrain_tokens == [parent.tokens // 16, parent.tokens // 4]


def test_paper_scale_study_dry_run(tmp_path):
    spec = load_study(REPO / "configs" / "study" / "llama3.1-8b.yaml")
    spec.out_dir = str(tmp_path / "out")
    summary = run_study(spec, dry_run=True, echo=lambda text: None)
    assert summary["ledger_ok"]
    arms = expand_study(spec)
    parent = arms[0].config
    assert parent["model"]["init_args"]["max_tokens"] == 209_715_200_000  # 50,000 steps of 4,194,304: "200B"
    assert parent["trainer"]["strategy"]["class_path"].endswith("ModelParallelStrategy")
    assert parent["model"]["init_args"]["activation_checkpointing"] is True
    assert parent["trainer"]["precision"] == "bf16-mixed"
    trainer, data = parent["trainer"], parent["data"]["init_args"]
    step = (
        data["seq_len"]
        * data["micro_batch_size"]
        * trainer["accumulate_grad_batches"]
        * trainer["devices"]
        * trainer["num_nodes"]
    )
    assert step == 512 * 8192  # the paper's global batch
    for arm in arms:
        assert arm.train_tokens % step == 0
        assert (tmp_path / "out" / "configs" / f"{arm.id}.yaml").is_file()
