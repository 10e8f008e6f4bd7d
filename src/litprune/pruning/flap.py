"""FLAP and Wanda-sp width pruning of a GQA Llama, end to end (methods-spec section 14), as pure functions.

    model, masks, info = prune_flap(parent, windows, FlapOptions(), num_key_value_heads=4, intermediate_size=7168)
    model, masks, info = prune_wanda_sp(parent, windows, num_key_value_heads=4, intermediate_size=7168)

Both remove whole KV groups (each with its `H / K` query heads) and MLP neurons; layers, hidden size and
`head_dim` are kept. The pipelines differ in where their statistics come from:

- FLAP: one calibration pass over the DENSE model (`flap_statistics`), every layer scored on dense inputs; the
  metric (IFV, WIFV, WIFN) of the attention site is squared; structure by `uniform` (fixed counts per layer) or
  `adaptive` (global AL-AM) search; then the removed channels are replaced by their calibration means through
  `o_proj` / `down_proj` biases (`compensate`).
- Wanda-sp: sequential through the shared engine (`litprune.pruning.calibration.run_sequential`): layer `l` is
  scored on the outputs of the already pruned layers `< l` (the pruning is applied as input masks during the pass,
  so the parent is never modified), uniform counts, no bias.

Design choices (`FlapOptions`): the default structure is `uniform` because only fixed counts give an ordinary
Hugging Face Llama (the reference's default, AL-AM, gives per-layer widths); an adaptive result is available as
`output="masked"` (the parent's shape with the removed units zeroed, the reference's `--unstr`) and is refused
for `output="sliced"` before any calibration. `parity=True` reproduces the reference's quirks (aliased variance
recurrence, integer 512/3 weight, adaptive threshold off-by-one); it is off by default.

Not reproduced from the reference: its calibration text (wikitext-2 for FLAP, C4 with a hard-coded 128 samples for
Wanda-sp; here every method calibrates on the windows it is given, by default drawn from the run's own data), its
fp16 computation and fp16-stored means (statistics here are float64), and the GQA fork's `attn_bias` config key
(the result here uses the real `attention_bias` / `mlp_bias` flags, so a stock reload keeps every bias).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from litprune.pruning.calibration import run_sequential
from litprune.pruning.depth import decoder_layers
from litprune.pruning.flap_compress import (
    COMPENSATIONS,
    compensation_biases,
    geometry,
    mask_flap,
    slice_flap,
)
from litprune.pruning.flap_search import (
    ATTN_UNIT_WEIGHTS,
    METRICS,
    STRUCTURES,
    FlapMasks,
    adaptive_masks,
    flap_channel_scores,
    group_scores,
    reference_uniform_counts,
    top_mask,
    uniform_masks,
    wanda_sp_channel_scores,
)
from litprune.pruning.flap_statistics import SiteStatistic, flap_statistics
from litprune.pruning.targets import decoder_layers as named_decoder_layers
from litprune.utils.suggest import did_you_mean

#: How a result is represented: a smaller model ("sliced") or the parent's shape with units zeroed ("masked").
OUTPUTS: tuple[str, ...] = ("sliced", "masked")


@dataclass(frozen=True)
class FlapOptions:
    """FLAP's settings, as YAML writes them (`flap: {metric: WIFV, structure: uniform, ...}`).

    Attributes:
        metric: channel importance: "WIFV" (default: fluctuation times squared column norm), "IFV" (fluctuation)
            or "WIFN" (mean |weight| times input norm).
        structure: "uniform" (default; the same number of KV groups and neurons in every layer, from the shape
            solver or an explicit target) or "adaptive" (AL-AM: one global ranking; per-layer widths differ, so
            it needs `output: masked`).
        attn_unit_weight: adaptive only: a KV group's weight in neurons, "ref" (default, the reference's
            `4 head_dim / 3`, 512/3 at head_dim 128) or "exact" (`(2G + 2) head_dim / 3`, what a GQA group
            really costs).
        parity: reproduce the reference's quirks (variance recurrence, integer weight, threshold off-by-one).
        compensate: bias compensation: "all" (default, `o_proj` and `down_proj`), "attention" (`o_proj` only;
            the MaxText 4B target has no MLP bias) or "none".
        output: "sliced" (default, a smaller Llama) or "masked" (the parent's shape, removed units zeroed).
    """

    metric: str = "WIFV"
    structure: str = "uniform"
    attn_unit_weight: str = "ref"
    parity: bool = False
    compensate: str = "all"
    output: str = "sliced"

    def problems(self) -> list[str]:
        """Every problem with these settings, each naming the field, the value and what is allowed."""
        problems = []
        for name, allowed in (
            ("metric", METRICS),
            ("structure", STRUCTURES),
            ("attn_unit_weight", ATTN_UNIT_WEIGHTS),
            ("compensate", COMPENSATIONS),
            ("output", OUTPUTS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                hint = did_you_mean(str(value), allowed) if isinstance(value, str) else ""
                problems.append(f"flap.{name}={value!r} is unknown.{hint} Allowed: {', '.join(allowed)}.")
        if not isinstance(self.parity, bool):
            problems.append(f"flap.parity={self.parity!r} must be true or false.")
        if self.structure == "adaptive" and self.output == "sliced":
            problems.append(
                "flap.structure='adaptive' (AL-AM) keeps different widths per layer, which a Hugging Face LlamaConfig "
                "cannot hold, so output='sliced' is refused. Use output: masked (the parent's shape with the removed "
                "units zeroed, the same function), or structure: uniform for a smaller Llama."
            )
        return problems

    @classmethod
    def parse(cls, value: Any, problems: list[str]) -> FlapOptions | None:
        """`value` (None, a mapping or a FlapOptions) as FlapOptions; appends to `problems` when it is not valid."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            options = value
        elif isinstance(value, dict):
            names = [f.name for f in fields(cls)]
            unknown = [key for key in value if key not in names]
            if unknown:
                for key in unknown:
                    hint = did_you_mean(str(key), names)
                    problems.append(f"flap option {key!r} is unknown.{hint} Options: {', '.join(names)}.")
                return None
            options = cls(**value)
        else:
            problems.append(
                f"flap={value!r} must be a mapping of FLAP options ({', '.join(f.name for f in fields(cls))})."
            )
            return None
        own = options.problems()
        problems.extend(own)
        return None if own else options

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_flap_parent(config: Any, options: FlapOptions) -> None:
    """Raise unless the parent can carry the requested bias compensation.

    Raises:
        ValueError: compensation on a family whose config has no `attention_bias` / `mlp_bias` flags.
    """
    if options.compensate != "none" and getattr(config, "model_type", None) != "llama":
        raise ValueError(
            f"flap.compensate={options.compensate!r} puts biases on o_proj/down_proj, which only a Llama config can "
            f"express (attention_bias / mlp_bias); the parent has model_type={getattr(config, 'model_type', None)!r}. "
            "Use compensate: none, or method wanda_sp."
        )


def _site_scores(model: nn.Module, stats, metric: str) -> tuple[Tensor, Tensor]:
    attention, mlp = [], []
    for i, layer in enumerate(decoder_layers(model)):
        a, m = stats.attention[i], stats.mlp[i]
        score = flap_channel_scores(layer.self_attn.o_proj.weight, metric, a.fluctuation, a.squared_norm)
        attention.append(score.pow(2))  # FLAP squares the attention metric once more
        mlp.append(flap_channel_scores(layer.mlp.down_proj.weight, metric, m.fluctuation, m.squared_norm))
    return torch.stack(attention), torch.stack(mlp)


def prune_flap(
    model: nn.Module,
    windows: Tensor,
    options: FlapOptions | None = None,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    ratio: float | None = None,
    batch_size: int = 1,
    progress: bool | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, FlapMasks, dict[str, Any]]:
    """FLAP: score on the dense model, search the structure, compensate with biases, slice or zero.

    Args:
        model: The dense GQA Llama parent (not modified unless `inplace` with output "masked").
        windows: Calibration token ids `[num_windows, seq_len]`.
        options: `FlapOptions` (default: WIFV, uniform, ref weight, no parity, full compensation, sliced).
        num_key_value_heads: Uniform only: KV groups kept per layer.
        intermediate_size: Uniform only: MLP neurons kept per layer.
        ratio: Uniform without counts: the reference's unit fraction `p` (keeps `K - int(pK)` groups and
            `F - int(pF)` neurons); adaptive: the fraction of weighted units removed, in [0, 1).
        batch_size: Windows per forward call of the statistics pass.
        progress: Show a progress bar over the calibration pass.
        inplace: Output "masked" only: zero `model` itself instead of a copy.

    Returns:
        `(pruned model, masks, info)`; info is plain data (options, kept counts and group indices per layer,
        and for adaptive the unit weight, threshold and kept/total weighted mass).

    Raises:
        ValueError: invalid options, missing or conflicting counts/ratio, or a parent that cannot carry biases.
    """
    options = options or FlapOptions()
    problems = options.problems()
    if problems:
        raise ValueError("prune_flap: " + " ".join(problems))
    check_flap_parent(model.config, options)
    heads, kv, _, head_dim = geometry(model.config)
    counts_given = num_key_value_heads is not None or intermediate_size is not None
    if options.structure == "adaptive" and (counts_given or ratio is None):
        raise ValueError(
            "prune_flap: structure='adaptive' takes a ratio (fraction of weighted units to remove) and no fixed "
            f"counts; got ratio={ratio!r}, num_key_value_heads={num_key_value_heads!r}, "
            f"intermediate_size={intermediate_size!r}."
        )
    if options.structure == "uniform":
        if counts_given and (num_key_value_heads is None or intermediate_size is None or ratio is not None):
            raise ValueError(
                "prune_flap: uniform search takes both num_key_value_heads and intermediate_size, or a ratio alone; "
                f"got ratio={ratio!r}, num_key_value_heads={num_key_value_heads!r}, "
                f"intermediate_size={intermediate_size!r}."
            )
        if not counts_given:
            if ratio is None or not 0.0 <= ratio < 1.0:
                raise ValueError(f"prune_flap: ratio={ratio!r} must be a unit fraction in [0, 1), or give counts.")
            num_key_value_heads, intermediate_size = reference_uniform_counts(ratio, kv, model.config.intermediate_size)
    stats = flap_statistics(model, windows, batch_size=batch_size, parity=options.parity, progress=progress)
    attention, mlp = _site_scores(model, stats, options.metric)
    info: dict[str, Any] = {**options.as_dict()}
    if options.structure == "uniform":
        masks = uniform_masks(
            group_scores(attention, heads, kv, reduce="sum"), mlp, num_key_value_heads, intermediate_size
        )
    else:
        result = adaptive_masks(
            attention, mlp, ratio, heads, kv, head_dim, attn_unit_weight=options.attn_unit_weight, parity=options.parity
        )
        masks = result.masks
        info.update(
            {
                "attn_unit_weight_value": result.unit_weight,
                "threshold": result.threshold,
                "kept_unit_mass": result.kept_mass,
                "total_unit_mass": result.total_mass,
                "unit_ratio_achieved": 1.0 - result.kept_mass / result.total_mass,
            }
        )
    o_terms = down_terms = None
    if options.compensate != "none":
        o_terms, down_terms = compensation_biases(
            model, masks, stats.stacked("attention", "mean"), stats.stacked("mlp", "mean")
        )
    if options.output == "sliced":
        pruned = slice_flap(model, masks, options.compensate, o_terms, down_terms)
    else:
        pruned = mask_flap(model, masks, options.compensate, o_terms, down_terms, inplace=inplace)
    info.update(masks.as_record())
    info["num_windows"] = stats.num_windows
    return pruned, masks, info


def prune_wanda_sp(
    model: nn.Module,
    windows: Tensor,
    num_key_value_heads: int,
    intermediate_size: int,
    batch_size: int = 1,
    progress: bool | None = None,
) -> tuple[nn.Module, FlapMasks, dict[str, Any]]:
    """Wanda-sp: sequential uniform width pruning without bias (the parent is not modified).

    Layer `l` is scored on the outputs of layers `< l` with their removed units already masked; the score of a
    channel is `mean_i |W[i, j]| * sqrt(s_j)`, a head sums its channels, a KV group averages its heads.

    Args:
        model: The dense GQA Llama-layout parent.
        windows: Calibration token ids `[num_windows, seq_len]`.
        num_key_value_heads: KV groups kept per layer.
        intermediate_size: MLP neurons kept per layer.
        batch_size: Windows per forward call.
        progress: Show progress bars over the calibration passes.

    Returns:
        `(pruned model, masks, info)` with kept counts and group indices per layer.

    Raises:
        ValueError: counts out of range.
    """
    heads, kv, g, head_dim = geometry(model.config)
    f = model.config.intermediate_size
    if not 1 <= num_key_value_heads <= kv or not 1 <= intermediate_size <= f:
        raise ValueError(
            f"prune_wanda_sp: num_key_value_heads={num_key_value_heads} must be in 1..{kv} and "
            f"intermediate_size={intermediate_size} in 1..{f}."
        )
    prefix, layers = named_decoder_layers(model)
    targets = {}
    for i, layer in enumerate(layers):
        targets[f"{prefix}.{i}.self_attn.o_proj"] = layer.self_attn.o_proj
        targets[f"{prefix}.{i}.mlp.down_proj"] = layer.mlp.down_proj
    group_masks: list[Tensor] = [torch.ones(kv, dtype=torch.bool)] * len(layers)
    neuron_masks: list[Tensor] = [torch.ones(f, dtype=torch.bool)] * len(layers)
    handles = []

    def masking_hook(mask: Tensor):
        def hook(module, args):
            x = args[0]
            return (x * mask.to(device=x.device, dtype=x.dtype),) + tuple(args[1:])

        return hook

    def prune_layer(index: int, layer: nn.Module, stats: dict[str, Any]) -> None:
        o_stat = stats[f"{prefix}.{index}.self_attn.o_proj"]
        down_stat = stats[f"{prefix}.{index}.mlp.down_proj"]
        channel = wanda_sp_channel_scores(layer.self_attn.o_proj.weight, o_stat.squared_norm)
        group_masks[index] = top_mask(group_scores(channel, heads, kv, reduce="sum"), num_key_value_heads)
        neuron_masks[index] = top_mask(
            wanda_sp_channel_scores(layer.mlp.down_proj.weight, down_stat.squared_norm), intermediate_size
        )
        # The pruned layer's outputs feed the next layer: mask the removed units for the rest of the pass.
        channels = group_masks[index].repeat_interleave(g * head_dim)
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(masking_hook(channels)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(masking_hook(neuron_masks[index])))

    try:
        run_sequential(
            model,
            windows,
            prune_layer,
            batch_size=batch_size,
            progress=progress,
            statistic=lambda channels, device: SiteStatistic(channels, device),
            targets=targets,
        )
    finally:
        for handle in handles:
            handle.remove()
    masks = FlapMasks(groups=torch.stack(group_masks), neurons=torch.stack(neuron_masks))
    pruned = slice_flap(model, masks, compensate="none")
    info = {**masks.as_record(), "num_windows": int(windows.shape[0])}
    return pruned, masks, info
