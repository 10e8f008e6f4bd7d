"""How long a window a model reads: the one check of a sequence length against `max_position_embeddings`.

Llama's rotary positions are only trained (and, for long-context parents, only scaled) up to
`max_position_embeddings`, so every place that feeds a model windows of a fixed length (the training data, a
parent that will be pruned, the built model itself) asks `check_seq_len` before any work starts.
"""

from __future__ import annotations

from typing import Any


def check_seq_len(
    seq_len: int | None,
    config: Any,
    name: str = "data.init_args.seq_len",
    whose: str = "the model's",
    source: str | None = None,
    remedy: str | None = None,
) -> None:
    """Raise unless windows of `seq_len` tokens fit the positions of the model described by `config`.

    Nothing is checked when either side is unknown (`seq_len` None, or a config without `max_position_embeddings`).

    Args:
        seq_len: tokens per window.
        config: the model's config (a `PretrainedConfig`), or None.
        name: the setting that gave `seq_len`, as the user writes it; the message asks to lower it.
        whose: how the message names the model's positions, e.g. "the model's" or "the parent's".
        source: where the config came from, shown in parentheses (a preset, a parent path).
        remedy: a second fix offered after lowering `name`, e.g. "override max_position_embeddings in
            model.init_args.overrides".

    Raises:
        ValueError: `seq_len > max_position_embeddings`; the message names both values and the fix.

    Example:
        >>> check_seq_len(2048, LlamaConfig(max_position_embeddings=1024))  # doctest: +SKIP
        ValueError: data.init_args.seq_len=2048 exceeds the model's max_position_embeddings=1024. Lower
        data.init_args.seq_len to at most 1024.
    """
    max_positions = getattr(config, "max_position_embeddings", None)
    if seq_len is None or max_positions is None or int(seq_len) <= int(max_positions):
        return
    where = f" ({source})" if source else ""
    other = f", or {remedy}" if remedy else ""
    raise ValueError(
        f"{name}={seq_len} exceeds {whose} max_position_embeddings={max_positions}{where}. "
        f"Lower {name} to at most {max_positions}{other}."
    )
