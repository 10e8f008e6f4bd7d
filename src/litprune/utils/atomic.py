"""Files and directories published whole or not at all: a reader sees the old content or the new, never half.

Every writer here builds its result under a hidden temporary name beside the target
(`.<name>.tmp-<pid>-<host>-<random>`: the same directory, so the same file system, so the final rename is atomic),
flushes it to disk, and renames it into place only once the writing code returned. If that code raises, the
temporary is removed, the target is left as it was, and the exception propagates. A process killed mid-write
leaves its temporary behind; the name says whose it is (process id and a hash of the host name), so
`sweep_stale_temporaries` removes it later once that process is gone, and never one a live process still writes.

- `atomic_file(path)`: a temporary path for any writer (`torch.save`, `save_file`, ...); replaces `path`.
- `atomic_write_text(path, text)` and `atomic_write_json(path, obj)`: the same for text and JSON.
- `atomic_dir(final)`: a temporary directory published as `final`; an existing `final` is kept (a cache entry
  someone else published first) or, with `replace=True`, swapped out (an export, a checkpoint directory).
- `scratch_dir(parent, name)`: a working directory removed at the end, named like the temporaries above.
- `sweep_stale_temporaries(directory)`: remove the temporaries of processes of this host that are gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# `.<name>.<kind>-<pid>-<host>-<random>`: who owns a temporary, so a sweep can tell a dead owner's from a live one's.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>[a-z]+)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def hidden_sibling(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden name beside `target`: `.<name>.<kind>-<pid>-<host>-<random>` (unique across processes)."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{_host_tag()}-{uuid.uuid4().hex[:8]}"


def temporary_owner(path: str | os.PathLike) -> tuple[int, str] | None:
    """`(pid, host tag)` of a temporary named by `hidden_sibling`, or None for any other name."""
    match = _TEMPORARY.match(Path(path).name)
    return (int(match["pid"]), match["host"]) if match else None


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host exists (`os.kill(pid, 0)`; another user's process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in `directory` (not below) left by processes of this host that no longer run.

    A temporary of a live process, of another host (a shared file system), or with a name `hidden_sibling` did not
    make, is kept. Returns the removed paths. Run it where a run or a prepare step starts.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    host, removed = _host_tag(), []
    for path in sorted(directory.iterdir()):
        owner = temporary_owner(path)
        if owner is None or owner[1] != host or process_alive(owner[0]):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextmanager
def scratch_dir(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A fresh working directory `<parent>/.<name>.work-<pid>-<host>-<random>`, removed when the block ends.

    Named like every temporary here, so one left by a killed process is swept by `sweep_stale_temporaries`.
    """
    path = hidden_sibling(Path(parent) / name, "work")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
