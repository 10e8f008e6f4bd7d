"""Sparse pruned initialisations (`P_M-R_N` arms) and their sparse scratch controls for `litprune fit`.

A sparse arm keeps the parent's shapes and zeros individual weights of the decoder linears (Wanda, SparseGPT or
magnitude; unstructured or N:M). The masks travel with the model into the run, and a `SparseMask` callback with
`mask_source: module` keeps every pruned weight at exactly 0 while retraining:

```yaml
model:
  init_args:
    preset: null                      # the parent defines the architecture
    init:
      class_path: litprune.inits.SparsePrune
      init_args:
        parent: runs/tiny_scratch/export
        method: wanda                 # or sparsegpt, magnitude
        ratio: 0.5
        pattern: "2:4"                # or unstructured, "4:8"
        calibration: {slice: train, nsamples: 64, seqlen: 128, seed: 0}
        control: none                 # reinit: the paper's sparse scratch control (S_N)
trainer:
  callbacks:
    - class_path: litprune.callbacks.sparse_mask.SparseMask
      init_args: {mask_source: module}
```

At the end of fit `HFExport` writes the export in the sparse layout of `litprune.models.sparse_checkpoint` (zeros in
place, `sparsity_masks.safetensors`, `sparsity.json`), and `FromPretrained` of that export hands the masks back.

Pruning a sparse parent (iterative pruning: a stage prunes the previous stage's export) tightens its mask: the new
keep-mask is the method's mask of the loaded weights, and since every weight the parent pruned is exactly 0, Wanda's
and magnitude's scores of it are 0, the lowest, so it is pruned again before any other. `ratio` is still the pruned
fraction of each target matrix, i.e. of the original parent's prunable weights (a 0.5 prune of a 0.3-sparse export
ends at 50% zeros, not 65%). Rather than trust the argument, `SparsePrune` checks that every new keep-mask lies
inside the parent's (`check_tightened`) and fails otherwise, so a stage never silently revives a pruned weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from litprune.inits.base import InitResult, InitStrategy
from litprune.inits.calibration import Calibration
from litprune.inits.parent import check_run_data, local_config_path, parent_record, read_parent_config
from litprune.inits.sparse_controls import random_init_random_mask, random_init_same_mask, reinit_surviving
from litprune.models.loading import load_causal_lm
from litprune.models.params import count_parameters
from litprune.models.sparse_checkpoint import MASKS_FILE, check_zeros, load_masks
from litprune.pruning.owl import check_layer_ratios
from litprune.pruning.patterns import check_ratio, parse_pattern
from litprune.pruning.sparse import METHOD_KWARGS, METHODS, needs_windows, prune_sparse
from litprune.pruning.targets import DEFAULT_TARGETS, compile_targets, find_targets
from litprune.utils.suggest import did_you_mean

CONTROLS: dict[str, str] = {
    "none": "the pruned parent's weights (P_M-R_N)",
    "reinit": "surviving Linear weights (lm_head included) redrawn from N(0, std^2); parent's embeddings and norms",
    "random_same_mask": "every weight randomly initialised (HF-style), the parent's mask",
    "random_fresh_mask": "every weight randomly initialised (HF-style), a fresh random mask of the same pattern",
}
"""The starting points a sparse arm can take from the pruned parent, by name."""

CONTROL_STD = 0.02
"""Standard deviation of the controls' random weights (Hugging Face's Llama `initializer_range`, the paper's)."""


class SparsePrune(InitStrategy):
    """Sparsify a dense parent with Wanda, SparseGPT or magnitude and start the run from the result.

    `build` loads the parent (fp32), draws calibration windows from the run's own data (`calibration.slice`) for
    the methods that need them, prunes with `litprune.pruning.sparse.prune_sparse` and applies `control`. It hands
    over an ordinary model of the parent's class and shapes (pruned weights are 0 in place) together with the
    keep-masks, keyed by the model's parameter names (`model.layers.0.self_attn.q_proj.weight`, ...). The run
    keeps them with a `SparseMask(mask_source="module")` callback (`callbacks/sparse_mask_from_init.yaml`). Both
    read `targets` the same way (a regex that fully matches parameter names) with the same default,
    `litprune.pruning.targets.DEFAULT_TARGETS`. With a narrower `targets` here, give the callback a regex selecting
    the same parameters; the callback sees the LightningModule's names (`model.` + the names here), so a regex
    starting with `(?:.*\\.)?` serves both.

    The run record (`export/litprune.json`, `results.json`) holds the pruning record (method, pattern, ratio,
    targets, achieved sparsity per matrix, per layer and overall), the parent's path and run record, the control
    and the calibration provenance; the calibration tokens enter the token ledger as `init_tokens.calibration`
    (magnitude reads no data and records none).

    Controls (the sparse "from scratch" baselines, methods-spec section 7):

    - "none": the pruned parent itself, the `P_M-R_N` arm.
    - "reinit": the paper's sparse scratch control (`S_N` of a sparse arm): the same mask; the surviving entries
      of every `nn.Linear` (the decoder linears and `lm_head`) redrawn from N(0, 0.02^2) (truncated at +-2, as
      the reference); the parent's embeddings and RMSNorm gains kept bit-identical. It needs untied embeddings.
    - "random_same_mask": a full random init (Linear and embedding N(0, 0.02^2), norm gains 1) on the same mask.
    - "random_fresh_mask": a full random init on a fresh random mask of the same pattern (N:M: N random entries of
      every group of M; unstructured: the same number of pruned entries per row as the method's mask).

    Per-layer ratios: with `layer_ratios: owl` each decoder layer gets its own ratio from its share of outlier
    weights (OWL, `litprune.pruning.owl`): layers with more outliers keep more weights, every layer stays within
    `ratio +- lambda`, and the model prunes exactly `round(ratio * target weights)` in total. Unstructured
    patterns only. The outlier statistics come from one extra calibration pass over the dense parent, so
    magnitude with OWL also reads the calibration windows (and records them in the token ledger):

    ```yaml
    init:
      class_path: litprune.inits.SparsePrune
      init_args:
        parent: runs/tiny_scratch/export
        method: wanda                 # or sparsegpt, magnitude
        ratio: 0.7
        pattern: unstructured
        layer_ratios: owl
        owl: {lambda: 0.08, threshold_m: 5}   # the paper's defaults; either key may be left out
        calibration: {slice: train, nsamples: 64, seqlen: 128, seed: 0}
    ```

    The controls draw from `control_seed` (the reference `reinit.py` uses seed 42). Pruning runs on the CPU, where
    the parent is loaded (`litprune prune --device cuda` prunes on a GPU, once, outside the run).

    A sparse parent (a checkpoint with keep-masks, such as the export of a sparse run) is pruned further: its
    pruned weights stay pruned and `ratio` counts them (see the module docstring); the record's
    `parent_sparsity` is the parent's overall pruned fraction (None for a dense parent).

    Args:
        parent: the parent: a Hugging Face checkpoint directory or a litprune export (`<run dir>/export`); dense, or
            sparse (its mask is tightened to `ratio`).
        method: "wanda" (default), "sparsegpt" or "magnitude".
        ratio: pruned fraction of each target matrix, in [0, 1). For an N:M pattern it must be N/M (or null).
        pattern: "unstructured" (default) or "N:M" such as "2:4" or "4:8" (N pruned in every M input columns).
        targets: regex that must fully match (`re.fullmatch`) the parameter names of the weights to prune, e.g.
            `model.layers.0.mlp.up_proj.weight`; only `nn.Linear` weights are pruned. Default: the
            q/k/v/o/gate/up/down projection weights of every decoder layer.
        calibration: which tokens Wanda, SparseGPT and OWL calibrate on (default `Calibration()`: 128 windows of
            256 tokens of the `train` slice, seed 0). Ignored by magnitude with uniform ratios, which reads no data.
        control: "none" (default), "reinit", "random_same_mask" or "random_fresh_mask" (see above).
        control_seed: seed of the control's random weights (and of the fresh mask).
        method_kwargs: options of the method: wanda `batch_size`; sparsegpt `blocksize` (128), `percdamp` (0.01),
            `batch_size`.
        layer_ratios: "uniform" (default: every target at `ratio`) or "owl" (a ratio per decoder layer from its
            share of outlier weights; unstructured only).
        owl: OWL hyperparameters, only with `layer_ratios: owl`: `lambda` (largest deviation of a layer's ratio
            from `ratio`, default 0.08) and `threshold_m` (a weight is an outlier when its score exceeds this
            times its matrix's mean score, default 5).

    Raises:
        ValueError: unknown method or control (close matches are suggested), a bad pattern, a ratio outside
            [0, 1) or different from N/M for an N:M pattern, a missing ratio for "unstructured", an invalid
            `targets` regex, unknown method options, an unknown `layer_ratios`, `layer_ratios: owl` with an N:M
            pattern, bad `owl` options (unknown keys, `lambda` outside [0, 1) or wider than the ratio allows,
            a non-positive `threshold_m`), `owl` options without `layer_ratios: owl`; and, when the parent is on
            disk, a parent that is not a Llama-layout model, a calibration window longer than its positions, or
            `control="reinit"` with tied embeddings. All argument problems are reported together. (build) A
            sparse parent whose masks cover weights `targets` does not select, whose sparsity in a matrix exceeds
            `ratio`, or whose pruned weights the new mask would keep (`check_tightened`).
    """

    def __init__(
        self,
        parent: str,
        method: str = "wanda",
        ratio: float | None = 0.5,
        pattern: str = "unstructured",
        targets: str = DEFAULT_TARGETS,
        calibration: Calibration | None = None,
        control: str = "none",
        control_seed: int = 0,
        method_kwargs: dict | None = None,
        layer_ratios: str = "uniform",
        owl: dict | None = None,
    ) -> None:
        problems: list[str] = []
        if not isinstance(parent, str) or not parent:
            problems.append(f"parent={parent!r} must be a checkpoint directory (e.g. runs/tiny_scratch/export).")
        if method not in METHODS:
            hint = did_you_mean(method, METHODS, cutoff=0.5)
            problems.append(f"Unknown method {method!r}.{hint} Available: {', '.join(METHODS)}.")
        parsed = None
        try:
            parsed = parse_pattern(pattern)
        except (ValueError, TypeError, AttributeError) as err:
            problems.append(f"pattern={pattern!r}: {err}")
        try:
            if parsed is not None:
                parsed.resolve_ratio(ratio)
            elif ratio is not None:
                check_ratio(ratio)
        except (ValueError, TypeError) as err:
            problems.append(str(err))
        try:
            compile_targets(targets)
        except ValueError as err:
            problems.append(str(err))
        if control not in CONTROLS:
            hint = did_you_mean(control, CONTROLS, cutoff=0.5)
            problems.append(f"Unknown control {control!r}.{hint} Available: {', '.join(CONTROLS)}.")
        if isinstance(control_seed, bool) or not isinstance(control_seed, int):
            problems.append(f"control_seed={control_seed!r} must be an integer.")
        method_kwargs = {} if method_kwargs is None else method_kwargs
        if not isinstance(method_kwargs, dict):
            problems.append(f"method_kwargs={method_kwargs!r} must be a mapping of option names to values.")
        elif method in METHODS:
            unknown = sorted(set(method_kwargs) - METHOD_KWARGS[method])
            if unknown:
                allowed = ", ".join(sorted(METHOD_KWARGS[method])) or "none"
                problems.append(f"method_kwargs {unknown} do not apply to {method!r}; it accepts: {allowed}.")
        owl_problems, _ = check_layer_ratios(layer_ratios, owl, parsed, ratio)
        problems.extend(owl_problems)
        calibration = Calibration.coerce(calibration, problems)
        if problems:
            raise ValueError("SparsePrune: " + " ".join(problems))
        self.parent = parent
        self.method = method
        self.ratio = None if ratio is None else float(ratio)
        self.pattern = str(parsed)
        self.targets = targets
        self.calibration = calibration
        self.control = control
        self.control_seed = int(control_seed)
        self.method_kwargs = dict(method_kwargs)
        self.layer_ratios = layer_ratios
        self.owl = None if owl is None else dict(owl)
        if local_config_path(self.parent) is not None:
            self.check_parent()

    @property
    def needs_architecture(self) -> bool:
        return False

    @property
    def prunes_parent(self) -> bool:
        return True

    @property
    def needs_data(self) -> bool:
        """Whether pruning reads calibration data (Wanda, SparseGPT, and any method with OWL ratios)."""
        return needs_windows(self.method, self.layer_ratios)

    def check_parent(self) -> PretrainedConfig:
        """Check the parent's config (no weights are read) and return it.

        Raises:
            FileNotFoundError: no checkpoint at `parent`.
            ValueError: the parent is not a Llama-layout model, a calibration window is longer than its positions,
                or `control="reinit"` with tied input and output embeddings.
        """
        config = read_parent_config(self.parent)
        if self.needs_data:
            self.calibration.check_positions(config)
        if self.control == "reinit" and getattr(config, "tie_word_embeddings", False):
            raise ValueError(
                f"control='reinit' redraws lm_head but keeps the embeddings, and the parent {self.parent!r} ties "
                "them (tie_word_embeddings=True). Use control='random_same_mask', or a parent with untied embeddings."
            )
        return config

    def build(
        self, config: PretrainedConfig | None = None, data: Any = None, device: str | torch.device | None = None
    ) -> InitResult:
        """Load the parent, calibrate on the run's data, prune, apply the control; `config` is ignored.

        Args:
            config: ignored; the parent defines the architecture.
            data: the run's data module (calibration windows, tokenizer checks).
            device: where the parent is pruned (`litprune prune --device`); None prunes on the CPU, where the
                parent is loaded. The model and its masks are returned on that device.
        """
        parent_config = self.check_parent()
        check_run_data(self.parent, parent_config, data)
        model = load_causal_lm(self.parent)
        parent_masks = self._parent_masks(model)  # a sparse parent's problems are found before calibrating
        windows, provenance = None, None
        if self.needs_data:
            windows, provenance = self.calibration.draw(data, model_config=parent_config)
        if device is not None:
            model.to(device)
        result = prune_sparse(
            model,
            self.method,
            ratio=self.ratio,
            pattern=self.pattern,
            windows=windows,
            targets=self.targets,
            calibration=provenance,
            layer_ratios=self.layer_ratios,
            owl=self.owl,
            **self.method_kwargs,
        )
        if parent_masks:
            check_tightened(parent_masks, result.masks, self.parent)
        masks = self._apply_control(model, result.masks)
        model.train()  # from_pretrained returns eval mode; the run trains the model
        record = {
            "strategy": "sparse_prune",
            "parent": parent_record(self.parent),
            **result.record,
            "control": {
                "name": self.control,
                "description": CONTROLS[self.control],
                "seed": self.control_seed if self.control != "none" else None,
                "std": CONTROL_STD if self.control != "none" else None,
            },
            "params": count_parameters(model).as_dict(),
            "parent_sparsity": _overall_sparsity(parent_masks) if parent_masks else None,
        }
        tokens = {"calibration": self.calibration.tokens} if self.needs_data else {}
        return InitResult(model=model, record=record, masks=masks, tokens=tokens)

    def _parent_masks(self, model: Any) -> dict[str, torch.Tensor]:
        """The keep-masks of a sparse parent (empty for a dense one), checked against the pruning to come: each
        masked weight is 0, is a target, and is no sparser than `ratio` allows."""
        local = Path(self.parent).expanduser()
        if not (local / MASKS_FILE).is_file():
            return {}
        masks = load_masks(local)
        check_zeros(model, masks, f"SparsePrune(parent={self.parent!r})")
        selected = {f"{name}.weight" for name in find_targets(model, self.targets)}
        outside = sorted(set(masks) - selected)
        if outside:
            raise ValueError(
                f"SparsePrune: the sparse parent {self.parent!r} masks {outside[:3]}"
                f"{' ...' if len(outside) > 3 else ''}, which targets={self.targets!r} does not select, so their "
                "pruned weights would not stay pruned. "
                "Widen targets to every masked weight of the parent."
            )
        ratio = parse_pattern(self.pattern).resolve_ratio(self.ratio)
        denser = {name: float((~keep).float().mean()) for name, keep in masks.items()}
        denser = {name: value for name, value in denser.items() if value > ratio + 1e-9}
        if denser:
            name, value = max(denser.items(), key=lambda item: item[1])
            raise ValueError(
                f"SparsePrune: ratio={ratio:g} is below the sparsity of the parent {self.parent!r} ({name} is "
                f"{value:.4f} pruned): pruning a sparse parent keeps its pruned weights, so the ratio (a fraction of "
                f"each matrix) must be at least the parent's. Use ratio >= {value:.4f}."
            )
        return masks

    def _apply_control(self, model: Any, masks: dict) -> dict:
        if self.control == "reinit":
            return reinit_surviving(model, masks, std=CONTROL_STD, seed=self.control_seed)
        if self.control == "random_same_mask":
            return random_init_same_mask(model, masks, seed=self.control_seed, std=CONTROL_STD)
        if self.control == "random_fresh_mask":
            return random_init_random_mask(model, masks, seed=self.control_seed, pattern=self.pattern, std=CONTROL_STD)
        return masks


def check_tightened(parent_masks: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], parent: str) -> None:
    """Check that pruning a sparse parent kept every weight it had pruned: each new keep-mask lies inside the
    parent's (`new_keep <= parent_keep` everywhere), for every parameter the parent masks.

    Args:
        parent_masks: the parent's keep-masks, parameter name -> bool tensor (True = keep).
        masks: the new keep-masks, same names and shapes.
        parent: the parent's path, for the message.

    Raises:
        ValueError: a parameter the parent masks has no new mask, or a new mask keeps weights the parent pruned
            (the matrices and counts are named).
    """
    problems: list[str] = []
    for name, old in parent_masks.items():
        new = masks.get(name)
        if new is None:
            problems.append(f"{name} has no new mask")
            continue
        revived = int((new.to(old.device) & ~old).sum())
        if revived:
            problems.append(f"{name} keeps {revived} weight(s) the parent pruned")
    if problems:
        raise ValueError(
            f"SparsePrune: the new mask does not contain the pruned weights of the sparse parent {parent!r}: "
            + "; ".join(problems[:5])
            + ("; ..." if len(problems) > 5 else "")
            + ". The method did not rank the parent's zeros lowest (a tie with kept weights that are exactly 0, or "
            "a weight update that revives them, as SparseGPT's does); prune it with wanda or magnitude, or prune "
            "the dense parent in one shot at this ratio."
        )


def _overall_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Pruned fraction over all entries of `masks`."""
    pruned = sum(int((~keep).sum()) for keep in masks.values())
    return pruned / sum(keep.numel() for keep in masks.values())
