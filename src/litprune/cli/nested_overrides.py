"""Dotted command-line overrides two classes deep keep their YAML values (`null` stays None).

`--model.init_args.init.init_args.ratio=null` reaches the init two `class_path` levels below the command line.
jsonargparse (4.x) parses the value once (`null` -> None), then hands it to the next level by formatting it back
into an argument with `str()`: `--init.init_args.ratio=None`. `None` is not YAML's null, so a `float | None`
refused it and a `str | None` silently became the string "None"; a mapping with a null inside
(`method_kwargs={batch_size: null}`) lost it the same way. The same settings in a YAML file never take that path.

`install()` wraps jsonargparse's `adapt_class_type` so that a value handed down this way is written back as JSON (a
subset of YAML), which the next level parses to exactly the value the first level read. Strings are left as they
are (jsonargparse keeps the text it was given). The wrapper is installed once, when `litprune.cli` is imported.
"""

from __future__ import annotations

import functools
import json
from typing import Any

_INSTALLED = "_litprune_nested_overrides"


def install() -> None:
    """Make dotted overrides of nested `class_path` settings keep their parsed values (idempotent)."""
    from jsonargparse import _typehints

    original = getattr(_typehints, "adapt_class_type", None)
    if original is None or getattr(original, _INSTALLED, False):
        return

    @functools.wraps(original)
    def adapt_class_type(value: Any, *args: Any, **kwargs: Any) -> Any:
        _as_yaml_text(value)
        return original(value, *args, **kwargs)

    setattr(adapt_class_type, _INSTALLED, True)
    _typehints.adapt_class_type = adapt_class_type


def _as_yaml_text(spec: Any) -> None:
    """Rewrite the value of a nested override held in `spec.init_args` as JSON text, in place."""
    from jsonargparse._util import NestedArg

    try:
        init_args = spec.get("init_args")
    except (AttributeError, TypeError):
        return
    if not isinstance(init_args, NestedArg) or isinstance(init_args.val, str):
        return
    try:
        text = json.dumps(init_args.val)
    except (TypeError, ValueError):
        return  # not plain data (e.g. a date); jsonargparse's own formatting handles it as before
    spec["init_args"] = NestedArg(key=init_args.key, val=text)
