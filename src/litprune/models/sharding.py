"""FSDP2 for litprune's Hugging Face models: how a model is sharded, and how a tensor moves between its full and its
local (per-rank) form.

Design choices:

- FSDP2 (`torch.distributed.fsdp.fully_shard`): every decoder layer is one unit (all-gathered for its forward and
  backward, resharded after), then the root (embeddings, final norm, `lm_head`). Every parameter becomes a DTensor
  sharded on dim 0 over the data-parallel mesh (`Shard(0)`), so a rank holds whole rows of every weight: row-wise
  rules (N:M groups, Wanda's per-row comparison) run on the local shard alone; a per-tensor rule (one global
  k-th value) needs the full tensor (`full_tensor`).
- Mixed precision (`mixed_precision_policy`): with a bf16 trainer precision, parameters are all-gathered and computed
  in bf16 while gradients are reduced and the sharded master weights (which the optimizer updates) stay fp32; any
  other precision keeps everything in the parameters' own dtype (fp32 in CPU tests).
- Large models are built without their weights (`parameters_on_meta`: parameters on the meta device, buffers such as
  the rotary frequencies real), sharded, then given local storage (`materialize_local_shards`), and an init that
  writes whole tensors (`RandomInit.apply`) fills only each rank's rows (`full_writes_to_local`): every rank draws
  the same full tensor from the same seeded generator and keeps its slice, so the sharded init is bit-identical to
  the unsharded one, and a rank never holds more than one full tensor at a time.

Nothing here knows Lightning; `litprune.modules.causal_lm` decides when to shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


@dataclass(frozen=True)
class ShardingSettings:
    """How `shard_model` applies FSDP2.

    Attributes:
        reshard_after_forward: free each decoder layer's gathered weights after its forward (saves memory; the
            backward gathers them again).
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory (FSDP2's
            `CPUOffloadPolicy`); the optimizer step then runs on the CPU.
        param_dtype: dtype of the all-gathered weights used in forward/backward (None: the parameters' own).
        reduce_dtype: dtype of the gradient reduce-scatter (None: the parameters' own).
    """

    reshard_after_forward: bool = True
    cpu_offload: bool = False
    param_dtype: torch.dtype | None = None
    reduce_dtype: torch.dtype | None = None


def mixed_precision_policy(precision: str | None) -> tuple[torch.dtype | None, torch.dtype | None]:
    """`(param_dtype, reduce_dtype)` for a Lightning precision string: bf16 compute and fp32 reduce for bf16, else none.

    The sharded parameters (the optimizer's master weights) keep the dtype they were built in (fp32).
    """
    if str(precision) in BF16_PRECISIONS:
        return torch.bfloat16, torch.float32
    return None, None


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a Hugging Face causal LM (`model.model.layers` for the Llama family).

    Raises:
        ValueError: the model has no `model.layers` list.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"FSDP2 sharding wraps each decoder layer, found at `model.layers` in Llama-family models; "
            f"{type(model).__name__} has none. Use a Llama-family model or DDP."
        )
    return list(layers)


def shard_model(model: nn.Module, mesh: Any, settings: ShardingSettings) -> nn.Module:
    """Apply FSDP2 in place: each decoder layer, then the root; return `model`.

    Args:
        model: a Hugging Face causal LM (full tensors, or parameters on the meta device).
        mesh: the 1-D data-parallel `DeviceMesh` the parameters are sharded over.
        settings: reshard, offload and mixed-precision choices.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=settings.param_dtype, reduce_dtype=settings.reduce_dtype),
        "offload_policy": CPUOffloadPolicy() if settings.cpu_offload else OffloadPolicy(),
    }
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=settings.reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    return model


def reshard_all(module: nn.Module) -> bool:
    """Free every gathered (unsharded) FSDP2 parameter under `module`; return whether any FSDP2 module was found.

    Between a forward and the backward (and after a forward that does not reshard, such as the root's), FSDP2
    exposes full-size copies of the parameters as the modules' attributes. After this call the attributes are the
    sharded DTensor parameters again, and the next forward gathers them anew, so changes made to the shards in
    between (masks applied outside the optimizer step) are seen. Not a collective.
    """
    from torch.distributed.fsdp import FSDPModule

    found = False
    for submodule in module.modules():
        if isinstance(submodule, FSDPModule):
            submodule.reshard()
            found = True
    return found


def is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def is_sharded_model(model: nn.Module) -> bool:
    """Whether any parameter of `model` is a DTensor (sharded by FSDP2 or tensor parallelism)."""
    return any(is_dtensor(p) for p in model.parameters())


def local_tensor(tensor: Tensor) -> Tensor:
    """The part of `tensor` this rank stores: `tensor.to_local()` for a DTensor (a view: writes reach the DTensor),
    `tensor` itself otherwise."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def local_region(like: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(local shape, global offset)` of this rank's part of the DTensor `like` (whole tensor for a plain one)."""
    if not is_dtensor(like):
        return tuple(like.shape), (0,) * like.dim()
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)
    return tuple(shape), tuple(offset)


def local_slice(full: Tensor, like: Tensor) -> Tensor:
    """The part of `full` (shaped like the global `like`) that this rank stores of `like` (a view of `full`).

    Raises:
        ValueError: `full` does not have `like`'s global shape.
    """
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"A full tensor of shape {list(full.shape)} cannot be sliced like one of {list(like.shape)}.")
    shape, offset = local_region(like)
    view = full
    for dim, (size, start) in enumerate(zip(shape, offset, strict=True)):
        view = view.narrow(dim, start, size)
    return view


def full_tensor(local: Tensor, like: Tensor) -> Tensor:
    """The full tensor whose local parts are `local` on every rank, placed like the DTensor `like` (a collective:
    every rank must call it); `local` itself when `like` is not a DTensor. Bool tensors travel as uint8."""
    if not is_dtensor(like):
        return local
    from torch.distributed.tensor import DTensor

    is_bool = local.dtype == torch.bool
    payload = local.to(torch.uint8) if is_bool else local
    # The stride of a contiguous tensor of the global shape (a DTensor parameter's own stride is that one too).
    stride = torch.empty(like.shape, device="meta").stride()
    gathered = DTensor.from_local(
        payload, like.device_mesh, like.placements, shape=like.shape, stride=stride, run_check=False
    ).full_tensor()
    return gathered.bool() if is_bool else gathered


def check_whole_rows(name: str, param: Tensor) -> None:
    """Raise unless every rank holds whole rows of `param` (sharded on dim 0 only, or replicated).

    Row-wise mask rules (N:M groups along a row, per-row ratios) run on the local shard only under that placement.

    Raises:
        ValueError: `param` is sharded along another dimension (e.g. a column-wise tensor-parallel weight).
    """
    if not is_dtensor(param):
        return
    from torch.distributed.tensor import Replicate, Shard

    bad = [p for p in param.placements if not (isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0))]
    if bad:
        raise ValueError(
            f"{name!r} is placed as {list(param.placements)}: row-wise masks need every rank to hold whole rows "
            "(FSDP2's Shard(0) or Replicate). Shard it on dim 0 only (tensor_parallel_size 1)."
        )


def unsharded_copy(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """An ordinary (unsharded) model of `model`'s class and config holding the full tensors of `state_dict`.

    `model` may be sharded (FSDP2 turns its class into `FSDP<Class>`; the copy has the original class). The copy
    shares `model`'s config and generation config objects and takes the tensors without copying them.

    Raises:
        RuntimeError: `state_dict` misses or adds parameters (strict loading).
    """
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if issubclass(c, nn.Module) and not issubclass(c, FSDPModule))
    with parameters_on_meta():
        copy = cls(model.config)
    copy.load_state_dict(state_dict, strict=True, assign=True)
    if getattr(model, "generation_config", None) is not None:
        copy.generation_config = model.generation_config
    return copy


# ------------------------------------------------------------------------------------- building without weights


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules whose parameters are on the meta device (no storage) while buffers stay real.

    Buffers computed at construction (Llama's rotary `inv_freq`) are kept, so `materialize_local_shards` needs no
    module-specific re-initialisation for them. Each parameter exists briefly as an uninitialised tensor
    (`torch.empty`) before it moves to meta.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def has_meta_parameters(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def materialize_local_shards(
    model: nn.Module, device: torch.device, init: Callable[[nn.Module], None] | None = None
) -> None:
    """Give a sharded model built by `parameters_on_meta` local storage on `device`, then run `init(model)`.

    `init` writes whole tensors as if the model were not sharded (e.g. `RandomInit.apply`); each write keeps only
    this rank's rows (`full_writes_to_local`). Without `init` (weights loaded next from a checkpoint) the storage is
    left uninitialised. Buffers keep the values they were built with.
    """
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers() if not buffer.is_meta}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    if init is not None:
        with full_writes_to_local():
            init(model)


class full_writes_to_local(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch's modes
    """Inside this mode, `dtensor.copy_(full)` with a plain full-shape source writes only this rank's slice of it.

    `fill_` and `zero_` run on the local tensor. So an init written for whole tensors
    (`weight.copy_(sample)`) initialises a sharded model rank by rank, with the same values as unsharded.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else None
        if is_dtensor(target):
            if name == "copy_" and len(args) > 1 and isinstance(args[1], Tensor) and not is_dtensor(args[1]):
                local_tensor(target).copy_(local_slice(args[1], target))
                return target
            if name in ("fill_", "zero_"):
                getattr(local_tensor(target), name)(*args[1:], **kwargs)
                return target
        return func(*args, **kwargs)
