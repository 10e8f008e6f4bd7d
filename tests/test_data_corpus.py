"""The cache location, atomic publishing of cached directories, and the embedded standard-library corpus."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import pytest

from litprune.data import corpus
from litprune.data.cache import cache_root
from litprune.data.corpus import EMBEDDED_SPLITS, corpus_fingerprint, embedded_documents
from litprune.utils.atomic import atomic_dir


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("LITPRUNE_CACHE")
    assert cache_root() == tmp_path / "xdg" / "litprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "litprune"


def test_atomic_dir_publishes_only_complete_directories(tmp_path):
    final = tmp_path / "cache" / "artifact"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        (tmp / "data.bin").write_bytes(b"abc")
        assert not final.exists(), "nothing is visible under the final name before the block ends"
    assert (final / "data.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in final.parent.iterdir()) == ["artifact"], "no temporary directory is left"


def test_atomic_dir_removes_everything_on_failure(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_a_concurrently_published_copy(tmp_path):
    final = tmp_path / "artifact"
    with atomic_dir(final) as tmp:
        (tmp / "mine.txt").write_text("late")
        # Another process publishes the same artifact while this one is still writing.
        final.mkdir()
        (final / "theirs.txt").write_text("first")
    assert sorted(p.name for p in final.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def _fake_stdlib(root: Path) -> None:
    files = {
        "os.py": "import sys\n",
        "json/__init__.py": "from .decoder import JSONDecoder\n",
        "json/decoder.py": "class JSONDecoder:\n    pass\n",
        "notes.txt": "not python\n",
        "test/test_os.py": "assert True\n",
        "unittest/tests/test_case.py": "x = 1\n",
        "idlelib/idle_test/test_run.py": "y = 2\n",
        "site-packages/thirdparty.py": "z = 3\n",
        "__pycache__/os.cpython-311.py": "stale\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))


def test_embedded_corpus_excludes_tests_site_packages_and_non_utf8(monkeypatch, tmp_path):
    _fake_stdlib(tmp_path)
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(tmp_path)})
    names = sorted(rel for split in EMBEDDED_SPLITS for rel, _ in embedded_documents(split))
    assert names == ["json/__init__.py", "json/decoder.py", "os.py"]
    fingerprint = corpus_fingerprint()
    assert fingerprint["stdlib"] == str(tmp_path)
    assert fingerprint["file_count"]["total"] == 3
    assert sum(fingerprint["file_count"][s] for s in EMBEDDED_SPLITS) == 3


def test_embedded_corpus_split_is_by_file_hash_and_sorted():
    seen: dict[str, str] = {}
    for split in EMBEDDED_SPLITS:
        docs = embedded_documents(split)
        relpaths = [rel for rel, _ in docs]
        assert relpaths == sorted(relpaths), f"{split} documents are sorted by relative path"
        for rel, text in docs:
            assert rel not in seen, f"{rel} is in both {seen[rel]} and {split}"
            seen[rel] = split
            bucket = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 100
            assert split == ("train" if bucket < 90 else "val" if bucket < 95 else "test")
            assert rel.endswith(".py") and isinstance(text, str)
            parts = set(rel.split("/")[:-1])
            assert not parts & {"test", "tests", "idle_test", "__pycache__", "site-packages"}
    counts = corpus_fingerprint()["file_count"]
    assert counts["total"] == len(seen) > 300
    assert {s: counts[s] for s in EMBEDDED_SPLITS} == {s: sum(v == s for v in seen.values()) for s in EMBEDDED_SPLITS}
    assert 0.8 < counts["train"] / counts["total"] < 0.97
    assert counts["val"] > 0 and counts["test"] > 0


def test_corpus_fingerprint_hashes_paths_and_content(monkeypatch, tmp_path):
    _fake_stdlib(tmp_path)
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(tmp_path)})
    first = corpus_fingerprint()
    assert first == corpus_fingerprint(), "same files, same fingerprint"
    assert set(first) == {"python_version", "stdlib", "file_count", "sha256"}

    edited = tmp_path / "edited"
    _fake_stdlib(edited)
    (edited / "os.py").write_text("import sys  # changed\n")
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(edited)})
    assert corpus_fingerprint()["sha256"] != first["sha256"]

    renamed = tmp_path / "renamed"
    _fake_stdlib(renamed)
    (renamed / "os.py").rename(renamed / "posix.py")
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(renamed)})
    assert corpus_fingerprint()["sha256"] != first["sha256"]


def test_embedded_documents_rejects_unknown_split():
    with pytest.raises(ValueError, match=r"'validation'.*\['train', 'val', 'test'\]"):
        embedded_documents("validation")


def test_empty_stdlib_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(tmp_path)})
    with pytest.raises(RuntimeError, match="kind='files'"):
        corpus.embedded_documents("train")
