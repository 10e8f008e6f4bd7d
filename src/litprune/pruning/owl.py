"""Outlier-weighted layer-wise sparsity (OWL, Yin et al. 2023): one pruning ratio per decoder layer.

At high unstructured ratios a single ratio for every layer hurts the layers that hold many outlier weights most.
OWL gives each decoder layer l its own ratio from its share of outliers, keeping the model's overall ratio:

1. Outlier share. With the Wanda score `A_ij = |W_ij| * ||X_j||_2` of every target matrix (calibration
   activations of the *dense* model), `D_l` = the fraction of layer l's target weights whose score exceeds
   `threshold_m` (the paper's M, default 5) times the mean score *of their matrix* (`outlier_count`). The
   mean is taken per matrix, so a matrix whose inputs are large overall (e.g. `down_proj`) does not count as
   an outlier wholesale; the official code averages over the layer's matrices concatenated.
2. Ratios (`owl_layer_ratios`). `D` is min-max normalised to `[0, 2 * lambda]` (lambda default 0.08) and the
   keep ratio is `k_l = D_l - mean(D) + (1 - ratio)`, i.e. sparsity `s_l = ratio - (D_l - mean(D))`: layers
   with more outliers keep more weights. Two choices make the paper's two promises hold exactly:
   - the mean is weighted by the number of target weights per layer, so `sum_l s_l * n_l = ratio * sum_l n_l`
     even when layers hold different numbers of targets (with equal layers it is the paper's plain mean);
   - when a deviation `D_l - mean(D)` would leave `[-lambda, lambda]` (a skewed `D`: the min-max range is
     `2 * lambda` but the mean need not sit in its middle), all deviations are scaled down by one common factor
     (`shrink` in the record) so the largest is exactly lambda. The order of the layers and the weighted mean
     are unchanged; for a symmetric `D` (or any `D` already inside the band) nothing changes.
   If every layer has the same share (or lambda is 0) every layer gets `ratio`.
3. Exact counts (`plan_pruned_counts`). The model-wide number of pruned weights is `round(ratio * total)`
   (Python's `round`: nearest, ties to even). It is split over layers by largest remainder on the quotas
   `s_l * n_l`, then inside each layer over the comparison groups of the method (Wanda: each output row;
   magnitude: each matrix; SparseGPT: each `rows x blocksize` block) by largest remainder on the quotas
   `s_l * group size`. Every count is the floor or the ceiling of its quota, ties in the remainder go to the
   earlier layer or group, and each group still prunes its own lowest scores (`pruned_counts_mask`).
   With lambda 0 and `ratio * group size` whole for every group this is exactly the uniform mask.

N:M patterns fix N/M in every group of M, so they cannot take a per-layer ratio: `check_layer_ratios` refuses
the combination. OWL needs activations for its outlier statistic, so with data-free magnitude pruning
`layer_ratios: owl` still runs one calibration pass; the magnitude masks themselves stay data-free. This module
holds the rule only (tensors and numbers); `litprune.pruning.sparse.prune_sparse` runs the calibration pass and
applies the counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from litprune.pruning.patterns import SparsityPattern
from litprune.utils.suggest import did_you_mean

LAYER_RATIOS: dict[str, str] = {
    "uniform": "every target pruned at `ratio` (the methods' reference rule)",
    "owl": "a ratio per decoder layer from its share of outlier weights (OWL), the model's overall ratio exact",
}
"""The rules for per-layer pruning ratios, by the name `layer_ratios` takes."""

OWL_DEFAULTS: dict[str, float] = {"lambda": 0.08, "threshold_m": 5.0}
"""The OWL hyperparameters and their defaults (the paper's lambda = 0.08 and M = 5), by their YAML keys."""


@dataclass(frozen=True)
class OWLSettings:
    """The OWL hyperparameters.

    Attributes:
        lam: largest deviation of a layer's ratio from the target ratio (`lambda` in YAML and in the paper).
        threshold_m: a weight is an outlier when its Wanda score exceeds `threshold_m` times the mean score of
            its matrix (the paper's M).
    """

    lam: float = OWL_DEFAULTS["lambda"]
    threshold_m: float = OWL_DEFAULTS["threshold_m"]

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> OWLSettings:
        """Read `{lambda: ..., threshold_m: ...}` (either key may be left out for its default).

        Raises:
            ValueError: unknown keys (with a close match suggested) or out-of-range values, all listed.
        """
        problems = _owl_option_problems(options)
        if problems:
            raise ValueError("owl options are invalid: " + " ".join(problems))
        merged = {**OWL_DEFAULTS, **(options or {})}
        return cls(lam=float(merged["lambda"]), threshold_m=float(merged["threshold_m"]))

    def as_record(self) -> dict[str, float]:
        """The settings under their YAML keys."""
        return {"lambda": self.lam, "threshold_m": self.threshold_m}


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _owl_option_problems(options: Any) -> list[str]:
    if options is None:
        return []
    if not isinstance(options, Mapping):
        return [f"owl={options!r} must be a mapping such as {{lambda: 0.08, threshold_m: 5}}."]
    problems = []
    for key in options:
        if key not in OWL_DEFAULTS:
            hint = did_you_mean(key, OWL_DEFAULTS, cutoff=0.5)
            problems.append(f"Unknown owl option {key!r}.{hint} Available: {', '.join(OWL_DEFAULTS)}.")
    lam = options.get("lambda", OWL_DEFAULTS["lambda"])
    if not _is_number(lam) or not 0 <= lam < 1:
        problems.append(
            f"owl.lambda={lam!r} must be a number in [0, 1): the largest deviation of a layer's ratio from the "
            "target (the paper uses 0.08; 0 gives every layer the target)."
        )
    threshold_m = options.get("threshold_m", OWL_DEFAULTS["threshold_m"])
    if not _is_number(threshold_m) or threshold_m <= 0:
        problems.append(
            f"owl.threshold_m={threshold_m!r} must be a positive number: a weight is an outlier when its score "
            "exceeds threshold_m times its matrix's mean score (the paper uses 5)."
        )
    return problems


def check_layer_ratios(
    layer_ratios: Any, owl: Any, pattern: SparsityPattern | None, ratio: float | None
) -> tuple[list[str], OWLSettings | None]:
    """Validate `layer_ratios` and `owl` together with the pattern and ratio they apply to.

    Args:
        layer_ratios: `"uniform"` or `"owl"` (see `LAYER_RATIOS`).
        owl: the OWL options `{lambda, threshold_m}` or None for the defaults; only with `layer_ratios="owl"`.
        pattern: the parsed sparsity pattern, None when it did not parse (its error is reported elsewhere).
        ratio: the target pruned fraction, None when unset.

    Returns:
        `(problems, settings)`: every problem as a sentence (empty when all is well) and the OWL settings
        (None for `"uniform"` or when the options are invalid).
    """
    if layer_ratios not in LAYER_RATIOS:
        hint = did_you_mean(layer_ratios, LAYER_RATIOS, cutoff=0.5)
        return [f"Unknown layer_ratios {layer_ratios!r}.{hint} Available: {', '.join(LAYER_RATIOS)}."], None
    if layer_ratios == "uniform":
        if owl is not None:
            return [
                f"owl={owl!r} is set but layer_ratios='uniform' ignores it. Set layer_ratios: owl, or drop owl."
            ], None
        return [], None
    problems = _owl_option_problems(owl)
    if pattern is not None and pattern.is_nm:
        problems.append(
            f"layer_ratios='owl' gives each layer its own ratio, but pattern {pattern} prunes exactly N/M = "
            f"{pattern.ratio:g} of every group. Use pattern: unstructured with OWL, or layer_ratios: uniform."
        )
    if problems:
        return problems, None
    settings = OWLSettings.from_options(owl)
    if _is_number(ratio) and 0 <= ratio < 1 and not (0 <= ratio - settings.lam and ratio + settings.lam < 1):
        problems.append(
            f"owl.lambda={settings.lam:g} lets a layer's ratio range over [{ratio - settings.lam:g}, "
            f"{ratio + settings.lam:g}] around ratio={ratio:g}, outside [0, 1). Use a lambda at most "
            f"{ratio:g} and below {1 - ratio:g}."
        )
        return problems, None
    return problems, settings


def outlier_count(scores: Tensor, threshold_m: float) -> int:
    """Number of entries of one matrix's scores above `threshold_m` times their mean (OWL's outliers)."""
    scores = scores.float()
    return int((scores > threshold_m * scores.mean()).sum())


def owl_layer_ratios(
    shares: Mapping[int, float], ratio: float, lam: float, sizes: Mapping[int, int] | None = None
) -> tuple[dict[int, float], float]:
    """The OWL sparsity of each layer from its outlier share (see the module docstring, step 2).

    Args:
        shares: decoder-layer index -> outlier share `D_l` (any non-negative scale; only differences matter).
        ratio: the target pruned fraction of the model, in [0, 1).
        lam: the largest deviation of a layer's ratio from `ratio` (the paper's lambda), with
            `0 <= ratio - lam` and `ratio + lam < 1`.
        sizes: layer index -> number of target weights, the weights of the mean; default: equal.

    Returns:
        `(ratios, shrink)`: layer index -> pruned fraction (higher share, lower ratio), and the factor in (0, 1]
        the paper's deviations were scaled by to stay within `lam`.

    Raises:
        ValueError: no layers, a negative or non-finite share, sizes that miss a layer or are not positive, or
            `lam` and `ratio` outside the ranges above.
    """
    if not shares:
        raise ValueError("shares is empty: OWL needs the outlier share of at least one decoder layer.")
    if any(not math.isfinite(share) or share < 0 for share in shares.values()):
        raise ValueError(f"Outlier shares must be finite and non-negative, got {dict(shares)}.")
    if not 0 <= ratio - lam or not ratio + lam < 1:
        raise ValueError(f"lam={lam!r} with ratio={ratio!r} leaves [0, 1); lam must be at most min(ratio, 1 - ratio).")
    sizes = {index: 1 for index in shares} if sizes is None else dict(sizes)
    if set(sizes) != set(shares) or any(size <= 0 for size in sizes.values()):
        raise ValueError(f"sizes must give a positive weight count for every layer of shares {sorted(shares)}.")
    low, high = min(shares.values()), max(shares.values())
    if lam == 0 or high == low:
        return {index: float(ratio) for index in shares}, 1.0
    normalised = {index: (share - low) / (high - low) * 2 * lam for index, share in shares.items()}
    total = sum(sizes.values())
    mean = sum(normalised[index] * sizes[index] for index in shares) / total
    deviation = {index: value - mean for index, value in normalised.items()}
    largest = max(abs(value) for value in deviation.values())
    shrink = min(1.0, lam / largest)
    return {index: float(ratio) - shrink * deviation[index] for index in shares}, shrink


def largest_remainder(quotas: Sequence[float], total: int) -> list[int]:
    """Whole numbers in proportion to `quotas` that sum to exactly `total` (Hamilton's method).

    The quotas are scaled to sum to `total`; each gets its floor, and the units left over go one each to the
    largest fractional parts (ties to the earlier index). A zero quota always gets 0.

    Raises:
        ValueError: a negative quota, a negative total, or a positive total with all quotas 0.
    """
    if total < 0 or any(quota < 0 for quota in quotas):
        raise ValueError(f"largest_remainder needs non-negative quotas and total, got total={total}.")
    weight = math.fsum(quotas)
    if total == 0:
        return [0] * len(quotas)
    if weight == 0:
        raise ValueError(f"Cannot share total={total} over quotas that are all 0.")
    scaled = [quota * total / weight for quota in quotas]
    counts = [math.floor(value) for value in scaled]
    left = total - sum(counts)
    # Float rounding can put `left` one unit outside [0, len); the loops below absorb that.
    order = sorted((i for i in range(len(scaled)) if scaled[i] > 0), key=lambda i: (-(scaled[i] - counts[i]), i))
    while left > 0:
        for i in order[:left]:
            counts[i] += 1
        left = total - sum(counts)
    while left < 0:
        for i in [i for i in reversed(order) if counts[i] > 0][:-left]:
            counts[i] -= 1
        left = total - sum(counts)
    return counts


def total_pruned(ratio: float, total: int) -> int:
    """The number of weights a model-wide `ratio` prunes out of `total`: `round(ratio * total)`."""
    return round(ratio * total)


@dataclass(frozen=True)
class PrunedCounts:
    """How many weights OWL prunes, model-wide, per layer and per comparison group.

    Attributes:
        total: the target weights (prunable weights) of the model.
        pruned: `round(ratio * total)`, the exact number of weights pruned.
        per_layer: layer index -> pruned weights of that layer.
        per_group: target (module name) -> pruned entries of each of its comparison groups, in group order.
    """

    total: int
    pruned: int
    per_layer: dict[int, int]
    per_group: dict[str, list[int]]


def plan_pruned_counts(
    ratio: float,
    layer_ratios: Mapping[int, float],
    groups: Mapping[str, Sequence[int]],
    layer_of: Mapping[str, int],
) -> PrunedCounts:
    """Turn per-layer ratios into exact pruned counts per comparison group (module docstring, step 3).

    Args:
        ratio: the model-wide target pruned fraction.
        layer_ratios: layer index -> pruned fraction (e.g. from `owl_layer_ratios`); their mean weighted by the
            layers' target weights must be `ratio`.
        groups: target (module name) -> the sizes of its comparison groups, e.g. `[in_features] * out_features`
            for Wanda's rows.
        layer_of: target -> its decoder-layer index (a key of `layer_ratios`).

    Returns:
        The counts; `pruned` equals `round(ratio * total)` and every group's count lies within
        `[0, group size]`.

    Raises:
        ValueError: a target without a layer ratio, or layer ratios whose weighted mean is not `ratio` (they
            would move more than one weight).
    """
    missing = sorted(name for name in groups if layer_of.get(name) not in layer_ratios)
    if missing:
        raise ValueError(
            f"Targets {missing[:3]} have no layer ratio; layer_ratios covers layers {sorted(layer_ratios)}."
        )
    layers = sorted({layer_of[name] for name in groups})
    members = {index: [name for name in groups if layer_of[name] == index] for index in layers}
    sizes = {index: sum(sum(groups[name]) for name in members[index]) for index in layers}
    total = sum(sizes.values())
    pruned = total_pruned(ratio, total)
    planned = math.fsum(layer_ratios[index] * sizes[index] for index in layers)
    if abs(planned - ratio * total) > 1:
        raise ValueError(
            f"The layer ratios prune {planned:.1f} of {total} target weights on average, not ratio={ratio:g} of "
            "them; weight their mean by each layer's target weights (owl_layer_ratios(..., sizes=...))."
        )
    layer_counts = largest_remainder([layer_ratios[index] * sizes[index] for index in layers], pruned)
    per_layer = dict(zip(layers, layer_counts, strict=True))
    per_group: dict[str, list[int]] = {}
    for index in layers:
        flat = [(name, size) for name in members[index] for size in groups[name]]
        counts = largest_remainder([layer_ratios[index] * size for _, size in flat], per_layer[index])
        for (name, size), count in zip(flat, counts, strict=True):
            # Layer ratios stay below 1, so a quota never reaches a whole group; the clamp guards the invariant.
            per_group.setdefault(name, []).append(min(count, size))
    return PrunedCounts(total=total, pruned=pruned, per_layer=per_layer, per_group=per_group)


def pruned_counts_mask(scores: Tensor, counts: Sequence[int] | Tensor) -> Tensor:
    """Keep-mask pruning the `counts[g]` lowest scores of each row `g` of `scores` (True = keep).

    Each row is one comparison group (reshape a matrix to `[1, numel]` to compare it whole). Ties go to the lower
    index (stable sort), so with equal counts it is `patterns.unstructured_mask`'s mask.

    Args:
        scores: `[groups, size]` importance, higher is kept.
        counts: `[groups]` entries to prune per row, each in `[0, size]`.

    Raises:
        ValueError: `counts` has the wrong length or a count outside `[0, size]`.
    """
    counts = torch.as_tensor(counts, dtype=torch.long, device=scores.device).reshape(-1)
    groups, size = scores.shape
    if counts.numel() != groups or bool((counts < 0).any()) or bool((counts > size).any()):
        raise ValueError(
            f"counts must give one count in [0, {size}] for each of the {groups} groups, got {counts.tolist()[:8]}."
        )
    order = torch.argsort(scores, dim=1, stable=True)
    ranks_kept = torch.arange(size, device=scores.device).reshape(1, -1) >= counts.reshape(-1, 1)
    keep = torch.empty_like(scores, dtype=torch.bool)
    keep.scatter_(1, order, ranks_kept)
    return keep


def check_group_counts(counts: Mapping[str, Sequence[int]], groups: Mapping[str, Sequence[int]]) -> None:
    """Raise unless `counts` gives every target one count in `[0, size]` per comparison group.

    Args:
        counts: target (module name) -> entries to prune per comparison group.
        groups: target -> the sizes of its comparison groups, as the method defines them.

    Raises:
        ValueError: a target without counts, or a wrong number of counts or a count outside its group.
    """
    problems = []
    for name, sizes in groups.items():
        given = counts.get(name)
        if given is None:
            problems.append(f"{name}: no counts")
        elif len(given) != len(sizes):
            problems.append(f"{name}: {len(given)} counts for {len(sizes)} comparison groups")
        elif any(not 0 <= int(count) <= size for count, size in zip(given, sizes, strict=True)):
            problems.append(f"{name}: a count outside [0, group size]")
    if problems:
        raise ValueError("counts do not fit the targets' comparison groups: " + "; ".join(problems[:5]) + ".")
