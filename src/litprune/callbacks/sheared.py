"""`ShearedPruning`: Sheared-LLaMA's targeted structured pruning, learned during training, as a Lightning callback.

Design choices:

- The model stays an ordinary Hugging Face Llama: the masks act through hooks (`litprune.pruning.sheared_forward`)
  and the learned parameters (mask logits, Lagrange multipliers) live in a `TrainingTerm` registered on the
  LightningModule (`CausalLM.add_training_term`), so they are in its `state_dict`, in every checkpoint, and in the
  run's one optimizer with their own learning rates (multipliers by gradient ascent, see
  `litprune.pruning.sheared_masks`). The LR schedule scales every group alike, as the reference's trainer does.
- Head masks prune whole KV groups (a key/value head with its G query heads), so every intermediate and final
  model is a valid GQA Llama; with multi-head parents this is the reference's per-head mask.
- The target shape is the width solver's (`solve_shape(config, "width", ...)`): for a ratio, the same shape
  Minitron-width reaches, so the scratch twin `S_N` is shared. Layers are kept: the layer mask is learned with the
  target "all layers kept" and only scales blocks.
- Mask noise is drawn from a generator seeded by (seed, optimizer step, micro-batch index), so a resumed run draws
  exactly the masks an uninterrupted one would, without saving any RNG state.
- At the end of the pruning phase (`on_train_end`, before `HFExport.on_fit_end` writes the export) the
  deterministic masks with exactly the target counts are folded into the weights and the model is sliced to the
  target shape (`litprune.pruning.sheared_materialise`); `pl_module.model` is replaced by it, so the run's export
  is an ordinary Hugging Face checkpoint at the target shape. Continued pretraining (`R_N`) is a separate run that
  starts `litprune.inits.FromPretrained` of that export.
- Dynamic batch loading (the reference's domain re-weighting) is not implemented.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from litprune.models.params import count_parameters
from litprune.modules.training_terms import TrainingTerm
from litprune.pruning.shapes import (
    CONVENTIONS,
    TARGET_KEYS,
    ShapePlan,
    achieved_ratios,
    check_convention,
    check_ratio_open,
    solve_shape,
)
from litprune.pruning.sheared_forward import MaskHooks, attach_sheared_masks
from litprune.pruning.sheared_masks import MASK_MODULES, MaskLayout, ShearedMasks, target_counts
from litprune.pruning.sheared_materialise import materialise
from litprune.training.checkpoint_io import load_checkpoint
from litprune.training.mask_state import describe_differences

STATE_VERSION = 1
_TARGET_KEYS = TARGET_KEYS["width"]


class ShearedTerm(ShearedMasks, TrainingTerm):
    """`ShearedMasks` registered on the LightningModule as a training term (loss and optimizer groups)."""


class ShearedPruning(Callback):
    """Learn hard-concrete L0 masks over layers, KV groups, MLP neurons and hidden channels while the model trains,
    constrained to a target shape; at the end, materialise the pruned model (Sheared-LLaMA's pruning phase).

    Sample YAML (`trainer.callbacks` of a LightningCLI config, e.g. `callbacks/sheared_llama.yaml`)::

        trainer:
          callbacks+:
            - class_path: litprune.callbacks.sheared.ShearedPruning
              init_args:
                ratio: 0.5                 # or target: {hidden_size: 3072, intermediate_size: 9216}
                convention: non_embedding
                lagrangian_warmup_fraction: 0.2
                mask_lr: 1.0
                lagrangian_lr: 1.0
                seed: 17

    The objective is the language-model loss plus the Lagrangian `sum_m mean(l1 (s - t) + l2 (s - t)^2)` over the
    masked modules (logged as `train/<term_name>`), with `s` the expected sparsity and `t` the target, warmed up
    linearly from 0 over the first `lagrangian_warmup_fraction` of the run's steps. Logged every step:
    `sheared/expected_<module>` and `sheared/target_<module>` (kept units per mask row, mean over layers for head and
    intermediate; the target as warmed up at that step), `sheared/lambda_1_<module>`, `sheared/lambda_2_<module>`
    and `sheared/expected_ratio_<convention>` (expected pruned fraction of parameters).

    Lifecycle (which hook does what):

    - `setup` (fit only): build the model if the module has not yet (`CausalLM.configure_model` is idempotent),
      solve the target shape, register the masks and multipliers as a training term (before the optimizer is built
      and before checkpoint weights are restored, so they resume as module parameters) and attach the mask hooks.
      A resume from a checkpoint written after materialisation, or by a run without this callback, is refused.
    - `on_train_start`: the Lagrangian warmup in steps, from the run's total steps.
    - `on_train_batch_start`: the step for the warmup and the (step, micro-batch) key of the mask noise.
    - `on_train_batch_end`: log the sizes, multipliers and expected ratio.
    - validation (module in eval mode): deterministic masks, with the expected counts (the reference's
      `eval_target_model=false`) or exactly the target counts (`eval_target_model: true`).
    - `on_train_end`: deterministic masks with the target counts, folded and sliced; `pl_module.model` becomes the
      small model, the training term is removed, and the pruning record is stored in `pl_module.init_record`
      under `sheared` (so it reaches `export/litprune.json` and `results.json`): method, target shape, kept counts,
      achieved ratios, parameters before and after, pruning tokens and steps, final multipliers.
    - `state_dict`: settings, target shape and whether the model was materialised; a resume with other settings
      stops with an error naming each difference.

    Supported strategies: single device and DDP. Strategies that shard parameters (FSDP, DeepSpeed, Lightning's
    `ModelParallelStrategy`) are refused at setup.

    Args:
        ratio: Pruned fraction of parameters under `convention`, in (0, 1); the width solver picks the hidden size
            and MLP size (same factor on both, heads kept), the shape Minitron-width reaches at this ratio.
        target: Explicit target sizes instead of (or with) a ratio: `hidden_size` and `intermediate_size`, plus
            optionally `num_key_value_heads` (whole KV groups are pruned with their query heads). With only one of
            hidden/intermediate sizes, `ratio` picks the other.
        convention: Which parameter count `ratio` refers to: "non_embedding" (the paper's) or "total".
        modules: Which masks to learn, a subset of ["layer", "head", "intermediate", "hidden"]. A module left out is
            not masked and must keep its full size in the target.
        lagrangian_warmup_fraction: Share of the run's optimizer steps over which the target sparsity rises
            linearly from 0 to its final value, in [0, 1] (0.2 as upstream).
        mask_lr: Peak learning rate of the mask logits (1.0 in the reference); no weight decay.
        lagrangian_lr: Peak learning rate of the multipliers, which ascend the loss (1.0 in the reference).
        seed: Seeds the mask logits' initialisation and every mask sample (17 in the reference's runs).
        eval_target_model: Validation during pruning uses deterministic masks with exactly the target counts per
            row (true) or with the expected counts `round(sum P(z=0))` (false, the reference's choice while pruning).
            Materialisation always uses the target counts.
        hidden_multiple: Round the solved hidden size to this multiple (default: the solver's).
        mlp_multiple: Round the solved MLP size to this multiple (default: the solver's).
        term_name: Name of the training term (its loss is logged as `train/<term_name>`).

    Raises:
        ValueError: (init) any invalid argument, all problems listed together; (setup) a target the parent cannot
            reach (the solver's message), a parent whose heads are not divisible by its KV groups, a sharding
            strategy, a module without a Hugging Face Llama-layout `model`, or a resume from a checkpoint this
            callback cannot continue.
    """

    def __init__(
        self,
        ratio: float | None = None,
        target: dict[str, int] | None = None,
        convention: str = "non_embedding",
        modules: list[str] | None = None,
        lagrangian_warmup_fraction: float = 0.2,
        mask_lr: float = 1.0,
        lagrangian_lr: float = 1.0,
        seed: int = 17,
        eval_target_model: bool = False,
        hidden_multiple: int | None = None,
        mlp_multiple: int | None = None,
        term_name: str = "sheared",
    ) -> None:
        problems: list[str] = []
        if ratio is not None:
            try:
                ratio = check_ratio_open(ratio)
            except ValueError as err:
                problems.append(str(err).rstrip("."))
        target = dict(target or {})
        unknown = sorted(set(target) - set(_TARGET_KEYS))
        if unknown:
            problems.append(f"target keys {unknown} are unknown; allowed: {', '.join(_TARGET_KEYS)}")
        for key, value in target.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"target[{key!r}]={value!r} must be a positive integer")
        if ratio is None and not {"hidden_size", "intermediate_size"} <= set(target):
            problems.append(
                "give a ratio (e.g. ratio: 0.5) or a target with both hidden_size and intermediate_size "
                f"(got ratio=None, target={target})"
            )
        if ratio is not None and {"hidden_size", "intermediate_size"} <= set(target):
            problems.append(
                f"ratio={ratio} and a target with both hidden_size and intermediate_size were given; the sizes alone "
                "fix the shape: drop the ratio, or one of the sizes to let the ratio pick it"
            )
        if convention not in CONVENTIONS:
            problems.append(f"convention={convention!r} is not one of {', '.join(map(repr, CONVENTIONS))}")
        modules = list(MASK_MODULES if modules is None else modules)
        bad_modules = [m for m in modules if m not in MASK_MODULES]
        if bad_modules or not modules or len(set(modules)) != len(modules):
            problems.append(
                f"modules={modules!r} must be a non-empty list without repeats, drawn from {list(MASK_MODULES)}"
            )
        if (
            isinstance(lagrangian_warmup_fraction, bool)
            or not isinstance(lagrangian_warmup_fraction, int | float)
            or not 0.0 <= float(lagrangian_warmup_fraction) <= 1.0
        ):
            problems.append(f"lagrangian_warmup_fraction={lagrangian_warmup_fraction!r} must be a number in [0, 1]")
        for name, value in (("mask_lr", mask_lr), ("lagrangian_lr", lagrangian_lr)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not float(value) > 0:
                problems.append(f"{name}={value!r} must be a positive number (the multipliers' ascent is built in)")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            problems.append(f"seed={seed!r} must be a non-negative integer")
        if not isinstance(eval_target_model, bool):
            problems.append(f"eval_target_model={eval_target_model!r} must be true or false")
        for name, value in (("hidden_multiple", hidden_multiple), ("mlp_multiple", mlp_multiple)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"{name}={value!r} must be a positive integer or null")
        if not isinstance(term_name, str) or not term_name.isidentifier():
            problems.append(f"term_name={term_name!r} must be a plain identifier such as 'sheared'")
        if problems:
            raise ValueError("Invalid ShearedPruning settings: " + "; ".join(problems) + ".")
        self.ratio = ratio
        self.target = target
        self.convention = check_convention(convention)
        self.modules = [m for m in MASK_MODULES if m in modules]
        self.lagrangian_warmup_fraction = float(lagrangian_warmup_fraction)
        self.mask_lr, self.lagrangian_lr = float(mask_lr), float(lagrangian_lr)
        self.seed = seed
        self.eval_target_model = eval_target_model
        self.hidden_multiple, self.mlp_multiple = hidden_multiple, mlp_multiple
        self.term_name = term_name
        self.plan: ShapePlan | None = None
        self.term: ShearedTerm | None = None
        self.record: dict[str, Any] | None = None
        self.materialised = False
        self._hooks: MaskHooks | None = None

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that define the pruning (compared on resume)."""
        return {
            "ratio": self.ratio,
            "target": dict(self.target),
            "convention": self.convention,
            "modules": list(self.modules),
            "lagrangian_warmup_fraction": self.lagrangian_warmup_fraction,
            "mask_lr": self.mask_lr,
            "lagrangian_lr": self.lagrangian_lr,
            "seed": self.seed,
            "eval_target_model": self.eval_target_model,
            "hidden_multiple": self.hidden_multiple,
            "mlp_multiple": self.mlp_multiple,
        }

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.term is not None or self.materialised:
            return
        _check_strategy(trainer)
        self._check_resume(getattr(pl_module, "resume_checkpoint", None))
        if getattr(pl_module, "model", None) is None:
            pl_module.configure_model()  # CausalLM builds its model here; idempotent, Lightning's call is then a no-op
        model = getattr(pl_module, "model", None)
        if model is None or not hasattr(model, "config"):
            raise ValueError(
                f"ShearedPruning needs pl_module.model to be a Hugging Face Llama-layout causal LM; "
                f"{type(pl_module).__name__}.model is {type(model).__name__}. Use litprune.modules.causal_lm.CausalLM."
            )
        layout = MaskLayout.from_config(model.config)
        try:
            self.plan = solve_shape(
                model.config,
                "width",
                ratio=self.ratio,
                target=self.target or None,
                convention=self.convention,
                hidden_multiple=self.hidden_multiple,
                mlp_multiple=self.mlp_multiple,
            )
        except ValueError as err:
            raise ValueError(f"ShearedPruning cannot reach its target from this parent: {err}") from err
        targets = target_counts(layout, self.plan.shape)
        self.term = ShearedTerm(layout, targets, tuple(self.modules), self.mask_lr, self.lagrangian_lr, self.seed)
        self.term.eval_target_counts = self.eval_target_model
        add_term = getattr(pl_module, "add_training_term", None)
        if add_term is None:
            raise ValueError(
                f"ShearedPruning registers its masks as a training term; {type(pl_module).__name__} has no "
                "add_training_term. Use litprune.modules.causal_lm.CausalLM."
            )
        add_term(self.term_name, self.term)
        self._hooks = attach_sheared_masks(model, self.term)
        shape = self.plan.shape
        rank_zero_info(
            f"litprune: Sheared-LLaMA pruning to hidden {shape.hidden_size}, MLP {shape.intermediate_size}, "
            f"{shape.num_key_value_heads} KV groups ({shape.num_attention_heads} heads), {shape.num_hidden_layers} "
            f"layers: {self.plan.achieved[self.convention]:.3f} of {self.convention} parameters pruned."
        )

    def _check_resume(self, path: str | None) -> None:
        """Refuse a resume this callback cannot continue (read from the checkpoint before its weights load)."""
        if path is None:
            return
        states = load_checkpoint(path, mmap=True).get("callbacks") or {}
        state = states.get(self.state_key)
        if state is None:
            raise ValueError(
                f"Checkpoint {path} was not written by a run with ShearedPruning (no {self.state_key} state), so it "
                "holds no masks to continue. Start a new pruning run, or drop the callback to train without it."
            )
        if state.get("materialised"):
            raise ValueError(
                f"Checkpoint {path} was written after the Sheared-LLaMA masks were materialised: the pruning phase "
                "is over and its result is the run's export. Continue pretraining with the FromPretrained init of "
                "that export."
            )

    # ------------------------------------------------------------------------------------------- training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.term is not None:
            self.term.warmup_steps = round(self.lagrangian_warmup_fraction * max(0, int(trainer.max_steps)))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if self.term is not None:
            self.term.step = int(trainer.global_step)
            self.term.noise_key = (int(trainer.global_step), batch_idx % max(1, trainer.accumulate_grad_batches))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.term is None or (batch_idx + 1) % max(1, trainer.accumulate_grad_batches):
            return
        metrics = self.term.metrics(self.term.step)
        metrics = {
            key: value for key, value in metrics.items() if "expected_ratio" not in key or self.convention in key
        }
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------------------------------ materialise
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.term is None or self.materialised:
            return
        term, plan = self.term, self.plan
        full = term.layout.full_counts()
        if self._hooks is not None:
            self._hooks.remove()
        model = pl_module.model
        parent = count_parameters(model)
        expected = term.expected_ratios()
        with torch.no_grad():
            masks = term.deterministic(target_counts=True)
        small = materialise(model, masks)
        small.config.use_cache = False
        pl_module.model = small
        after = count_parameters(small)
        self.record = {
            "method": "sheared",
            "ratio_requested": self.ratio,
            "target_requested": dict(self.target) or None,
            "convention": self.convention,
            "modules": list(self.modules),
            "head_unit": "kv_group",
            "target_shape": plan.shape.as_dict(),
            "kept": {m: {"per_row": n, "parent_per_row": full[m]} for m, n in term.targets.items()},
            "achieved_ratio": achieved_ratios(parent, after),
            "expected_ratio_at_end": expected,
            "parameters": {"before": parent.as_dict(), "after": after.as_dict()},
            "pruning_tokens": int(getattr(pl_module, "tokens_seen", 0)),
            "pruning_steps": int(trainer.global_step),
            "lagrangian_warmup_steps": int(term.warmup_steps),
            "lambdas": term.multipliers(),
            "settings": self.settings(),
        }
        terms = getattr(pl_module, "training_terms", None)
        if terms is not None and self.term_name in terms:
            del terms[self.term_name]
        if isinstance(getattr(pl_module, "init_record", None), dict):
            pl_module.init_record["sheared"] = self.record
        self.materialised = True
        rank_zero_info(f"litprune: Sheared-LLaMA masks materialised: {parent} -> {after}.")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._hooks is not None:
            self._hooks.remove()

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "settings": self.settings(),
            "target_shape": self.plan.shape.as_dict() if self.plan is not None else None,
            "materialised": self.materialised,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(ShearedPruning.__init__).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        differences = describe_differences(state_dict.get("settings") or {}, self.settings(), defaults)
        if differences:
            raise ValueError(
                f"The checkpoint was written with different ShearedPruning settings: {differences}. Resume with the "
                "same settings, or start a new pruning run."
            )
        saved_shape = state_dict.get("target_shape")
        if saved_shape is not None and self.plan is not None and saved_shape != self.plan.shape.as_dict():
            raise ValueError(
                f"The checkpoint's Sheared-LLaMA target shape {saved_shape} differs from this run's "
                f"{self.plan.shape.as_dict()} (another parent?). Resume with the original parent and settings."
            )


def _check_strategy(trainer: pl.Trainer) -> None:
    name = type(getattr(trainer, "strategy", None)).__name__
    if any(key in name for key in ("FSDP", "DeepSpeed", "ModelParallel")):
        raise ValueError(
            f"ShearedPruning supports single-device and DDP training; the strategy {name} shards parameters, which "
            "the mask hooks and materialisation do not follow. Use a single device or trainer.strategy: ddp."
        )
