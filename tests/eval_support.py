"""Shared helpers of the evaluation tests: a byte-level tokenizer, local documents and exported tiny models.

Nothing here downloads. The tokenizer maps each UTF-8 byte to its own id (0-255) and adds BOS (256) and EOS (257),
the layout of litprune's own byte-level BPE at its minimum vocabulary; every string round-trips exactly, which
the perplexity comparison with lm-eval relies on.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, EOS = "<s>", "</s>"


def _bytes_to_unicode() -> dict[int, str]:
    # The GPT-2 byte-to-printable-character table that the ByteLevel pre-tokenizer uses.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """258 tokens: bytes 0-255, then BOS and EOS. Encoding adds no special tokens (like litprune's BPE)."""
    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    vocab[BOS], vocab[EOS] = 256, 257
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([BOS, EOS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS)


def stdlib_documents(count: int = 6) -> list[tuple[str, str]]:
    """A few standard-library source files as (name, text): real held-out-like code, available offline."""
    import bisect
    import colorsys
    import difflib
    import fnmatch
    import textwrap
    import tokenize

    modules = [textwrap, difflib, colorsys, bisect, fnmatch, tokenize][:count]
    return [(f"{module.__name__}.py", inspect.getsource(module)) for module in modules]


def ascii_text(min_chars: int) -> str:
    """Plain ASCII prose-like text of at least `min_chars` characters (deterministic)."""
    text = ""
    for _, source in stdlib_documents():
        text += source.encode("ascii", "ignore").decode("ascii") + "\n\n"
        if len(text) >= min_chars:
            break
    assert len(text) >= min_chars
    return text


def export_tiny(directory: Path, seed: int = 0, record: dict | None = None):
    """Save a tiny Llama with the byte tokenizer (and optionally a litprune.json record) as an HF directory."""
    from conftest import make_tiny_llama

    tokenizer = byte_tokenizer()
    model = make_tiny_llama(seed=seed, vocab_size=len(tokenizer))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if record is not None:
        (Path(directory) / "litprune.json").write_text(json.dumps(record), encoding="utf-8")
    return model, tokenizer
