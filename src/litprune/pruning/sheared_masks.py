"""Sheared-LLaMA's structure masks for a Llama config: the mask set, expected sizes and the Lagrangian term.

One hard-concrete mask (`litprune.pruning.hard_concrete`) per pruned module, in units that always leave a valid
Hugging Face Llama (methods-spec section 8):

- ``layer``: `[L]`, multiplies the attention block's and the MLP block's output of each layer;
- ``head``: `[L, K]`, one unit per KV GROUP (a key/value head and the G = H/K query heads that share it). The
  reference is multi-head only and masks query heads; under grouped-query attention removing single query heads
  would leave groups of different sizes, which a Llama config cannot express, so a unit here multiplies the
  output of all G query heads of its group before `o_proj`, and pruning it removes the group's k/v rows and its
  G query heads together. With K = H (multi-head attention) this is the reference's per-head mask;
- ``intermediate``: `[L, F]`, MLP neurons (multiplies `up_proj(x)`);
- ``hidden``: `[d]`, hidden channels shared by all layers.

The target shape is the width solver's (`litprune.pruning.shapes.solve_shape(config, "width", ...)`): `d'`, `F'`
and (optionally) the KV-group count; the layer count is kept, so the layer mask is learned with the target "all
layers kept" and only its soft values survive materialisation.

The constraint is the reference's Lagrangian: for module m with `size` units per row, expected sparsity
`s_m = 1 - sum(keep scores) / size` (one value per layer for head and intermediate masks, one value for hidden
and layer), target `t_m = 1 - target / size` warmed up linearly from 0 over `warmup_steps`, and

    loss = sum_m mean( lambda1_m (s_m - t_m) + lambda2_m (s_m - t_m)^2 ).

The multipliers are trained by gradient ASCENT (a min-max game): their gradient is reversed inside the loss
(`GradientReversal`), so one ordinary optimizer with a positive learning rate moves the logits down the loss and
the multipliers up it. The class is a plain `nn.Module` with the `TrainingTerm` interface (`loss`,
`param_groups`); the callback registers it on the LightningModule.

The overall expected parameter count (from the expected kept counts, treating the modules as independent) is
computed for logging only, with the same per-layer arithmetic as `count_config_parameters`, so all-kept masks give
exactly the parent's count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from litprune.pruning.hard_concrete import (
    clamp_log_alpha_,
    deterministic_mask,
    init_log_alpha,
    keep_score,
    sample_mask,
    uniform_noise,
)
from litprune.pruning.shapes import TargetShape, check_supported_config, parent_shape

# The prunable modules, in the order masks are built, sampled and logged.
MASK_MODULES: tuple[str, ...] = ("layer", "head", "intermediate", "hidden")


@dataclass(frozen=True)
class MaskLayout:
    """Sizes of a Llama-layout model that the masks and the parameter count need.

    Attributes:
        num_layers: L.
        hidden_size: d.
        intermediate_size: F.
        num_kv_groups: K (key/value heads).
        group_size: G = H / K query heads per KV group.
        head_dim: channels per head.
        vocab_size: V.
        tied: whether `lm_head` shares the embedding matrix.
        attention_bias: q/k/v/o projections carry biases.
        mlp_bias: gate/up/down projections carry biases.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_kv_groups: int
    group_size: int
    head_dim: int
    vocab_size: int
    tied: bool
    attention_bias: bool
    mlp_bias: bool

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> MaskLayout:
        """The layout of a Llama-layout config.

        Raises:
            ValueError: not a Llama-layout family, or `num_attention_heads` not a multiple of `num_key_value_heads`.
        """
        check_supported_config(config)
        shape = parent_shape(config)
        heads, kv = shape.num_attention_heads, shape.num_key_value_heads
        if heads % kv:
            raise ValueError(
                f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}: the head masks prune "
                "whole KV groups and need every group to hold the same number of query heads."
            )
        return cls(
            num_layers=shape.num_hidden_layers,
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_kv_groups=kv,
            group_size=heads // kv,
            head_dim=shape.head_dim,
            vocab_size=int(config.vocab_size),
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(config, "attention_bias", False)),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )

    def mask_shape(self, module: str) -> tuple[int, ...]:
        """The mask shape of `module`: layer `[L]`, head `[L, K]`, intermediate `[L, F]`, hidden `[d]`."""
        return {
            "layer": (self.num_layers,),
            "head": (self.num_layers, self.num_kv_groups),
            "intermediate": (self.num_layers, self.intermediate_size),
            "hidden": (self.hidden_size,),
        }[module]

    def full_counts(self) -> dict[str, int]:
        """Units per mask row of every module (what the parent has)."""
        return {module: self.mask_shape(module)[-1] for module in MASK_MODULES}

    def parameters(self, hidden: Tensor, groups: Tensor, intermediate: Tensor, layers: Tensor) -> dict[str, Tensor]:
        """Parameter count (possibly fractional) for kept sizes: `hidden` scalar, `groups`/`intermediate`/`layers`
        `[L]` (a layer's share of its parameters). Returns `{"total", "embedding", "non_embedding"}` scalars."""
        hd, g = self.head_dim, self.group_size
        h = hidden
        attention = h * groups * hd * (2 * g + 2)  # q (G k hd x h), k and v (k hd x h each), o (h x G k hd)
        if self.attention_bias:
            attention = attention + groups * hd * (g + 2) + h
        mlp = 3 * h * intermediate
        if self.mlp_bias:
            mlp = mlp + 2 * intermediate + h
        per_layer = attention + mlp + 2 * h  # two RMSNorms
        non_embedding = (layers * per_layer).sum() + h  # final norm
        embedding = h * self.vocab_size * (1 if self.tied else 2)
        return {"total": non_embedding + embedding, "embedding": embedding, "non_embedding": non_embedding}

    def parent_parameters(self) -> dict[str, float]:
        """The parent's parameter counts by the same arithmetic as `parameters`."""
        full = torch.ones(self.num_layers, dtype=torch.float64)
        counts = self.parameters(
            torch.tensor(float(self.hidden_size), dtype=torch.float64),
            full * self.num_kv_groups,
            full * self.intermediate_size,
            full,
        )
        return {key: float(value) for key, value in counts.items()}


def target_counts(layout: MaskLayout, shape: TargetShape) -> dict[str, int]:
    """Units to keep per mask row for a width target shape: layers all kept, K', F', d'.

    Raises:
        ValueError: the target changes the layer count, `head_dim` or the query heads per KV group, or asks for
            more units than the parent has.
    """
    problems = []
    if shape.num_hidden_layers != layout.num_layers:
        problems.append(f"num_hidden_layers={shape.num_hidden_layers} (the layer masks keep all {layout.num_layers})")
    if shape.head_dim != layout.head_dim:
        problems.append(f"head_dim={shape.head_dim} (must stay {layout.head_dim})")
    if shape.num_key_value_heads * layout.group_size != shape.num_attention_heads:
        problems.append(
            f"num_attention_heads={shape.num_attention_heads} with num_key_value_heads={shape.num_key_value_heads} "
            f"(whole KV groups of {layout.group_size} query heads are pruned)"
        )
    counts = {
        "layer": shape.num_hidden_layers,
        "head": shape.num_key_value_heads,
        "intermediate": shape.intermediate_size,
        "hidden": shape.hidden_size,
    }
    for module, full in layout.full_counts().items():
        if not 1 <= counts[module] <= full:
            problems.append(f"{module} keeps {counts[module]} of {full} units")
    if problems:
        raise ValueError("The target shape cannot be reached by Sheared-LLaMA masks: " + "; ".join(problems) + ".")
    return counts


class GradientReversal(torch.autograd.Function):
    """Identity forward, negated gradient backward: turns descent on the loss into ascent for its input."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def noise_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, optimizer step, micro-batch index)."""
    state = np.random.SeedSequence([int(seed), int(step), int(micro_batch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ShearedMasks(nn.Module):
    """The learned masks and Lagrange multipliers of a Sheared-LLaMA pruning phase.

    It has the `loss()` / `param_groups(lr)` interface of `litprune.modules.training_terms.TrainingTerm`; the
    callback registers it on `CausalLM` as one (`litprune.callbacks.sheared`), so this floor needs no Lightning.

    Parameters (all in `state_dict`): `log_alpha.<module>` (mask logits) and `lambda_1.<module>`,
    `lambda_2.<module>` (scalar multipliers, starting at 0) for every module in `modules` (kept as
    `masked_modules`).

    The forward wiring (`litprune.pruning.sheared_forward`) calls `refresh(training)` once per model forward: in
    training mode it clamps the logits and draws one mask per module (shared by the whole batch) with noise from
    `noise_key` = (seed, step, micro-batch) when set; in evaluation mode it builds deterministic masks (exact
    target counts when `eval_target_counts`, else the expected counts). The hooks then read `current`.

    Args:
        layout: Sizes of the model the masks act on.
        targets: Units to keep per mask row, from `target_counts`.
        modules: The modules to learn masks for (a subset of `MASK_MODULES`); the others are not masked.
        mask_lr: Learning rate of the mask logits.
        lagrangian_lr: Learning rate of the multipliers (they ascend the loss).
        seed: Seeds the logits' initialisation and the mask noise.

    Raises:
        ValueError: an unknown module, or a target that prunes a module without a mask.
    """

    def __init__(
        self,
        layout: MaskLayout,
        targets: dict[str, int],
        modules: tuple[str, ...] = MASK_MODULES,
        mask_lr: float = 1.0,
        lagrangian_lr: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        unknown = [m for m in modules if m not in MASK_MODULES]
        if unknown:
            raise ValueError(f"modules {unknown} are unknown; choose from {list(MASK_MODULES)}.")
        full = layout.full_counts()
        unmasked = [m for m in MASK_MODULES if m not in modules and targets[m] != full[m]]
        if unmasked:
            raise ValueError(
                f"The target prunes {', '.join(f'{m} ({targets[m]} of {full[m]})' for m in unmasked)} but "
                f"modules={list(modules)} learns no mask for it; add it to modules or keep its full size."
            )
        self.layout = layout
        self.masked_modules = tuple(m for m in MASK_MODULES if m in modules)
        self.targets = {m: int(targets[m]) for m in MASK_MODULES}
        self.mask_lr, self.lagrangian_lr, self.seed = float(mask_lr), float(lagrangian_lr), int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.log_alpha = nn.ParameterDict(
            {m: nn.Parameter(init_log_alpha(layout.mask_shape(m), generator)) for m in self.masked_modules}
        )
        self.lambda_1 = nn.ParameterDict({m: nn.Parameter(torch.zeros(())) for m in self.masked_modules})
        self.lambda_2 = nn.ParameterDict({m: nn.Parameter(torch.zeros(())) for m in self.masked_modules})
        self.step = 0
        self.warmup_steps = 0
        self.noise_key: tuple[int, int] | None = None
        self.eval_target_counts = False
        self.current: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------------------- masks
    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp every logit to `[ln 0.01, ln 100]` in place."""
        for log_alpha in self.log_alpha.values():
            clamp_log_alpha_(log_alpha)

    def sample(self, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One training mask per module (differentiable in the logits); noise from `generator` (CPU)."""
        return {m: sample_mask(a, uniform_noise(tuple(a.shape), generator)) for m, a in self.log_alpha.items()}

    def deterministic(self, target_counts: bool = True) -> dict[str, Tensor]:
        """Evaluation masks: exactly the target counts per row (`target_counts`) or the expected counts."""
        return {
            m: deterministic_mask(a, self.targets[m] if target_counts else None).to(a.dtype)
            for m, a in self.log_alpha.items()
        }

    def refresh(self, training: bool) -> dict[str, Tensor]:
        """Set `current` for the next model forward: sampled (training) or deterministic masks."""
        self.clamp_()
        if training:
            generator = noise_generator(self.seed, *self.noise_key) if self.noise_key is not None else None
            self.current = self.sample(generator)
        else:
            self.current = self.deterministic(self.eval_target_counts)
        return self.current

    # ------------------------------------------------------------------------------------- expectations
    def expected_kept(self) -> dict[str, Tensor]:
        """Expected kept units per row: a scalar for layer and hidden, `[L]` for head and intermediate."""
        return {m: keep_score(a).sum(-1) for m, a in self.log_alpha.items()}

    def target_sparsity(self, step: int) -> dict[str, float]:
        """Per module, the constraint's target sparsity at optimizer `step` (linear warmup from 0)."""
        fraction = 1.0 if self.warmup_steps <= 0 else min(1.0, step / self.warmup_steps)
        full = self.layout.full_counts()
        return {m: fraction * (1.0 - self.targets[m] / full[m]) for m in self.masked_modules}

    def lagrangian(self, step: int) -> Tensor:
        """`sum_m mean(lambda1 (s - t) + lambda2 (s - t)^2)` at optimizer `step`; multipliers ascend it."""
        full = self.layout.full_counts()
        targets = self.target_sparsity(step)
        total = None
        for m, kept in self.expected_kept().items():
            gap = (1.0 - kept / full[m]) - targets[m]
            lambda_1 = GradientReversal.apply(self.lambda_1[m])
            lambda_2 = GradientReversal.apply(self.lambda_2[m])
            term = (lambda_1 * gap + lambda_2 * gap.pow(2)).mean()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def loss(self) -> Tensor | None:
        """The Lagrangian at the current `step` (set by the callback before each training step)."""
        return self.lagrangian(self.step) if self.masked_modules else None

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Two groups without weight decay: mask logits at `mask_lr`, multipliers at `lagrangian_lr` (`lr`, the
        model's LR, is not used: the reference trains these at their own rates)."""
        if not self.masked_modules:
            return []
        return [
            {"params": list(self.log_alpha.values()), "lr": self.mask_lr, "weight_decay": 0.0},
            {
                "params": list(self.lambda_1.values()) + list(self.lambda_2.values()),
                "lr": self.lagrangian_lr,
                "weight_decay": 0.0,
            },
        ]

    @torch.no_grad()
    def expected_parameters(self) -> dict[str, float]:
        """Expected parameter counts (`total`, `embedding`, `non_embedding`) under the current logits."""
        layout = self.layout
        kept = {m: v.double().cpu() for m, v in self.expected_kept().items()}
        ones = torch.ones(layout.num_layers, dtype=torch.float64)
        counts = layout.parameters(
            kept.get("hidden", torch.tensor(float(layout.hidden_size), dtype=torch.float64)),
            kept.get("head", ones * layout.num_kv_groups),
            kept.get("intermediate", ones * layout.intermediate_size),
            keep_score(self.log_alpha["layer"].double().cpu()) if "layer" in kept else ones,
        )
        return {key: float(value) for key, value in counts.items()}

    def expected_ratios(self) -> dict[str, float]:
        """Expected pruned fraction of parameters, `{"non_embedding": r, "total": r}`."""
        parent = self.layout.parent_parameters()
        expected = self.expected_parameters()
        return {key: 1.0 - expected[key] / parent[key] for key in ("non_embedding", "total")}

    def metrics(self, step: int, convention: str = "non_embedding") -> dict[str, float]:
        """Expected vs (warmed-up) target sizes per module (mean over layers for per-layer masks), multipliers, and
        the expected pruned fraction of parameters under `convention`, keyed `sheared/<name>`."""
        full = self.layout.full_counts()
        targets = self.target_sparsity(step)
        out: dict[str, float] = {}
        with torch.no_grad():
            for m, kept in self.expected_kept().items():
                out[f"sheared/expected_{m}"] = float(kept.float().mean())
                out[f"sheared/target_{m}"] = full[m] * (1.0 - targets[m])
                out[f"sheared/lambda_1_{m}"] = float(self.lambda_1[m])
                out[f"sheared/lambda_2_{m}"] = float(self.lambda_2[m])
            out[f"sheared/expected_ratio_{convention}"] = self.expected_ratios()[convention]
        return out

    def multipliers(self) -> dict[str, dict[str, float]]:
        """The current multipliers, `{module: {"lambda_1": x, "lambda_2": y}}`."""
        return {
            m: {"lambda_1": float(self.lambda_1[m].detach()), "lambda_2": float(self.lambda_2[m].detach())}
            for m in self.masked_modules
        }
