"""Per-channel input statistics of FLAP and Wanda-sp (methods-spec section 14.3), as pure functions.

Statistics are taken at two sites of every decoder layer, always on the INPUT of a linear layer:

- site A, the input of `o_proj` (`H * head_dim` channels; channel `c = q * head_dim + i` belongs to query head `q`);
- site M, the input of `down_proj` (`F` channels, `silu(gate_proj(x)) * up_proj(x)`).

For a site input `x[k, t, j]` (window `k` of `N`, token `t` of `T`, channel `j`), `SiteStatistic` keeps

- the baseline mean `mu_j`: the mean over windows of the token mean (the value a removed channel is replaced by);
- the fluctuation `f_j` (FLAP's IFV/WIFV): by default `sum_{k,t} (x[k,t,j] - mu_j)^2 / (N - 1)`, i.e. `T` times
  the variance with the usual `N - 1` correction (`N = 1` divides by 1). With `parity=True` the reference's
  recurrence is reproduced instead: its Welford update reads the "old" mean through an alias of the mean it
  has just updated, which gives the closed form
  `f_j = sum_{k=2..N} (k - 1) / (k (N - 1)) * sum_t (x[k,t,j] - mu_{k,j})^2` with `mu_k` the mean over the
  first `k` windows (the first window contributes nothing);
- the squared norm `s_j = (1/N) sum_{k,t} x[k,t,j]^2` (FLAP's WIFN and Wanda-sp).

Every window is one sample, whatever the batch size of the forward calls, so the statistics (the parity
recurrence included) do not depend on `batch_size`. Accumulation is in float64 whatever the model dtype (the
reference stores its mean in fp16); scores are invariant to a per-site scale, so only rounding can differ.

FLAP measures every layer on the DENSE model in one pass (`flap_statistics`); Wanda-sp is sequential and uses
`SiteStatistic` through the shared layer-by-layer engine (`litprune.pruning.calibration.run_sequential`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from litprune.pruning.depth import decoder_layers
from litprune.pruning.scorers import check_windows, evaluation_mode, iter_batches, model_device
from litprune.pruning.shapes import check_supported_config
from litprune.utils.progress import progress_bar

#: The two sites of a decoder layer: attention (`o_proj` input) and MLP (`down_proj` input).
SITES: tuple[str, ...] = ("attention", "mlp")


class SiteStatistic:
    """Running per-channel statistics of one linear layer's input (mean, fluctuation, squared norm).

    Args:
        channels: input features of the linear layer.
        device: where the running sums live (the model's device).
        parity: reproduce the reference's aliased Welford recurrence for the fluctuation (see the module
            docstring); False uses the exact `N - 1`-corrected sum of squared deviations.

    Attributes:
        nsamples: windows seen.
        ntokens: tokens seen.
    """

    def __init__(self, channels: int, device: torch.device | str = "cpu", parity: bool = False) -> None:
        self.parity = bool(parity)
        self.nsamples = 0
        self.ntokens = 0
        self._mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self._deviation = torch.zeros(channels, dtype=torch.float64, device=device)  # M2, or f under parity
        self._squares = torch.zeros(channels, dtype=torch.float64, device=device)

    def add_batch(self, inputs: Tensor) -> None:
        """Add a batch of site inputs `[B, T, C]` (or one window `[T, C]`), one window at a time."""
        batch = inputs.detach().to(torch.float64)
        if batch.dim() == 2:
            batch = batch.unsqueeze(0)
        for x in batch:  # [T, C]
            self._add_window(x)

    def _add_window(self, x: Tensor) -> None:
        k = self.nsamples + 1
        self.ntokens += x.shape[0]
        self._squares += x.pow(2).sum(0)
        if self.parity:
            self._mean.mul_((k - 1) / k).add_(x.mean(0) / k)
            if k > 1:
                # The deviations use the mean that already includes this window (the reference's alias).
                self._deviation.mul_((k - 2) / (k - 1)).add_((x - self._mean).pow(2).sum(0) / k)
        else:
            # Chan's merge of (count, mean, M2) with this window's token statistics.
            tokens_before, tokens = self.ntokens - x.shape[0], x.shape[0]
            window_mean = x.mean(0)
            window_m2 = (x - window_mean).pow(2).sum(0)
            delta = window_mean - self._mean
            total = tokens_before + tokens
            self._mean.add_(delta * tokens / total)
            self._deviation.add_(window_m2 + delta.pow(2) * tokens_before * tokens / total)
        self.nsamples = k

    @property
    def mean(self) -> Tensor:
        """`[C]` baseline mean `mu` (float64)."""
        return self._mean.clone()

    @property
    def fluctuation(self) -> Tensor:
        """`[C]` fluctuation `f` (float64): exact `M2 / (N - 1)`, or the reference recurrence under parity."""
        if self.parity:
            return self._deviation.clone()
        return self._deviation / max(self.nsamples - 1, 1)

    @property
    def squared_norm(self) -> Tensor:
        """`[C]` squared norm `s = (1/N) sum_{k,t} x^2` (float64)."""
        return self._squares / max(self.nsamples, 1)


@dataclass
class FlapStatistics:
    """Statistics of every site of every layer, from one calibration pass.

    Attributes:
        attention: per layer, the `o_proj` input statistic (`H * head_dim` channels).
        mlp: per layer, the `down_proj` input statistic (`F` channels).
        num_windows: calibration windows seen.
        batch_size: windows per forward call.
        parity: whether the fluctuation follows the reference recurrence.
    """

    attention: list[SiteStatistic]
    mlp: list[SiteStatistic]
    num_windows: int
    batch_size: int
    parity: bool

    def stacked(self, site: str, field: str) -> Tensor:
        """`[L, C]` float64 CPU tensor of one field ("mean", "fluctuation", "squared_norm") of one site."""
        if site not in SITES:
            raise ValueError(f"site={site!r} is unknown; use one of {', '.join(SITES)}.")
        stats = self.attention if site == "attention" else self.mlp
        return torch.stack([getattr(stat, field).cpu() for stat in stats])


def flap_statistics(
    model: nn.Module, windows: Tensor, batch_size: int = 1, parity: bool = False, progress: bool | None = None
) -> FlapStatistics:
    """Measure both sites of every layer on the dense model, in one pass (FLAP's propagation).

    Args:
        model: A Llama-layout causal LM (not modified).
        windows: Calibration token ids `[num_windows, seq_len]`, used in order.
        batch_size: Windows per forward call (every window counts as one sample whatever the batch size).
        parity: Reproduce the reference's fluctuation recurrence (see the module docstring).
        progress: Show a bar over the forward calls (True/False; None follows `LITPRUNE_PROGRESS`).

    Returns:
        The `FlapStatistics` of every layer.
    """
    check_supported_config(model.config)
    check_windows(windows, getattr(model.config, "vocab_size", None))
    layers = decoder_layers(model)
    device = model_device(model)
    attention = [SiteStatistic(layer.self_attn.o_proj.in_features, device, parity) for layer in layers]
    mlp = [SiteStatistic(layer.mlp.down_proj.in_features, device, parity) for layer in layers]

    def recorder(stat: SiteStatistic):
        def hook(module, args):
            stat.add_batch(args[0])

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(recorder(attention[i])))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(recorder(mlp[i])))
    try:
        with evaluation_mode(model):
            total = -(-int(windows.shape[0]) // batch_size)
            batches = iter_batches(windows, batch_size, device)
            for batch in progress_bar(batches, desc="FLAP statistics", total=total, unit="batch", progress=progress):
                model.base_model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return FlapStatistics(
        attention=attention, mlp=mlp, num_windows=int(windows.shape[0]), batch_size=batch_size, parity=parity
    )
