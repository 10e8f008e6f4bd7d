"""Calibration scores for choosing a depth window, and the helpers every calibration pass shares.

Minitron-depth scores each candidate model with one full pass over the calibration set and keeps the window whose
score is closest to the dense baseline. The built-in score is language-model perplexity on calibration windows
(methods-spec section 1): windows are used in order, batch size 1 by default, and

    PPL = exp(mean next-token cross-entropy over all predicted positions of all windows).

The other named scorers are downstream tasks run by lm-eval on the live candidate model (`make_task_scorer`):

    task:<lm-eval task name>[:<metric>]      e.g. "task:winogrande", "task:litprune_next_line", "task:piqa:acc"

The score is the task's metric (default: the paper's metric for the paper's tasks, else `acc`; see
`litprune.eval.tasks`). The reference's downstream criterion is `task:winogrande` with 5 few-shot examples and
`limit = calib_size` (the whole validation set in the 8B script); the few-shot count and the example limit are
passed next to the name (`num_fewshot` / `limit` here, `scorer_fewshot` / `scorer_limit` in `prune_structured`
and `StructuredPrune`). Minitron-depth keeps the window whose score is closest to the dense score, so an
accuracy is used as is: a window that scores *above* the dense model can win, as in the reference.
`litprune_next_line` and `litprune_next_span` are generated offline; other tasks download their data from the
hub.

Any other callable `model -> float` is accepted wherever a scorer is.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Scorer = Callable[[nn.Module], float]

TASK_PREFIX = "task:"
"""Prefix of downstream-task scorer names: `task:<lm-eval task name>[:<metric>]`."""

TASK_BATCH_SIZE = 16
"""lm-eval requests per forward pass of a named task scorer (`make_task_scorer` takes any batch size)."""


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


def make_task_scorer(
    task: str,
    tokenizer: Any,
    num_fewshot: int = 0,
    limit: int | None = None,
    batch_size: int = TASK_BATCH_SIZE,
    task_documents: Any = None,
    max_examples: int | None = None,
) -> Scorer:
    """A scorer `model -> metric of one lm-eval task`, for `minitron_depth_window`.

    Every call runs `litprune.eval.harness.evaluate_tasks` on the model as it is (a candidate with a block of
    layers skipped, or the dense model) and returns the task's metric value. The model's train/eval flag,
    device and the random states are restored by `evaluate_tasks`.

    Args:
        task: `<lm-eval task name>[:<metric>]`, with or without the `task:` prefix (e.g. "winogrande",
            "task:litprune_next_line", "piqa:acc"); exactly one task, not a preset.
        tokenizer: the model's tokenizer (the parent's).
        num_fewshot: few-shot examples per prompt (the reference's 8B script: 5 for winogrande).
        limit: score on the first `limit` examples only (the reference passes its `calib_size`); None = all.
        batch_size: lm-eval requests per forward pass.
        task_documents: documents for litprune's offline tasks; None uses the embedded corpus's held-out split.
        max_examples: size of a generated offline task; None uses `evaluate_tasks`' default.

    Returns:
        The scorer; its `__name__` is the full scorer name (`task:...`) and its `details` dict (task, metric,
        num_fewshot, limit, batch_size, and after the first call num_examples, num_examples_total and
        lm_eval_version) goes into pruning records.

    Raises:
        ValueError: an unknown task (with close matches), a preset or several tasks, a missing tokenizer, or a
            bad `num_fewshot` / `limit` / `batch_size`.
    """
    from litprune.eval.harness import evaluate_tasks

    spec = parse_task_scorer(task)
    problems = _task_option_problems(num_fewshot, limit)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size={batch_size!r} must be a positive integer.")
    if tokenizer is None:
        problems.append(f"Scorer {_task_name(task)!r} runs lm-eval and needs the model's tokenizer; pass tokenizer=.")
    if problems:
        raise ValueError(" ".join(problems))
    options: dict[str, Any] = {"task_documents": task_documents}
    if max_examples is not None:
        options["max_examples"] = max_examples
    task_arg = f"{spec.name}:{spec.metric}" if spec.metric else spec.name
    details: dict[str, Any] = {
        "task": spec.name,
        "metric": spec.metric,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "batch_size": batch_size,
    }

    def score(model: nn.Module) -> float:
        result = evaluate_tasks(
            model, tokenizer, [task_arg], batch_size=batch_size, limit=limit, num_fewshot=num_fewshot, **options
        )[0]
        details.update(
            metric=result.metric,
            num_examples=result.num_examples,
            num_examples_total=result.num_examples_total,
            lm_eval_version=result.lm_eval_version,
        )
        return result.value

    score.__name__ = _task_name(task)
    score.details = details  # type: ignore[attr-defined]
    return score


def parse_task_scorer(name: str) -> Any:
    """Resolve a task scorer name (`task:<task>[:<metric>]`, prefix optional) to its one `TaskSpec`.

    Checking a task that is neither the paper's nor litprune's builds lm-eval's task index (seconds, once per
    process); nothing is downloaded.

    Raises:
        ValueError: no task named, a preset or several tasks, or an unknown task (`UnknownTaskError`, with the
            closest known names).
    """
    from litprune.eval.tasks import PRESETS, resolve_tasks

    task = name.removeprefix(TASK_PREFIX).strip() if isinstance(name, str) else ""
    if not task:
        raise ValueError(
            f"Scorer {name!r} names no task; write 'task:<lm-eval task name>[:<metric>]', e.g. 'task:winogrande' "
            "or 'task:litprune_next_line'."
        )
    if task.partition(":")[0] in PRESETS:
        raise ValueError(
            f"Scorer {name!r} names the preset {task.partition(':')[0]!r}, which is several tasks; a scorer is one "
            "task, e.g. 'task:winogrande' or 'task:litprune_next_line'."
        )
    return resolve_tasks([task])[0]


def is_task_scorer(scorer: object) -> bool:
    """True for a downstream-task scorer name (`task:...`)."""
    return isinstance(scorer, str) and scorer.startswith(TASK_PREFIX)


# Scorers that need only calibration windows, by the name used in configs.
SCORERS: dict[str, Callable[..., Scorer]] = {"perplexity": make_perplexity_scorer}


def check_scorer(
    scorer: str | Scorer,
    num_fewshot: int = 0,
    limit: int | None = None,
    option_names: tuple[str, str] = ("num_fewshot", "limit"),
) -> None:
    """Accept a callable, a name in `SCORERS` or a task scorer name `task:<task>[:<metric>]`.

    `num_fewshot` and `limit` are the task scorer's options; other scorers take neither. `option_names` are the
    names the caller exposes them under (e.g. `("scorer_fewshot", "scorer_limit")`), used in error messages.

    Raises:
        ValueError: unknown name (with close matches), unknown task (with close matches), or task options that
            are invalid or given to a scorer that is not a task.
    """
    problems: list[str] = []
    if is_task_scorer(scorer):
        try:
            parse_task_scorer(scorer)
        except ValueError as err:
            problems.append(f"scorer={scorer!r}: {err}")
        problems.extend(_task_option_problems(num_fewshot, limit, option_names))
    else:
        if not (callable(scorer) or scorer in SCORERS):
            close = difflib.get_close_matches(str(scorer), SCORERS, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            problems.append(
                f"Unknown scorer {scorer!r}.{hint} Available: {', '.join(SCORERS)}, 'task:<lm-eval task>[:<metric>]' "
                "(e.g. 'task:winogrande'); or pass a callable model -> float."
            )
        if num_fewshot != 0 or limit is not None:
            problems.append(
                f"{option_names[0]}={num_fewshot!r} and {option_names[1]}={limit!r} apply only to task scorers "
                f"('task:<name>'); the scorer {getattr(scorer, '__name__', scorer)!r} takes neither. Remove them."
            )
    if problems:
        raise ValueError(" ".join(problems))


def resolve_scorer(
    scorer: str | Scorer,
    windows: Tensor | None,
    batch_size: int = 1,
    tokenizer: Any = None,
    num_fewshot: int = 0,
    limit: int | None = None,
) -> Scorer:
    """Turn a scorer name (see `SCORERS`, or `task:...`) or a callable `model -> float` into a callable.

    Args:
        scorer: "perplexity", "task:<task>[:<metric>]" or a callable.
        windows: calibration token ids for "perplexity".
        batch_size: windows per forward call for "perplexity" (a task scorer uses `TASK_BATCH_SIZE`).
        tokenizer: the model's tokenizer, for a task scorer.
        num_fewshot: a task scorer's few-shot examples per prompt.
        limit: a task scorer's number of examples (None = all).

    Raises:
        ValueError: unknown name or task (with close matches), a named perplexity scorer without calibration
            windows, or a task scorer without a tokenizer.
    """
    check_scorer(scorer, num_fewshot=num_fewshot, limit=limit)
    if callable(scorer):
        return scorer
    if is_task_scorer(scorer):
        return make_task_scorer(scorer, tokenizer, num_fewshot=num_fewshot, limit=limit)
    if windows is None:
        raise ValueError(f"Scorer {scorer!r} needs calibration windows; pass windows=[num_windows, seq_len] token ids.")
    return SCORERS[scorer](windows, batch_size=batch_size)


def _task_name(task: str) -> str:
    return task if task.startswith(TASK_PREFIX) else TASK_PREFIX + task


def _task_option_problems(
    num_fewshot: object, limit: object, names: tuple[str, str] = ("num_fewshot", "limit")
) -> list[str]:
    problems = []
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        problems.append(f"{names[0]}={num_fewshot!r} must be a non-negative integer (the reference uses 5).")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"{names[1]}={limit!r} must be a positive integer or None (all examples).")
    return problems
