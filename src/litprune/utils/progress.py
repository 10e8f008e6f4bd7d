"""Progress bars for steps that can take minutes (calibration passes, window searches, tokenizer training).

One switch governs them all. A function's own `progress` argument wins when given (True shows, False hides);
otherwise the environment variable `LITPRUNE_PROGRESS` decides:

- `1` (or `true`, `on`, `yes`): show the bars, also when stderr is not a terminal (cluster jobs writing a log);
- `0` (or `false`, `off`, `no`): hide them;
- unset, empty or `auto`: show them only when stderr is a terminal, so test runs and piped output stay clean.

Bars are plain `tqdm` bars on stderr and stay on screen when finished, so a log shows how long each step took.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

PROGRESS_ENV = "LITPRUNE_PROGRESS"
_ON = ("1", "true", "on", "yes")
_OFF = ("0", "false", "off", "no")


def progress_enabled(progress: bool | None = None) -> bool | None:
    """Whether to show progress: True (show), False (hide) or None (show only when stderr is a terminal).

    Args:
        progress: an explicit choice, which wins; None reads `LITPRUNE_PROGRESS`.

    Raises:
        ValueError: `LITPRUNE_PROGRESS` holds something else than the values listed in the module docstring.
    """
    if progress is not None:
        return bool(progress)
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value in ("", "auto"):
        return None
    raise ValueError(
        f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r} is not a progress setting; use 1, 0 or auto "
        "(true/false, on/off and yes/no work too)."
    )


def shows_progress(progress: bool | None = None) -> bool:
    """`progress_enabled` resolved to a yes or no for this process's stderr."""
    enabled = progress_enabled(progress)
    if enabled is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return enabled


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    progress: bool | None = None,
) -> tqdm:
    """A tqdm bar on stderr over `iterable`, shown or hidden as `progress_enabled(progress)` says.

    Args:
        iterable: what to iterate over; None for a bar advanced by hand with `update`.
        desc: what the step does, in a few words (the bar's label).
        total: number of items, when `iterable` has no length.
        unit: what one item is (`layer`, `window`, `candidate`...).
        progress: True or False to force; None follows `LITPRUNE_PROGRESS`.
    """
    enabled = progress_enabled(progress)
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        file=sys.stderr,
        disable=None if enabled is None else not enabled,  # None: tqdm hides the bar when stderr is not a tty
        dynamic_ncols=True,
    )
