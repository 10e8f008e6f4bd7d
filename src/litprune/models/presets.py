"""Named Llama shapes: the parent, the paper's target shapes, and tiny CPU sizes.

A preset is plain data (a dict of `LlamaConfig` fields), never a class: any field can be overridden from YAML,
so tests and laptop demos use the same real architecture as the 8B run, only shrunk.

Presets whose `vocab_size` is None take the vocabulary of the run's tokenizer (the embedded corpus trains its
own byte-level BPE), so a tiny model always matches its data.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig

from litprune.utils.suggest import did_you_mean

_LLAMA31_8B: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: for tests. The shape methods-spec section 11 suggests for invariant tests.
    "tiny": {
        "vocab_size": None,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # Minutes on a laptop CPU: the demo parent (about 1.8M parameters with the default 4096-token vocabulary).
    "small": {
        "vocab_size": None,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # The paper's parent architecture (Meta's shapes; the paper pretrains it from scratch on DCLM).
    "llama3.1-8b": dict(_LLAMA31_8B),
    # Paper target at ratio 0.5, depth: 16 of 32 layers.
    "llama3.1-8b-depth16": {**_LLAMA31_8B, "num_hidden_layers": 16},
    # Paper target at ratio 0.5, width: hidden 3072, MLP 9216, heads kept, explicit head_dim 128.
    "llama3.1-8b-width": {**_LLAMA31_8B, "hidden_size": 3072, "intermediate_size": 9216},
}


def preset_names() -> list[str]:
    """The names accepted wherever a preset is asked for."""
    return sorted(PRESETS)


def preset_fields(name: str) -> dict[str, Any]:
    """Return a copy of the fields of preset `name`.

    Raises:
        ValueError: `name` is not a preset; the message lists the close matches and all names.
    """
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS)
        raise ValueError(f"Unknown model preset {name!r}.{hint} Available presets: {', '.join(preset_names())}.")
    return dict(PRESETS[name])


def build_llama_config(
    preset: str, overrides: dict[str, Any] | None = None, vocab_size: int | None = None
) -> LlamaConfig:
    """Build a `LlamaConfig` from a preset, field overrides and (for presets without one) a vocabulary size.

    Args:
        preset: A name from `preset_names()`.
        overrides: Any `LlamaConfig` fields to replace, e.g. `{"num_hidden_layers": 2}`.
        vocab_size: Used when neither the preset nor `overrides` fixes the vocabulary (the tokenizer's size).

    Raises:
        ValueError: unknown preset or field, or no vocabulary size could be decided.
    """
    fields = preset_fields(preset)
    overrides = dict(overrides or {})
    known = set(LlamaConfig().to_dict()) | {"rope_theta", "head_dim"}
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise ValueError(
            f"Unknown LlamaConfig field(s) {unknown} in model overrides for preset {preset!r}. "
            "Use field names of transformers.LlamaConfig, e.g. num_hidden_layers, hidden_size, intermediate_size."
        )
    fields.update(overrides)
    if fields.get("vocab_size") is None:
        if vocab_size is None:
            raise ValueError(
                f"Preset {preset!r} takes its vocab_size from the tokenizer, but none was given. "
                "Set model overrides {vocab_size: N} or train with a data module that provides a tokenizer."
            )
        fields["vocab_size"] = vocab_size
    rope_theta = fields.pop("rope_theta", None)
    if rope_theta is not None:
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": float(rope_theta)}
    config = LlamaConfig(**fields)
    _check_attention_shape(config, preset)
    return config


def _check_attention_shape(config: LlamaConfig, preset: str) -> None:
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if heads % kv != 0:
        raise ValueError(
            f"Model preset {preset!r}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}; "
            "grouped-query attention needs whole groups. Choose num_key_value_heads dividing num_attention_heads."
        )
    if getattr(config, "head_dim", None) is None:
        if config.hidden_size % heads != 0:
            raise ValueError(
                f"Model preset {preset!r}: hidden_size={config.hidden_size} is not divisible by "
                f"num_attention_heads={heads}; set an explicit head_dim."
            )
