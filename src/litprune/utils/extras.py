"""Optional dependencies: a clear error that names the extra to install when one is missing.

The core install (`pip install litprune`) trains, prunes and exports: the callback, the pruning functions, the
inits and `litprune fit`. lm-eval (`litprune eval --tasks`, `EvalCallback` tasks) comes with the `eval` extra,
matplotlib (the study's figures) with the `study` extra, which also pulls `eval`.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise `MissingExtraError` naming `extra` when its top-level package is not installed.

    Args:
        module: the module to import, e.g. "lm_eval.models.huggingface".
        extra: litprune's extra that installs it, e.g. "eval".
        purpose: what needs it, for the message, e.g. "lm-eval tasks".

    Raises:
        MissingExtraError: the top-level package of `module` is not installed. A package that is installed but
            fails to import (a missing dependency of its own) raises its own error unchanged.
    """
    package = module.split(".", 1)[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != package:
            raise
        raise MissingExtraError(
            f"{purpose} needs the {package!r} package, which is not installed. Install litprune's {extra!r} "
            f"extra: pip install 'litprune[{extra}]' (from a checkout: pip install -e '.[{extra}]')."
        ) from err
