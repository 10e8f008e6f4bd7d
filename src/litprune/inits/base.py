"""The initialisation protocol: how a run's Hugging Face causal LM gets its first weights.

Every strategy is a small class the YAML names by `class_path`, like any other LightningCLI object:

```yaml
model:
  init_args:
    init:
      class_path: litprune.inits.RandomInit
      init_args: {seed: 0, scheme: normal}
```

A strategy's `build` returns an `InitResult`: an ordinary `transformers` model (so the random and the pruned arm
of the same target build the same module tree), its provenance record, the keep-masks of a sparse init and the
tokens the init consumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LlamaConfig, PreTrainedModel


@dataclass
class InitResult:
    """What an initialisation produced.

    Attributes:
        model: the Hugging Face causal LM, in training dtype (fp32 master weights).
        record: JSON-serialisable provenance (strategy, seed, source path, ...), stored with every run.
        masks: sparsity keep-masks keyed by parameter name of `model`, when the init is a sparse pruned one.
        tokens: tokens this init consumed (e.g. calibration), for the run's token ledger.
    """

    model: PreTrainedModel
    record: dict[str, Any]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)


class InitStrategy(ABC):
    """Builds the model a run starts from."""

    @abstractmethod
    def build(self, config: LlamaConfig | None, data: Any = None) -> InitResult:
        """Return the initial model.

        Args:
            config: the architecture the run asked for (preset + overrides), or None when the strategy
                takes its architecture from a checkpoint (`needs_architecture` is False).
            data: the run's data module (a set-up `TokenDataModule`: tokenizer, token store, named slices),
                for strategies that calibrate on data; None outside a Trainer.
        """

    @property
    def needs_architecture(self) -> bool:
        """Whether `build` needs a configured architecture (True for scratch inits)."""
        return True

    @property
    def prunes_parent(self) -> bool:
        """Whether `build` loads a parent and prunes it (`StructuredPrune`, `SparsePrune`).

        Such a build runs in one process: a run of several processes takes its result from `litprune prune`, which
        writes the pruned model once, and starts from it with `FromPretrained` (`litprune.inits.pruned`).
        """
        return False
