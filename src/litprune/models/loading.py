"""Loading a Hugging Face causal LM checkpoint for litprune: fp32 master weights, Llama-layout families only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


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
