"""Files and directories published whole or not at all: a reader sees the old content or the new, never half.

Every writer here builds its result under a hidden temporary name beside the target (`.<name>.tmp-<pid>-<random>`:
the same directory, so the same file system, so the final rename is atomic), flushes it to disk, and renames it
into place only once the writing code returned. If that code raises, the temporary is removed, the target is left
as it was, and the exception propagates.

- `atomic_file(path)`: a temporary path for any writer (`torch.save`, `save_file`, ...); replaces `path`.
- `atomic_write_text(path, text)` and `atomic_write_json(path, obj)`: the same for text and JSON.
- `atomic_dir(final)`: a temporary directory published as `final`; an existing `final` is kept (a cache entry
  someone else published first) or, with `replace=True`, swapped out (an export, a checkpoint directory).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def hidden_sibling(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden name beside `target`: `.<name>.<kind>-<pid>-<random>` (unique across processes)."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write; on success fsync it and `os.replace` it onto `target`.

    The writer must create the file at the yielded path (it does not exist yet). If the block raises, the
    temporary file is removed and `target` is untouched. The parent directory is created if needed.

    Args:
        target: the file to write or replace.

    Raises:
        FileNotFoundError: the block returned without writing the temporary file.

    Example:
        >>> with atomic_file(run_dir / "last.ckpt") as tmp:  # doctest: +SKIP
        ...     torch.save(checkpoint, tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden_sibling(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(
                f"Nothing was written to {str(tmp)!r}, so {str(target)!r} was left as it was. The code inside "
                "`with atomic_file(target) as tmp:` must write the file at `tmp`."
            )
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_file`) and return `path`."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
    sort_keys: bool = False,
) -> Path:
    """Write `obj` as JSON (ending in a newline) to `path` atomically and return `path`.

    Args:
        path: the file to write or replace.
        obj: a JSON-serialisable value.
        indent, default, sort_keys: passed to `json.dumps` (e.g. `default=str` writes paths and dtypes as text).

    Raises:
        TypeError: `obj` is not JSON-serialisable (nothing is written).
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default, sort_keys=sort_keys) + "\n")


@contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and publish it as `final` only if the block succeeds.

    Yields an empty temporary directory beside `final`. On success every file in it is fsynced and it is
    renamed to `final`; if the block raises, it is removed and the exception propagates.

    When `final` already exists (or appears meanwhile):
    - `replace=False` (a cache entry): the existing directory is kept and the new copy discarded, since both
      were built from the same inputs, e.g. by two ranks of one job.
    - `replace=True` (an export): the existing directory is moved aside under a hidden name, the new one renamed
      into place, then the old one deleted. If the second rename fails, the old directory is put back.

    Args:
        final: the directory to publish. Its parent is created if needed.
        replace: replace an existing `final` instead of keeping it.

    Example:
        >>> with atomic_dir(cache_root() / "tokens" / key) as tmp:  # doctest: +SKIP
        ...     write_shards(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden_sibling(final)
    # os.mkdir honours the umask, unlike tempfile.mkdtemp (0o700), so a shared cache or export stays readable.
    os.mkdir(tmp)
    try:
        yield tmp
        for dirpath, _, filenames in os.walk(tmp):
            for name in filenames:
                _fsync(Path(dirpath) / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        _swap_in(tmp, final)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


def _swap_in(tmp: Path, final: Path) -> None:
    old = hidden_sibling(final, "old")
    try:
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    # Flush the contents before the rename publishes them, so a crash cannot leave a complete-looking file whose
    # data is still partly in the page cache.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
