"""The token ledger proves nothing it did not measure: a finished run's missing count or range is "not measured" and
fails; token ranges (calibration, the parent's pretraining, retraining) are checked disjoint by offsets, not names;
the dry run says "planned"; and a real `litprune fit` records the range it read."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import tiny_run_args
from test_study_runner import _arms, _finish
from test_study_spec import _write, micro_study

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.study.ledger import NOT_MEASURED, build_ledger
from litprune.study.records import TokenRange, run_result, train_range
from litprune.study.report import collect_rows, ledger_sentences, render_markdown

PAIR = "minitron_depth-0.5 N=2,048"


def _finish_all(arms, **changes) -> None:
    """Finish every arm as a real run would; `changes` maps an arm id to `_finish` arguments."""
    for arm in arms:
        calibration = 256 if arm.label == "P_M-R_N" or arm.kind == "sparse" else 0
        _finish(arm, **{"calibration": calibration, **changes.get(arm.id, {})})


def _checks(ledger) -> dict[tuple[str, str], object]:
    return {(c.pair, c.check): c for c in ledger.checks}


def test_missing_tokens_seen_is_not_measured_and_fails(tmp_path):
    spec, arms = _arms(tmp_path)
    _finish_all(arms, **{"depth-0.5.S_N.N2048": {"omit": ("tokens_seen",)}})
    ledger = build_ledger(spec, arms)
    entry = {e.arm: e for e in ledger.entries}["depth-0.5.S_N.N2048"]
    assert entry.train_tokens is None and entry.total_tokens is None and entry.not_measured == ["train"]
    assert entry.labels["train"] == NOT_MEASURED
    checks = _checks(ledger)
    for check in ("S_N.train == N", "S_N.train == P_M-R_N.train"):
        assert checks[(PAIR, check)].status == NOT_MEASURED
    assert not ledger.ok
    assert any("S_N.train == N" in line and NOT_MEASURED in line for line in ledger.failures())
    # The report says so in the table and in the sentences under it; nothing about this arm reads "ok".
    rows = {r["arm"]: r for r in collect_rows(spec, arms, ledger)}
    assert rows["depth-0.5.S_N.N2048"]["train_tokens"] is None
    markdown = render_markdown(spec, list(rows.values()), ledger, [], [], [], {})
    assert f"| {NOT_MEASURED} ({NOT_MEASURED}) |" in markdown
    assert f"| {PAIR} | `S_N.train == N` | {NOT_MEASURED} | 2,048 | {NOT_MEASURED} |" in markdown
    assert f"- {NOT_MEASURED}, 2 of {len(ledger.checks)} checks: a finished run's record lacks the value" in markdown
    assert f"  - {PAIR}, `S_N.train == N`: {NOT_MEASURED} vs 2,048." in markdown


def test_missing_parent_tokens_and_calibration_are_not_measured(tmp_path):
    spec, arms = _arms(tmp_path)
    _finish_all(
        arms,
        parent={"omit": ("tokens_seen",)},
        **{"minitron_depth-0.5.P_M-R_N.N2048": {"calibration": 256, "omit": ("calibration_range",)}},
    )
    ledger = build_ledger(spec, arms)
    entries = {e.arm: e for e in ledger.entries}
    pruned = entries["minitron_depth-0.5.P_M-R_N.N2048"]
    assert pruned.pretrain_tokens is None and set(pruned.not_measured) == {"pretrain", "calibration range"}
    checks = _checks(ledger)
    assert checks[(PAIR, "S_M+N.train == P_M.train + P_M-R_N.train")].status == NOT_MEASURED
    calib = checks[(PAIR, "P_M-R_N.calibration disjoint from P_M-R_N.train")]
    assert (calib.left, calib.status) == (NOT_MEASURED, NOT_MEASURED)
    # The calibration tokens themselves are recorded (init_tokens), only their range is missing.
    assert pruned.calibration_tokens == 256
    assert not ledger.ok


def test_overlapping_ranges_fail_naming_both_ranges(tmp_path):
    spec, arms = _arms(tmp_path)
    # The pruned arm retrained on tokens 100,000-140,000 of the train split, reaching into the parent's
    # pretraining slice [32,768, 131,072) although the slice names differ.
    retrain = {"split": "train", "start": 100_000, "end": 140_000}
    _finish_all(arms, **{"minitron_depth-0.5.P_M-R_N.N2048": {"calibration": 256, "train_slice": retrain}})
    ledger = build_ledger(spec, arms)
    check = _checks(ledger)[(PAIR, "P_M.train disjoint from P_M-R_N.train")]
    assert check.status == "FAILED"
    assert (check.left, check.right) == ("pretrain: train[32,768, 131,072)", "retrain: train[100,000, 140,000)")
    assert not ledger.ok
    (failure,) = ledger.failures()
    assert "pretrain: train[32,768, 131,072)" in failure and "retrain: train[100,000, 140,000)" in failure
    assert f"- FAILED, 1 of {len(ledger.checks)} checks:" in ledger_sentences(ledger)
    # The same offsets in another split do not overlap.
    other_split = {"split": "val", "start": 100_000, "end": 140_000}
    _finish(arms[1], calibration=256, train_slice=other_split)
    assert _checks(build_ledger(spec, arms))[(PAIR, "P_M.train disjoint from P_M-R_N.train")].status == "ok"


def test_calibration_overlapping_the_retraining_range_fails(tmp_path):
    spec, arms = _arms(tmp_path)
    # Retraining on [0, 40,000) covers the calibration slice [0, 32,768).
    retrain = {"split": "train", "start": 0, "end": 40_000}
    _finish_all(arms, **{"wanda-unstructured-0.5.P_M-R_N.N2048": {"calibration": 256, "train_slice": retrain}})
    checks = _checks(build_ledger(spec, arms))
    check = checks[("wanda-unstructured-0.5 N=2,048", "P_M-R_N.calibration disjoint from P_M-R_N.train")]
    assert check.status == "FAILED"
    assert (check.left, check.right) == ("calib: train[0, 32,768)", "retrain: train[0, 40,000)")
    assert checks[(PAIR, "P_M-R_N.calibration disjoint from P_M-R_N.train")].status == "ok"


def test_disjoint_ranges_pass_with_the_ranges_in_every_entry(tmp_path):
    spec, arms = _arms(tmp_path)
    _finish_all(arms)
    ledger = build_ledger(spec, arms)
    assert ledger.ok and {c.status for c in ledger.checks} == {"ok"}
    range_checks = [c for c in ledger.checks if "disjoint" in c.check]
    assert len(range_checks) == 8
    entries = {e.arm: e for e in ledger.entries}
    pruned = entries["minitron_depth-0.5.P_M-R_N.N2048"]
    assert pruned.ranges["train"] == TokenRange("train", "retrain", "train", 131_072, 262_144, 2048, 2048 // 32 / 4095)
    assert pruned.ranges["calibration"] == TokenRange("calibration", "calib", "train", 0, 32_768, 256)
    assert "train" in entries["parent"].ranges and "calibration" not in entries["depth-0.5.S_N.N2048"].ranges
    saved = pruned.as_dict()["ranges"]["train"]
    assert (saved["slice"], saved["split"], saved["start"], saved["end"]) == ("retrain", "train", 131_072, 262_144)
    (sentence,) = ledger_sentences(ledger)
    assert sentence == f"- {len(ledger.checks)} of {len(ledger.checks)} checks hold, measured from the finished runs."


def test_older_records_without_train_read_still_give_the_range(tmp_path):
    _spec, arms = _arms(tmp_path)
    _finish(arms[0])
    result = run_result(arms[0].run_dir)
    del result["data"]["train_read"]
    assert train_range(result) == TokenRange("train", "pretrain", "train", 32_768, 131_072, 8192, 8192 // 32 / 3071)
    del result["data"]["slices"]
    assert train_range(result) is None


def test_dry_run_labels_its_checks_planned(tmp_path):
    out = tmp_path / "out"
    path = _write(tmp_path, micro_study(out))
    result = subprocess.run(
        [sys.executable, "-m", "litprune", "study", "--config", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("Planned token ledger", 1)[1]
    statuses = [line.rsplit("|", 2)[1].strip() for line in table.splitlines() if line.startswith(f"| {PAIR} |")]
    assert statuses and set(statuses) == {"planned"}
    assert "| ok |" not in table and "FAILED" not in table
    assert "P_M.train disjoint from P_M-R_N.train` | pretrain: train[32,768, 131,072) | retrain: train[131,072" in table


def test_dry_run_fails_on_declared_overlapping_slices(tmp_path):
    study = micro_study(tmp_path / "out", arms=["S_N", "P_M-R_N"])
    study["data"]["slices"]["retrain"] = {"split": "train", "start": 100_000, "end": 262_144}
    spec, arms = _arms(tmp_path, arms=["S_N", "P_M-R_N"], data=study["data"])
    ledger = build_ledger(spec, arms, measured=False)
    failed = {(c.check, c.left, c.right) for c in ledger.checks if c.status == "FAILED"}
    parent, retrain = "pretrain: train[32,768, 131,072)", "retrain: train[100,000, 262,144)"
    assert ("P_M.train disjoint from P_M-R_N.train", parent, retrain) in failed
    assert not ledger.ok


def test_a_real_fit_records_the_range_it_read(embedded_cache, tmp_path):
    run_dir = tmp_path / "run"
    LitpruneCLI(args=tiny_run_args(run_dir, max_tokens=2048))
    result = json.loads((run_dir / "results.json").read_text())
    read = train_range(result)
    data = result["data"]
    expected = data["slices"][data["train_slice"]]
    assert (read.slice, read.split, read.start, read.end) == (
        data["train_slice"],
        expected["split"],
        expected["start"],
        expected["end"],
    )
    assert read.tokens == 2048 == result["run"]["tokens_seen"]
    assert 0 < read.epochs == data["epochs"][data["train_slice"]] < 1


def test_a_task_scored_depth_prune_reads_no_calibration_tokens(tmp_path):
    methods = [{"method": "minitron_depth", "ratios": [0.5], "options": {"scorer": "task:litprune_next_line"}}]
    spec, arms = _arms(tmp_path, methods=methods)
    planned = build_ledger(spec, arms, measured=False)
    assert {e.arm: e for e in planned.entries}["minitron_depth-0.5.P_M-R_N.N2048"].calibration_tokens == 0
    assert not any("calibration" in c.check for c in planned.checks)
    for arm in arms:
        _finish(arm)  # the pruned run's record has no calibration tokens and no calibration range, as in a real run
    ledger = build_ledger(spec, arms)
    assert ledger.ok and {c.status for c in ledger.checks} == {"ok"}
