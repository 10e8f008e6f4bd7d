"""OWL per-layer ratios (`layer_ratios: owl`) for magnitude, Wanda and SparseGPT on a tiny random Llama.

Invariants a user relies on: the model prunes exactly `round(ratio * target weights)`; every layer stays within
`ratio +- lambda`; the layer holding planted outlier activations keeps the most weights; lambda 0 is the uniform
mask; N:M patterns and bad hyperparameters are refused, with the argument named, before the model changes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TEST_VOCAB, make_tiny_llama

from litprune.cli.prune import pruned_init_for_fit
from litprune.inits.pruned import PRUNING_RECORD
from litprune.inits.sparse import SparsePrune
from litprune.pruning.owl import (
    largest_remainder,
    owl_layer_ratios,
    plan_pruned_counts,
    pruned_counts_mask,
)
from litprune.pruning.patterns import unstructured_mask
from litprune.pruning.sparse import prune_sparse
from litprune.pruning.targets import find_targets

LAMBDA = 0.08
SMALL_CALIBRATION = {"slice": "train", "nsamples": 4, "seqlen": 32, "seed": 3}


def _pruned_and_total(masks: dict[str, torch.Tensor]) -> tuple[int, int]:
    return sum(int((~keep).sum()) for keep in masks.values()), sum(keep.numel() for keep in masks.values())


def _layer_of(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0])


def _per_layer_sparsity(masks: dict[str, torch.Tensor]) -> dict[int, float]:
    counts: dict[int, list[int]] = {}
    for name, keep in masks.items():
        entry = counts.setdefault(_layer_of(name), [0, 0])
        entry[0] += int((~keep).sum())
        entry[1] += keep.numel()
    return {index: pruned / numel for index, (pruned, numel) in sorted(counts.items())}


def _plant_outliers(model, layer: int, channels: int = 4, scale: float = 40.0) -> None:
    """Make a few input channels of every linear in `layer` huge: its Wanda scores get many outliers."""
    block = model.model.layers[layer]
    with torch.no_grad():
        block.input_layernorm.weight[:channels] *= scale  # inputs of q/k/v_proj
        block.post_attention_layernorm.weight[:channels] *= scale  # inputs of gate/up_proj


# ---------------------------------------------------------------------------------------------- the pure rule


def test_owl_ratios_follow_the_paper_and_stay_within_lambda():
    # A symmetric D: min-max to [0, 2 lambda], minus the mean -> deviations -0.08, -0.0267, +0.0267, +0.08.
    ratios, shrink = owl_layer_ratios({0: 0.01, 1: 0.02, 2: 0.03, 3: 0.04}, ratio=0.7, lam=LAMBDA)
    assert shrink == 1.0
    expected = [0.78, 0.7 + 0.08 / 3, 0.7 - 0.08 / 3, 0.62]
    assert [ratios[i] for i in range(4)] == pytest.approx(expected, abs=1e-12)

    # A skewed D: the paper's deviations (-0.04, -0.04, -0.04, +0.12) leave the band; they shrink to it.
    ratios, shrink = owl_layer_ratios({0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0}, ratio=0.7, lam=LAMBDA)
    assert shrink == pytest.approx(2 / 3)
    assert ratios[3] == pytest.approx(0.62) and ratios[0] == pytest.approx(0.7 + 0.08 / 3)
    assert sum(ratios.values()) / 4 == pytest.approx(0.7, abs=1e-12)

    # Unequal layer sizes: the size-weighted mean of the ratios is the target.
    sizes = {0: 100, 1: 300, 2: 50}
    ratios, _ = owl_layer_ratios({0: 0.2, 1: 0.05, 2: 0.01}, ratio=0.5, lam=0.1, sizes=sizes)
    assert sum(ratios[i] * sizes[i] for i in sizes) / 450 == pytest.approx(0.5, abs=1e-12)
    assert ratios[0] < ratios[1] < ratios[2] and all(abs(r - 0.5) <= 0.1 + 1e-12 for r in ratios.values())

    # Equal shares or lambda 0: every layer at the target.
    assert owl_layer_ratios({0: 0.3, 1: 0.3}, ratio=0.6, lam=LAMBDA)[0] == {0: 0.6, 1: 0.6}
    assert owl_layer_ratios({0: 0.1, 1: 0.3}, ratio=0.6, lam=0.0)[0] == {0: 0.6, 1: 0.6}


def test_counts_are_exact_and_each_group_prunes_its_lowest_scores():
    assert largest_remainder([1.5, 1.5, 1.0], 4) == [2, 1, 1]  # the tie goes to the earlier quota
    assert largest_remainder([0.0, 2.7, 0.3], 3) == [0, 3, 0]
    groups = {"a": [10, 10, 10], "b": [7], "c": [64] * 3}
    layer_ratios = {0: 0.6, 1: (0.55 * 229 - 0.6 * 37) / 192}  # 37 and 192 weights: weighted mean 0.55
    plan = plan_pruned_counts(0.55, layer_ratios, groups, {"a": 0, "b": 0, "c": 1})
    assert plan.total == 229 and plan.pruned == round(0.55 * 229)
    assert sum(plan.per_layer.values()) == plan.pruned
    assert sum(sum(c) for c in plan.per_group.values()) == plan.pruned
    for name, counts in plan.per_group.items():  # each count is the floor or ceiling of its quota
        layer_ratio = layer_ratios[0 if name in "ab" else 1]
        assert all(abs(c - layer_ratio * size) < 1 + 1e-9 for c, size in zip(counts, groups[name], strict=True))

    with pytest.raises(ValueError, match=r"weight their mean by each layer's target weights"):
        plan_pruned_counts(0.55, {0: 0.6, 1: 0.48}, groups, {"a": 0, "b": 0, "c": 1})

    scores = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pruned_counts_mask(scores, [5] * 6), unstructured_mask(scores, 5 / 16, per_row=True))
    keep = pruned_counts_mask(scores, [0, 1, 2, 3, 4, 16])
    assert (~keep).sum(dim=1).tolist() == [0, 1, 2, 3, 4, 16]
    for row in range(5):
        if (~keep[row]).any():
            assert scores[row][~keep[row]].max() <= scores[row][keep[row]].min()


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt"])
@pytest.mark.parametrize("ratio", [0.7, 0.63])
def test_owl_prunes_exactly_the_target_count_and_keeps_layers_within_lambda(method, ratio, token_windows):
    model = make_tiny_llama()
    before = {name: m.weight.detach().clone() for name, m in find_targets(model).items()}
    result = prune_sparse(model, method, ratio, windows=token_windows, layer_ratios="owl", progress=False)

    pruned, total = _pruned_and_total(result.masks)
    assert total == 4 * 36864 and pruned == round(ratio * total)
    assert result.sparsity == pruned / total
    record = result.record["layer_ratios"]
    assert record["rule"] == "owl" and record["lambda"] == LAMBDA and record["threshold_m"] == 5.0
    assert (record["total"], record["total_pruned"]) == (total, pruned)
    assert set(record["outlier_share"]) == set(record["ratio"]) == set(record["pruned"]) == {"0", "1", "2", "3"}
    assert result.record["calibration"]["nsamples"] == 8  # magnitude too: OWL reads the windows

    achieved = _per_layer_sparsity(result.masks)
    for index, sparsity in achieved.items():
        assert abs(record["ratio"][str(index)] - ratio) <= LAMBDA + 1e-12
        assert abs(sparsity - ratio) <= LAMBDA + 1 / 36864  # one weight of rounding at most
        assert round(sparsity * 36864) == record["pruned"][str(index)]
    assert len({round(s, 6) for s in achieved.values()}) > 1  # the random model's layers do differ

    for name, module in find_targets(model).items():
        keep = result.masks[f"{name}.weight"]
        assert int(module.weight[~keep].count_nonzero()) == 0
        if method != "sparsegpt":  # SparseGPT compensates the survivors
            assert torch.equal(module.weight[keep], before[name][keep])
        if method == "wanda":  # Wanda's group stays the row: rows of a matrix differ by one pruned entry at most
            per_row = (~keep).sum(dim=1)
            assert int(per_row.max() - per_row.min()) <= 1, name


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_the_layer_with_more_outliers_keeps_more_weights(method, token_windows):
    model = make_tiny_llama()
    _plant_outliers(model, layer=2)
    result = prune_sparse(model, method, 0.7, windows=token_windows, layer_ratios="owl", progress=False)
    record = result.record["layer_ratios"]
    shares = {int(i): share for i, share in record["outlier_share"].items()}
    achieved = _per_layer_sparsity(result.masks)
    assert max(shares, key=shares.get) == 2 and min(achieved, key=achieved.get) == 2
    assert achieved[2] == pytest.approx(0.7 - LAMBDA, abs=1 / 36864)  # the largest share gets the full lambda
    # More outliers, lower ratio, layer by layer.
    by_share = sorted(shares, key=lambda i: -shares[i])
    assert [record["ratio"][str(i)] for i in by_share] == sorted(record["ratio"].values())


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_lambda_zero_is_the_uniform_mask(method, token_windows):
    uniform_model, owl_model = make_tiny_llama(), make_tiny_llama()
    _plant_outliers(uniform_model, 1)
    _plant_outliers(owl_model, 1)
    uniform = prune_sparse(uniform_model, method, 0.5, windows=token_windows, progress=False)
    owl = prune_sparse(
        owl_model, method, 0.5, windows=token_windows, layer_ratios="owl", owl={"lambda": 0}, progress=False
    )
    assert uniform.record["layer_ratios"] == {"rule": "uniform"}
    assert set(owl.record["layer_ratios"]["ratio"].values()) == {0.5}
    for name, keep in uniform.masks.items():
        assert torch.equal(owl.masks[name], keep), name
    for a, b in zip(uniform_model.parameters(), owl_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_layers_of_different_sizes_still_hit_the_target_exactly(token_windows):
    model = make_tiny_llama()
    targets = r"model\.layers\.[01]\.mlp\..*\.weight|model\.layers\.[23]\.self_attn\.[qk]_proj\.weight"
    result = prune_sparse(
        model, "magnitude", 0.55, windows=token_windows, targets=targets, layer_ratios="owl", owl={"lambda": 0.2}
    )
    pruned, total = _pruned_and_total(result.masks)
    assert total == 2 * 3 * 8192 + 2 * (4096 + 2048) and pruned == round(0.55 * total)
    ratios = result.record["layer_ratios"]["ratio"]
    sizes = {"0": 24576, "1": 24576, "2": 6144, "3": 6144}
    assert math.fsum(ratios[i] * sizes[i] for i in sizes) / total == pytest.approx(0.55, abs=1e-12)
    assert all(abs(r - 0.55) <= 0.2 + 1e-12 for r in ratios.values())


# ------------------------------------------------------------------------------------------------- refusals


def test_nm_patterns_are_refused_before_the_model_changes(token_windows):
    model = make_tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"layer_ratios='owl' gives each layer its own ratio, but pattern 2:4"):
        prune_sparse(model, "wanda", pattern="2:4", windows=token_windows, layer_ratios="owl")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"owl": {"lamda": 0.1}}, r"Unknown owl option 'lamda'\. Did you mean 'lambda'\?"),
        ({"owl": {"lambda": -0.1}}, r"owl\.lambda=-0\.1 must be a number in \[0, 1\)"),
        ({"owl": {"lambda": True}}, r"owl\.lambda=True must be a number"),
        ({"owl": {"lambda": 0.4}}, r"owl\.lambda=0\.4 lets a layer's ratio range over \[0\.3, 1\.1\].*ratio=0\.7"),
        ({"owl": {"threshold_m": 0}}, r"owl\.threshold_m=0 must be a positive number"),
        ({"owl": {"threshold_m": "5"}}, r"owl\.threshold_m='5' must be a positive number"),
        ({"owl": 0.08}, r"owl=0\.08 must be a mapping such as \{lambda: 0\.08, threshold_m: 5\}"),
        ({"layer_ratios": "owll"}, r"Unknown layer_ratios 'owll'\. Did you mean 'owl'\?"),
        ({"layer_ratios": "uniform", "owl": {"lambda": 0.1}}, r"layer_ratios='uniform' ignores it"),
    ],
)
def test_bad_owl_arguments_are_rejected_with_their_names(kwargs, message, token_windows):
    kwargs = {"layer_ratios": "owl", **kwargs}
    with pytest.raises(ValueError, match=message):
        prune_sparse(make_tiny_llama(), "wanda", 0.7, windows=token_windows, **kwargs)
    with pytest.raises(ValueError, match=message):
        SparsePrune("runs/not_trained_yet", "wanda", ratio=0.7, **kwargs)


def test_magnitude_with_owl_needs_windows_and_decoder_layer_targets(token_windows):
    with pytest.raises(ValueError, match=r"layer_ratios='owl' needs calibration data.*magnitude pruning too"):
        prune_sparse(make_tiny_llama(), "magnitude", 0.5, layer_ratios="owl")
    with pytest.raises(ValueError, match=r"one ratio per decoder layer and cannot place \['lm_head'\]"):
        prune_sparse(
            make_tiny_llama(), "magnitude", 0.5, windows=token_windows, targets=r"lm_head\.weight", layer_ratios="owl"
        )
    assert SparsePrune("runs/not_trained_yet", "magnitude", layer_ratios="owl").needs_data
    assert not SparsePrune("runs/not_trained_yet", "magnitude").needs_data


# ------------------------------------------------------------------------------------------------- the init


def test_sparse_prune_init_applies_owl_and_records_it(tmp_path, tiny_data):
    parent = tmp_path / "parent"
    make_tiny_llama(vocab_size=TEST_VOCAB).save_pretrained(parent)
    init = SparsePrune(
        str(parent),
        "magnitude",
        ratio=0.7,
        layer_ratios="owl",
        owl={"lambda": 0.05, "threshold_m": 3},
        calibration=SMALL_CALIBRATION,
    )
    result = init.build(None, tiny_data)
    pruned, total = _pruned_and_total(result.masks)
    assert pruned == round(0.7 * total)
    record = result.record
    assert record["strategy"] == "sparse_prune" and record["layer_ratios"]["rule"] == "owl"
    assert (record["layer_ratios"]["lambda"], record["layer_ratios"]["threshold_m"]) == (0.05, 3.0)
    assert all(abs(r - 0.7) <= 0.05 + 1e-12 for r in record["layer_ratios"]["ratio"].values())
    assert record["calibration"]["slice"] == "train" and result.tokens == {"calibration": 4 * 32}


def test_a_pruned_model_of_uniform_ratios_is_not_taken_for_an_owl_run(tmp_path):
    stored = {"parent": "runs/p", "method": "wanda", "ratio": 0.7, "pattern": "unstructured"}  # an older record
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / PRUNING_RECORD).write_text(json.dumps({"init": {"init_args": stored}}), encoding="utf-8")
    owl = SparsePrune("runs/p", "wanda", ratio=0.7, layer_ratios="owl")
    with pytest.raises(ValueError, match=r"other settings \(layer_ratios: 'uniform' there, 'owl' in this run\)"):
        pruned_init_for_fit(owl, 4, False, None, tmp_path, launches_processes=False)
    uniform = SparsePrune("runs/p", "wanda", ratio=0.7)
    assert pruned_init_for_fit(uniform, 4, False, None, tmp_path, launches_processes=False) is not None
