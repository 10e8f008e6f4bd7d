"""Named token slices of a prepared split, checked disjoint, and the training windows inside them.

The paper's pretraining and retraining tokens are disjoint slices of one shuffled corpus. Here a slice is a
token range `[start, end)` of one split of a `TokenStore`, named by its role, e.g. in YAML::

    slices:
      pretrain: {split: train, start: 0, end: 2000000}     # the parent's P_M tokens
      retrain:  {split: train, start: 2000000}             # R_N / S_N tokens, never seen by the parent
      val:      {split: val}

`resolve_slices` turns these into exact ranges and refuses overlapping slices of the same split, so a pruned
model can never be retrained on tokens its parent was pretrained on.

Windows: a slice of `T` tokens holds `(T - 1) // seq_len` windows of `seq_len + 1` tokens with stride
`seq_len`; window `i` covers tokens `[i * seq_len, i * seq_len + seq_len + 1)` of the slice, its input is
`w[:-1]` and its target `w[1:]`, so every token of the slice except the first is predicted at most once per
epoch. Leftover tokens at the end of a slice (fewer than `seq_len`) are never read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from litprune.data.store import TokenStore


@dataclass
class TokenSlice:
    """A token range of one split, before it is checked against a store.

    Attributes:
        split: split name in the prepared tokens (e.g. "train").
        start: first token position of the slice.
        end: one past the last token position; None means the end of the split.
    """

    split: str
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class ResolvedSlice:
    """A named slice with exact bounds, checked against a store: tokens `[start, end)` of `split`."""

    name: str
    split: str
    start: int
    end: int

    @property
    def tokens(self) -> int:
        """Tokens in the slice."""
        return self.end - self.start


def _as_slice(name: str, spec: TokenSlice | Mapping) -> TokenSlice:
    if isinstance(spec, TokenSlice):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"split", "start", "end"}
        if unknown or "split" not in spec:
            raise ValueError(
                f"Slice {name!r} = {dict(spec)!r} must have a 'split' and may have 'start' and 'end' "
                f"(unknown keys: {sorted(unknown)})."
            )
        return TokenSlice(**spec)
    raise TypeError(f"Slice {name!r} must be a TokenSlice or a mapping with split/start/end, got {spec!r}.")


def resolve_slices(slices: Mapping[str, TokenSlice], store: TokenStore) -> dict[str, ResolvedSlice]:
    """Check named slices against a store and give each its exact bounds.

    Args:
        slices: slice name -> `TokenSlice` (or a mapping with `split`, `start`, `end`, as parsed from YAML).
        store: the prepared tokens the slices refer to.

    Returns:
        slice name -> `ResolvedSlice`, in the order given.

    Raises:
        ValueError: a slice names a split the store lacks, its bounds are not `0 <= start < end <= split size`,
            or two slices of the same split overlap. All problems are reported together.
    """
    if not slices:
        raise ValueError("No slices given; define at least one, e.g. {'train': TokenSlice('train')}.")
    problems: list[str] = []
    resolved: dict[str, ResolvedSlice] = {}
    for name, spec in slices.items():
        spec = _as_slice(name, spec)
        if spec.split not in store.splits:
            problems.append(f"slice {name!r}: split {spec.split!r} does not exist; available splits: {store.splits}")
            continue
        size = store.num_tokens(spec.split)
        end = size if spec.end is None else spec.end
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (spec.start, end))
        if not ints or not (0 <= spec.start < end <= size):
            problems.append(
                f"slice {name!r}: start={spec.start!r}, end={spec.end!r} is not a valid range of split "
                f"{spec.split!r}, which holds {size} tokens; need integers with 0 <= start < end <= {size}"
            )
            continue
        resolved[name] = ResolvedSlice(name=name, split=spec.split, start=spec.start, end=end)
    by_split: dict[str, list[ResolvedSlice]] = {}
    for item in resolved.values():
        by_split.setdefault(item.split, []).append(item)
    for split, items in by_split.items():
        items = sorted(items, key=lambda s: (s.start, s.end))
        # Compare each slice with every later-starting one it reaches, so every overlapping pair is named.
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                if b.start >= a.end:
                    break
                problems.append(
                    f"slices {a.name!r} [{a.start}, {a.end}) and {b.name!r} [{b.start}, {b.end}) of split "
                    f"{split!r} overlap on tokens [{b.start}, {min(a.end, b.end)}); slices of one split must be "
                    "disjoint so no token is used for two roles"
                )
    if problems:
        raise ValueError("Invalid token slices:\n- " + "\n- ".join(problems))
    return resolved


def disjointness_record(resolved: Mapping[str, ResolvedSlice]) -> dict:
    """A JSON-serialisable record of the slices and proof of their disjointness, for run metadata.

    Returns:
        {"disjoint": bool, "slices": {name: {split, start, end, tokens}}, "by_split": {split: [[name, start,
        end], ...] sorted by start}, "overlaps": [[name_a, name_b, first token, end token], ...]}.
    """
    by_split: dict[str, list[ResolvedSlice]] = {}
    for item in resolved.values():
        by_split.setdefault(item.split, []).append(item)
    overlaps = []
    layout = {}
    for split, items in sorted(by_split.items()):
        items = sorted(items, key=lambda s: (s.start, s.end))
        layout[split] = [[s.name, s.start, s.end] for s in items]
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                if b.start < a.end:
                    overlaps.append([a.name, b.name, b.start, min(a.end, b.end)])
    return {
        "disjoint": not overlaps,
        "slices": {
            name: {"split": s.split, "start": s.start, "end": s.end, "tokens": s.tokens} for name, s in resolved.items()
        },
        "by_split": layout,
        "overlaps": overlaps,
    }


def default_slices(store: TokenStore) -> dict[str, TokenSlice]:
    """One whole-split slice per split, named like the split (train, val, test for the embedded corpus)."""
    return {split: TokenSlice(split=split) for split in store.splits}


def num_windows(tokens: int, seq_len: int) -> int:
    """Training windows in `tokens` tokens: `(tokens - 1) // seq_len` (0 when fewer than `seq_len + 1` tokens)."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive integer.")
    return max(0, (tokens - 1) // seq_len)


def window_tokens(store: TokenStore, resolved: ResolvedSlice, index: int, seq_len: int) -> np.ndarray:
    """The `seq_len + 1` tokens of window `index` of a slice (int64): input `w[:-1]`, target `w[1:]`."""
    count = num_windows(resolved.tokens, seq_len)
    if not 0 <= index < count:
        raise IndexError(
            f"Window {index} does not exist: slice {resolved.name!r} ({resolved.tokens} tokens) holds {count} windows "
            f"of seq_len {seq_len}."
        )
    start = resolved.start + index * seq_len
    return store.read(resolved.split, start, start + seq_len + 1)


def spread_windows(total_windows: int, count: int | None) -> np.ndarray:
    """Which windows of a slice to evaluate: `count` of them spread evenly over the whole slice.

    Window indices `round(linspace(0, total_windows - 1, count))`: the first and the last window and evenly
    strided ones between, so a capped evaluation samples the whole slice rather than its beginning (a slice
    packed from a source in a meaningful order would otherwise be judged on one corner of it). Deterministic:
    the same windows in every run and every arm.

    Args:
        total_windows: windows in the slice (`num_windows(slice tokens, seq_len)`), >= 1.
        count: windows wanted (>= 1), or None for all of them; more than `total_windows` gives all of them.

    Returns:
        Sorted, distinct int64 window indices.
    """
    if not isinstance(total_windows, int | np.integer) or isinstance(total_windows, bool) or total_windows < 1:
        raise ValueError(f"total_windows={total_windows!r} must be a positive integer (windows in the slice).")
    if count is not None and (not isinstance(count, int | np.integer) or isinstance(count, bool) or count < 1):
        raise ValueError(f"count={count!r} must be a positive integer or None (all windows).")
    if count is None or count >= total_windows:
        return np.arange(total_windows, dtype=np.int64)
    return np.unique(np.linspace(0, total_windows - 1, int(count)).round().astype(np.int64))
