"""Walking an exception's causes: the one rule for reading an error that libraries wrapped in their own."""

from __future__ import annotations


def error_chain(error: BaseException) -> list[BaseException]:
    """`error` and its causes (`__cause__`, or `__context__` when not suppressed), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain
