"""Perplexity under the paper's protocol: one tokenization, one BOS, non-overlapping windows, a window cap.

The protocol (paper, "Evaluation protocol"; reference code llm-pruning-collection
`pruning/minitron/utils.py::get_ppl`):

1. The whole text is tokenized once, without special tokens, and a single BOS id is put in front
   (`[BOS] + encode(text)`; the EOS id stands in when the tokenizer has no BOS).
2. The stream is cut into `n = min(len // window_length, max_windows)` non-overlapping windows of exactly
   `window_length` tokens, in order; the tail shorter than a window is dropped.
3. Each window is one forward pass; position t predicts token t+1, so a window contributes
   `window_length - 1` predicted tokens (its first token is context only).
4. PPL = exp(sum of token cross-entropies / number of predicted tokens), computed in float32 or wider.

Because the numbers that do not reproduce across papers differ exactly in the split, the window length and
the number of windows, every `PerplexityResult` states all of them, with the token counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from litprune.eval.borrow import borrowed, check_tokenizer_fits, embedding_rows, model_device
from litprune.eval.text_sources import TextSource
from litprune.models.positions import check_seq_len

PAPER_WINDOW_LENGTH = 8192
PAPER_MAX_WINDOWS = 256


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

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def window_length_for(model: Any, requested: int | None) -> int:
    """The window to use: `requested`, or the paper's 8192 capped at the model's `max_position_embeddings`.

    Raises:
        ValueError: `requested` exceeds the model's context length.
    """
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if requested is None:
        return min(PAPER_WINDOW_LENGTH, max_positions or PAPER_WINDOW_LENGTH)
    check_seq_len(
        requested,
        model.config,
        name="seq_len",
        remedy=f"leave seq_len unset to use {min(PAPER_WINDOW_LENGTH, max_positions or PAPER_WINDOW_LENGTH)}",
    )
    return requested


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


def windowed_nll(
    model: Any, token_ids: list[int] | torch.Tensor, window_length: int, max_windows: int, batch_size: int = 1
) -> tuple[float, int, int]:
    """Sum of next-token cross-entropies over the protocol's windows of an already tokenized stream.

    Args:
        model: a causal LM returning `.logits`; evaluated in eval mode, its flag restored afterwards.
        token_ids: the whole stream, BOS first.
        window_length: tokens per window.
        max_windows: at most this many windows, taken from the start.
        batch_size: windows per forward pass (results do not depend on it beyond float rounding).

    Returns:
        (sum of losses in nats, number of predicted tokens, number of windows).

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
    count = min(available, max_windows)
    windows = ids[: count * window_length].view(count, window_length)  # [n, W]
    total = 0.0
    with borrowed(model):
        device = model_device(model)
        for chunk in windows.split(batch_size):
            inputs = chunk.to(device)  # [b, W]
            logits = model(input_ids=inputs, use_cache=False).logits  # [b, W, V]
            vocab = logits.shape[-1]
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, vocab).float(), inputs[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss.double())
    return total, count * (window_length - 1), count


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str | TextSource,
    window_length: int | None = None,
    max_windows: int = PAPER_MAX_WINDOWS,
    batch_size: int = 1,
    source: str = "text",
    split: str = "unspecified",
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
        total, tokens, windows = windowed_nll(model, ids, window_length, max_windows, batch_size)
    except ValueError as err:
        raise ValueError(f"Perplexity on {source!r} (split {split!r}): {err}") from err
    mean_loss = total / tokens
    return PerplexityResult(
        source=source,
        split=split,
        perplexity=math.exp(mean_loss),
        mean_loss=mean_loss,
        window_length=window_length,
        num_windows=windows,
        num_tokens=tokens,
        text_tokens=len(ids),
        max_windows=max_windows,
        text_sha256=sha,
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
