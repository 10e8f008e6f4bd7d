"""FLAP / Wanda-sp metrics and structure search for GQA Llama (methods-spec sections 14.4-14.5), pure functions.

Metrics per input channel `j` of a site (weight `W` = `o_proj.weight` or `down_proj.weight`, `[d, C]`):

- IFV: `f_j`; WIFV (FLAP's default): `f_j * ||W[:, j]||^2`; WIFN: `mean_i |W[i, j]| * sqrt(s_j)`;
- Wanda-sp: `mean_i |W[i, j]| * sqrt(s_j)` (WIFN's formula, on Wanda-sp's own sequential statistics).

FLAP squares the metric of the attention site once more (`score = metric^2`); that is part of the method, not a
quirk, and is always applied. Wanda-sp does not square.

The pruning unit of attention is a whole KV group: `G = H / K` query heads, their key and value head and their
`G * head_dim` columns of `o_proj`, so `num_key_value_groups` stays valid (query head `q` belongs to group
`q // G`, transformers' `repeat_kv` order). A group's score is the mean over its `G` query heads of a per-head
score (the GQA extension of the reference).

Structure search:

- `uniform` (UL-UM): per layer, keep the `K'` best groups and `F'` best neurons (head score = SUM of the channel
  scores over `head_dim`); the counts are fixed (the shape solver's, or an explicit target), so every layer has
  the same width and the result is an ordinary Llama. Ties keep the lower index. `reference_uniform_counts`
  gives the reference's counts `K - int(p K)`, `F - int(p F)` for a unit fraction `p`.
- `adaptive` (AL-AM): standardise each row (one layer, one site) to zero mean and unbiased unit std (a constant
  row becomes all zeros), average the z-scores over a head's channels then over the group's heads, concatenate
  every group and neuron of every layer, sort descending, weight each group by `attn_unit_weight` neurons and
  each neuron by 1, and keep the prefix whose cumulative weight is nearest `(1 - p)` of the total. There is
  no per-layer floor: a layer can keep no group or no neuron.

Attention unit weight (the cost of a group in neurons of `3 d` parameters): `ref` = `4 head_dim / 3`, the
reference's MHA head cost `4 d head_dim` over the neuron cost (512/3 at head_dim 128, also used by the GQA fork
for whole groups); `exact` = `(2 G + 2) head_dim / 3`, what a GQA group really costs (1280/3 for Llama-3-8B).

`parity=True` reproduces the reference's adaptive quirks: the weight is truncated to an integer (512/3 -> 170)
and the unit at the chosen threshold is dropped as well (keep `score > tau`; at `p = 0` the single lowest unit
goes). By default the weight is exact and the threshold unit is kept (at `p = 0` nothing is removed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: FLAP's metrics (Wanda-sp has its own, `wanda_sp_channel_scores`).
METRICS: tuple[str, ...] = ("IFV", "WIFV", "WIFN")
#: Structure searches: UL-UM ("uniform", fixed counts per layer) and AL-AM ("adaptive", global).
STRUCTURES: tuple[str, ...] = ("uniform", "adaptive")
#: Weights of an attention unit (KV group) in neurons.
ATTN_UNIT_WEIGHTS: tuple[str, ...] = ("ref", "exact")


@dataclass
class FlapMasks:
    """Which KV groups and MLP neurons each layer keeps (True = kept).

    Attributes:
        groups: `[L, K]` bool.
        neurons: `[L, F]` bool.
    """

    groups: Tensor
    neurons: Tensor

    @property
    def kept_groups(self) -> list[int]:
        """KV groups kept per layer."""
        return [int(n) for n in self.groups.sum(1)]

    @property
    def kept_neurons(self) -> list[int]:
        """MLP neurons kept per layer."""
        return [int(n) for n in self.neurons.sum(1)]

    @property
    def is_uniform(self) -> bool:
        """Whether every layer keeps the same number of groups and of neurons (a plain Llama can hold it)."""
        return len(set(self.kept_groups)) == 1 and len(set(self.kept_neurons)) == 1

    def channel_mask(self, layer: int, heads_per_group: int, head_dim: int) -> Tensor:
        """`[H * head_dim]` bool mask of the `o_proj` input channels (query-head channels) of `layer`."""
        return self.groups[layer].repeat_interleave(heads_per_group * head_dim)

    def kv_channel_mask(self, layer: int, head_dim: int) -> Tensor:
        """`[K * head_dim]` bool mask of the key/value channels of `layer`."""
        return self.groups[layer].repeat_interleave(head_dim)

    def as_record(self) -> dict[str, list]:
        """Plain data: kept counts and kept indices per layer."""
        return {
            "kept_groups": self.kept_groups,
            "kept_neurons": self.kept_neurons,
            "kept_group_indices": [row.nonzero().flatten().tolist() for row in self.groups],
        }


def flap_channel_scores(weight: Tensor, metric: str, fluctuation: Tensor, squared_norm: Tensor) -> Tensor:
    """FLAP's metric of every input channel of one site (not yet squared for attention).

    Args:
        weight: `[d, C]` weight of `o_proj` or `down_proj` (the dense parent's).
        metric: "IFV", "WIFV" or "WIFN".
        fluctuation: `[C]` fluctuation `f`.
        squared_norm: `[C]` squared norm `s`.

    Returns:
        `[C]` float64 scores.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; use one of {', '.join(METRICS)} (FLAP's default: WIFV).")
    w = weight.detach().to(torch.float64).cpu()
    if metric == "IFV":
        return fluctuation.to(torch.float64).cpu().clone()
    if metric == "WIFV":
        return fluctuation.to(torch.float64).cpu() * w.pow(2).sum(0)
    return w.abs().mean(0) * squared_norm.to(torch.float64).cpu().sqrt()


def wanda_sp_channel_scores(weight: Tensor, squared_norm: Tensor) -> Tensor:
    """Wanda-sp's score of every input channel: `mean_i |W[i, j]| * sqrt(s_j)` (float64, `[C]`)."""
    w = weight.detach().to(torch.float64).cpu()
    return w.abs().mean(0) * squared_norm.to(torch.float64).cpu().sqrt()


def group_scores(channel_scores: Tensor, num_heads: int, num_key_value_heads: int, reduce: str = "sum") -> Tensor:
    """KV-group scores from per-channel attention scores.

    Args:
        channel_scores: `[..., H * head_dim]` scores of the `o_proj` input channels.
        num_heads: query heads `H`.
        num_key_value_heads: KV groups `K`.
        reduce: how a head combines its channels: "sum" (uniform search) or "mean" (adaptive search).

    Returns:
        `[..., K]`: per group, the mean over its `H / K` query heads of the head scores.
    """
    *lead, channels = channel_scores.shape
    heads = channel_scores.reshape(*lead, num_heads, channels // num_heads)
    heads = heads.sum(-1) if reduce == "sum" else heads.mean(-1)
    return heads.reshape(*lead, num_key_value_heads, num_heads // num_key_value_heads).mean(-1)


def standardize(rows: Tensor) -> Tensor:
    """Z-score each row: `(x - mean) / std` with the unbiased std; a row with zero spread becomes zeros."""
    rows = rows.detach().to(torch.float64)
    std = rows.std(dim=-1, keepdim=True, unbiased=True)
    centred = rows - rows.mean(dim=-1, keepdim=True)
    return torch.where(std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(rows))


def top_mask(scores: Tensor, keep: int) -> Tensor:
    """Bool mask keeping the `keep` largest entries of a 1-D tensor (ties: the lower index is kept)."""
    order = torch.sort(scores.detach().to(torch.float64).cpu(), descending=True, stable=True).indices
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


def reference_uniform_counts(ratio: float, num_key_value_heads: int, intermediate_size: int) -> tuple[int, int]:
    """The reference's UL-UM counts for a unit fraction `ratio`: `(K - int(p K), F - int(p F))` kept."""
    return (
        num_key_value_heads - int(ratio * num_key_value_heads),
        intermediate_size - int(ratio * intermediate_size),
    )


def uniform_masks(group_scores_: Tensor, neuron_scores: Tensor, num_groups: int, num_neurons: int) -> FlapMasks:
    """UL-UM with fixed counts: keep the `num_groups` best groups and `num_neurons` best neurons of every layer.

    Args:
        group_scores_: `[L, K]` group scores (from `group_scores(..., reduce="sum")`).
        neuron_scores: `[L, F]` neuron scores.
        num_groups: KV groups kept per layer, 1 to K.
        num_neurons: neurons kept per layer, 1 to F.

    Raises:
        ValueError: a count out of range.
    """
    layers, kv = group_scores_.shape
    f = neuron_scores.shape[1]
    if not 1 <= num_groups <= kv or not 1 <= num_neurons <= f:
        raise ValueError(
            f"Uniform search keeps num_groups={num_groups} of {kv} KV groups and num_neurons={num_neurons} of {f} "
            f"neurons per layer; both must be at least 1 and at most the parent's count."
        )
    groups = torch.stack([top_mask(group_scores_[i], num_groups) for i in range(layers)])
    neurons = torch.stack([top_mask(neuron_scores[i], num_neurons) for i in range(layers)])
    return FlapMasks(groups=groups, neurons=neurons)


def attention_unit_weight(choice: str, num_heads: int, num_key_value_heads: int, head_dim: int, parity: bool) -> float:
    """Weight of one KV group in neurons: "ref" `4 head_dim / 3`, "exact" `(2 G + 2) head_dim / 3`; int under parity."""
    if choice not in ATTN_UNIT_WEIGHTS:
        raise ValueError(f"attn_unit_weight={choice!r} is unknown; use one of {', '.join(ATTN_UNIT_WEIGHTS)}.")
    g = num_heads // num_key_value_heads
    weight = 4 * head_dim / 3 if choice == "ref" else (2 * g + 2) * head_dim / 3
    return float(int(weight)) if parity else weight


@dataclass
class AdaptiveResult:
    """AL-AM masks and the numbers behind them.

    Attributes:
        masks: the kept groups and neurons.
        group_z: `[L, K]` standardised group scores.
        neuron_z: `[L, F]` standardised neuron scores.
        unit_weight: weight of a group in neurons.
        threshold: the score `tau` at the chosen cut.
        kept_mass: kept weighted units; total_mass: all weighted units.
    """

    masks: FlapMasks
    group_z: Tensor
    neuron_z: Tensor
    unit_weight: float
    threshold: float
    kept_mass: float
    total_mass: float


def adaptive_masks(
    attention_scores: Tensor,
    neuron_scores: Tensor,
    ratio: float,
    num_heads: int,
    num_key_value_heads: int,
    head_dim: int,
    attn_unit_weight: str = "ref",
    parity: bool = False,
) -> AdaptiveResult:
    """AL-AM: one global, standardised ranking of every KV group and neuron of every layer.

    Args:
        attention_scores: `[L, H * head_dim]` channel scores of the attention site (already squared for FLAP).
        neuron_scores: `[L, F]` channel scores of the MLP site.
        ratio: `p`, the fraction of weighted units to remove, in [0, 1).
        num_heads: query heads `H`.
        num_key_value_heads: KV groups `K`.
        head_dim: channels per head.
        attn_unit_weight: "ref" or "exact" (see the module docstring).
        parity: reproduce the reference's integer weight and threshold off-by-one.

    Raises:
        ValueError: ratio outside [0, 1) or an unknown weight choice.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio!r} must be a fraction of weighted units to remove, in [0, 1).")
    weight = attention_unit_weight(attn_unit_weight, num_heads, num_key_value_heads, head_dim, parity)
    group_z = group_scores(standardize(attention_scores), num_heads, num_key_value_heads, reduce="mean")
    neuron_z = standardize(neuron_scores)
    layers, kv = group_z.shape
    scores = torch.cat([group_z.flatten(), neuron_z.flatten()])
    weights = torch.cat(
        [torch.full((group_z.numel(),), weight, dtype=torch.float64), torch.ones(neuron_z.numel(), dtype=torch.float64)]
    )
    order = torch.sort(scores, descending=True, stable=True).indices
    cumulative = weights[order].cumsum(0)
    total = float(cumulative[-1])
    index = int(torch.argmin((cumulative - (1.0 - ratio) * total).abs()))
    threshold = float(scores[order[index]])
    if parity:
        keep = scores > threshold
    else:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[order[: index + 1]] = True
    masks = FlapMasks(
        groups=keep[: group_z.numel()].reshape(layers, kv), neurons=keep[group_z.numel() :].reshape(layers, -1)
    )
    return AdaptiveResult(
        masks=masks,
        group_z=group_z,
        neuron_z=neuron_z,
        unit_weight=weight,
        threshold=threshold,
        kept_mass=float(weights[keep].sum()),
        total_mass=total,
    )
