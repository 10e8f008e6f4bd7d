"""One call from a dense parent to a structurally pruned model plus a record of what was done.

    model, record = prune_structured(parent, "minitron_depth", ratio=0.5, windows=calibration_ids)

Methods (methods-spec sections 1-3):

- `minitron_depth`: drop one contiguous block, the window whose score (perplexity on `windows`, or any callable
  `model -> float` such as a downstream-task scorer built by the eval package's `make_task_scorer`) is closest
  to the dense baseline;
- `shortgpt`: drop the layers with the lowest Block Influence measured in one dense pass;
- `minitron_width`: keep the most important hidden channels and MLP neurons (heads kept; whole KV groups can be
  removed with `target={"num_key_value_heads": n}`, our extension);
- `flap` (section 14): remove whole KV groups and MLP neurons scored by fluctuation on the dense model, and replace
  the removed channels by their calibration means through `o_proj` / `down_proj` biases (options in `flap=`,
  see `litprune.pruning.flap.FlapOptions`);
- `wanda_sp` (section 14): remove whole KV groups and MLP neurons scored sequentially by `|W| * ||x||`, no bias.

The target shape comes from the shape solver (`litprune.pruning.shapes`): a `ratio` read under `convention`
(non-embedding parameters by default), or an explicit `target`. The result is an ordinary model of the parent's
class (e.g. `LlamaForCausalLM`): `save_pretrained` then `from_pretrained` reproduces it, and `generate()` with the
KV cache works after depth pruning. The record is plain data (JSON-serialisable) with the requested ratio, the
achieved ratio under both conventions, parameter counts before and after, kept layers and sizes, method
scores, and a provenance summary of the calibration windows (counts, batch size, sha256 of the token ids).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from litprune.models.params import count_parameters
from litprune.pruning.depth import (
    block_influence,
    decoder_layers,
    minitron_depth_window,
    remove_layers,
    shortgpt_drop,
)
from litprune.pruning.flap import FlapOptions, check_flap_parent, prune_flap, prune_wanda_sp
from litprune.pruning.flap_compress import bias_flags, effective_parameters, flap_keep_masks
from litprune.pruning.scorers import Scorer, calibration_summary, check_scorer, check_windows, resolve_scorer
from litprune.pruning.shapes import (
    CONVENTIONS,
    achieved_ratios,
    check_ratio_open,
    check_supported_config,
    solve_shape,
)
from litprune.pruning.width import prune_width, width_importance
from litprune.utils.suggest import did_you_mean

# Method name -> which kind of shape the solver must produce.
STRUCTURED_METHODS: dict[str, str] = {
    "minitron_depth": "depth",
    "shortgpt": "depth",
    "minitron_width": "width",
    "flap": "attention_mlp",
    "wanda_sp": "attention_mlp",
}

#: Record key under which a masked FLAP result hands its keep-masks (parameter name -> bool tensor, not JSON) to
#: the caller; `pop_keep_masks` removes it so the rest of the record stays plain data.
KEEP_MASKS_KEY = "keep_masks"


def pop_keep_masks(record: dict[str, Any]) -> dict[str, Tensor]:
    """Remove and return the keep-masks a masked result put in its record (empty when there are none)."""
    return record.pop(KEEP_MASKS_KEY, None) or {}


def target_config_flags(method: str, flap: dict[str, Any] | FlapOptions | None = None) -> dict[str, bool]:
    """Config flags (beyond the shape) that `method` sets on its result, e.g. FLAP's bias flags, so a scratch
    twin can build the same module tree: `{"attention_bias": True, "mlp_bias": True}` for FLAP's default.

    Raises:
        ValueError: invalid FLAP options.
    """
    if method != "flap":
        return {}
    problems: list[str] = []
    options = FlapOptions.parse(flap, problems)
    if problems:
        raise ValueError(" ".join(problems))
    return bias_flags(options.compensate)


def prune_structured(
    model: nn.Module,
    method: str,
    ratio: float | None = None,
    target: dict[str, int] | None = None,
    windows: Tensor | None = None,
    convention: str = "non_embedding",
    scorer: str | Scorer = "perplexity",
    batch_size: int = 1,
    inplace: bool = False,
    hidden_multiple: int | None = None,
    mlp_multiple: int | None = None,
    progress: bool | None = None,
    flap: dict[str, Any] | FlapOptions | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a Llama-layout parent by depth or width and describe the result.

    Args:
        model: The dense parent, e.g. a `LlamaForCausalLM`.
        method: "minitron_depth", "shortgpt", "minitron_width", "flap" or "wanda_sp".
        ratio: Pruned fraction of parameters under `convention`, in (0, 1); the paper uses 0.5 to 0.8. For FLAP
            with `structure: adaptive` it is the reference's `p`, the fraction of weighted attention and MLP units
            removed (the achieved parameter ratio is recorded).
        target: Explicit shape instead of (or for width, together with) `ratio`: `{"num_hidden_layers": k}` for
            depth; `hidden_size` and/or `intermediate_size` (and optionally `num_key_value_heads`) for width;
            `num_key_value_heads` (or `num_attention_heads`) and/or `intermediate_size` for FLAP and Wanda-sp,
            e.g. `{"num_key_value_heads": 5, "intermediate_size": 6528}`.
        windows: Calibration token ids `[num_windows, seq_len]`, used in order. Required, except for
            `minitron_depth` with a callable `scorer`.
        convention: "non_embedding" (default) or "total": the parameter count `ratio` refers to.
        scorer: `minitron_depth` only: "perplexity" on `windows`, or a callable `model -> float` that brings its
            own data, e.g. a downstream task scored by lm-eval on each candidate (`make_task_scorer("task:winogrande",
            tokenizer, num_fewshot=5)` from `eval/task_scorer.py`, the reference's downstream criterion; a
            `task:` name itself is resolved by `StructuredPrune`, not here). The window closest to the dense score
            wins in every case, so with an accuracy a window scoring above the dense model can win (the
            reference's behaviour).
        batch_size: Windows per forward call during calibration (the reference uses 1).
        inplace: Depth methods (and FLAP with `output: masked`): change `model` itself instead of a deep copy
            (saves memory for large parents; the parent is lost). Sliced width results are always new models
            and leave the parent untouched.
        hidden_multiple: Width solver rounding for the hidden size (see `litprune.pruning.shapes`).
        mlp_multiple: Width solver rounding for the MLP size.
        progress: Show progress bars for the calibration passes (True/False; None follows `LITPRUNE_PROGRESS`,
            see `litprune.utils.progress`).
        flap: FLAP only: its options as a mapping or `FlapOptions` (`metric`, `structure`, `attn_unit_weight`,
            `parity`, `compensate`, `output`); None takes the defaults (WIFV, uniform, sliced, full compensation).

    Returns:
        `(pruned_model, record)`. The record (plain JSON-serialisable data) holds `method`, `ratio_requested`,
        `target_requested`, `convention`, `target_shape`, `achieved_ratio` (`non_embedding` and `total`),
        `params_before` / `params_after` (total, embedding, non_embedding), `kept_layers`, `dropped_layers`,
        `kept_hidden_size`, `kept_intermediate_size`, `kept_num_attention_heads`, `kept_num_key_value_heads`,
        `head_dim`, `calibration` (num_windows, seq_len, num_tokens, batch_size, sha256 of the ids; None when a
        callable scorer did the calibrating), and per method `window_start` / `window_scores` /
        `baseline_score` / `scorer` (Minitron-depth; the scorer's name, or a callable's `__name__`) or
        `block_influence` (ShortGPT), or `flap` / `wanda_sp`: the options, `kept_groups` / `kept_neurons` /
        `kept_group_indices` per layer (and for adaptive search the unit weight, threshold and weighted masses).
        For FLAP's `output: masked` the parameter counts after pruning count only the kept units, and the record
        holds the keep-masks under `KEEP_MASKS_KEY` (take them out with `pop_keep_masks`).

    Raises:
        ValueError: unknown method (with close matches), unsupported parent, bad ratio or target, missing or
            malformed windows, unknown scorer (with close matches) or convention, a `task:` scorer name (build
            the callable with `make_task_scorer` instead); all argument problems are reported together.
    """
    problems = _check_arguments(model, method, ratio, windows, convention, scorer, batch_size)
    options = check_flap_arguments(method, flap, ratio, target, problems)
    if options is not None and not problems:
        try:
            check_flap_parent(model.config, options)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("prune_structured: " + " ".join(problems))
    kind = STRUCTURED_METHODS[method]
    adaptive = options is not None and options.structure == "adaptive"
    plan = None
    if not adaptive:  # an adaptive search sets its own per-layer widths from the ratio
        plan = solve_shape(
            model.config,
            kind,
            ratio=ratio,
            target=target,
            convention=convention,
            hidden_multiple=hidden_multiple,
            mlp_multiple=mlp_multiple,
        )
    params_before = count_parameters(model)
    record: dict[str, Any] = {
        "method": method,
        "ratio_requested": ratio,
        "target_requested": dict(target) if target else None,
        "convention": convention,
        "target_shape": plan.shape.as_dict() if plan is not None else None,
        "calibration": None,
    }
    # A callable Minitron-depth scorer brings its own data; the windows are then not what was calibrated on.
    uses_windows = not (method == "minitron_depth" and callable(scorer))
    if windows is not None and uses_windows:
        record["calibration"] = calibration_summary(windows, batch_size)

    params_after = None
    if kind == "depth":
        keep = plan.shape.num_hidden_layers
        pruned = _prune_depth(model, method, keep, windows, scorer, batch_size, inplace, record, progress)
    elif kind == "attention_mlp":
        pruned, params_after = _prune_attention_mlp(
            model, method, plan, ratio, options, windows, batch_size, inplace, record, progress
        )
    else:
        importance = width_importance(model, windows, batch_size=batch_size, progress=progress)
        pruned = prune_width(
            model,
            plan.shape.hidden_size,
            plan.shape.intermediate_size,
            importance,
            num_key_value_heads=plan.shape.num_key_value_heads,
        )
        record["kept_layers"] = list(range(model.config.num_hidden_layers))
        record["dropped_layers"] = []

    params_after = params_after or count_parameters(pruned)
    record.update(
        {
            "kept_hidden_size": pruned.config.hidden_size,
            "kept_intermediate_size": pruned.config.intermediate_size,
            "kept_num_attention_heads": pruned.config.num_attention_heads,
            "kept_num_key_value_heads": pruned.config.num_key_value_heads,
            "head_dim": pruned.config.head_dim,
            "params_before": params_before.as_dict(),
            "params_after": params_after.as_dict(),
            "achieved_ratio": achieved_ratios(params_before, params_after),
        }
    )
    return pruned, record


def _prune_depth(model, method, keep, windows, scorer, batch_size, inplace, record, progress) -> nn.Module:
    num_layers = len(decoder_layers(model))
    n = num_layers - keep
    if method == "minitron_depth":
        scorer_fn = resolve_scorer(scorer, windows, batch_size=batch_size)
        choice = minitron_depth_window(model, keep, scorer_fn, progress=progress)
        drop = list(range(choice.start, choice.start + n))
        record["scorer"] = scorer if isinstance(scorer, str) else getattr(scorer, "__name__", type(scorer).__name__)
        record["window_scores"] = list(choice.scores)
        record["baseline_score"] = choice.baseline
        record["window_start"] = choice.start
    else:
        bi = block_influence(model, windows, batch_size=batch_size, progress=progress)
        drop = shortgpt_drop(bi, keep)
        record["block_influence"] = [float(x) for x in bi]
    target = model if inplace else copy.deepcopy(model)
    remove_layers(target, drop)
    record["dropped_layers"] = drop
    record["kept_layers"] = [i for i in range(num_layers) if i not in set(drop)]
    return target


def check_flap_arguments(
    method: str, flap: Any, ratio: float | None, target: Any, problems: list[str]
) -> FlapOptions | None:
    """FLAP's options for method "flap" (None for other methods), appending every problem to `problems`: options
    given to another method, unknown or invalid options, an adaptive search with a target or without a ratio."""
    if method != "flap":
        if flap is not None:
            problems.append(f"flap={flap!r} only applies to method 'flap'; remove it for {method!r}.")
        return None
    options = FlapOptions.parse(flap, problems)
    if options is not None and options.structure == "adaptive":
        if target:
            problems.append(
                f"target={target!r} fixes per-layer counts, which flap.structure='adaptive' chooses itself; use "
                "structure: uniform for a target shape, or give only a ratio."
            )
        if ratio is None:
            problems.append("flap.structure='adaptive' needs a ratio (the fraction of weighted units to remove).")
    return options


def _prune_attention_mlp(model, method, plan, ratio, options, windows, batch_size, inplace, record, progress):
    """FLAP or Wanda-sp; returns the pruned model and, for a masked result, its effective parameter count."""
    params_after = None
    if method == "wanda_sp":
        shape = plan.shape
        pruned, masks, info = prune_wanda_sp(
            model, windows, shape.num_key_value_heads, shape.intermediate_size, batch_size=batch_size, progress=progress
        )
    else:
        counts = {}
        if plan is not None:
            counts = {
                "num_key_value_heads": plan.shape.num_key_value_heads,
                "intermediate_size": plan.shape.intermediate_size,
            }
        pruned, masks, info = prune_flap(
            model,
            windows,
            options,
            ratio=None if plan is not None else ratio,
            batch_size=batch_size,
            progress=progress,
            inplace=inplace,
            **counts,
        )
        if options.output == "masked":
            params_after = effective_parameters(pruned, masks)
            record[KEEP_MASKS_KEY] = flap_keep_masks(pruned, masks)
    info.pop("num_windows", None)
    record[method] = info
    record["kept_layers"] = list(range(model.config.num_hidden_layers))
    record["dropped_layers"] = []
    return pruned, params_after


def _check_arguments(model, method, ratio, windows, convention, scorer, batch_size) -> list[str]:
    problems: list[str] = []
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size={batch_size!r} must be a positive integer (the reference uses 1).")
    if method not in STRUCTURED_METHODS:
        hint = did_you_mean(method, STRUCTURED_METHODS, cutoff=0.5)
        problems.append(f"Unknown method {method!r}.{hint} Available: {', '.join(STRUCTURED_METHODS)}.")
    try:
        check_supported_config(model.config)
    except (ValueError, AttributeError) as err:
        problems.append(str(err) if isinstance(err, ValueError) else f"{type(model).__name__} has no config.")
    if ratio is not None:
        try:
            check_ratio_open(ratio)
        except ValueError as err:
            problems.append(str(err))
    if convention not in CONVENTIONS:
        problems.append(f"convention={convention!r} is unknown; use one of {', '.join(map(repr, CONVENTIONS))}.")
    scorer_needs_windows = False
    if method == "minitron_depth":
        try:
            check_scorer(scorer)
            scorer_needs_windows = not callable(scorer)  # a callable brings its own data
        except ValueError as err:
            problems.append(str(err))
    needs_windows = method in ("shortgpt", "minitron_width", "flap", "wanda_sp") or scorer_needs_windows
    if windows is None and needs_windows:
        problems.append(
            f"Method {method!r} needs calibration windows: pass windows=LongTensor[num_windows, seq_len] of the "
            "parent's token ids (e.g. wikitext-103 train cut into non-overlapping windows)."
        )
    elif windows is not None:
        try:
            check_windows(windows, getattr(getattr(model, "config", None), "vocab_size", None))
        except ValueError as err:
            problems.append(str(err))
    return problems
