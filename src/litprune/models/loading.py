"""Loading a Hugging Face causal LM checkpoint for litprune: fp32 master weights, Llama-layout families only.

A hub id loads through `litprune.utils.hub.hub_errors`, so an offline or unreachable hub, a gated repository
without a token and a missing repository each end in one clear `HubAccessError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from litprune.utils.hub import hub_errors

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def looks_local(path: str) -> bool:
    """Whether `path` names a local directory (it exists, or starts like a path) rather than a hub id."""
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists()


def load_model_config(path: str, trust_remote_code: bool = False, what: str = "model") -> PretrainedConfig:
    """Read the `config.json` of a directory or hub id (no weights) and check the model family.

    Args:
        path: a directory written by `save_pretrained`, or a hub id.
        trust_remote_code: allow configuration code shipped with the checkpoint.
        what: what `path` is to the run ("model", "parent"), for error messages.

    Raises:
        FileNotFoundError: `path` looks local but holds no `config.json`.
        HubAccessError: a hub id the hub cannot serve (offline, unreachable, gated, missing).
        ValueError: the model family is not one litprune supports (Llama layout).
    """
    local = Path(path).expanduser()
    if looks_local(path) and not (local / "config.json").is_file():
        raise FileNotFoundError(
            f"No Hugging Face checkpoint at {path!r} (expected {local / 'config.json'}). Point the {what} at a "
            "directory written by save_pretrained, e.g. <run dir>/export of an earlier litprune run."
        )
    with hub_errors(path, what):
        config = AutoConfig.from_pretrained(str(local) if local.exists() else path, trust_remote_code=trust_remote_code)
    check_model_family(config, path)
    return config


def load_causal_lm(path: str, trust_remote_code: bool = False, what: str = "model") -> PreTrainedModel:
    """Load a causal LM in fp32 from a directory or hub id, checking its family first.

    Args:
        path: a directory written by `save_pretrained`, or a hub id.
        trust_remote_code: allow model code shipped with the checkpoint.
        what: what `path` is to the run ("model", "parent"), for error messages.

    Raises:
        FileNotFoundError: `path` looks local but does not exist.
        HubAccessError: a hub id the hub cannot serve (offline, unreachable, gated, missing).
        ValueError: the model family is not one litprune supports (Llama layout).
    """
    config = load_model_config(path, trust_remote_code=trust_remote_code, what=what)
    local = Path(path).expanduser()
    with hub_errors(path, what):
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
