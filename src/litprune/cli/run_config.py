"""The run's resolved config: written next to its checkpoints, stored inside them, compared on resume.

A run directory (`trainer.default_root_dir`) holds `config.yaml` (the fully resolved config), `checkpoints/`,
`metrics.jsonl` and, when fit ends, `export/`. Resuming (`--ckpt_path last`) is allowed only with the model and
data settings the checkpoint was trained with: any difference is reported key by key before work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.cli import SaveConfigCallback

from litprune.utils.atomic import atomic_write_text

# Settings that may change on resume without changing what is trained.
RESUME_TOLERATED = (
    "data.init_args.num_workers",
    "data.init_args.cache_dir",
)


class RunConfig(SaveConfigCallback):
    """Write `config.yaml` atomically into the run directory and embed model/data config in every checkpoint."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks
        if trainer.is_global_zero:
            log_dir.mkdir(parents=True, exist_ok=True)
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write_text(log_dir / self.config_filename, text)
        self.already_saved = trainer.strategy.broadcast(True)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("litprune", {})["config"] = trained_settings(self.parser.dump(self.config))


def trained_settings(config_yaml: str) -> dict[str, Any]:
    """The parts of a run config that define what is trained (model and data sections)."""
    config = yaml.safe_load(config_yaml) or {}
    return {"model": config.get("model"), "data": config.get("data")}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two settings dicts, each as `key: saved -> current`."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(flat_saved) | set(flat_current)):
        if key.startswith(RESUME_TOLERATED):
            continue
        a, b = flat_saved.get(key, "<unset>"), flat_current.get(key, "<unset>")
        if a != b:
            lines.append(f"{key}: {a!r} -> {b!r}")
    return lines


def resolve_resume_checkpoint(ckpt_path: str | None, checkpoint_dir: Path) -> Path | None:
    """Map `--ckpt_path` to a file: 'last' means `<checkpoint_dir>/last.ckpt` (None when there is none yet).

    Raises:
        FileNotFoundError: an explicit path that does not exist.
    """
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        last = checkpoint_dir / "last.ckpt"
        return last if last.is_file() else None
    if ckpt_path in ("best", "hpc", "registry"):
        return None
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path!r} does not exist. Use 'last' to resume the run directory.")
    return path


def load_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The `litprune` record of a checkpoint, read without materialising its tensors (mmap, weights_only)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get("litprune", {}))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}
