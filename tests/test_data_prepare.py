"""The prepare step (text -> packed token shards + manifest) and `TokenStore`, on small local files."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from litprune.data import prepare as prepare_module
from litprune.data.prepare import TextSource, prepare_tokens, source_fingerprint
from litprune.data.store import TokenStore
from litprune.data.tokenizer import train_bpe_tokenizer

DOCS = [
    "import os\n\ndef main():\n    print(os.getcwd())\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "x = [i * i for i in range(10)]\nprint(sum(x))\n",
    "def greet(name):\n    return f'hello {name}'\n",
    "while True:\n    break\n",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(DOCS * 10, vocab_size=320)


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))


def packed(tok, docs: list[str]) -> np.ndarray:
    """What a split holding `docs` must contain: each document as [bos] + tokens + [eos]."""
    out: list[int] = []
    for doc in docs:
        out += [tok.bos_token_id, *tok.encode(doc), tok.eos_token_id]
    return np.array(out, dtype=np.int64)


def in_pack_order(store: TokenStore, split: str, docs: list[str]) -> list[str]:
    """`docs` (the split's documents in source order) in the order the prepare step packed them."""
    order = store.document_order(split)
    assert sorted(order.tolist()) == list(range(len(docs))), "the document order is a permutation of the documents"
    return [docs[i] for i in order]


def write_txt(directory, docs, prefix="doc"):
    directory.mkdir(parents=True, exist_ok=True)
    for k, doc in enumerate(docs):
        (directory / f"{prefix}{k}.txt").write_text(doc)


def write_jsonl(path, docs, field="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: d, "id": k}) + "\n" for k, d in enumerate(docs)))


def test_txt_files_one_document_per_file(tok, tmp_path):
    write_txt(tmp_path / "train", DOCS[:3])
    write_txt(tmp_path / "val", DOCS[3:])
    source = TextSource(
        kind="files", files={"train": [str(tmp_path / "train" / "*.txt")], "val": [str(tmp_path / "val" / "*.txt")]}
    )
    out = prepare_tokens(source, tok)
    assert out.parent == tmp_path / "cache" / "tokens"
    store = TokenStore(out)
    assert store.splits == ["train", "val"]
    for split, docs in (("train", DOCS[:3]), ("val", DOCS[3:])):
        expected = packed(tok, in_pack_order(store, split, docs))
        assert store.num_tokens(split) == len(expected)
        assert store.num_documents(split) == len(docs)
        np.testing.assert_array_equal(store.read(split, 0, store.num_tokens(split)), expected)
    manifest = store.manifest
    assert manifest["format"] == 2 and manifest["dtype"] == "uint16"
    assert manifest["shuffle_seed"] == 0 and manifest["splits"]["val"]["order"]["shuffle_seed"] == 0
    assert manifest["tokenizer"]["vocab_size"] == len(tok) == store.vocab_size
    assert manifest["tokenizer"]["bos_token_id"] == tok.bos_token_id
    assert manifest["source"]["kind"] == "files"
    assert [f["path"] for f in manifest["source_fingerprint"]["files"]["train"]] == [
        str((tmp_path / "train" / f"doc{k}.txt").resolve()) for k in range(3)
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "train-00000.bin",
        "train-documents.npy",
        "train-order.npy",
        "val-00000.bin",
        "val-documents.npy",
        "val-order.npy",
    ]
    raw = np.fromfile(out / "val-00000.bin", dtype="<u2")
    np.testing.assert_array_equal(raw, packed(tok, in_pack_order(store, "val", DOCS[3:])))


def test_jsonl_json_and_parquet_with_custom_text_field(tok, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:2], field="content")
    (tmp_path / "b.json").write_text(json.dumps([{"content": d} for d in DOCS[2:4]]))
    pq.write_table(pa.table({"content": DOCS[4:], "n": [1]}), tmp_path / "c.parquet")
    write_jsonl(tmp_path / "v.jsonl", DOCS[1:3], field="content")
    files = {
        "train": [str(tmp_path / n) for n in ("a.jsonl", "b.json", "c.parquet")],
        "val": [str(tmp_path / "v.jsonl")],
    }
    store = TokenStore(prepare_tokens(TextSource(kind="files", files=files, text_field="content"), tok))
    train = packed(tok, in_pack_order(store, "train", DOCS))
    np.testing.assert_array_equal(store.read("train", 0, store.num_tokens("train")), train)
    val = packed(tok, in_pack_order(store, "val", DOCS[1:3]))
    np.testing.assert_array_equal(store.read("val", 0, store.num_tokens("val")), val)


def test_mixed_formats_keep_file_order_without_shuffle(tok, tmp_path):
    (tmp_path / "one.txt").write_text(DOCS[0])
    write_jsonl(tmp_path / "two.jsonl", DOCS[1:3])
    (tmp_path / "three.txt").write_text(DOCS[3])
    files = {"train": [str(tmp_path / n) for n in ("one.txt", "two.jsonl", "three.txt")]}
    store = TokenStore(prepare_tokens(TextSource(kind="files", files=files, shuffle_seed=None), tok))
    np.testing.assert_array_equal(store.read("train", 0, store.num_tokens("train")), packed(tok, DOCS[:4]))
    np.testing.assert_array_equal(store.document_order("train"), np.arange(4))
    assert store.order("train")["shuffle_seed"] is None


def test_shuffle_mixes_documents_across_files_of_every_format(tok, tmp_path):
    docs = [f"{DOCS[k % len(DOCS)]}# document {k}\n" for k in range(24)]
    for k in range(0, 24, 2):
        (tmp_path / f"t{k:02d}.txt").write_text(docs[k])
    write_jsonl(tmp_path / "odd.jsonl", docs[1::2])
    # Source order: the .txt files (even documents), then the .jsonl records (odd ones).
    source_order = docs[0::2] + docs[1::2]
    files = {"train": [str(tmp_path / "t*.txt"), str(tmp_path / "odd.jsonl")]}
    store = TokenStore(prepare_tokens(TextSource(kind="files", files=files, shuffle_seed=3), tok))
    order = store.document_order("train")
    assert order.tolist() != list(range(24))
    assert {int(i) >= 12 for i in order[:12]} == {True, False}, "the first half mixes both files"
    expected = packed(tok, [source_order[i] for i in order])
    np.testing.assert_array_equal(store.read("train", 0, store.num_tokens("train")), expected)
    ends = store.document_ends("train")
    assert ends[-1] == store.num_tokens("train") and np.all(np.diff(ends) > 0)
    first = store.read("train", 0, int(ends[0]))
    np.testing.assert_array_equal(first, packed(tok, [source_order[order[0]]]))


def test_empty_documents_are_skipped_and_counted(tok, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [DOCS[0], "", DOCS[1]])
    store = TokenStore(prepare_tokens(TextSource(kind="files", files={"train": [str(tmp_path / "d.jsonl")]}), tok))
    kept = [d for d in in_pack_order(store, "train", [DOCS[0], "", DOCS[1]]) if d]
    np.testing.assert_array_equal(store.read("train", 0, store.num_tokens("train")), packed(tok, kept))
    assert store.manifest["splits"]["train"]["documents"] == 2
    assert store.order("train")["documents"] == 3 and store.document_ends("train").size == 3
    assert store.manifest["splits"]["train"]["empty_documents_skipped"] == 1


def test_shards_split_the_stream_and_reads_cross_boundaries(tok, tmp_path):
    write_txt(tmp_path / "t", DOCS)
    source = TextSource(kind="files", files={"train": [str(tmp_path / "t" / "*.txt")]})
    out = prepare_tokens(source, tok, out_root=tmp_path / "tokens", shard_tokens=17)
    store = TokenStore(out)
    expected = packed(tok, in_pack_order(store, "train", DOCS))
    shards = store.manifest["splits"]["train"]["shards"]
    assert [s["file"] for s in shards] == [f"train-{k:05d}.bin" for k in range(len(shards))]
    assert [s["tokens"] for s in shards[:-1]] == [17] * (len(shards) - 1)
    assert sum(s["tokens"] for s in shards) == len(expected) and len(shards) == -(-len(expected) // 17)
    for start, end in [
        (0, len(expected)),
        (10, 40),
        (16, 18),
        (17, 34),
        (33, 33),
        (5, 6),
        (len(expected) - 3, len(expected)),
    ]:
        got = store.read("train", start, end)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected[start:end])
    store.verify()
    with pytest.raises(IndexError, match=rf"\[0, {len(expected) + 1}\).*holds {len(expected)} tokens"):
        store.read("train", 0, len(expected) + 1)
    with pytest.raises(KeyError, match=r"'val'.*available splits: \['train'\]"):
        store.num_tokens("val")


def test_rerun_is_a_no_op(tok, tmp_path, monkeypatch):
    write_txt(tmp_path / "t", DOCS)
    source = TextSource(kind="files", files={"train": [str(tmp_path / "t" / "*.txt")]})
    out = prepare_tokens(source, tok)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("prepared tokens must be reused, not recomputed")

    monkeypatch.setattr(prepare_module, "_encode_batch", no_tokenizing)
    assert prepare_tokens(source, tok) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], "no work or temporary directories are left"


def test_key_follows_content_paths_field_and_tokenizer(tok, tmp_path):
    write_txt(tmp_path / "t", DOCS)
    source = TextSource(kind="files", files={"train": [str(tmp_path / "t" / "*.txt")]})
    first = prepare_tokens(source, tok)
    (tmp_path / "t" / "doc0.txt").write_text(DOCS[0] + "# edited\n")
    edited = prepare_tokens(source, tok)
    assert edited != first and TokenStore(edited).num_tokens("train") > TokenStore(first).num_tokens("train")
    other_tok = train_bpe_tokenizer(DOCS, vocab_size=300)
    assert prepare_tokens(source, other_tok) not in (first, edited)
    fp = source_fingerprint(source)
    (tmp_path / "t" / "doc0.txt").rename(tmp_path / "t" / "doc9.txt")
    assert source_fingerprint(source) != fp, "a renamed file is a different source"


def test_hub_kind_with_a_local_dataset_directory(tok, tmp_path, monkeypatch):
    import datasets

    # Hub datasets go through the Hugging Face cache; keep this test's copy out of the user's.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    # load_dataset reads a local directory of data files like a hub repository, which needs no network.
    repo = tmp_path / "repo"
    write_jsonl(repo / "train.jsonl", DOCS)
    write_jsonl(repo / "validation.jsonl", DOCS[:2])
    source = TextSource(kind="hub", hub_path=str(repo), hub_splits={"train": "train[:60%]", "val": "validation"})
    store = TokenStore(prepare_tokens(source, tok))
    train = packed(tok, in_pack_order(store, "train", DOCS[:3]))
    np.testing.assert_array_equal(store.read("train", 0, store.num_tokens("train")), train)
    val = packed(tok, in_pack_order(store, "val", DOCS[:2]))
    np.testing.assert_array_equal(store.read("val", 0, store.num_tokens("val")), val)
    assert store.manifest["source_fingerprint"]["hub_splits"] == {"train": "train[:60%]", "val": "validation"}


def test_num_proc_gives_identical_shards(tok, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", DOCS * 40)
    source = TextSource(kind="files", files={"train": [str(tmp_path / "d.jsonl")]})
    one = TokenStore(prepare_tokens(source, tok, out_root=tmp_path / "a"))
    two = TokenStore(prepare_tokens(source, tok, out_root=tmp_path / "b", num_proc=2))
    assert one.manifest["splits"] == two.manifest["splits"]


def test_damaged_shards_are_detected(tok, tmp_path):
    write_txt(tmp_path / "t", DOCS)
    out = prepare_tokens(TextSource(kind="files", files={"train": [str(tmp_path / "t" / "*.txt")]}), tok)
    shard = out / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = TokenStore(out)  # same size: opening does not hash
    with pytest.raises(ValueError, match=r"train-00000\.bin.*sha256.*prepare again"):
        store.verify()
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(ValueError, match=r"holds \d+ bytes but the manifest records"):
        TokenStore(out)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        TokenStore(out)
    with pytest.raises(FileNotFoundError, match="not a prepared-tokens directory"):
        TokenStore(tmp_path)


def test_store_pickles_without_copying_shards(tok, tmp_path):
    import pickle

    write_txt(tmp_path / "t", DOCS)
    store = TokenStore(prepare_tokens(TextSource(kind="files", files={"train": [str(tmp_path / "t" / "*.txt")]}), tok))
    before = store.read("train", 0, 20)
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 4000
    np.testing.assert_array_equal(clone.read("train", 0, 20), before)


def test_token_dtype_depends_on_vocabulary(tok, tmp_path):
    big = train_bpe_tokenizer(DOCS, vocab_size=300)
    big.add_tokens([f"<extra_{k}>" for k in range(65536 - len(big))])
    assert len(big) == 65536
    (tmp_path / "a.txt").write_text(DOCS[0] + "<extra_65000>")
    store = TokenStore(prepare_tokens(TextSource(kind="files", files={"train": [str(tmp_path / "a.txt")]}), big))
    assert store.manifest["dtype"] == "uint32"
    tokens = store.read("train", 0, store.num_tokens("train"))
    assert big.convert_tokens_to_ids("<extra_65000>") in tokens.tolist()
    assert (store.path / "train-00000.bin").stat().st_size == 4 * store.num_tokens("train")


# ------------------------------------------------------------------------------------------------ errors
def test_missing_path_is_named(tok, tmp_path):
    source = TextSource(kind="files", files={"train": [str(tmp_path / "nothing-*.jsonl")]})
    with pytest.raises(ValueError, match=r"missing data path: files\['train'\] entry '.*nothing-\*\.jsonl'"):
        prepare_tokens(source, tok)
    source = TextSource(kind="files", files={"train": [str(tmp_path / "absent.txt")]})
    with pytest.raises(ValueError, match=r"missing data path.*absent\.txt"):
        prepare_tokens(source, tok)


def test_unknown_extension_is_named(tok, tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"Unsupported file extension '\.csv'.*data\.csv.*\.jsonl"):
        prepare_tokens(TextSource(kind="files", files={"train": [str(tmp_path / "data.csv")]}), tok)


def test_missing_text_field_is_named(tok, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", DOCS, field="body")
    source = TextSource(kind="files", files={"train": [str(tmp_path / "d.jsonl")]}, text_field="content")
    with pytest.raises(ValueError, match=r"text_field 'content' is missing.*\['body', 'id'\]"):
        prepare_tokens(source, tok, out_root=tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [], "a failed prepare leaves nothing behind"


def test_non_text_field_is_named(tok, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", DOCS)
    source = TextSource(kind="files", files={"train": [str(tmp_path / "d.jsonl")]}, text_field="id")
    with pytest.raises(ValueError, match=r"text_field 'id' holds int"):
        prepare_tokens(source, tok)


def test_unknown_kind_and_incomplete_sources():
    with pytest.raises(ValueError, match=r"kind='s3' is not a source kind.*'embedded', 'files', 'hub'"):
        TextSource(kind="s3")
    with pytest.raises(ValueError, match=r"kind='files' needs files="):
        TextSource(kind="files")
    with pytest.raises(ValueError, match=r"files\['train'\]='a.txt' must be a non-empty list"):
        TextSource(kind="files", files={"train": "a.txt"})
    with pytest.raises(ValueError, match=r"(?s)needs hub_path.*needs hub_splits"):
        TextSource(kind="hub")
    with pytest.raises(ValueError, match=r"split name 'a/b'"):
        TextSource(kind="files", files={"a/b": ["x.txt"]})


def test_split_with_zero_tokens_is_an_error(tok, tmp_path):
    write_txt(tmp_path / "t", DOCS[:1])
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    files = {"train": [str(tmp_path / "t" / "*.txt")], "val": [str(tmp_path / "empty.jsonl")]}
    with pytest.raises(ValueError, match=r"Split 'val' of the 'files' source yields zero tokens \(1 empty"):
        prepare_tokens(TextSource(kind="files", files=files), tok, out_root=tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_tokenizer_without_bos_is_rejected(tok, tmp_path):
    write_txt(tmp_path / "t", DOCS[:1])
    no_bos = train_bpe_tokenizer(DOCS, vocab_size=300)
    no_bos.bos_token = None
    with pytest.raises(ValueError, match=r"bos_token_id=None.*needs both"):
        prepare_tokens(TextSource(kind="files", files={"train": [str(tmp_path / "t" / "*.txt")]}), no_bos)


def test_embedded_corpus_end_to_end(monkeypatch, tmp_path):
    """The default path: train the 4096-token BPE on the stdlib train split, tokenize all three splits."""
    from litprune.data.corpus import embedded_documents
    from litprune.data.tokenizer import embedded_tokenizer

    tokenizer = embedded_tokenizer()
    assert len(tokenizer) == 4096
    out = prepare_tokens(TextSource(kind="embedded"), tokenizer)
    store = TokenStore(out)
    assert store.splits == ["train", "val", "test"]
    assert store.num_tokens("train") > 1_000_000
    val_docs = [text for text in in_pack_order(store, "val", [t for _, t in embedded_documents("val")]) if text]
    np.testing.assert_array_equal(store.read("val", 0, store.num_tokens("val")), packed(tokenizer, val_docs))
    store.verify()
    monkeypatch.setattr(prepare_module, "_encode_batch", None)
    assert prepare_tokens(TextSource(), embedded_tokenizer()) == out
