"""What a mask-keeping callback needs from the distributed strategy, apart from its hooks.

- `check_mask_strategy`: masks follow whole parameters (single device, DDP) or the local rows of FSDP2's DTensor
  parameters (`ModelParallelStrategy`); strategies that flatten parameters (Lightning's `FSDPStrategy`, DeepSpeed)
  are refused with an error that says what to use instead.
- `sum_across_ranks`: all-reduce a statistic (e.g. Wanda's input norms) so every rank scores with the same numbers.
- `masks_differing_across_ranks`: compare an exact digest (SHA-256 of the bit-packed mask and its shape) of every
  mask across ranks, so a divergence, even two entries swapped, becomes an error instead of silently different
  models.
- `gather_per_rank`: every rank's copy of a local tensor, stacked (for statistics each rank gathers on its own).
"""

from __future__ import annotations

import hashlib

import lightning.pytorch as pl
import torch
from torch import Tensor

from litprune.models.mask_packing import pack_mask
from litprune.training.strategies import REPLACEMENT


def check_mask_strategy(strategy: pl.strategies.Strategy, owner: str = "SparseMask") -> None:
    """Refuse strategies whose parameters masks cannot follow (Lightning's FSDPStrategy, DeepSpeed).

    Raises:
        ValueError: `strategy` flattens parameters into shards the masks cannot address.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy)):
        raise ValueError(
            f"{owner} supports single-device, DDP and FSDP2 training; {type(strategy).__name__} flattens parameters "
            f"into shards these masks do not follow. Use {REPLACEMENT}, or strategy='ddp'."
        )


def sum_across_ranks(strategy: pl.strategies.Strategy, tensor: Tensor) -> Tensor:
    """The sum of `tensor` over all ranks (a copy; `tensor` itself is left as it is)."""
    return strategy.reduce(tensor.clone(), reduce_op="sum")


def distributed_ready(world_size: int) -> bool:
    """Whether collectives can run: more than one rank and an initialised process group."""
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def mask_digests(masks: dict[str, Tensor]) -> Tensor:
    """`[len(masks), 33]` int64: per mask, the 32 bytes of SHA-256 over its shape and bit-packed entries, and a 1.

    Equal rows mean equal masks (up to a SHA-256 collision); the trailing 1 counts ranks in a sum.
    """
    rows = []
    for mask in masks.values():
        digest = hashlib.sha256(str(list(mask.shape)).encode())
        digest.update(pack_mask(mask).cpu().numpy().tobytes())
        rows.append(list(digest.digest()) + [1])
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 33)


def masks_differing_across_ranks(masks: dict[str, Tensor], world_size: int) -> list[str]:
    """Names of the masks whose digests are not equal on every rank; empty without a process group.

    Every rank must call it (it runs two all-reduces when `world_size > 1`).
    """
    if not masks or not distributed_ready(world_size):
        return []
    device = next(iter(masks.values())).device
    local = mask_digests(masks).to(device)
    high, low = local.clone(), local.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return [name for name, h, lo in zip(masks, high, low, strict=True) if not torch.equal(h, lo)]


def sum_counts(counts: Tensor, world_size: int) -> Tensor:
    """`counts` summed over all ranks (int64, a copy); `counts` itself without a process group."""
    if not distributed_ready(world_size):
        return counts
    total = counts.clone()
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total


def gather_per_rank(tensor: Tensor, world_size: int) -> Tensor:
    """`[world_size, *tensor.shape]`: every rank's `tensor` in rank order (`[1, ...]` without a process group).

    Every rank must call it, with tensors of one shape and dtype.
    """
    if not distributed_ready(world_size):
        return tensor.unsqueeze(0).clone()
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)
