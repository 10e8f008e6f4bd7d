"""The "did you mean" hint of every unknown-name error, formatted one way.

A sentence hint follows a full stop (`f"Unknown method {name!r}.{did_you_mean(name, METHODS)} Available: ..."`); a
clause hint goes inside a line of its own (`f"{name!r}: {did_you_mean(name, tasks, sentence=False)}"`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggestion(matches: Iterable[str], sentence: bool = True) -> str:
    """The hint naming `matches`: `" Did you mean 'a' or 'b'?"`, or `""` when there is none.

    Args:
        matches: the names to propose, best first.
        sentence: True: a sentence with a leading space, to append after a full stop. False: the bare clause
            `"did you mean 'a' or 'b'?"`, for a parenthesis or after a colon.
    """
    quoted = [repr(str(match)) for match in matches]
    if not quoted:
        return ""
    listing = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f" Did you mean {listing}?" if sentence else f"did you mean {listing}?"


def did_you_mean(
    name: object, choices: Iterable[object], n: int = 3, cutoff: float = 0.6, sentence: bool = True
) -> str:
    """The hint for an unknown `name`: the closest of `choices` (by `difflib`), formatted by `suggestion`.

    Args:
        name: what the user gave (compared as a string).
        choices: the accepted names (a dict counts by its keys).
        n: at most this many names are proposed.
        cutoff: similarity in [0, 1] a choice needs to be proposed (difflib's ratio; 0.6 is difflib's default).
        sentence: see `suggestion`.

    Returns:
        `" Did you mean 'a' or 'b'?"` (or the clause form), or `""` when no choice is close.

    Example:
        >>> did_you_mean("wnada", ["wanda", "sparsegpt", "magnitude"])
        " Did you mean 'wanda'?"
    """
    close = difflib.get_close_matches(str(name), [str(choice) for choice in choices], n=n, cutoff=cutoff)
    return suggestion(close, sentence=sentence)
