"""Held-out loss, window by window: the numbers the study's comparisons and intervals come from.

Every finished arm's export is evaluated on the same windows of the study's held-out slice (`eval.loss_slice`):
the study's own tokens (same tokenizer, same prepared shards), windows of the training context length
(`data.seq_len`), `eval.loss_tokens // seq_len` of them spread evenly over the whole slice
(`litprune.data.slices.spread_windows`). Each window's loss is the mean next-token cross-entropy over its
`seq_len` targets, exactly as validation computes it during training, so two arms are paired window by window.

The held-out slice is disjoint from every slice an arm trains, calibrates or validates on (checked with the study);
validation (`data.val_slice`) draws the loss curves and chooses the learning rate of an `lr` sweep, so the
reported numbers never come from the tokens that chose the settings.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from litprune.study.spec import StudySpec

BATCH_WINDOWS = 16


def heldout_windows(spec: StudySpec) -> tuple[Any, Any, np.ndarray, int]:
    """The held-out slice's store, resolved slice, chosen window indices and window length (prepares the tokens
    if needed)."""
    from litprune.data.datamodule import TokenDataModule
    from litprune.data.prepare import TextSource
    from litprune.data.slices import num_windows, spread_windows
    from litprune.data.store import TokenStore

    settings = copy.deepcopy(spec.data)
    source = settings.pop("source", None)
    if isinstance(source, dict):
        source = TextSource(**source)
    for key in ("val_slice", "test_slice", "val_max_windows", "val_tokens", "num_workers"):
        settings.pop(key, None)
    name = spec.eval.loss_slice
    module = TokenDataModule(source=source, train_slice=name, val_slice=None, test_slice=None, **settings)
    module.setup("validate")
    resolved = module.slices[name]
    total = num_windows(resolved.tokens, module.seq_len)
    wanted = total if spec.eval.loss_tokens is None else max(1, spec.eval.loss_tokens // module.seq_len)
    return TokenStore(module.store_path), resolved, spread_windows(total, min(total, wanted)), module.seq_len


def heldout_loss(model: Any, spec: StudySpec, windows: tuple | None = None) -> dict[str, Any]:
    """Per-window held-out loss of `model` (a Hugging Face causal LM) on the study's held-out windows.

    Args:
        model: the model, on the device to evaluate on.
        spec: the study (its `data` and `eval.loss_slice`, `eval.loss_tokens`).
        windows: `heldout_windows(spec)`, to reuse across arms.

    Returns:
        `{slice, split, start, end, seq_len, windows, tokens, selection, indices, nll, loss}`: `nll` holds each
        window's mean cross-entropy (nats), in the order of `indices`; `loss` is their mean.
    """
    from litprune.data.slices import window_tokens

    store, resolved, indices, seq_len = windows if windows is not None else heldout_windows(spec)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses: list[float] = []
    try:
        with torch.no_grad():
            for first in range(0, len(indices), BATCH_WINDOWS):
                chunk = indices[first : first + BATCH_WINDOWS]
                batch = np.stack([window_tokens(store, resolved, int(i), seq_len) for i in chunk])
                tokens = torch.from_numpy(batch.astype(np.int64)).to(device)
                logits = model(input_ids=tokens[:, :-1]).logits.float()
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
                )
                losses += nll.view(len(chunk), seq_len).mean(dim=1).tolist()
    finally:
        model.train(was_training)
    return {
        "slice": resolved.name,
        "split": resolved.split,
        "start": resolved.start,
        "end": resolved.end,
        "seq_len": seq_len,
        "windows": len(indices),
        "tokens": len(indices) * seq_len,
        "selection": "spread",
        "indices": [int(i) for i in indices],
        "nll": losses,
        "loss": float(np.mean(losses)),
    }


def heldout_values(record: dict[str, Any] | None) -> tuple[list[int], list[float]] | None:
    """`(indices, per-window nll)` of an evaluation record's held-out loss, or None when it has none."""
    entry = (record or {}).get("heldout_loss")
    if not isinstance(entry, dict) or not entry.get("nll"):
        return None
    return list(entry["indices"]), [float(v) for v in entry["nll"]]
