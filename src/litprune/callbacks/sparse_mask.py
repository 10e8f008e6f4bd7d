"""`SparseMask`: keep pruned weights at exactly zero while a Lightning model trains, and resume safely.

Design choices (each one answers a failure users report with existing tools, docs/user-needs.md):

- Masks are explicit boolean tensors (True = keep) keyed by `pl_module.named_parameters()` names, selected by
  a regex (`targets`, see `litprune.pruning.targets`), so any `nn.Module` works and every option is plain YAML.
  No module objects, no lambdas.
- Masks act on gradients right before the optimizer update and on weights right after it, through the
  optimizer's own step hooks. Lightning clips gradients *after* its `on_before_optimizer_step` hook, and runs
  backward and clipping inside `optimizer.step(closure)`; the step pre-hook therefore wraps the closure, so
  gradients are masked when it returns, after clipping and right before the update. The step post-hook
  re-zeroes the weights before any other callback (ModelCheckpoint included) can observe them. Masking only
  the gradient is not enough: momentum or weight decay can revive a pruned weight.
- The masks live in the callback's `state_dict` as bit-packed uint8 tensors (1/8 byte per weight,
  `litprune.models.mask_packing`), with the schedule position, Wanda statistics and a fingerprint of the settings;
  a resume compares the fingerprint and verifies the restored masks against the restored weights. No `deepcopy` of
  layers, no `weight_orig`. The state format and its versions live in `litprune.training.mask_state`,
  which also reads the states older versions wrote.
- Schedules count optimizer steps, not epochs; their settings and arithmetic are a plain frozen dataclass,
  `litprune.pruning.schedules.PruningSchedule`, so this class only decides *when* to ask it.
- Under DDP every rank computes the same masks (Wanda statistics are all-reduced first) and an exact digest
  comparison across ranks turns any divergence into an error instead of silently different models
  (`litprune.callbacks.distributed`).
- Under FSDP2 (Lightning's `ModelParallelStrategy`) a parameter is a DTensor sharded on dim 0 and each rank keeps
  the mask of its own rows only (the shape of `param.to_local()`), applied to the local gradient and weight at the
  same points as above. The callback holds the sharded parameter objects, which FSDP2 keeps from step to step and
  all-gathers from before each forward; when masks change outside the optimizer step (fit start, pruning events,
  validation, restore) any gathered copy a forward left behind is dropped first (`reshard`), so the next forward
  sees the masked shards. Row-wise rules (N:M, per-row ratios) run on the local rows (whole under `Shard(0)`, checked);
  a per-tensor ratio gathers the tensor's scores for one global k-th value, so a sharded run prunes exactly what an
  unsharded one would. Sparsity is counted globally (all-reduce). The checkpoint state always holds *full* masks
  (gathered: rank 0 writes the state, for full and distributed checkpoints alike), so a resume re-slices them for
  however many ranks it runs on.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from litprune.callbacks.distributed import (
    check_mask_strategy,
    distributed_ready,
    gather_per_rank,
    masks_differing_across_ranks,
    sum_across_ranks,
    sum_counts,
)
from litprune.inits.masks import MASKS_ATTRIBUTE, module_masks
from litprune.models.sharding import (
    check_whole_rows,
    full_tensor,
    is_dtensor,
    local_slice,
    local_tensor,
    reshard_all,
)
from litprune.pruning.activation_norms import ActivationNorms
from litprune.pruning.patterns import nm_mask, unstructured_mask
from litprune.pruning.schedules import PruningSchedule, ScheduleKind
from litprune.pruning.targets import DEFAULT_TARGETS, compile_targets
from litprune.training.log_step import optimizer_stepped, training_log_step
from litprune.training.mask_state import (
    STATE_VERSION,
    describe_differences,
    own_input_norms,
    pack_masks,
    state_version,
    unpack_masks,
    upgrade_settings,
    upgrade_state,
)

MaskSource = Literal["module", "zeros", "dense"]
ScoreName = Literal["magnitude", "wanda"]
Semantics = Literal["explicit", "paper"]
ClipOn = Literal["unmasked", "masked"]


class SparseMask(Callback):
    """Keep a sparse model sparse during training: explicit masks, schedules, resume-safe state.

    Works with any LightningModule: the masked tensors are the parameters whose `named_parameters()` name
    fully matches `targets` (by default the 7 decoder linears of Llama-family models).

    Sample YAML (`trainer.callbacks` of a LightningCLI config)::

        trainer:
          callbacks:
            - class_path: litprune.callbacks.sparse_mask.SparseMask
              init_args:
                targets: '(?:.*\\.)?(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\\.weight'
                mask_source: dense       # start dense ...
                schedule: gradual        # ... and prune during training
                score: wanda
                ratio: 0.5
                start_step: 100
                end_step: 1000
                frequency: 100

    Where masks come from (`mask_source`), then optionally shrunk further by a `schedule`:

    - ``module``: the LightningModule carries `pruning_masks: dict[str, Tensor]` keyed by its parameter names
      (how litprune's pruned initialisations hand over masks computed before training).
    - ``zeros``: the mask is `weight != 0`, captured once at fit start (e.g. a pruned Hugging Face checkpoint).
    - ``dense``: nothing is pruned until the schedule's first event.

    Schedules (`litprune.pruning.schedules.PruningSchedule`): ``one_shot`` prunes once at `start_step` (default 0,
    i.e. at fit start for magnitude scores); ``gradual`` follows the cubic schedule of Zhu & Gupta from
    `initial_ratio` at `start_step` to `ratio` at `end_step`, updating every `frequency` optimizer steps. Scores
    are ``magnitude`` (`|W|`) or ``wanda`` (`|W| * ||X_j||_2` from the inputs of the training batches since the
    previous event; the statistics are all-reduced across ranks and reset after each event). Masks only ever
    shrink: a pruned weight stays pruned. N:M patterns in a gradual schedule prune `floor(r_t * M)` entries per
    group of M at each event (r_t: the schedule's ratio at that event), so only the final event (r_t = N/M) yields
    the exact N:M pattern; intermediate events are coarser N:M patterns.

    Semantics:

    - ``explicit`` (default): gradients are multiplied by the mask right before the optimizer update, and the
      weights right after it; masks are also re-applied before every validation and to the tensors of every
      checkpoint being saved, so a checkpoint is never dense. By default Lightning's gradient clipping sees the
      unmasked gradient (as in the paper); `clip_on="masked"` masks gradients before clipping instead.
    - ``paper``: the authors' trainer (MaxText `sparse_model_training`): clip on the unmasked gradient, then
      zero every gradient entry whose weight is exactly 0; weights are never re-masked (the mask is implicit,
      `weight == 0`, so logged and saved masks are `weight != 0`). Zeros stay zero because their optimizer
      state stays zero; pruning events therefore also zero the optimizer state of pruned entries.

    Lifecycle (which hook does what):

    - `setup`: resolve `targets` to parameters (error if none match), check the strategy, create Wanda buffers.
      A module that builds its layers in `configure_model` (after `setup`) is resolved at restore or fit start.
    - `on_load_checkpoint` / `load_state_dict` (resume only; after the model weights are restored): bring the
      state to the current format (`upgrade_state`), compare the settings fingerprint, unpack the masks, verify
      every masked weight is exactly zero.
    - `on_fit_start`: build masks from `mask_source` (unless restored), run a magnitude event due at this step,
      apply masks, register the optimizer step pre/post hooks and Wanda forward hooks, check ranks agree. Under
      `ModelParallelStrategy`, which restores checkpoints only after `on_fit_start`, all this waits for
      `on_train_start`.
    - `on_train_batch_start`: run a pruning event if one is due at `trainer.global_step`.
    - `on_before_optimizer_step`: with `clip_on="masked"`, mask gradients before Lightning clips them.
    - optimizer step pre-hook: Lightning runs forward, backward, `on_before_optimizer_step` and clipping
      inside `optimizer.step(closure)`, so the pre-hook wraps that closure; when it returns (after clipping,
      right before the update) gradients are masked (explicit) or zeroed where `weight == 0` (paper).
    - optimizer step post-hook: re-apply masks to weights (explicit only).
    - `on_train_batch_end`: log `sparsity/global`, `sparsity/target` and `sparsity/<param name>` to the
      trainer's loggers every `log_every_n_steps` optimizer steps, under the step Lightning gives that optimizer
      step's own metrics (`train/loss` of step k is logged at k - 1, and so is its sparsity).
    - `on_validation_start`, `on_save_checkpoint`: re-apply masks (explicit only). Lightning skips
      `on_save_checkpoint` for weights-only checkpoints; those rely on the step post-hook, which has already
      re-zeroed the weights before any checkpoint callback runs.
    - `state_dict`: packed masks, schedule position, Wanda statistics, settings fingerprint (version
      `STATE_VERSION`).
    - `teardown`: remove every hook; the final masks stay readable through `masks`.

    Supported strategies: single device, DDP (any precision) and FSDP2 through `ModelParallelStrategy` (masks of
    the local rows; `masks` is then this rank's part and `full_masks()` gathers them). Strategies that flatten
    parameters (Lightning's `FSDPStrategy`, DeepSpeed) are rejected with an error at setup.

    Args:
        targets: Regex that must fully match (`re.fullmatch`) the `pl_module.named_parameters()` names of the
            tensors to mask, as `targets` does everywhere in litprune. Default: the q/k/v/o/gate/up/down projection
            weights of Llama-family models (`litprune.pruning.targets.DEFAULT_TARGETS`).
        mask_source: Where the initial masks come from: "module" (the LightningModule's `pruning_masks`
            attribute), "zeros" (`weight != 0` at fit start) or "dense" (no mask until the schedule prunes).
        schedule: "none" (keep the initial masks), "one_shot" (prune once at `start_step`) or "gradual"
            (cubic schedule from `start_step` to `end_step`).
        ratio: Pruning ratio (pruned fraction, in [0, 1)) reached by the schedule, per tensor. For an N:M
            pattern leave it unset (it is N/M). Only used with a schedule.
        pattern: "unstructured" or an N:M pattern such as "2:4" or "4:8" (N pruned in every M inputs).
        score: "magnitude" (`|W|`) or "wanda" (`|W|` times the input-feature L2 norm from training batches).
        per_row: Comparison group for unstructured pruning: True = each output row prunes the same fraction
            (Wanda's rule), False = each whole tensor (the reference magnitude rule). Default: True for wanda,
            False for magnitude.
        initial_ratio: Pruning ratio of the first gradual event (s_0 of the cubic schedule).
        start_step: Optimizer step of the first pruning event. Wanda needs at least one step of statistics,
            so it requires start_step >= 1.
        end_step: Optimizer step of the last gradual event (required for "gradual").
        frequency: Optimizer steps between gradual events.
        semantics: "explicit" (masks on gradients and weights, the default) or "paper" (the authors' trainer:
            gradient zeroed where the weight is exactly 0, weights never re-masked).
        clip_on: Which gradient Lightning's clipping sees: "unmasked" (as in the paper) or "masked" (explicit
            semantics only).
        reset_optimizer_state: At every pruning event, zero the optimizer state (e.g. Adam moments) of pruned
            entries. Required by "paper" semantics with a schedule, where stale momentum would revive them.
        strict_restore: On resume, raise if a restored mask disagrees with the restored weights (a masked
            weight is not zero). If False, warn and re-apply the mask instead.
        log_every_n_steps: Log sparsity every this many optimizer steps (default: the Trainer's
            `log_every_n_steps`).
        log_per_parameter: Also log `sparsity/<param name>` for every masked tensor, not only the global value.
        masks_attribute: Name of the LightningModule attribute read by `mask_source="module"`.

    Raises:
        ValueError: any invalid argument; all problems are listed together.
    """

    def __init__(
        self,
        targets: str = DEFAULT_TARGETS,
        mask_source: MaskSource = "module",
        schedule: ScheduleKind = "none",
        ratio: float | None = None,
        pattern: str = "unstructured",
        score: ScoreName = "magnitude",
        per_row: bool | None = None,
        initial_ratio: float = 0.0,
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 100,
        semantics: Semantics = "explicit",
        clip_on: ClipOn = "unmasked",
        reset_optimizer_state: bool = True,
        strict_restore: bool = True,
        log_every_n_steps: int | None = None,
        log_per_parameter: bool = True,
        masks_attribute: str = MASKS_ATTRIBUTE,
    ) -> None:
        problems: list[str] = []

        def choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                problems.append(f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")

        def flag(name: str, value: Any) -> None:
            if not isinstance(value, bool):
                problems.append(f"{name}={value!r} must be true or false")

        try:
            self._regex = compile_targets(targets)
        except ValueError as err:
            problems.append(str(err).rstrip("."))
        choice("mask_source", mask_source, ("module", "zeros", "dense"))
        choice("score", score, ("magnitude", "wanda"))
        choice("semantics", semantics, ("explicit", "paper"))
        choice("clip_on", clip_on, ("unmasked", "masked"))
        if per_row is not None:
            flag("per_row", per_row)
        flag("reset_optimizer_state", reset_optimizer_state)
        flag("strict_restore", strict_restore)
        flag("log_per_parameter", log_per_parameter)
        if log_every_n_steps is not None and (
            not isinstance(log_every_n_steps, int) or isinstance(log_every_n_steps, bool) or log_every_n_steps < 1
        ):
            problems.append(f"log_every_n_steps={log_every_n_steps!r} must be an integer >= 1")
        if not isinstance(masks_attribute, str) or not masks_attribute.isidentifier():
            problems.append(f"masks_attribute={masks_attribute!r} must be a Python attribute name")
        problems += PruningSchedule.problems(schedule, ratio, initial_ratio, start_step, end_step, frequency, pattern)

        if not problems:
            if schedule == "none":
                if mask_source == "dense":
                    problems.append(
                        "mask_source='dense' with schedule='none' would never prune anything; use "
                        "mask_source='module' or 'zeros', or set schedule='one_shot' or 'gradual'"
                    )
                if score != "magnitude":
                    problems.append(f"score={score!r} is only used by a schedule, but schedule='none'")
            elif score == "wanda" and start_step < 1:
                problems.append(
                    f"score='wanda' gathers input norms from training batches, so the first event needs "
                    f"start_step >= 1, got start_step={start_step}"
                )
            if semantics == "paper" and clip_on == "masked":
                problems.append(
                    "clip_on='masked' contradicts semantics='paper', which clips the unmasked gradient; "
                    "use semantics='explicit' or clip_on='unmasked'"
                )
            if semantics == "paper" and schedule != "none" and not reset_optimizer_state:
                problems.append(
                    "semantics='paper' with a schedule needs reset_optimizer_state=true: without re-masking, "
                    "stale optimizer moments would move freshly pruned weights away from zero"
                )
        if problems:
            raise ValueError("Invalid SparseMask arguments: " + "; ".join(problems) + ".")

        #: When to prune and how much (checked above; read-only views below give the constructor's names).
        self.pruning_schedule = PruningSchedule(
            schedule, ratio, initial_ratio, start_step, end_step, frequency, pattern
        )
        self.targets = targets
        self.mask_source = mask_source
        self.score = score
        self.per_row = (score == "wanda") if per_row is None else per_row
        self.semantics = semantics
        self.clip_on = clip_on
        self.reset_optimizer_state = reset_optimizer_state
        self.strict_restore = strict_restore
        self.log_every_n_steps = log_every_n_steps
        self.log_per_parameter = log_per_parameter
        self.masks_attribute = masks_attribute

        self._pl_module: pl.LightningModule | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._masks: dict[str, Tensor] = {}
        self._norms: ActivationNorms | None = None
        self._optimizer_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._hooked_optimizers: list[int] = []
        self._masked_before_clip: set[int] = set()
        self._last_event_step = -1
        self._current_ratio = 0.0
        self._restored = False
        self._pending_state: dict | None = None
        self._unbound_module: pl.LightningModule | None = None
        self._last_logged_step = -1
        self._warned_missing_in_checkpoint = False
        self._sharded = False
        self._world_size = 1
        self._start_pending = False
        self._full_cache: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None
        #: Seconds spent inside this callback's hooks, by hook, since construction (perf_counter; on GPUs
        #: this is host time, kernels run asynchronously).
        self.hook_time_s: dict[str, float] = {}

    # ------------------------------------------------------------------ public views

    @property
    def schedule(self) -> str:
        """The schedule's name: "none", "one_shot" or "gradual"."""
        return self.pruning_schedule.kind

    @property
    def ratio(self) -> float | None:
        """Pruning ratio the schedule reaches (N/M for an N:M pattern); None without a schedule."""
        return self.pruning_schedule.ratio

    @property
    def initial_ratio(self) -> float:
        """Pruning ratio of the first gradual event."""
        return self.pruning_schedule.initial_ratio

    @property
    def pattern(self) -> str:
        """ "unstructured" or "N:M"."""
        return self.pruning_schedule.pattern

    @property
    def start_step(self) -> int:
        """Optimizer step of the first pruning event."""
        return self.pruning_schedule.start_step

    @property
    def end_step(self) -> int | None:
        """Optimizer step of the last gradual event."""
        return self.pruning_schedule.end_step

    @property
    def frequency(self) -> int:
        """Optimizer steps between gradual events."""
        return self.pruning_schedule.frequency

    @property
    @override
    def state_key(self) -> str:
        # Only the targets identify an instance; every other setting is compared on resume, so a changed
        # setting gives a clear error instead of a silently ignored state.
        return self._generate_state_key(targets=self.targets)

    def settings(self) -> dict[str, Any]:
        """The settings that must match on resume (logging, restore strictness and `masks_attribute`, which only
        matters for a fresh start, may change freely)."""
        return {
            "targets": self.targets,
            "mask_source": self.mask_source,
            "schedule": self.schedule,
            "ratio": self.ratio,
            "pattern": self.pattern,
            "score": self.score,
            "per_row": self.per_row,
            "initial_ratio": self.initial_ratio,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "semantics": self.semantics,
            "clip_on": self.clip_on,
            "reset_optimizer_state": self.reset_optimizer_state,
        }

    @property
    def masks(self) -> dict[str, Tensor]:
        """Current keep-masks (True = keep) by parameter name; in paper semantics, `weight != 0`.

        Under FSDP2 each is this rank's part (the rows of `param.to_local()`); `full_masks()` gathers them.
        """
        if self.semantics == "paper":
            return {name: _local(p).detach() != 0 for name, p in self._params.items() if name in self._masks}
        return dict(self._masks)

    def full_masks(self) -> dict[str, Tensor]:
        """The whole keep-mask of every target (the same as `masks` unless parameters are sharded).

        Under FSDP2 this gathers every rank's rows: every rank must call it. The result is kept until the masks
        change, so a checkpoint save gathers once.
        """
        if not self._sharded:
            return self.masks
        current = self._masks
        if self.semantics == "explicit" and self._full_cache is not None and self._full_cache[0] is current:
            return dict(self._full_cache[1])
        full = {name: full_tensor(mask, self._params[name]) for name, mask in self.masks.items()}
        self._full_cache = (current, full)
        return dict(full)

    @property
    def current_ratio(self) -> float:
        """Target pruning ratio of the latest schedule event (0.0 before the first one)."""
        return self._current_ratio

    @property
    def last_event_step(self) -> int | None:
        """Optimizer step of the latest pruning event, or None."""
        return None if self._last_event_step < 0 else self._last_event_step

    def sparsity_report(self) -> dict[str, float]:
        """`sparsity/global`, `sparsity/target` and `sparsity/<param name>` (pruned fraction of each tensor).

        The global value is total pruned entries over total entries of all masked tensors, so tensors that share
        a module are each counted once with their own size. `sparsity/target` is the schedule's `current_ratio`.
        Under FSDP2 the counts of every rank's rows are summed (an all-reduce: every rank must call it).
        """
        masks = self.masks
        counts = torch.tensor(
            [[mask.numel() - int(mask.count_nonzero()), mask.numel()] for mask in masks.values()], dtype=torch.int64
        ).reshape(len(masks), 2)
        if self._sharded and masks:
            device = next(iter(masks.values())).device
            counts = sum_counts(counts.to(device), self._world_size).cpu()
        report: dict[str, float] = {}
        pruned_total = 0
        numel_total = 0
        for name, (pruned, numel) in zip(masks, counts.tolist(), strict=True):
            pruned_total += pruned
            numel_total += numel
            if self.log_per_parameter:
                report[f"sparsity/{name}"] = pruned / numel if numel else 0.0
        report["sparsity/global"] = pruned_total / numel_total if numel_total else 0.0
        if self.schedule != "none":
            report["sparsity/target"] = self._current_ratio
        return report

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        with self._timed("setup"):
            check_mask_strategy(trainer.strategy, type(self).__name__)
            self._pl_module = None
            self._params = {}
            self._masks = {}
            self._last_event_step = -1
            self._current_ratio = 0.0
            self._restored = False
            self._last_logged_step = -1
            self._norms = None
            self._sharded = False
            self._start_pending = False
            self._world_size = trainer.world_size
            self._full_cache = None
            self._unbound_module = pl_module
            # A module that builds its layers in `configure_model` (Lightning calls it after `setup`, as litprune's
            # CausalLM does) has no parameters yet: the targets are then resolved once it has, when a checkpoint's
            # state is loaded or at fit start.
            if next(iter(pl_module.parameters()), None) is not None:
                self._bind(pl_module)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        prefix = f"{type(self).__qualname__}{{"
        claimed = {cb.state_key for cb in trainer.callbacks if isinstance(cb, SparseMask)}
        orphans = [key for key in states if isinstance(key, str) and key.startswith(prefix) and key not in claimed]
        if not orphans:
            return
        details = []
        for key in orphans:
            state = states[key] if isinstance(states[key], dict) else {}
            saved = upgrade_settings(state.get("settings") or {}, state_version(state))
            details.append(self._describe_differences(saved) or f"state key {key}")
        raise ValueError(
            "The checkpoint was written with SparseMask settings that differ from the current ones: "
            + " | ".join(details)
            + ". Resume with the same settings, or start a new run from the weights only."
        )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return  # `state_dict` writes nothing before the masks exist: nothing to restore
        if self._pl_module is None and self._unbound_module is not None:
            self._bind(self._unbound_module)  # restoring runs after `configure_model`: the parameters exist now
        if self._pl_module is None:
            # Called before setup (e.g. by hand): apply once the targets are known.
            self._pending_state = state_dict
            return
        self._restore(state_dict)

    @override
    def state_dict(self) -> dict[str, Any]:
        # Lightning asks every rank for its callback states when a checkpoint is saved, so the collectives below
        # (sharded masks, per-rank Wanda statistics) run on all ranks; rank 0's copy is written.
        if not self._masks:
            return {}
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "settings": self.settings(),
            "masks": pack_masks(self.full_masks()),
            "last_event_step": int(self._last_event_step),
            "current_ratio": float(self._current_ratio),
        }
        if self._norms is not None:
            state["input_norms"] = self._norms.state_dict()
            if distributed_ready(self._world_size):
                # Each rank gathers its own statistics until the next event; keep all of them, not only rank 0's.
                sum_sq = self._norms.sum_sq.detach()
                rows = torch.tensor([float(self._norms.num_rows)], dtype=torch.float64, device=sum_sq.device)
                state["input_norms_by_rank"] = {
                    "sum_sq": gather_per_rank(sum_sq, self._world_size).cpu(),
                    "num_rows": [int(n) for n in gather_per_rank(rows, self._world_size).flatten().tolist()],
                }
        return state

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with self._timed("on_fit_start"):
            if self._pl_module is None and self._unbound_module is not None:
                self._bind(self._unbound_module)
            if not self._params:
                raise RuntimeError("SparseMask.on_fit_start ran before setup; attach the callback to the Trainer.")
            if trainer.strategy.restore_checkpoint_after_setup:
                # ModelParallelStrategy (FSDP2) restores a checkpoint, this callback's state included, only after
                # `on_fit_start`: start once it has, at `on_train_start`.
                self._start_pending = True
                return
            self._start(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start_pending:
            with self._timed("on_train_start"):
                self._start_pending = False
                self._start(trainer, pl_module)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Masks from the restored state or from `mask_source` (+ a magnitude event due now), hooks, rank check."""
        source_masks = None
        if self._restored:
            self._masks = {name: mask.to(_local(self._params[name]).device) for name, mask in self._masks.items()}
        else:
            source_masks = self._initial_masks(pl_module)
            self._masks = self._local_masks(source_masks)
            self._apply_to_weights(self._masks)
            if self.score == "magnitude":
                self._maybe_prune(trainer)
        self._register_optimizer_hooks(trainer)
        if self._norms is not None:
            self._norms.attach()
        self._check_ranks_agree(trainer, source_masks)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        with self._timed("on_train_batch_start"):
            if [id(optimizer) for optimizer in trainer.optimizers] != self._hooked_optimizers:
                # Optimizers re-created during fit (e.g. by another callback) need the step hooks again.
                self._register_optimizer_hooks(trainer)
            self._maybe_prune(trainer)
            if self._norms is not None:
                # Gather statistics only while an event is still ahead.
                self._norms.active = self._last_event_step < self.pruning_schedule.final_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        with self._timed("on_train_batch_end"):
            if self._norms is not None:
                self._norms.active = False
            every = self.log_every_n_steps or trainer.log_every_n_steps
            step = trainer.global_step  # optimizer steps done, this batch's included
            if not trainer.loggers or not optimizer_stepped(trainer):
                return
            if step != self._last_logged_step and step % every == 0:
                self._last_logged_step = step
                metrics = self.sparsity_report()
                # Lightning's label for this step's own metrics (train/loss ...), so both land on one logged step.
                log_step = training_log_step(trainer)
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=log_step)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.clip_on != "masked":
            return
        with self._timed("on_before_optimizer_step"):
            self._mask_gradients(self._names_in(optimizer))
            self._masked_before_clip.add(id(optimizer))

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.semantics == "explicit" and self._masks:
            with self._timed("on_validation_start"):
                self._apply_to_weights(self._masks)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.semantics != "explicit" or not self._masks:
            return
        with self._timed("on_save_checkpoint"):
            tensors = checkpoint.get("state_dict", {})
            missing = [name for name in self._masks if name not in tensors]
            if missing and not self._warned_missing_in_checkpoint:
                self._warned_missing_in_checkpoint = True
                rank_zero_warn(
                    f"SparseMask could not find {len(missing)} masked tensors (e.g. {missing[0]!r}) in the "
                    "checkpoint's state_dict; they are saved as the strategy produced them."
                )
            # A full checkpoint under FSDP2 holds whole tensors on rank 0 (gathered; every rank gathers the masks,
            # kept from `state_dict` just before); a distributed one holds each rank's DTensor shard.
            full = self.full_masks() if self._sharded else self._masks
            with torch.no_grad():
                for name, mask in self._masks.items():
                    tensor = tensors.get(name)
                    if is_dtensor(tensor):
                        tensor, whole = tensor.to_local(), mask
                    else:
                        whole = full[name]
                    if isinstance(tensor, Tensor) and tensor.shape == whole.shape:
                        # Usually the live weight's storage, already masked: this is the guarantee, not a copy.
                        tensor.mul_(whole.to(tensor.device))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for handle in self._optimizer_handles:
            handle.remove()
        self._optimizer_handles.clear()
        self._hooked_optimizers = []
        self._masked_before_clip.clear()
        if self._norms is not None:
            self._norms.detach()
            self._norms.active = False

    # ------------------------------------------------------------------ binding to the module

    def _bind(self, pl_module: pl.LightningModule) -> None:
        """Resolve the targets on the built module, create Wanda buffers and apply a state loaded earlier."""
        with self._timed("setup"):
            self._unbound_module = None
            self._pl_module = pl_module
            reshard_all(pl_module)  # FSDP2: bind the sharded parameters, never a gathered copy
            self._params = self._resolve_targets(pl_module)
            self._sharded = any(is_dtensor(p) for p in self._params.values())
            if self._sharded:
                for name, param in self._params.items():
                    check_whole_rows(name, param)
            if self.score == "wanda" and self.schedule != "none":
                modules = {}
                for name in self._params:
                    module_name, _, attr = name.rpartition(".")
                    module = pl_module.get_submodule(module_name)
                    if attr != "weight" or not isinstance(module, nn.Linear):
                        raise ValueError(
                            f"score='wanda' needs every target to be the weight of an nn.Linear, but {name!r} is "
                            f"{attr!r} of {type(module).__name__}. Narrow `targets` or use score='magnitude'."
                        )
                    modules[name] = module
                self._norms = ActivationNorms(modules)
            if self._pending_state is not None:
                state, self._pending_state = self._pending_state, None
                self._restore(state)

    def _resolve_targets(self, pl_module: nn.Module) -> dict[str, nn.Parameter]:
        params = {name: p for name, p in pl_module.named_parameters() if self._regex.fullmatch(name)}
        if not params:
            examples = [name for name, _ in pl_module.named_parameters()][:6]
            raise ValueError(
                f"targets={self.targets!r} matches none of the {type(pl_module).__name__}'s parameters (full-name "
                f"match), e.g. {examples}. Pass a regex such as '.*\\.weight' that fully matches the names to mask."
            )
        if self.pruning_schedule.sparsity_pattern.is_nm or self.schedule != "none":
            for name, p in params.items():
                if p.dim() < 2:
                    raise ValueError(
                        f"Parameter {name!r} has shape {list(p.shape)}; pruning schedules need tensors with at "
                        "least 2 dimensions ([out, in, ...]). Exclude it from `targets`."
                    )
        return params

    def _initial_masks(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """The starting masks: whole ones for `mask_source='module'` (as the module hands them over), local ones
        (this rank's rows) for 'dense' and 'zeros'. `_local_masks` brings either to the local rows."""
        if self.mask_source == "dense":
            return {name: torch.ones_like(_local(p), dtype=torch.bool) for name, p in self._params.items()}
        if self.mask_source == "zeros":
            return {name: _local(p).detach() != 0 for name, p in self._params.items()}
        given = module_masks(pl_module, self.masks_attribute)
        if not isinstance(given, dict):
            raise ValueError(
                f"mask_source='module' reads `{self.masks_attribute}` (dict of parameter name -> bool mask) from "
                f"the LightningModule, but {type(pl_module).__name__} has "
                f"{'none' if given is None else type(given).__name__}. Set it before fit, use "
                "mask_source='zeros' to capture weight != 0, or mask_source='dense' with a schedule."
            )
        unknown = sorted(set(given) - set(self._params))
        missing = sorted(set(self._params) - set(given))
        if unknown or missing:
            raise ValueError(
                f"`{self.masks_attribute}` does not match targets={self.targets!r}: "
                + (f"masks for untargeted or unknown parameters {unknown[:5]}; " if unknown else "")
                + (f"no mask for targeted parameters {missing[:5]}; " if missing else "")
                + "make the mask keys the full pl_module parameter names and adjust `targets` to the same set."
            )
        masks = {}
        for name, p in self._params.items():
            mask = given[name]
            if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(p.shape):
                shape = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"Mask for {name!r} has shape {shape}, but the parameter has {list(p.shape)}.")
            if mask.dtype != torch.bool:
                if not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError(f"Mask for {name!r} has dtype {mask.dtype} with values other than 0/1.")
                mask = mask != 0
            masks[name] = mask.to(_local(p).device)
        return masks

    def _local_masks(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each mask cut to this rank's rows of its parameter (unchanged when it already has the local shape)."""
        local = {}
        for name, mask in masks.items():
            param = self._params[name]
            if is_dtensor(param) and tuple(mask.shape) == tuple(param.shape):
                mask = local_slice(mask, param).contiguous()
            local[name] = mask
        return local

    # ------------------------------------------------------------------ optimizer step hooks

    def _names_in(self, optimizer: torch.optim.Optimizer) -> list[str]:
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [name for name, p in self._params.items() if id(p) in owned]

    def _register_optimizer_hooks(self, trainer: pl.Trainer) -> None:
        for handle in self._optimizer_handles:
            handle.remove()
        self._optimizer_handles.clear()
        self._hooked_optimizers = [id(optimizer) for optimizer in trainer.optimizers]
        for optimizer in trainer.optimizers:
            names = self._names_in(optimizer)
            if not names:
                continue
            self._optimizer_handles.append(optimizer.register_step_pre_hook(partial(self._pre_step, names)))
            if self.semantics == "explicit":
                self._optimizer_handles.append(optimizer.register_step_post_hook(partial(self._post_step, names)))

    def _pre_step(
        self, names: list[str], optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict] | None:
        # Lightning runs forward, backward, on_before_optimizer_step and gradient clipping inside
        # `optimizer.step(closure)`, so at this point the gradients do not exist yet: wrap the closure so the
        # gradients are masked when it returns, i.e. after clipping and right before the update. Without a
        # closure (manual optimization, the 16-bit GradScaler path) the gradients are already final.
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._after_clipping(names, optimizer)
            return None

        def masked_closure() -> Any:
            result = closure()
            self._after_clipping(names, optimizer)
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": masked_closure}
        return (args[0], masked_closure, *args[2:]), kwargs

    def _after_clipping(self, names: list[str], optimizer: torch.optim.Optimizer) -> None:
        with self._timed("mask_gradients"):
            if id(optimizer) in self._masked_before_clip:
                self._masked_before_clip.discard(id(optimizer))
                if self.semantics == "explicit":
                    return
            self._mask_gradients(names)

    def _post_step(self, names: list[str], optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        with self._timed("optimizer_post_step"), torch.no_grad():
            for name in names:
                _local(self._params[name]).mul_(self._masks[name])

    def _mask_gradients(self, names: list[str]) -> None:
        with torch.no_grad():
            for name in names:
                param = self._params[name]
                if param.grad is None:
                    continue
                grad = _local(param.grad)  # this rank's rows under FSDP2 (a view: the DTensor gradient changes)
                if self.semantics == "paper":
                    grad.mul_(_local(param) != 0)
                else:
                    grad.mul_(self._masks[name])

    # ------------------------------------------------------------------ pruning events

    def _maybe_prune(self, trainer: pl.Trainer) -> None:
        due = self.pruning_schedule.last_event(trainer.global_step)
        if due is None or due <= self._last_event_step:
            return
        with self._timed("pruning_event"):
            self._prune(trainer, due)

    def _prune(self, trainer: pl.Trainer, step: int) -> None:
        target = self.pruning_schedule.ratio_at(step)
        norms_sum_sq = None
        if self._norms is not None:
            norms_sum_sq = sum_across_ranks(trainer.strategy, self._norms.sum_sq)
            rows = sum_across_ranks(
                trainer.strategy, torch.tensor(float(self._norms.num_rows), device=norms_sum_sq.device)
            )
            if float(rows) == 0:
                raise RuntimeError(
                    f"SparseMask has no Wanda input statistics for the pruning event at step {step}: no training "
                    "batch ran through the targeted layers since the previous event. Check that the targets are "
                    "used in the forward pass."
                )
        current = self.masks
        new_masks = {}
        with torch.no_grad():
            for name, param in self._params.items():
                keep = current[name]
                scores = _local(param).detach().abs().float()  # [rows of this rank, in]
                if norms_sum_sq is not None:
                    scores = scores * self._norms.norm(name, norms_sum_sq).to(scores.device)
                # Already pruned entries rank first, so masks only ever shrink.
                scores = scores.masked_fill(~keep, float("-inf"))
                if self._needs_whole_tensor and is_dtensor(param):
                    # One k-th value for the whole tensor: rank its gathered scores as an unsharded run would.
                    selected = local_slice(self._select(full_tensor(scores, param), step), param)
                else:
                    selected = self._select(scores, step)  # row-wise: the local rows are whole rows
                new_masks[name] = selected & keep
        self._masks = new_masks
        self._apply_to_weights(new_masks)
        if self.reset_optimizer_state:
            self._reset_optimizer_state(trainer, new_masks)
        if self._norms is not None:
            self._norms.reset()
        self._last_event_step = step
        self._current_ratio = float(target)
        self._check_ranks_agree(trainer)

    def _select(self, scores: Tensor, step: int) -> Tensor:
        """Keep-mask of the event at `step` for one tensor's scores (lowest scores pruned)."""
        flat = scores.reshape(scores.shape[0], -1)  # [out, in * ...]
        pattern = self.pruning_schedule.sparsity_pattern
        if pattern.is_nm:
            n = self.pruning_schedule.nm_prune_count(step)
            keep = torch.ones_like(flat, dtype=torch.bool) if n == 0 else nm_mask(flat, n, pattern.m)
        else:
            keep = unstructured_mask(flat, self.pruning_schedule.ratio_at(step), per_row=self.per_row)
        return keep.reshape(scores.shape)

    @property
    def _needs_whole_tensor(self) -> bool:
        """Whether a pruning event ranks a whole tensor at once (unstructured, per_row false)."""
        return not self.pruning_schedule.sparsity_pattern.is_nm and not self.per_row

    def _apply_to_weights(self, masks: dict[str, Tensor]) -> None:
        if self._sharded and self._pl_module is not None:
            # A gathered copy left by an earlier forward would hide the change from the next forward: drop it.
            reshard_all(self._pl_module)
        with torch.no_grad():
            for name, mask in masks.items():
                _local(self._params[name]).mul_(mask)

    def _reset_optimizer_state(self, trainer: pl.Trainer, masks: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for optimizer in trainer.optimizers:
                for name, mask in masks.items():
                    state = optimizer.state.get(self._params[name])
                    if not state:
                        continue
                    for value in state.values():
                        value = _local(value) if isinstance(value, Tensor) else value
                        if isinstance(value, Tensor) and value.shape == mask.shape:
                            value.mul_(mask.to(value.device))

    def _check_ranks_agree(self, trainer: pl.Trainer, source: dict[str, Tensor] | None = None) -> None:
        """Raise unless every rank holds the same masks (DDP), or started from the same whole masks (FSDP2,
        `source`: each rank then keeps other rows, computed from gathered or all-reduced numbers)."""
        if self._sharded:
            whole = {
                name: mask
                for name, mask in (source or {}).items()
                if tuple(mask.shape) == tuple(self._params[name].shape)
            }
            differ = masks_differing_across_ranks(whole, trainer.world_size) if whole else []
        else:
            differ = masks_differing_across_ranks(self.masks, trainer.world_size)
        if differ:
            raise RuntimeError(
                f"SparseMask masks differ across the {trainer.world_size} ranks for {len(differ)} tensors "
                f"(e.g. {differ[0]!r}). With mask_source='module', compute `{self.masks_attribute}` identically on "
                "every rank (same seed and data) or load it from a file."
            )

    # ------------------------------------------------------------------ resume

    def _describe_differences(self, saved: Mapping[str, Any]) -> str:
        # A setting an older checkpoint does not record counts as this class's default for it.
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(SparseMask.__init__).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        return describe_differences(saved, self.settings(), defaults)

    def _restore(self, state: Mapping[str, Any]) -> None:
        state = upgrade_state(state)
        differences = self._describe_differences(state["settings"])
        if differences:
            raise ValueError(
                f"The checkpoint was written with different SparseMask settings: {differences}. Resume with the "
                "same settings, or start a new run from the weights only."
            )
        # The state holds whole masks (gathered when saved under FSDP2): keep this rank's rows, whatever the number
        # of ranks that saved them.
        masks = self._local_masks(unpack_masks(state["masks"], self._params, self.targets))
        masks = {name: mask.to(_local(self._params[name]).device) for name, mask in masks.items()}
        bad = []
        for name, mask in masks.items():
            stray = int((_local(self._params[name]).detach().ne(0) & ~mask).sum())
            if stray:
                bad.append(f"{name} ({stray} masked entries are non-zero)")
        if bad:
            message = (
                "Restored SparseMask masks disagree with the restored weights: "
                + ", ".join(bad[:5])
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                + ". The weights were not saved by this run's SparseMask (or were changed after saving)."
            )
            if self.strict_restore:
                raise ValueError(message + " Set strict_restore=false to re-apply the masks instead.")
            rank_zero_warn(message + " Re-applying the masks (strict_restore=false).")
            self._apply_to_weights(masks)
        self._masks = masks
        self._last_event_step = int(state["last_event_step"])
        saved_ratio = state["current_ratio"]
        self._current_ratio = float(
            self.pruning_schedule.ratio_at(self._last_event_step) if saved_ratio is None else saved_ratio
        )
        if self._norms is not None and state["input_norms"] is not None:
            rank = torch.distributed.get_rank() if distributed_ready(self._world_size) else 0
            self._norms.load_state_dict(own_input_norms(state, rank, self._world_size))
        self._restored = True

    # ------------------------------------------------------------------ misc

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.hook_time_s[key] = self.hook_time_s.get(key, 0.0) + time.perf_counter() - start


def _local(tensor: Tensor) -> Tensor:
    """This rank's part of a (possibly FSDP2-sharded) parameter, gradient or optimizer state: a view."""
    return local_tensor(tensor)
