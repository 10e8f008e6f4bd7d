"""Shape solver: from a pruning ratio to the target shape of a depth- or width-pruned Llama.

The paper reads ratios on non-embedding parameters (16 of 32 layers is exactly 0.5 of them) and reports both
counts, so every plan carries the achieved ratio under BOTH conventions:

- `non_embedding`: the input embedding and a separate `lm_head` are excluded (the default);
- `total`: every parameter counts once (tied weights once).

A ratio is the pruned fraction: `1 - params(target) / params(parent)`.

Depth rule: keep the number of layers whose achieved ratio is nearest the requested one (on a tie, the one that
prunes less). Width rule: scale the hidden size `d` and the MLP size `F` by the SAME factor, so the parent's `F/d`
ratio is kept, then round `d'` to a multiple of `hidden_multiple` (and of the number of attention heads, which
transformers requires of `hidden_size`) and `F'` to a multiple of `mlp_multiple`; among the rounded candidates
the one nearest the requested ratio wins. Heads, KV groups and `head_dim` are kept, and `head_dim` is written
explicitly into the target config because `d'/H` no longer equals it. Either size can be fixed explicitly
(`target={"hidden_size": 3072}`), and the solver then finds the other one; fixing both reproduces the paper's
width target `d'=3072, F'=9216` exactly.

Attention-MLP rule (FLAP, Wanda-sp): layers and the hidden size are kept; whole KV groups (each with its
`G = H/K` query heads) and MLP neurons are removed, so `num_attention_heads = G * K'` and `head_dim` stays
explicit. For a ratio, `K'` and `F'` are scaled by the same keep factor: for every `F'` that is a multiple of
`mlp_multiple`, `K' = max(1, round(K * F'/F))`; candidates whose `G * K'` does not divide the hidden size are
skipped (transformers requires it of a Llama config, even with an explicit `head_dim`); the achieved ratio
nearest the requested one wins, ties prune less. An explicit target fixes both counts
(`{"num_key_value_heads": 5, "intermediate_size": 6528}`, or `num_attention_heads` instead of the KV count),
or one of them with a ratio for the other.

Default multiples are "hardware friendly" but scale down for tiny models: the largest power of two not above
`min(64, d // 8)` for the hidden size and `min(256, F // 8)` for the MLP (64 and 256 for Llama-3.1-8B, 8 and 16
for the tiny test preset).

Parameters are counted on the meta device (no memory is allocated), so plans for an 8B parent take milliseconds.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig

from litprune.models.params import ParameterCount, count_parameters

# Families whose decoder has the Llama layout (q/k/v/o_proj, gate/up/down_proj, two RMSNorms per layer, final
# norm, separate or tied lm_head). Qwen2 adds q/k/v biases, which the width slicer handles.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2")

CONVENTIONS: tuple[str, ...] = ("non_embedding", "total")
SHAPE_METHODS: tuple[str, ...] = ("depth", "width", "attention_mlp")

_WIDTH_TARGET_KEYS = ("hidden_size", "intermediate_size", "num_key_value_heads")
_DEPTH_TARGET_KEYS = ("num_hidden_layers",)
_ATTENTION_MLP_TARGET_KEYS = ("num_key_value_heads", "num_attention_heads", "intermediate_size")

#: Target keys each kind of shape accepts.
TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "depth": _DEPTH_TARGET_KEYS,
    "width": _WIDTH_TARGET_KEYS,
    "attention_mlp": _ATTENTION_MLP_TARGET_KEYS,
}


def check_supported_config(config: PretrainedConfig) -> None:
    """Raise unless `config` belongs to a family with the Llama decoder layout.

    Raises:
        ValueError: `config.model_type` is not in `SUPPORTED_MODEL_TYPES`.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Structured pruning supports parents with the Llama layout ({', '.join(SUPPORTED_MODEL_TYPES)}), "
            f"got model_type={model_type!r}. Load a Llama-family checkpoint (e.g. LlamaForCausalLM)."
        )


def check_ratio_open(ratio: float, name: str = "ratio") -> float:
    """Return `ratio` as a float if it lies in (0, 1); the paper's range is 0.5 to 0.8.

    Raises:
        ValueError: not a number in the open interval (0, 1).
    """
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < float(ratio) < 1.0:
        raise ValueError(
            f"{name}={ratio!r} is out of range; a structured pruning ratio is the pruned fraction of parameters, "
            "a number in (0, 1) (the paper uses 0.5 to 0.8)."
        )
    return float(ratio)


def check_convention(convention: str) -> str:
    """Return `convention` if it is one of `CONVENTIONS`.

    Raises:
        ValueError: any other value.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is unknown; use one of {', '.join(map(repr, CONVENTIONS))}.")
    return convention


def config_with_num_layers(config: PretrainedConfig, num_layers: int) -> PretrainedConfig:
    """A copy of `config` with `num_hidden_layers` (and a per-layer `layer_types` list, if any) cut to the first
    `num_layers` entries. Used for parameter counting; `remove_layers` keeps the right entries of real models."""
    new = copy.deepcopy(config)
    new.num_hidden_layers = num_layers
    layer_types = getattr(new, "layer_types", None)
    if layer_types is not None:
        new.layer_types = list(layer_types[:num_layers])
    return new


def count_config_parameters(config: PretrainedConfig) -> ParameterCount:
    """Count the parameters a model built from `config` would have, without allocating memory.

    A one-layer model is built on the meta device; every decoder layer of a supported family has the same shape,
    so the count for `L` layers is the count without layers plus `L` times one layer.
    """
    without_layers, per_layer = _fixed_and_per_layer(config)
    return ParameterCount(
        total=without_layers.total + config.num_hidden_layers * per_layer, embedding=without_layers.embedding
    )


def _fixed_and_per_layer(config: PretrainedConfig) -> tuple[ParameterCount, int]:
    """(count of everything outside the decoder layers, parameters of one decoder layer)."""
    check_supported_config(config)
    with torch.device("meta"):
        one = AutoModelForCausalLM.from_config(config_with_num_layers(config, 1))
    count = count_parameters(one)
    per_layer = sum(p.numel() for p in one.base_model.layers[0].parameters())
    return ParameterCount(total=count.total - per_layer, embedding=count.embedding), per_layer


def achieved_ratios(parent: ParameterCount, target: ParameterCount) -> dict[str, float]:
    """Pruned fraction under both conventions, `{"non_embedding": r, "total": r}`."""
    return {
        "non_embedding": 1.0 - target.non_embedding / parent.non_embedding,
        "total": 1.0 - target.total / parent.total,
    }


@dataclass(frozen=True)
class TargetShape:
    """The shape a structured method must produce. `head_dim` is always explicit."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    def as_dict(self) -> dict[str, int]:
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
        }

    def apply(self, parent_config: PretrainedConfig) -> PretrainedConfig:
        """A copy of `parent_config` carrying this shape (layer_types cut to the first layers if present)."""
        config = config_with_num_layers(parent_config, self.num_hidden_layers)
        for key, value in self.as_dict().items():
            setattr(config, key, value)
        return config


@dataclass(frozen=True)
class ShapePlan:
    """What the solver decided, with the parameter counts behind it.

    Attributes:
        method: "depth" or "width".
        shape: the target shape.
        ratio_requested: the ratio asked for (None when the shape was given explicitly).
        convention: the convention the ratio was read under.
        params_parent: parameter count of the parent.
        params_target: parameter count of the target shape.
        achieved: achieved pruned fraction under both conventions.
    """

    method: str
    shape: TargetShape
    ratio_requested: float | None
    convention: str
    params_parent: ParameterCount
    params_target: ParameterCount
    achieved: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "shape": self.shape.as_dict(),
            "ratio_requested": self.ratio_requested,
            "convention": self.convention,
            "params_parent": self.params_parent.as_dict(),
            "params_target": self.params_target.as_dict(),
            "achieved": dict(self.achieved),
        }


def parent_shape(config: PretrainedConfig) -> TargetShape:
    """The shape of `config` itself, with `head_dim` made explicit."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return TargetShape(
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=head_dim,
    )


def default_multiple(size: int, cap: int) -> int:
    """Largest power of two not above `min(cap, size // 8)` (at least 1): 64/256 for 8B, small for tiny models."""
    limit = max(1, min(cap, size // 8))
    return 1 << (limit.bit_length() - 1)


def solve_shape(
    parent_config: PretrainedConfig,
    method: str,
    ratio: float | None = None,
    target: dict[str, int] | None = None,
    convention: str = "non_embedding",
    hidden_multiple: int | None = None,
    mlp_multiple: int | None = None,
) -> ShapePlan:
    """Decide the target shape of a structured pruning run.

    Args:
        parent_config: Config of the parent (a Llama-layout family).
        method: "depth" (drop layers), "width" (shrink hidden and MLP sizes) or "attention_mlp" (remove KV groups
            and MLP neurons, FLAP / Wanda-sp).
        ratio: Pruned fraction of parameters under `convention`, in (0, 1); the paper uses 0.5 to 0.8.
        target: Explicit sizes instead of (or, for width, together with) a ratio. Depth:
            `{"num_hidden_layers": k}`. Width: `hidden_size` and/or `intermediate_size`; with only one of them and
            a ratio, the solver picks the other. Width also accepts `num_key_value_heads` (our extension: whole
            KV groups are removed together with their query heads). Attention-MLP: `num_key_value_heads` (or
            `num_attention_heads`, a multiple of the query heads per group) and/or `intermediate_size`.
        convention: "non_embedding" (default) or "total": which parameter count the ratio refers to.
        hidden_multiple: Round the width solver's hidden size to this multiple (default: see module docstring).
        mlp_multiple: Round the width solver's MLP size to this multiple (default: see module docstring).

    Returns:
        A `ShapePlan` with the shape, both parameter counts and the achieved ratio under both conventions.

    Raises:
        ValueError: unsupported parent, unknown method or target key, bad ratio, neither or both of ratio and a
            full target, a ratio that leaves no layer/channel or removes nothing, or sizes that break head/KV
            grouping.
    """
    check_supported_config(parent_config)
    check_convention(convention)
    if method not in SHAPE_METHODS:
        raise ValueError(
            f"method={method!r} is unknown for the shape solver; use one of {', '.join(map(repr, SHAPE_METHODS))}."
        )
    target = dict(target or {})
    allowed = TARGET_KEYS[method]
    unknown = sorted(set(target) - set(allowed))
    if unknown:
        raise ValueError(f"target keys {unknown} do not apply to {method} pruning; allowed keys: {', '.join(allowed)}.")
    for key, value in target.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"target[{key!r}]={value!r} must be an integer.")
    if ratio is not None:
        ratio = check_ratio_open(ratio)
    if method == "depth":
        return _solve_depth(parent_config, ratio, target.get("num_hidden_layers"), convention)
    if method == "attention_mlp":
        return _solve_attention_mlp(parent_config, ratio, target, convention, mlp_multiple)
    return _solve_width(parent_config, ratio, target, convention, hidden_multiple, mlp_multiple)


def _plan(method, parent_config, shape, ratio, convention, params_parent) -> ShapePlan:
    params_target = count_config_parameters(shape.apply(parent_config))
    return ShapePlan(
        method=method,
        shape=shape,
        ratio_requested=ratio,
        convention=convention,
        params_parent=params_parent,
        params_target=params_target,
        achieved=achieved_ratios(params_parent, params_target),
    )


def _solve_depth(parent_config, ratio, num_layers, convention) -> ShapePlan:
    base = parent_shape(parent_config)
    params_parent = count_config_parameters(parent_config)
    n = base.num_hidden_layers
    if (ratio is None) == (num_layers is None):
        raise ValueError(
            "Depth pruning needs exactly one of ratio (e.g. 0.5) or target={'num_hidden_layers': k}; "
            f"got ratio={ratio!r}, target num_hidden_layers={num_layers!r}."
        )
    if num_layers is not None:
        if not 1 <= num_layers < n:
            raise ValueError(
                f"target num_hidden_layers={num_layers} is out of range for a {n}-layer parent; "
                f"keep between 1 and {n - 1} layers."
            )
        shape = _replace(base, num_hidden_layers=num_layers)
        return _plan("depth", parent_config, shape, None, convention, params_parent)

    # Linear in the layer count: embeddings and final norm, plus k identical layers.
    fixed, per_layer = _fixed_and_per_layer(parent_config)

    def achieved(k: int) -> float:
        count = ParameterCount(total=fixed.total + k * per_layer, embedding=fixed.embedding)
        return achieved_ratios(params_parent, count)[convention]

    # From no pruning to no layer left; strict < keeps the larger k (less pruning) on a tie.
    best_k, best_gap = n, abs(achieved(n) - ratio)
    for k in range(n - 1, -1, -1):
        gap = abs(achieved(k) - ratio)
        if gap < best_gap:
            best_k, best_gap = k, gap
    if best_k == 0:
        raise ValueError(
            f"ratio={ratio} ({convention}) leaves no decoder layer of the {n}-layer parent; the largest achievable "
            f"ratio keeps 1 layer ({achieved(1):.3f}). Lower the ratio."
        )
    if best_k == n:
        raise ValueError(
            f"ratio={ratio} ({convention}) is too small to remove a whole layer of the {n}-layer parent; the "
            f"smallest achievable ratio drops 1 layer ({achieved(n - 1):.3f}). Raise the ratio."
        )
    shape = _replace(base, num_hidden_layers=best_k)
    return _plan("depth", parent_config, shape, ratio, convention, params_parent)


def _solve_width(parent_config, ratio, target, convention, hidden_multiple, mlp_multiple) -> ShapePlan:
    base = parent_shape(parent_config)
    params_parent = count_config_parameters(parent_config)
    d, f, heads, kv = base.hidden_size, base.intermediate_size, base.num_attention_heads, base.num_key_value_heads
    hidden, inter = target.get("hidden_size"), target.get("intermediate_size")
    new_kv = target.get("num_key_value_heads", kv)
    if not 1 <= new_kv <= kv:
        raise ValueError(
            f"target num_key_value_heads={new_kv} is out of range; the parent has {kv} KV groups, keep 1 to {kv}."
        )
    # Whole KV groups are removed with all their query heads, so heads per group stays H/KV.
    new_heads = new_kv * (heads // kv)
    if hidden is not None and not 1 <= hidden <= d:
        raise ValueError(f"target hidden_size={hidden} is out of range; the parent has {d}, keep 1 to {d}.")
    if inter is not None and not 1 <= inter <= f:
        raise ValueError(f"target intermediate_size={inter} is out of range; the parent has {f}, keep 1 to {f}.")
    if hidden is not None and hidden % new_heads != 0:
        raise ValueError(
            f"target hidden_size={hidden} is not a multiple of num_attention_heads={new_heads}, which transformers "
            f"requires of a Llama config (head_dim stays explicit at {base.head_dim}). Choose a multiple of "
            f"{new_heads}, e.g. {max(new_heads, hidden // new_heads * new_heads)}."
        )
    fixed_both = hidden is not None and inter is not None
    if fixed_both and ratio is not None:
        raise ValueError(
            f"Both hidden_size={hidden} and intermediate_size={inter} were given together with ratio={ratio}; "
            "the sizes alone fix the shape. Drop the ratio, or one of the sizes to let the solver pick it."
        )
    if not fixed_both and ratio is None:
        raise ValueError(
            "Width pruning needs a ratio (e.g. 0.5) or an explicit target with both hidden_size and "
            "intermediate_size (e.g. {'hidden_size': 3072, 'intermediate_size': 9216})."
        )

    def shape_for(h: int, i: int) -> TargetShape:
        return TargetShape(
            num_hidden_layers=base.num_hidden_layers,
            hidden_size=h,
            intermediate_size=i,
            num_attention_heads=new_heads,
            num_key_value_heads=new_kv,
            head_dim=base.head_dim,
        )

    if fixed_both:
        return _plan("width", parent_config, shape_for(hidden, inter), None, convention, params_parent)

    hidden_multiple = hidden_multiple or default_multiple(d, 64)
    mlp_multiple = mlp_multiple or default_multiple(f, 256)
    for name, value in (("hidden_multiple", hidden_multiple), ("mlp_multiple", mlp_multiple)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    hidden_step = math.lcm(hidden_multiple, new_heads)
    if hidden is None and hidden_step > d:
        raise ValueError(
            f"No hidden size is a multiple of {hidden_step} (lcm of hidden_multiple={hidden_multiple} and "
            f"{new_heads} heads) and at most {d}. Use a smaller hidden_multiple."
        )
    if inter is None and mlp_multiple > f:
        raise ValueError(f"mlp_multiple={mlp_multiple} exceeds the parent's intermediate_size={f}; use a smaller one.")

    if hidden is None and inter is None:
        # Same factor on d and F keeps the parent's F/d ratio.
        hs = list(range(hidden_step, d + 1, hidden_step))
        candidates = [(h, min(f, max(mlp_multiple, _round_to(f * h / d, mlp_multiple)))) for h in hs]
    elif hidden is None:
        candidates = [(h, inter) for h in range(hidden_step, d + 1, hidden_step)]
    else:
        candidates = [(hidden, i) for i in range(mlp_multiple, f + 1, mlp_multiple)]

    def achieved(h: int, i: int) -> float:
        count = count_config_parameters(shape_for(h, i).apply(parent_config))
        return achieved_ratios(params_parent, count)[convention]

    # Largest candidates first with strict <: a tie goes to the shape that prunes less.
    scored = [(abs(achieved(h, i) - ratio), h, i) for h, i in sorted(candidates, reverse=True)]
    best_gap, best_h, best_i = scored[0]
    for gap, h, i in scored[1:]:
        if gap < best_gap:
            best_gap, best_h, best_i = gap, h, i
    smallest_h, smallest_i = min(candidates)
    # Removing every channel would reach ratio ~1; if that is nearer than any candidate, refuse.
    if abs(1.0 - ratio) < best_gap:
        raise ValueError(
            f"ratio={ratio} ({convention}) leaves no channel at the allowed rounding; the largest achievable ratio "
            f"is {achieved(smallest_h, smallest_i):.3f} (hidden_size={smallest_h}, intermediate_size={smallest_i}). "
            "Lower the ratio or use smaller hidden_multiple / mlp_multiple."
        )
    if (best_h, best_i) == (d, f) and new_kv == kv:
        raise ValueError(
            f"ratio={ratio} ({convention}) is too small to remove anything at the allowed rounding "
            f"(hidden multiple {hidden_step}, MLP multiple {mlp_multiple}). Raise the ratio or use smaller multiples."
        )
    return _plan("width", parent_config, shape_for(best_h, best_i), ratio, convention, params_parent)


def _solve_attention_mlp(parent_config, ratio, target, convention, mlp_multiple) -> ShapePlan:
    base = parent_shape(parent_config)
    params_parent = count_config_parameters(parent_config)
    d, f, heads, kv = base.hidden_size, base.intermediate_size, base.num_attention_heads, base.num_key_value_heads
    per_group = heads // kv
    new_kv, inter = target.get("num_key_value_heads"), target.get("intermediate_size")
    new_heads = target.get("num_attention_heads")
    if new_heads is not None:
        if new_heads % per_group != 0 or not 1 <= new_heads <= heads:
            raise ValueError(
                f"target num_attention_heads={new_heads} cannot be reached by removing whole KV groups: the parent has "
                f"{heads} query heads in {kv} groups of {per_group}, so keep a multiple of {per_group} between "
                f"{per_group} and {heads}."
            )
        if new_kv is not None and new_kv * per_group != new_heads:
            raise ValueError(
                f"target num_attention_heads={new_heads} and num_key_value_heads={new_kv} disagree: whole-group "
                f"removal keeps {per_group} query heads per KV group, so {new_kv} groups have "
                f"{new_kv * per_group} heads."
            )
        new_kv = new_heads // per_group
    if new_kv is not None and not 1 <= new_kv <= kv:
        raise ValueError(f"target num_key_value_heads={new_kv} is out of range; the parent has {kv}, keep 1 to {kv}.")
    if new_kv is not None and d % (new_kv * per_group) != 0:
        fitting = [k for k in range(1, kv + 1) if d % (k * per_group) == 0]
        raise ValueError(
            f"target num_key_value_heads={new_kv} gives num_attention_heads={new_kv * per_group}, and transformers "
            f"{transformers.__version__} requires a Llama config's hidden_size={d} to be a multiple of "
            f"num_attention_heads even with an explicit head_dim={base.head_dim}, so the result could not be "
            "saved and reloaded as a Hugging Face Llama. "
            f"KV-group counts that fit: {fitting}."
        )
    if inter is not None and not 1 <= inter <= f:
        raise ValueError(f"target intermediate_size={inter} is out of range; the parent has {f}, keep 1 to {f}.")
    fixed_both = new_kv is not None and inter is not None
    if fixed_both and ratio is not None:
        raise ValueError(
            f"Both the KV-group count ({new_kv}) and intermediate_size={inter} were given together with ratio={ratio}; "
            "the counts alone fix the shape. Drop the ratio, or one of the counts to let the solver pick it."
        )
    if not fixed_both and ratio is None:
        raise ValueError(
            "Attention-MLP pruning needs a ratio (e.g. 0.5) or an explicit target with both num_key_value_heads and "
            "intermediate_size (e.g. {'num_key_value_heads': 5, 'intermediate_size': 6528})."
        )

    def shape_for(k: int, i: int) -> TargetShape:
        return _replace(base, num_key_value_heads=k, num_attention_heads=k * per_group, intermediate_size=i)

    if fixed_both:
        return _plan("attention_mlp", parent_config, shape_for(new_kv, inter), None, convention, params_parent)

    mlp_multiple = mlp_multiple or default_multiple(f, 256)
    if isinstance(mlp_multiple, bool) or not isinstance(mlp_multiple, int) or mlp_multiple < 1:
        raise ValueError(f"mlp_multiple={mlp_multiple!r} must be a positive integer.")
    if inter is None and mlp_multiple > f:
        raise ValueError(f"mlp_multiple={mlp_multiple} exceeds the parent's intermediate_size={f}; use a smaller one.")
    fits = [k for k in range(1, kv + 1) if d % (k * per_group) == 0]
    if new_kv is None and inter is None:
        # The same keep factor on groups and neurons.
        candidates = {
            (min(fits, key=lambda k, i=i: (abs(k - kv * i / f), -k)), i)
            for i in range(mlp_multiple, f + 1, mlp_multiple)
        }
    elif new_kv is None:
        candidates = {(k, inter) for k in fits}
    else:
        candidates = {(new_kv, i) for i in range(mlp_multiple, f + 1, mlp_multiple)}

    def achieved(k: int, i: int) -> float:
        count = count_config_parameters(shape_for(k, i).apply(parent_config))
        return achieved_ratios(params_parent, count)[convention]

    scored = sorted(candidates, reverse=True)  # largest first with strict <: a tie prunes less
    best, best_gap = scored[0], abs(achieved(*scored[0]) - ratio)
    for candidate in scored[1:]:
        gap = abs(achieved(*candidate) - ratio)
        if gap < best_gap:
            best, best_gap = candidate, gap
    smallest = min(candidates)
    if abs(1.0 - ratio) < best_gap:
        raise ValueError(
            f"ratio={ratio} ({convention}) leaves no unit at the allowed rounding; the largest achievable ratio is "
            f"{achieved(*smallest):.3f} (num_key_value_heads={smallest[0]}, intermediate_size={smallest[1]}). "
            "Lower the ratio or use a smaller mlp_multiple."
        )
    if best == (kv, f):
        raise ValueError(
            f"ratio={ratio} ({convention}) is too small to remove anything at the allowed rounding (MLP multiple "
            f"{mlp_multiple}, whole KV groups). Raise the ratio or use a smaller mlp_multiple."
        )
    return _plan("attention_mlp", parent_config, shape_for(*best), ratio, convention, params_parent)


def _round_to(value: float, multiple: int) -> int:
    return int(round(value / multiple)) * multiple


def _replace(shape: TargetShape, **changes: int) -> TargetShape:
    return TargetShape(**{**shape.as_dict(), **changes})
