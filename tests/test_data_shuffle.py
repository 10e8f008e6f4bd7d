"""Document shuffle before packing, the opt-in stdlib test suites, and validation windows spread over a slice."""

from __future__ import annotations

import json
import sysconfig

import numpy as np
import pytest
from conftest import TEST_VOCAB

from litprune.data.corpus import EMBEDDED_SPLITS, corpus_fingerprint, embedded_documents
from litprune.data.order import document_order, order_sha256
from litprune.data.prepare import TextSource, prepare_tokens, prepared_tokens_key, source_fingerprint
from litprune.data.slices import spread_windows
from litprune.data.store import TokenStore
from litprune.data.tokenizer import embedded_tokenizer, train_bpe_tokenizer

DOCS = [f"def f{k}(x):\n    return x * {k}\n" for k in range(40)]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(DOCS * 5, vocab_size=300)


def _write(tmp_path) -> dict[str, list[str]]:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:10]))
    return {"train": [str(tmp_path / "d.jsonl")], "val": [str(tmp_path / "v.jsonl")]}


# ----------------------------------------------------------------------------------------------- document order
def test_document_order_is_seeded_per_split_and_none_keeps_source_order():
    a = document_order(100, 0, "train")
    assert sorted(a.tolist()) == list(range(100)) and a.dtype == np.int64
    np.testing.assert_array_equal(a, document_order(100, 0, "train"))
    assert not np.array_equal(a, document_order(100, 1, "train")), "another seed, another order"
    assert not np.array_equal(a, document_order(100, 0, "val")), "splits are shuffled independently"
    np.testing.assert_array_equal(document_order(5, None, "train"), np.arange(5))
    assert order_sha256(a) == order_sha256(a.astype(np.int32)) != order_sha256(document_order(100, 1, "train"))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_shuffle_seed_must_be_a_non_negative_integer_or_null(seed):
    with pytest.raises(ValueError, match=rf"shuffle_seed={seed!r} must be a non-negative integer.*or null"):
        TextSource(shuffle_seed=seed)


def test_include_tests_only_for_the_embedded_corpus():
    with pytest.raises(ValueError, match=r"include_tests=True only applies to kind='embedded'.*kind='hub'"):
        TextSource(kind="hub", hub_path="x", hub_splits={"train": "train"}, include_tests=True)
    with pytest.raises(ValueError, match=r"include_tests='yes' must be true or false"):
        TextSource(include_tests="yes")


def test_shuffle_is_deterministic_and_the_seed_is_part_of_the_key(tok, tmp_path):
    files = _write(tmp_path)
    first = prepare_tokens(TextSource(kind="files", files=files), tok, out_root=tmp_path / "a")
    again = prepare_tokens(TextSource(kind="files", files=files), tok, out_root=tmp_path / "b")
    other = prepare_tokens(TextSource(kind="files", files=files, shuffle_seed=1), tok, out_root=tmp_path / "a")
    plain = prepare_tokens(TextSource(kind="files", files=files, shuffle_seed=None), tok, out_root=tmp_path / "a")
    assert first.name == again.name and len({first.name, other.name, plain.name}) == 3
    one, two, three = TokenStore(first), TokenStore(again), TokenStore(other)
    assert one.manifest["splits"] == two.manifest["splits"], "same seed: same order hashes and shards"
    for split in ("train", "val"):
        order = one.order(split)
        assert order == {
            "shuffle_seed": 0,
            "documents": one.document_order(split).size,
            "sha256": order_sha256(document_order(order["documents"], 0, split)),
        }
        assert three.order(split)["sha256"] != order["sha256"]
    assert one.order("train")["documents"] == len(DOCS)
    assert TokenStore(plain).order("train")["sha256"] == order_sha256(np.arange(len(DOCS)))
    assert one.manifest["shuffle_seed"] == 0 and three.manifest["shuffle_seed"] == 1
    fingerprint = source_fingerprint(TextSource(kind="files", files=files))
    assert prepared_tokens_key(fingerprint, "t", 0) != prepared_tokens_key(fingerprint, "t", None)


def test_store_reads_format_1_directories_without_order(tok, tmp_path):
    files = _write(tmp_path)
    out = prepare_tokens(TextSource(kind="files", files=files), tok, out_root=tmp_path / "a")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format"] = 1
    for info in manifest["splits"].values():
        del info["order"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    store = TokenStore(out)
    assert store.order("train") is None and store.num_tokens("train") > 0
    with pytest.raises(ValueError, match=r"format 1, which records no document order.*Prepare the tokens again"):
        store.document_ends("train")


# --------------------------------------------------------------------------------------- embedded test suites
def test_include_tests_adds_the_stdlib_test_suites(monkeypatch, tmp_path):
    files = {
        "os.py": "import sys\n",
        "test/test_os.py": "assert True\n",
        "unittest/tests/test_case.py": "x = 1\n",
        "idlelib/idle_test/test_run.py": "y = 2\n",
        "site-packages/thirdparty.py": "z = 3\n",
        "test/__pycache__/stale.py": "stale\n",
        "test/notes.txt": "not python\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "test" / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(tmp_path)})
    default = sorted(rel for split in EMBEDDED_SPLITS for rel, _ in embedded_documents(split))
    grown = sorted(rel for split in EMBEDDED_SPLITS for rel, _ in embedded_documents(split, include_tests=True))
    assert default == ["os.py"]
    assert grown == ["idlelib/idle_test/test_run.py", "os.py", "test/test_os.py", "unittest/tests/test_case.py"]
    assert "include_tests" not in corpus_fingerprint(), "the default fingerprint is unchanged"
    with_tests = corpus_fingerprint(include_tests=True)
    assert with_tests["include_tests"] is True and with_tests["file_count"]["total"] == 4
    assert with_tests["sha256"] != corpus_fingerprint()["sha256"]
    embedded = source_fingerprint(TextSource(include_tests=True))
    assert embedded["corpus"]["sha256"] == with_tests["sha256"]


def test_include_tests_keeps_every_default_file_in_its_split():
    for split in EMBEDDED_SPLITS:
        default = dict(embedded_documents(split))
        grown = dict(embedded_documents(split, include_tests=True))
        assert default.items() <= grown.items()
        assert any("/test/" in f"/{rel}" or "/tests/" in f"/{rel}" for rel in set(grown) - set(default))


# ------------------------------------------------------------------------------------------ slice composition
def _package(relpath: str) -> str:
    return relpath.split("/", 1)[0] if "/" in relpath else "<top level>"


def _package_tokens(store: TokenStore, relpaths: list[str], start: int, end: int) -> tuple[dict, dict]:
    """Per top-level package: tokens among `[start, end)` of the train split, and its largest document's tokens."""
    ends = store.document_ends("train")
    starts = np.concatenate([[0], ends[:-1]])
    inside = np.clip(ends, start, end) - np.clip(starts, start, end)
    tokens: dict[str, int] = {}
    largest: dict[str, int] = {}
    for source_index, count, size in zip(store.document_order("train"), inside, ends - starts, strict=True):
        package = _package(relpaths[source_index])
        tokens[package] = tokens.get(package, 0) + int(count)
        largest[package] = max(largest.get(package, 0), int(size))
    return tokens, largest


COMPOSITION_TOLERANCE = 0.08
"""Largest allowed difference between two slices in a package's share of tokens (packages >= 5% of a slice), on
top of the package's largest document's share of a slice: a document is packed whole, so it lands in one slice."""


def _excess_gap(store: TokenStore, relpaths: list[str]) -> tuple[float, str, float]:
    """How far the first and last 40% of the train split differ in composition beyond what one document explains.

    Returns (largest gap minus its package's allowance, that package, its raw gap)."""
    total = store.num_tokens("train")
    size = int(0.4 * total)
    first, largest = _package_tokens(store, relpaths, 0, size)
    last, _ = _package_tokens(store, relpaths, total - size, total)
    gaps = []
    for package in set(first) | set(last):
        a, b = first.get(package, 0) / size, last.get(package, 0) / size
        if max(a, b) >= 0.05:
            gap = abs(a - b)
            gaps.append((gap - largest[package] / size, package, gap))
    return max(gaps)


def test_shuffled_slices_of_a_split_have_alike_composition():
    """The first and the last 40% of the shuffled train split hold every big stdlib package in like shares;
    in source order (sorted by path) they do not, so the check can fail."""
    tokenizer = embedded_tokenizer(TEST_VOCAB)
    relpaths = [rel for rel, _ in embedded_documents("train")]
    shuffled = TokenStore(prepare_tokens(TextSource(), tokenizer))
    excess, package, gap = _excess_gap(shuffled, relpaths)
    assert excess <= COMPOSITION_TOLERANCE, f"package {package!r} differs by {gap:.3f} between the shuffled slices"
    in_source_order = TokenStore(prepare_tokens(TextSource(shuffle_seed=None), tokenizer))
    excess, package, gap = _excess_gap(in_source_order, relpaths)
    assert excess > 3 * COMPOSITION_TOLERANCE, f"source order: largest gap only {gap:.3f} ({package!r})"


# ------------------------------------------------------------------------------------------ validation windows
def test_spread_windows_cover_the_whole_slice():
    np.testing.assert_array_equal(spread_windows(10, 5), [0, 2, 4, 7, 9])
    np.testing.assert_array_equal(spread_windows(10, None), np.arange(10))
    np.testing.assert_array_equal(spread_windows(3, 8), [0, 1, 2])
    np.testing.assert_array_equal(spread_windows(7, 1), [0])
    picked = spread_windows(1000, 64)
    assert picked.size == 64 and picked[0] == 0 and picked[-1] == 999 and np.all(np.diff(picked) >= 15)
    with pytest.raises(ValueError, match=r"count=0 must be a positive integer"):
        spread_windows(10, 0)
    with pytest.raises(ValueError, match=r"total_windows=0 must be a positive integer"):
        spread_windows(0, 1)


def test_val_tokens_and_val_max_windows_are_exclusive():
    from litprune.data.datamodule import TokenDataModule

    with pytest.raises(ValueError, match=r"data.val_tokens=4096 and data.val_max_windows=16 are both set"):
        TokenDataModule(val_tokens=4096, val_max_windows=16)
    with pytest.raises(ValueError, match=r"data.val_tokens=0 must be a positive integer or null"):
        TokenDataModule(val_tokens=0)


def test_validation_windows_are_spread_and_recorded(tiny_data):
    from litprune.data.datamodule import TokenDataModule

    data = TokenDataModule(vocab_size=TEST_VOCAB, seq_len=32, micro_batch_size=8, val_tokens=1000)
    data.setup("fit")
    total = (data.slices["val"].tokens - 1) // 32
    np.testing.assert_array_equal(data.eval_windows("val"), spread_windows(total, 1000 // 32))
    assert data.eval_windows("val")[-1] == total - 1, "the windows reach the end of the slice"
    batch = next(iter(data.val_dataloader()))
    store = TokenStore(data.store_path)
    second = int(data.eval_windows("val")[1]) * 32
    np.testing.assert_array_equal(batch["input_ids"][1].numpy(), store.read("val", second, second + 32))
    assert len(data.test_dataloader().dataset) == 1000 // 32
    record = data.record()
    assert record["validation"] == {
        "slice": "val",
        "split": "val",
        "windows": 31,
        "tokens": 31 * 32,
        "selection": "spread",
    }
    assert tiny_data.record()["validation"]["windows"] == 16
    json.dumps(record)
    for split in ("train", "val", "test"):
        assert record["order"][split] == store.order(split)
        assert record["order"][split]["shuffle_seed"] == 0 and len(record["order"][split]["sha256"]) == 64
    assert record["source"]["shuffle_seed"] == 0
    assert data.state_dict()["document_order"] == store.order("train")["sha256"]
