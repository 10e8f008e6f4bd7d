"""Apply FLAP / Wanda-sp masks to a GQA Llama: slicing or zeroing, and bias compensation (methods-spec 14.6-14.7).

For a layer with group mask `m_g` (`[K]`), the query-channel mask `m_q` repeats each entry `G * head_dim` times
and the key/value mask `m_kv` repeats it `head_dim` times; `m_F` is the neuron mask. Removed are the rows of
`q_proj` (`m_q`), `k_proj`/`v_proj` (`m_kv`), `gate_proj`/`up_proj` (`m_F`) and the matching columns of `o_proj`
(`m_q`) and `down_proj` (`m_F`).

Bias compensation replaces every removed input channel of `o_proj` / `down_proj` by its calibration mean `mu`:

    b_o    += W_o[:, ~m_q] @ mu_A[~m_q]        b_down += W_down[:, ~m_F] @ mu_M[~m_F]

computed in float64 from the parent's weights. The reference assigns these into zero biases; adding to the
parent's own bias (if it has one) is the same there and stays exact otherwise. So on the calibration data the
token mean of every compensated projection output equals the dense one.

Representation (a stock `LlamaConfig` has no per-projection bias flag): `attention_bias=True` gives q, k, v AND o
a bias, `mlp_bias=True` gives gate, up AND down one. The compensated model sets the flag(s) it needs and carries
explicit zero biases on the other projections, so `save_pretrained` -> `from_pretrained` reproduces it exactly
(`compensate="attention"` sets only `attention_bias`, the layout of the MaxText 4B FLAP target, which has no MLP
bias). Two outputs:

- `slice_flap`: a smaller model (uniform widths only), built with the Minitron-width slicer
  (`litprune.pruning.width.slice_width`) so both methods share one slicing rule;
- `mask_flap`: the parent's shape with the removed rows and columns zeroed (the reference's `--unstr`): the same
  function, any per-layer widths (AL-AM included; a layer may keep no group at all, its attention block then
  outputs only `b_o`), but no parameter saving. `flap_keep_masks` gives the matching keep-masks for training.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from litprune.models.params import ParameterCount, count_parameters
from litprune.pruning.depth import decoder_layers
from litprune.pruning.flap_search import FlapMasks
from litprune.pruning.width import slice_width

#: How much bias compensation a FLAP result carries: both sites, the attention site only, or none.
COMPENSATIONS: tuple[str, ...] = ("all", "attention", "none")

_ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


def bias_flags(compensate: str) -> dict[str, bool]:
    """Config flags a result compensated with `compensate` needs: `{"attention_bias": ..., "mlp_bias": ...}`.

    Only flags that must be switched ON are returned (a parent's own biases are kept).
    """
    if compensate not in COMPENSATIONS:
        raise ValueError(f"compensate={compensate!r} is unknown; use one of {', '.join(map(repr, COMPENSATIONS))}.")
    flags = {}
    if compensate in ("all", "attention"):
        flags["attention_bias"] = True
    if compensate == "all":
        flags["mlp_bias"] = True
    return flags


def geometry(config) -> tuple[int, int, int, int]:
    """`(H, K, G, head_dim)` of a Llama-layout config (head_dim explicit or `hidden_size / H`)."""
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, heads // kv, head_dim


def compensation_biases(
    model: nn.Module, masks: FlapMasks, attention_means: Tensor, mlp_means: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, the `[d]` bias terms that replace the removed channels by their means (float64, CPU).

    Args:
        model: The dense parent the masks were found on.
        masks: Kept groups and neurons.
        attention_means: `[L, H * head_dim]` calibration means of the `o_proj` inputs.
        mlp_means: `[L, F]` calibration means of the `down_proj` inputs.

    Returns:
        `(o_proj terms, down_proj terms)`, one `[d]` tensor per layer each.
    """
    _, _, g, head_dim = geometry(model.config)
    o_terms, down_terms = [], []
    for i, layer in enumerate(decoder_layers(model)):
        removed_q = ~masks.channel_mask(i, g, head_dim)
        removed_f = ~masks.neurons[i]
        w_o = layer.self_attn.o_proj.weight.detach().to("cpu", torch.float64)
        w_down = layer.mlp.down_proj.weight.detach().to("cpu", torch.float64)
        o_terms.append(w_o[:, removed_q] @ attention_means[i].to(torch.float64)[removed_q])
        down_terms.append(w_down[:, removed_f] @ mlp_means[i].to(torch.float64)[removed_f])
    return o_terms, down_terms


def _attach_biases(model: nn.Module, flags: dict[str, bool]) -> None:
    """Turn the config flags on and give every projection they cover a bias (zeros where it had none)."""
    for flag, names in (("attention_bias", _ATTENTION_LINEARS), ("mlp_bias", _MLP_LINEARS)):
        if not flags.get(flag):
            continue
        setattr(model.config, flag, True)
        for layer in decoder_layers(model):
            block = layer.self_attn if flag == "attention_bias" else layer.mlp
            for name in names:
                linear = getattr(block, name)
                if linear.bias is None:
                    weight = linear.weight
                    linear.bias = nn.Parameter(
                        torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device),
                        requires_grad=weight.requires_grad,
                    )


def _add_compensation(model: nn.Module, o_terms: list[Tensor] | None, down_terms: list[Tensor] | None) -> None:
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(model)):
            for linear, terms in ((layer.self_attn.o_proj, o_terms), (layer.mlp.down_proj, down_terms)):
                if terms is not None:
                    bias = linear.bias
                    bias.copy_((bias.detach().to(torch.float64).cpu() + terms[i]).to(bias.dtype))


def _split_terms(compensate, o_terms, down_terms):
    if compensate == "none":
        return None, None
    if o_terms is None or down_terms is None:
        raise ValueError(f"compensate={compensate!r} needs the compensation terms from compensation_biases.")
    return o_terms, (down_terms if compensate == "all" else None)


def slice_flap(
    model: nn.Module,
    masks: FlapMasks,
    compensate: str = "all",
    o_terms: list[Tensor] | None = None,
    down_terms: list[Tensor] | None = None,
) -> nn.Module:
    """A new, smaller model of the parent's class keeping the masked units, with compensation biases.

    Args:
        model: The dense parent (not modified).
        masks: Uniform masks (the same counts in every layer).
        compensate: "all", "attention" or "none" (see the module docstring).
        o_terms: Per layer `o_proj` bias terms (from `compensation_biases`); needed unless `compensate="none"`.
        down_terms: Per layer `down_proj` bias terms; needed for `compensate="all"`.

    Raises:
        ValueError: non-uniform masks (a Hugging Face Llama holds one width for all layers), or missing terms.
    """
    if not masks.is_uniform:
        raise ValueError(
            f"The masks keep different widths per layer (KV groups {masks.kept_groups}, neurons "
            f"{masks.kept_neurons}); a Hugging Face LlamaConfig holds one width for all layers, so they cannot be "
            "sliced into an ordinary Llama. Use structure='uniform' (fixed counts per layer) or output='masked'."
        )
    flags = bias_flags(compensate)
    o_terms, down_terms = _split_terms(compensate, o_terms, down_terms)
    hidden = torch.arange(model.config.hidden_size)
    keep_mlp = [row.nonzero().flatten() for row in masks.neurons]
    keep_groups = [row.nonzero().flatten() for row in masks.groups]
    pruned = slice_width(model, hidden, keep_mlp, keep_groups)
    _attach_biases(pruned, flags)
    _add_compensation(pruned, o_terms, down_terms)
    return pruned


def mask_flap(
    model: nn.Module,
    masks: FlapMasks,
    compensate: str = "all",
    o_terms: list[Tensor] | None = None,
    down_terms: list[Tensor] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """The parent's shape with the removed units zeroed (rows of q/k/v/gate/up, columns of o/down) and biases.

    Args:
        model: The dense parent.
        masks: Any masks (per-layer widths may differ; a layer may keep nothing).
        compensate: "all", "attention" or "none".
        o_terms: Per layer `o_proj` bias terms; needed unless `compensate="none"`.
        down_terms: Per layer `down_proj` bias terms; needed for `compensate="all"`.
        inplace: Zero `model` itself instead of a deep copy (the dense parent is lost).
    """
    flags = bias_flags(compensate)
    o_terms, down_terms = _split_terms(compensate, o_terms, down_terms)
    target = model if inplace else copy.deepcopy(model)
    _, _, g, head_dim = geometry(target.config)
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(target)):
            removed_q = ~masks.channel_mask(i, g, head_dim)
            removed_kv = ~masks.kv_channel_mask(i, head_dim)
            removed_f = ~masks.neurons[i]
            attention, mlp = layer.self_attn, layer.mlp
            for linear, rows in (
                (attention.q_proj, removed_q),
                (attention.k_proj, removed_kv),
                (attention.v_proj, removed_kv),
                (mlp.gate_proj, removed_f),
                (mlp.up_proj, removed_f),
            ):
                linear.weight[rows.to(linear.weight.device)] = 0
                if linear.bias is not None:
                    linear.bias[rows.to(linear.bias.device)] = 0
            attention.o_proj.weight[:, removed_q.to(attention.o_proj.weight.device)] = 0
            mlp.down_proj.weight[:, removed_f.to(mlp.down_proj.weight.device)] = 0
    _attach_biases(target, flags)
    _add_compensation(target, o_terms, down_terms)
    return target


def _removed_entries(config, masks: FlapMasks) -> dict[str, list[Tensor]]:
    """Per projection suffix, per layer: the bool `[out]` rows or `[in]` columns that the masks remove."""
    _, _, g, head_dim = geometry(config)
    layers = range(masks.groups.shape[0])
    q = [~masks.channel_mask(i, g, head_dim) for i in layers]
    kv = [~masks.kv_channel_mask(i, head_dim) for i in layers]
    f = [~masks.neurons[i] for i in layers]
    return {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": q, "gate_proj": f, "up_proj": f, "down_proj": f}


def flap_keep_masks(model: nn.Module, masks: FlapMasks) -> dict[str, Tensor]:
    """Keep-masks (True = kept) of the seven projection weights of every layer, keyed by parameter name, so a
    masked result stays masked while it trains (`SparseMask(mask_source="module")`)."""
    removed = _removed_entries(model.config, masks)
    keep: dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        if len(parts) < 3 or parts[-1] != "weight" or parts[-2] not in removed or "layers" not in parts:
            continue
        layer = int(parts[parts.index("layers") + 1])
        lost = removed[parts[-2]][layer].to(param.device)
        mask = torch.ones(param.shape, dtype=torch.bool, device=param.device)
        if parts[-2] in ("o_proj", "down_proj"):
            mask[:, lost] = False
        else:
            mask[lost] = False
        keep[name] = mask
    return keep


def effective_parameters(model: nn.Module, masks: FlapMasks) -> ParameterCount:
    """Parameters of `model` (a `mask_flap` result) that the masks keep, as if the removed units were sliced out:
    the removed weight rows/columns and the removed entries of q/k/v/gate/up biases are not counted."""
    count = count_parameters(model)
    removed = _removed_entries(model.config, masks)
    d = model.config.hidden_size
    lost = 0
    for i, layer in enumerate(decoder_layers(model)):
        for block, names in ((layer.self_attn, _ATTENTION_LINEARS), (layer.mlp, _MLP_LINEARS)):
            for name in names:
                linear = getattr(block, name)
                n = int(removed[name][i].sum())
                lost += n * d
                if linear.bias is not None and name not in ("o_proj", "down_proj"):
                    lost += n
    return ParameterCount(total=count.total - lost, embedding=count.embedding)
