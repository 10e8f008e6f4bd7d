"""Where litprune keeps prepared artifacts, and how a directory is published without ever being half-written.

Prepared tokenizers and token shards are expensive to build and cheap to reuse, so they live in a cache keyed by
what they were built from. Every cached directory is written under a hidden temporary name beside its final
location and renamed into place only once complete: a reader sees either nothing or the whole directory, even
when two processes (say, the ranks of one job) prepare the same thing at once.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


def _fsync_tree(root: Path) -> None:
    # Flush file contents before the rename publishes them, so a crash cannot leave a complete-looking
    # directory whose files are still partly in the page cache.
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and publish it as `final` only if the block succeeds.

    Yields an empty temporary directory beside `final` (same file system, so the final rename is atomic).
    On success it is renamed to `final`; if the block raises, it is removed and the exception propagates.
    If `final` appeared meanwhile (another process published the same artifact first), the existing
    directory is kept and the new copy discarded: both were built from the same inputs.

    Args:
        final: the directory to publish. Its parent is created if needed.

    Example:
        >>> with atomic_dir(cache_root() / "tokens" / key) as tmp:  # doctest: +SKIP
        ...     write_shards(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # os.mkdir honours the umask, unlike tempfile.mkdtemp (0o700), so a shared cache stays readable.
    os.mkdir(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
