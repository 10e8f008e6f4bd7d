"""Calibration data and the sequential, layer-by-layer engine shared by Wanda and SparseGPT.

Calibration windows are random contiguous slices of a token stream, drawn like the reference C4 sampler
(Python `random` seeded once, one random start per window), with the provenance recorded so that a result
says exactly which tokens it saw.

The engine (`run_sequential`) is the reference's sequential procedure (methods-spec section 5.2):

1. Run the embeddings once per batch of windows and capture the hidden states entering decoder layer 0,
   together with the keyword arguments the decoder layer needs (rotary position embeddings, attention mask,
   position ids). A forward pre-hook on layer 0 grabs them and raises a private exception so nothing past the
   embeddings is computed (the reference "Catcher").
2. For each layer l: hook its target linears, run all windows through the still-dense layer to accumulate
   input statistics (fp32), call `layer_fn(l, layer, stats)` which prunes the layer in place, then run the
   windows through the *pruned* layer; its outputs are the inputs of layer l+1.

Memory: the captured hidden states (`[nsamples, seqlen, hidden]` in the model dtype, twice: inputs and
outputs of the current layer) plus one layer's statistics; works on whatever device the model is on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from litprune.pruning.targets import decoder_layers, find_targets, layer_index_of
from litprune.utils.progress import progress_bar


def calibration_windows(
    tokens: Tensor | np.ndarray, nsamples: int, seqlen: int, seed: int = 0
) -> tuple[Tensor, dict[str, Any]]:
    """Draw `nsamples` random contiguous windows of `seqlen` tokens from a 1-D token stream.

    Starts are drawn with `random.Random(seed).randint(0, len(tokens) - seqlen - 1)`, one per window, the way
    the reference C4 sampler picks a window inside a long document (windows may overlap).

    Args:
        tokens: the token ids of a tokenized corpus as one 1-D stream (a tensor, a numpy array or a memmap).
        nsamples: number of windows (the reference uses 128).
        seqlen: tokens per window (the reference uses min(max_position_embeddings, 8192)).
        seed: seed of the window starts (the reference uses 0).

    Returns:
        `(windows, provenance)`: a LongTensor `[nsamples, seqlen]` and a dict with `nsamples`, `seqlen`,
        `seed`, `tokens_used` (= nsamples * seqlen), `stream_tokens` and the window `starts`.

    Raises:
        ValueError: the stream is not 1-D, a count is not positive, or the stream has fewer than `seqlen + 1`
            tokens.
    """
    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    if not hasattr(tokens, "ndim") or tokens.ndim != 1:
        shape = getattr(tokens, "shape", type(tokens).__name__)
        raise ValueError(f"tokens must be a 1-D stream of token ids, got shape {shape}. Flatten or concatenate it.")
    if nsamples < 1 or seqlen < 1:
        raise ValueError(f"nsamples and seqlen must be positive, got nsamples={nsamples}, seqlen={seqlen}.")
    if len(tokens) < seqlen + 1:
        raise ValueError(
            f"The token stream has {len(tokens)} tokens; a window of seqlen={seqlen} needs at least {seqlen + 1}. "
            "Use a shorter seqlen or more calibration text."
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, len(tokens) - seqlen - 1) for _ in range(nsamples)]
    windows = torch.from_numpy(np.stack([np.asarray(tokens[s : s + seqlen]).astype(np.int64) for s in starts]))
    provenance = {
        "nsamples": int(nsamples),
        "seqlen": int(seqlen),
        "seed": int(seed),
        "tokens_used": int(nsamples * seqlen),
        "stream_tokens": len(tokens),
        "starts": starts,
    }
    return windows, provenance


class LinearStatistic(Protocol):
    """Statistics of the inputs a linear layer sees, accumulated one forward batch at a time."""

    def add_batch(self, inputs: Tensor) -> None: ...


class InputNormStatistic:
    """Wanda's per-input-feature energy: `sq_norms[j] = (1/N_seq) * sum over tokens of x_j^2` (fp32).

    Updated with the reference running average (`WrappedGPT.add_batch`), where `N_seq` counts sequences, not
    tokens; only the ratios between features matter for masks.

    Attributes:
        sq_norms: `[in_features]` fp32.
        nsamples: sequences seen.
        ntokens: tokens seen.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.sq_norms = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.nsamples = 0
        self.ntokens = 0

    @property
    def norms(self) -> Tensor:
        """`||X_j||_2` up to a global constant: the per-feature factor of the Wanda score."""
        return self.sq_norms.sqrt()

    def add_batch(self, inputs: Tensor) -> None:
        batch = inputs.shape[0] if inputs.dim() == 3 else 1
        x = inputs.reshape(-1, inputs.shape[-1]).float()  # [tokens, in]
        self.sq_norms *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        self.ntokens += x.shape[0]
        self.sq_norms += x.pow(2).sum(dim=0) / self.nsamples


class HessianStatistic:
    """SparseGPT's layer Hessian `H = (2/N_seq) * sum over tokens of x x^T` (fp32, `[in, in]`).

    Updated with the reference running mean (`SparseGPT.add_batch`); `N_seq` counts sequences.

    Attributes:
        hessian: `[in_features, in_features]` fp32.
        nsamples: sequences seen.
        ntokens: tokens seen.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.nsamples = 0
        self.ntokens = 0

    def add_batch(self, inputs: Tensor) -> None:
        batch = inputs.shape[0] if inputs.dim() == 3 else 1
        x = inputs.reshape(-1, inputs.shape[-1]).float()  # [tokens, in]
        self.hessian *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        self.ntokens += x.shape[0]
        x = math.sqrt(2 / self.nsamples) * x
        self.hessian += x.t() @ x


STATISTICS: dict[str, Callable[[int, torch.device], LinearStatistic]] = {
    "input_norms": InputNormStatistic,
    "hessian": HessianStatistic,
}
"""Registry of the statistics `run_sequential` can gather, by name."""

LayerFn = Callable[[int, nn.Module, dict[str, Any]], None]


class _LayerZeroInputs(Exception):
    """Raised by the layer-0 pre-hook to stop the forward pass once its inputs are captured."""

    def __init__(self, hidden_states: Tensor, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.hidden_states = hidden_states
        self.kwargs = kwargs


def _capture_layer0_inputs(model: nn.Module, layer0: nn.Module, input_ids: Tensor) -> tuple[Tensor, dict[str, Any]]:
    def catcher(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        raise _LayerZeroInputs(hidden, kwargs)

    handle = layer0.register_forward_pre_hook(catcher, with_kwargs=True)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _LayerZeroInputs as caught:
        return caught.hidden_states, caught.kwargs
    finally:
        handle.remove()
    raise RuntimeError(
        f"The forward pass of {type(model).__name__} never reached decoder layer 0, so calibration inputs "
        "could not be captured. Is this a decoder-only model whose forward runs `layers[0]`?"
    )


def _layer_output(output: Any) -> Tensor:
    # transformers 5.x decoder layers return a tensor; older families return a tuple starting with it.
    return output[0] if isinstance(output, tuple) else output


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration as err:
        raise ValueError(f"{type(model).__name__} has no parameters to prune.") from err


@torch.no_grad()
def run_sequential(
    model: nn.Module,
    windows: Tensor,
    layer_fn: LayerFn,
    batch_size: int = 1,
    progress: bool | None = None,
    statistic: str | Callable[[int, torch.device], LinearStatistic] = "input_norms",
    targets: dict[str, nn.Linear] | None = None,
) -> None:
    """Prune a decoder layer by layer, each layer calibrated on the outputs of the already-pruned ones.

    Args:
        model: a Hugging Face causal LM (e.g. `LlamaForCausalLM`), on any device, fp32 or bf16.
        windows: calibration token ids `[nsamples, seqlen]` (see `calibration_windows`).
        layer_fn: called as `layer_fn(layer_index, layer, stats)` once per decoder layer that holds targets,
            after statistics were gathered on the still-dense layer; `stats` maps each target's module name to
            its statistic. It must prune `layer` in place; its outputs then feed the next layer.
        batch_size: windows per forward call. Statistics are sums over all windows, so it changes memory and
            speed, not results (up to fp rounding).
        progress: show progress bars over the windows run up to the first layer and over the layers (True/False;
            None follows `LITPRUNE_PROGRESS`, see `litprune.utils.progress`).
        statistic: what to accumulate per target: `"input_norms"` (Wanda), `"hessian"` (SparseGPT), or a
            callable `(in_features, device) -> object with add_batch(inputs)`.
        targets: the linears to gather statistics for (from `find_targets`); default: the 7 decoder linears.

    Raises:
        ValueError: bad windows or batch size, or an unknown statistic name.
    """
    if windows.dim() != 2 or windows.numel() == 0:
        raise ValueError(
            f"windows must be a non-empty [nsamples, seqlen] tensor of token ids, got {tuple(windows.shape)}."
        )
    if windows.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"windows must hold integer token ids, got dtype {windows.dtype}.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be a positive number of windows per forward call.")
    if isinstance(statistic, str):
        if statistic not in STATISTICS:
            raise ValueError(f"Unknown statistic {statistic!r}; choose one of {sorted(STATISTICS)}.")
        make_stat = STATISTICS[statistic]
    else:
        make_stat = statistic
    if targets is None:
        targets = find_targets(model)
    if not targets:
        raise ValueError("targets is empty: there is nothing to calibrate. Pass the result of find_targets(model).")

    device = _model_device(model)
    layers_prefix, layers = decoder_layers(model)
    by_layer: dict[int, dict[str, nn.Linear]] = {}
    for name, module in targets.items():
        index = layer_index_of(name, layers_prefix)
        if index is None:
            raise ValueError(
                f"Target {name!r} is outside the decoder layers ('{layers_prefix}.N'); layer-wise calibration "
                "can only prune linears inside decoder layers. Narrow the targets regex."
            )
        by_layer.setdefault(index, {})[name] = module
    last = max(by_layer)

    was_training = model.training
    model.eval()
    try:
        windows = windows.to(device=device, dtype=torch.long)
        # Per batch: the hidden states entering the current layer and that batch's layer kwargs.
        hidden: list[Tensor] = []
        layer_kwargs: list[dict[str, Any]] = []
        starts = range(0, windows.shape[0], batch_size)
        for start in progress_bar(starts, desc="calibration inputs", unit="batch", progress=progress):
            h, kw = _capture_layer0_inputs(model, layers[0], windows[start : start + batch_size])
            hidden.append(h)
            layer_kwargs.append(kw)

        for index in progress_bar(range(last + 1), desc="sequential pruning", unit="layer", progress=progress):
            layer = layers[index]
            layer_targets = by_layer.get(index, {})
            if layer_targets:
                stats = {name: make_stat(module.in_features, device) for name, module in layer_targets.items()}
                handles = [
                    module.register_forward_hook(lambda _m, inputs, _o, stat=stats[name]: stat.add_batch(inputs[0]))
                    for name, module in layer_targets.items()
                ]
                try:
                    for h, kw in zip(hidden, layer_kwargs, strict=True):
                        layer(h, **kw)
                finally:
                    for handle in handles:
                        handle.remove()
                layer_fn(index, layer, stats)
                del stats
            if index < last:
                hidden = [_layer_output(layer(h, **kw)) for h, kw in zip(hidden, layer_kwargs, strict=True)]
    finally:
        model.train(was_training)
