"""SparseGPT: one-shot pruning with optimal-brain-surgeon error compensation (methods-spec section 6).

For each linear with inputs X, the Hessian of the layer-wise reconstruction loss is `H = (2/N) X X^T` (fp32).
Columns are processed left to right in blocks of 128; pruning a weight spreads its error onto the columns to its
right through the upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), so survivors *change* (unlike Wanda):

    for each block [a, b):   r = W[:, a:b]^2 / diag(U)[a:b]^2         (current, already compensated W)
        unstructured:        prune r <= (value at ascending position floor(ratio * rows * (b - a)))
        for column c:        N:M: at the start of each group of M, prune the N smallest r of each row
                             q = w_c with pruned rows zeroed;  e = (w_c - q) / U_cc
                             W[:, c:b] -= e U[c, c:b]                  (within the block)
        after the block:     W[:, b:] -= E U[a:b, b:]                  (lazy batch update)

Inputs with zero energy (`H_jj = 0`, "dead" columns) get `H_jj = 1` and their weight column zeroed; the
Hessian is damped by `0.01 * mean(diag(H))` before the Cholesky factorisation.

Deviation from the reference, by design: at ratio 0 the reference still prunes one entry per block (its
threshold test is `<=`); here an unstructured ratio of 0 selects nothing. `sparsegpt_prune_weight` then still
runs the pass (dead columns are zeroed, everything else unchanged up to fp rounding), while `prune_sparsegpt`
with ratio 0 is a true no-op that leaves the model bit-identical and runs no calibration.

Exact counts (OWL's per-layer ratios, `litprune.pruning.owl`): given `block_counts`, block b prunes exactly
`block_counts[b]` entries, its lowest `r` (stable sort, ties to the lower row-major index), instead of the
reference's `<=` threshold (which prunes one more entry per block when scores are distinct).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from litprune.pruning.calibration import HessianStatistic, run_sequential
from litprune.pruning.owl import check_group_counts, pruned_counts_mask
from litprune.pruning.patterns import SparsityPattern, parse_pattern
from litprune.pruning.targets import find_targets


def _resolve(pattern: SparsityPattern | str, ratio: float | None) -> tuple[SparsityPattern, float]:
    if isinstance(pattern, str):
        pattern = parse_pattern(pattern)
    return pattern, pattern.resolve_ratio(ratio)


def sparsegpt_groups(shape: Sequence[int], blocksize: int = 128) -> list[int]:
    """Sizes of SparseGPT's unstructured comparison groups of an `[out, in]` weight: each `out x blocksize` block
    of columns (the last one narrower when `in` is not a multiple of `blocksize`), left to right."""
    rows, columns = int(shape[0]), int(shape[1])
    return [rows * (min(start + blocksize, columns) - start) for start in range(0, columns, blocksize)]


def _inverse_hessian_factor(hessian: Tensor, percdamp: float) -> Tensor:
    damp = percdamp * torch.mean(torch.diag(hessian))
    diag = torch.arange(hessian.shape[0], device=hessian.device)
    hessian[diag, diag] += damp
    lower, info = torch.linalg.cholesky_ex(hessian)
    if info.item() != 0:
        raise ValueError(
            f"The damped Hessian is not positive definite (Cholesky failed at column {info.item()}) with "
            f"percdamp={percdamp}. Increase percdamp (e.g. 0.1) or use more calibration samples."
        )
    hinv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(hinv, upper=True)


@torch.no_grad()
def sparsegpt_prune_weight(
    weight: Tensor,
    hessian: Tensor,
    ratio: float | None,
    pattern: SparsityPattern | str = "unstructured",
    blocksize: int = 128,
    percdamp: float = 0.01,
    block_counts: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Prune one weight matrix with SparseGPT; a pure function (inputs are not modified).

    Args:
        weight: `[out, in]` weight, any float dtype (computed in fp32, returned in the same dtype).
        hessian: `[in, in]` layer Hessian `(2/N) X X^T`, e.g. `HessianStatistic.hessian`.
        ratio: pruned fraction in [0, 1); None for N:M. Unstructured ratio 0 prunes nothing (see module doc).
        pattern: `"unstructured"` (comparison group: each `rows x blocksize` block) or `"N:M"`.
        blocksize: columns per block (reference 128); a multiple of M for N:M patterns.
        percdamp: damping as a fraction of the mean Hessian diagonal (reference 0.01).
        block_counts: exact entries to prune in each block (`sparsegpt_groups`), replacing the ratio's threshold
            (unstructured only; see the module docstring).

    Returns:
        `(new_weight, keep_mask)`: the compensated weight with pruned entries exactly 0, and the bool mask
        (True = kept). Dead columns (zero input energy) are zeroed in `new_weight`; with a zero weight they
        score lowest, so at any ratio above 0 they are pruned (False in the mask), as in the reference. Only an
        unstructured ratio of 0 leaves them True. Under N:M a group marks exactly N per row, so in a group
        with more than N dead columns the extra ones stay True (their weights are still 0).

    Raises:
        ValueError: shapes disagree, the pattern or ratio is invalid, or the damped Hessian is not positive
            definite.
    """
    pattern, ratio = _resolve(pattern, ratio)
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(
            f"hessian must be [{columns}, {columns}] for a weight of shape {tuple(weight.shape)}, "
            f"got {tuple(hessian.shape)}."
        )
    if blocksize < 1:
        raise ValueError(f"blocksize={blocksize} must be a positive number of columns.")
    if pattern.is_nm and (columns % pattern.m or blocksize % pattern.m):
        raise ValueError(
            f"Pattern {pattern} needs the input dimension ({columns}) and blocksize ({blocksize}) to be "
            f"multiples of {pattern.m}."
        )
    if block_counts is not None:
        if pattern.is_nm:
            raise ValueError(f"block_counts set exact counts per block; pattern {pattern} fixes N per group of M.")
        check_group_counts({"weight": block_counts}, {"weight": sparsegpt_groups(weight.shape, blocksize)})

    W = weight.detach().float().clone()
    H = hessian.detach().float().clone().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = _inverse_hessian_factor(H, percdamp)

    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)

        if block_counts is not None:
            scores = W1**2 / d.reshape(1, -1) ** 2
            keep1 = pruned_counts_mask(scores.reshape(1, -1), [block_counts[i1 // blocksize]])
            mask1 = ~keep1.reshape(W1.shape)
        elif pattern.is_nm or ratio == 0:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            scores = W1**2 / d.reshape(1, -1) ** 2
            thresh = torch.sort(scores.flatten())[0][int(scores.numel() * ratio)]
            mask1 = scores <= thresh

        for i in range(count):
            if pattern.is_nm and i % pattern.m == 0:
                scores = W1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m].reshape(1, -1) ** 2
                lowest = torch.argsort(scores, dim=1, stable=True)[:, : pattern.n]
                mask1.scatter_(1, i + lowest, True)
            w = W1[:, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err

        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    keep = ~pruned
    new_weight = W.to(weight.dtype).masked_fill_(pruned, 0)
    return new_weight, keep


@torch.no_grad()
def prune_sparsegpt(
    model: nn.Module,
    windows: Tensor,
    ratio: float | None,
    pattern: SparsityPattern | str = "unstructured",
    targets: dict[str, nn.Linear] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    batch_size: int = 1,
    progress: bool | None = None,
    counts: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Tensor]:
    """SparseGPT-prune the target linears of `model` in place, calibrating layer by layer.

    Args:
        model: a Hugging Face causal LM (fp32 or bf16, CPU or GPU; the solve runs in fp32).
        windows: calibration token ids `[nsamples, seqlen]` (see `calibration_windows`).
        ratio: pruned fraction in [0, 1); None for an N:M pattern. Ratio 0 returns all-True masks without
            touching the model (the reference would prune one entry per block).
        pattern: `"unstructured"`, `"2:4"`, `"4:8"`, ...
        targets: module name -> linear (from `find_targets`); default: `find_targets(model)`, the 7 decoder
            linears of every layer (`DEFAULT_TARGETS`).
        blocksize: columns per OBS block (reference 128).
        percdamp: Hessian damping, fraction of its mean diagonal (reference 0.01).
        batch_size: calibration windows per forward call.
        progress: show progress bars over the calibration (True/False; None follows `LITPRUNE_PROGRESS`).
        counts: module name -> entries to prune in each `rows x blocksize` block (`sparsegpt_groups`), for every
            target; replaces `ratio` with exact per-block counts (unstructured only; used by OWL's per-layer
            ratios).

    Returns:
        Module name -> bool keep-mask shaped like the weight. Pruned entries are 0; survivors are compensated.

    Raises:
        ValueError: `counts` does not fit the targets' blocks.
    """
    if targets is None:
        targets = find_targets(model)
    resolved, effective = _resolve(pattern, ratio)
    if counts is not None:
        check_group_counts(counts, {name: sparsegpt_groups(m.weight.shape, blocksize) for name, m in targets.items()})
    elif not resolved.is_nm and effective == 0:
        return {name: torch.ones_like(module.weight, dtype=torch.bool) for name, module in targets.items()}
    masks: dict[str, Tensor] = {}

    def prune_layer(_index: int, _layer: nn.Module, stats: dict[str, HessianStatistic]) -> None:
        for name, stat in stats.items():
            weight = targets[name].weight
            new_weight, keep = sparsegpt_prune_weight(
                weight,
                stat.hessian,
                effective,
                resolved,
                blocksize,
                percdamp,
                block_counts=None if counts is None else counts[name],
            )
            weight.copy_(new_weight)
            masks[name] = keep
            stat.hessian = None  # free the [in, in] buffer before the next linear's solve

    run_sequential(
        model, windows, prune_layer, batch_size=batch_size, progress=progress, statistic="hessian", targets=targets
    )
    return masks
