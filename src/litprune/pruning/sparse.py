"""One call to sparsify a model: `prune_sparse(model, "wanda", 0.5, windows=...)`.

Every argument is checked before any work starts, and all problems are reported together. The result holds the
keep-masks keyed by *parameter* name (what a mask callback, an optimizer or `save_sparse` needs) and a JSON-ready
record of what was done: method, pattern, ratio, targets, calibration provenance and the achieved sparsity per
matrix, per decoder layer and overall. A YAML run describes the same call:

    method: sparsegpt
    ratio: 0.5
    pattern: "2:4"
    targets: '(?:.*\\.)?(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\\.weight'   # the default
    method_kwargs: {blocksize: 128, percdamp: 0.01}

Per-layer ratios (`layer_ratios`): `"uniform"` (the default) prunes every target at `ratio`, exactly the
methods' reference rule. `"owl"` gives each decoder layer its own ratio from its share of outlier weights
(`litprune.pruning.owl`), for unstructured patterns only; the model's pruned count is then exactly
`round(ratio * total target weights)`, split into exact counts per comparison group of the method. It costs one
extra calibration pass over the dense model for the outlier statistics, magnitude included (whose masks stay
data-free), so OWL always needs `windows`:

    method: wanda
    ratio: 0.7
    layer_ratios: owl
    owl: {lambda: 0.08, threshold_m: 5}     # the defaults; either key may be left out
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from litprune.pruning.calibration import InputNormStatistic, run_sequential
from litprune.pruning.magnitude import magnitude_groups, prune_magnitude
from litprune.pruning.owl import (
    OWLSettings,
    check_layer_ratios,
    outlier_count,
    owl_layer_ratios,
    plan_pruned_counts,
)
from litprune.pruning.patterns import SparsityPattern, parse_pattern
from litprune.pruning.sparsegpt import prune_sparsegpt, sparsegpt_groups
from litprune.pruning.targets import DEFAULT_TARGETS, decoder_layers, find_targets, layer_index_of
from litprune.pruning.wanda import prune_wanda, wanda_groups, wanda_scores
from litprune.utils.suggest import did_you_mean

METHODS = {"magnitude": prune_magnitude, "wanda": prune_wanda, "sparsegpt": prune_sparsegpt}
"""Sparse methods by registry name."""

METHOD_KWARGS: dict[str, set[str]] = {
    "magnitude": set(),
    "wanda": {"batch_size"},
    "sparsegpt": {"blocksize", "percdamp", "batch_size"},
}
CALIBRATED_METHODS = {"wanda", "sparsegpt"}


def comparison_groups(method: str, shape: Sequence[int], method_kwargs: dict[str, Any]) -> list[int]:
    """Sizes of the groups within which `method` ranks the entries of an `[out, in]` weight (unstructured).

    Wanda: each output row; magnitude: the whole matrix; SparseGPT: each `out x blocksize` block of columns.
    """
    if method == "wanda":
        return wanda_groups(shape)
    if method == "sparsegpt":
        return sparsegpt_groups(shape, method_kwargs.get("blocksize", 128))
    return magnitude_groups(shape)


def needs_windows(method: str, layer_ratios: str = "uniform") -> bool:
    """Whether pruning with `method` under `layer_ratios` reads calibration windows (OWL always does)."""
    return method in CALIBRATED_METHODS or layer_ratios == "owl"


@dataclass
class SparseResult:
    """What `prune_sparse` did.

    Attributes:
        masks: parameter name (e.g. `"model.layers.0.self_attn.q_proj.weight"`) -> bool keep-mask shaped like
            the weight, on the weight's device (True = keep).
        record: JSON-serialisable description: `method`, `pattern`, `ratio`, `targets`, `num_targets`,
            `method_kwargs`, `calibration` (None when no windows were read), `layer_ratios` and `sparsity`
            (`overall`, `per_layer` by decoder layer index, `per_matrix` by parameter name). `layer_ratios` is
            `{"rule": "uniform"}` or, for OWL, `{"rule": "owl", "lambda", "threshold_m", "outlier_share",
            "ratio", "shrink", "pruned", "total", "total_pruned"}`: per decoder layer index (as a string) the
            outlier share `D_l`, the rule's pruned fraction before rounding and the pruned weight count; `shrink`
            is the factor that kept the deviations within lambda; `total` the target weights and `total_pruned`
            `round(ratio * total)`. The per-layer entries are None at ratio 0, where nothing is computed.
    """

    masks: dict[str, Tensor]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Fraction of pruned entries over all masked weights."""
        return self.record["sparsity"]["overall"]


def _check_windows(windows: Any, model: nn.Module) -> str | None:
    if not isinstance(windows, Tensor) or windows.dim() != 2 or windows.numel() == 0:
        shape = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
        return f"windows must be a [nsamples, seqlen] LongTensor of token ids, got {shape}."
    if windows.dtype not in (torch.int64, torch.int32):
        return f"windows must hold integer token ids, got dtype {windows.dtype}."
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (int(windows.min()) < 0 or int(windows.max()) >= vocab):
        return (
            f"windows hold token ids in [{int(windows.min())}, {int(windows.max())}] but the model's vocabulary "
            f"has {vocab} entries. Tokenize the calibration text with the model's tokenizer."
        )
    return None


def _sparsity_record(masks: dict[str, Tensor], layers_prefix: str | None) -> dict[str, Any]:
    per_matrix: dict[str, float] = {}
    layer_counts: dict[int, list[int]] = {}
    pruned_total = numel_total = 0
    for name, keep in masks.items():
        pruned = int((~keep).sum())
        per_matrix[name] = pruned / keep.numel()
        pruned_total += pruned
        numel_total += keep.numel()
        index = layer_index_of(name, layers_prefix) if layers_prefix is not None else None
        if index is not None:
            counts = layer_counts.setdefault(index, [0, 0])
            counts[0] += pruned
            counts[1] += keep.numel()
    return {
        "overall": pruned_total / numel_total if numel_total else 0.0,
        "per_layer": {str(i): p / n for i, (p, n) in sorted(layer_counts.items())},
        "per_matrix": per_matrix,
    }


def _validate(
    model: nn.Module,
    method: str,
    ratio: float | None,
    pattern: str,
    windows: Tensor | None,
    targets: str,
    calibration: dict[str, Any] | None,
    method_kwargs: dict[str, Any],
    layer_ratios: str,
    owl: dict[str, Any] | None,
) -> tuple[SparsityPattern, dict[str, nn.Linear], str | None, OWLSettings | None]:
    """Check every argument of `prune_sparse`; raise one error listing all problems."""
    problems: list[str] = []
    if method not in METHODS:
        hint = did_you_mean(method, METHODS, n=2)
        raise ValueError(f"Unknown sparse method {method!r}; choose one of {sorted(METHODS)}.{hint}")

    parsed = None
    try:
        parsed = parse_pattern(pattern)
    except ValueError as err:
        problems.append(str(err))
    if parsed is not None:
        try:
            parsed.resolve_ratio(ratio)
        except ValueError as err:
            problems.append(str(err))
    owl_problems, settings = check_layer_ratios(layer_ratios, owl, parsed, ratio)
    problems.extend(owl_problems)
    # Methods that walk the decoder layers: the calibrated ones, and any method under OWL's per-layer ratios.
    layered = CALIBRATED_METHODS | ({method} if layer_ratios == "owl" else set())

    unknown = sorted(set(method_kwargs) - METHOD_KWARGS[method])
    if unknown:
        allowed = sorted(METHOD_KWARGS[method]) or "none"
        problems.append(f"Unknown option(s) {unknown} for method {method!r}; it accepts: {allowed}.")

    if needs_windows(method, layer_ratios):
        if windows is None and method in CALIBRATED_METHODS:
            problems.append(
                f"Method {method!r} needs calibration data: pass windows=[nsamples, seqlen] token ids "
                "(see litprune.pruning.calibration.calibration_windows), or use method='magnitude'."
            )
        elif windows is None:
            problems.append(
                "layer_ratios='owl' needs calibration data for its outlier statistics, magnitude pruning too: pass "
                "windows=[nsamples, seqlen] token ids (see litprune.pruning.calibration.calibration_windows), or "
                "use layer_ratios='uniform'."
            )
        else:
            problem = _check_windows(windows, model)
            if problem:
                problems.append(problem)
            for key, size in (("nsamples", 0), ("seqlen", 1)):
                if problem is None and calibration and key in calibration and calibration[key] != windows.shape[size]:
                    problems.append(
                        f"calibration[{key!r}]={calibration[key]} disagrees with windows of shape "
                        f"{tuple(windows.shape)}; pass the provenance returned with these windows."
                    )

    selected: dict[str, nn.Linear] = {}
    try:
        selected = find_targets(model, targets)
    except ValueError as err:
        problems.append(str(err))
    layers_prefix: str | None = None
    try:
        layers_prefix, _ = decoder_layers(model)
    except ValueError as err:
        if method in layered:
            problems.append(str(err))
    if method in layered and layers_prefix is not None:
        outside = [name for name in selected if layer_index_of(name, layers_prefix) is None]
        if outside and method in CALIBRATED_METHODS:
            problems.append(
                f"Method {method!r} calibrates decoder layers one by one and cannot prune {outside[:3]} outside "
                f"'{layers_prefix}'. Narrow targets={targets!r}, or use method='magnitude' for those."
            )
        elif outside:
            problems.append(
                f"layer_ratios='owl' sets one ratio per decoder layer and cannot place {outside[:3]} outside "
                f"'{layers_prefix}'. Narrow targets={targets!r}, or use layer_ratios='uniform'."
            )
    if parsed is not None and parsed.is_nm:
        bad = [f"{name} (in_features={m.in_features})" for name, m in selected.items() if m.in_features % parsed.m]
        if bad:
            problems.append(
                f"Pattern {parsed} needs every target's in_features to be a multiple of {parsed.m}; not: "
                f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}. "
                "Exclude them with targets=... or pick another M."
            )
        blocksize = method_kwargs.get("blocksize", 128)
        if method == "sparsegpt" and isinstance(blocksize, int) and blocksize % parsed.m:
            problems.append(f"sparsegpt blocksize={blocksize} must be a multiple of M={parsed.m} for pattern {parsed}.")
    for key, minimum in (("blocksize", 1), ("batch_size", 1)):
        value = method_kwargs.get(key, minimum)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(f"{key}={value!r} must be a positive integer.")
    percdamp = method_kwargs.get("percdamp", 0.01)
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or percdamp < 0:
        problems.append(f"percdamp={percdamp!r} must be a non-negative fraction of the mean Hessian diagonal (0.01).")
    if problems:
        raise ValueError("prune_sparse cannot start:\n- " + "\n- ".join(problems))
    return parsed, selected, layers_prefix, settings


def _outlier_shares(
    model: nn.Module,
    windows: Tensor,
    selected: dict[str, nn.Linear],
    threshold_m: float,
    batch_size: int,
    progress: bool | None,
) -> tuple[dict[int, float], dict[int, int]]:
    """OWL's calibration pass over the dense model: outlier share and target weight count per decoder layer."""
    outliers: dict[int, int] = {}
    sizes: dict[int, int] = {}

    def count_layer(index: int, _layer: nn.Module, stats: dict[str, InputNormStatistic]) -> None:
        for name, stat in stats.items():
            weight = selected[name].weight
            outliers[index] = outliers.get(index, 0) + outlier_count(wanda_scores(weight, stat.norms), threshold_m)
            sizes[index] = sizes.get(index, 0) + weight.numel()

    # count_layer prunes nothing, so every layer is calibrated on the dense model's activations.
    run_sequential(
        model, windows, count_layer, batch_size=batch_size, progress=progress, statistic="input_norms", targets=selected
    )
    return {index: outliers[index] / sizes[index] for index in sorted(sizes)}, sizes


def _owl_plan(
    model: nn.Module,
    method: str,
    ratio: float,
    windows: Tensor,
    selected: dict[str, nn.Linear],
    layers_prefix: str,
    settings: OWLSettings,
    method_kwargs: dict[str, Any],
    progress: bool | None,
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Exact pruned counts per comparison group under OWL, and the `layer_ratios` record."""
    batch_size = method_kwargs.get("batch_size", 1)
    shares, sizes = _outlier_shares(model, windows, selected, settings.threshold_m, batch_size, progress)
    ratios, shrink = owl_layer_ratios(shares, ratio, settings.lam, sizes)
    plan = plan_pruned_counts(
        ratio,
        ratios,
        {name: comparison_groups(method, m.weight.shape, method_kwargs) for name, m in selected.items()},
        {name: layer_index_of(name, layers_prefix) for name in selected},
    )
    record = {
        "rule": "owl",
        **settings.as_record(),
        "outlier_share": {str(i): share for i, share in shares.items()},
        "ratio": {str(i): value for i, value in ratios.items()},
        "shrink": shrink,
        "pruned": {str(i): count for i, count in plan.per_layer.items()},
        "total": plan.total,
        "total_pruned": plan.pruned,
    }
    return plan.per_group, record


def prune_sparse(
    model: nn.Module,
    method: str,
    ratio: float | None = None,
    pattern: str = "unstructured",
    windows: Tensor | None = None,
    targets: str = DEFAULT_TARGETS,
    calibration: dict[str, Any] | None = None,
    progress: bool | None = None,
    layer_ratios: str = "uniform",
    owl: dict[str, Any] | None = None,
    **method_kwargs: Any,
) -> SparseResult:
    """Sparsify `model` in place with magnitude, Wanda or SparseGPT; shapes stay, pruned weights become 0.

    Args:
        model: a Hugging Face causal LM such as `LlamaForCausalLM` (fp32 or bf16, CPU or GPU).
        method: `"magnitude"` (no data), `"wanda"` or `"sparsegpt"` (need `windows`).
        ratio: pruned fraction of each target in [0, 1). Optional for N:M, where it must equal N/M. Ratio 0
            leaves the model untouched.
        pattern: `"unstructured"` or `"N:M"` such as `"2:4"`/`"4:8"` (N pruned in every M input columns).
        windows: calibration token ids `[nsamples, seqlen]` from `calibration_windows`.
        targets: regex that must fully match (`re.fullmatch`) the parameter name (`<module name>.weight`) of
            every `nn.Linear` to prune; default `DEFAULT_TARGETS`, the 7 decoder linears of every layer (see
            `litprune.pruning.targets`).
        calibration: provenance to store in the record (e.g. the dict `calibration_windows` returns, plus the
            dataset name); the window shape is always recorded.
        progress: show progress bars over the calibration (wanda, sparsegpt, OWL; True/False, None follows
            `LITPRUNE_PROGRESS`, see `litprune.utils.progress`).
        layer_ratios: `"uniform"` (every target at `ratio`) or `"owl"` (a ratio per decoder layer from its share
            of outlier weights, the model's pruned count exactly `round(ratio * total)`; unstructured only, needs
            `windows` for every method; see the module docstring and `litprune.pruning.owl`).
        owl: OWL hyperparameters, only with `layer_ratios="owl"`: `lambda` (largest deviation of a layer's ratio
            from `ratio`, 0.08) and `threshold_m` (outlier when the score exceeds this times its matrix's mean, 5).
        **method_kwargs: wanda: `batch_size` (calibration windows per forward, 1); sparsegpt: `blocksize` (128),
            `percdamp` (0.01), `batch_size` (1).

    Returns:
        A `SparseResult` with masks keyed by parameter name and the record.

    Raises:
        ValueError: any invalid argument (all problems listed in one message), raised before the model changes.
    """
    parsed, selected, layers_prefix, settings = _validate(
        model, method, ratio, pattern, windows, targets, calibration, method_kwargs, layer_ratios, owl
    )
    effective = parsed.ratio if parsed.is_nm else float(ratio)
    counts = None
    layer_record: dict[str, Any] = {"rule": "uniform"}
    if settings is not None:
        total = sum(m.weight.numel() for m in selected.values())
        layer_record = {"rule": "owl", **settings.as_record(), "outlier_share": None, "ratio": None, "shrink": None}
        layer_record.update({"pruned": None, "total": total, "total_pruned": 0})
        if effective > 0:
            counts, layer_record = _owl_plan(
                model, method, effective, windows, selected, layers_prefix, settings, method_kwargs, progress
            )
    if effective == 0:
        module_masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in selected.items()}
    elif method == "magnitude":
        module_masks = prune_magnitude(model, effective, parsed, targets=selected, counts=counts)
    else:
        module_masks = METHODS[method](
            model, windows, effective, parsed, targets=selected, progress=progress, counts=counts, **method_kwargs
        )

    masks = {f"{name}.weight": keep for name, keep in module_masks.items()}
    calibration_record = None
    if needs_windows(method, layer_ratios):
        calibration_record = {"nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1]), **(calibration or {})}
    record = {
        "method": method,
        "pattern": str(parsed),
        "ratio": effective,
        "targets": targets,
        "num_targets": len(selected),
        "method_kwargs": dict(method_kwargs),
        "calibration": calibration_record,
        "layer_ratios": layer_record,
        "sparsity": _sparsity_record(masks, layers_prefix),
    }
    return SparseResult(masks=masks, record=record)
