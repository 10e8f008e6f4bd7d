"""Save and load a sparse model: a standard HF checkpoint plus an explicit mask sidecar.

Layout of a sparse checkpoint directory:

    config.json, model.safetensors, ...   `save_pretrained` output, pruned weights stored as zeros in place;
                                          loads with plain `from_pretrained`, no litprune needed
    sparsity_masks.safetensors            keep-masks, 1 bit per weight: each mask flattened and packed into
                                          uint8 by `litprune.models.mask_packing.pack_mask` (numpy.packbits,
                                          big-endian bit order); the metadata entry "shapes" (JSON) holds
                                          every mask's shape
    sparsity.json                         the record (method, pattern, ratio, calibration, achieved sparsity)

The explicit masks let training keep the exact pattern (a weight that is 0 by chance is not pruned), and
`load_sparse` verifies that every masked-out weight really is 0. Writing goes to a temporary sibling directory
that is renamed into place, so an interrupted save never leaves a half-written checkpoint under `out_dir`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from litprune.models.mask_packing import pack_mask, packed_size, unpack_mask
from litprune.utils.atomic import atomic_dir

MASKS_FILE = "sparsity_masks.safetensors"
RECORD_FILE = "sparsity.json"
_FORMAT = "litprune-packbits-v1"


def check_zeros(model: nn.Module, masks: dict[str, Tensor], context: str) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    problems = []
    for name, mask in masks.items():
        if name not in params:
            problems.append(f"{name!r} is not a parameter of the model")
            continue
        param = params[name]
        if tuple(mask.shape) != tuple(param.shape):
            problems.append(f"{name!r}: mask shape {tuple(mask.shape)} != weight shape {tuple(param.shape)}")
            continue
        nonzero = int((param.detach()[~mask.to(param.device)] != 0).sum())
        if nonzero:
            problems.append(f"{name!r}: {nonzero} masked-out entries are not zero")
    if problems:
        raise ValueError(
            f"{context}: the masks do not match the weights (True = keep, masked-out weights must be exactly 0):\n- "
            + "\n- ".join(problems[:10])
            + ("\n- ..." if len(problems) > 10 else "")
        )


def save_masks(masks: dict[str, Tensor], path: str | os.PathLike) -> None:
    """Write bool masks to `path` as bit-packed safetensors (see the module docstring for the format)."""
    tensors, shapes = {}, {}
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise ValueError(f"Mask {name!r} has dtype {mask.dtype}; masks are bool tensors (True = keep).")
        tensors[name] = pack_mask(mask.detach()).cpu()
        shapes[name] = list(mask.shape)
    save_file(tensors, str(path), metadata={"format": _FORMAT, "shapes": json.dumps(shapes)})


def load_masks(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the keep-masks of a sparse checkpoint (a directory from `save_sparse`, or the masks file itself).

    Returns:
        Parameter name -> bool keep-mask on the CPU.

    Raises:
        FileNotFoundError: no mask file there.
        ValueError: the file is not in litprune's packed-mask format or is inconsistent.
    """
    path = Path(path)
    file = path / MASKS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"No sparsity masks at {file}; a directory written by save_sparse contains {MASKS_FILE}."
        )
    masks: dict[str, Tensor] = {}
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != _FORMAT or "shapes" not in metadata:
            raise ValueError(
                f"{file} is not a litprune mask file (format {metadata.get('format')!r}, want {_FORMAT!r})."
            )
        shapes = json.loads(metadata["shapes"])
        for name in handle.keys():
            if name not in shapes:
                raise ValueError(f"{file}: mask {name!r} has no shape in the metadata; the file is corrupt.")
            shape = shapes[name]
            packed = handle.get_tensor(name)
            needed = packed_size(math.prod(shape))
            if packed.dtype != torch.uint8 or packed.numel() != needed:
                raise ValueError(
                    f"{file}: mask {name!r} holds {packed.numel()} {packed.dtype} values, shape {shape} needs "
                    f"{needed} uint8 bytes; the file is corrupt."
                )
            masks[name] = unpack_mask(packed, shape)
    return masks


def save_sparse(
    model: nn.Module,
    masks: dict[str, Tensor],
    record: dict[str, Any],
    out_dir: str | os.PathLike,
    tokenizer: Any | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a sparse model as an HF checkpoint with its masks and record, atomically.

    Args:
        model: the pruned HF model (masked-out weights must be exactly 0; they are checked).
        masks: parameter name -> bool keep-mask, e.g. `SparseResult.masks`.
        record: JSON-serialisable description, e.g. `SparseResult.record`.
        out_dir: target directory.
        tokenizer: optional tokenizer saved alongside (`save_pretrained`).
        overwrite: replace an existing `out_dir`; otherwise an existing one is an error.

    Returns:
        The checkpoint directory.

    Raises:
        ValueError: masks do not match the model, or the record is not JSON-serialisable.
        FileExistsError: `out_dir` exists and `overwrite` is False.
    """
    out_dir = Path(out_dir)
    check_zeros(model, masks, "save_sparse")
    try:
        record_text = json.dumps(record, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"save_sparse: the record must be JSON-serialisable (plain numbers, strings, lists): {err}"
        ) from err
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it or choose another out_dir.")

    with atomic_dir(out_dir, replace=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_masks(masks, tmp / MASKS_FILE)
        (tmp / RECORD_FILE).write_text(record_text + "\n")
    return out_dir


def load_sparse(path: str | os.PathLike, **from_pretrained_kwargs: Any) -> tuple[nn.Module, dict[str, Tensor], dict]:
    """Load a checkpoint written by `save_sparse` and verify its sparsity.

    Args:
        path: the checkpoint directory.
        **from_pretrained_kwargs: passed to `AutoModelForCausalLM.from_pretrained` (e.g. `dtype`,
            `device_map`).

    Returns:
        `(model, masks, record)`; masks are on the CPU, keyed by parameter name.

    Raises:
        FileNotFoundError: the directory, masks or record are missing.
        ValueError: a masked-out weight is not exactly 0 (the weights were changed after pruning, e.g. by a
            LoRA merge or dense fine-tuning), or a mask names a parameter the model lacks.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    record_file = path / RECORD_FILE
    if not record_file.is_file():
        raise FileNotFoundError(f"No {RECORD_FILE} in {path}; is this a directory written by save_sparse?")
    masks = load_masks(path)
    record = json.loads(record_file.read_text())
    model = AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
    check_zeros(model, masks, f"load_sparse({str(path)!r})")
    return model, masks, record
