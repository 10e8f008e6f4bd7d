"""Wanda: prune by |weight| x input-activation norm, one output row at a time (methods-spec section 5).

Score `S_ij = |W_ij| * ||X_j||_2`, where `||X_j||_2` is the L2 norm of input feature j over every calibration
token (computed up to a global constant, which does not change any mask). Comparison group = one output row:
unstructured pruning zeroes exactly `floor(ratio * in)` entries per row (stable sort, ties to the lower column);
N:M zeroes the N lowest scores of every aligned group of M columns. Surviving weights are left bit-identical.

Layers are calibrated sequentially (`run_sequential`): layer l's statistics come from the dense layer l fed by
the already-pruned layers before it, and all linears of a layer use one statistics pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from litprune.pruning.calibration import InputNormStatistic, run_sequential
from litprune.pruning.owl import check_group_counts, pruned_counts_mask
from litprune.pruning.patterns import SparsityPattern, pattern_mask
from litprune.pruning.targets import find_targets


def wanda_scores(weight: Tensor, input_norms: Tensor) -> Tensor:
    """`|W| * ||X_j||` in fp32, shaped like `weight` (`[out, in]`; `input_norms` is `[in]`)."""
    return weight.detach().float().abs() * input_norms.float().reshape(1, -1)


def wanda_groups(shape: Sequence[int]) -> list[int]:
    """Sizes of Wanda's comparison groups of an `[out, in]` weight: each output row, `in` entries."""
    return [int(shape[1])] * int(shape[0])


def wanda_mask(
    weight: Tensor, input_norms: Tensor, ratio: float | None, pattern: SparsityPattern | str = "unstructured"
) -> Tensor:
    """Keep-mask of Wanda for one weight (True = keep), per output row.

    Args:
        weight: `[out, in]` weight.
        input_norms: `[in]` per-feature input norms (any positive multiple of `||X_j||_2`).
        ratio: pruned fraction in [0, 1); None for N:M.
        pattern: `"unstructured"` or `"N:M"`.
    """
    return pattern_mask(wanda_scores(weight, input_norms), pattern, ratio, per_row=True)


@torch.no_grad()
def prune_wanda(
    model: nn.Module,
    windows: Tensor,
    ratio: float | None,
    pattern: SparsityPattern | str = "unstructured",
    targets: dict[str, nn.Linear] | None = None,
    batch_size: int = 1,
    progress: bool | None = None,
    counts: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Tensor]:
    """Wanda-prune the target linears of `model` in place, calibrating layer by layer.

    Args:
        model: a Hugging Face causal LM (fp32 or bf16, CPU or GPU).
        windows: calibration token ids `[nsamples, seqlen]` (see `calibration_windows`).
        ratio: pruned fraction in [0, 1); None for an N:M pattern.
        pattern: `"unstructured"`, `"2:4"`, `"4:8"`, ...
        targets: module name -> linear (from `find_targets`); default: `find_targets(model)`, the 7 decoder
            linears of every layer (`DEFAULT_TARGETS`).
        batch_size: calibration windows per forward call.
        progress: show progress bars over the calibration (True/False; None follows `LITPRUNE_PROGRESS`).
        counts: module name -> entries to prune in each output row (`wanda_groups`), for every target; replaces
            `ratio` with exact per-row counts (unstructured only; used by OWL's per-layer ratios).

    Returns:
        Module name -> bool keep-mask shaped like the weight. Pruned entries are set to 0, survivors unchanged.

    Raises:
        ValueError: `counts` does not fit the targets' rows.
    """
    if targets is None:
        targets = find_targets(model)
    if counts is not None:
        check_group_counts(counts, {name: wanda_groups(m.weight.shape) for name, m in targets.items()})
    masks: dict[str, Tensor] = {}

    def prune_layer(_index: int, _layer: nn.Module, stats: dict[str, InputNormStatistic]) -> None:
        for name, stat in stats.items():
            weight = targets[name].weight
            if counts is None:
                keep = wanda_mask(weight, stat.norms, ratio, pattern)
            else:
                keep = pruned_counts_mask(wanda_scores(weight, stat.norms), counts[name])
            weight.masked_fill_(~keep, 0)
            masks[name] = keep

    run_sequential(
        model, windows, prune_layer, batch_size=batch_size, progress=progress, statistic="input_norms", targets=targets
    )
    return masks
