"""Command-line errors that end with litprune's own message, not jsonargparse's dump of the config.

A bad value in a class given by `class_path` (`SparsePrune(pattern="2:3")`, a misspelt `method:`, `ratio=abc`)
fails inside jsonargparse, which wraps the error once per nesting level in "Does not validate against any of the
Union subtypes ... Given value: Namespace(...)", so the last lines on screen are the whole config subtree. The
original error is kept as the `__cause__` at the bottom of that chain; `user_message` digs it out:

- an error raised by the class itself (litprune's checks in `__init__`): its own message;
- a value jsonargparse refuses by type: the dotted key, what was expected, the value given.

`main` prints `user_message` for errors raised while the classes are built; `LitpruneArgumentParser` does the same
for errors while the command line and configs are parsed. Set LITPRUNE_DEBUG=1 to see jsonargparse's full text.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from litprune.utils.errors import error_chain

_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":')
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)':")
_SUBTYPES = re.compile(r"^Subtypes: [\[(](.*)[\])]$", re.MULTILINE)
_TYPE_NAME = re.compile(r"<class '(?:builtins\.)?([\w.]+)'>")


def user_message(error: BaseException) -> str:
    """The message a user needs from `error`: the first error in its cause chain not raised by the parser.

    Errors that jsonargparse raised around it (one per nesting level of `class_path` settings) are dropped; when
    every error in the chain is the parser's own (a value of the wrong type), the innermost one is named with the
    dotted key it belongs to and the types the key accepts.
    """
    chain = error_chain(error)
    if not any(_raised_by_parser(e) for e in chain):
        return str(error)
    key = _dotted_key(chain)
    own = next((e for e in chain if not _raised_by_parser(e)), None)
    if own is not None:
        message = str(own) or type(own).__name__
        return f"{key}: {message}" if key else message
    innermost = str(chain[-1]).strip()
    accepted = _accepted_types(chain)
    text = f"{key}: {innermost}" if key else innermost
    return f"{text} (accepted: {accepted})" if accepted else text


class LitpruneArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors end with `user_message` (the full text with LITPRUNE_DEBUG=1)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if ex is not None:
            clear = user_message(ex)
            if clear != message:
                message = f"{message}\n{clear}" if os.environ.get("LITPRUNE_DEBUG") else clear
        return super().error(message, ex)


def _raised_by_parser(error: BaseException) -> bool:
    import jsonargparse

    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ is not None else []
    package = os.path.dirname(os.path.abspath(jsonargparse.__file__))
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package + os.sep)


def _dotted_key(chain: list[BaseException]) -> str:
    parts: list[str] = []
    for error in chain:
        first_line = str(error).lstrip().split("\n", 1)[0]
        if match := _PARSER_KEY.match(first_line):
            if not parts or parts[-1] != match.group(1):
                parts.append(match.group(1))
        elif _CLASS_PATH.match(first_line) and parts and parts[-1] != "init_args":
            parts.append("init_args")
    return ".".join(parts)


def _accepted_types(chain: list[BaseException]) -> str | None:
    for error in reversed(chain):
        if match := _SUBTYPES.search(str(error)):
            names = [name.rsplit(".", 1)[-1] for name in _TYPE_NAME.findall(match.group(1))]
            return ", ".join("null" if name == "NoneType" else name for name in names) or None
    return None
