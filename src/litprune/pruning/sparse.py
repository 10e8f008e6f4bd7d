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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from litprune.pruning.magnitude import prune_magnitude
from litprune.pruning.patterns import SparsityPattern, parse_pattern
from litprune.pruning.sparsegpt import prune_sparsegpt
from litprune.pruning.targets import DEFAULT_TARGETS, decoder_layers, find_targets, layer_index_of
from litprune.pruning.wanda import prune_wanda
from litprune.utils.suggest import did_you_mean

METHODS = {"magnitude": prune_magnitude, "wanda": prune_wanda, "sparsegpt": prune_sparsegpt}
"""Sparse methods by registry name."""

METHOD_KWARGS: dict[str, set[str]] = {
    "magnitude": set(),
    "wanda": {"batch_size"},
    "sparsegpt": {"blocksize", "percdamp", "batch_size"},
}
CALIBRATED_METHODS = {"wanda", "sparsegpt"}


@dataclass
class SparseResult:
    """What `prune_sparse` did.

    Attributes:
        masks: parameter name (e.g. `"model.layers.0.self_attn.q_proj.weight"`) -> bool keep-mask shaped like
            the weight, on the weight's device (True = keep).
        record: JSON-serialisable description: `method`, `pattern`, `ratio`, `targets`, `num_targets`,
            `method_kwargs`, `calibration` (None for magnitude) and `sparsity` (`overall`, `per_layer` by decoder
            layer index, `per_matrix` by parameter name).
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
) -> tuple[SparsityPattern, dict[str, nn.Linear], str | None]:
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

    unknown = sorted(set(method_kwargs) - METHOD_KWARGS[method])
    if unknown:
        allowed = sorted(METHOD_KWARGS[method]) or "none"
        problems.append(f"Unknown option(s) {unknown} for method {method!r}; it accepts: {allowed}.")

    if method in CALIBRATED_METHODS:
        if windows is None:
            problems.append(
                f"Method {method!r} needs calibration data: pass windows=[nsamples, seqlen] token ids "
                "(see litprune.pruning.calibration.calibration_windows), or use method='magnitude'."
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
        if method in CALIBRATED_METHODS:
            problems.append(str(err))
    if method in CALIBRATED_METHODS and layers_prefix is not None:
        outside = [name for name in selected if layer_index_of(name, layers_prefix) is None]
        if outside:
            problems.append(
                f"Method {method!r} calibrates decoder layers one by one and cannot prune {outside[:3]} outside "
                f"'{layers_prefix}'. Narrow targets={targets!r}, or use method='magnitude' for those."
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
    return parsed, selected, layers_prefix


def prune_sparse(
    model: nn.Module,
    method: str,
    ratio: float | None = None,
    pattern: str = "unstructured",
    windows: Tensor | None = None,
    targets: str = DEFAULT_TARGETS,
    calibration: dict[str, Any] | None = None,
    progress: bool | None = None,
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
        progress: show progress bars over the calibration (wanda, sparsegpt; True/False, None follows
            `LITPRUNE_PROGRESS`, see `litprune.utils.progress`).
        **method_kwargs: wanda: `batch_size` (calibration windows per forward, 1); sparsegpt: `blocksize` (128),
            `percdamp` (0.01), `batch_size` (1).

    Returns:
        A `SparseResult` with masks keyed by parameter name and the record.

    Raises:
        ValueError: any invalid argument (all problems listed in one message), raised before the model changes.
    """
    parsed, selected, layers_prefix = _validate(
        model, method, ratio, pattern, windows, targets, calibration, method_kwargs
    )
    effective = parsed.ratio if parsed.is_nm else float(ratio)
    if effective == 0:
        module_masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in selected.items()}
    elif method == "magnitude":
        module_masks = prune_magnitude(model, effective, parsed, targets=selected)
    else:
        module_masks = METHODS[method](
            model, windows, effective, parsed, targets=selected, progress=progress, **method_kwargs
        )

    masks = {f"{name}.weight": keep for name, keep in module_masks.items()}
    calibration_record = None
    if method in CALIBRATED_METHODS:
        calibration_record = {"nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1]), **(calibration or {})}
    record = {
        "method": method,
        "pattern": str(parsed),
        "ratio": effective,
        "targets": targets,
        "num_targets": len(selected),
        "method_kwargs": dict(method_kwargs),
        "calibration": calibration_record,
        "sparsity": _sparsity_record(masks, layers_prefix),
    }
    return SparseResult(masks=masks, record=record)
