"""Initialisation strategies: how a run's Hugging Face causal LM gets its first weights.

Chosen in YAML by `class_path`, like any other LightningCLI object:

```yaml
model:
  init_args:
    init:
      class_path: litprune.models.init.RandomInit
      init_args: {seed: 0, scheme: normal}
```

- `RandomInit`: a seeded scratch init of the configured architecture (the `S_N` arms).
- `FromPretrained`: any Hugging Face checkpoint directory or litprune export (continued training, and the
  parent of every pruned init); a sparse export comes back with its masks.

Pruned initialisations (`P_M-R_N` arms) subclass `InitStrategy` in `litprune.pruning`; every strategy returns an
ordinary `transformers` model, so the random and the pruned arm of the same target build the same module tree.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


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


class FromPretrained(InitStrategy):
    """Load a Hugging Face causal LM checkpoint directory (or a litprune export) as the initial model.

    Nothing is downloaded unless `path` is a hub name and the hub is reachable; remote code is never run
    unless `trust_remote_code` is set.

    A sparse checkpoint (written by `litprune.pruning.sparse_export.save_sparse`, e.g. the export of a sparse
    run) comes back with its keep-masks (`InitResult.masks`, after checking that every masked-out weight is 0)
    and its `sparsity.json` in the record (`sparsity`), so a run with a `SparseMask(mask_source="module")`
    callback keeps the same pattern.

    Args:
        path: a local directory written by `save_pretrained` (litprune exports one per run, under
            `<run dir>/export`), or a hub model id.
        trust_remote_code: allow model code shipped with the checkpoint (off by default).
    """

    def __init__(self, path: str, trust_remote_code: bool = False) -> None:
        self.path = str(path)
        self.trust_remote_code = bool(trust_remote_code)

    @property
    def needs_architecture(self) -> bool:
        return False

    def build(self, config: LlamaConfig | None, data: Any = None) -> InitResult:
        model = load_causal_lm(self.path, trust_remote_code=self.trust_remote_code)
        record: dict[str, Any] = {"strategy": "from_pretrained", "path": self.path}
        local = Path(self.path).expanduser()
        masks: dict[str, torch.Tensor] = {}
        from litprune.pruning.sparse_export import MASKS_FILE, RECORD_FILE, check_zeros, load_masks

        if (local / MASKS_FILE).is_file():
            masks = load_masks(local)
            check_zeros(model, masks, f"FromPretrained({self.path!r})")
            record_file = local / RECORD_FILE
            record["sparsity"] = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
        return InitResult(model=model, record=record, masks=masks)


def load_causal_lm(path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a causal LM in fp32 from a directory or hub id, checking its family first.

    Raises:
        FileNotFoundError: `path` looks local but does not exist.
        ValueError: the model family is not one litprune supports (Llama layout).
    """
    local = Path(path).expanduser()
    if (path.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
        raise FileNotFoundError(
            f"No Hugging Face checkpoint at {path!r} (expected {local / 'config.json'}). Point init path at a "
            "directory written by save_pretrained, e.g. <run dir>/export of an earlier litprune run."
        )
    config = AutoConfig.from_pretrained(str(local) if local.exists() else path, trust_remote_code=trust_remote_code)
    check_model_family(config, path)
    model = AutoModelForCausalLM.from_pretrained(
        str(local) if local.exists() else path,
        config=config,
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
    )
    return model.train()  # from_pretrained returns eval mode; the model is about to be trained


def check_model_family(config: Any, source: str) -> None:
    """Raise a clear error unless `config` is a Llama-layout causal LM."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Model at {source!r} has model_type={model_type!r}; litprune supports Llama-layout decoders "
            f"({', '.join(SUPPORTED_MODEL_TYPES)}). Convert the checkpoint to one of these families."
        )


def _normal_(weight: torch.Tensor, std: float, generator: torch.Generator) -> None:
    sample = torch.empty(weight.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    weight.copy_(sample.to(device=weight.device, dtype=weight.dtype))


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())
