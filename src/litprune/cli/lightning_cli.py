"""`litprune fit|validate|test`: LightningCLI with litprune's defaults and early checks.

Configs compose: `litprune fit --config configs/trainer/cpu.yaml --config configs/model/tiny.yaml ...`; later
files and command-line flags override earlier ones. Model and data are chosen by `class_path`, so any
LightningModule or LightningDataModule can be plugged in.

What litprune adds to plain LightningCLI:
- a run directory (`trainer.default_root_dir`) with `config.yaml`, `checkpoints/` (atomic writes, `last.ckpt` and
  the `previous.ckpt` it replaced), an append-only `metrics.jsonl`, and at the end `export/` (Hugging Face format)
  and `results.json`, laid out the same whichever loggers (`trainer.logger`: TensorBoard, CSV, W&B) are added;
- runs sized by a token budget (`model.init_args.max_tokens`), converted to steps before anything is built;
- checks before any work: budget smaller than a step or not a whole number of steps, sequence length above
  the model's positions, reusing a run directory without resuming, resuming with different model/data settings
  or another number of tokens per step (unless `model.init_args.replan_on_resume`), a corrupt checkpoint;
- temporary files of killed runs (owner process gone) swept from the run directory at start;
- runs of several processes neither prune nor tokenize on every rank: with a pruning init (`StructuredPrune`,
  `SparsePrune`) the launching process prunes once into `<run dir>/pruned` and every process starts from it;
  processes started outside (srun, torchrun) need it prepared first and are refused with the `litprune prune`
  command otherwise (`litprune.cli.prune.pruned_init_for_fit`); missing token shards of a hub source (or any
  source with `data.init_args.prepared_only`) are refused with the `litprune prepare` command;
- a validation pass before the first optimizer step of a fresh run (`--validate_at_start`, default true;
  `litprune.callbacks.ValidateAtStart`), so every loss curve starts from the initial (pruned or random) model, and
  a final validation pass after fit, so every run ends with a measured validation loss.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from litprune.callbacks.export import HFExport
from litprune.callbacks.progress import TokenProgressBar
from litprune.callbacks.validate_at_start import ValidateAtStart
from litprune.cli.errors import LitpruneArgumentParser
from litprune.cli.prune import pruned_init_for_fit
from litprune.cli.run_config import (
    RunConfig,
    config_differences,
    load_checkpoint_meta,
    resolve_resume_checkpoint,
    trained_settings,
)
from litprune.cli.run_sections import command_for
from litprune.data.datamodule import TokenDataModule
from litprune.models.positions import check_seq_len
from litprune.modules.causal_lm import CausalLM, check_vocab
from litprune.modules.distillation import read_teacher_config
from litprune.training.budget import TokenBudget, resume_budget
from litprune.training.checkpoint_io import AtomicCheckpointIO
from litprune.training.metrics_logger import MetricsLogger
from litprune.utils.atomic import atomic_write_json, sweep_stale_temporaries

TRAINER_DEFAULTS: dict[str, Any] = {
    "default_root_dir": "runs/default",
    "max_epochs": -1,
    "gradient_clip_val": 1.0,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 10,
    "val_check_interval": 200,
    "check_val_every_n_epoch": None,
}


class LitpruneCLI(LightningCLI):
    """LightningCLI for token-budgeted causal-LM runs (see the module docstring)."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        # The command line, to spell out the `litprune prune|prepare` commands on the same config in errors.
        self.command_args: list[str] | None = (
            list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
        )
        super().__init__(
            model_class=CausalLM,
            datamodule_class=TokenDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=LitpruneArgumentParser,  # errors end with litprune's own message
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            load_from_checkpoint_support=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.every_n_train_steps": 100,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 0,
                # One well-defined last.ckpt: resuming a copied run directory overwrites it, never last-v1.ckpt.
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(HFExport, "export")
        parser.add_argument(
            "--validate_at_start",
            type=bool,
            default=True,
            help="fit: measure the initial model (pruned or random) on the validation windows before the first "
            "optimizer step, so the loss curve starts at 0 training tokens. Skipped on resume and without "
            "validation data.",
        )

    def _parse_ckpt_path(self) -> None:
        """Keep the given config as is: differences from the checkpoint are reported in `before_fit`."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self._get(self.config_init, "trainer", default={})
        run_dir = str(config.get("default_root_dir") or "runs/default")
        # metrics.jsonl is always written; other loggers (`trainer.logger`) come beside it. The run layout must not
        # follow the first logger's version directory, so checkpoints go to <run dir>/checkpoints explicitly.
        kwargs["logger"] = [MetricsLogger(save_dir=run_dir), *_user_loggers(config.get("logger"))]
        checkpoint = self._get(self.config_init, "checkpoint", default=None)
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath is None:
            checkpoint.dirpath = str((Path(run_dir) / "checkpoints").expanduser().resolve())
        if not config.get("plugins") and not _is_sharded(config.get("strategy")):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(TokenProgressBar())
        if self._get(self.config_init, "validate_at_start", default=True) and not any(
            isinstance(c, ValidateAtStart) for c in callbacks
        ):
            callbacks.append(ValidateAtStart())
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    # --------------------------------------------------------------------------------------------- checks
    def before_fit(self) -> None:
        trainer, model, datamodule = self.trainer, self.model, self.datamodule
        if trainer.is_global_zero:
            sweep_stale_temporaries(Path(trainer.default_root_dir))
            if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
                sweep_stale_temporaries(Path(trainer.checkpoint_callback.dirpath))
        saved = self._check_run_dir()
        world_size = planned_world_size(trainer)
        if isinstance(model, CausalLM):
            resuming = model.resume_checkpoint is not None
            if model.distill is not None:
                # A missing or non-Llama teacher stops the run before a pruning init spends time on the parent.
                read_teacher_config(model.distill)
            run_dir = trainer.default_root_dir
            launches = not _processes_started_outside(trainer)
            pruned = pruned_init_for_fit(
                model.init_strategy, world_size, resuming, self.command_args, run_dir, launches_processes=launches
            )
            if pruned is not None:
                model.init_strategy = pruned
        if isinstance(datamodule, TokenDataModule):
            datamodule.check_prepared(world_size, command=command_for("prepare", self.command_args))
        if isinstance(model, CausalLM) and datamodule is not None:
            shape = {
                "max_tokens": model.max_tokens,
                "seq_len": int(datamodule.seq_len),
                "micro_batch_size": int(datamodule.micro_batch_size),
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "world_size": trainer.world_size,
            }
            if saved is None:
                budget = TokenBudget(**shape)
            else:
                replan, source = model.replan_on_resume, model.resume_checkpoint
                budget = resume_budget(**shape, saved=saved, replan=replan, source=source)
            trainer.fit_loop.epoch_loop.max_steps = budget.steps
            _check_positions(model, int(datamodule.seq_len))
            _check_explicit_vocab(model, datamodule)

    def _check_run_dir(self) -> dict[str, Any] | None:
        """Resolve `--ckpt_path` and check it against the run; return the checkpoint's litprune record (None: new run).

        The resolved file is handed to the Trainer as is, so the checkpoint checked here is the one restored.
        """
        trainer = self.trainer
        checkpoint_dir = Path(trainer.checkpoint_callback.dirpath or Path(trainer.default_root_dir) / "checkpoints")
        ckpt_arg = self.config_init[self.subcommand].get("ckpt_path")
        resume_from = resolve_resume_checkpoint(ckpt_arg, checkpoint_dir)
        if resume_from is None:
            existing = sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
            if existing and ckpt_arg != "last":
                raise ValueError(
                    f"The run directory {trainer.default_root_dir!r} already holds checkpoints "
                    f"({existing[-1].name}). Resume it with --ckpt_path last, or set --trainer.default_root_dir "
                    "to a new directory."
                )
            if ckpt_arg == "last":
                self.config_init[self.subcommand]["ckpt_path"] = None  # nothing to resume yet: a new run
            return None
        self.config_init[self.subcommand]["ckpt_path"] = str(resume_from)
        if isinstance(self.model, CausalLM):
            self.model.resume_checkpoint = str(resume_from)
        record = load_checkpoint_meta(resume_from)
        saved = record.get("config")
        if saved is None:
            return record
        current = trained_settings(self._parser(self.subcommand).dump(self.config[self.subcommand]))
        differences = config_differences(saved, current)
        if differences:
            listing = "\n  ".join(differences)
            raise ValueError(
                f"Cannot resume from {resume_from}: the model/data settings differ from the checkpoint's:\n"
                f"  {listing}\nResume with the original settings (the run's config.yaml), or start a new run in "
                "another --trainer.default_root_dir."
            )
        return record

    # ------------------------------------------------------------------------------------ validate and test
    def before_validate(self) -> None:
        _model_from_checkpoint(self.model, self.trainer, self.config_init[self.subcommand].get("ckpt_path"))

    def before_test(self) -> None:
        _model_from_checkpoint(self.model, self.trainer, self.config_init[self.subcommand].get("ckpt_path"))

    # ------------------------------------------------------------------------------------------ after fit
    def after_fit(self) -> None:
        trainer, model, datamodule = self.trainer, self.model, self.datamodule
        metrics: dict[str, Any] = {}
        if datamodule is not None and getattr(datamodule, "val_slice", None) and not trainer.interrupted:
            results = trainer.validate(model, datamodule=datamodule, verbose=False)
            metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        run_dir = Path(trainer.default_root_dir)
        if trainer.is_global_zero and not trainer.interrupted:
            record = {
                "run": model.run_record() if hasattr(model, "run_record") else {},
                "final": metrics,
                "data": datamodule.record() if hasattr(datamodule, "record") else None,
                "export": str(run_dir / self._get(self.config_init, "export").dirname),
            }
            atomic_write_json(run_dir / "results.json", record, default=str)


def _model_from_checkpoint(model: Any, trainer: Any, ckpt_path: str | None) -> None:
    """`validate|test --ckpt_path`: build the model from the checkpoint's architecture (and masks) alone, as a resumed
    fit does, so a pruned run's parent is neither read nor pruned again."""
    if not isinstance(model, CausalLM) or not ckpt_path:
        return
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    path = resolve_resume_checkpoint(ckpt_path, Path(dirpath or Path(trainer.default_root_dir) / "checkpoints"))
    if path is not None:
        model.resume_checkpoint = str(path)


def _processes_started_outside(trainer: Any) -> bool:
    """Whether the run's processes were started outside this one (srun, torchrun, or Lightning's launcher already
    re-ran this command as a worker), rather than about to be launched from here."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return bool(environment is not None and environment.creates_processes_externally)


def planned_world_size(trainer: Any) -> int:
    """The processes the run will have: `num_nodes x devices` (before the processes are launched Lightning's own
    `world_size` may still say 1)."""
    return max(int(trainer.world_size), int(trainer.num_nodes) * int(trainer.num_devices))


def _check_positions(model: CausalLM, seq_len: int) -> None:
    if not model.init_strategy.needs_architecture:
        return
    check_seq_len(
        seq_len,
        model.architecture(vocab_size=256),
        source=f"preset {model.preset!r}",
        remedy="override max_position_embeddings in model.init_args.overrides",
    )


def _check_explicit_vocab(model: CausalLM, datamodule: Any) -> None:
    vocab = model.overrides.get("vocab_size")
    if vocab is None or not model.init_strategy.needs_architecture or not hasattr(datamodule, "load_tokenizer"):
        return
    check_vocab(int(vocab), len(datamodule.load_tokenizer()))


def _user_loggers(logger: Any) -> list[Any]:
    """The loggers of `trainer.logger` (None, True or False: none) that come beside litprune's metrics.jsonl."""
    if logger is None or isinstance(logger, bool):
        return []
    loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    return [item for item in loggers if not isinstance(item, MetricsLogger)]


def _is_sharded(strategy: Any) -> bool:
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    return "fsdp" in str(name).lower() or "modelparallel" in str(name).lower()
