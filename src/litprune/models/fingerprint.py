"""One rule for naming a checkpoint's weights: the sha256 of its weight files.

`litprune eval` records it for the model it evaluates, `litprune prune` for the parent it pruned, and a
distillation run for its teacher, so a record says exactly which weights were used, and a resume or a reused
pruned model can refuse weights that changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def weight_files_digest(path: str | Path) -> tuple[str, str]:
    """`(sha256 hex, kind)` over the weight files of checkpoint directory `path` (names and bytes, in name order):
    the `*.safetensors` files, else the `*.bin` files; `kind` says which ("safetensors files" / "weight files")."""
    files = sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin"))
    kind = "safetensors files" if files and files[0].suffix == ".safetensors" else "weight files"
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest(), kind


def weights_fingerprint(path: str, config: Any = None) -> str | None:
    """`sha256:<hex>` of a local checkpoint's weight files; for a hub id, the revision it resolved to
    (`hub:<id>@<commit>`, from `config._commit_hash`) when known, else None."""
    local = Path(path).expanduser()
    if local.is_dir():
        return f"sha256:{weight_files_digest(local)[0]}"
    commit = getattr(config, "_commit_hash", None)
    return f"hub:{path}@{commit}" if commit else None
