"""Structured pruned initialisations (`P_M-R_N`) and their matching scratch baselines (`S_N`) for `litprune fit`.

A pruned arm and its scratch twin name the same parent and the same target, so they train the same module tree
with the same data and recipe; only the first weights differ:

```yaml
# P_M-R_N: prune the parent by depth at ratio 0.5, then retrain
init:
  class_path: litprune.inits.StructuredPrune
  init_args:
    parent: runs/tiny_scratch/export
    method: minitron_depth          # or shortgpt, minitron_width, flap, wanda_sp
    ratio: 0.5
    calibration: {slice: train, nsamples: 64, seqlen: 128}
    # Minitron-depth window score: perplexity on the calibration windows (default), or a downstream task run
    # by lm-eval: `scorer: task:winogrande` with `scorer_fewshot: 5` (the reference), `task:litprune_next_line`
    # offline; `scorer_limit: n` scores the first n examples only.
# S_N: the architecture that pruning produces, from random init
init:
  class_path: litprune.inits.ScratchTarget
  init_args: {parent: runs/tiny_scratch/export, method: depth, ratio: 0.5, seed: 0}
```

Both read their architecture from the parent, so the model's `preset` is ignored (set `preset: null`). Checks
against the parent (model family, a target shape that exists, calibration window length) run when the strategy is
constructed if the parent is already on disk, and again when the run builds the model, before any calibration
pass. The run's tokenizer must be the parent's: a different vocabulary size, or a different tokenizer where the
parent records one (its exported tokenizer files or `litprune.json`), is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from litprune.eval.task_scorer import check_task_scorer, is_task_scorer, make_task_scorer
from litprune.inits.base import InitResult, InitStrategy
from litprune.inits.calibration import Calibration
from litprune.inits.parent import (
    check_run_data,
    local_config_path,
    parent_record,
    read_parent_config,
    run_tokenizer,
)
from litprune.models.loading import load_causal_lm
from litprune.pruning.flap import check_flap_parent
from litprune.pruning.scorers import check_scorer
from litprune.pruning.shapes import (
    TARGET_KEYS,
    ShapePlan,
    check_convention,
    check_ratio_open,
    check_supported_config,
    solve_shape,
)
from litprune.pruning.structured import STRUCTURED_METHODS, check_flap_arguments, pop_keep_masks, prune_structured
from litprune.utils.suggest import did_you_mean

# The names StructuredPrune gives the task scorer's few-shot count and example limit (used in messages).
SCORER_OPTIONS = ("scorer_fewshot", "scorer_limit")

# Method name -> kind of target shape, for every method whose shape a scratch twin can build: the one-shot
# structured methods, plus Sheared-LLaMA (pruned during training, so not a `StructuredPrune` method) whose
# target is a width shape.
TARGET_KINDS: dict[str, str] = {**STRUCTURED_METHODS, "sheared": "width"}


class TargetShapeInit(InitStrategy):
    """An init whose architecture is a target shape solved from the parent's config: the common part of
    `StructuredPrune` (the pruned arm) and `ScratchTarget` (its scratch twin), so both solve the same shape.

    Subclasses validate their arguments, then call `adopt_target`; they may add checks of the parent's config in
    `check_parent_config`.
    """

    parent: str
    method: str
    ratio: float | None
    target: dict[str, int] | None
    convention: str

    def adopt_target(
        self, parent: str, method: str, ratio: float | None, target: dict[str, int] | None, convention: str
    ) -> None:
        """Store the (already validated) target arguments and, when the parent is on disk, solve the shape now."""
        self.parent = str(parent)
        self.method = method
        self.ratio = None if ratio is None else float(ratio)
        self.target = dict(target) if target else None
        self.convention = convention
        if local_config_path(self.parent) is not None:
            self.plan()

    @property
    def needs_architecture(self) -> bool:
        return False

    @property
    def kind(self) -> str:
        """The kind of target shape: "depth", "width" or "attention_mlp"."""
        return TARGET_KINDS.get(self.method, self.method)

    @property
    def solves_shape(self) -> bool:
        """Whether the result has one shape solved up front (False for FLAP's adaptive search)."""
        return True

    def check_parent_config(self, config: PretrainedConfig) -> None:
        """Further checks of the parent's config before the shape is solved (none by default)."""

    def plan(self) -> ShapePlan | None:
        """Solve the target shape from the parent's config alone (no weights are read); None when the method
        chooses per-layer widths itself (`solves_shape` is False), after the same checks of the parent.

        Raises:
            FileNotFoundError: no checkpoint at `parent`.
            ValueError: the parent is not a Llama-layout model, the target cannot be reached, or a check of
                `check_parent_config` fails.
        """
        config = read_parent_config(self.parent)
        self.check_parent_config(config)
        if not self.solves_shape:
            check_supported_config(config)
            return None
        return solve_shape(config, self.kind, ratio=self.ratio, target=self.target, convention=self.convention)


class StructuredPrune(TargetShapeInit):
    """Prune a dense parent by depth or width and start the run from the result (a `P_M-R_N` arm).

    `build` loads the parent, draws calibration windows from the run's own data (`calibration.slice`), prunes
    with `litprune.pruning.structured.prune_structured` and hands over an ordinary model of the parent's class.
    A `task:` scorer name is resolved here into lm-eval's scorer (`litprune.eval.task_scorer.make_task_scorer`,
    with the run's tokenizer), which the pure pruning function receives as a callable.
    The run record (`export/litprune.json`, `results.json`) then holds the pruning record (method, requested and
    achieved ratio under both conventions, kept layers or sizes, scores), the parent's path and its own run
    record if it is a litprune export, and the calibration provenance; the calibration tokens enter the run's
    token ledger as `init_tokens.calibration`.

    FLAP with its options (the defaults shown; the scratch twin is `ScratchTarget` with `method: flap`):

    ```yaml
    init:
      class_path: litprune.inits.StructuredPrune
      init_args:
        parent: runs/tiny_scratch/export
        method: flap                     # or wanda_sp (no options: uniform, sequential, no bias)
        ratio: 0.5                       # or target: {num_key_value_heads: 5, intermediate_size: 6528}
        calibration: {slice: train, nsamples: 128, seqlen: 128, seed: 0}
        flap:
          metric: WIFV                   # IFV, WIFV or WIFN
          structure: uniform             # adaptive: the reference's global AL-AM, needs output: masked
          attn_unit_weight: ref          # adaptive only: ref (4 head_dim / 3) or exact ((2G + 2) head_dim / 3)
          parity: false                  # true: the reference's quirks (variance alias, int weight, off-by-one)
          compensate: all                # attention: o_proj bias only; none: no bias
          output: sliced                 # masked: the parent's shape with removed units zeroed
    ```

    Args:
        parent: the dense parent: a Hugging Face checkpoint directory or a litprune export (`<run dir>/export`),
            loaded in fp32 with `litprune.models.loading.load_causal_lm`.
        method: "minitron_depth" (drop the contiguous block whose removal changes the score least), "shortgpt"
            (drop the layers of lowest Block Influence), "minitron_width" (keep the most important hidden
            channels and MLP neurons), "flap" (remove whole KV groups and MLP neurons by fluctuation, with bias
            compensation; options in `flap`) or "wanda_sp" (the same units by `|W| * ||x||`, sequential, no bias).
        ratio: pruned fraction of parameters under `convention`, in (0, 1); the paper uses 0.5 to 0.8. With
            `flap: {structure: adaptive}` it is FLAP's `p`, the fraction of weighted attention and MLP units.
        target: explicit shape instead of (or, for width, together with) `ratio`: `{num_hidden_layers: k}` for
            depth; `hidden_size` and/or `intermediate_size` (optionally `num_key_value_heads`) for width;
            `num_key_value_heads` (or `num_attention_heads`) and/or `intermediate_size` for flap and wanda_sp,
            e.g. `{num_key_value_heads: 5, intermediate_size: 6528}`.
        convention: "non_embedding" (default, as in the paper) or "total": the parameter count `ratio` refers to.
        calibration: which tokens to calibrate on (default `Calibration()`: 128 windows of 256 tokens of the
            `train` slice, seed 0).
        scorer: Minitron-depth window score: "perplexity" on the calibration windows (default), or a downstream
            task "task:<lm-eval task>[:<metric>]" run by lm-eval on every candidate with the run's tokenizer,
            e.g. "task:winogrande" (the reference's downstream criterion; needs the hub) or
            "task:litprune_next_line" (generated offline from the embedded corpus's held-out split). With a
            task scorer no calibration windows are drawn (`calibration` is unused and no calibration tokens
            enter the ledger); the record's `scorer_task` names the task, metric and example counts.
        batch_size: calibration windows per forward pass (the reference uses 1; Minitron-width is sensitive to it).
            A task scorer runs lm-eval with `litprune.eval.task_scorer.TASK_BATCH_SIZE` requests per pass.
        scorer_fewshot: task scorer only: few-shot examples per prompt (the reference's 8B script: 5).
        scorer_limit: task scorer only: evaluate the first `scorer_limit` examples of the task (the reference
            passes its `calib_size`); None (default) evaluates all of them.
        flap: method "flap" only, its options (see `litprune.pruning.flap.FlapOptions`): `metric` (WIFV, IFV,
            WIFN), `structure` (uniform: fixed counts per layer, an ordinary smaller Llama; adaptive: AL-AM, needs
            `output: masked`), `attn_unit_weight` (ref, exact), `parity` (reference quirks), `compensate` (all,
            attention, none) and `output` (sliced, masked). A masked result hands its keep-masks to the module,
            so `SparseMask(mask_source: module)` keeps the removed units at zero while it trains.

    Raises:
        ValueError: unknown method (close matches are suggested), ratio outside (0, 1), neither ratio nor target,
            target keys that do not fit the method, unknown convention, scorer or scorer task (close matches are
            suggested), scorer options without a task scorer, bad batch size; and, when the
            parent is on disk, a parent that is not a Llama-layout model or a target that cannot be reached (for
            example a ratio that leaves no layer). All argument problems are reported together.
    """

    def __init__(
        self,
        parent: str,
        method: str,
        ratio: float | None = None,
        target: dict[str, int] | None = None,
        convention: str = "non_embedding",
        calibration: Calibration | None = None,
        scorer: str = "perplexity",
        batch_size: int = 1,
        scorer_fewshot: int = 0,
        scorer_limit: int | None = None,
        flap: dict[str, Any] | None = None,
    ) -> None:
        problems = check_target_arguments(parent, method, ratio, target, convention, accept_kinds=False)
        options = check_flap_arguments(method, flap, ratio, target, problems)
        if method == "minitron_depth":
            problems.extend(_scorer_problems(scorer, scorer_fewshot, scorer_limit))
        else:
            given = {"scorer": scorer, "scorer_fewshot": scorer_fewshot, "scorer_limit": scorer_limit}
            defaults = {"scorer": "perplexity", "scorer_fewshot": 0, "scorer_limit": None}
            extra = [f"{key}={value!r}" for key, value in given.items() if value != defaults[key]]
            if extra:
                problems.append(
                    f"{', '.join(extra)} only applies to method 'minitron_depth'; {method!r} scores from its "
                    f"calibration pass. Remove {', '.join(item.partition('=')[0] for item in extra)}."
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            problems.append(f"batch_size={batch_size!r} must be a positive integer (the reference uses 1).")
        calibration = Calibration.coerce(calibration, problems)
        if problems:
            raise ValueError("StructuredPrune: " + " ".join(problems))
        self.calibration = calibration
        self.scorer = scorer
        self.batch_size = batch_size
        self.scorer_fewshot = scorer_fewshot
        self.scorer_limit = scorer_limit
        self.flap = flap
        self.flap_options = options
        self.adopt_target(parent, method, ratio, target, convention)

    @property
    def prunes_parent(self) -> bool:
        return True

    @property
    def solves_shape(self) -> bool:
        return self.flap_options is None or self.flap_options.structure != "adaptive"

    def check_parent_config(self, config: PretrainedConfig) -> None:
        """A calibration window must fit the parent's positions; FLAP's biases need a Llama parent."""
        self.calibration.check_positions(config)
        if self.flap_options is not None:
            check_flap_parent(config, self.flap_options)

    def build(
        self, config: PretrainedConfig | None = None, data: Any = None, device: str | torch.device | None = None
    ) -> InitResult:
        """Load the parent, calibrate on the run's data, prune; `config` is ignored (the parent defines it).

        Args:
            config: ignored; the parent defines the architecture.
            data: the run's data module (calibration windows, tokenizer checks).
            device: where the parent is pruned (`litprune prune --device`); None prunes on the CPU, where the
                parent is loaded. The pruned model is returned on that device.
        """
        parent_config = read_parent_config(self.parent)
        self.plan()
        check_run_data(self.parent, parent_config, data)
        task_scored = self.method == "minitron_depth" and is_task_scorer(self.scorer)
        scorer = self.scorer
        if task_scored:
            tokenizer = run_tokenizer(data)
            if tokenizer is None:
                raise ValueError(
                    f"StructuredPrune: scorer={self.scorer!r} runs lm-eval with the run's tokenizer, but the run's "
                    f"data ({type(data).__name__}) has none. Build the run with a TokenDataModule (litprune fit does)."
                )
            scorer = make_task_scorer(self.scorer, tokenizer, num_fewshot=self.scorer_fewshot, limit=self.scorer_limit)
            # The task brings its own examples; no training-corpus windows are read.
            windows, provenance, tokens = None, {}, {}
        else:
            windows, provenance = self.calibration.draw(data, model_config=parent_config)
            tokens = {"calibration": self.calibration.tokens}
        model = load_causal_lm(self.parent)
        if device is not None:
            model.to(device)
        # The freshly loaded parent is not needed afterwards: prune depth in place to hold one copy in memory.
        pruned, record = prune_structured(
            model,
            self.method,
            ratio=self.ratio,
            target=self.target,
            windows=windows,
            convention=self.convention,
            scorer=scorer,
            batch_size=self.batch_size,
            inplace=True,
            flap=self.flap_options,
        )
        del model
        masks = pop_keep_masks(record)
        if task_scored:
            record["scorer_task"] = dict(scorer.details)  # task, metric, options and example counts
        pruned.train()  # from_pretrained returns eval mode; the run trains the model
        record = {
            "strategy": "structured_prune",
            "parent": parent_record(self.parent),
            **record,
            "calibration": {**provenance, **(record.get("calibration") or {})} or None,
        }
        return InitResult(model=pruned, record=record, masks=masks, tokens=tokens)


def _scorer_problems(scorer: str, num_fewshot: int, limit: int | None) -> list[str]:
    """Problems with a Minitron-depth scorer name and its task options (`scorer_fewshot`, `scorer_limit`)."""
    if is_task_scorer(scorer):
        try:
            check_task_scorer(scorer, num_fewshot, limit, option_names=SCORER_OPTIONS)
        except ValueError as err:
            return [str(err)]
        return []
    problems: list[str] = []
    try:
        check_scorer(scorer)
    except ValueError as err:
        problems.append(str(err))
    if num_fewshot != 0 or limit is not None:
        problems.append(
            f"{SCORER_OPTIONS[0]}={num_fewshot!r} and {SCORER_OPTIONS[1]}={limit!r} apply only to task scorers "
            f"('task:<name>'); the scorer {scorer!r} takes neither. Remove them."
        )
    return problems


def check_target_arguments(parent, method, ratio, target, convention, accept_kinds: bool) -> list[str]:
    problems: list[str] = []
    if not isinstance(parent, str | Path) or not str(parent):
        problems.append(f"parent={parent!r} must be a checkpoint directory (e.g. runs/tiny_scratch/export).")
    methods = TARGET_KINDS if accept_kinds else STRUCTURED_METHODS
    names = list(methods) + (list(TARGET_KEYS) if accept_kinds else [])
    kind = methods.get(method, method if accept_kinds else None)
    if kind not in TARGET_KEYS or (method not in methods and not accept_kinds):
        hint = did_you_mean(method, names, cutoff=0.5)
        problems.append(f"Unknown method {method!r}.{hint} Available: {', '.join(names)}.")
        kind = None
    if ratio is not None:
        try:
            check_ratio_open(ratio)
        except ValueError as err:
            problems.append(str(err))
    if target is not None:
        if not isinstance(target, dict) or not target:
            problems.append(f"target={target!r} must be a non-empty mapping of shape fields to sizes, or null.")
        elif kind is not None:
            unknown = sorted(set(target) - set(TARGET_KEYS[kind]))
            if unknown:
                problems.append(
                    f"target keys {unknown} do not apply to {kind} pruning; allowed: {', '.join(TARGET_KEYS[kind])}."
                )
            bad = {k: v for k, v in target.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
            if bad:
                problems.append(f"target sizes {bad} must be positive integers.")
    if ratio is None and not target:
        problems.append("Give a ratio (e.g. 0.5) or an explicit target shape.")
    try:
        check_convention(convention)
    except ValueError as err:
        problems.append(str(err))
    return problems
