"""The LightningModule every litprune arm trains: a Hugging Face causal LM plus the paper's recipe.

The module is thin. The architecture is a named preset plus overrides; the first weights come from an
*initialisation strategy* (random for `S_N` arms, pruned-from-parent for `P_M-R_N` arms, or any HF
checkpoint); the run is sized by a token budget. Everything else (data, checkpointing, export, masks) lives in
the data module and callbacks.

Batches are `{"input_ids": [B, T], "labels": [B, T]}` with labels already shifted (packed windows of T + 1
tokens), so every position is a predicted token and `tokens_seen` counts exactly B x T per micro-batch per process.

Under Lightning's `ModelParallelStrategy` (the scale path, `configs/trainer/fsdp_8b.yaml`; on CPU
`configs/trainer/fsdp2_cpu.yaml`) `configure_model` shards the model with FSDP2 (`litprune.models.sharding`): each
decoder layer, then the root, over the data-parallel mesh; bf16 compute with fp32 reduce and fp32 master weights when
the trainer's precision is bf16. A random init (and a resumed run, whose weights come from the checkpoint) is built
with its parameters on the meta device and only each rank's rows are materialised, so no rank ever holds the whole
model; other inits (pruned or pretrained parents) build the full model on every rank, then shard it.

A checkpoint carries the model's architecture (`hf_config`) in its `litprune` record, so resuming, validating,
testing and `CausalLM.load_from_checkpoint` build the model from the checkpoint alone: no parent is loaded and
nothing is pruned again.

Retraining may distil from a frozen teacher (`distill`, `litprune.modules.distillation`): the training loss becomes
`alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)`, logged as `train/loss` with its terms `train/ce` and
`train/kl`; validation stays plain CE. The teacher is loaded in `configure_model` at the start of each fit (sharded
like the student under FSDP2) and is no part of the module: not in `state_dict`, checkpoints or the optimizer.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from transformers import GenerationConfig, LlamaConfig, PreTrainedModel

from litprune.inits.base import InitResult, InitStrategy
from litprune.inits.masks import KeepMasks, attach_masks
from litprune.inits.random import RandomInit
from litprune.models.fingerprint import weights_fingerprint
from litprune.models.params import count_parameters
from litprune.models.positions import check_seq_len
from litprune.models.presets import build_llama_config
from litprune.models.sharding import (
    ShardingSettings,
    materialize_local_shards,
    mixed_precision_policy,
    parameters_on_meta,
    shard_model,
)
from litprune.modules.distillation import (
    Distillation,
    Teacher,
    check_resumed_distillation,
    check_teacher_vocab,
    compute_dtype,
    distillation_loss,
    distillation_record,
    read_teacher_config,
)
from litprune.modules.training_terms import TrainingTerm
from litprune.training.budget import TokenBudget, resume_budget
from litprune.training.checkpoint_io import load_checkpoint, read_checkpoint_record
from litprune.training.lr_schedule import WarmupCosine, resize_schedule_state
from litprune.training.mask_state import decode_masks, is_mask_state
from litprune.training.strategies import check_gradient_clipping, data_parallel_mesh

# True while `CausalLM.load_from_checkpoint` constructs a module: Lightning calls `configure_model` before it hands
# the checkpoint to `on_load_checkpoint`, which then builds the checkpoint's architecture.
_LOADING_CHECKPOINT: ContextVar[bool] = ContextVar("litprune_loading_checkpoint", default=False)


class CausalLM(LightningModule):
    """Train a Hugging Face causal LM (Llama family) for an exact token budget.

    Defaults follow the paper's recipe: AdamW (0.9, 0.95), eps 1e-8, weight decay 0.1 on all parameters,
    peak LR 3e-4, warmup min(5% of steps, 2000) with a quadratic ramp, cosine to 0.1 x peak over the whole run.
    Gradient clipping (1.0) is the Trainer's `gradient_clip_val`.

    Special tokens: whatever the init (random, pretrained, pruned), the model takes its BOS and EOS ids from the
    run's tokenizer (in `config` and `generation_config`) and its pad id too (in `generation_config` only: the
    config's `pad_token_id` would become the embedding's `padding_idx`, a row that never trains, and the embedded
    tokenizer pads with EOS). A pretrained or pruned parent whose ids differ is corrected, with a warning naming
    each change; an id list (e.g. several EOS ids) that already holds the tokenizer's id is kept. The export says
    `use_cache: true`; training runs without the KV cache.

    Reload a trained module with `CausalLM.load_from_checkpoint("<run dir>/checkpoints/last.ckpt")`: the model is
    built from the checkpoint's architecture (no parent access) with its trained weights and, for a sparse run,
    its keep-masks (`pruning_masks`).

    Args:
        preset: named architecture (`tiny`, `small`, `llama3.1-8b`, `llama3.1-8b-depth16`, `llama3.1-8b-width`);
            ignored by inits that load their architecture (from_pretrained, pruned).
        overrides: LlamaConfig fields replacing the preset's, e.g. `{num_hidden_layers: 2}`.
        init: initialisation strategy (`class_path` + `init_args`); default: `RandomInit(seed=0)`.
        max_tokens: training tokens of this run (the N of `S_N` / `P_M-R_N`); must be a whole number of
            optimizer steps (micro_batch_size x accumulate_grad_batches x devices x seq_len).
        lr: peak learning rate.
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: decoupled weight decay, applied to every parameter as in the paper.
        warmup_fraction: warmup as a share of the run's steps.
        max_warmup_steps: cap on warmup steps.
        min_lr_ratio: final LR as a fraction of `lr`.
        activation_checkpointing: recompute decoder activations in backward (saves memory at scale).
        cpu_offload: under ModelParallelStrategy (FSDP2), keep sharded parameters, gradients and optimizer state in
            CPU memory (slower; for models whose shards do not fit on the accelerators).
        arm: a label for reports, in the paper's notation (e.g. `S_N`, `P_M-R_N`, `P_M`).
        replan_on_resume: on `--ckpt_path` resume with other tokens per step than the checkpoint's (another
            micro-batch, accumulation, device count or seq_len), re-plan the tokens left as whole steps of the new
            shape and size the LR schedule from the new total of steps. Off (default), such a resume is refused.
        distill: retrain by distillation from a frozen teacher, e.g. `{teacher: runs/tiny_scratch/export, alpha:
            0.5, temperature: 1.0}` (optional `top_k`); see `litprune.modules.distillation.Distillation`. The teacher
            must use the run's tokenizer and the student's vocab_size. Null (default): plain cross-entropy.
    """

    def __init__(
        self,
        preset: str | None = "tiny",
        overrides: dict[str, Any] | None = None,
        init: InitStrategy | None = None,
        max_tokens: int = 1_048_576,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        warmup_fraction: float = 0.05,
        max_warmup_steps: int = 2000,
        min_lr_ratio: float = 0.1,
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
        arm: str | None = None,
        replan_on_resume: bool = False,
        distill: Distillation | None = None,
    ) -> None:
        super().__init__()
        # The distillation settings are in the run's config and record; a reloaded module (load_from_checkpoint)
        # serves inference and needs no teacher.
        self.save_hyperparameters(ignore=["init", "distill"])
        self.preset = preset
        self.overrides = dict(overrides or {})
        self.init_strategy = init if init is not None else RandomInit(seed=0)
        self.max_tokens = int(max_tokens)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(betas), float(eps), float(weight_decay)
        self.schedule_args = {
            "warmup_fraction": float(warmup_fraction),
            "max_warmup_steps": int(max_warmup_steps),
            "min_lr_ratio": float(min_lr_ratio),
        }
        WarmupCosine(total_steps=1, **self.schedule_args)  # validates the schedule arguments now
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens!r} must be a positive number of training tokens.")
        if lr <= 0:
            raise ValueError(f"lr={lr!r} must be positive.")
        self.activation_checkpointing = bool(activation_checkpointing)
        if not isinstance(cpu_offload, bool):
            raise ValueError(f"cpu_offload={cpu_offload!r} must be true or false.")
        self.cpu_offload = cpu_offload
        self.arm = arm
        self.replan_on_resume = bool(replan_on_resume)
        if isinstance(distill, dict):
            distill = Distillation(**distill)
        if distill is not None and not isinstance(distill, Distillation):
            raise ValueError(
                f"distill={distill!r} must be a mapping such as {{teacher: runs/tiny_scratch/export, alpha: 0.5, "
                "temperature: 1.0}, or null."
            )
        self.distill = distill
        # The frozen teacher: a plain object, so it stays outside the module tree (state_dict, optimizer, .to()).
        self._teacher: Teacher | None = None
        self.model: PreTrainedModel | None = None
        self.init_record: dict[str, Any] = {}
        self.init_tokens: dict[str, int] = {}
        attach_masks(self, {})
        self.tokens_seen = 0
        # Set by `litprune fit|validate|test --ckpt_path`: the model is then built from the checkpoint's architecture
        # and its weights come from the checkpoint, so a pruned init is not pruned (nor its parent loaded) again.
        self.resume_checkpoint: str | None = None
        self.budget: TokenBudget | None = None
        self._tokens_at_last_log = 0
        self._time_at_last_log: float | None = None
        self._val_sum = 0.0
        self._val_count = 0
        # Extra objective terms registered by callbacks (Sheared-LLaMA's masks and multipliers); see training_terms.
        self.training_terms = torch.nn.ModuleDict()

    # ----------------------------------------------------------------------------------------- model building
    def architecture(self, vocab_size: int | None = None) -> LlamaConfig | None:
        """The configured architecture (preset + overrides), or None for inits that load their own."""
        if not self.init_strategy.needs_architecture:
            return None
        if self.preset is None:
            raise ValueError("model.init_args.preset is null but the init strategy needs an architecture.")
        return build_llama_config(self.preset, self.overrides, vocab_size=vocab_size)

    def configure_model(self) -> None:
        """Build the HF model once, sharded with FSDP2 under ModelParallelStrategy; idempotent. In a distilling fit,
        then load the teacher (once per fit)."""
        if _LOADING_CHECKPOINT.get():
            return  # under load_from_checkpoint, on_load_checkpoint builds the checkpoint's architecture
        if self.model is None:
            self._build_model()
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        if fitting and self._teacher is not None and self._teacher.model is None:
            self._load_teacher()

    def _build_model(self) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        vocab = len(tokenizer) if tokenizer is not None else None
        mesh = data_parallel_mesh(self._trainer.strategy) if self._trainer is not None else None
        # Without weights first when the weights come later anyway: from a checkpoint, or from an init that can
        # write them into the local shards (RandomInit.apply). Other inits need their parent's full tensors.
        weightless = mesh is not None and (self.resume_checkpoint is not None or _init_writes_in_place(self))
        with parameters_on_meta() if weightless else nullcontext():
            if self.resume_checkpoint is not None:
                result = skeleton_from_checkpoint(self.resume_checkpoint)
                if self._trainer is not None and self._trainer.state.fn == "fit":
                    result.masks = {}  # a resumed fit: the SparseMask callbacks restore their own masks
            else:
                result = self.init_strategy.build(self.architecture(vocab_size=vocab), datamodule)
        self.attach(result)
        rank_zero_info(f"litprune: {self.arm or 'run'} model: {count_parameters(self.model)}")
        if tokenizer is not None:
            check_vocab(self.model.config.vocab_size, len(tokenizer))
            changes = align_token_ids(self.model, tokenizer)
            if changes and self.resume_checkpoint is None and not self.init_strategy.needs_architecture:
                rank_zero_warn(
                    f"litprune: the initial model's special-token ids differ from the run's tokenizer; set to the "
                    f"tokenizer's: {', '.join(changes)}."
                )
        check_seq_len(
            getattr(datamodule, "seq_len", None),
            self.model.config,
            remedy="raise max_position_embeddings in model.init_args.overrides (scratch inits only)",
        )
        if mesh is not None:
            self._shard(mesh, init=None if self.resume_checkpoint is not None else self.init_strategy)

    def _shard(self, mesh: Any, init: InitStrategy | None) -> None:
        """FSDP2 over `mesh`; then, for a model built without weights, local storage filled by `init` (if any)."""
        if self.cpu_offload and self.trainer.strategy.root_device.type == "cpu":
            raise ValueError(
                "model.init_args.cpu_offload=true moves FSDP2 shards from an accelerator to CPU memory, but this run "
                "trains on the CPU (trainer.accelerator=cpu), where they already are. Set cpu_offload: false."
            )
        shard_model(self.model, mesh, self._sharding_settings())
        if any(p.is_meta for p in self.model.parameters()):
            device = torch.device("cpu") if self.cpu_offload else self.trainer.strategy.root_device
            materialize_local_shards(self.model, device, init=getattr(init, "apply", None))

    @property
    def teacher(self) -> Teacher | None:
        """The frozen teacher of a distilling fit (`distill`), or None; its `model` is loaded from the start of
        `trainer.fit` to its end."""
        return self._teacher

    def _sharding_settings(self) -> ShardingSettings:
        param_dtype, reduce_dtype = mixed_precision_policy(self.trainer.precision)
        return ShardingSettings(cpu_offload=self.cpu_offload, param_dtype=param_dtype, reduce_dtype=reduce_dtype)

    def _load_teacher(self) -> None:
        """Load the inspected teacher at the compute dtype: on the run's device, or sharded like the student."""
        strategy = self.trainer.strategy
        mesh = data_parallel_mesh(strategy)
        shard = None
        if mesh is not None:
            settings = self._sharding_settings()

            def shard(model: torch.nn.Module) -> None:
                shard_model(model, mesh, settings)

        dtype = compute_dtype(self.trainer.precision)
        self._teacher.load(self.model.config.vocab_size, strategy.root_device, dtype, shard=shard)
        rank_zero_info(
            f"litprune: distilling from {self.distill.teacher} ({self._teacher.parameters}, {dtype}); alpha "
            f"{self.distill.alpha}, temperature {self.distill.temperature}, top_k {self.distill.top_k}"
        )

    def attach(self, result: InitResult) -> None:
        """Adopt an initialisation's model, provenance and masks (mask keys re-prefixed with `model.`)."""
        self.model = result.model
        self.model.config.use_cache = False
        if self.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.init_record = dict(result.record)
        self.init_tokens = dict(result.tokens)
        attach_masks(self, result.masks, prefix="model.")

    def parameter_counts(self) -> dict[str, int]:
        if self.model is None:
            raise RuntimeError("The model is not built yet; call configure_model() first.")
        return count_parameters(self.model).as_dict()

    # ----------------------------------------------------------------------------------------------- budget
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer = self.trainer
        check_gradient_clipping(trainer)
        seq_len, micro_batch = _datamodule_shape(trainer)
        shape = {
            "max_tokens": self.max_tokens,
            "seq_len": seq_len,
            "micro_batch_size": micro_batch,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "world_size": trainer.world_size,
        }
        saved = None
        if self.resume_checkpoint is None:
            self.budget = TokenBudget(**shape)
        else:  # the checkpoint's tokens per step, or the tokens left re-planned (replan_on_resume)
            saved = read_checkpoint_record(self.resume_checkpoint)
            source = self.resume_checkpoint
            self.budget = resume_budget(**shape, saved=saved, replan=self.replan_on_resume, source=source)
        requested = trainer.fit_loop.epoch_loop.max_steps
        if requested not in (-1, None, self.budget.steps):
            raise ValueError(
                f"trainer.max_steps={requested} conflicts with the token budget: max_tokens={self.max_tokens:,} is "
                f"{self.budget.steps} steps of {self.budget.tokens_per_step:,} tokens. Remove trainer.max_steps; "
                "litprune sizes runs by model.init_args.max_tokens."
            )
        trainer.fit_loop.epoch_loop.max_steps = self.budget.steps
        self._inspect_teacher(saved)

    def _inspect_teacher(self, saved: dict[str, Any] | None) -> None:
        """Check the teacher against the run before any weights load (the student's included): its tokenizer,
        positions and (for a scratch student) vocab_size; its fingerprint and settings against a resumed checkpoint.
        """
        self._teacher = None
        fingerprint = None
        if self.distill is not None:
            trainer = self.trainer
            datamodule = getattr(trainer, "datamodule", None)
            config = read_teacher_config(self.distill, datamodule)
            # Rank 0 reads the weight files; every rank gets the same answer, so every rank raises alike.
            own = weights_fingerprint(self.distill.teacher, config) if trainer.is_global_zero else None
            fingerprint = trainer.strategy.broadcast(own, src=0)
            self._teacher = Teacher(self.distill.teacher, config, fingerprint)
            tokenizer = getattr(datamodule, "tokenizer", None)
            if self.model is None and saved is None and self.init_strategy.needs_architecture and tokenizer is not None:
                student_vocab = self.architecture(vocab_size=len(tokenizer)).vocab_size
                check_teacher_vocab(self.distill.teacher, config.vocab_size, student_vocab)
        if saved is not None:
            check_resumed_distillation(saved.get("distillation"), self.distill, fingerprint, self.resume_checkpoint)

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._teacher is not None:
            self._teacher.release()  # free its memory; the next fit loads it again

    # --------------------------------------------------------------------------------------------- training
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self(batch["input_ids"])
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())

    def add_training_term(self, name: str, term: TrainingTerm) -> None:
        """Register `term` (call before the optimizer is built, e.g. from a callback's `setup`): its parameters
        get their own optimizer groups and its loss is added to every training step's loss, logged as
        `train/<name>`.

        Raises:
            ValueError: a term named `name` is already registered.
        """
        if name in self.training_terms:
            raise ValueError(f"A training term named {name!r} is already registered; give each one its own name.")
        self.training_terms[name] = term

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        kl = None
        if self.distill is None:
            loss = ce = self._loss(batch)
        else:
            teacher = self._teacher
            if teacher is None:
                raise RuntimeError("distill is set but no teacher was set up: train the module with trainer.fit.")
            # The teacher first: its full logits are freed before the student's forward.
            targets = teacher.targets(batch["input_ids"], self.distill.top_k, self.distill.temperature)
            loss, ce, kl = distillation_loss(
                self(batch["input_ids"]), targets, batch["labels"], self.distill.alpha, self.distill.temperature
            )
        for name, term in self.training_terms.items():
            value = term.loss()
            if value is not None:
                loss = loss + value
                self.log(f"train/{name}", value.detach())
        # Means over every process (each holds the same number of tokens), not rank 0's share: one all-reduce.
        terms = [loss.detach(), ce.detach()] + ([kl.detach()] if kl is not None else [])
        means = self.trainer.strategy.reduce(torch.stack(terms), reduce_op="mean")
        self.log("train/loss", means[0], prog_bar=True)
        self.log("train/ppl", torch.exp(means[1].clamp(max=50)))  # of the cross-entropy alone
        if kl is not None:
            self.log("train/ce", means[1])
            self.log("train/kl", means[2])
        # Counted here, before any on_train_batch_end callback (ModelCheckpoint saves there). Every process
        # reads windows of the same shape, so the global count is exact without a collective.
        self.tokens_seen += batch["labels"].numel() * self.trainer.world_size
        return loss

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._log_throughput()

    def _log_throughput(self) -> None:
        trainer = self.trainer
        if trainer.fit_loop._should_accumulate() or trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        now = time.perf_counter()
        metrics: dict[str, float] = {"train/tokens_seen": self.tokens_seen}
        if self._time_at_last_log is not None and now > self._time_at_last_log:
            metrics["train/tokens_per_s"] = (self.tokens_seen - self._tokens_at_last_log) / (
                now - self._time_at_last_log
            )
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if optimizer is not None:
            metrics["train/lr"] = optimizer.param_groups[0]["lr"]
        self._time_at_last_log, self._tokens_at_last_log = now, self.tokens_seen
        if trainer.is_global_zero:
            # Lightning's self.log stores numbers as float32 (inexact above 16M tokens): log ints directly, at
            # the step index Lightning uses for the batch's other metrics.
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_start(self) -> None:
        self._time_at_last_log, self._tokens_at_last_log = time.perf_counter(), self.tokens_seen

    # ------------------------------------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._val_sum, self._val_count = 0.0, 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def _eval_step(self, batch: dict[str, torch.Tensor]) -> None:
        loss = self._loss(batch)
        self._val_sum += loss.item() * batch["labels"].numel()
        self._val_count += batch["labels"].numel()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_start(self) -> None:
        self._val_sum, self._val_count = 0.0, 0

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, prefix: str) -> None:
        # Token-weighted mean over all processes (each holds its own sum and count).
        totals = torch.tensor([self._val_sum, float(self._val_count)], dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[1] > 0:
            loss = (totals[0] / totals[1]).item()
            self.log(f"{prefix}/loss", loss, prog_bar=True)
            self.log(f"{prefix}/ppl", math.exp(min(loss, 50.0)))

    # ------------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        if self.budget is None:
            raise RuntimeError("configure_optimizers needs the token budget; it is set in setup('fit').")
        groups: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        for term in self.training_terms.values():
            groups.extend(term.param_groups(self.lr))
        optimizer = torch.optim.AdamW(
            groups, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )
        schedule = WarmupCosine(total_steps=self.budget.steps, **self.schedule_args)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------------- checkpoints
    def run_record(self) -> dict[str, Any]:
        """Provenance of this model: arm, init, budget, exact tokens seen, parameter counts."""
        return {
            "arm": self.arm,
            "init": self.init_record,
            "init_tokens": self.init_tokens,
            "max_tokens": self.max_tokens,
            "tokens_seen": self.tokens_seen,
            "steps": self.budget.steps if self.budget else None,
            "tokens_per_step": self.budget.tokens_per_step if self.budget else None,
            "step_shape": self.budget.record() if self.budget else None,
            "parameters": self.parameter_counts() if self.model is not None else None,
            "distillation": (
                distillation_record(self.distill, self._teacher, self.tokens_seen) if self.distill else None
            ),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.setdefault("litprune", {})
        record.update(self.run_record())
        record["hf_config"] = self.model.config.to_dict()
        if getattr(self.model, "generation_config", None) is not None:
            record["generation_config"] = self.model.generation_config.to_dict()
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer_dir = getattr(datamodule, "tokenizer_dir", None)
        if tokenizer_dir is not None:
            record["tokenizer_dir"] = str(tokenizer_dir)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model is None:  # load_from_checkpoint: the checkpoint's architecture, weights load next
            self.attach(init_from_checkpoint(checkpoint, source="the checkpoint given to load_from_checkpoint"))
        self._drop_unregistered_terms(checkpoint)
        record = checkpoint.get("litprune", {})
        self.tokens_seen = int(record.get("tokens_seen", 0))
        self.init_record = dict(record.get("init") or self.init_record)
        self.init_tokens = dict(record.get("init_tokens") or self.init_tokens)
        budget = self.budget
        if budget is not None and budget.done_tokens and budget.done_steps == checkpoint.get("global_step"):
            # Re-planned at this checkpoint: its stored schedule was sized for the old steps.
            resize_schedule_state(checkpoint, WarmupCosine(total_steps=budget.steps, **self.schedule_args))

    def _drop_unregistered_terms(self, checkpoint: dict[str, Any]) -> None:
        """Remove the parameters of training terms this module has not registered (a checkpoint written mid-way
        through Sheared-LLaMA's pruning phase, loaded without its callback) so the model's weights still load; the
        model is then evaluated without those terms' masks, which the warning says."""
        state = checkpoint.get("state_dict") or {}
        unregistered = sorted(
            {key.split(".")[1] for key in state if key.startswith("training_terms.")} - set(self.training_terms)
        )
        if not unregistered:
            return
        for key in [k for k in state if k.startswith("training_terms.") and k.split(".")[1] in unregistered]:
            del state[key]
        rank_zero_warn(
            f"The checkpoint holds the state of training term(s) {unregistered} that this run does not register "
            "(e.g. Sheared-LLaMA masks saved during its pruning phase, loaded without the ShearedPruning callback). "
            "Their parameters were skipped: the model's weights are used as they are, without those masks. Add the "
            "callback to the run to resume or evaluate with them."
        )

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLM:
        """Rebuild a trained module from a litprune checkpoint (e.g. `<run dir>/checkpoints/last.ckpt`).

        The model is built from the architecture stored in the checkpoint, whatever its init (random, pretrained,
        pruned): no parent is loaded and nothing is pruned. It then holds the checkpoint's weights, and a sparse
        run's keep-masks are on the module (`pruning_masks`). Arguments are Lightning's
        (`LightningModule.load_from_checkpoint`); keyword arguments override the saved hyperparameters.

        Raises:
            ValueError: the checkpoint was not written by a litprune run (it has no `hf_config` record).
        """
        loading = _LOADING_CHECKPOINT.set(True)
        try:
            return super().load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs
            )
        finally:
            _LOADING_CHECKPOINT.reset(loading)


def align_token_ids(model: PreTrainedModel, tokenizer: Any) -> list[str]:
    """Give `model` the special-token ids of `tokenizer`; return the changes made, as `where.name old -> new`.

    BOS and EOS go into `model.config` and `model.generation_config`, the pad id into `generation_config` only
    (the config's `pad_token_id` becomes the embedding's `padding_idx`, a row that never trains). An id the
    tokenizer lacks (None) is left as it is, and so is an id list that already holds the tokenizer's id.
    """
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    targets: list[tuple[str, Any, dict[str, int | None]]] = [("config", model.config, ids)]
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        targets.append(("generation_config", generation, {**ids, "pad_token_id": tokenizer.pad_token_id}))
    changes = []
    for where, config, wanted in targets:
        for name, new in wanted.items():
            old = getattr(config, name, None)
            if new is None or old == new or (isinstance(old, (list, tuple)) and new in old):
                continue
            setattr(config, name, int(new))
            changes.append(f"{where}.{name} {old} -> {new}")
    return changes


def skeleton_from_checkpoint(path: str) -> InitResult:
    """A randomly initialised model with the architecture stored in a litprune checkpoint (weights load later)."""
    checkpoint = load_checkpoint(path, mmap=True)
    return init_from_checkpoint(checkpoint, source=f"Checkpoint {path}")


def init_from_checkpoint(checkpoint: dict[str, Any], source: str = "The checkpoint") -> InitResult:
    """The `InitResult` a litprune checkpoint describes: its architecture (random weights; the trained ones load
    later), generation config, init provenance, and the keep-masks its `SparseMask` callbacks saved.

    Raises:
        ValueError: the checkpoint has no litprune record (`hf_config`); `source` names it in the message.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    record = dict(checkpoint.get("litprune", {}))
    if "hf_config" not in record:
        raise ValueError(
            f"{source} has no litprune record (hf_config): it was not written by `litprune fit`. Load it with the "
            "module it was trained with, or start from weights with the FromPretrained init."
        )
    fields = dict(record["hf_config"])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if record.get("generation_config") and getattr(model, "generation_config", None) is not None:
        model.generation_config = GenerationConfig.from_dict(dict(record["generation_config"]))
    return InitResult(
        model=model,
        record=dict(record.get("init") or {}),
        masks=checkpoint_masks(checkpoint),
        tokens=dict(record.get("init_tokens") or {}),
    )


def checkpoint_masks(checkpoint: dict[str, Any], prefix: str = "model.") -> KeepMasks:
    """The keep-masks the checkpoint's mask callbacks saved, keyed by Hugging Face parameter name ({} if none).

    Reads every callback state in `litprune.training.mask_state`'s format and keeps the parameters under `prefix`
    (the HF model's path inside the module), with the prefix removed.
    """
    masks: KeepMasks = {}
    for state in (checkpoint.get("callbacks") or {}).values():
        if is_mask_state(state):
            masks.update(
                {
                    name.removeprefix(prefix): mask
                    for name, mask in decode_masks(state["masks"]).items()
                    if name.startswith(prefix)
                }
            )
    return masks


def _init_writes_in_place(module: CausalLM) -> bool:
    """Whether the module's init can initialise an already built (sharded) model in place: a scratch init with an
    `apply(model)` method, such as RandomInit."""
    init = module.init_strategy
    return init.needs_architecture and callable(getattr(init, "apply", None))


def check_vocab(model_vocab: int, tokenizer_vocab: int) -> None:
    """Raise unless every token id of the tokenizer has an embedding row."""
    if tokenizer_vocab > model_vocab:
        raise ValueError(
            f"The tokenizer has {tokenizer_vocab} tokens but the model's vocab_size is {model_vocab}: ids above "
            f"{model_vocab - 1} would index past the embedding. Set model overrides vocab_size >= {tokenizer_vocab} "
            "(or leave it unset on tiny/small presets to take the tokenizer's size), or use a matching tokenizer."
        )


def _datamodule_shape(trainer: Any) -> tuple[int, int]:
    datamodule = getattr(trainer, "datamodule", None)
    seq_len = getattr(datamodule, "seq_len", None)
    micro_batch = getattr(datamodule, "micro_batch_size", None)
    if seq_len is None or micro_batch is None:
        raise ValueError(
            "CausalLM sizes its run in tokens and needs a data module exposing `seq_len` and `micro_batch_size` "
            "(litprune.data.TokenDataModule does). Pass one to trainer.fit(datamodule=...)."
        )
    return int(seq_len), int(micro_batch)
