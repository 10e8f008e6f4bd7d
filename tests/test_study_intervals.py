"""The study's statistics: paired bootstrap intervals, decisions by interval, learning-rate choice, repetitions
per seed and learning rate, clean scratch controls, and the comparison with the paper, all from the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_study_runner import _arms, _finish
from test_study_spec import micro_study

from litprune.study.arms import expand_study
from litprune.study.intervals import paired_interval
from litprune.study.ledger import INHERITED_MARK, build_ledger
from litprune.study.report import collect_rows, compare_arms, compare_with_paper, compute_readings, render_markdown
from litprune.study.spec import StudyError, study_from_dict

PAIR = ("minitron_depth", 0.5)


def test_interval_covers_a_known_shift_and_calls_a_null_difference_a_tie():
    rng = np.random.default_rng(1)
    a = rng.normal(4.0, 0.5, size=400)
    shifted = paired_interval(a, a + 0.1 + rng.normal(0, 0.05, size=400), resamples=1000)
    assert shifted.low > 0 and shifted.low < 0.1 < shifted.high and shifted.verdict == "b higher"
    same = paired_interval(a, a + rng.normal(0, 0.05, size=400), resamples=1000)
    assert same.low < 0 < same.high and same.verdict == "tie"
    assert paired_interval(a + 0.2, a, resamples=200).verdict == "a higher"
    # Reproducible, and wider at a lower unit count.
    assert paired_interval(a, a + 0.1, resamples=200) == paired_interval(a, a + 0.1, resamples=200)
    few = paired_interval(a[:20], a[:20] + 0.1 + rng.normal(0, 0.05, size=20), resamples=1000)
    assert few.high - few.low > shifted.high - shifted.low


def test_interval_with_seeds_carries_the_seed_spread():
    rng = np.random.default_rng(2)
    a = rng.normal(4.0, 0.5, size=(3, 200))
    # Per-seed shifts 0.0, 0.1, 0.2: mean 0.1, spread 0.1; the interval is wide because the seeds disagree.
    b = a + np.array([[0.0], [0.1], [0.2]])
    interval = paired_interval(a, b, resamples=2000)
    assert interval.seeds == 3 and interval.seed_spread == pytest.approx(0.1)
    assert interval.mean == pytest.approx(0.1) and interval.high - interval.low > 0.1


def test_interval_refuses_unpaired_values():
    with pytest.raises(ValueError, match="same shape"):
        paired_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN or infinity"):
        paired_interval([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_interval([1.0], [1.0], confidence=1.5)


def _evaluate(arm, nll: list[float], correct: list[float] | None = None) -> None:
    """Leave the study's evaluation record of `arm`: held-out losses per window and per-example task values."""
    record = {
        "heldout_loss": {"indices": list(range(len(nll))), "nll": nll, "loss": float(np.mean(nll))},
        "tasks": [],
    }
    if correct is not None:
        record["tasks"].append(
            {
                "task": "next",
                "value": float(np.mean(correct)),
                "per_example": {"metric": "acc", "values": correct, "doc_ids": list(range(len(correct)))},
            }
        )
    (arm.run_dir / "eval.json").write_text(json.dumps(record))


def test_comparisons_pair_windows_and_decide_by_interval(tmp_path):
    spec, arms = _arms(tmp_path)
    for arm in arms:
        _finish(arm, calibration=256 if arm.label == "P_M-R_N" or arm.kind == "sparse" else 0)
    by_id = {a.id: a for a in arms}
    rng = np.random.default_rng(0)
    base = rng.normal(4.0, 0.3, size=64)
    noise = lambda: rng.normal(0, 0.02, size=64)  # noqa: E731
    correct = (rng.random(200) < 0.4).astype(float)
    _evaluate(by_id["minitron_depth-0.5.P_M-R_N.N2048"], list(base), list(correct))
    _evaluate(by_id["depth-0.5.S_N.N2048"], list(base + 0.5 + noise()), list(np.zeros(200)))
    _evaluate(by_id["depth-0.5.S_M+N.N2048"], list(base + noise()), list(correct))
    rows = collect_rows(spec, arms)
    comparisons = {(c.method, c.scratch): c for c in compare_arms(spec, rows, arms)}
    training, total = comparisons[("minitron_depth", "S_N")], comparisons[("minitron_depth", "S_M+N")]
    assert training.verdict == "pruned" and training.loss.mean == pytest.approx(0.5, abs=0.02)
    assert training.accuracy["next"].verdict == "b higher"  # P_M-R_N - S_N accuracy is above zero
    assert total.verdict == "tie" and total.accuracy["next"].verdict == "tie"
    assert comparisons[("wanda", "S_N")].loss is None  # not evaluated: no interval, no verdict
    readings = compute_readings(list(comparisons.values()))
    assert readings[0].startswith("minitron_depth at ratio 0.5, N = 2,048 (")
    assert "equal training tokens: P_M-R_N beats S_N (held-out loss" in readings[0]
    assert "95% interval" in readings[0] and "next accuracy" in readings[0]
    assert "P_M-R_N and S_M+N tie: the interval contains zero" in readings[1]
    paper = compare_with_paper(list(comparisons.values()), rows)
    assert paper[0].startswith(
        "Finding 1 (equal training tokens: pruning wins): shown here; P_M-R_N beats S_N in 1 of 1"
    )
    assert "coarse methods are matched or beaten by S_M+N in 1 of 1 comparisons (as the paper)" in paper[1]
    markdown = render_markdown(spec, rows, build_ledger(spec, arms), list(comparisons.values()), readings, paper, {})
    assert "## Compared with the paper" in markdown and "paired percentile bootstrap" in markdown


def test_seeds_and_learning_rates_repeat_the_arms_and_the_best_rate_is_reported(tmp_path):
    study = micro_study(tmp_path / "out", seeds=[0, 1], lr=[1.0e-3, 3.0e-3])
    study["methods"] = [{"method": "minitron_depth", "ratios": [0.5]}]
    spec = study_from_dict(study)
    arms = expand_study(spec)
    ids = [a.id for a in arms]
    assert ids[:2] == ["parent.s0", "parent.s1"]
    assert "minitron_depth-0.5.P_M-R_N.N2048.s1.lr0.003" in ids and len(arms) == 2 + 2 * 2 * 3
    arm = {a.id: a for a in arms}["depth-0.5.S_N.N2048.s1.lr0.001"]
    assert arm.depends_on == ["parent.s1"] and arm.parent == "parent.s1"
    config = arm.config
    assert config["seed_everything"] == 1 and config["data"]["init_args"]["seed"] == 1
    assert (
        config["model"]["init_args"]["lr"] == 1.0e-3 and config["model"]["init_args"]["init"]["init_args"]["seed"] == 1
    )
    parent = {a.id: a for a in arms}["parent.s1"]
    assert parent.config["model"]["init_args"]["lr"] == 3.0e-3  # the parent trains at model.lr, not swept
    assert parent.config["model"]["init_args"]["init"]["init_args"]["seed"] == 1
    # The ledger pairs arms of the same seed and learning rate.
    for a in arms:
        _finish(a, loss=4.0 if a.lr == 1.0e-3 else 3.0, calibration=256 if a.label == "P_M-R_N" else 0)
    ledger = build_ledger(spec, arms)
    assert ledger.ok and all(c.status == "ok" for c in ledger.checks)
    rows = collect_rows(spec, arms, ledger)
    chosen = {r["arm"] for r in rows if r["selected"] and r["lr"] is not None}
    assert chosen and all(a.endswith("lr0.003") for a in chosen) and len(chosen) == 2 * 3


def test_bad_repetitions_are_clear_errors(tmp_path):
    with pytest.raises(StudyError, match=r"seeds=\[0, 0\] repeats a value"):
        from litprune.study.spec import check_study

        check_study(study_from_dict(micro_study(tmp_path, seeds=[0, 0])))
    with pytest.raises(StudyError, match=r"lr entries \[5\] must be learning rates in \(0, 1\)"):
        from litprune.study.spec import check_study

        check_study(study_from_dict(micro_study(tmp_path, lr=[5])))


def test_sparse_equal_total_arm_never_inherits_trained_tensors_and_reinit_is_flagged(tmp_path):
    spec, arms = _arms(tmp_path)
    by_id = {a.id: a for a in arms}
    long = by_id["wanda-unstructured-0.5.S_M+N.N2048"]
    assert long.config["model"]["init_args"]["init"]["init_args"]["control"] == "random_same_mask"
    assert not long.uses_parent_weights
    assert by_id["wanda-unstructured-0.5.S_N.N2048"].config["model"]["init_args"]["init"]["init_args"]["control"] == (
        "reinit"
    )
    ledger = build_ledger(spec, arms, measured=False)
    entries = {e.arm: e for e in ledger.entries}
    assert entries["wanda-unstructured-0.5.S_N.N2048"].uncounted_inheritance
    assert entries["wanda-unstructured-0.5.S_M+N.N2048"].inherits == "mask"
    assert not entries["wanda-unstructured-0.5.S_M+N.N2048"].uncounted_inheritance
    assert INHERITED_MARK in ledger.to_markdown()


def test_heldout_slice_must_be_disjoint_from_what_arms_read(tmp_path):
    from litprune.study.spec import check_study

    study = micro_study(tmp_path)
    study["eval"]["loss_slice"] = "val"
    with pytest.raises(StudyError, match=r"eval.loss_slice='val' .* overlaps data.val_slice='val'"):
        check_study(study_from_dict(study))
    study["eval"]["loss_slice"] = "nowhere"
    with pytest.raises(StudyError, match=r"eval.loss_slice='nowhere' is not a slice of data.slices"):
        check_study(study_from_dict(study))


def test_several_seeds_give_one_comparison_with_the_seed_spread(tmp_path):
    study = micro_study(tmp_path / "out", seeds=[0, 1])
    study["methods"] = [{"method": "minitron_depth", "ratios": [0.5]}]
    spec = study_from_dict(study)
    arms = expand_study(spec)
    rng = np.random.default_rng(3)
    base = rng.normal(4.0, 0.3, size=32)
    for arm in arms:
        _finish(arm, calibration=256 if arm.label == "P_M-R_N" else 0)
        shift = {"P_M-R_N": 0.0, "S_N": 0.4 + 0.2 * (arm.seed or 0), "S_M+N": -0.1}.get(arm.label, 0.0)
        _evaluate(arm, list(base + shift))
    rows = collect_rows(spec, arms)
    comparisons = compare_arms(spec, rows, arms)
    training = next(c for c in comparisons if c.scratch == "S_N")
    assert len(training.pruned) == 2 and training.loss.seeds == 2
    assert training.loss.mean == pytest.approx(0.5) and training.loss.seed_spread == pytest.approx(0.2 / 2**0.5)
    markdown = render_markdown(spec, rows, build_ledger(spec, arms), comparisons, [], [], {})
    assert "| seeds | seed spread (sd) |" in markdown and "| 2 | 0.141 |" in markdown
