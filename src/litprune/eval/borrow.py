"""Borrowing a live model for evaluation and giving it back exactly as it was.

Evaluation in the middle of training must not change training: the model's train/eval flag, its device and
every random number generator are restored afterwards (lm-eval reseeds Python, NumPy and torch globally at the
start of each run, which would otherwise silently change dropout masks and data order after an in-training
evaluation). Gradients are never computed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def resolve_device(device: str | None) -> torch.device | None:
    """`"auto"` -> the first CUDA device if there is one, else CPU; None -> None (leave the model where it is).

    Raises:
        ValueError: a device string torch does not understand.
    """
    if device is None:
        return None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here; use 'cpu' or 'auto'.")
    return resolved


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


@contextmanager
def rng_preserved() -> Iterator[None]:
    """Restore the Python, NumPy, torch CPU and CUDA random states when the block ends."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextmanager
def borrowed(model: torch.nn.Module, device: torch.device | None = None) -> Iterator[torch.nn.Module]:
    """Put `model` in eval mode (and on `device`, if given) for the block; restore flag, device and RNG after.

    Args:
        model: the live model; evaluated in place, never copied.
        device: where to evaluate; None keeps the model where it is (the usual case inside a Trainer).
    """
    was_training = model.training
    original_device = model_device(model)
    moved = device is not None and device != original_device
    try:
        if moved:
            model.to(device)
        model.eval()
        with rng_preserved(), torch.no_grad():
            yield model
    finally:
        if moved:
            model.to(original_device)
        model.train(was_training)


def embedding_rows(model: Any) -> int:
    """Number of rows of the model's input embedding (the largest token id it can take, plus one)."""
    return int(model.get_input_embeddings().weight.shape[0])


def check_tokenizer_fits(model: Any, tokenizer: Any) -> None:
    """Fail early when the tokenizer can produce ids the model has no embedding for.

    Raises:
        ValueError: `len(tokenizer)` exceeds the embedding rows; the message gives both sizes.
    """
    rows = embedding_rows(model)
    size = len(tokenizer)
    if size > rows:
        raise ValueError(
            f"The tokenizer has {size} tokens but the model's embedding has only {rows} rows, so ids {rows}..."
            f"{size - 1} would index past it. Evaluate with the tokenizer the model was trained with (the one saved "
            "beside it), or resize the model's embeddings first."
        )
