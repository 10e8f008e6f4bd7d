"""Calibration scores for choosing a depth window, and the helpers every calibration pass shares.

Minitron-depth scores each candidate model with one full pass over the calibration set and keeps the window whose
score is closest to the dense baseline. A scorer is any callable `model -> float`. The one scorer named here is
language-model perplexity on calibration windows (methods-spec section 1): windows are used in order, batch size 1
by default, and

    PPL = exp(mean next-token cross-entropy over all predicted positions of all windows).

Downstream-task scorers (`task:<lm-eval task>[:<metric>]`, e.g. the reference's `task:winogrande`) run lm-eval,
so they are built above this pure layer, by `make_task_scorer` in the eval package (`eval/task_scorer.py`), and
arrive here as callables; `StructuredPrune` resolves a `task:` name from YAML that way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litprune.utils.suggest import did_you_mean

Scorer = Callable[[nn.Module], float]


def check_windows(windows: Tensor, vocab_size: int | None = None, name: str = "windows") -> Tensor:
    """Validate calibration windows: a 2-D integer tensor `[num_windows, seq_len]` of token ids.

    Raises:
        ValueError: wrong type, rank, dtype, emptiness, or ids outside `[0, vocab_size)`.
    """
    if not isinstance(windows, Tensor):
        raise ValueError(
            f"{name} must be a LongTensor of token ids shaped [num_windows, seq_len], got {type(windows).__name__}."
        )
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError(
            f"{name} must be shaped [num_windows, seq_len] with at least one window of 2+ tokens, "
            f"got shape {tuple(windows.shape)}."
        )
    if windows.dtype.is_floating_point or windows.dtype == torch.bool or windows.dtype.is_complex:
        raise ValueError(f"{name} must hold integer token ids, got dtype {windows.dtype}. Use windows.long().")
    if vocab_size is not None and (int(windows.min()) < 0 or int(windows.max()) >= vocab_size):
        raise ValueError(
            f"{name} hold token ids in [{int(windows.min())}, {int(windows.max())}], outside the model's vocabulary "
            f"[0, {vocab_size}). Tokenize the calibration text with the parent's tokenizer."
        )
    return windows


def iter_batches(windows: Tensor, batch_size: int, device: torch.device | str) -> Iterator[Tensor]:
    """Yield consecutive batches of windows (in order, no shuffling) on `device`; the last one may be smaller."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer (the reference uses 1).")
    for batch in windows.split(batch_size):
        yield batch.to(device=device, dtype=torch.long)


def calibration_summary(windows: Tensor, batch_size: int) -> dict[str, object]:
    """Provenance of a calibration set: counts, batch size and a digest of the exact token ids."""
    ids = windows.detach().to("cpu", torch.long).contiguous()
    return {
        "num_windows": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]),
        "num_tokens": int(ids.numel()),
        "batch_size": int(batch_size),
        "sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
    }


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a calibration pass in eval mode without gradients, then restore the previous train/eval flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (calibration batches are moved there)."""
    return next(model.parameters()).device


def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 1) -> float:
    """Perplexity of a causal LM on calibration windows: `exp(mean next-token cross-entropy)`.

    The mean runs over every predicted position of every window (token-weighted), so the result does not depend
    on the batch size. Returns `inf` if the mean loss is too large to exponentiate.

    Args:
        model: A Hugging Face causal LM.
        windows: Token ids `[num_windows, seq_len]`.
        batch_size: Windows per forward call.
    """
    check_windows(windows, getattr(model.config, "vocab_size", None))
    total_loss, total_tokens = 0.0, 0
    with evaluation_mode(model):
        for batch in iter_batches(windows, batch_size, model_device(model)):
            logits = model(input_ids=batch, use_cache=False).logits
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_loss += float(loss)
            total_tokens += batch[:, 1:].numel()
    mean = total_loss / total_tokens
    return math.exp(mean) if mean < 700 else math.inf


def make_perplexity_scorer(windows: Tensor, batch_size: int = 1) -> Scorer:
    """A scorer `model -> perplexity on windows`, for `minitron_depth_window`."""
    check_windows(windows)

    def score(model: nn.Module) -> float:
        return perplexity(model, windows, batch_size=batch_size)

    score.__name__ = "perplexity"
    return score


# Scorers that need only calibration windows, by the name used in configs.
SCORERS: dict[str, Callable[..., Scorer]] = {"perplexity": make_perplexity_scorer}


def check_scorer(scorer: str | Scorer) -> None:
    """Accept a callable `model -> float` or a name in `SCORERS`.

    Raises:
        ValueError: a downstream-task name (`task:...`, built by the eval package's `make_task_scorer`), or an
            unknown name (with close matches).
    """
    if callable(scorer) or (isinstance(scorer, str) and scorer in SCORERS):
        return
    if isinstance(scorer, str) and scorer.startswith("task:"):
        raise ValueError(
            f"scorer={scorer!r} is a downstream-task scorer, which the pure pruning functions do not build (it runs "
            f"lm-eval). Pass make_task_scorer({scorer!r}, tokenizer, num_fewshot=..., limit=...) from the eval "
            f"package (eval/task_scorer.py) as the scorer, or configure StructuredPrune(scorer={scorer!r})."
        )
    hint = did_you_mean(scorer, SCORERS)
    raise ValueError(
        f"Unknown scorer {scorer!r}.{hint} Available: {', '.join(SCORERS)}, or a callable model -> float; "
        "a downstream task 'task:<lm-eval task>[:<metric>]' (e.g. 'task:winogrande') is named in StructuredPrune "
        "or built with make_task_scorer from the eval package."
    )


def resolve_scorer(scorer: str | Scorer, windows: Tensor | None, batch_size: int = 1) -> Scorer:
    """Turn a scorer name (see `SCORERS`) or a callable `model -> float` into a callable.

    Args:
        scorer: "perplexity" or a callable.
        windows: calibration token ids for "perplexity".
        batch_size: windows per forward call for "perplexity".

    Raises:
        ValueError: a task name or an unknown name (see `check_scorer`), or a named scorer without calibration
            windows.
    """
    check_scorer(scorer)
    if callable(scorer):
        return scorer
    if windows is None:
        raise ValueError(f"Scorer {scorer!r} needs calibration windows; pass windows=[num_windows, seq_len] token ids.")
    return SCORERS[scorer](windows, batch_size=batch_size)
