"""Magnitude pruning: zero the smallest |W| entries, no data needed (methods-spec section 4).

Comparison groups follow the reference: unstructured pruning ranks a whole weight matrix at once (not per row,
unlike Wanda); N:M prunes the N smallest of every aligned group of M input columns in each row.

Deviation from the reference, by design: the reference zeroes every entry `<=` the value at position
`floor(ratio * numel)`, i.e. `floor(ratio * numel) + 1` entries when magnitudes are distinct. We prune exactly
`floor(ratio * numel)` entries per matrix (stable sort, ties to the lower flat index), so ratio 0 is a no-op and
the achieved sparsity never exceeds the request.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litprune.pruning.patterns import SparsityPattern, pattern_mask
from litprune.pruning.targets import find_targets


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
) -> dict[str, Tensor]:
    """Magnitude-prune the target linears of `model` in place.

    Args:
        model: a Hugging Face causal LM.
        ratio: pruned fraction in [0, 1); None for an N:M pattern.
        pattern: `"unstructured"`, `"2:4"`, `"4:8"`, ...
        targets: module name -> linear (from `find_targets`); default: `find_targets(model)`, the 7 decoder
            linears of every layer (`DEFAULT_TARGETS`).

    Returns:
        Module name -> bool keep-mask shaped like the weight, on the weight's device. Pruned entries are set to
        0; every other weight is untouched.
    """
    if targets is None:
        targets = find_targets(model)
    masks: dict[str, Tensor] = {}
    for name, module in targets.items():
        keep = magnitude_mask(module.weight, ratio, pattern)
        module.weight.masked_fill_(~keep, 0)
        masks[name] = keep
    return masks
