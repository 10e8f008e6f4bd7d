"""Atomic checkpoint writes: a checkpoint file is either complete or absent, never half-written."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from litprune.utils.atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a hidden file beside the target, fsynced, then renamed onto it (`utils.atomic.atomic_file`).

    Loading uses `weights_only=True`: litprune checkpoints hold only tensors and plain Python values.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options (got {storage_options!r}).")
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
