"""Bit-packing of keep-masks: the one format litprune stores masks in, 1 bit per weight.

A bool mask is flattened (row-major), padded with False to a multiple of 8 and packed 8 entries per uint8,
most significant bit first: byte-for-byte what `numpy.packbits(mask.reshape(-1), bitorder="big")` writes. Both
the sparse checkpoint files (`litprune.models.sparse_checkpoint`) and the `SparseMask` callback state use it.
The shape is not stored in the bytes; callers keep it beside them.

The packing runs in torch on the mask's own device, so a GPU mask is packed without a host round trip of the
full bool tensor (only the packed bytes, 1/8 of it, move when the caller asks for them on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # the value of each of the 8 entries in a byte, first entry highest


def packed_size(numel: int) -> int:
    """Bytes a mask of `numel` entries packs into: `ceil(numel / 8)`."""
    return (numel + 7) // 8


def pack_mask(mask: Tensor) -> Tensor:
    """Pack a keep-mask into a flat uint8 tensor on the same device, in numpy.packbits big-endian bit order.

    Args:
        mask: any shape; bool, or 0/1 values (anything non-zero counts as True).

    Returns:
        `[ceil(numel / 8)]` uint8, entry i of the flattened mask in bit `7 - i % 8` of byte `i // 8`.
    """
    flat = mask.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of `pack_mask`: the bool mask of `shape`, on the device of `packed`.

    Raises:
        ValueError: `packed` is not uint8 or does not hold exactly `ceil(prod(shape) / 8)` bytes (a corrupt file,
            or masks of another model).
    """
    shape = [int(s) for s in shape]
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != packed_size(numel):
        raise ValueError(
            f"A packed mask for shape {shape} needs {packed_size(numel)} uint8 bytes, got {packed.numel()} of dtype "
            f"{packed.dtype}; the file or checkpoint is corrupt or holds masks of another model."
        )
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) & weights) != 0
    return bits.reshape(-1)[:numel].reshape(shape)
