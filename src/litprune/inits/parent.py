"""The parent of a pruned initialisation: its config, its litprune provenance, and the checks that the run's data
fits it (same tokenizer, training windows within its positions). Shared by the structured and sparse inits; the
data checks also serve `FromPretrained`, whose checkpoint is a parent the run continues unpruned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from litprune.models.loading import load_model_config, looks_local
from litprune.models.positions import check_seq_len


def read_parent_config(parent: str) -> PretrainedConfig:
    """Read the parent's `config.json` (no weights) and check it is a Llama-layout model.

    Raises:
        FileNotFoundError: `parent` looks local but holds no `config.json`.
        HubAccessError: a hub id the hub cannot serve (offline, unreachable, gated, missing).
        ValueError: the parent's `model_type` is not a Llama-layout family.
    """
    local = Path(parent).expanduser()
    if looks_local(parent) and not (local / "config.json").is_file():
        raise FileNotFoundError(
            f"No parent checkpoint at {parent!r} (expected {local / 'config.json'}). Point parent at a directory "
            "written by save_pretrained, e.g. runs/tiny_scratch/export after `litprune fit --config "
            "configs/experiment/tiny_scratch.yaml`."
        )
    return load_model_config(parent, what="parent")


def parent_record(parent: str) -> dict[str, Any]:
    """The parent's path, plus its own run record (arm, tokens seen, ...) when it is a litprune export."""
    record: dict[str, Any] = {"path": parent}
    run = _litprune_record(parent).get("run")
    if run:
        record["run"] = {key: run.get(key) for key in ("arm", "max_tokens", "tokens_seen", "parameters")}
    return record


def check_run_data(parent: str, parent_config: PretrainedConfig, data: Any, role: str = "parent") -> None:
    """Check that the run's data fits the parent: same tokenizer, training windows within its positions.

    Nothing is checked when `data` is None (outside a Trainer). The tokenizer must be the parent's: the parent's
    `vocab_size` must equal the tokenizer's size, except when the parent's own tokenizer (exported with it, or the
    run loads its tokenizer from the parent's path or hub id) is the run's tokenizer, which proves a padded
    embedding; and where the parent records its tokenizer (its tokenizer files or `litprune.json`), it must be the
    same tokenizer. Run it before loading the weights, so a mismatch costs no load.

    Args:
        parent: the parent's directory or hub id.
        parent_config: its config (`read_parent_config`).
        data: the run's data module (its `tokenizer` or `load_tokenizer()`, `seq_len`, `tokenizer_name`), or None.
        role: what the parent is to the run, for the messages: "parent" (pruned inits) or "checkpoint"
            (`FromPretrained`).

    Raises:
        ValueError: tokenizer mismatch (both sizes are named), or `data.seq_len` above the parent's positions.
    """
    if data is None:
        return
    tokenizer = run_tokenizer(data)
    if tokenizer is not None:
        same_source = getattr(data, "tokenizer_name", None) == parent
        _check_tokenizer(parent, parent_config, tokenizer, role, same_source)
    check_seq_len(getattr(data, "seq_len", None), parent_config, whose=f"the {role}'s", source=repr(parent))


def _check_tokenizer(
    parent: str, parent_config: PretrainedConfig, tokenizer: Any, role: str, same_source: bool
) -> None:
    from litprune.data.tokenizer import tokenizer_identity

    run_size, parent_vocab = len(tokenizer), int(parent_config.vocab_size)
    try:
        run_identity = tokenizer_identity(tokenizer)
    except TypeError:
        run_identity = None  # a slow tokenizer has no identity hash; the size checks still apply
    parent_size, parent_identity = (run_size, run_identity) if same_source else _parent_tokenizer(parent)
    if run_identity is not None and parent_identity is not None and run_identity != parent_identity:
        raise ValueError(
            f"The run's tokenizer ({run_size} tokens, identity {run_identity[:12]}) is not the {role}'s tokenizer "
            f"({parent_size} tokens, identity {parent_identity[:12]}, recorded in {parent!r}); the {role}'s "
            f"embedding rows ({parent_vocab}) belong to its own tokenizer. Set data.init_args.tokenizer to the "
            f"{role}'s tokenizer (a litprune export holds it) or use the {role}'s data settings."
        )
    padded = parent_size == run_size and (parent_identity is not None or same_source) and run_size <= parent_vocab
    if run_size != parent_vocab and not padded:
        raise ValueError(
            f"The run's tokenizer has {run_size} tokens but the {role} {parent!r} has vocab_size={parent_vocab}: "
            f"the model keeps the {role}'s embedding, so the run must use the {role}'s tokenizer. Set "
            f"data.init_args.tokenizer (or vocab_size for the embedded BPE) to the {role}'s."
        )


def _parent_tokenizer(parent: str) -> tuple[int | None, str | None]:
    """(size, identity) of the tokenizer the parent records, or (None, None) when it records none."""
    from litprune.data.tokenizer import tokenizer_identity

    local = Path(parent).expanduser()
    if (local / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        parent_tokenizer = AutoTokenizer.from_pretrained(str(local))
        try:
            return len(parent_tokenizer), tokenizer_identity(parent_tokenizer)
        except TypeError:
            return len(parent_tokenizer), None
    data = _litprune_record(parent).get("data") or {}
    if data.get("tokenizer"):
        return data.get("vocab_size"), data["tokenizer"]
    return None, None


def _litprune_record(parent: str) -> dict[str, Any]:
    path = Path(parent).expanduser() / "litprune.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({err}); the parent's run record is damaged. Restore it, or delete it "
            "to prune the parent without its litprune provenance."
        ) from err


def run_tokenizer(data: Any) -> Any:
    """The run's tokenizer from its data module (loading it if needed), or None without one."""
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is None and hasattr(data, "load_tokenizer"):
        tokenizer = data.load_tokenizer()
    return tokenizer


def local_config_path(parent: str) -> Path | None:
    """The parent's `config.json` when the parent is a local directory that holds one, else None."""
    path = Path(parent).expanduser() / "config.json"
    return path if path.is_file() else None
