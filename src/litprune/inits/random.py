"""`RandomInit`: a seeded scratch init of the configured architecture (the `S_N` arms)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from litprune.inits.base import InitResult, InitStrategy


class RandomInit(InitStrategy):
    """Seeded random init of the configured architecture.

    Schemes:
        normal: Hugging Face's Llama default: every Linear and the embedding drawn from N(0, std^2)
            (std = 0.02), RMSNorm gains 1.
        fan_in: the paper's trainer (MaxText): embedding N(0, std^2); every Linear N(0, 1/fan_in)
            (std 1/sqrt(in_features)), RMSNorm gains 1.

    Weights are drawn in fp32 from a dedicated `torch.Generator(seed)`, module by module in `named_modules`
    order, so the same seed and architecture give the same weights on any machine, regardless of the global
    RNG state.

    Args:
        seed: seed of the generator.
        scheme: "normal" (default) or "fan_in".
        std: the standard deviation of the normal scheme and of the embedding in both schemes.
    """

    def __init__(self, seed: int = 0, scheme: Literal["normal", "fan_in"] = "normal", std: float = 0.02) -> None:
        if scheme not in ("normal", "fan_in"):
            raise ValueError(f"RandomInit scheme={scheme!r} is unknown; use 'normal' or 'fan_in'.")
        if not std > 0:
            raise ValueError(f"RandomInit std={std!r} must be positive.")
        self.seed = int(seed)
        self.scheme = scheme
        self.std = float(std)

    def build(self, config: LlamaConfig | None, data: Any = None) -> InitResult:
        if config is None:
            raise ValueError("RandomInit needs an architecture: set model.init_args.preset (and overrides).")
        model = LlamaForCausalLM(config)
        if not _on_meta(model):
            self.apply(model)
        record = {"strategy": "random", "seed": self.seed, "scheme": self.scheme, "std": self.std}
        return InitResult(model=model, record=record)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Re-initialise every weight of `model` in place."""
        generator = torch.Generator().manual_seed(self.seed)
        for _, module in model.named_modules():
            if isinstance(module, nn.Linear):
                std = self.std if self.scheme == "normal" else 1.0 / math.sqrt(module.in_features)
                _normal_(module.weight, std, generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                _normal_(module.weight, self.std, generator)
            elif type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)


def _normal_(weight: torch.Tensor, std: float, generator: torch.Generator) -> None:
    sample = torch.empty(weight.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    weight.copy_(sample.to(device=weight.device, dtype=weight.dtype))


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())
