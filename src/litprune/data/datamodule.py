"""`TokenDataModule`: packed token windows over named, disjoint token slices, exactly resumable.

Pipeline: text (embedded corpus, local files, or a hub dataset) -> `prepare_tokens` (tokenize once, uint16/uint32
memory-mapped shards + manifest, cached) -> named slices (token ranges of a split, checked disjoint) -> windows
of `seq_len + 1` tokens with stride `seq_len` (input = w[:-1], labels = w[1:]) -> a seeded order reshuffled every
epoch over the slice -> each process reads its own micro-batches of the one global stream. Documents are shuffled
(seeded, `source.shuffle_seed`) before packing, so every slice of a split is an alike sample of it. Validation and
test read `val_tokens` worth of windows spread evenly over their whole slice (`spread_windows`).

Preparing at scale is a step of its own (`litprune prepare --config <run config> --num-proc K`): a run with
`prepared_only` (by default: every multi-process run with a hub source) never tokenizes; missing shards stop it at
once with that command, rather than one rank downloading and tokenizing while the others wait on a barrier.

Exact resume: the data position (windows consumed by all processes) is counted when a batch actually enters
the training step (`on_after_batch_transfer`, after Lightning's one-batch prefetch), stored in the checkpoint
through `state_dict`, and the next run's stream starts exactly there: no window is re-read or skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from litprune.data.order import WindowOrder, rank_microbatches
from litprune.data.prepare import TextSource, is_prepared, prepare_tokens, prepared_tokens_dir, resolve_files
from litprune.data.slices import (
    ResolvedSlice,
    TokenSlice,
    default_slices,
    num_windows,
    resolve_slices,
    spread_windows,
    window_tokens,
)
from litprune.data.store import TokenStore
from litprune.data.tokenizer import DEFAULT_VOCAB_SIZE

DEFAULT_SEQ_LEN = 256
"""`TokenDataModule`'s tokens per training sequence when `seq_len` is not set (the study sizes its steps with it)."""

DEFAULT_MICRO_BATCH_SIZE = 8
"""`TokenDataModule`'s sequences per process per forward pass when `micro_batch_size` is not set."""


class TokenDataModule(LightningDataModule):
    """Token windows for causal-LM training, sized and ordered for token-budgeted runs.

    With no `source`, trains on the embedded corpus: the Python standard library source of the running
    interpreter (test suites excluded), split by file into train/val/test, tokenized by a byte-level BPE that
    litprune trains on the train split and caches.

    Args:
        source: where the text comes from: `{kind: embedded}` (default), `{kind: files, files: {train: [a.jsonl],
            val: [b.jsonl]}}`, or `{kind: hub, hub_path: ..., hub_splits: {train: "train[:1%]"}}`. Its
            `shuffle_seed` (default 0; null keeps the source order) shuffles documents before packing.
        tokenizer: a Hugging Face tokenizer directory or hub id; None trains (once, cached) a byte-level BPE on
            the embedded corpus's train split.
        vocab_size: vocabulary of the trained BPE (only when `tokenizer` is None).
        seq_len: tokens per training sequence (each window holds seq_len + 1 tokens).
        micro_batch_size: sequences per process per forward pass.
        slices: named token ranges, e.g. `{pretrain: {split: train, start: 0, end: 2000000}, retrain: {split:
            train, start: 2000000}}`; slices over one split must not overlap. Default: one slice per split.
        train_slice: slice read for training.
        val_slice: slice for validation (null: no validation).
        test_slice: slice for `litprune test` (null: none).
        seed: seed of the training order (same slice and seed: same order, in every arm).
        val_tokens: tokens of validation (and of `litprune test`): `max(1, val_tokens // seq_len)` windows spread
            evenly over the whole slice; null (with `val_max_windows` null): every window of the slice.
        val_max_windows: the older way to cap validation, in windows (spread over the slice like `val_tokens`);
            set at most one of the two.
        num_workers: DataLoader worker processes.
        cache_dir: where tokenizers and token shards are cached (default `$LITPRUNE_CACHE` or ~/.cache/litprune).
        prepared_only: never tokenize in the run: when the prepared shards are missing, stop at setup with the
            `litprune prepare` command that writes them. null (default): true for runs of more than one process
            with a hub source (`source.kind: hub`), false otherwise (the shards are prepared on first use).

    Example, shards prepared once before a multi-node run (`litprune prepare --config run.yaml --num-proc 32`)::

        data:
          class_path: litprune.data.datamodule.TokenDataModule
          init_args:
            source: {kind: hub, hub_path: mlfoundations/dclm-baseline-1.0, hub_splits: {train: train}}
            tokenizer: meta-llama/Llama-3.1-8B
            prepared_only: true

    Raises:
        ValueError: invalid settings (all problems together); a missing data path of a `files` source.
    """

    def __init__(
        self,
        source: TextSource | None = None,
        tokenizer: str | None = None,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        seq_len: int = DEFAULT_SEQ_LEN,
        micro_batch_size: int = DEFAULT_MICRO_BATCH_SIZE,
        slices: dict[str, TokenSlice] | None = None,
        train_slice: str = "train",
        val_slice: str | None = "val",
        test_slice: str | None = "test",
        seed: int = 0,
        val_tokens: int | None = None,
        val_max_windows: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        prepared_only: bool | None = None,
    ) -> None:
        super().__init__()
        problems = []
        for name, value in (("seq_len", seq_len), ("micro_batch_size", micro_batch_size), ("vocab_size", vocab_size)):
            if not isinstance(value, int) or value < 1:
                problems.append(f"data.{name}={value!r} must be a positive integer")
        for name, value in (("val_tokens", val_tokens), ("val_max_windows", val_max_windows)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"data.{name}={value!r} must be a positive integer or null")
        if val_tokens is not None and val_max_windows is not None:
            problems.append(
                f"data.val_tokens={val_tokens!r} and data.val_max_windows={val_max_windows!r} are both set; they size "
                "the same thing, so set only val_tokens (tokens of validation) and leave val_max_windows null"
            )
        if num_workers < 0:
            problems.append(f"data.num_workers={num_workers!r} must be >= 0")
        if prepared_only is not None and not isinstance(prepared_only, bool):
            problems.append(f"data.prepared_only={prepared_only!r} must be true, false or null (automatic)")
        if problems:
            raise ValueError("Invalid data settings: " + "; ".join(problems) + ".")
        self.source = source if source is not None else TextSource(kind="embedded")
        if self.source.kind == "files":
            resolve_files(self.source)  # a missing data path fails here, before any tokenizer is trained
        self.tokenizer_name = tokenizer
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.slice_specs = dict(slices) if slices else None
        self.train_slice, self.val_slice, self.test_slice = train_slice, val_slice, test_slice
        self.seed = seed
        self.val_tokens = val_tokens
        self.val_max_windows = val_max_windows
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.prepared_only = prepared_only
        self.tokenizer: Any = None
        self.store_path: Path | None = None
        self.slices: dict[str, ResolvedSlice] = {}
        self._order: WindowOrder | None = None
        self._document_order: str | None = None  # sha256 of the training split's document order
        self.position = 0  # training windows consumed by all processes together
        self._loaded_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------- preparing
    def load_tokenizer(self) -> Any:
        """Return the run's tokenizer (training and caching the embedded BPE on first use)."""
        if self.tokenizer is None:
            if self.tokenizer_name is None:
                from litprune.data.tokenizer import embedded_tokenizer

                cache = self.cache_dir / "tokenizers" if self.cache_dir else None
                self.tokenizer = embedded_tokenizer(self.vocab_size, cache_dir=cache)
            else:
                from transformers import AutoTokenizer

                from litprune.utils.hub import hub_errors

                with hub_errors(self.tokenizer_name, "tokenizer"):
                    self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
        return self.tokenizer

    @property
    def tokenizer_dir(self) -> str:
        """Where the tokenizer loads from: its directory or hub id (the embedded BPE's cache directory)."""
        if self.tokenizer_name is not None:
            return self.tokenizer_name
        from litprune.data.tokenizer import embedded_tokenizer_path

        cache = self.cache_dir / "tokenizers" if self.cache_dir else None
        return str(embedded_tokenizer_path(self.vocab_size, cache_dir=cache))

    def prepared_dir(self) -> Path:
        """Where this data's prepared token shards live (`prepare_tokens`' directory), whether prepared or not."""
        return prepared_tokens_dir(self.source, self.load_tokenizer(), out_root=self._tokens_root())

    def prepare(self, num_proc: int = 1) -> Path:
        """Tokenize the source into the prepared shards with `num_proc` processes (nothing to do when they exist);
        return their directory. This is what `litprune prepare` runs; `prepared_only` does not apply."""
        return prepare_tokens(self.source, self.load_tokenizer(), out_root=self._tokens_root(), num_proc=num_proc)

    def prepared_only_reason(self, world_size: int = 1) -> str | None:
        """Why this run must find its shards prepared instead of tokenizing (None: it may tokenize).

        Args:
            world_size: processes of the run (`trainer.world_size`).
        """
        if self.prepared_only:
            return "data.init_args.prepared_only is true"
        if self.prepared_only is None and world_size > 1 and self.source.kind == "hub":
            return (
                f"the run has {world_size} processes and its source is a hub dataset: one process would download and "
                "tokenize it while the others wait (set data.init_args.prepared_only=false to allow it anyway)"
            )
        return None

    def check_prepared(self, world_size: int = 1, command: str | None = None) -> None:
        """Raise unless the shards are prepared, when this run may not tokenize (`prepared_only_reason`).

        Args:
            world_size: processes of the run.
            command: the `litprune prepare` command line to name in the error (default: a generic one).

        Raises:
            ValueError: the shards are missing; the message names their directory and the command to run.
        """
        reason = self.prepared_only_reason(world_size)
        if reason is None:
            return
        directory = self.prepared_dir()
        if is_prepared(directory):
            return
        command = command or "litprune prepare --config <the run's config files>"
        raise ValueError(
            f"The run's token shards are not prepared ({directory} holds no manifest) and {reason}. Prepare them "
            f"once, before training, then start the run again:\n  {command} --num-proc <processes>"
        )

    def _world_size(self) -> int:
        trainer = self.trainer
        return int(trainer.world_size) if trainer is not None else 1

    def prepare_data(self) -> None:
        if self.prepared_only_reason(self._world_size()) is not None:
            self.check_prepared(self._world_size())
            return
        prepare_tokens(self.source, self.load_tokenizer(), out_root=self._tokens_root())

    def setup(self, stage: str | None = None) -> None:
        if self.store_path is not None:
            return
        self.check_prepared(self._world_size())
        self.store_path = prepare_tokens(self.source, self.load_tokenizer(), out_root=self._tokens_root())
        store = TokenStore(self.store_path)
        specs = self.slice_specs if self.slice_specs is not None else default_slices(store)
        self.slices = resolve_slices(specs, store)
        for role, name in (
            ("train_slice", self.train_slice),
            ("val_slice", self.val_slice),
            ("test_slice", self.test_slice),
        ):
            if name is not None and name not in self.slices:
                raise ValueError(
                    f"data.{role}={name!r} is not a defined slice; defined slices: {sorted(self.slices)}. "
                    "Name one of them or add it under data.slices."
                )
            if name is not None and num_windows(self.slices[name].tokens, self.seq_len) < 1:
                raise ValueError(
                    f"Slice {name!r} has {self.slices[name].tokens} tokens, fewer than one window of seq_len + 1 = "
                    f"{self.seq_len + 1}. Enlarge the slice or lower data.seq_len."
                )
        self._order = WindowOrder(num_windows(self.slices[self.train_slice].tokens, self.seq_len), self.seed)
        train_order = store.order(self.slices[self.train_slice].split)
        self._document_order = train_order["sha256"] if train_order else None
        if self._loaded_state is not None:
            self._check_state(self._loaded_state)

    def _tokens_root(self) -> Path | None:
        return self.cache_dir / "tokens" if self.cache_dir else None

    # ------------------------------------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        stream = _TrainStream(
            store_path=self.store_path,
            window_slice=self.slices[self.train_slice],
            seq_len=self.seq_len,
            order=self._order,
            start_position=self.position,
            rank=rank,
            world_size=world,
            micro_batch_size=self.micro_batch_size,
        )
        return DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self.val_slice)

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self.test_slice)

    def _eval_loader(self, name: str | None) -> DataLoader | list:
        if name is None:
            return []
        dataset = _EvalWindows(self.store_path, self.slices[name], self.seq_len, self.eval_windows(name))
        return DataLoader(dataset, batch_size=self.micro_batch_size, shuffle=False, num_workers=self.num_workers)

    def eval_windows(self, name: str) -> np.ndarray:
        """The windows validation or test reads from slice `name`: `val_tokens // seq_len` (or `val_max_windows`)
        of them, at least one, spread evenly over the whole slice; all of them when neither is set."""
        count = self.val_max_windows
        if self.val_tokens is not None:
            count = max(1, self.val_tokens // self.seq_len)
        return spread_windows(num_windows(self.slices[name].tokens, self.seq_len), count)

    # --------------------------------------------------------------------------------------------- position
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.training and not trainer.sanity_checking:
            self.position += int(batch["input_ids"].shape[0]) * trainer.world_size
        return batch

    @property
    def train_windows(self) -> int:
        """Windows in one epoch over the training slice."""
        if self._order is None:
            raise RuntimeError("Call setup() before asking for the number of training windows.")
        return self._order.num_windows

    def epochs_read(self) -> float:
        """Passes over the training slice so far (fractional)."""
        return self.position / self.train_windows

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "train_slice": self.train_slice,
            "train_range": list(self._slice_range(self.train_slice)),
            "seq_len": self.seq_len,
            "seed": self.seed,
            "train_windows": self.train_windows,
            "document_order": self._document_order,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = dict(state_dict)
        self.position = int(state_dict["position"])
        if self._order is not None:
            self._check_state(self._loaded_state)

    def _check_state(self, state: dict[str, Any]) -> None:
        # Keys a checkpoint lacks (written before they existed) are not compared: older checkpoints still resume.
        current = {k: v for k, v in self.state_dict().items() if k != "position" and k in state}
        saved = {k: state[k] for k in current}
        differ = {k: (saved[k], current[k]) for k in current if saved[k] != current[k]}
        if differ:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"The checkpoint's data position belongs to a different data stream ({details}). Resume with the "
                "data settings the run was started with, or start a new run without --ckpt_path."
            )

    def _slice_range(self, name: str) -> tuple[str, int, int]:
        s = self.slices[name]
        return (s.split, s.start, s.end)

    # ------------------------------------------------------------------------------------------- provenance
    def train_read(self) -> dict[str, Any]:
        """What training has read so far: the training slice's name, split and token range `[start, end)` in the
        split (the windows are drawn in a shuffled order over the whole slice), tokens read and passes over it."""
        split, start, end = self._slice_range(self.train_slice)
        return {
            "slice": self.train_slice,
            "split": split,
            "start": start,
            "end": end,
            "tokens": self.position * self.seq_len,
            "epochs": self.epochs_read(),
        }

    def _eval_record(self, name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        windows = int(self.eval_windows(name).size)
        return {
            "slice": name,
            "split": self.slices[name].split,
            "windows": windows,
            "tokens": windows * self.seq_len,
            "selection": "spread",
        }

    def record(self) -> dict[str, Any]:
        """JSON-serialisable provenance of the data a run read (stored in checkpoints and exports)."""
        from litprune.data.slices import disjointness_record
        from litprune.data.tokenizer import tokenizer_identity

        store = TokenStore(self.store_path)
        record: dict[str, Any] = {
            "source": store.manifest.get("source"),
            "source_fingerprint": store.manifest.get("source_fingerprint"),
            "prepared_dir": str(self.store_path),
            "tokenizer": tokenizer_identity(self.tokenizer),
            "vocab_size": len(self.tokenizer),
            "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size,
            "seed": self.seed,
            "slices": {n: {"split": s.split, "start": s.start, "end": s.end} for n, s in self.slices.items()},
            "disjointness": disjointness_record(self.slices),
            "train_slice": self.train_slice,
            "train_windows_per_epoch": self.train_windows,
            "train_windows_read": self.position,
            "train_tokens_read": self.position * self.seq_len,
            "epochs": {self.train_slice: self.epochs_read()},
            "train_read": self.train_read(),
            "order": {split: store.order(split) for split in store.splits},
            "validation": self._eval_record(self.val_slice),
        }
        if self.source.kind == "embedded":
            from litprune.data.corpus import corpus_fingerprint

            record["corpus"] = corpus_fingerprint()
        return record


class _TrainStream(IterableDataset):
    """One process's infinite stream of training micro-batches, starting at a global position.

    With several DataLoader workers, worker w yields micro-batches w, w + W, ...; PyTorch's loader interleaves
    workers round-robin, so the stream order is unchanged.
    """

    def __init__(
        self,
        store_path: Path,
        window_slice: ResolvedSlice,
        seq_len: int,
        order: WindowOrder,
        start_position: int,
        rank: int,
        world_size: int,
        micro_batch_size: int,
    ) -> None:
        self.store_path = store_path
        self.window_slice = window_slice
        self.seq_len = seq_len
        self.order = order
        self.start_position = start_position
        self.rank, self.world_size = rank, world_size
        self.micro_batch_size = micro_batch_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        store = TokenStore(self.store_path)
        batches = rank_microbatches(self.order, self.start_position, self.rank, self.world_size, self.micro_batch_size)
        for k, indices in enumerate(batches):
            if k % workers != worker:
                continue
            windows = np.stack([window_tokens(store, self.window_slice, int(i), self.seq_len) for i in indices])
            tensor = torch.from_numpy(windows.astype(np.int64))
            yield {"input_ids": tensor[:, :-1], "labels": tensor[:, 1:]}


class _EvalWindows(Dataset):
    """Chosen windows of a slice, in the given order (validation and test; see `spread_windows`)."""

    def __init__(self, store_path: Path, window_slice: ResolvedSlice, seq_len: int, indices: np.ndarray) -> None:
        self.store_path, self.window_slice, self.seq_len = store_path, window_slice, seq_len
        self.indices = np.asarray(indices, dtype=np.int64)
        self._store: TokenStore | None = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._store is None:
            self._store = TokenStore(self.store_path)
        tokens = window_tokens(self._store, self.window_slice, int(self.indices[index]), self.seq_len)
        window = torch.from_numpy(tokens.astype(np.int64))
        return {"input_ids": window[:-1], "labels": window[1:]}
