"""The hand-over of keep-masks from a sparse init to everything that trains and saves the model.

The path a mask takes, and the one name each step uses:

1. an init strategy returns `InitResult.masks`: `KeepMasks` keyed by the Hugging Face model's parameter names;
2. the LightningModule adopts them with `attach_masks`, keyed by its own parameter names (`CausalLM` prefixes
   `model.`), under the attribute `MASKS_ATTRIBUTE`;
3. `SparseMask(mask_source="module")` reads them with `module_masks` and keeps them through every step;
4. `HFExport` reads the callback's final masks or, without a callback, `module_masks`, and writes them beside the
   weights (`litprune.models.sparse_checkpoint`).

Any LightningModule can take part: set the attribute through `attach_masks` (or by hand, to a dict of bool tensors,
True = keep) and the callback and the export find it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from torch import Tensor

#: Parameter name -> bool keep-mask of the parameter's shape (True = the weight is kept).
KeepMasks: TypeAlias = dict[str, Tensor]

#: The LightningModule attribute holding its `KeepMasks` (read by SparseMask and HFExport).
MASKS_ATTRIBUTE = "pruning_masks"


def attach_masks(module: Any, masks: KeepMasks, prefix: str = "") -> None:
    """Hand `masks` to `module`, each key prefixed with `prefix` (the path of the HF model inside the module)."""
    setattr(module, MASKS_ATTRIBUTE, {f"{prefix}{name}": mask for name, mask in masks.items()})


def module_masks(module: Any, attribute: str = MASKS_ATTRIBUTE) -> KeepMasks | None:
    """The keep-masks `module` carries under `attribute`, or None when it carries none (no such attribute)."""
    return getattr(module, attribute, None)
