"""Make Sheared-LLaMA's masks act in the forward pass of an ordinary Hugging Face Llama, through hooks.

No model code is forked: hooks on the standard modules reproduce where the reference's masks act
(methods-spec section 8.3), with KV-group head units (`litprune.pruning.sheared_masks`):

- base model (`model.model`), forward pre-hook: `masks.refresh(training)` once per forward, so one sampled mask
  per module is shared by the whole batch (training) or the deterministic masks are used (evaluation);
- `embed_tokens` output `* hidden_z`;
- every RMSNorm (both per layer and the final one): recomputed from its input with the variance taken over the
  channels whose `hidden_z` is nonzero, then `weight * normed * hidden_z`. The residual stream is zero on the
  other channels, so this is the RMSNorm of the model with those channels removed;
- `o_proj` input: the `[B, T, H * hd]` attention output viewed as `[B, T, K, G * hd]` and multiplied by
  `head_z[l]` per KV group (all G query heads of a group share one unit); `o_proj` output `* layer_z[l] * hidden_z`;
- `up_proj` output `* intermediate_z[l]` (before `silu(gate) * up`); `down_proj` output `* layer_z[l] * hidden_z`.

Masks are cast to the activations' dtype. The hooks read `masks.current`, so activation checkpointing (which
re-runs decoder layers in backward) sees the same masks as the forward did.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from litprune.pruning.depth import decoder_layers


class MaskSource(Protocol):
    """What the hooks need: `refresh(training)` before each forward, then `current` masks by module name."""

    current: dict[str, Tensor]

    def refresh(self, training: bool) -> dict[str, Tensor]: ...


class MaskHooks:
    """The hook handles attached by `attach_sheared_masks`; `remove()` detaches them all (idempotent)."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)


def masked_rms_norm(norm: nn.Module, hidden_states: Tensor, hidden_z: Tensor) -> Tensor:
    """RMSNorm of `hidden_states` over the channels where `hidden_z != 0`, times `weight * hidden_z`."""
    input_dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    keep = (hidden_z != 0).to(torch.float32)
    variance = (x.pow(2) * keep).sum(-1, keepdim=True) / keep.sum().clamp(min=1.0)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    x = x * torch.rsqrt(variance + eps)
    return norm.weight * x.to(input_dtype) * hidden_z.to(input_dtype)


def attach_sheared_masks(model: nn.Module, masks: MaskSource) -> MaskHooks:
    """Register the mask hooks on a Llama-layout causal LM; returns their handles.

    Args:
        model: A Hugging Face Llama-layout causal LM (`LlamaForCausalLM` and families sharing its layout).
        masks: The mask source (a `ShearedMasks`); masks it does not hold (modules not learned) are not applied.
    """
    base = model.base_model
    layers = decoder_layers(model)
    handles: list[Any] = []

    def mask(name: str) -> Tensor | None:
        return masks.current.get(name)

    def refresh(module: nn.Module, args: Any) -> None:
        masks.refresh(module.training)

    handles.append(base.register_forward_pre_hook(refresh))

    def scale_hidden(module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        z = mask("hidden")
        return None if z is None else output * z.to(output.dtype)

    def norm_hook(module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        z = mask("hidden")
        return None if z is None else masked_rms_norm(module, args[0], z)

    handles.append(model.get_input_embeddings().register_forward_hook(scale_hidden))
    handles.append(base.norm.register_forward_hook(norm_hook))

    for index, layer in enumerate(layers):
        attention, mlp = layer.self_attn, layer.mlp
        handles.append(layer.input_layernorm.register_forward_hook(norm_hook))
        handles.append(layer.post_attention_layernorm.register_forward_hook(norm_hook))
        handles.append(attention.o_proj.register_forward_pre_hook(_head_hook(mask, index)))
        handles.append(attention.o_proj.register_forward_hook(_block_output_hook(mask, index)))
        handles.append(mlp.up_proj.register_forward_hook(_neuron_hook(mask, index)))
        handles.append(mlp.down_proj.register_forward_hook(_block_output_hook(mask, index)))
    return MaskHooks(handles)


def _head_hook(mask: Any, index: int) -> Any:
    def hook(module: nn.Module, args: Any) -> tuple[Tensor, ...] | None:
        z = mask("head")
        if z is None:
            return None
        x = args[0]  # [B, T, H * hd], query heads of KV group k at k*G .. (k+1)*G - 1 (repeat_kv order)
        groups = z.shape[-1]
        scaled = (x.unflatten(-1, (groups, -1)) * z[index].to(x.dtype)[:, None]).flatten(-2)
        return (scaled, *args[1:])

    return hook


def _block_output_hook(mask: Any, index: int) -> Any:
    def hook(module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        layer_z, hidden_z = mask("layer"), mask("hidden")
        if layer_z is not None:
            output = output * layer_z[index].to(output.dtype)
        if hidden_z is not None:
            output = output * hidden_z.to(output.dtype)
        return output

    return hook


def _neuron_hook(mask: Any, index: int) -> Any:
    def hook(module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        z = mask("intermediate")
        return None if z is None else output * z[index].to(output.dtype)

    return hook
