"""The study runner: skipping finished arms, resuming interrupted ones, refusing changed ones; the ledger's checks on
measured runs; readings computed from the numbers; and (slow) a real study killed mid-arm and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from test_study_spec import micro_study

from litprune.study.arms import expand_study, write_arm_configs
from litprune.study.ledger import build_ledger
from litprune.study.records import MARKER
from litprune.study.runner import arm_status
from litprune.study.spec import StudyError, load_study, study_from_dict
from litprune.training.metrics_logger import read_metrics


def _arms(tmp_path: Path, **changes):
    spec = study_from_dict(micro_study(tmp_path / "out", **changes))
    arms = expand_study(spec)
    write_arm_configs(arms)
    return spec, arms


def _finish(
    arm,
    tokens: int | None = None,
    calibration: int = 0,
    loss: float = 5.0,
    train_slice: dict | None = None,
    omit: tuple[str, ...] = (),
) -> None:
    """Leave on disk what a finished `litprune fit` of `arm` leaves (results.json, export/) plus the study marker.

    The record has the layout `litprune fit` writes: `run` (`CausalLM.run_record`, with the calibration provenance
    under `init.calibration` when `calibration` tokens were read), `final` and `data` (`TokenDataModule.record`,
    slices resolved from the arm's config). `train_slice` replaces the training slice's `{split, start, end}`;
    `omit` drops `tokens_seen`, the training range (`train_range`) or the calibration range (`calibration_range`).
    """
    arm.run_dir.mkdir(parents=True, exist_ok=True)
    (arm.run_dir / "export").mkdir(exist_ok=True)
    (arm.run_dir / MARKER).write_text(json.dumps({"config_hash": arm.config_hash}))
    data_args = arm.config["data"]["init_args"]
    slices = {name: _resolved(spec) for name, spec in data_args["slices"].items()}
    name = data_args["train_slice"]
    if train_slice is not None:
        slices[name] = train_slice
    seen = arm.train_tokens if tokens is None else tokens
    seq_len = data_args["seq_len"]
    windows = (slices[name]["end"] - slices[name]["start"] - 1) // seq_len
    epochs = seen // seq_len / windows
    run = {
        "arm": arm.label,
        "init": {"strategy": "scratch"},
        "init_tokens": {"calibration": calibration} if calibration else {},
        "max_tokens": arm.train_tokens,
        "tokens_seen": seen,
        "parameters": {"total": 1000, "embedding": 400, "non_embedding": 600},
    }
    if calibration:
        settings = arm.config["model"]["init_args"]["init"]["init_args"]["calibration"]
        calib = slices[settings["slice"]]
        run["init"]["calibration"] = {"slice": settings["slice"], **calib, "tokens_used": calibration, "seed": 0}
        if "calibration_range" in omit:
            run["init"]["calibration"] = {"nsamples": 8, "seqlen": 32, "tokens_used": calibration}
    if "tokens_seen" in omit:
        del run["tokens_seen"]
    data = {
        "seq_len": seq_len,
        "slices": slices,
        "train_slice": name,
        "train_windows_per_epoch": windows,
        "train_windows_read": seen // seq_len,
        "train_tokens_read": seen,
        "epochs": {name: epochs},
        "train_read": {"slice": name, **slices[name], "tokens": seen, "epochs": epochs},
    }
    if "train_range" in omit:
        data = {k: v for k, v in data.items() if k not in ("train_read", "slices")}
    record = {"run": run, "final": {"val/loss": loss, "val/ppl": 2.718**loss}, "data": data}
    (arm.run_dir / "results.json").write_text(json.dumps(record))


def _resolved(spec: dict) -> dict:
    """A slice of the arm's config as `TokenDataModule.record` states it once resolved (a split-long slice is
    given 1,000,000 tokens)."""
    start = spec.get("start", 0)
    end = spec.get("end") or (start + spec["tokens"] if spec.get("tokens") else 1_000_000)
    return {"split": spec["split"], "start": start, "end": end}


def test_arm_status_skips_finished_resumes_partial_and_refuses_changed_configs(tmp_path):
    spec, arms = _arms(tmp_path)
    parent, pruned, scratch = arms[0], arms[1], arms[2]
    assert arm_status(parent).state == "new"
    _finish(parent)
    assert arm_status(parent).state == "done"
    # Interrupted: the study's marker and a checkpoint, no results yet.
    (pruned.run_dir / "checkpoints").mkdir(parents=True)
    (pruned.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (pruned.run_dir / MARKER).write_text(json.dumps({"config_hash": pruned.config_hash}))
    assert arm_status(pruned).state == "partial"
    # The study YAML changed since the arm started: never resumed or reused silently.
    changed = expand_study(study_from_dict(micro_study(tmp_path / "out", model={"lr": 1.0e-3})))
    with pytest.raises(StudyError, match=r"Arm parent was started with different settings .* delete .*runs/parent"):
        arm_status(changed[0])
    # A run directory the study did not create.
    (scratch.run_dir / "checkpoints").mkdir(parents=True)
    (scratch.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(StudyError, match="holds a run the study did not start"):
        arm_status(scratch)


def test_measured_ledger_proves_or_refutes_every_budget_identity(tmp_path):
    spec, arms = _arms(tmp_path)
    by_id = {a.id: a for a in arms}
    for arm in arms:
        calibration = 256 if arm.label == "P_M-R_N" or arm.kind == "sparse" else 0
        _finish(arm, calibration=calibration)
    ledger = build_ledger(spec, arms)
    assert ledger.ok and {c.status for c in ledger.checks} == {"ok"} and len(ledger.checks) == 18
    entry = {e.arm: e for e in ledger.entries}["wanda-unstructured-0.5.P_M-R_N.N2048"]
    assert (entry.pretrain_tokens, entry.calibration_tokens, entry.train_tokens) == (8192, 256, 2048)
    # A scratch arm that trained one step too many breaks both equal-budget identities it takes part in.
    _finish(by_id["depth-0.5.S_N.N2048"], tokens=2048 + 256)
    failed = {c.check for c in build_ledger(spec, arms).checks if c.status == "FAILED"}
    assert failed == {"S_N.train == N", "S_N.train == P_M-R_N.train"}
    # The parent stopping short of M is caught by the equal-total identity.
    _finish(by_id["depth-0.5.S_N.N2048"])
    _finish(by_id["parent"], tokens=8192 - 256)
    failed = {(c.pair, c.check) for c in build_ledger(spec, arms).checks if c.status == "FAILED"}
    assert ("minitron_depth-0.5 N=2,048", "S_M+N.train == P_M.train + P_M-R_N.train") in failed
    assert not any(check == "S_M+N.train == M + N" for _, check in failed)


# ------------------------------------------------------------------------------------------- real studies (slow)
def _study_command(config: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "litprune", "study", "--config", str(config), "--workers", str(workers)]


def _micro_yaml(tmp_path: Path, name: str) -> Path:
    study = micro_study(tmp_path / name, methods=[{"method": "minitron_depth", "ratios": [0.5]}])
    study["eval"] = {**study["eval"], "enabled": False}
    study["retrain_tokens"] = [8192]  # 32 steps: the interrupted arm runs long enough to be killed mid-way
    study["checkpoint"] = {"every_n_train_steps": 2}
    study["env"] = {"OMP_NUM_THREADS": "1"}  # the same thread count for sequential and parallel arms
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.mark.slow
def test_study_killed_mid_arm_resumes_without_redoing_finished_arms(embedded_cache, tmp_path):
    # The reference study runs its arms one after another; the interrupted one two at a time (`--workers 2`).
    straight = _micro_yaml(tmp_path, "straight")
    done = subprocess.run(_study_command(straight, workers=1), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Up to" not in done.stdout

    config = _micro_yaml(tmp_path, "interrupted")
    spec = load_study(config)
    arms = {a.label: a for a in expand_study(spec)}
    target = arms["P_M-R_N"].run_dir
    # The whole study is killed (its process group, as a scheduler or Ctrl-\ would) once the retraining arm
    # has written its first checkpoint.
    proc = subprocess.Popen(
        _study_command(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 900
    while not (target / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the retraining arm never wrote a checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (target / "results.json").exists(), "the arm finished before the kill; nothing was interrupted"
    parent_results = arms["P_M"].run_dir / "results.json"
    parent_stamp = parent_results.stat().st_mtime_ns
    parent_lines = (arms["P_M"].run_dir / "metrics.jsonl").read_text()

    rerun = subprocess.run(_study_command(config), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "1 of 4 arms already done; running 3. Up to 2 at a time." in rerun.stdout
    assert "minitron_depth-0.5.P_M-R_N.N8192 (P_M-R_N, 8,192 tokens): resuming" in rerun.stdout
    # The finished parent was not touched.
    assert parent_results.stat().st_mtime_ns == parent_stamp
    assert (arms["P_M"].run_dir / "metrics.jsonl").read_text() == parent_lines

    # The interrupted arm ends exactly where an uninterrupted study's ends.
    other = {a.label: a for a in expand_study(load_study(straight))}
    a = load_file(other["P_M-R_N"].run_dir / "export" / "model.safetensors")
    b = load_file(target / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    result_a = json.loads((other["P_M-R_N"].run_dir / "results.json").read_text())
    result_b = json.loads((target / "results.json").read_text())
    assert result_a["final"] == result_b["final"]
    assert result_a["run"]["tokens_seen"] == result_b["run"]["tokens_seen"] == 8192
    loss_a = read_metrics(other["P_M-R_N"].run_dir / "metrics.jsonl")["train/loss"]
    loss_b = read_metrics(target / "metrics.jsonl")["train/loss"]
    assert loss_a == loss_b

    # Every arm of the parallel, interrupted and resumed study ends exactly where the sequential study's ends.
    for label, arm in arms.items():
        a = load_file(other[label].run_dir / "export" / "model.safetensors")
        b = load_file(arm.run_dir / "export" / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), label
        finals = [json.loads((run.run_dir / "results.json").read_text())["final"] for run in (other[label], arm)]
        assert finals[0] == finals[1], label

    # The report and ledger of the resumed study are complete and every budget identity holds.
    results = json.loads((tmp_path / "interrupted" / "results.json").read_text())
    assert {c["status"] for c in results["ledger"]["checks"]} == {"ok"}
    report = (tmp_path / "interrupted" / "report.md").read_text()
    assert "## minitron_depth, ratio 0.5" in report and "equal training tokens" in report
    assert (tmp_path / "interrupted" / "plots" / "equal_total_budget.png").stat().st_size > 1000

    # A third run has nothing left to do.
    again = subprocess.run(_study_command(config), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "4 of 4 arms already done; running 0." in again.stdout


@pytest.mark.slow
def test_micro_study_with_every_method_family_and_evaluation(embedded_cache, tmp_path):
    study = micro_study(
        tmp_path / "out",
        methods=[
            {"method": "minitron_depth", "ratios": [0.5]},
            {"method": "minitron_width", "ratios": [0.5]},
            {"method": "wanda", "ratios": [0.5], "controls": ["random_same_mask"]},
        ],
    )
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    done = subprocess.run(_study_command(path), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["arm"]: r for r in results["arms"]}
    assert len(rows) == 11 and all(r["finished"] for r in rows.values())
    assert all(r["task:litprune_next_line"] is not None and r["ppl:embedded:test"] > 1 for r in rows.values())
    assert {c["status"] for c in results["ledger"]["checks"]} == {"ok"}
    assert rows["wanda-unstructured-0.5.S_N-random_same_mask.N2048"]["inherits"] == "mask"
    assert rows["width-0.5.S_N.N2048"]["params_total"] == rows["minitron_width-0.5.P_M-R_N.N2048"]["params_total"]
    report = (tmp_path / "out" / "report.md").read_text()
    for heading in ("## minitron_depth, ratio 0.5", "## minitron_width, ratio 0.5", "## wanda, ratio 0.5"):
        assert heading in report
    assert len(results["readings"]) >= 7
