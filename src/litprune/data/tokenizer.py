"""A byte-level BPE tokenizer trained locally, delivered as a standard Hugging Face fast tokenizer.

Experiments on the embedded corpus need a tokenizer that no one has to download. We train a byte-level BPE
(GPT-2 / Llama 3 style: every byte is in the base alphabet, so any text round-trips) on the corpus's TRAIN split
only, so no validation or test text shapes the vocabulary.

Design choices:
- Two special tokens: `<|begin_of_text|>` (BOS) and `<|end_of_text|>` (EOS, also the padding token), the names
  Llama 3 uses. Ids 0 and 1.
- Encoding plain text adds no special tokens (`add_bos_token=False`, `add_eos_token=False`); the prepare step
  adds BOS and EOS explicitly around every document. Set `tokenizer.add_bos_token = True` (or pass
  `add_bos_token=True` to lm-eval) where a leading BOS is wanted.
- `model_max_length` is the Hugging Face "unbounded" value, so no tool truncates or warns on long documents;
  the model's context length is the model's business.
- The trained tokenizer is cached under `cache_root()/tokenizers/<key>`, the key hashing the corpus content,
  the vocabulary size and the `tokenizers` version; it is saved with `save_pretrained`, so any Hugging Face
  tool (and lm-eval) can load it with `AutoTokenizer.from_pretrained(path)`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from litprune.data.cache import cache_root
from litprune.data.corpus import corpus_fingerprint, embedded_documents
from litprune.utils.atomic import atomic_dir
from litprune.utils.progress import progress_bar, shows_progress

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
"""Smallest vocabulary: the 256 byte symbols plus the special tokens."""

DEFAULT_VOCAB_SIZE = 4096
"""Vocabulary of the embedded BPE when none is asked for (the `TokenDataModule` default; suits the embedded corpus)."""

# Bump when the training recipe changes, so cached tokenizers trained the old way are not reused.
_RECIPE_VERSION = 1


def _check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small for a byte-level BPE tokenizer: it needs the 256 byte symbols "
            f"plus {len(SPECIAL_TOKENS)} special tokens {list(SPECIAL_TOKENS)}. Use an integer >= {MIN_VOCAB_SIZE} "
            f"({DEFAULT_VOCAB_SIZE} suits the embedded corpus)."
        )


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=VERY_LARGE_INTEGER,
    )


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, progress: bool | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`.

    Args:
        texts: training documents (any iterable of strings; consumed once).
        vocab_size: target vocabulary size including the 256 byte symbols and the two special tokens, so at
            least 258. The trained vocabulary is smaller when the texts do not contain enough distinct merges;
            `len(tokenizer)` is always the true size (size the model's embedding from it).
        progress: Show a bar over the documents read and the `tokenizers` trainer's own progress (True/False;
            None follows `LITPRUNE_PROGRESS`, see `litprune.utils.progress`).

    Returns:
        A fast tokenizer with `bos_token` `<|begin_of_text|>` (id 0), `eos_token` and `pad_token`
        `<|end_of_text|>` (id 1). Encoding text adds no special tokens.
    """
    _check_vocab_size(vocab_size)
    backend = Tokenizer(models.BPE())
    # add_prefix_space=False: a document's first word is tokenized as written, no invisible space is invented.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=shows_progress(progress),  # the merge phase, drawn by `tokenizers` itself
    )
    total = len(texts) if hasattr(texts, "__len__") else None
    documents = progress_bar(texts, desc="tokenizer: reading documents", total=total, unit="doc", progress=progress)
    backend.train_from_iterator(documents, trainer=trainer)
    return _wrap(backend)


def tokenizer_identity(tokenizer: PreTrainedTokenizerFast) -> str:
    """A hash that identifies what a tokenizer does, stable across `save_pretrained` / `from_pretrained`.

    It is the sha256 of the tokenizer's JSON serialization (vocabulary, merges, normalizer, pre-tokenizer,
    post-processor, decoder, added tokens) together with its BOS, EOS and pad tokens. Transient call settings
    (the truncation and padding a previous call left on the backend) are excluded, so encoding a padded batch
    does not change the identity.

    Args:
        tokenizer: a Hugging Face fast tokenizer (one backed by the `tokenizers` library).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"tokenizer_identity needs a fast tokenizer backed by the `tokenizers` library; got "
            f"{type(tokenizer).__name__}. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    serialized = json.loads(backend.to_str())
    serialized.pop("truncation", None)
    serialized.pop("padding", None)
    payload = {
        "tokenizer": serialized,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def embedded_tokenizer(
    vocab_size: int = DEFAULT_VOCAB_SIZE, cache_dir: Path | None = None, progress: bool | None = None
) -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer of the embedded corpus, trained once and then loaded from the cache.

    Trained on the train split of the embedded corpus (the standard library source of this interpreter).
    The first call trains (seconds) and saves with `save_pretrained`; later calls with the same corpus,
    vocabulary size and `tokenizers` version load the saved copy without retraining.

    Args:
        vocab_size: vocabulary size including the 256 byte symbols and the two special tokens (>= 258).
        cache_dir: directory holding cached tokenizers; default `cache_root()/tokenizers`
            (`$LITPRUNE_CACHE/tokenizers` when that variable is set).
        progress: Show the training's progress (True/False; None follows `LITPRUNE_PROGRESS`).

    Returns:
        The tokenizer, loaded from its cache directory (`tokenizer.name_or_path` is that directory).
    """
    _check_vocab_size(vocab_size)
    path = embedded_tokenizer_path(vocab_size, cache_dir)
    if not (path / "tokenizer.json").is_file():
        fingerprint = corpus_fingerprint()
        texts = [text for _, text in embedded_documents("train")]
        tokenizer = train_bpe_tokenizer(texts, vocab_size, progress=progress)
        with atomic_dir(path) as tmp:
            tokenizer.save_pretrained(tmp)
            provenance = {
                "corpus": fingerprint,
                "trained_on_split": "train",
                "vocab_size_requested": vocab_size,
                "vocab_size": len(tokenizer),
                "tokenizers_version": tokenizers.__version__,
                "recipe_version": _RECIPE_VERSION,
                "identity": tokenizer_identity(tokenizer),
            }
            (tmp / "litprune_tokenizer.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def embedded_tokenizer_path(vocab_size: int = DEFAULT_VOCAB_SIZE, cache_dir: Path | None = None) -> Path:
    """The cache directory `embedded_tokenizer` uses for this corpus and vocabulary size (may not exist yet)."""
    _check_vocab_size(vocab_size)
    key_source = {
        "corpus_sha256": corpus_fingerprint()["sha256"],
        "vocab_size": vocab_size,
        "tokenizers_version": tokenizers.__version__,
        "recipe_version": _RECIPE_VERSION,
    }
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "tokenizers"
    return root / f"bpe{vocab_size}-{key}"
