"""Width pruning (Minitron-width): shrink hidden channels and MLP neurons, as pure functions.

Importance comes from activations of the DENSE model over calibration windows (methods-spec section 3). For an
activation `A` of shape `[B, T, C]` seen in one forward call,

    agg(A)_c = sum_t ( mean_b |A[b, t, c]| )^2,

summed over calls (with batch size 1 this is `sum_calls sum_t A_c^2`). Each call's reduction and the running sums
are float32 whatever the model dtype (the reference reduces each call in the model dtype, bf16, and accumulates
in float32), so bf16 parents can rank near-ties differently from the reference.

- MLP neuron j of layer l: `A` = input of `down_proj` (`silu(gate_proj(x)) * up_proj(x)`).
- Hidden channel c: `A` = output of `input_layernorm` and of `post_attention_layernorm` of every layer, all
  added into one length-d vector (the final norm and the raw embeddings are not hooked).
- Attention heads (OUR extension, not in the reference): `A` = input of `o_proj`; a head's score is the sum of
  its `head_dim` channels, and a KV group's score is the sum over the query heads that share it.

`prune_width` keeps the `d'` best hidden channels (the same set in every layer) and the `F'` best neurons of
each layer, chosen by a stable descending sort, with the kept indices sorted ascending (function-identical to
the reference, which keeps them in importance order). It slices exactly:
`embed_tokens[:, h]`, `lm_head[:, h]`, `norm[h]`, per layer `input_layernorm[h]`, `post_attention_layernorm[h]`,
`q/k/v_proj[:, h]`, `o_proj[h, :]`, `gate/up_proj[f, :][:, h]`, `down_proj[h, :][:, f]` (and matching biases).
Heads, KV groups, `head_dim` and the layer count are untouched unless `num_key_value_heads` is given, in which
case whole KV groups are removed together with all their query heads (per layer, by the head scores), so
`num_attention_heads / num_key_value_heads` is unchanged and GQA stays valid.

The result is a new model of the parent's class whose config carries `hidden_size`, `intermediate_size` and an
EXPLICIT `head_dim` (`d'/H` generally differs from it); it reloads with `from_pretrained`. Because RMSNorm then
normalises over `d'` channels, a hidden-pruned model is not the dense model with channels zeroed; MLP-only
pruning is exactly the dense model with the removed neurons zeroed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from litprune.pruning.depth import decoder_layers
from litprune.pruning.scorers import check_windows, evaluation_mode, iter_batches, model_device
from litprune.pruning.shapes import check_supported_config
from litprune.utils.progress import progress_bar


@dataclass
class WidthImportance:
    """Activation importance of a dense model, from `width_importance`.

    Attributes:
        hidden: `[d]` hidden-channel scores.
        mlp: `[L, F]` MLP-neuron scores, one row per layer.
        heads: `[L, H]` attention-head scores (used only for KV-group pruning, our extension).
        num_calls: forward calls accumulated.
        num_windows: calibration windows seen.
        batch_size: windows per call (Minitron's statistics depend on it).
    """

    hidden: Tensor
    mlp: Tensor
    heads: Tensor
    num_calls: int
    num_windows: int
    batch_size: int

    def kv_groups(self, num_key_value_heads: int) -> Tensor:
        """`[L, KV]` KV-group scores: the sum over the query heads sharing each group."""
        layers, heads = self.heads.shape
        return self.heads.reshape(layers, num_key_value_heads, heads // num_key_value_heads).sum(-1)


def _agg(activation: Tensor) -> Tensor:
    """`sum_t (mean_b |A[b, t, c]|)^2` for `A` of shape `[B, T, C]`, in float32."""
    return activation.detach().float().abs().mean(0).pow(2).sum(0)


def width_importance(
    model: nn.Module, windows: Tensor, batch_size: int = 1, progress: bool | None = None
) -> WidthImportance:
    """Score hidden channels, MLP neurons and attention heads with hooks on the dense model.

    Args:
        model: A Llama-layout causal LM (not modified).
        windows: Calibration token ids `[num_windows, seq_len]`, used in order.
        batch_size: Windows per forward call. The reference uses 1; larger batches change the statistics
            (`mean_b` before squaring), which is known to cost accuracy.
        progress: Show a bar over the forward calls (True/False; None follows `LITPRUNE_PROGRESS`, see
            `litprune.utils.progress`).

    Returns:
        A `WidthImportance` with float32 tensors on the CPU.
    """
    check_supported_config(model.config)
    check_windows(windows, getattr(model.config, "vocab_size", None))
    layers = decoder_layers(model)
    config = model.config
    device = model_device(model)
    heads = config.num_attention_heads
    hidden = torch.zeros(config.hidden_size, dtype=torch.float32, device=device)
    mlp = torch.zeros(len(layers), config.intermediate_size, dtype=torch.float32, device=device)
    head_channels = torch.zeros(len(layers), layers[0].self_attn.o_proj.in_features, dtype=torch.float32, device=device)

    def add_hidden(module, args, output):
        hidden.add_(_agg(output))

    def make_pre_hook(buffer: Tensor, index: int):
        def hook(module, args):
            buffer[index].add_(_agg(args[0]))

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.input_layernorm.register_forward_hook(add_hidden))
        handles.append(layer.post_attention_layernorm.register_forward_hook(add_hidden))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(make_pre_hook(mlp, i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(make_pre_hook(head_channels, i)))
    calls = 0
    try:
        with evaluation_mode(model):
            batches = iter_batches(windows, batch_size, device)
            total = -(-int(windows.shape[0]) // batch_size)
            for batch in progress_bar(batches, desc="width importance", total=total, unit="batch", progress=progress):
                model.base_model(input_ids=batch, use_cache=False)
                calls += 1
    finally:
        for handle in handles:
            handle.remove()
    return WidthImportance(
        hidden=hidden.cpu(),
        mlp=mlp.cpu(),
        heads=head_channels.reshape(len(layers), heads, -1).sum(-1).cpu(),
        num_calls=calls,
        num_windows=int(windows.shape[0]),
        batch_size=batch_size,
    )


def top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the `k` largest scores (stable: lower index first on ties), sorted ascending."""
    order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices[:k]
    return order.sort().values


def prune_width(
    model: nn.Module,
    hidden_size: int,
    intermediate_size: int,
    importance: WidthImportance,
    num_key_value_heads: int | None = None,
) -> nn.Module:
    """Build the width-pruned model (Minitron-width); the parent is not modified.

    Args:
        model: The dense Llama-layout parent the importance was measured on.
        hidden_size: `d'`, hidden channels to keep (same set in every layer).
        intermediate_size: `F'`, MLP neurons to keep in each layer.
        importance: Scores from `width_importance(model, ...)`.
        num_key_value_heads: OUR extension; keep this many KV groups per layer (with all their query heads).
            None keeps every head, as the reference does.

    Returns:
        A new model of the parent's class, with explicit `head_dim` in its config.

    Raises:
        ValueError: sizes out of range, `hidden_size` not divisible by the resulting head count, or importance
            shaped for another model.
    """
    check_supported_config(model.config)
    config = model.config
    layers = decoder_layers(model)
    d, f = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    new_kv = kv if num_key_value_heads is None else num_key_value_heads
    problems = []
    if not 1 <= hidden_size <= d:
        problems.append(f"hidden_size={hidden_size} must be in 1..{d}")
    if not 1 <= intermediate_size <= f:
        problems.append(f"intermediate_size={intermediate_size} must be in 1..{f}")
    if not 1 <= new_kv <= kv:
        problems.append(f"num_key_value_heads={new_kv} must be in 1..{kv}")
    new_heads = new_kv * (heads // kv)
    if not problems and hidden_size % new_heads != 0:
        problems.append(
            f"hidden_size={hidden_size} must be a multiple of num_attention_heads={new_heads} (a transformers "
            "requirement even with explicit head_dim)"
        )
    if tuple(importance.hidden.shape) != (d,) or tuple(importance.mlp.shape) != (len(layers), f):
        problems.append(
            f"importance is shaped hidden={tuple(importance.hidden.shape)}, mlp={tuple(importance.mlp.shape)} but "
            f"the model needs ({d},) and ({len(layers)}, {f}); measure it on this model with width_importance"
        )
    if problems:
        raise ValueError("Cannot width-prune: " + "; ".join(problems) + ".")
    keep_hidden = top_indices(importance.hidden, hidden_size)
    keep_mlp = [top_indices(importance.mlp[i], intermediate_size) for i in range(len(layers))]
    keep_groups = None
    if new_kv != kv:
        group_scores = importance.kv_groups(kv)
        keep_groups = [top_indices(group_scores[i], new_kv) for i in range(len(layers))]
    return slice_width(model, keep_hidden, keep_mlp, keep_groups)


# Which dimension of each tensor is sliced by which index set. "h" hidden channels, "f" MLP neurons,
# "q" query-head channels, "kv" key/value-head channels.
_LAYER_RULES: dict[str, tuple[str | None, ...]] = {
    "input_layernorm.weight": ("h",),
    "post_attention_layernorm.weight": ("h",),
    "self_attn.q_proj.weight": ("q", "h"),
    "self_attn.q_proj.bias": ("q",),
    "self_attn.k_proj.weight": ("kv", "h"),
    "self_attn.k_proj.bias": ("kv",),
    "self_attn.v_proj.weight": ("kv", "h"),
    "self_attn.v_proj.bias": ("kv",),
    "self_attn.o_proj.weight": ("h", "q"),
    "self_attn.o_proj.bias": ("h",),
    "mlp.gate_proj.weight": ("f", "h"),
    "mlp.gate_proj.bias": ("f",),
    "mlp.up_proj.weight": ("f", "h"),
    "mlp.up_proj.bias": ("f",),
    "mlp.down_proj.weight": ("h", "f"),
    "mlp.down_proj.bias": ("h",),
}
_GLOBAL_RULES: dict[str, tuple[str | None, ...]] = {
    "model.embed_tokens.weight": (None, "h"),
    "model.norm.weight": ("h",),
    "lm_head.weight": (None, "h"),
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def slice_width(
    model: nn.Module,
    keep_hidden: Tensor,
    keep_mlp: Sequence[Tensor] | Tensor,
    keep_kv_groups: Sequence[Tensor] | None = None,
) -> nn.Module:
    """Build a new model keeping the given indices, in the given order (no sorting, no scoring).

    Applying the same permutation everywhere leaves the function unchanged, which tests rely on.

    Args:
        model: A Llama-layout parent.
        keep_hidden: Hidden channels to keep (1-D index tensor).
        keep_mlp: Per layer, MLP neurons to keep (same count in every layer).
        keep_kv_groups: Per layer, KV groups to keep (same count in every layer); None keeps all heads.

    Raises:
        ValueError: uneven counts across layers, or a parameter the Llama layout does not have.
    """
    check_supported_config(model.config)
    config = model.config
    layers = decoder_layers(model)
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    keep_hidden = torch.as_tensor(keep_hidden, dtype=torch.long).cpu()
    keep_mlp = [torch.as_tensor(k, dtype=torch.long).cpu() for k in keep_mlp]
    if len(keep_mlp) != len(layers) or len({k.numel() for k in keep_mlp}) != 1:
        raise ValueError(
            f"keep_mlp needs one index set per layer ({len(layers)}) with the same size in each; got sizes "
            f"{[k.numel() for k in keep_mlp]}."
        )
    per_rep = heads // kv
    if keep_kv_groups is None:
        groups = [torch.arange(kv)] * len(layers)
    else:
        groups = [torch.as_tensor(g, dtype=torch.long).cpu() for g in keep_kv_groups]
        if len(groups) != len(layers) or len({g.numel() for g in groups}) != 1:
            raise ValueError(
                f"keep_kv_groups needs one index set per layer ({len(layers)}) with the same size in each; got "
                f"sizes {[g.numel() for g in groups]}."
            )
    new_kv = groups[0].numel()

    def channels(head_ids: Tensor) -> Tensor:
        return (head_ids[:, None] * head_dim + torch.arange(head_dim)).flatten()

    index_sets = []
    for i in range(len(layers)):
        # Query heads of KV group g are g*per_rep .. (g+1)*per_rep - 1 (transformers' repeat_kv order).
        q_heads = (groups[i][:, None] * per_rep + torch.arange(per_rep)).flatten()
        index_sets.append({"h": keep_hidden, "f": keep_mlp[i], "q": channels(q_heads), "kv": channels(groups[i])})

    state = model.state_dict()
    new_state: dict[str, Tensor] = {}
    for key, tensor in state.items():
        match = _LAYER_KEY.match(key)
        if match:
            rule = _LAYER_RULES.get(match.group(2))
            sets = index_sets[int(match.group(1))]
        else:
            rule = _GLOBAL_RULES.get(key)
            sets = index_sets[0]
        if rule is None:
            raise ValueError(
                f"Parameter {key!r} is not part of the Llama layout that width pruning knows how to slice; "
                f"{type(model).__name__} is not supported."
            )
        for dim, name in enumerate(rule):
            if name is not None:
                tensor = tensor.index_select(dim, sets[name].to(tensor.device))
        new_state[key] = tensor.clone()

    new_config = copy.deepcopy(config)
    new_config.hidden_size = int(keep_hidden.numel())
    new_config.intermediate_size = int(keep_mlp[0].numel())
    new_config.num_key_value_heads = new_kv
    new_config.num_attention_heads = new_kv * per_rep
    new_config.head_dim = head_dim
    new_config.validate()
    # Build on the meta device (no random init of a large model), then take the sliced tensors as they are.
    with torch.device("meta"):
        new_model = type(model)(new_config)
    new_model.load_state_dict(new_state, strict=True, assign=True)
    if getattr(new_config, "tie_word_embeddings", False):
        new_model.tie_weights()
    # Non-persistent buffers (rotary frequencies) are not in the state dict; head_dim and RoPE settings are
    # unchanged, so the parent's buffers are exactly right.
    parent_buffers = dict(model.named_buffers())
    for name, buffer in list(new_model.named_buffers()):
        if buffer.is_meta:
            module_name, _, buffer_name = name.rpartition(".")
            module = new_model.get_submodule(module_name)
            module.register_buffer(buffer_name, parent_buffers[name].clone(), persistent=False)
    for name, tensor in list(new_model.named_parameters()) + list(new_model.named_buffers()):
        if tensor.is_meta:
            raise RuntimeError(f"{name} was not materialised while building the width-pruned model.")
    new_model.train(model.training)
    if getattr(model, "generation_config", None) is not None:
        new_model.generation_config = copy.deepcopy(model.generation_config)
    return new_model
