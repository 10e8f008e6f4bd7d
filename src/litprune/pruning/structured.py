"""One call from a dense parent to a structurally pruned model plus a record of what was done.

    model, record = prune_structured(parent, "minitron_depth", ratio=0.5, windows=calibration_ids)

Methods (methods-spec sections 1-3):

- `minitron_depth`: drop one contiguous block, the window whose score (perplexity on `windows`, a downstream
  task run by lm-eval such as `scorer="task:winogrande"`, or any callable `model -> float`) is closest to the
  dense baseline;
- `shortgpt`: drop the layers with the lowest Block Influence measured in one dense pass;
- `minitron_width`: keep the most important hidden channels and MLP neurons (heads kept; whole KV groups can be
  removed with `target={"num_key_value_heads": n}`, our extension).

The target shape comes from the shape solver (`litprune.pruning.shapes`): a `ratio` read under `convention`
(non-embedding parameters by default), or an explicit `target`. The result is an ordinary model of the parent's
class (e.g. `LlamaForCausalLM`): `save_pretrained` then `from_pretrained` reproduces it, and `generate()` with the
KV cache works after depth pruning. The record is plain data (JSON-serialisable) with the requested ratio, the
achieved ratio under both conventions, parameter counts before and after, kept layers and sizes, method
scores, and a provenance summary of the calibration windows (counts, batch size, sha256 of the token ids).
"""

from __future__ import annotations

import copy
import difflib
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
from litprune.pruning.scorers import (
    Scorer,
    calibration_summary,
    check_scorer,
    check_windows,
    is_task_scorer,
    resolve_scorer,
)
from litprune.pruning.shapes import (
    CONVENTIONS,
    achieved_ratios,
    check_ratio_open,
    check_supported_config,
    solve_shape,
)
from litprune.pruning.width import prune_width, width_importance

# Method name -> which kind of shape the solver must produce.
STRUCTURED_METHODS: dict[str, str] = {
    "minitron_depth": "depth",
    "shortgpt": "depth",
    "minitron_width": "width",
}


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
    tokenizer: Any = None,
    scorer_fewshot: int = 0,
    scorer_limit: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a Llama-layout parent by depth or width and describe the result.

    Args:
        model: The dense parent, e.g. a `LlamaForCausalLM`.
        method: "minitron_depth", "shortgpt" or "minitron_width".
        ratio: Pruned fraction of parameters under `convention`, in (0, 1); the paper uses 0.5 to 0.8.
        target: Explicit shape instead of (or for width, together with) `ratio`: `{"num_hidden_layers": k}` for
            depth; `hidden_size` and/or `intermediate_size` (and optionally `num_key_value_heads`) for width.
        windows: Calibration token ids `[num_windows, seq_len]`, used in order. Required, except for
            `minitron_depth` with a task or callable `scorer`.
        convention: "non_embedding" (default) or "total": the parameter count `ratio` refers to.
        scorer: `minitron_depth` only: "perplexity" on `windows`; "task:<lm-eval task>[:<metric>]" (e.g.
            "task:winogrande", the reference's downstream criterion, or the offline "task:litprune_next_line"),
            scored by lm-eval on each candidate (see `litprune.pruning.scorers.make_task_scorer`); or a callable
            `model -> float`. The window closest to the dense score wins in every case, so with an accuracy a
            window scoring above the dense model can win (the reference's behaviour).
        batch_size: Windows per forward call during calibration (the reference uses 1).
        inplace: Depth methods only: delete layers from `model` itself instead of a deep copy (saves memory
            for large parents; the parent is lost). Width pruning always builds a new model and leaves the
            parent untouched.
        hidden_multiple: Width solver rounding for the hidden size (see `litprune.pruning.shapes`).
        mlp_multiple: Width solver rounding for the MLP size.
        tokenizer: The parent's tokenizer; required by a task scorer.
        scorer_fewshot: Task scorer only: few-shot examples per prompt (the reference's 8B script uses 5 with
            winogrande).
        scorer_limit: Task scorer only: evaluate the first `scorer_limit` examples of the task (the reference
            passes its `calib_size`); None evaluates all of them.

    Returns:
        `(pruned_model, record)`. The record (plain JSON-serialisable data) holds `method`, `ratio_requested`,
        `target_requested`, `convention`, `target_shape`, `achieved_ratio` (`non_embedding` and `total`),
        `params_before` / `params_after` (total, embedding, non_embedding), `kept_layers`, `dropped_layers`,
        `kept_hidden_size`, `kept_intermediate_size`, `kept_num_attention_heads`, `kept_num_key_value_heads`,
        `head_dim`, `calibration` (num_windows, seq_len, num_tokens, batch_size, sha256 of the ids; None when a
        callable or task scorer did the calibrating), and per method `window_start` / `window_scores` /
        `baseline_score` / `scorer` (Minitron-depth, plus `scorer_task` for a task scorer: task, metric,
        num_fewshot, limit, batch_size, num_examples, num_examples_total, lm_eval_version) or
        `block_influence` (ShortGPT).

    Raises:
        ValueError: unknown method (with close matches), unsupported parent, bad ratio or target, missing or
            malformed windows, unknown scorer, task (with close matches) or convention, a task scorer without a
            tokenizer, scorer options without a task scorer; all argument problems are reported together.
    """
    problems = _check_arguments(model, method, ratio, windows, convention, scorer, batch_size)
    problems.extend(_check_scorer_options(method, scorer, tokenizer, scorer_fewshot, scorer_limit))
    if problems:
        raise ValueError("prune_structured: " + " ".join(problems))
    kind = STRUCTURED_METHODS[method]
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
        "target_shape": plan.shape.as_dict(),
        "calibration": None,
    }
    # A callable or task Minitron-depth scorer brings its own data; the windows are then not what was calibrated on.
    uses_windows = not (method == "minitron_depth" and (callable(scorer) or is_task_scorer(scorer)))
    if windows is not None and uses_windows:
        record["calibration"] = calibration_summary(windows, batch_size)

    if kind == "depth":
        score_options = {"tokenizer": tokenizer, "num_fewshot": scorer_fewshot, "limit": scorer_limit}
        pruned = _prune_depth(
            model, method, plan.shape.num_hidden_layers, windows, scorer, batch_size, inplace, record, score_options
        )
    else:
        importance = width_importance(model, windows, batch_size=batch_size)
        pruned = prune_width(
            model,
            plan.shape.hidden_size,
            plan.shape.intermediate_size,
            importance,
            num_key_value_heads=plan.shape.num_key_value_heads,
        )
        record["kept_layers"] = list(range(model.config.num_hidden_layers))
        record["dropped_layers"] = []

    params_after = count_parameters(pruned)
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


def _prune_depth(model, method, keep, windows, scorer, batch_size, inplace, record, score_options) -> nn.Module:
    num_layers = len(decoder_layers(model))
    n = num_layers - keep
    if method == "minitron_depth":
        # Callables take no options; named scorers get the tokenizer and the task options.
        options = {} if callable(scorer) else score_options
        score_fn = resolve_scorer(scorer, windows, batch_size=batch_size, **options)
        choice = minitron_depth_window(model, keep, score_fn)
        if is_task_scorer(scorer):
            record["scorer_task"] = dict(score_fn.details)
        drop = list(range(choice.start, choice.start + n))
        record["scorer"] = scorer if isinstance(scorer, str) else getattr(scorer, "__name__", type(scorer).__name__)
        record["window_scores"] = list(choice.scores)
        record["baseline_score"] = choice.baseline
        record["window_start"] = choice.start
    else:
        bi = block_influence(model, windows, batch_size=batch_size)
        drop = shortgpt_drop(bi, keep)
        record["block_influence"] = [float(x) for x in bi]
    target = model if inplace else copy.deepcopy(model)
    remove_layers(target, drop)
    record["dropped_layers"] = drop
    record["kept_layers"] = [i for i in range(num_layers) if i not in set(drop)]
    return target


def _check_arguments(model, method, ratio, windows, convention, scorer, batch_size) -> list[str]:
    problems: list[str] = []
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size={batch_size!r} must be a positive integer (the reference uses 1).")
    if method not in STRUCTURED_METHODS:
        close = difflib.get_close_matches(str(method), STRUCTURED_METHODS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
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
    own_data = callable(scorer) or is_task_scorer(scorer)
    needs_windows = method in ("shortgpt", "minitron_width") or (method == "minitron_depth" and not own_data)
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


def _check_scorer_options(method, scorer, tokenizer, num_fewshot, limit) -> list[str]:
    problems: list[str] = []
    if method == "minitron_depth" and not callable(scorer):
        try:
            check_scorer(scorer, num_fewshot, limit, option_names=("scorer_fewshot", "scorer_limit"))
        except ValueError as err:
            problems.append(str(err))
        if is_task_scorer(scorer) and tokenizer is None:
            problems.append(f"scorer={scorer!r} runs lm-eval on each candidate and needs the parent's tokenizer=.")
    elif num_fewshot != 0 or limit is not None:
        problems.append(
            f"scorer_fewshot={num_fewshot!r} and scorer_limit={limit!r} apply only to method 'minitron_depth' with a "
            "task scorer ('task:<name>'). Remove them."
        )
    return problems
