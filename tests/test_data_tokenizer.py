"""The byte-level BPE tokenizer: training, Hugging Face compatibility, identity, and the embedded-corpus cache."""

from __future__ import annotations

import hashlib
import sysconfig

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from litprune.data import tokenizer as tokenizer_module
from litprune.data.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    embedded_tokenizer,
    tokenizer_identity,
    train_bpe_tokenizer,
)

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
] * 20


@pytest.fixture(scope="module")
def small_tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def test_special_tokens_and_size(small_tokenizer):
    tok = small_tokenizer
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS_TOKEN, EOS_TOKEN, EOS_TOKEN)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 1)
    assert len(tok) == 300, "enough repeated text to learn all 42 merges"
    assert tok.model_max_length > 10**12, "no tool may truncate documents on the tokenizer's behalf"


def test_plain_encoding_adds_no_special_tokens(small_tokenizer):
    tok = small_tokenizer
    ids = tok("def add(a, b):")["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
    assert tok.encode("x = 1") == tok("x = 1", add_special_tokens=False)["input_ids"]
    tok_bos = train_bpe_tokenizer(TEXTS, vocab_size=300)
    tok_bos.add_bos_token = True
    assert tok_bos("x = 1")["input_ids"] == [tok_bos.bos_token_id, *tok.encode("x = 1")]


def test_byte_level_round_trips_any_text(small_tokenizer):
    text = "naïve café 東京 🙂\n\t  trailing spaces  \r\n\x00end"
    ids = small_tokenizer.encode(text)
    assert small_tokenizer.decode(ids) == text
    assert max(ids) < len(small_tokenizer)


def test_learned_merges_compress_training_text(small_tokenizer):
    text = TEXTS[1]
    assert len(small_tokenizer.encode(text)) < len(text.encode("utf-8")) / 2


@pytest.mark.parametrize("bad", [0, 257, 100.0, "4096", True])
def test_vocab_size_too_small_is_explained(bad):
    with pytest.raises(ValueError, match=rf"vocab_size={bad!r}.*>= 258"):
        train_bpe_tokenizer(TEXTS, vocab_size=bad)


def test_identity_is_stable_across_save_load_and_calls(small_tokenizer, tmp_path):
    identity = tokenizer_identity(small_tokenizer)
    assert len(identity) == 64 and int(identity, 16) >= 0
    small_tokenizer.save_pretrained(tmp_path)
    assert tokenizer_identity(PreTrainedTokenizerFast.from_pretrained(tmp_path)) == identity
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer_identity(auto) == identity
    assert auto("for i in range(3):")["input_ids"] == small_tokenizer("for i in range(3):")["input_ids"]
    # A padded, truncated batch leaves settings on the backend; they are not part of what the tokenizer is.
    small_tokenizer(["a", "abc def"], padding=True, truncation=True, max_length=4)
    assert tokenizer_identity(small_tokenizer) == identity


def test_identity_distinguishes_tokenizers(small_tokenizer):
    assert tokenizer_identity(train_bpe_tokenizer(TEXTS, vocab_size=290)) != tokenizer_identity(small_tokenizer)
    assert tokenizer_identity(train_bpe_tokenizer(TEXTS[:2], vocab_size=300)) != tokenizer_identity(small_tokenizer)
    assert tokenizer_identity(train_bpe_tokenizer(TEXTS, vocab_size=300)) == tokenizer_identity(small_tokenizer)


def _name_in_split(split: str, stem: str) -> str:
    bucket = {"train": range(0, 90), "val": range(90, 95), "test": range(95, 100)}[split]
    for k in range(10_000):
        name = f"{stem}{k}.py"
        if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 in bucket:
            return name
    raise AssertionError("no name found")


@pytest.fixture
def small_stdlib(monkeypatch, tmp_path):
    """A tiny standard library: training the embedded tokenizer on it takes milliseconds."""
    root = tmp_path / "stdlib"
    root.mkdir()
    for k, text in enumerate(TEXTS[:3]):
        (root / _name_in_split("train", f"mod{k}_")).write_text(text * 5)
    # A word repeated all over a validation file: a tokenizer that saw validation text would learn it.
    (root / _name_in_split("val", "val_")).write_text("zebracorn " * 500)
    (root / _name_in_split("test", "test_")).write_text("quokkaplex " * 500)
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(root)})
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))
    return root


def test_embedded_tokenizer_trains_on_train_split_only(small_stdlib):
    tok = embedded_tokenizer(vocab_size=400)
    assert len(tok.encode(TEXTS[0])) < len(TEXTS[0]) / 2
    assert len(tok.encode(" zebracorn")) > 3, "validation text must not shape the vocabulary"
    assert len(tok.encode(" quokkaplex")) > 3, "test text must not shape the vocabulary"


def test_embedded_tokenizer_is_cached_and_not_retrained(small_stdlib, tmp_path, monkeypatch):
    first = embedded_tokenizer(vocab_size=300)
    cached = sorted((tmp_path / "cache" / "tokenizers").iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()
    assert first.name_or_path == str(cached[0])

    def no_training(*args, **kwargs):
        raise AssertionError("a cached tokenizer must be loaded, not retrained")

    monkeypatch.setattr(tokenizer_module, "train_bpe_tokenizer", no_training)
    second = embedded_tokenizer(vocab_size=300)
    assert tokenizer_identity(second) == tokenizer_identity(first)
    assert second.encode(TEXTS[2]) == first.encode(TEXTS[2])
    with pytest.raises(AssertionError, match="not retrained"):
        embedded_tokenizer(vocab_size=301)  # another vocabulary size is another cache entry


def test_embedded_tokenizer_cache_follows_corpus_content(small_stdlib):
    first = embedded_tokenizer(vocab_size=300)
    (small_stdlib / _name_in_split("train", "extra_")).write_text("while True:\n    break\n" * 10)
    from litprune.data import corpus

    corpus._scan.cache_clear()
    corpus._fingerprint.cache_clear()
    second = embedded_tokenizer(vocab_size=300)
    assert second.name_or_path != first.name_or_path


def test_embedded_tokenizer_explicit_cache_dir(small_stdlib, tmp_path):
    tok = embedded_tokenizer(vocab_size=300, cache_dir=tmp_path / "mine")
    assert tok.name_or_path.startswith(str(tmp_path / "mine"))
    assert not (tmp_path / "cache").exists(), "an explicit cache_dir is used instead of the cache root"
