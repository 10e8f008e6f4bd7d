"""Perplexity under the paper's protocol: one tokenization, one BOS, non-overlapping windows, a window cap.

The protocol (paper, "Evaluation protocol"; reference code llm-pruning-collection
`pruning/minitron/utils.py::get_ppl`):

1. The whole text is tokenized once, without special tokens, and a single BOS id is put in front
   (`[BOS] + encode(text)`; the EOS id stands in when the tokenizer has no BOS). Only the stream's first window
   starts with it; no window gets a BOS of its own.
2. The stream is cut into `len // window_length` non-overlapping windows of exactly `window_length` tokens
   (window k = tokens `[k * window_length, (k + 1) * window_length)`); the tail shorter than a window is dropped.
3. At most `max_windows` of them are evaluated. Selection `spread` (the default) takes windows evenly spread over
   the whole stream, `np.linspace(0, available - 1, max_windows).round()` de-duplicated, so a capped evaluation
   reads the whole text and not one corner of it; `first` takes the first `max_windows`, as the reference code
   does. With no more windows than the cap, both take them all.
4. Each window is one forward pass; position t predicts token t+1, so a window contributes
   `window_length - 1` predicted tokens (its first token is context only).
5. PPL = exp(sum of token cross-entropies / number of predicted tokens), computed in float32 or wider.

Because the numbers that do not reproduce across papers differ exactly in the split, the window length and
the number and choice of windows, every `PerplexityResult` states all of them, with the token counts, and the
mean loss of every window (`window_nll`, with `window_starts`), so two models evaluated on the same text and
tokenizer can be compared window by window (paired).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from litprune.eval.borrow import borrowed, check_tokenizer_fits, embedding_rows, model_device
from litprune.eval.text_sources import TextSource
from litprune.models.positions import check_seq_len

PAPER_WINDOW_LENGTH = 8192
PAPER_MAX_WINDOWS = 256
WINDOW_SELECTIONS = ("spread", "first")
"""How `max_windows` windows are chosen among more: evenly spread over the stream, or the first ones."""


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one text under the windowed protocol.

    Attributes:
        source: the text source (`c4`, `embedded`, a path, ...).
        split: the split the text came from.
        perplexity: exp(mean_loss).
        mean_loss: mean token cross-entropy in nats.
        window_length: tokens per window (the model's input length).
        num_windows: windows evaluated.
        num_tokens: tokens predicted, `num_windows * (window_length - 1)`.
        text_tokens: tokens in the whole tokenized text, BOS included.
        max_windows: the cap on windows that was in force.
        text_sha256: hash of the text, when known, to check that two results share their text.
        selection: how the windows were chosen when more were available than `max_windows` (`spread` or
            `first`, see the module docstring).
        window_starts: token offset of each evaluated window in the stream, in order (`num_windows` ints).
        window_nll: mean cross-entropy (nats) of each window's predicted tokens, in the order of `window_starts`.
        window_tokens: predicted tokens of each window (`window_length - 1` each).
    """

    source: str
    split: str
    perplexity: float
    mean_loss: float
    window_length: int
    num_windows: int
    num_tokens: int
    text_tokens: int
    max_windows: int
    text_sha256: str | None = None
    selection: str = "spread"
    window_starts: list[int] = field(default_factory=list)
    window_nll: list[float] = field(default_factory=list)
    window_tokens: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


SEQ_LEN_SOURCES = ("explicit", "training", "model_context")
"""Which rule picked the perplexity window: the caller's seq_len, the producing run's training seq_len, or the
paper's 8192 capped at the model's context length."""


def choose_window_length(
    model: Any, requested: int | None, training_seq_len: int | None = None, training_source: str | None = None
) -> tuple[int, str]:
    """The window to use and the rule that picked it (one of `SEQ_LEN_SOURCES`).

    `requested` when given (`explicit`); else the producing run's training `seq_len` when known (`training`): the
    model is scored on windows as long as those it was trained on; else the paper's 8192 capped at the model's
    `max_position_embeddings` (`model_context`).

    Args:
        model: the model (its `config.max_position_embeddings` bounds the window).
        requested: the caller's window length, or None.
        training_seq_len: the training run's `seq_len`, or None when unknown.
        training_source: where `training_seq_len` was read (named in the error).

    Raises:
        ValueError: the requested or training window exceeds the model's context length.
    """
    max_positions = getattr(model.config, "max_position_embeddings", None)
    context_default = min(PAPER_WINDOW_LENGTH, max_positions or PAPER_WINDOW_LENGTH)
    if requested is not None:
        check_seq_len(requested, model.config, name="seq_len", remedy=f"leave seq_len unset to use {context_default}")
        return requested, "explicit"
    if training_seq_len is not None:
        if max_positions is not None and training_seq_len > max_positions:
            where = f" (read from {training_source})" if training_source else ""
            raise ValueError(
                f"The training run's seq_len={training_seq_len}{where} exceeds the model's max_position_embeddings="
                f"{max_positions}, so it cannot be the perplexity window; pass seq_len (at most {max_positions})."
            )
        return int(training_seq_len), "training"
    return context_default, "model_context"


def window_length_for(model: Any, requested: int | None) -> int:
    """The window to use: `requested`, or the paper's 8192 capped at the model's `max_position_embeddings`.

    Raises:
        ValueError: `requested` exceeds the model's context length.
    """
    return choose_window_length(model, requested)[0]


def tokenize_once(tokenizer: Any, text: str) -> list[int]:
    """`[BOS] + encode(text)` with no other special token (the EOS id when the tokenizer has no BOS).

    Raises:
        ValueError: the tokenizer has neither a BOS nor an EOS token.
    """
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError(
            "The tokenizer has no BOS or EOS token, so the stream cannot start with one as the protocol requires. "
            "Set tokenizer.bos_token before evaluating."
        )
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return [int(prefix), *ids]


@dataclass(frozen=True)
class WindowLosses:
    """Losses of the evaluated windows of one token stream.

    Attributes:
        total: sum of the token cross-entropies of every window, in nats.
        num_tokens: predicted tokens, `num_windows * (window_length - 1)`.
        num_windows: windows evaluated.
        starts: token offset of each window in the stream, increasing.
        window_sums: sum of each window's token cross-entropies, in the order of `starts`.
        window_tokens: predicted tokens of each window.
    """

    total: float
    num_tokens: int
    num_windows: int
    starts: list[int]
    window_sums: list[float]
    window_tokens: list[int]

    @property
    def window_means(self) -> list[float]:
        """Mean cross-entropy of each window's predicted tokens."""
        return [loss / tokens for loss, tokens in zip(self.window_sums, self.window_tokens, strict=True)]


def select_windows(available: int, max_windows: int, selection: str = "spread") -> list[int]:
    """Indices of the windows to evaluate among `available` consecutive ones (see the module docstring).

    `spread`: `np.linspace(0, available - 1, max_windows)` rounded and de-duplicated, so the first and the last
    window are always in and the others evenly between; `first`: `range(max_windows)`. Either gives every window
    when `available <= max_windows`.

    Raises:
        ValueError: an unknown selection.
    """
    if selection not in WINDOW_SELECTIONS:
        raise ValueError(f"selection={selection!r} must be one of {', '.join(WINDOW_SELECTIONS)}.")
    if available <= max_windows:
        return list(range(available))
    if selection == "first":
        return list(range(max_windows))
    return sorted({int(k) for k in np.linspace(0, available - 1, max_windows).round()})


def windowed_nll(
    model: Any,
    token_ids: list[int] | torch.Tensor,
    window_length: int,
    max_windows: int,
    batch_size: int = 1,
    selection: str = "spread",
) -> WindowLosses:
    """Next-token cross-entropies over the protocol's windows of an already tokenized stream.

    Args:
        model: a causal LM returning `.logits`; evaluated in eval mode, its flag restored afterwards.
        token_ids: the whole stream, BOS first.
        window_length: tokens per window.
        max_windows: at most this many windows.
        batch_size: windows per forward pass (results do not depend on it beyond float rounding).
        selection: which windows when more than `max_windows` are available: `spread` (evenly over the stream)
            or `first`.

    Returns:
        The total and per-window losses with their token counts.

    Raises:
        ValueError: the stream is shorter than one window, or an argument is out of range.
    """
    _check_positive(window_length=window_length, max_windows=max_windows, batch_size=batch_size)
    if window_length < 2:
        raise ValueError(f"window_length={window_length} must be at least 2 (one context and one predicted token).")
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    available = ids.numel() // window_length
    if available == 0:
        raise ValueError(
            f"The text has {ids.numel()} tokens, fewer than one window of {window_length}. Use a longer text or a "
            "shorter window (seq_len)."
        )
    chosen = select_windows(available, max_windows, selection)
    all_windows = ids[: available * window_length].view(available, window_length)  # [available, W]
    windows = all_windows[torch.tensor(chosen, dtype=torch.long)]  # [n, W]
    sums: list[float] = []
    with borrowed(model):
        device = model_device(model)
        for chunk in windows.split(batch_size):
            inputs = chunk.to(device)  # [b, W]
            logits = model(input_ids=inputs, use_cache=False).logits  # [b, W, V]
            vocab = logits.shape[-1]
            losses = F.cross_entropy(
                logits[:, :-1].reshape(-1, vocab).float(), inputs[:, 1:].reshape(-1), reduction="none"
            )  # [b * (W - 1)]
            sums.extend(losses.view(inputs.shape[0], -1).double().sum(dim=1).tolist())
    predicted = window_length - 1
    return WindowLosses(
        total=math.fsum(sums),
        num_tokens=len(chosen) * predicted,
        num_windows=len(chosen),
        starts=[k * window_length for k in chosen],
        window_sums=sums,
        window_tokens=[predicted] * len(chosen),
    )


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str | TextSource,
    window_length: int | None = None,
    max_windows: int = PAPER_MAX_WINDOWS,
    batch_size: int = 1,
    source: str = "text",
    split: str = "unspecified",
    selection: str = "spread",
) -> PerplexityResult:
    """Perplexity of `model` on `text` under the paper's windowed protocol (see the module docstring).

    Args:
        model: a Hugging Face causal LM (any device; it stays where it is).
        tokenizer: the model's tokenizer.
        text: the text, or a loaded `TextSource` (then `source` and `split` come from it).
        window_length: tokens per window; default the paper's 8192, or the model's `max_position_embeddings`
            when shorter. An explicit window longer than the model's context is an error.
        max_windows: cap on the number of windows; the paper uses 256.
        batch_size: windows per forward pass.
        source: name reported for a plain-string text.
        split: split reported for a plain-string text.
        selection: which windows when the text has more than `max_windows`: `spread` (evenly over the whole
            text) or `first` (the reference code's choice).

    Raises:
        ValueError: the tokenizer does not fit the model, the window is longer than the model's context, or the
            text is shorter than one window.
    """
    check_tokenizer_fits(model, tokenizer)
    window_length = window_length_for(model, window_length)
    sha = None
    if isinstance(text, TextSource):
        source, split, sha, text = text.name, text.split, text.sha256(), text.text
    ids = tokenize_once(tokenizer, text)
    if max(ids) >= embedding_rows(model):
        raise ValueError(f"Token id {max(ids)} is beyond the model's {embedding_rows(model)} embedding rows.")
    try:
        losses = windowed_nll(model, ids, window_length, max_windows, batch_size, selection)
    except ValueError as err:
        raise ValueError(f"Perplexity on {source!r} (split {split!r}): {err}") from err
    mean_loss = losses.total / losses.num_tokens
    return PerplexityResult(
        source=source,
        split=split,
        perplexity=math.exp(mean_loss),
        mean_loss=mean_loss,
        window_length=window_length,
        num_windows=losses.num_windows,
        num_tokens=losses.num_tokens,
        text_tokens=len(ids),
        max_windows=max_windows,
        text_sha256=sha,
        selection=selection,
        window_starts=losses.starts,
        window_nll=losses.window_means,
        window_tokens=losses.window_tokens,
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
