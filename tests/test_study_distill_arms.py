"""The distilled arms of a study: `P_M-RD_N` (the pruned parent retrained by distillation from the parent) and `S_N-D`
(the scratch arm distilled from the parent). They are selected in `arms`, configured by `distill`, trained on N
tokens like their plain twins, charged the teacher's forward FLOPs in the ledger, and compared in the report."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from test_study_intervals import _evaluate
from test_study_new_methods import study_in_subprocess
from test_study_runner import _finish
from test_study_spec import micro_study

from litprune.study.arms import expand_study, write_arm_configs
from litprune.study.ledger import INHERITED_MARK, build_ledger
from litprune.study.report import collect_rows, compare_arms, compute_readings, render_markdown
from litprune.study.spec import StudyError, check_study, study_from_dict

REPO = Path(__file__).resolve().parents[1]
ALL_ARMS = ["S_N", "P_M-R_N", "S_M+N", "P_M-RD_N", "S_N-D"]
DEPTH = [{"method": "minitron_depth", "ratios": [0.5]}]


def _spec(tmp_path: Path, methods=None, **changes):
    changes.setdefault("arms", ALL_ARMS)
    changes.setdefault("distill", {"alpha": 0.3, "temperature": 2.0})
    spec = study_from_dict(micro_study(tmp_path / "out", methods=methods or DEPTH, **changes))
    check_study(spec)
    return spec


def _problems(tmp_path: Path, **changes) -> str:
    with pytest.raises(StudyError) as info:
        _spec(tmp_path, **changes)
    return str(info.value)


def _without(config: dict, *keys: str) -> dict:
    """An arm's config without the model's `keys` and its run directory (what two twins may differ in)."""
    config = copy.deepcopy(config)
    for key in keys:
        config["model"]["init_args"].pop(key, None)
    config["trainer"].pop("default_root_dir")
    return config


def test_distilled_arms_are_their_plain_twins_plus_the_parent_as_teacher(tmp_path):
    arms = {a.id: a for a in expand_study(_spec(tmp_path))}
    teacher = str(arms["parent"].run_dir / "export")
    for plain, distilled in (
        ("minitron_depth-0.5.P_M-R_N.N2048", "minitron_depth-0.5.P_M-RD_N.N2048"),
        ("depth-0.5.S_N.N2048", "depth-0.5.S_N-D.N2048"),
    ):
        a, b = arms[plain], arms[distilled]
        assert b.config["model"]["init_args"]["distill"] == {
            "teacher": teacher,
            "alpha": 0.3,
            "temperature": 2.0,
            "top_k": None,
        }
        assert "distill" not in a.config["model"]["init_args"]
        # Same init, data (so the same order), recipe and N: only the loss differs.
        assert _without(a.config, "distill", "arm") == _without(b.config, "distill", "arm")
        assert b.train_tokens == a.train_tokens == 2048 and b.depends_on == ["parent"]
        assert b.config["model"]["init_args"]["arm"] == b.label


def test_a_distilled_chain_distils_in_both_of_its_runs(tmp_path):
    spec = _spec(tmp_path, methods=[{"method": "sheared", "ratios": [0.5]}], arms=["P_M-RD_N"])
    parent, prune, chain = expand_study(spec)
    assert (prune.label, chain.label, chain.chain) == ("P_M-RD_N[prune]", "P_M-RD_N", [prune.id])
    for arm in (prune, chain):
        assert arm.config["model"]["init_args"]["distill"]["teacher"] == str(parent.run_dir / "export")
    assert prune.train_tokens + chain.train_tokens == 2048


def test_bad_distill_settings_and_arm_names_fail_early_with_suggestions(tmp_path):
    message = _problems(tmp_path, distill={"alpah": 0.5, "teacher": "elsewhere"}, arms=["S_N", "S_N_D"])
    assert "unknown key distill.alpah (did you mean 'alpha'?)" in message
    assert "distill.teacher cannot be set: every distilled arm learns from its own parent's export" in message
    assert "Did you mean 'S_N-D'?" in message
    assert "distill: " in _problems(tmp_path, distill={"alpha": 2.0}) and "alpha=2.0" in _problems(
        tmp_path, distill={"alpha": 2.0}
    )
    study = micro_study(tmp_path / "out", methods=DEPTH, arms=ALL_ARMS)
    study["model"]["distill"] = {"teacher": "x"}
    with pytest.raises(StudyError, match="model.distill is set by the study for the distilled arms"):
        check_study(study_from_dict(study))


def test_the_ledger_adds_the_teachers_forward_flops_and_keeps_n(tmp_path):
    spec = _spec(tmp_path)
    arms = expand_study(spec)
    ledger = build_ledger(spec, arms, measured=False)
    assert ledger.ok, ledger.failures()
    entries = {e.arm: e for e in ledger.entries}
    parent = entries["parent"].params_non_embedding
    plain, distilled = entries["minitron_depth-0.5.P_M-R_N.N2048"], entries["minitron_depth-0.5.P_M-RD_N.N2048"]
    assert distilled.train_tokens == plain.train_tokens == 2048 and distilled.total_tokens == plain.total_tokens
    assert distilled.flops["teacher"] == 2 * parent * 2048 and "teacher" not in plain.flops
    assert distilled.flops["total"] == plain.flops["total"] + 2 * parent * 2048
    scratch = entries["depth-0.5.S_N-D.N2048"]
    assert scratch.inherits == "shape, parent as teacher" and distilled.inherits == "weights, parent as teacher"
    assert scratch.uncounted_inheritance and not entries["depth-0.5.S_N.N2048"].uncounted_inheritance
    assert f"2,048{INHERITED_MARK}" in ledger.to_markdown()
    checks = {(c.pair, c.check) for c in ledger.checks}
    pair = "minitron_depth-0.5 N=2,048"
    for check in (
        "P_M-RD_N.train == N",
        "P_M-RD_N.train == P_M-R_N.train",
        "S_N-D.train == P_M-RD_N.train",
        "S_N-D.train == P_M-R_N.train",
        "S_M+N.train == P_M.train + P_M-RD_N.train",
        "P_M.train disjoint from S_N-D.train",
    ):
        assert (pair, check) in checks
    assert len(checks) == len(ledger.checks)  # shared identities are listed once


def test_measured_ledger_uses_the_recorded_teacher_and_catches_a_short_run(tmp_path):
    spec = _spec(tmp_path)
    arms = expand_study(spec)
    write_arm_configs(arms)
    for arm in arms:
        _finish(arm, calibration=256 if arm.label.startswith("P_M-R") else 0)
    by_id = {a.id: a for a in arms}
    distilled = by_id["minitron_depth-0.5.P_M-RD_N.N2048"]
    entry = next(e for e in build_ledger(spec, arms).entries if e.arm == distilled.id)
    # _finish records 600 non-embedding parameters for every run: the parent, so the teacher, too.
    assert entry.flops["teacher"] == 2 * 600 * 2048
    _finish(distilled, calibration=256, tokens=2048 - 256)
    failed = build_ledger(spec, arms).failures()
    assert "minitron_depth-0.5 N=2,048: P_M-RD_N.train == N (1,792 vs 2,048): FAILED" in failed
    assert "minitron_depth-0.5 N=2,048: P_M-RD_N.train == P_M-R_N.train (1,792 vs 2,048): FAILED" in failed


def test_the_report_compares_the_distilled_arms_and_shows_flops(tmp_path):
    spec = _spec(tmp_path)
    arms = expand_study(spec)
    write_arm_configs(arms)
    # Held-out losses, window by window: distilling helps the pruned arm by a clear margin, the scratch arm not.
    losses = {"P_M-R_N": 4.0, "P_M-RD_N": 3.5, "S_N": 5.0, "S_N-D": 5.0, "S_M+N": 4.5, "P_M": 3.0}
    for arm in arms:
        _finish(arm, calibration=256 if arm.label.startswith("P_M-R") else 0)
        _evaluate(arm, [losses[arm.label] + 0.01 * (i % 7) for i in range(64)])
    ledger = build_ledger(spec, arms)
    rows = collect_rows(spec, arms, ledger)
    comparisons = {(c.reference, c.scratch): c for c in compare_arms(spec, rows, arms)}
    assert set(comparisons) == {
        ("P_M-R_N", "S_N"),
        ("P_M-R_N", "S_M+N"),
        ("P_M-RD_N", "P_M-R_N"),
        ("P_M-RD_N", "S_N"),
        ("P_M-RD_N", "S_N-D"),
        ("P_M-RD_N", "S_M+N"),
        ("S_N-D", "S_N"),
    }
    assert comparisons[("P_M-RD_N", "P_M-R_N")].verdict == "pruned"
    assert comparisons[("P_M-RD_N", "P_M-R_N")].setting == "equal training tokens"
    assert comparisons[("P_M-RD_N", "S_M+N")].setting == "equal total tokens"
    assert comparisons[("S_N-D", "S_N")].verdict == "tie"
    readings = compute_readings(list(comparisons.values()))
    assert any("equal training tokens: P_M-RD_N beats P_M-R_N (held-out loss P_M-RD_N 3.530" in r for r in readings)
    scratch = next(r for r in readings if "S_N-D and S_N tie" in r)
    assert "S_N-D learns from the parent's outputs (distillation), so it is not a from-scratch arm" in scratch
    markdown = render_markdown(spec, rows, ledger, list(comparisons.values()), readings, [], {})
    assert "| `P_M-RD_N` | `P_M-R_N` |" in markdown and "FLOPs, arm / other" in markdown
    assert "| total tokens | FLOPs | held-out loss |" in markdown
    row = next(r for r in rows if r["label"] == "P_M-RD_N")
    assert f"{row['flops_total']:.3g}" in markdown


def test_a_staged_method_is_compared_apart_from_its_one_shot_twin(tmp_path):
    """One-shot and staged depth share the ratio and the scratch arms, but each pruned arm is compared only with its
    own kind: a staged `P_M-RD_N` with the staged `P_M-R_N`, never pooled with the one-shot arms as if they were
    seeds."""
    spec = _spec(tmp_path, methods=[*DEPTH, {"method": "minitron_depth", "stages": [0.25, 0.5]}])
    arms = expand_study(spec)
    write_arm_configs(arms)
    for i, arm in enumerate(arms):
        _finish(arm, calibration=256 if arm.label.startswith("P_M-R") else 0)
        _evaluate(arm, [4.0 + 0.1 * (i % 5) + 0.01 * (j % 7) for j in range(64)])
    ledger = build_ledger(spec, arms)
    rows = collect_rows(spec, arms, ledger)
    comparisons = compare_arms(spec, rows, arms)
    by_key = {(c.method, c.reference, c.scratch): c for c in comparisons}
    staged = "minitron_depth in stages 0.25-0.5"
    assert ("minitron_depth", "P_M-RD_N", "P_M-R_N") in by_key and (staged, "P_M-RD_N", "P_M-R_N") in by_key
    for comparison in comparisons:
        assert len(comparison.pruned) == 1, (comparison.method, comparison.reference, comparison.scratch)
        stage_run = "0.25-0.5" in comparison.pruned[0]["arm"]
        assert stage_run == (comparison.method == staged)
        for other in comparison.other:
            if other["label"].startswith("P_M"):
                assert other["group"] == comparison.pruned[0]["group"]


def test_the_shipped_distillation_study_plans_every_arm(tmp_path):
    from test_study_spec import REPO

    from litprune.study.spec import load_study

    spec = load_study(REPO / "configs" / "study" / "tiny_distill.yaml")
    spec.out_dir = str(tmp_path / "out")
    arms = expand_study(spec)
    assert {a.label for a in arms} == {
        "P_M",
        "P_M-R_N",
        "P_M-RD_N",
        "S_N",
        "S_N-D",
        "S_M+N",
        "P_M-R_N[stage1]",
        "P_M-RD_N[stage1]",
    }
    assert build_ledger(spec, arms, measured=False).ok


@pytest.mark.slow
def test_micro_study_trains_distilled_arms_and_a_two_stage_depth_method(embedded_cache, tmp_path):
    """A real study end to end: `P_M-RD_N` and `S_N-D` next to the plain arms, and a depth method pruned in two
    stages; every ledger check passes on the measured records, and the report lists the new arms with their rows."""
    # The shipped tiny_distill.yaml's arms, distillation settings and staged method, on the micro study's budgets.
    shipped = yaml.safe_load((REPO / "configs" / "study" / "tiny_distill.yaml").read_text())
    staged = [m for m in shipped["methods"] if "stages" in m]
    assert staged == [{"method": "minitron_depth", "stages": [0.25, 0.5]}]
    study = micro_study(tmp_path / "out", methods=staged, arms=shipped["arms"], distill=shipped["distill"])
    _, results = study_in_subprocess(study, tmp_path)
    rows = {r["arm"]: r for r in results["arms"]}
    assert all(r["finished"] for r in rows.values())
    assert {c["status"] for c in results["ledger"]["checks"]} == {"ok"}
    labels = {r["label"] for r in rows.values()}
    assert {"P_M-RD_N", "S_N-D", "P_M-R_N[stage1]"} <= labels
    # A staged arm's achieved ratio is of the original parent, not of the stage it pruned last.
    final = next(r for r in rows.values() if r["label"] == "P_M-R_N" and r["stage"] is None)
    assert final["achieved_ratio"] == pytest.approx(0.5, abs=0.05)
    # Every compared arm trained N tokens in all (a staged arm over its stages).
    entries = {e["arm"]: e for e in results["ledger"]["entries"]}
    for arm, row in rows.items():
        if row["label"] in ("P_M-R_N", "P_M-RD_N", "S_N", "S_N-D"):
            assert entries[arm]["train_tokens"] == 2048, arm
    # The distilled arms pay the teacher's forward passes: 2 x the parent's non-embedding parameters x N.
    parent = entries["parent"]["params_non_embedding"]
    for arm, row in rows.items():
        if row["label"] in ("P_M-RD_N", "S_N-D"):
            assert entries[arm]["flops"]["teacher"] == 2 * parent * 2048, arm
    report = (tmp_path / "out" / "report.md").read_text()
    for arm in rows:
        assert f"| {arm} |" in report, arm  # a ledger row for every arm
    assert "P_M-RD_N" in report and "S_N-D" in report
