"""Parameter counts under the two conventions the paper uses: total and non-embedding.

Non-embedding excludes the input embedding and the output head (`lm_head`) when they are separate matrices;
pruning ratios are best read on this count (16 of 32 layers is exactly half of it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a causal LM, counted once per tensor (tied weights count once)."""

    total: int
    embedding: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "non_embedding": self.non_embedding}

    def __str__(self) -> str:
        return f"{self.total:,} parameters ({self.non_embedding:,} non-embedding)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count a Hugging Face causal LM's parameters; works on the meta device (no memory used)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = 0
    embedding_params: set[int] = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None:
            continue
        weight = module.weight
        if id(weight) not in embedding_params:
            embedding_params.add(id(weight))
            embedding += weight.numel()
    return ParameterCount(total=total, embedding=embedding)
