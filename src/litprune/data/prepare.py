"""The prepare step: text in, packed token shards out, once per (source, tokenizer).

Training reads fixed-length windows out of one long token stream per split, so text is tokenized once, ahead of
training, into flat binary shards that every rank memory-maps (see `store.py`).

Design choices:
- A source is plain data (`TextSource`), so it is written in YAML: the embedded corpus, local files
  (.txt, .jsonl, .json, .parquet, read through Hugging Face `datasets`), or a Hugging Face Hub dataset.
- Every document is packed as `[bos] + tokens + [eos]`; windows therefore cross document boundaries, as in Llama
  pretraining. Empty documents are skipped (they carry no text) and counted in the manifest.
- Before packing, each split's documents are shuffled with a seeded permutation (`TextSource.shuffle_seed`,
  `order.document_order`), across all files of the split, for every source kind. Sources often list documents
  in a meaningful order (the embedded corpus by path, a crawl by date), which would give the token slices
  carved out of one split (calibration, pretraining, retraining, validation) different compositions; shuffled,
  every slice is an alike sample. `shuffle_seed: null` keeps the source order. The manifest records per split
  the seed, the document count and the permutation's sha256; `<split>-order.npy` holds the permutation
  (source index of each packed document) and `<split>-documents.npy` the cumulative token end offset of each
  packed document (int64, empty documents included with zero tokens), so any token position maps back to its
  source document.
- Shards are raw little-endian `uint16` when the vocabulary has at most 65,535 entries, else `uint32`, named
  `<split>-<k:05d>.bin`, at most `shard_tokens` tokens each; `manifest.json` records sizes and sha256s.
- The output directory is `out_root/<key>`, the key hashing what the tokens depend on: the source fingerprint
  (file paths and content hashes; the embedded corpus hash; hub path, config name and split expressions), the
  shuffle seed and the tokenizer identity. Preparing the same thing again returns the existing directory
  without tokenizing. The directory is published atomically, so concurrent ranks cannot see a partial result.
- Preparing at scale is a step of its own, before training: `litprune prepare --config <run config> --num-proc K`
  (`litprune.cli.prepare`). A killed prepare leaves only hidden temporaries (`.<key>.tmp-<pid>-...`, and the
  `datasets` work directory), never a directory under the final name; the next prepare sweeps them and starts the
  tokenization over (downloads already in the Hugging Face cache are reused). Multi-process runs with a hub source
  refuse to tokenize and name the command (`TokenDataModule(prepared_only=...)`).

Example YAML for a local dataset::

    source:
      kind: files
      files:
        train: [data/train-*.jsonl]
        val: [data/val.jsonl]
      text_field: text
      shuffle_seed: 0
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from litprune.data.cache import cache_root
from litprune.data.corpus import EMBEDDED_SPLITS, corpus_fingerprint, embedded_documents
from litprune.data.order import document_order, order_sha256
from litprune.data.tokenizer import tokenizer_identity
from litprune.utils.atomic import atomic_dir, scratch_dir, sweep_stale_temporaries
from litprune.utils.hub import hub_errors

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 2
"""Format of the manifests `prepare_tokens` writes. 2 added the document order (shuffle) and document files."""
READABLE_MANIFEST_FORMATS = (1, 2)
"""Formats `TokenStore` reads; format 1 (source order, no document files) holds the same kind of shards."""
MANIFEST_NAME = "manifest.json"
DEFAULT_SHARD_TOKENS = 2**26
SOURCE_KINDS = ("embedded", "files", "hub")
FILE_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""File extension -> Hugging Face `datasets` builder used to read it."""

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GLOB_CHARS = ("*", "?", "[")
_BATCH_DOCUMENTS = 1000


@dataclass
class TextSource:
    """Where the text comes from. Plain data, so a run's YAML can describe it.

    Attributes:
        kind: "embedded" (the Python standard library source shipped with the interpreter; splits train, val,
            test), "files" (local text files) or "hub" (a Hugging Face Hub dataset, or a local dataset
            directory that `datasets.load_dataset` understands).
        files: for kind "files": split name -> list of file paths or glob patterns (`**` allowed). The format
            follows the extension: .txt (each file is one document), .jsonl / .json (one document per record),
            .parquet (one document per row).
        text_field: the record field holding the text, for .jsonl, .json, .parquet and hub datasets.
        hub_path: for kind "hub": the dataset path, e.g. "allenai/c4".
        hub_name: for kind "hub": the dataset configuration name, e.g. "en" (None for the default).
        hub_splits: for kind "hub": our split name -> split expression of the hub dataset, e.g.
            {"train": "train[:1%]", "val": "validation[:1000]"}.
        shuffle_seed: seed of the document shuffle before packing (a non-negative integer), so every token slice
            of a split holds an alike mix of documents; each split is shuffled independently, across all its
            files. null keeps the source order (the embedded corpus is listed by path). Part of the
            prepared-tokens key.
        include_tests: for kind "embedded": also include the standard library's own test suites (`test`,
            `tests`, `idle_test` directories), which more than doubles the corpus. The tokenizer is still
            trained on the default corpus.
    """

    kind: str = "embedded"
    files: dict[str, list[str]] | None = None
    text_field: str = "text"
    hub_path: str | None = None
    hub_name: str | None = None
    hub_splits: dict[str, str] | None = None
    shuffle_seed: int | None = 0
    include_tests: bool = False

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("Invalid text source:\n- " + "\n- ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.kind not in SOURCE_KINDS:
            return [f"kind={self.kind!r} is not a source kind; use one of {list(SOURCE_KINDS)}."]
        if not isinstance(self.text_field, str) or not self.text_field:
            problems.append(f"text_field={self.text_field!r} must name the record field that holds the text.")
        seed = self.shuffle_seed
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            problems.append(
                f"shuffle_seed={seed!r} must be a non-negative integer (the document shuffle's seed) or null "
                "(keep the source order)."
            )
        if not isinstance(self.include_tests, bool):
            problems.append(f"include_tests={self.include_tests!r} must be true or false.")
        elif self.include_tests and self.kind != "embedded":
            problems.append(
                f"include_tests=True only applies to kind='embedded' (the standard library's test suites); this "
                f"source has kind={self.kind!r}. Remove include_tests."
            )
        if self.kind == "files":
            if not self.files or not isinstance(self.files, dict):
                problems.append(
                    f"kind='files' needs files={{split: [paths or globs]}}, e.g. {{'train': ['data/*.jsonl']}}; "
                    f"got files={self.files!r}."
                )
            else:
                for split, entries in self.files.items():
                    if isinstance(entries, str) or not entries:
                        problems.append(
                            f"files[{split!r}]={entries!r} must be a non-empty list of paths or glob patterns."
                        )
        elif self.kind == "hub":
            if not self.hub_path:
                problems.append("kind='hub' needs hub_path, the dataset path such as 'allenai/c4'.")
            if not self.hub_splits or not isinstance(self.hub_splits, dict):
                problems.append(
                    f"kind='hub' needs hub_splits={{our split: hub split expression}}, e.g. "
                    f"{{'train': 'train[:1%]', 'val': 'validation[:1000]'}}; got hub_splits={self.hub_splits!r}."
                )
        for split in self.split_names() if not problems else []:
            if not isinstance(split, str) or not _SPLIT_NAME.match(split):
                problems.append(
                    f"split name {split!r} cannot be used in shard file names; use letters, digits, '_', '-', '.'."
                )
        return problems

    def split_names(self) -> list[str]:
        """The split names this source produces, in the order they are prepared."""
        if self.kind == "embedded":
            return list(EMBEDDED_SPLITS)
        if self.kind == "files":
            return list(self.files or {})
        return list(self.hub_splits or {})


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    return _sha256_file_cached(str(path), stat.st_size, stat.st_mtime_ns)


# Keyed by size and mtime as well as path, so an edited file is hashed again; a setup() that prepares the
# same files twice in one process reads them once.
@functools.lru_cache(maxsize=4096)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_files(source: TextSource) -> dict[str, list[Path]]:
    """Expand the paths and glob patterns of a "files" source into absolute file paths, per split.

    Patterns are expanded in sorted order; the order of entries in each list is kept. Raises ValueError for an
    entry that matches no file ("missing data path") and for an extension that is not a supported format.
    """
    if source.kind != "files":
        raise ValueError(f"resolve_files needs a source of kind 'files', got kind={source.kind!r}.")
    resolved: dict[str, list[Path]] = {}
    for split, entries in (source.files or {}).items():
        paths: list[Path] = []
        for entry in entries:
            pattern = os.path.expanduser(str(entry))
            if any(c in pattern for c in _GLOB_CHARS):
                matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            else:
                matches = [Path(pattern)] if Path(pattern).is_file() else []
            if not matches:
                where = "a directory, not a file" if Path(pattern).is_dir() else "no file"
                raise ValueError(
                    f"missing data path: files[{split!r}] entry {str(entry)!r} matches {where} "
                    f"(working directory {os.getcwd()!r}). Fix the path or glob pattern, e.g. 'data/*.jsonl'."
                )
            for path in matches:
                if path.suffix.lower() not in FILE_FORMATS:
                    raise ValueError(
                        f"Unsupported file extension {path.suffix!r} for {str(path)!r} in files[{split!r}]. "
                        f"Supported: {sorted(FILE_FORMATS)}; convert the file or rename it to its actual format."
                    )
                paths.append(path.resolve())
        resolved[split] = paths
    return resolved


def source_fingerprint(source: TextSource) -> dict:
    """What the text of a source is, for the prepared-tokens key and the manifest.

    For "files": every file's absolute path, size and content sha256 (editing a file changes it). For
    "embedded": the corpus fingerprint (Python version, file counts, content sha256). For "hub": path, config
    name and split expressions; the hub content itself is not hashed, so pin a dataset that may change by
    giving it a new `hub_path` or split expression.
    """
    common = {"kind": source.kind, "text_field": source.text_field}
    if source.kind == "embedded":
        return {**common, "corpus": corpus_fingerprint(source.include_tests)}
    if source.kind == "files":
        files = {
            split: [{"path": str(p), "bytes": p.stat().st_size, "sha256": _sha256_file(p)} for p in paths]
            for split, paths in resolve_files(source).items()
        }
        return {**common, "files": files}
    return {**common, "hub_path": source.hub_path, "hub_name": source.hub_name, "hub_splits": source.hub_splits}


def _key_payload(fingerprint: dict) -> dict:
    if fingerprint["kind"] == "embedded":
        # The corpus content, not where this interpreter lives: identical stdlibs share prepared tokens.
        corpus = fingerprint["corpus"]
        return {**fingerprint, "corpus": {"sha256": corpus["sha256"], "file_count": corpus["file_count"]}}
    return fingerprint


def prepared_tokens_key(fingerprint: dict, identity: str, shuffle_seed: int | None = 0) -> str:
    """The directory name of prepared tokens: a hash of the source fingerprint, the tokenizer identity and the
    document shuffle seed (`TextSource.shuffle_seed`; None = source order)."""
    payload = {
        "format": MANIFEST_FORMAT,
        "source": _key_payload(fingerprint),
        "tokenizer": identity,
        "shuffle_seed": shuffle_seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (batched; the Rust backend parallelises it)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _pack_batch(batch: dict, *, field: str, tokenizer, bos: int, eos: int) -> dict:
    """`[bos] + tokens + [eos]` per document; an empty document becomes an empty list (skipped, but counted)."""
    texts = batch[field]
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(
                f"text_field {field!r} holds {type(text).__name__} value {text!r:.60} instead of text. "
                "Set text_field to the field that holds the document text, or drop records without text."
            )
    encoded = iter(_encode_batch(tokenizer, [text for text in texts if text]))
    return {"input_ids": [[bos, *next(encoded), eos] if text else [] for text in texts]}


class _ShardWriter:
    """Appends token arrays to `<split>-<k>.bin` files of at most `cap` tokens, hashing as it writes."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, cap: int) -> None:
        self.directory, self.split, self.dtype, self.cap = directory, split, dtype, cap
        self.shards: list[dict] = []
        self._file = None
        self._digest = None
        self._count = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self._digest = hashlib.sha256()
        self._count = 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1].update(tokens=self._count, sha256=self._digest.hexdigest())
            self._file = None

    def write(self, tokens: np.ndarray) -> None:
        data = tokens.astype(self.dtype, copy=False)
        while data.size:
            if self._file is None or self._count == self.cap:
                self._close_current()
                self._open()
            take = min(self.cap - self._count, data.size)
            chunk = data[:take].tobytes()
            self._file.write(chunk)
            self._digest.update(chunk)
            self._count += take
            data = data[take:]

    def close(self) -> list[dict]:
        self._close_current()
        return self.shards


def _load_parts(source: TextSource, split: str, files: dict[str, list[Path]], work: Path, num_proc: int) -> list:
    """The split's documents as (dataset, text column, description) parts, one per run of same-format files."""
    import datasets

    nproc = num_proc if num_proc > 1 else None
    if source.kind == "embedded":
        texts = [text for _, text in embedded_documents(split, source.include_tests)]
        return [(datasets.Dataset.from_dict({"text": texts}), "text", f"embedded corpus split {split!r}")]
    if source.kind == "hub":
        expression = source.hub_splits[split]
        with hub_errors(source.hub_path, "dataset"):
            dataset = datasets.load_dataset(source.hub_path, source.hub_name, split=expression, num_proc=nproc)
        where = f"hub dataset {source.hub_path!r} (name {source.hub_name!r}, split {expression!r})"
        return [(dataset, source.text_field, where)]
    groups: list[tuple[str, list[Path]]] = []
    for path in files[split]:
        builder = FILE_FORMATS[path.suffix.lower()]
        if groups and groups[-1][0] == builder:
            groups[-1][1].append(path)
        else:
            groups.append((builder, [path]))
    parts = []
    for builder, paths in groups:
        # sample_by="document": a .txt file is one document, not one document per line.
        extra = {"sample_by": "document"} if builder == "text" else {}
        dataset = datasets.load_dataset(
            builder,
            data_files=[str(p) for p in paths],
            split="train",
            cache_dir=str(work / "hf"),
            num_proc=nproc,
            **extra,
        )
        field = "text" if builder == "text" else source.text_field
        parts.append((dataset, field, f"files {[str(p) for p in paths]} of split {split!r}"))
    return parts


def _load_split(source: TextSource, split: str, files: dict[str, list[Path]], work: Path, num_proc: int):
    """The split's documents in source order as one dataset with a single "text" column, and a description.

    The parts (runs of same-format files) are joined so the shuffle can mix documents across all of them.
    """
    import datasets

    parts = []
    for dataset, field, where in _load_parts(source, split, files, work, num_proc):
        if field not in dataset.column_names:
            raise ValueError(
                f"text_field {field!r} is missing from the records of {where}; their fields are "
                f"{dataset.column_names}. Set text_field to the field that holds the text."
            )
        feature = dataset.features[field]
        dtype = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
        if dtype not in ("string", "large_string"):
            raise ValueError(
                f"text_field {field!r} holds {dtype} values instead of text in the records of {where}. Set "
                "text_field to the field that holds the document text, or drop records without text."
            )
        dataset = dataset.select_columns([field])
        if field != "text":
            dataset = dataset.rename_column(field, "text")
        parts.append((dataset, where))
    if len(parts) == 1:
        return parts[0]
    # One text type for every part, so parts read by different builders can be concatenated.
    joined = [
        d if d.features["text"].dtype == "large_string" else d.cast_column("text", datasets.Value("large_string"))
        for d, _ in parts
    ]
    return datasets.concatenate_datasets(joined), "; ".join(w for _, w in parts)


def _pack_split(
    dataset,
    where: str,
    *,
    split: str,
    source: TextSource,
    tokenizer,
    dtype: np.dtype,
    out: Path,
    work: Path,
    num_proc: int,
    shard_tokens: int,
    cache_name: str,
) -> dict:
    """Shuffle one split's documents, tokenize and pack them into shards under `out`; its manifest entry."""
    vocab_size, bos, eos = len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
    permutation = document_order(len(dataset), source.shuffle_seed, split)
    if source.shuffle_seed is not None:
        dataset = dataset.select(permutation)
    log.info("Tokenizing %s (%d documents)", where, len(dataset))
    packed = dataset.map(
        _pack_batch,
        batched=True,
        batch_size=_BATCH_DOCUMENTS,
        remove_columns=dataset.column_names,
        fn_kwargs={"field": "text", "tokenizer": tokenizer, "bos": bos, "eos": eos},
        num_proc=num_proc if num_proc > 1 else None,
        cache_file_name=str(work / f"{split}.arrow"),
        # An explicit fingerprint spares `datasets` from hashing the tokenizer; the cache file is private to
        # this run anyway.
        new_fingerprint=hashlib.sha256(f"{cache_name}/{split}".encode()).hexdigest()[:16],
        load_from_cache_file=False,
        desc=f"Tokenizing {split}",
    )
    writer = _ShardWriter(out, split, dtype, shard_tokens)
    all_lengths: list[np.ndarray] = []
    for table in packed.with_format("arrow").iter(batch_size=_BATCH_DOCUMENTS):
        column = table.column("input_ids").combine_chunks()
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        values = column.flatten().to_numpy(zero_copy_only=False)
        # The model's embedding is sized from len(tokenizer); an id beyond it would fail (or, in uint16, wrap
        # around) far from here.
        if values.size and int(values.max()) >= vocab_size:
            raise ValueError(
                f"The tokenizer produced id {int(values.max())} but has only {vocab_size} entries "
                "(len(tokenizer)); its vocabulary is inconsistent. Use a tokenizer whose ids are all below "
                "len(tokenizer)."
            )
        writer.write(values)
        all_lengths.append(lengths.astype(np.int64))
    shards = writer.close()
    lengths = np.concatenate(all_lengths) if all_lengths else np.empty(0, dtype=np.int64)
    tokens = int(lengths.sum())
    empty = int(np.count_nonzero(lengths == 0))
    if tokens == 0:
        raise ValueError(
            f"Split {split!r} of the {source.kind!r} source yields zero tokens ({empty} empty documents). "
            "Point it at data that contains text, or remove the split."
        )
    np.save(out / document_order_file(split), permutation.astype("<i8"))
    np.save(out / document_ends_file(split), np.cumsum(lengths).astype("<i8"))
    return {
        "tokens": tokens,
        "documents": int(lengths.size) - empty,
        "empty_documents_skipped": empty,
        "order": {
            "shuffle_seed": source.shuffle_seed,
            "documents": int(permutation.size),
            "sha256": order_sha256(permutation),
            "permutation_file": document_order_file(split),
            "document_ends_file": document_ends_file(split),
        },
        "shards": shards,
    }


def document_order_file(split: str) -> str:
    """Name of the file holding a split's document order: int64, the source index of each packed document."""
    return f"{split}-order.npy"


def document_ends_file(split: str) -> str:
    """Name of the file holding a split's document ends: int64 cumulative token end offset per packed document."""
    return f"{split}-documents.npy"


def prepared_tokens_dir(
    source: TextSource, tokenizer, out_root: Path | None = None, fingerprint: dict | None = None
) -> Path:
    """Where `prepare_tokens` publishes the tokens of `source` under `tokenizer` (`out_root/<key>`), prepared or not.

    Nothing is tokenized or downloaded: the key needs only the source fingerprint (local files are hashed; a hub
    source is named, not read) and the tokenizer identity.

    Args:
        source: where the text comes from.
        tokenizer: the run's tokenizer.
        out_root: where prepared directories live; default `cache_root()/tokens`.
        fingerprint: `source_fingerprint(source)` when the caller has it already.
    """
    fingerprint = source_fingerprint(source) if fingerprint is None else fingerprint
    root = Path(out_root) if out_root is not None else cache_root() / "tokens"
    return root / prepared_tokens_key(fingerprint, tokenizer_identity(tokenizer), source.shuffle_seed)


def is_prepared(directory: Path) -> bool:
    """Whether `directory` holds complete prepared tokens: its manifest, written last, exists."""
    return (Path(directory) / MANIFEST_NAME).is_file()


def prepare_tokens(
    source: TextSource,
    tokenizer,
    out_root: Path | None = None,
    num_proc: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
) -> Path:
    """Tokenize a text source into packed token shards, or return the existing ones.

    Args:
        source: where the text comes from (see `TextSource`).
        tokenizer: a Hugging Face fast tokenizer with `bos_token_id` and `eos_token_id`
            (e.g. `embedded_tokenizer()`).
        out_root: where prepared directories live; default `cache_root()/tokens`.
        num_proc: processes for reading files and tokenizing (`datasets` workers); 1 tokenizes in this process,
            where the Rust tokenizer still uses several threads.
        shard_tokens: maximum tokens per shard file. Not part of the key: an existing directory prepared with
            another shard size holds the same tokens and is reused.

    Returns:
        The prepared directory `out_root/<key>` holding `manifest.json`, the shard files and, per split, the
        document order (`<split>-order.npy`) and document ends (`<split>-documents.npy`).

    Raises:
        ValueError: a path or glob matching nothing ("missing data path"), an unsupported extension, a
            `text_field` missing from the records, a split that yields no tokens, or a tokenizer without BOS/EOS.
    """
    if not isinstance(source, TextSource):
        raise TypeError(f"source must be a TextSource, got {type(source).__name__}.")
    problems = source._problems()
    if problems:
        raise ValueError("Invalid text source:\n- " + "\n- ".join(problems))
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"num_proc={num_proc!r} must be a positive integer (1 = tokenize in this process).")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"shard_tokens={shard_tokens!r} must be a positive integer (default {DEFAULT_SHARD_TOKENS}).")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(
            f"The tokenizer has bos_token_id={bos!r}, eos_token_id={eos!r}; packing needs both. Set "
            "tokenizer.bos_token and tokenizer.eos_token, or use litprune.data.tokenizer.embedded_tokenizer()."
        )

    fingerprint = source_fingerprint(source)
    identity = tokenizer_identity(tokenizer)
    final = prepared_tokens_dir(source, tokenizer, out_root, fingerprint=fingerprint)
    root = final.parent
    sweep_stale_temporaries(root)  # work and output directories of prepare steps that were killed
    if is_prepared(final):
        log.info("Prepared tokens found at %s; nothing to do.", final)
        return final
    if final.exists():
        raise FileExistsError(
            f"{str(final)!r} exists but holds no {MANIFEST_NAME}, so it is not a complete prepared-tokens directory "
            "(litprune never leaves one half-written; something else created it). Remove it and prepare again."
        )

    vocab_size = len(tokenizer)
    dtype = np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")
    files = resolve_files(source) if source.kind == "files" else {}
    root.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict] = {}
    with scratch_dir(root, "prepare") as work, atomic_dir(final) as tmp:
        for split in source.split_names():
            dataset, where = _load_split(source, split, files, work, num_proc)
            splits[split] = _pack_split(
                dataset,
                where,
                split=split,
                source=source,
                tokenizer=tokenizer,
                dtype=dtype,
                out=tmp,
                work=work,
                num_proc=num_proc,
                shard_tokens=shard_tokens,
                cache_name=final.name,
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": dataclasses.asdict(source),
            "source_fingerprint": fingerprint,
            "shuffle_seed": source.shuffle_seed,
            "tokenizer": {
                "identity": identity,
                "vocab_size": vocab_size,
                "bos_token_id": bos,
                "eos_token_id": eos,
                "name_or_path": getattr(tokenizer, "name_or_path", None) or None,
            },
            "dtype": dtype.name,
            "splits": splits,
        }
        # Insertion order is kept: splits stay in the order they were declared.
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return final
