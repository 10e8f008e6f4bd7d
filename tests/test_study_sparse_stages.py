"""Iterative pruning of sparse methods (`stages: [...]` with wanda or magnitude): the study's chain of stages, its
ledger, the refusals, and the mask tightening of `SparsePrune` on a sparse parent (each stage keeps every zero of the
previous one and ends at exactly its ratio of the prunable weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TEST_VOCAB, make_tiny_llama
from test_study_spec import micro_study

from litprune.inits.sparse import SparsePrune, check_tightened
from litprune.models.sparse_checkpoint import load_masks, save_sparse
from litprune.study.arms import expand_study
from litprune.study.ledger import build_ledger
from litprune.study.spec import StudyError, check_study, study_from_dict

STEP = 256  # tokens per optimizer step of the micro study (seq_len 32 x micro-batch 8)
CALIBRATION_TOKENS = 8 * 32  # the micro study's calibration windows (nsamples x seqlen)
SPARSE_MASK = "litprune.callbacks.sparse_mask.SparseMask"


def _spec(tmp_path: Path, methods: list[dict], **changes):
    spec = study_from_dict(micro_study(tmp_path / "out", methods=methods, **changes))
    check_study(spec)
    return spec


def _problems(tmp_path: Path, methods: list[dict], **changes) -> str:
    with pytest.raises(StudyError) as info:
        _spec(tmp_path, methods, **changes)
    return str(info.value)


def _init_args(arm) -> dict:
    init = arm.config["model"]["init_args"]["init"]
    assert init["class_path"] == "litprune.inits.SparsePrune"
    return init["init_args"]


def _mask_callbacks(arm) -> list[dict]:
    return [c for c in arm.config["trainer"].get("callbacks") or [] if c["class_path"] == SPARSE_MASK]


# ------------------------------------------------------------------------------------------------ expansion
def test_sparse_stages_chain_each_export_at_its_ratio_and_spend_n_tokens_in_whole_steps(tmp_path):
    methods = [{"method": "wanda", "stages": [0.2, 0.4, 0.6], "controls": ["random_same_mask"]}]
    spec = _spec(tmp_path, methods, arms=["S_N", "P_M-R_N"])
    by_id = {a.id: a for a in expand_study(spec)}
    group = "wanda-unstructured-0.2-0.4-0.6"
    chain = [by_id[f"{group}.P_M-R_N-stage1.N2048"], by_id[f"{group}.P_M-R_N-stage2.N2048"]]
    last = by_id[f"{group}.P_M-R_N.N2048"]
    assert [a.label for a in [*chain, last]] == ["P_M-R_N[stage1]", "P_M-R_N[stage2]", "P_M-R_N"]
    assert [a.stage for a in [*chain, last]] == ["stage1", "stage2", None]
    assert last.chain == [chain[0].id, chain[1].id] and chain[1].chain == [chain[0].id]
    assert [a.depends_on for a in [*chain, last]] == [["parent"], [chain[0].id], [chain[1].id]]
    # 8 steps shared by 3 stages in whole steps (the later stages take the extra ones): 2 + 3 + 3.
    assert [a.train_tokens for a in [*chain, last]] == [2 * STEP, 3 * STEP, 3 * STEP]
    sources = [by_id["parent"].run_dir, chain[0].run_dir, chain[1].run_dir]
    parts = []
    for arm, ratio, source in zip([*chain, last], [0.2, 0.4, 0.6], sources, strict=True):
        args = _init_args(arm)
        # Each stage prunes the previous stage's export at its ratio of the parent's weights, same pattern.
        assert (args["parent"], args["ratio"], args["pattern"], args["control"]) == (
            str(source / "export"),
            ratio,
            "unstructured",
            "none",
        )
        assert arm.kind == "sparse" and arm.pattern == "unstructured" and arm.uses_parent_weights
        # ... and keeps its mask while it retrains, as a one-shot sparse P_M-R_N does.
        assert [c["init_args"]["mask_source"] for c in _mask_callbacks(arm)] == ["module"]
        data = arm.config["data"]["init_args"]
        assert "calib" in data["slices"]  # each stage calibrates on the calibration slice
        parts.append(data["slices"][data["train_slice"]])
    # The stages read consecutive, disjoint parts of the retraining slice.
    assert [(p["start"], p["end"]) for p in parts] == [(131072, 163840), (163840, 212992), (212992, 262144)]
    # The scratch and control arms take the one-shot mask of the parent at the last ratio.
    for label, control in (("S_N", "reinit"), ("S_N-random_same_mask", "random_same_mask")):
        args = _init_args(by_id[f"wanda-unstructured-0.6.{label}.N2048"])
        assert (args["parent"], args["ratio"], args["control"]) == (
            str(by_id["parent"].run_dir / "export"),
            0.6,
            control,
        )


def test_a_staged_sparse_method_shares_its_scratch_arms_with_the_one_shot_prune_at_its_last_ratio(tmp_path):
    methods = [{"method": "magnitude", "ratios": [0.5]}, {"method": "magnitude", "stages": [0.3, 0.5]}]
    arms = expand_study(_spec(tmp_path, methods, arms=["S_N", "P_M-R_N"]))
    ids = [a.id for a in arms]
    assert ids.count("magnitude-unstructured-0.5.S_N.N2048") == 1
    assert "magnitude-unstructured-0.5.P_M-R_N.N2048" in ids
    assert "magnitude-unstructured-0.3-0.5.P_M-R_N.N2048" in ids


# ------------------------------------------------------------------------------------------------ ledger
def test_the_ledger_sums_calibration_and_training_over_the_stages(tmp_path):
    methods = [{"method": "wanda", "stages": [0.3, 0.5]}, {"method": "magnitude", "stages": [0.3, 0.5]}]
    spec = _spec(tmp_path, methods, arms=["S_N", "P_M-R_N"])
    ledger = build_ledger(spec, expand_study(spec), measured=False)
    assert ledger.ok, [c for c in ledger.checks if not c.ok]
    entries = {e.arm: e for e in ledger.entries}
    wanda, magnitude = (
        entries["wanda-unstructured-0.3-0.5.P_M-R_N.N2048"],
        entries["magnitude-unstructured-0.3-0.5.P_M-R_N.N2048"],
    )
    # Token-matched with S_N: the chain retrains on N in all; each Wanda stage calibrates, magnitude reads no data.
    assert (wanda.train_tokens, wanda.calibration_tokens) == (2048, 2 * CALIBRATION_TOKENS)
    assert (magnitude.train_tokens, magnitude.calibration_tokens) == (2048, 0)
    stage1 = entries["wanda-unstructured-0.3-0.5.P_M-R_N-stage1.N2048"]
    assert (stage1.train_tokens, stage1.calibration_tokens) == (1024, CALIBRATION_TOKENS)
    # Each stage calibrates a model of the parent's shape (a sparse stage keeps every shape).
    assert wanda.flops["calibration"] == 2 * stage1.flops["calibration"] > 0
    assert entries["wanda-unstructured-0.5.S_N.N2048"].train_tokens == 2048
    checks = {c.check for c in ledger.checks}
    assert "P_M-R_N[stage1].calibration disjoint from P_M-R_N.train" in checks


# ------------------------------------------------------------------------------------------------ refusals
def test_sparse_stages_that_cannot_tighten_a_mask_fail_before_any_run(tmp_path):
    message = _problems(
        tmp_path,
        [
            {"method": "wanda", "stages": [0.5, 0.3]},
            {"method": "wanda", "stages": [0.5, 0.5], "pattern": "2:4"},
            {"method": "sparsegpt", "stages": [0.3, 0.5]},
            {"method": "magnitude", "stages": [0.3, 0.5], "ratios": [0.6]},
            {"method": "sheared", "stages": [0.3, 0.5]},
        ],
    )
    assert "methods[0] (wanda): stages=[0.5, 0.3] must list two or more increasing ratios" in message
    assert "methods[1] (wanda): stages need pattern unstructured; pattern '2:4' prunes a fixed share N/M" in message
    assert "methods[2] (sparsegpt): sparsegpt cannot prune in stages: its weight update revives" in message
    assert "methods[3] (magnitude): with stages, the arm's ratio is the last stage's (0.5)" in message
    assert "methods[4] (sheared): stages applies to one-shot structured and sparse methods" in message
    short = _problems(tmp_path, [{"method": "wanda", "stages": [0.3, 0.5]}], retrain_tokens=[STEP])
    assert "fewer than the 2 stages" in short


# ------------------------------------------------------------------------------------------------ tightening
def _save_dense(path: Path) -> Path:
    make_tiny_llama(vocab_size=TEST_VOCAB).save_pretrained(path, safe_serialization=True)
    return path


def _pruned_fraction(masks: dict[str, torch.Tensor]) -> float:
    return sum(int((~k).sum()) for k in masks.values()) / sum(k.numel() for k in masks.values())


def _retrain(model, masks: dict[str, torch.Tensor], seed: int = 7) -> None:
    """Stand-in for retraining under the mask: every kept weight moves, every pruned weight stays exactly 0."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, keep in masks.items():
            noise = torch.randn(params[name].shape, generator=generator) * params[name].std()
            params[name].add_(noise).mul_(keep)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_a_second_stage_keeps_every_zero_of_the_first_and_ends_at_its_ratio(method, tiny_data, tmp_path):
    calibration = {"slice": "train", "nsamples": 4, "seqlen": 32, "seed": 0}
    dense = _save_dense(tmp_path / "dense")
    first = SparsePrune(parent=str(dense), method=method, ratio=0.3, calibration=calibration).build(data=tiny_data)
    assert first.record["parent_sparsity"] is None
    _retrain(first.model, first.masks)
    stage1 = save_sparse(first.model, first.masks, first.record, tmp_path / "stage1")

    second = SparsePrune(parent=str(stage1), method=method, ratio=0.5, calibration=calibration).build(data=tiny_data)
    parent_masks = load_masks(stage1)
    assert sorted(second.masks) == sorted(parent_masks)
    for name, keep in second.masks.items():
        assert not (keep & ~parent_masks[name]).any(), f"{name}: stage 2 revived a weight stage 1 pruned"
        assert (~keep).float().mean().item() == 0.5  # half of each matrix of the original parent, exactly
    assert _pruned_fraction(second.masks) == 0.5
    assert second.record["sparsity"]["overall"] == 0.5
    assert second.record["parent_sparsity"] == pytest.approx(_pruned_fraction(parent_masks))
    weights = dict(second.model.named_parameters())
    assert all((weights[name][~keep] == 0).all() for name, keep in second.masks.items())


def test_a_ratio_below_the_parent_sparsity_is_refused_before_calibrating(tmp_path):
    dense = _save_dense(tmp_path / "dense")
    first = SparsePrune(parent=str(dense), method="magnitude", ratio=0.5).build()
    stage1 = save_sparse(first.model, first.masks, first.record, tmp_path / "stage1")
    with pytest.raises(ValueError, match=r"ratio=0.3 is below the sparsity of the parent .* Use ratio >= 0.5000"):
        # No data module: the refusal comes before any calibration window is drawn.
        SparsePrune(parent=str(stage1), method="wanda", ratio=0.3).build()


def test_parent_masks_outside_targets_are_refused(tmp_path):
    dense = _save_dense(tmp_path / "dense")
    first = SparsePrune(parent=str(dense), method="magnitude", ratio=0.3).build()
    stage1 = save_sparse(first.model, first.masks, first.record, tmp_path / "stage1")
    mlp_only = r"model\.layers\.\d+\.mlp\.(?:gate_proj|up_proj|down_proj)\.weight"
    with pytest.raises(ValueError, match=r"masks \[.*self_attn.*\]( \.\.\.)?, which targets=.* does not select"):
        SparsePrune(parent=str(stage1), method="magnitude", ratio=0.5, targets=mlp_only).build()


def test_a_stage_that_would_revive_pruned_weights_fails(tmp_path):
    """Ties: when kept weights are exactly 0 too, magnitude breaks ties towards the lower index, so a parent that
    pruned the last 30% of each matrix gets its first 50% pruned instead; the check refuses the result."""
    model = make_tiny_llama(vocab_size=TEST_VOCAB)
    first = SparsePrune(parent=str(_save_dense(tmp_path / "dense")), method="magnitude", ratio=0.3).build()
    masks = {}
    params = dict(model.named_parameters())
    for name, keep in first.masks.items():
        flat = torch.ones(keep.numel(), dtype=torch.bool)
        flat[int(0.7 * keep.numel()) :] = False
        masks[name] = flat.reshape(keep.shape)
        with torch.no_grad():
            params[name].zero_()
    stage1 = save_sparse(model, masks, first.record, tmp_path / "stage1")
    with pytest.raises(ValueError, match=r"the new mask does not contain the pruned weights of the sparse parent"):
        SparsePrune(parent=str(stage1), method="magnitude", ratio=0.5).build()


def test_check_tightened_names_the_matrix_and_the_revived_count():
    parent = {"w": torch.tensor([[True, False, True, False]])}
    check_tightened(parent, {"w": torch.tensor([[True, False, False, False]])}, "p")
    with pytest.raises(ValueError, match=r"w keeps 1 weight\(s\) the parent pruned"):
        check_tightened(parent, {"w": torch.tensor([[False, True, True, False]])}, "p")
    with pytest.raises(ValueError, match=r"w has no new mask"):
        check_tightened(parent, {}, "p")


@pytest.mark.slow
def test_micro_study_trains_wanda_in_two_stages(embedded_cache, tmp_path):
    """A real study: Wanda 0.3 then 0.5, each stage retrained under its mask; the final export is exactly 50% sparse,
    keeps every zero of stage 1, the chain spends N tokens and every ledger check passes."""
    from test_study_new_methods import study_in_subprocess

    study = micro_study(
        tmp_path / "out",
        methods=[{"method": "wanda", "pattern": "unstructured", "stages": [0.3, 0.5]}],
        arms=["S_N", "P_M-R_N"],
    )
    _, results = study_in_subprocess(study, tmp_path)
    rows = {r["arm"]: r for r in results["arms"]}
    assert all(r["finished"] for r in rows.values())
    assert {c["status"] for c in results["ledger"]["checks"]} == {"ok"}
    first = tmp_path / "out" / "runs" / "wanda-unstructured-0.3-0.5.P_M-R_N-stage1.N2048" / "export"
    last = tmp_path / "out" / "runs" / "wanda-unstructured-0.3-0.5.P_M-R_N.N2048" / "export"
    stage1, final = load_masks(first), load_masks(last)
    assert stage1.keys() == final.keys()
    kept = sum(int(m.sum()) for m in final.values())
    total = sum(m.numel() for m in final.values())
    assert total - kept == round(0.5 * total)
    for name, mask in final.items():
        assert not (mask & ~stage1[name]).any(), name  # no weight pruned in stage 1 comes back
    entries = {e["arm"]: e for e in results["ledger"]["entries"]}
    assert entries["wanda-unstructured-0.3-0.5.P_M-R_N.N2048"]["train_tokens"] == 2048
