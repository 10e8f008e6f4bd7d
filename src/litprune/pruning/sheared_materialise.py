"""Materialise a Sheared-LLaMA pruning: fold deterministic masks into the weights, then slice to the target shape.

The deterministic masks (`ShearedMasks.deterministic(target_counts=True)`: exactly the target number of nonzeros
per row, the kept entries at their soft values) are folded so that the small model computes what the masked model
computes (methods-spec section 8.9):

- `head_z[l, k]` scales the `v_proj` rows (and bias) of KV group k: every query head of the group reads those
  values, so all G head outputs are scaled, exactly as the mask does before `o_proj`;
- `layer_z[l]` scales `o_proj` and `down_proj` (weights and biases);
- `intermediate_z[l]` scales the `up_proj` rows (and bias);
- `hidden_z` scales the embedding columns, the RMSNorm weights of every layer, and the `o_proj` / `down_proj`
  output rows (and biases). The final norm's output is scaled ONCE: its weight takes `hidden_z` when `lm_head` is a
  separate matrix; with tied embeddings the shared matrix already carries it, so the final norm is left alone.
  The reference also scales `lm_head`'s columns, so its small model differs from its masked model by a second
  factor of `hidden_z` per channel; this port does not.

Then `litprune.pruning.width.slice_width` keeps the nonzero hidden channels, MLP neurons and KV groups (with their
query heads), giving an ordinary model of the parent's class with explicit `head_dim` that reloads with
`from_pretrained`. Layers are never removed (the target keeps every layer; a zero layer mask is an error).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litprune.pruning.depth import decoder_layers
from litprune.pruning.sheared_masks import MaskLayout
from litprune.pruning.width import slice_width


def _kept(mask: Tensor) -> Tensor:
    return torch.nonzero(mask.detach().cpu() != 0).flatten()


def check_deterministic_masks(layout: MaskLayout, masks: dict[str, Tensor]) -> None:
    """Raise unless `masks` have the layout's shapes, the same nonzero count in every row, and no zero layer."""
    problems = []
    for name, mask in masks.items():
        if tuple(mask.shape) != layout.mask_shape(name):
            problems.append(f"{name} mask is shaped {tuple(mask.shape)}, expected {layout.mask_shape(name)}")
        elif mask.dim() == 2 and len({int(row.count_nonzero()) for row in mask}) != 1:
            problems.append(f"{name} mask keeps different counts per layer ({mask.count_nonzero(-1).tolist()})")
    layer = masks.get("layer")
    if layer is not None and tuple(layer.shape) == layout.mask_shape("layer") and bool((layer == 0).any()):
        problems.append(f"layer mask removes layers {_zero_layers(layer)}, but the target keeps every layer")
    if problems:
        raise ValueError("Cannot materialise the masks: " + "; ".join(problems) + ".")


def _zero_layers(layer: Tensor) -> list[int]:
    return torch.nonzero(layer.detach().cpu() == 0).flatten().tolist()


@torch.no_grad()
def fold_masks_(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """Fold deterministic masks into `model`'s weights in place (see the module docstring); returns `model`.

    Args:
        model: The Llama-layout model the masks were learned on.
        masks: Deterministic masks by module name (`layer`, `head`, `intermediate`, `hidden`); absent ones are 1.
    """
    layout = MaskLayout.from_config(model.config)
    check_deterministic_masks(layout, masks)
    hidden = masks.get("hidden")
    head_dim = layout.head_dim

    def scale_rows(linear: nn.Linear, factor: Tensor) -> None:
        factor = factor.to(linear.weight.device, linear.weight.dtype)
        linear.weight.mul_(factor[:, None])
        if linear.bias is not None:
            linear.bias.mul_(factor)

    def scale_all(linear: nn.Linear, factor: Tensor) -> None:
        scale_rows(linear, factor.expand(linear.out_features))

    for index, layer in enumerate(decoder_layers(model)):
        attention, mlp = layer.self_attn, layer.mlp
        if "head" in masks:
            scale_rows(attention.v_proj, masks["head"][index].repeat_interleave(head_dim))
        if "layer" in masks:
            scale_all(attention.o_proj, masks["layer"][index])
            scale_all(mlp.down_proj, masks["layer"][index])
        if "intermediate" in masks:
            scale_rows(mlp.up_proj, masks["intermediate"][index])
        if hidden is not None:
            scale_rows(attention.o_proj, hidden)
            scale_rows(mlp.down_proj, hidden)
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.mul_(hidden.to(norm.weight.device, norm.weight.dtype))
    if hidden is not None:
        embedding = model.get_input_embeddings().weight
        embedding.mul_(hidden.to(embedding.device, embedding.dtype)[None, :])
        output = model.get_output_embeddings()
        if output is None or output.weight is not embedding:  # untied: the final norm carries hidden_z once
            norm = model.base_model.norm.weight
            norm.mul_(hidden.to(norm.device, norm.dtype))
    return model


def materialise(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """The small model: `masks` folded into `model` (modified in place, then left behind) and sliced.

    Args:
        model: The Llama-layout model the masks were learned on; its weights are changed (folded).
        masks: Deterministic masks with the same nonzero count in every row (`ShearedMasks.deterministic()`).

    Returns:
        A new model of `model`'s class at the masks' shape (kept hidden channels, MLP neurons and KV groups,
        explicit `head_dim`), computing what `model` computed with the masks applied.

    Raises:
        ValueError: masks shaped for another model, uneven counts across layers, or a layer mask with a zero.
    """
    layout = MaskLayout.from_config(model.config)
    check_deterministic_masks(layout, masks)
    fold_masks_(model, masks)
    layers = layout.num_layers
    keep_hidden = _kept(masks["hidden"]) if "hidden" in masks else torch.arange(layout.hidden_size)
    if "intermediate" in masks:
        keep_mlp = [_kept(row) for row in masks["intermediate"]]
    else:
        keep_mlp = [torch.arange(layout.intermediate_size)] * layers
    keep_groups = [_kept(row) for row in masks["head"]] if "head" in masks else None
    return slice_width(model, keep_hidden, keep_mlp, keep_groups)
