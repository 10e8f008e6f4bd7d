"""Sparsity patterns and the mask builders every sparse method shares.

A mask is a boolean tensor shaped like the weight: True keeps the entry, False prunes it. Scores are "higher
is more important"; each builder prunes the lowest-scoring entries of its comparison group:

- `unstructured` at a ratio, per output row (Wanda's group) or per matrix (the reference magnitude rule);
- `N:M` (e.g. 2:4, 4:8): in every aligned group of M consecutive input columns of a row, prune N.

Ties are broken by a stable sort on the flattened index, so masks are deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class SparsityPattern:
    """A parsed pattern: `unstructured` (with a ratio given separately) or N:M.

    Attributes:
        n: entries pruned in each group of `m` (0 for unstructured).
        m: group size along the input dimension (0 for unstructured).
    """

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def ratio(self) -> float | None:
        """The ratio an N:M pattern implies (N/M); None for unstructured."""
        return self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"

    def resolve_ratio(self, ratio: float | None, name: str = "ratio") -> float:
        """The pruned fraction this pattern prunes at `ratio`: the one rule for ratio and pattern together.

        An N:M pattern prunes exactly N/M, so `ratio` must be None or N/M; unstructured needs a ratio in [0, 1).
        `name` is the argument's name in the caller's API, used in the error message.

        Raises:
            ValueError: an N:M pattern with a ratio other than N/M, unstructured without a ratio, or a ratio
                outside [0, 1).
        """
        if self.is_nm:
            if ratio is not None and (isinstance(ratio, bool) or abs(float(ratio) - self.ratio) > 1e-9):
                raise ValueError(
                    f"Pattern {self} prunes exactly {self.ratio:g} of each group; {name}={ratio!r} cannot be reached. "
                    f"Leave {name} unset or set it to {self.ratio:g}."
                )
            return self.ratio
        if ratio is None:
            raise ValueError(
                f"pattern='unstructured' needs a ratio: set {name} (the pruned fraction in [0, 1)), e.g. {name}: 0.5."
            )
        check_ratio(ratio, name)
        return float(ratio)


def parse_pattern(pattern: str) -> SparsityPattern:
    """Parse `"unstructured"` or `"N:M"` (N < M), e.g. `"2:4"`.

    Raises:
        ValueError: the text is neither, or N >= M.
    """
    if pattern.strip().lower() == "unstructured":
        return SparsityPattern()
    match = _NM_RE.match(pattern)
    if not match:
        raise ValueError(f"Unknown sparsity pattern {pattern!r}. Use 'unstructured' or 'N:M' such as '2:4' or '4:8'.")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"Sparsity pattern {pattern!r} needs 0 < N < M (N pruned out of every M), got N={n}, M={m}.")
    return SparsityPattern(n=n, m=m)


def check_ratio(ratio: float, name: str = "ratio") -> None:
    """Raise a clear error unless `0 <= ratio < 1`."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"{name}={ratio!r} is out of range; a pruning ratio is the pruned fraction in [0, 1).")


def unstructured_mask(scores: Tensor, ratio: float, per_row: bool = True) -> Tensor:
    """Keep-mask pruning exactly `floor(ratio * group)` lowest-scoring entries per group.

    Args:
        scores: `[out, in]` importance, higher is kept.
        ratio: pruned fraction in [0, 1).
        per_row: group = one output row (Wanda); otherwise the whole matrix.
    """
    check_ratio(ratio)
    flat = scores.reshape(scores.shape[0], -1) if per_row else scores.reshape(1, -1)
    n_prune = int(flat.shape[1] * ratio)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        order = torch.argsort(flat, dim=1, stable=True)
        keep.scatter_(1, order[:, :n_prune], False)
    return keep.reshape(scores.shape)


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep-mask pruning the `n` lowest-scoring entries in every aligned group of `m` input columns.

    Raises:
        ValueError: the input dimension is not a multiple of `m`.
    """
    out_features, in_features = scores.shape
    if in_features % m != 0:
        raise ValueError(
            f"N:M pattern {n}:{m} needs the input dimension to be a multiple of {m}; got {in_features}. "
            "Choose another M or exclude this layer from the targets."
        )
    groups = scores.reshape(out_features, in_features // m, m)
    order = torch.argsort(groups, dim=-1, stable=True)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], False)
    return keep.reshape(out_features, in_features)


def pattern_mask(scores: Tensor, pattern: SparsityPattern | str, ratio: float | None = None, per_row: bool = True):
    """Dispatch to `nm_mask` or `unstructured_mask`.

    Raises:
        ValueError: unstructured without a ratio, or an N:M pattern with a ratio other than N/M.
    """
    if isinstance(pattern, str):
        pattern = parse_pattern(pattern)
    ratio = pattern.resolve_ratio(ratio)
    if pattern.is_nm:
        return nm_mask(scores, pattern.n, pattern.m)
    return unstructured_mask(scores, ratio, per_row=per_row)


def sparsity(mask: Tensor) -> float:
    """Fraction of pruned (False) entries."""
    return 1.0 - mask.float().mean().item()
