"""Magnitude pruning: zero the smallest |W| entries, no data needed (methods-spec section 4).

Comparison groups follow the reference: unstructured pruning ranks a whole weight matrix at once (not per row,
unlike Wanda); N:M prunes the N smallest of every aligned group of M input columns in each row.

Deviation from the reference, by design: the reference zeroes every entry `<=` the value at position
`floor(ratio * numel)`, i.e. `floor(ratio * numel) + 1` entries when magnitudes are distinct. We prune exactly
`floor(ratio * numel)` entries per matrix (stable sort, ties to the lower flat index), so ratio 0 is a no-op and
the achieved sparsity never exceeds the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from litprune.pruning.owl import check_group_counts, pruned_counts_mask
from litprune.pruning.patterns import SparsityPattern, pattern_mask
from litprune.pruning.targets import find_targets


def magnitude_groups(shape: Sequence[int]) -> list[int]:
    """Sizes of magnitude pruning's comparison groups of an `[out, in]` weight: the whole matrix, one group."""
    return [int(shape[0]) * int(shape[1])]


def magnitude_mask(weight: Tensor, ratio: float | None, pattern: SparsityPattern | str = "unstructured") -> Tensor:
    """Keep-mask of magnitude pruning for one `[out, in]` weight (True = keep).

    Args:
        weight: the weight matrix, any dtype (scored in fp32).
        ratio: pruned fraction in [0, 1); may be None for N:M (implied N/M).
        pattern: `"unstructured"` (exact count per matrix) or `"N:M"` (per row, aligned groups of M columns).
    """
    return pattern_mask(weight.detach().float().abs(), pattern, ratio, per_row=False)


@torch.no_grad()
def prune_magnitude(
    model: nn.Module,
    ratio: float | None,
    pattern: SparsityPattern | str = "unstructured",
    targets: dict[str, nn.Linear] | None = None,
    counts: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Tensor]:
    """Magnitude-prune the target linears of `model` in place.

    Args:
        model: a Hugging Face causal LM.
        ratio: pruned fraction in [0, 1); None for an N:M pattern.
        pattern: `"unstructured"`, `"2:4"`, `"4:8"`, ...
        targets: module name -> linear (from `find_targets`); default: `find_targets(model)`, the 7 decoder
            linears of every layer (`DEFAULT_TARGETS`).
        counts: module name -> `[entries to prune]` in the matrix (one group, `magnitude_groups`), for every
            target; replaces `ratio` with exact counts (unstructured only; used by OWL's per-layer ratios).

    Returns:
        Module name -> bool keep-mask shaped like the weight, on the weight's device. Pruned entries are set to
        0; every other weight is untouched.

    Raises:
        ValueError: `counts` does not fit the targets.
    """
    if targets is None:
        targets = find_targets(model)
    if counts is not None:
        check_group_counts(counts, {name: magnitude_groups(m.weight.shape) for name, m in targets.items()})
    masks: dict[str, Tensor] = {}
    for name, module in targets.items():
        if counts is None:
            keep = magnitude_mask(module.weight, ratio, pattern)
        else:
            scores = module.weight.detach().float().abs().reshape(1, -1)
            keep = pruned_counts_mask(scores, counts[name]).reshape(module.weight.shape)
        module.weight.masked_fill_(~keep, 0)
        masks[name] = keep
    return masks
