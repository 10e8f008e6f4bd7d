"""`TokenStore`: read access to a prepared-tokens directory (see `prepare.py`).

Each split is one long token stream stored as consecutive shard files; the store presents it as a single
array you can slice by token position. Shards are memory-mapped, so opening is cheap (only the manifest is
read and file sizes are checked) and every DataLoader worker or rank can open its own store. Content hashes
are checked only on request (`verify()`), since hashing gigabytes on every open would dominate start-up.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path

import numpy as np

from litprune.data.prepare import MANIFEST_FORMAT, MANIFEST_NAME, READABLE_MANIFEST_FORMATS


class TokenStore:
    """The token streams of a prepared-tokens directory, one per split.

    Args:
        path: a directory returned by `prepare_tokens` (holding `manifest.json` and the shard files).

    Raises:
        FileNotFoundError: no manifest, or a shard file is missing.
        ValueError: an unknown manifest format, or a shard whose size differs from the manifest.

    Example:
        >>> store = TokenStore(prepare_tokens(TextSource("embedded"), embedded_tokenizer()))  # doctest: +SKIP
        >>> store.read("val", 0, 8)  # doctest: +SKIP
        array([0, 475, 288, ...])
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{str(manifest_path)!r} does not exist, so {str(self.path)!r} is not a prepared-tokens directory. "
                "Pass the directory returned by litprune.data.prepare.prepare_tokens."
            )
        self._manifest = json.loads(manifest_path.read_text())
        if self._manifest.get("format") not in READABLE_MANIFEST_FORMATS:
            raise ValueError(
                f"{str(manifest_path)!r} has format {self._manifest.get('format')!r}; this version of litprune reads "
                f"formats {list(READABLE_MANIFEST_FORMATS)} (writes {MANIFEST_FORMAT}). Prepare the tokens again with "
                "this version."
            )
        self._dtype = np.dtype(self._manifest["dtype"]).newbyteorder("<")
        # Per split: shard file names and the token offset where each shard starts (plus the total at the end).
        self._files: dict[str, list[Path]] = {}
        self._offsets: dict[str, list[int]] = {}
        for split, info in self._manifest["splits"].items():
            files, offsets = [], [0]
            for shard in info["shards"]:
                file = self.path / shard["file"]
                expected = shard["tokens"] * self._dtype.itemsize
                if not file.is_file():
                    raise FileNotFoundError(
                        f"Shard {str(file)!r} of split {split!r} is missing. The prepared directory is damaged: "
                        f"remove {str(self.path)!r} and prepare the tokens again."
                    )
                actual = file.stat().st_size
                if actual != expected:
                    raise ValueError(
                        f"Shard {str(file)!r} holds {actual} bytes but the manifest records {shard['tokens']} "
                        f"{self._dtype.name} tokens ({expected} bytes). Remove {str(self.path)!r} and prepare again."
                    )
                files.append(file)
                offsets.append(offsets[-1] + shard["tokens"])
            if offsets[-1] != info["tokens"]:
                raise ValueError(
                    f"Split {split!r}: shards hold {offsets[-1]} tokens, the manifest says {info['tokens']}. "
                    f"Remove {str(self.path)!r} and prepare again."
                )
            self._files[split] = files
            self._offsets[split] = offsets
        self._maps: dict[Path, np.memmap] = {}

    # Memory maps are reopened lazily after pickling (DataLoader workers, spawned ranks); pickling an open
    # np.memmap would copy the whole shard into the pickle.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    @property
    def manifest(self) -> dict:
        """The parsed `manifest.json`: source, source fingerprint, tokenizer, dtype and per-split shards."""
        return self._manifest

    @property
    def splits(self) -> list[str]:
        """Split names, in the order they were prepared."""
        return list(self._manifest["splits"])

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer that produced the tokens (`len(tokenizer)`)."""
        return int(self._manifest["tokenizer"]["vocab_size"])

    @property
    def tokenizer_identity(self) -> str:
        """`tokenizer_identity` of that tokenizer; compare it with the tokenizer you train or evaluate with."""
        return self._manifest["tokenizer"]["identity"]

    @property
    def bos_token_id(self) -> int:
        return int(self._manifest["tokenizer"]["bos_token_id"])

    @property
    def eos_token_id(self) -> int:
        return int(self._manifest["tokenizer"]["eos_token_id"])

    def _check_split(self, split: str) -> None:
        if split not in self._offsets:
            raise KeyError(f"Split {split!r} is not in {str(self.path)!r}; available splits: {self.splits}.")

    def num_tokens(self, split: str) -> int:
        """Tokens in a split (all documents packed with their BOS and EOS)."""
        self._check_split(split)
        return self._offsets[split][-1]

    def num_documents(self, split: str) -> int:
        """Non-empty documents packed into a split."""
        self._check_split(split)
        return int(self._manifest["splits"][split]["documents"])

    def order(self, split: str) -> dict | None:
        """How a split's documents were ordered before packing: `{"shuffle_seed", "documents", "sha256"}`
        (`shuffle_seed` None: source order), or None for a format-1 directory, which predates the record."""
        self._check_split(split)
        order = self._manifest["splits"][split].get("order")
        if order is None:
            return None
        return {key: order[key] for key in ("shuffle_seed", "documents", "sha256")}

    def document_order(self, split: str) -> np.ndarray:
        """The source index of each packed document of a split, in pack order (int64; empty documents included)."""
        return self._document_file(split, "permutation_file")

    def document_ends(self, split: str) -> np.ndarray:
        """The token end offset of each packed document of a split, in pack order (int64, cumulative; an empty
        document adds zero tokens). Document k covers tokens `[ends[k - 1], ends[k])`, with `ends[-1]` 0."""
        return self._document_file(split, "document_ends_file")

    def _document_file(self, split: str, key: str) -> np.ndarray:
        self._check_split(split)
        order = self._manifest["splits"][split].get("order")
        if order is None:
            raise ValueError(
                f"{str(self.path)!r} was prepared in manifest format {self._manifest['format']}, which records no "
                "document order. Prepare the tokens again with this version of litprune."
            )
        return np.load(self.path / order[key]).astype(np.int64, copy=False)

    def _map(self, file: Path) -> np.memmap:
        array = self._maps.get(file)
        if array is None:
            array = np.memmap(file, dtype=self._dtype, mode="r")
            self._maps[file] = array
        return array

    def read(self, split: str, start: int, end: int) -> np.ndarray:
        """Tokens `[start, end)` of a split as a new int64 array, across shard boundaries if needed.

        Args:
            split: split name.
            start: first token position (0-based).
            end: one past the last position; `start <= end <= num_tokens(split)`.
        """
        total = self.num_tokens(split)
        if not (0 <= start <= end <= total):
            raise IndexError(
                f"Token range [{start}, {end}) is outside split {split!r}, which holds {total} tokens; "
                f"need 0 <= start <= end <= {total}."
            )
        out = np.empty(end - start, dtype=np.int64)
        offsets, files = self._offsets[split], self._files[split]
        position = start
        shard = bisect.bisect_right(offsets, start) - 1
        while position < end:
            shard_start, shard_end = offsets[shard], offsets[shard + 1]
            stop = min(end, shard_end)
            out[position - start : stop - start] = self._map(files[shard])[position - shard_start : stop - shard_start]
            position = stop
            shard += 1
        return out

    def verify(self) -> None:
        """Hash every shard and compare with the manifest; raises ValueError naming the first damaged shard."""
        for split, info in self._manifest["splits"].items():
            for shard, file in zip(info["shards"], self._files[split], strict=True):
                digest = hashlib.sha256()
                with open(file, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):
                        digest.update(block)
                if digest.hexdigest() != shard["sha256"]:
                    raise ValueError(
                        f"Shard {str(file)!r} of split {split!r} does not match its recorded sha256 "
                        f"{shard['sha256']}; it was modified or damaged. Remove {str(self.path)!r} and prepare again."
                    )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_tokens(s):,}" for s in self.splits)
        return f"TokenStore({str(self.path)!r}, {sizes} tokens)"
