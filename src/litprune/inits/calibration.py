"""`Calibration`: which tokens a pruning method calibrates on, drawn from the run's own data module.

Every pruned initialisation (structured or sparse) calibrates on token windows taken from a named slice of the
run's prepared tokens, so calibration uses the run's tokenizer, needs no download and is recorded exactly:

```yaml
init:
  class_path: litprune.inits.StructuredPrune
  init_args:
    parent: runs/tiny_scratch/export
    method: minitron_depth
    ratio: 0.5
    calibration: {slice: train, nsamples: 128, seqlen: 256, seed: 0}
```

Windows are `nsamples` random contiguous runs of `seqlen` tokens inside the slice, drawn with
`litprune.pruning.calibration.calibration_windows` (the reference C4 sampler: `random.Random(seed)`, one start per
window, windows may overlap). Only the drawn windows are read from disk, so a slice of billions of tokens costs no
memory. The Minitron reference instead takes the first non-overlapping windows of wikitext-103 in order; random
windows from the run's own corpus are our choice, so the calibration text is always the parent's distribution and
always available offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from litprune.models.positions import check_seq_len
from litprune.pruning.calibration import calibration_windows


@dataclass
class Calibration:
    """Calibration windows drawn from a named token slice of the run's data.

    Attributes:
        slice: name of a slice of the run's data module (`data.init_args.slices`; by default one slice per split:
            `train`, `val`, `test`).
        nsamples: number of windows (the sparse references use 128; Minitron uses 1024).
        seqlen: tokens per window; at most the parent's `max_position_embeddings`.
        seed: seed of the window starts (same seed and slice: same windows).
    """

    slice: str = "train"
    nsamples: int = 128
    seqlen: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.slice, str) or not self.slice:
            problems.append(f"slice={self.slice!r} must be the name of a data slice, e.g. 'train'")
        for name in ("nsamples", "seqlen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"seed={self.seed!r} must be an integer")
        if problems:
            raise ValueError("Invalid calibration settings: " + "; ".join(problems) + ".")

    @classmethod
    def coerce(cls, value: Any, problems: list[str]) -> Calibration | None:
        """`value` as a Calibration (None -> defaults, a dict -> fields); appends to `problems` when it is not one."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            try:
                return cls(**value)
            except (TypeError, ValueError) as err:
                problems.append(f"calibration={value!r}: {err} (fields: slice, nsamples, seqlen, seed).")
                return None
        problems.append(f"calibration={value!r} must be a Calibration (slice, nsamples, seqlen, seed).")
        return None

    @property
    def tokens(self) -> int:
        """Tokens the calibration windows hold: `nsamples * seqlen`."""
        return self.nsamples * self.seqlen

    def check_positions(self, model_config: Any, model: str = "the parent") -> None:
        """Raise if a window of `seqlen` tokens does not fit the positions of the model `model_config` describes.

        Args:
            model_config: the model's config (None, or no `max_position_embeddings`: nothing is checked).
            model: how to name the model in the error message.

        Raises:
            ValueError: `seqlen` exceeds the model's `max_position_embeddings`.
        """
        check_seq_len(self.seqlen, model_config, name="calibration.seqlen", whose=f"{model}'s")

    def draw(self, data: Any = None, model_config: Any = None) -> tuple[Tensor, dict[str, Any]]:
        """Draw the calibration windows from a slice of `data`.

        Args:
            data: the run's `TokenDataModule` (set up here if it is not yet). None falls back to the embedded
                corpus with the default data settings (`TokenDataModule()`, its default 4096-token BPE), which
                the provenance states; a pruned parent must have been trained with that tokenizer.
            model_config: the parent's config, to refuse windows longer than its `max_position_embeddings`.

        Returns:
            `(windows, provenance)`: a LongTensor `[nsamples, seqlen]` and a JSON-ready dict with `source` (the
            prepared tokens' source fingerprint, or "embedded"), `fallback_embedded` (True when `data` was None),
            `prepared_dir`, `tokenizer` (identity hash), `slice`, `split`, `start`, `end` (the slice's token range),
            `nsamples`, `seqlen`, `seed`, `tokens_used` (= nsamples * seqlen), `stream_tokens` and the window
            `starts` (relative to the slice start).

        Raises:
            ValueError: `slice` is not a slice of `data` (the defined slices are listed), the slice holds fewer
                than `seqlen + 1` tokens, or `seqlen` exceeds the parent's positions.
        """
        from litprune.data.store import TokenStore

        self.check_positions(model_config)
        fallback = data is None
        if fallback:
            from litprune.data.datamodule import TokenDataModule

            data = TokenDataModule()
        if getattr(data, "store_path", None) is None:
            if not hasattr(data, "setup"):
                raise ValueError(
                    f"Calibration needs a litprune TokenDataModule (with store_path and slices), got "
                    f"{type(data).__name__}. Pass the run's data module, or None for the embedded corpus."
                )
            data.setup("fit")
        slices = getattr(data, "slices", {}) or {}
        if self.slice not in slices:
            raise ValueError(
                f"calibration slice={self.slice!r} is not a slice of the run's data; defined slices: "
                f"{sorted(slices)}. Name one of them or add it under data.init_args.slices."
            )
        resolved = slices[self.slice]
        if resolved.end - resolved.start < self.seqlen + 1:
            raise ValueError(
                f"calibration slice {self.slice!r} holds {resolved.end - resolved.start} tokens, fewer than one "
                f"window of seqlen + 1 = {self.seqlen + 1}. Lower calibration.seqlen or use a larger slice."
            )
        store = TokenStore(data.store_path)
        stream = _SliceStream(store, resolved.split, resolved.start, resolved.end)
        windows, drawn = calibration_windows(stream, self.nsamples, self.seqlen, self.seed)
        manifest = store.manifest
        provenance = {
            "source": manifest.get("source_fingerprint") or "embedded",
            "fallback_embedded": fallback,
            "prepared_dir": str(data.store_path),
            "tokenizer": store.tokenizer_identity,
            "slice": resolved.name,
            "split": resolved.split,
            "start": resolved.start,
            "end": resolved.end,
            **drawn,
        }
        return windows, provenance


class _SliceStream:
    """A lazy 1-D view of tokens `[start, end)` of one split: only the ranges asked for are read from disk.

    It offers what `calibration_windows` uses of an array (`ndim`, `len`, contiguous slicing).
    """

    ndim = 1

    def __init__(self, store: Any, split: str, start: int, end: int) -> None:
        self.store, self.split, self.start, self.end = store, split, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("A token slice stream supports contiguous slicing only, e.g. stream[10:42].")
        lo, hi, _ = key.indices(len(self))
        return self.store.read(self.split, self.start + lo, self.start + max(lo, hi))
