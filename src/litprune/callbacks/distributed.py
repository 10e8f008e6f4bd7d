"""What a mask-keeping callback needs from the distributed strategy, apart from its hooks.

- `check_mask_strategy`: masks keyed by full parameter tensors only work when every rank holds whole parameters
  (single device, DDP); sharded strategies are refused with an error that says what to use instead.
- `sum_across_ranks`: all-reduce a statistic (e.g. Wanda's input norms) so every rank scores with the same
  numbers.
- `masks_differing_across_ranks`: compare cheap per-tensor checksums of the masks across ranks, so a divergence
  becomes an error instead of silently different models.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor


def check_mask_strategy(strategy: pl.strategies.Strategy, owner: str = "SparseMask") -> None:
    """Refuse strategies that shard parameters (FSDP, ModelParallel, DeepSpeed).

    Raises:
        ValueError: `strategy` shards parameters.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)):
        raise ValueError(
            f"{owner} supports single-device and DDP training; {type(strategy).__name__} shards parameters, which "
            "these masks do not follow yet. Use strategy='ddp' (or a single device)."
        )


def sum_across_ranks(strategy: pl.strategies.Strategy, tensor: Tensor) -> Tensor:
    """The sum of `tensor` over all ranks (a copy; `tensor` itself is left as it is)."""
    return strategy.reduce(tensor.clone(), reduce_op="sum")


def mask_checksums(masks: dict[str, Tensor]) -> Tensor:
    """`[len(masks), 2]` float64: per mask, kept entries weighted by row index and by column index.

    Two different masks of the same shape almost never share both sums, and the sums cost two reductions.
    """
    sums = []
    for mask in masks.values():
        flat = mask.reshape(mask.shape[0], -1).to(torch.float64)  # [out, in * ...]
        rows = torch.arange(1, flat.shape[0] + 1, dtype=torch.float64, device=flat.device)
        cols = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64, device=flat.device)
        sums.append(torch.stack([(flat.sum(1) * rows).sum(), (flat.sum(0) * cols).sum()]))
    return torch.stack(sums)


def masks_differing_across_ranks(masks: dict[str, Tensor], world_size: int) -> list[str]:
    """Names of the masks whose checksums are not equal on every rank; empty without a process group.

    Every rank must call it (it runs two all-reduces when `world_size > 1`).
    """
    if world_size <= 1 or not masks or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return []
    local = mask_checksums(masks)
    high, low = local.clone(), local.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return [name for name, h, lo in zip(masks, high, low, strict=True) if not torch.equal(h, lo)]
