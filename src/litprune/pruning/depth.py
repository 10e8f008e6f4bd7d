"""Depth pruning: remove whole decoder layers (Minitron-depth and ShortGPT), as pure functions.

- `remove_layers` physically deletes layers from a Hugging Face causal LM, keeps the survivors in order and
  renumbers `layer_idx` so the KV cache of `generate()` stays consistent; the result is an ordinary model that
  `save_pretrained` / `from_pretrained` round-trip.
- Minitron-depth (methods-spec section 1) drops one contiguous block: with `n = L - k` layers to drop it scores
  the `k + 1` candidates `[0, i) + [i + n, L)` for `i = 0..k` and keeps the one whose score is CLOSEST to the
  dense baseline (`argmin |s_i - s0|`, strict `<`, so the lowest start index wins ties). Candidates are the
  dense model with the window skipped (the layer list is swapped temporarily; no weight is copied).
- ShortGPT (section 2) ranks layers by Block Influence, `BI_l = 1 - mean cos(h_in, h_out)` over batch and
  tokens, averaged over forward calls, measured in one dense pass; it keeps the `k` layers with the largest BI
  (stable sort: among equal BI the lower index ranks first) in their original order.

Cosines are computed in float32 whatever the model dtype (the reference computes them in bf16), and clamped
to [-1, 1], so BI always lies in [0, 2].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litprune.pruning.scorers import Scorer, check_windows, evaluation_mode, iter_batches, model_device
from litprune.utils.progress import progress_bar


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a Llama-layout causal LM (`model.model.layers`).

    Raises:
        ValueError: the model has no such list.
    """
    layers = getattr(getattr(model, "base_model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no decoder layer list at model.model.layers; depth pruning needs a "
            "Llama-layout causal LM such as LlamaForCausalLM."
        )
    return layers


def kept_layers(num_layers: int, drop: Iterable[int]) -> list[int]:
    """Indices that survive dropping `drop` from `num_layers` layers, in order.

    Raises:
        ValueError: an index out of range or repeated, or nothing would be left.
    """
    drop = list(drop)
    bad = [i for i in drop if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"Layer indices {bad} are out of range for a model with {num_layers} layers (0..{num_layers - 1})."
        )
    if len(set(drop)) != len(drop):
        raise ValueError(f"Layer indices to drop contain duplicates: {sorted(drop)}. List each layer once.")
    keep = [i for i in range(num_layers) if i not in set(drop)]
    if not keep:
        raise ValueError(f"Dropping {sorted(drop)} would remove all {num_layers} layers; keep at least one.")
    return keep


def _install_layers(model: nn.Module, layers: Sequence[nn.Module], kept: Sequence[int]) -> list[tuple]:
    """Make `layers` the model's decoder; return what is needed to undo it."""
    base = model.base_model
    config = model.config
    undo: list[tuple] = [(base, "layers", base.layers), (config, "num_hidden_layers", config.num_hidden_layers)]
    base.layers = nn.ModuleList(layers)
    config.num_hidden_layers = len(layers)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        undo.append((config, "layer_types", layer_types))
        config.layer_types = [layer_types[i] for i in kept]
    # The KV cache is indexed by layer_idx; gaps would send layers to missing cache slots.
    for new_idx, layer in enumerate(layers):
        for module in layer.modules():
            old_idx = getattr(module, "layer_idx", None)
            if isinstance(old_idx, int) and not isinstance(old_idx, bool):
                undo.append((module, "layer_idx", old_idx))
                module.layer_idx = new_idx
    return undo


def remove_layers(model: nn.Module, drop: Iterable[int]) -> nn.Module:
    """Delete decoder layers IN PLACE and return the same model object.

    Survivors keep their order and weights; `self_attn.layer_idx` (and any other `layer_idx`) is renumbered
    0..k-1, `config.num_hidden_layers` becomes `k`, and a per-layer `config.layer_types` list (present in some
    transformers 5.x families) keeps the survivors' entries. Deep-copy the model first to keep the parent.

    Args:
        model: A Llama-layout causal LM.
        drop: Indices of the layers to delete.

    Raises:
        ValueError: bad indices, or nothing would be left.
    """
    layers = decoder_layers(model)
    kept = kept_layers(len(layers), drop)
    _install_layers(model, [layers[i] for i in kept], kept)
    return model


@contextmanager
def skipped_layers(model: nn.Module, drop: Iterable[int]) -> Iterator[nn.Module]:
    """Temporarily run `model` without the layers in `drop` (no weights copied); everything is restored on exit."""
    layers = decoder_layers(model)
    kept = kept_layers(len(layers), drop)
    undo = _install_layers(model, [layers[i] for i in kept], kept)
    try:
        yield model
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)


class DepthWindow(NamedTuple):
    """Minitron-depth decision: drop layers `start .. start + num_dropped - 1`.

    Attributes:
        start: first dropped layer of the chosen window.
        scores: `s_i` for every start index `i = 0..k`.
        baseline: `s0`, the score of the dense model.
    """

    start: int
    scores: list[float]
    baseline: float


def minitron_depth_window(model: nn.Module, keep: int, scorer: Scorer, progress: bool | None = None) -> DepthWindow:
    """Choose the contiguous block to drop so that `keep` layers remain (Minitron-depth).

    Calls `scorer` once on the dense model and once on each of the `L - keep + 1` candidates, where candidate
    `i` is the model with layers `i .. i + L - keep - 1` skipped. The chosen start minimises
    `|s_i - s0|`; on a tie the lowest index wins. The model is left unchanged.

    Args:
        model: A Llama-layout causal LM with `L` layers.
        keep: Number of layers to keep, 1 to L - 1.
        scorer: Callable `model -> float`, e.g. `make_perplexity_scorer(windows)` or a downstream accuracy.
        progress: Show a bar over the scored models (True/False; None follows `LITPRUNE_PROGRESS`, see
            `litprune.utils.progress`).

    Returns:
        `DepthWindow(start, scores, baseline)`; drop `range(start, start + L - keep)`.

    Raises:
        ValueError: `keep` out of range, or a non-finite baseline score.
    """
    num_layers = len(decoder_layers(model))
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep < num_layers:
        raise ValueError(
            f"keep={keep!r} layers is out of range for a {num_layers}-layer model; use 1 to {num_layers - 1}."
        )
    n = num_layers - keep
    # One full scoring pass each: the dense baseline, then the keep + 1 candidate windows.
    with progress_bar(desc="depth window search", total=keep + 2, unit="model", progress=progress) as bar:
        baseline = float(scorer(model))
        bar.update()
        if not math.isfinite(baseline):
            raise ValueError(
                f"The dense model's score is {baseline}; the closest-to-baseline rule needs a finite baseline. "
                "Check the calibration windows and the scorer."
            )
        scores: list[float] = []
        for start in range(keep + 1):
            with skipped_layers(model, range(start, start + n)):
                scores.append(float(scorer(model)))
            bar.update()
    # A diverged candidate (inf/NaN score) can never be the closest.
    gaps = [abs(s - baseline) if math.isfinite(s) else math.inf for s in scores]
    best = 0
    for i in range(1, len(gaps)):
        if gaps[i] < gaps[best]:
            best = i
    return DepthWindow(start=best, scores=scores, baseline=baseline)


def block_influence(model: nn.Module, windows: Tensor, batch_size: int = 1, progress: bool | None = None) -> Tensor:
    """ShortGPT Block Influence of every decoder layer, from one dense pass over calibration windows.

    For each forward call `BI_l = 1 - mean over (batch, token) of cos(h_in, h_out)`, where `h_in` enters layer l
    and `h_out` leaves it (after both residual adds); the result is the mean over calls.

    Args:
        model: A Llama-layout causal LM.
        windows: Token ids `[num_windows, seq_len]`, used in order.
        batch_size: Windows per forward call (the reference uses 1).
        progress: Show a bar over the forward calls (True/False; None follows `LITPRUNE_PROGRESS`).

    Returns:
        Float32 tensor `[L]` on the CPU, each entry in [0, 2].
    """
    layers = decoder_layers(model)
    check_windows(windows, getattr(model.config, "vocab_size", None))
    sums = torch.zeros(len(layers), dtype=torch.float64)

    def make_hook(index: int):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1).clamp(-1.0, 1.0)
            sums[index] += float(1.0 - cos.mean())

        return hook

    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    calls = 0
    try:
        with evaluation_mode(model):
            batches = iter_batches(windows, batch_size, model_device(model))
            total = math.ceil(windows.shape[0] / batch_size)
            for batch in progress_bar(batches, desc="block influence", total=total, unit="batch", progress=progress):
                # Only the decoder runs: the lm_head is not needed for hidden states.
                model.base_model(input_ids=batch, use_cache=False)
                calls += 1
    finally:
        for handle in handles:
            handle.remove()
    return (sums / calls).float()


def shortgpt_drop(bi: Tensor, keep: int) -> list[int]:
    """Layers ShortGPT drops: all but the `keep` largest Block Influence values, ascending.

    Stable descending sort, so among equal BI the lower index is kept first.

    Raises:
        ValueError: `keep` outside 1..L-1.
    """
    num_layers = int(bi.numel())
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep < num_layers:
        raise ValueError(f"keep={keep!r} layers is out of range for {num_layers} layers; use 1 to {num_layers - 1}.")
    order = torch.sort(bi.flatten().float().cpu(), descending=True, stable=True).indices
    return sorted(int(i) for i in order[keep:])
