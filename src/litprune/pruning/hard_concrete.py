"""The hard-concrete distribution of Sheared-LLaMA's L0 masks (Louizos et al.), as pure tensor functions.

Each structural unit (a layer, a KV group, an MLP neuron, a hidden channel) has a learnable logit `log_alpha`.
A training mask is a sample of a stretched and clamped binary concrete variable, so it is exactly 0 or exactly 1
with positive probability and differentiable in `log_alpha` in between (methods-spec section 8.2):

    u ~ U(eps, 1 - eps)
    s = sigmoid((ln u - ln(1 - u) + log_alpha) / beta)
    z = clamp(s * (r - l) + l, 0, 1)

with the reference's constants: stretch limits `l = -0.1`, `r = 1.1`, temperature `beta = 2/3`, `eps = 1e-6`.
The probability that a unit is pruned is `P(z = 0) = sigmoid(beta * ln(-l / r) - log_alpha)`, and its "keep score"
is `1 - P(z = 0)`; the expected number of kept units is the sum of keep scores. Logits start at
`N(5, 0.01^2)` (almost surely kept) and are clamped to `[ln 0.01, ln 100]` before every use.

The deterministic (evaluation) mask is `sigmoid(0.8 * log_alpha / beta)` with its smallest entries of each row set
to exactly 0; the other entries KEEP their soft value (about 0.996 at the upper clamp), which materialisation
folds into the weights. How many entries are zeroed is the caller's choice: exactly `size - target` (the
reference's `eval_target_model`) or `round(sum P(z = 0))` (`expected_zeros`). Ties are broken towards the lower
index (stable sort), so the mask is a function of `log_alpha` alone.

Noise is passed in (or drawn from a given `torch.Generator`), never from the global RNG, so a caller can make
every draw a pure function of (seed, step, micro-batch) and resume without any RNG state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LIMIT_LEFT = -0.1  # l: lower stretch limit
LIMIT_RIGHT = 1.1  # r: upper stretch limit
TEMPERATURE = 2.0 / 3.0  # beta
EPSILON = 1e-6  # uniform noise is drawn from (EPSILON, 1 - EPSILON)
INIT_MEAN = 5.0  # log_alpha ~ N(INIT_MEAN, INIT_STD^2) at initialisation
INIT_STD = 0.01
LOG_ALPHA_MIN = math.log(0.01)  # log_alpha is clamped to [LOG_ALPHA_MIN, LOG_ALPHA_MAX] before every use
LOG_ALPHA_MAX = math.log(100.0)
DETERMINISTIC_SCALE = 0.8  # soft evaluation mask: sigmoid(DETERMINISTIC_SCALE * log_alpha / TEMPERATURE)


def init_log_alpha(shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """Fresh logits `~ N(INIT_MEAN, INIT_STD^2)` of `shape` (float32, CPU)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32) * INIT_STD + INIT_MEAN


@torch.no_grad()
def clamp_log_alpha_(log_alpha: Tensor) -> Tensor:
    """Clamp `log_alpha` in place to `[ln 0.01, ln 100]` (the reference's `constrain_parameters`); returns it."""
    return log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def uniform_noise(shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """`u ~ U(EPSILON, 1 - EPSILON)` of `shape` (float32, CPU)."""
    return torch.rand(shape, generator=generator, dtype=torch.float32) * (1.0 - 2.0 * EPSILON) + EPSILON


def sample_mask(log_alpha: Tensor, noise: Tensor) -> Tensor:
    """A training mask `z` in [0, 1] for uniform `noise` of the same shape; differentiable in `log_alpha`."""
    noise = noise.to(device=log_alpha.device, dtype=log_alpha.dtype)
    s = torch.sigmoid((torch.log(noise) - torch.log1p(-noise) + log_alpha) / TEMPERATURE)
    return (s * (LIMIT_RIGHT - LIMIT_LEFT) + LIMIT_LEFT).clamp(0.0, 1.0)


def prob_zero(log_alpha: Tensor) -> Tensor:
    """`P(z = 0) = sigmoid(beta * ln(-l / r) - log_alpha)`, elementwise (the reference's `cdf_qz(0)`)."""
    return torch.sigmoid(TEMPERATURE * math.log(-LIMIT_LEFT / LIMIT_RIGHT) - log_alpha)


def keep_score(log_alpha: Tensor) -> Tensor:
    """`1 - P(z = 0)`: the probability that each unit is kept; its sum is the expected number of kept units."""
    return 1.0 - prob_zero(log_alpha)


def expected_zeros(log_alpha: Tensor) -> Tensor:
    """Per row (last dimension), `round(sum P(z = 0))`: the pruned count without a target (long tensor)."""
    return torch.round(prob_zero(log_alpha.detach()).sum(-1)).long()


def soft_mask(log_alpha: Tensor) -> Tensor:
    """`sigmoid(0.8 * log_alpha / beta)`: the values a deterministic mask keeps."""
    return torch.sigmoid(DETERMINISTIC_SCALE * log_alpha / TEMPERATURE)


def deterministic_mask(log_alpha: Tensor, keep: int | None = None) -> Tensor:
    """The evaluation mask: per row (last dimension), the smallest soft values set to exactly 0, the others kept.

    Args:
        log_alpha: Logits `[n]` or `[rows, n]`.
        keep: Nonzeros to keep in every row (the target count). None zeroes `round(sum P(z = 0))` entries per row.

    Returns:
        A mask of the shape of `log_alpha`, without gradient.

    Raises:
        ValueError: `keep` is not in `0..n`.
    """
    log_alpha = log_alpha.detach()
    rows = log_alpha.reshape(-1, log_alpha.shape[-1]) if log_alpha.dim() else log_alpha.reshape(1, 1)
    size = rows.shape[-1]
    if keep is not None and not 0 <= keep <= size:
        raise ValueError(f"keep={keep} must be between 0 and the mask size {size}.")
    soft = soft_mask(rows)
    if keep is None:
        zeros = expected_zeros(rows).clamp(0, size).tolist()
    else:
        zeros = [size - keep] * rows.shape[0]
    out = soft.clone()
    for i, count in enumerate(zeros):
        if count:
            order = torch.sort(soft[i], stable=True).indices[:count]
            out[i, order] = 0.0
    return out.reshape(log_alpha.shape)
