"""Checkpoint files: atomic writes, one previous good `last.ckpt` kept, and reads that name a corrupt file.

A checkpoint file is either complete or absent, never half-written. Each time `last.ckpt` is replaced, the copy it
replaces (when it is intact) becomes `previous.ckpt`, so a `last.ckpt` damaged afterwards (a full disk, a partial
copy of the run directory) leaves a good checkpoint one save interval older, which the error message names.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from litprune.utils.atomic import atomic_file, hidden_sibling

LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"
DISTRIBUTED_METADATA = "meta.pt"
"""The file of a distributed checkpoint (a directory, `ModelParallelStrategy(save_distributed_checkpoint=True)`) that
holds everything but the sharded tensors: the litprune record, the loop and callback states (Lightning's name)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a hidden file beside the target, fsynced, then renamed onto it (`utils.atomic.atomic_file`).

    Before a new `last.ckpt` is published, the intact one it replaces is kept as `previous.ckpt` (a hard link,
    so no copy is made). Loading uses `weights_only=True`: litprune checkpoints hold only tensors and plain
    Python values; a file that cannot be read is named in the error, with the previous checkpoint to use.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options (got {storage_options!r}).")
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)
            if Path(path).name == LAST:
                keep_previous(Path(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")


def keep_previous(last: Path) -> None:
    """Publish the current `last` (if intact) as `previous.ckpt` beside it, atomically; a damaged one is left out."""
    if not is_intact(last):
        return
    link = hidden_sibling(last.parent / PREVIOUS)
    try:
        os.link(last, link)
    except OSError:  # a file system without hard links: keep no previous copy rather than double the write
        return
    os.replace(link, last.parent / PREVIOUS)


def is_intact(path: Path) -> bool:
    """Whether `path` is a complete checkpoint archive (its zip directory, at the end of the file, reads back)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load` of a litprune checkpoint (weights only).

    A distributed checkpoint (a directory of shards written under FSDP2) reads as its metadata file: everything but
    the model and optimizer tensors, which only the strategy can load into a sharded model.

    Raises:
        ValueError: the file is truncated or corrupt; the message names it and the previous checkpoint to resume
            from when one is intact.
    """
    if Path(path).is_dir():
        path = Path(path) / DISTRIBUTED_METADATA
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise ValueError(corrupt_message(Path(path), error)) from error


def read_checkpoint_record(path: str | os.PathLike) -> dict[str, Any]:
    """The `litprune` record of a checkpoint plus its `global_step`, read without materialising its tensors.

    Raises:
        ValueError: the file is truncated or corrupt (see `load_checkpoint`).
    """
    checkpoint = load_checkpoint(path, mmap=True)
    record = dict(checkpoint.get("litprune", {}))
    record["global_step"] = checkpoint.get("global_step")
    return record


def corrupt_message(path: Path, error: BaseException) -> str:
    """What to tell a user whose checkpoint `path` does not load: the file, the error, and the way out."""
    previous = path.parent / PREVIOUS
    if path.name == LAST and is_intact(previous):
        remedy = (
            f"The previous checkpoint {str(previous)!r} is intact: put it back with `mv {previous} {path}` and "
            "rerun with --ckpt_path last (the steps after it are trained again)."
        )
    else:
        remedy = "Resume from another checkpoint with --ckpt_path PATH, or start the run again in a new directory."
    return (
        f"The checkpoint {str(path)!r} is corrupt or truncated and cannot be loaded "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). {remedy}"
    )
