"""The embedded default corpus: the Python standard library source of the running interpreter.

Every Python installation ships it, so a run (a test, a tutorial, a CPU smoke run) needs no download and no
data path. On Python 3.11 it is about 730 files and 12 MB of text, enough to train a small BPE tokenizer and
to pretrain and retrain tiny models on disjoint token slices. Opting in to the standard library's own test
suites (`include_tests=True`: about 1,050 more files and 19 MB on Python 3.11) more than doubles it.

Design choices:
- Only `*.py` files under `sysconfig.get_paths()["stdlib"]`; site-packages and dist-packages (third-party
  code) and `__pycache__` are always excluded, as are files that are not valid UTF-8. The test suites
  (`test`, `tests`, `idle_test` directories) are excluded by default and included with `include_tests=True`;
  they are real, varied Python written by the same authors, so they grow the corpus without leaving it.
- The split is by file, decided by a hash of the file's relative POSIX path (sha256 mod 100: below 90 train,
  below 95 val, otherwise test). A file's split therefore never depends on which other files exist (test
  files fall into train/val/test like any other file, and including them never moves a library file), and no
  text of a validation file is ever seen in training.
- Documents are listed sorted by relative path; the scan is cached for the life of the process. The prepare
  step shuffles them (seeded) before packing, so token slices of a split have alike composition.
- The corpus is whatever this interpreter ships, so it differs between Python versions: `corpus_fingerprint`
  records the version and a content hash, and everything prepared from the corpus is keyed by that hash.
- The embedded BPE tokenizer is always trained on the default corpus (without test suites), so its identity
  does not depend on `include_tests`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sysconfig
from pathlib import Path

EMBEDDED_SPLITS = ("train", "val", "test")

TEST_SUITE_DIRS = frozenset({"test", "tests", "idle_test"})
"""Directories holding the standard library's own test suites, included only with `include_tests=True`."""

_ALWAYS_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def _split_of(relpath: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest(), "big") % 100
    if bucket < 90:
        return "train"
    if bucket < 95:
        return "val"
    return "test"


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=4)
def _scan(root: str, include_tests: bool = False) -> tuple[tuple[str, str, str], ...]:
    """(relpath, split, text) of every eligible file under `root`, sorted by relpath."""
    found: list[tuple[str, str, str]] = []
    base = Path(root)
    excluded = _ALWAYS_EXCLUDED_DIRS if include_tests else _ALWAYS_EXCLUDED_DIRS | TEST_SUITE_DIRS
    # os.walk does not follow symlinked directories, so the scan cannot loop or leave the stdlib tree.
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            try:
                text = path.read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            relpath = path.relative_to(base).as_posix()
            found.append((relpath, _split_of(relpath), text))
    if not found:
        raise RuntimeError(
            f"The embedded corpus is empty: no Python source files were found under the standard library "
            f"directory {str(base)!r}. This interpreter ships without its library sources; use a text dataset "
            "instead (TextSource(kind='files', ...) or kind='hub')."
        )
    found.sort(key=lambda item: item[0])
    return tuple(found)


def _check_split(split: str) -> None:
    if split not in EMBEDDED_SPLITS:
        raise ValueError(f"Unknown embedded corpus split {split!r}; choose one of {list(EMBEDDED_SPLITS)}.")


def _check_include_tests(include_tests: bool) -> None:
    if not isinstance(include_tests, bool):
        raise ValueError(f"include_tests={include_tests!r} must be true or false.")


def embedded_documents(split: str, include_tests: bool = False) -> list[tuple[str, str]]:
    """The documents of one split of the embedded corpus.

    Args:
        split: "train", "val" or "test".
        include_tests: also include the standard library's test suites (`test`, `tests`, `idle_test`
            directories); each test file falls into the split its path hash decides, like any other file.

    Returns:
        (relative path, text) pairs, sorted by relative path. Each standard-library file is one document.
    """
    _check_split(split)
    _check_include_tests(include_tests)
    files = _scan(str(_stdlib_root()), include_tests)
    return [(relpath, text) for relpath, file_split, text in files if file_split == split]


def corpus_fingerprint(include_tests: bool = False) -> dict:
    """What the embedded corpus of this interpreter is, for cache keys and run metadata.

    Args:
        include_tests: fingerprint the corpus that includes the standard library's test suites.

    Returns:
        A JSON-serialisable dict: `python_version`, `stdlib` (the directory scanned), `file_count` (`total` and
        one entry per split) and `sha256`, a hash over every (relative path, content) pair in sorted order,
        plus `include_tests: true` when the test suites are included (the default corpus's fingerprint has no
        such key, so it is unchanged). Two interpreters with the same `sha256` yield byte-identical corpora.
    """
    _check_include_tests(include_tests)
    fingerprint = _fingerprint(str(_stdlib_root()), include_tests)
    return {**fingerprint, "file_count": dict(fingerprint["file_count"])}


@functools.lru_cache(maxsize=4)
def _fingerprint(root: str, include_tests: bool = False) -> dict:
    files = _scan(root, include_tests)
    digest = hashlib.sha256()
    counts = dict.fromkeys(EMBEDDED_SPLITS, 0)
    for relpath, split, text in files:
        path_bytes = relpath.encode("utf-8")
        text_bytes = text.encode("utf-8")
        # Length prefixes make the byte stream unambiguous (no path/content boundary can be shifted).
        digest.update(len(path_bytes).to_bytes(8, "little") + path_bytes)
        digest.update(len(text_bytes).to_bytes(8, "little") + text_bytes)
        counts[split] += 1
    fingerprint = {
        "python_version": platform.python_version(),
        "stdlib": root,
        "file_count": {"total": len(files), **counts},
        "sha256": digest.hexdigest(),
    }
    if include_tests:
        fingerprint["include_tests"] = True
    return fingerprint
