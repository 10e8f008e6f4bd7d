"""Where evaluation text comes from: hub corpora by name, local files, or the embedded held-out split.

Perplexity numbers only compare when the text does, and published pruning papers disagree precisely on which
split and which slice of WikiText or C4 they used. So a source is always named together with its split
(`"wikitext:train"`, `"c4:validation"`), the split is passed explicitly to `datasets.load_dataset`, and the
loaded `TextSource` carries the name, split, document count and a content hash into every result.

Source specs (strings, so they fit YAML and the command line):

- `c4[:split]`: `allenai/c4`, one shard of `en/` (train or validation shard 0), first 8000 documents, joined
  by " ".
- `wikitext[:split]`: `Salesforce/wikitext` `wikitext-103-v1`, first 131072 rows, joined by blank lines.
- `wikitext2[:split]`: `Salesforce/wikitext` `wikitext-2-raw-v1`, first 131072 rows, joined by blank lines.
- `wikitext103-raw[:split]`: `Salesforce/wikitext` `wikitext-103-raw-v1`, first 131072 rows, blank lines.
- `cnn_dailymail[:split]`: `abisee/cnn_dailymail` `3.0.0`, column `article`, first 8000 articles, joined by " ".
- `embedded[:split]`: litprune's embedded corpus (the held-out `test` split by default), one document per file.
- a path: a `.txt` file (one document), a `.jsonl` file (field `text` of every row, or `file.jsonl#field`), or a
  directory (every `.txt`, `.md`, `.py` and `.jsonl` file under it, sorted by relative path).

The hub slices and joiners follow the reference evaluation of the paper's authors
(llm-pruning-collection, `pruning/minitron/utils.py::get_ppl_enc`), which used the *train* split; that is the
default here too, so numbers compare with the paper, and the split is always recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from litprune.utils.suggest import did_you_mean

Document = tuple[str, str]
"""(name, text): a relative path or row id, and the document's text."""

LOCAL_SUFFIXES = (".txt", ".md", ".py", ".jsonl")
"""File types read from a directory source."""


@dataclass(frozen=True)
class HubCorpus:
    """A corpus on the Hugging Face hub and the slice of it that the paper's protocol reads.

    Attributes:
        path: dataset id for `datasets.load_dataset`.
        config: dataset configuration name, if any.
        column: the text column.
        max_documents: how many leading rows are read.
        joiner: string placed between documents when they are joined into one text.
        data_files: per split, the files to read (for corpora too large to read whole, such as C4).
        default_split: the split used when the spec names none.
    """

    path: str
    config: str | None
    column: str
    max_documents: int
    joiner: str
    data_files: dict[str, str] = field(default_factory=dict)
    default_split: str = "train"


HUB_CORPORA: dict[str, HubCorpus] = {
    "c4": HubCorpus(
        path="allenai/c4",
        config=None,
        column="text",
        max_documents=8000,
        joiner=" ",
        data_files={
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        },
    ),
    "wikitext": HubCorpus("Salesforce/wikitext", "wikitext-103-v1", "text", 131072, "\n\n"),
    "wikitext2": HubCorpus("Salesforce/wikitext", "wikitext-2-raw-v1", "text", 131072, "\n\n"),
    "wikitext103-raw": HubCorpus("Salesforce/wikitext", "wikitext-103-raw-v1", "text", 131072, "\n\n"),
    "cnn_dailymail": HubCorpus("abisee/cnn_dailymail", "3.0.0", "article", 8000, " "),
}

EMBEDDED = "embedded"
EMBEDDED_DEFAULT_SPLIT = "test"


class TextSourceError(ValueError):
    """A text source spec that cannot be read, with what to do instead."""


@dataclass(frozen=True)
class TextSource:
    """Documents of one named source and split, ready to be joined into one evaluation text.

    Attributes:
        name: the spec's source name (`c4`, `embedded`, or the local path as given).
        split: the split read (`train`, `validation`, `test`, or `file` for local files).
        documents: the documents, in order.
        joiner: separator used by `text`.
        origin: where the text came from, in words (dataset id and config, or the absolute path).
    """

    name: str
    split: str
    documents: tuple[Document, ...]
    joiner: str
    origin: str

    @property
    def text(self) -> str:
        """All documents joined into one string, the way the paper's protocol tokenizes them (once)."""
        return self.joiner.join(text for _, text in self.documents)

    @property
    def label(self) -> str:
        """`name:split`, the key results are reported under."""
        return f"{self.name}:{self.split}"

    def sha256(self) -> str:
        """A hash of the joined text, so two results can be checked to share their text."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def parse_source_spec(spec: str) -> tuple[str, str | None, Path | None]:
    """Split a source spec into (name, split or None, local path or None) without reading anything.

    Raises:
        TextSourceError: an unknown corpus name (with close matches) or a path that does not exist.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise TextSourceError(f"A text source spec must be a non-empty string, got {spec!r}.")
    path_part = spec.split("#", 1)[0]
    known = [*HUB_CORPORA, EMBEDDED]
    if spec.partition(":")[0] not in known and _looks_like_path(path_part):
        path = Path(path_part).expanduser()
        if not path.exists():
            raise TextSourceError(f"Text source {spec!r}: no file or directory at {path}. Check the path.")
        return spec, None, path
    name, _, split = spec.partition(":")
    if name not in known:
        hint = did_you_mean(name, known)
        raise TextSourceError(
            f"Unknown text source {name!r}.{hint} Known corpora: {', '.join(known)}; or give a path to a .txt or "
            ".jsonl file or a directory of text files."
        )
    if name == EMBEDDED:
        from litprune.data.corpus import EMBEDDED_SPLITS

        if split and split not in EMBEDDED_SPLITS:
            raise TextSourceError(
                f"Text source {spec!r}: the embedded corpus has splits {list(EMBEDDED_SPLITS)}, not {split!r}."
            )
    return name, split or None, None


def load_text_source(spec: str, max_documents: int | None = None) -> TextSource:
    """Read a source named by `spec` (see the module table).

    Args:
        spec: `name[:split]` of a known corpus, `embedded[:split]`, or a local path (`file.jsonl#field` picks
            a JSON field other than `text`).
        max_documents: read at most this many documents (default: the protocol's slice for hub corpora, all
            documents otherwise).

    Raises:
        TextSourceError: the spec is unknown, the file holds no text, or the hub is unreachable (the message
            says so and suggests a local file or `embedded`).
    """
    name, split, path = parse_source_spec(spec)
    if path is not None:
        field_name = spec.split("#", 1)[1] if "#" in spec else "text"
        documents = _local_documents(path, field_name)
        source = TextSource(spec, "file", tuple(documents), "\n\n", str(path.resolve()))
    elif name == EMBEDDED:
        split = split or EMBEDDED_DEFAULT_SPLIT
        source = TextSource(EMBEDDED, split, tuple(embedded_documents(split)), "\n\n", "litprune embedded corpus")
    else:
        source = _hub_source(name, split, max_documents)
    if max_documents is not None:
        source = TextSource(source.name, source.split, source.documents[:max_documents], source.joiner, source.origin)
    if not any(text.strip() for _, text in source.documents):
        raise TextSourceError(f"Text source {spec!r} ({source.origin}) holds no text.")
    return source


def load_documents(spec: str) -> list[Document]:
    """The documents of a source spec, for building offline tasks from your own held-out text.

    Args:
        spec: as for `load_text_source`; a directory of files is the usual choice.
    """
    return list(load_text_source(spec).documents)


def embedded_documents(split: str = EMBEDDED_DEFAULT_SPLIT) -> list[Document]:
    """Documents of litprune's embedded corpus (default: the held-out `test` split, never used for training)."""
    from litprune.data.corpus import embedded_documents as _embedded

    return list(_embedded(split))


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith(".") or spec.endswith(LOCAL_SUFFIXES) or Path(spec).exists()


def _local_documents(path: Path, field_name: str) -> list[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise TextSourceError(f"Directory {path} holds no {', '.join(LOCAL_SUFFIXES)} files.")
        documents: list[Document] = []
        for file in files:
            documents.extend(_file_documents(file, field_name, file.relative_to(path).as_posix()))
        return documents
    return _file_documents(path, field_name, path.name)


def _file_documents(path: Path, field_name: str, name: str) -> list[Document]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TextSourceError(f"{path} is not UTF-8 text ({err}). Convert it or leave it out.") from err
    if path.suffix != ".jsonl":
        return [(name, raw)]
    documents = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TextSourceError(f"{path} line {number} is not JSON ({err}).") from err
        if not isinstance(row, dict) or field_name not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise TextSourceError(
                f"{path} line {number} has no field {field_name!r} (found {keys}); name the field as '{path}#<field>'."
            )
        documents.append((f"{name}:{number}", str(row[field_name])))
    return documents


def _hub_source(name: str, split: str | None, max_documents: int | None) -> TextSource:
    corpus = HUB_CORPORA[name]
    split = split or corpus.default_split
    kwargs: dict = {"split": split}
    if corpus.data_files:
        if split not in corpus.data_files:
            raise TextSourceError(
                f"Text source {name!r} reads one shard per split; known splits {sorted(corpus.data_files)}, "
                f"not {split!r}."
            )
        kwargs["data_files"] = {split: corpus.data_files[split]}
        kwargs["verification_mode"] = "no_checks"
    origin = corpus.path + (f" ({corpus.config})" if corpus.config else "")
    import datasets

    try:
        dataset = datasets.load_dataset(corpus.path, corpus.config, **kwargs)
    except Exception as err:  # the hub raises many types (ConnectionError, DatasetNotFoundError, HTTP errors)
        raise TextSourceError(
            f"Could not load text source {name!r} ({origin}, split {split!r}) from the Hugging Face hub: {err}. "
            "If this machine is offline, evaluate on a local file (a path) or on 'embedded'."
        ) from err
    count = min(len(dataset), max_documents or corpus.max_documents)
    texts = dataset[:count][corpus.column]
    documents: Sequence[Document] = [(f"{split}:{i}", text) for i, text in enumerate(texts)]
    return TextSource(name, split, tuple(documents), corpus.joiner, origin)
