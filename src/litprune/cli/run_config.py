"""The run's resolved config: written next to its checkpoints, stored inside them, compared on resume.

A run directory (`trainer.default_root_dir`) holds `config.yaml` (the fully resolved config), `checkpoints/`,
`metrics.jsonl` and, when fit ends, `export/`, whichever loggers are attached. `config.yaml` is written once every
check of the run passed (at fit start), so a refused config leaves no run directory behind. Resuming
(`--ckpt_path last`) is allowed only with the model and data settings the checkpoint was trained with: any
difference is reported key by key before work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import SaveConfigCallback

from litprune.training.checkpoint_io import LAST, read_checkpoint_record
from litprune.utils.atomic import atomic_write_text

# Settings that may change on resume without changing what is trained (a changed batch shape is checked apart,
# by tokens per step; `replan_on_resume` is the explicit permission to change it).
RESUME_TOLERATED = (
    "data.init_args.num_workers",
    "data.init_args.cache_dir",
    "data.init_args.prepared_only",  # where the shards come from, not which tokens are trained on
    "model.init_args.replan_on_resume",
)


class RunConfig(SaveConfigCallback):
    """Write `config.yaml` atomically into the run directory and embed model/data config in every checkpoint.

    The run directory is `trainer.default_root_dir`, whichever loggers are attached. For `fit` the file is written
    at fit start, after every setup check (data, model, callbacks) passed and before the first step. `validate` and
    `test` write `validate_config.yaml` / `test_config.yaml` instead, so measuring a run's checkpoint in its own
    directory never replaces the config the run was trained with.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            name = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum)
            self._save(trainer, f"{name}_{self.config_filename}")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._save(trainer, self.config_filename)

    def _save(self, trainer: Any, filename: str) -> None:
        if self.already_saved:
            return
        run_dir = Path(trainer.default_root_dir)
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write_text(run_dir / filename, text)
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

    `last.ckpt` is the one file a resume reads and the run overwrites (never `last-v1.ckpt`); other checkpoints in
    the directory are never picked silently.

    Raises:
        FileNotFoundError: an explicit path that does not exist.
        ValueError: 'last' where the directory holds checkpoints but no `last.ckpt` (they are named).
    """
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        last = checkpoint_dir / LAST
        if last.exists():  # a file, or a directory of a distributed checkpoint (ModelParallelStrategy)
            return last
        others = sorted(p.name for p in checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
        if others:
            raise ValueError(
                f"--ckpt_path last: {str(checkpoint_dir)!r} holds no {LAST} but holds {', '.join(others)}. Resume "
                f"from one of them with --ckpt_path {checkpoint_dir / others[-1]}, or start a new run in another "
                "--trainer.default_root_dir."
            )
        return None
    if ckpt_path in ("best", "hpc", "registry"):
        return None
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path!r} does not exist. Use 'last' to resume the run directory.")
    return path


def load_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The `litprune` record of a checkpoint plus its `global_step` (`training.checkpoint_io.read_checkpoint_record`).

    Raises:
        ValueError: the file is corrupt or truncated (named, with the previous checkpoint to use).
    """
    return read_checkpoint_record(path)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}
