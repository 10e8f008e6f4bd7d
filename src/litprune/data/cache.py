"""Where litprune keeps prepared artifacts.

Prepared tokenizers and token shards are expensive to build and cheap to reuse, so they live in a cache keyed by
what they were built from. Every cached directory is published with `litprune.utils.atomic.atomic_dir`: a reader
sees either nothing or the whole directory, even when two processes (say, the ranks of one job) prepare the same
thing at once.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of litprune's cache.

    `$LITPRUNE_CACHE` when set, else `$XDG_CACHE_HOME/litprune`, else `~/.cache/litprune`. The directory is not
    created here; writers create what they need.
    """
    explicit = os.environ.get("LITPRUNE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "litprune"
    return Path.home() / ".cache" / "litprune"
