"""Seeded orders: the document order of a prepared split, and the resumable order training reads windows in.

Documents: `document_order(n, seed, split)` is the order the prepare step packs a split's documents in, a
permutation from numpy's `default_rng` seeded with `[seed, hash(split)]` (each split shuffled independently), or
the source order when the seed is None. Shuffling before packing gives every token slice of a split an alike
mix of documents, whatever order the source lists them in. `order_sha256` names a permutation in manifests.

Windows:

All processes of a run share one global stream of window indices. Position `i` of the stream (0, 1, 2, ...)
belongs to epoch `e = i // num_windows` and reads window `perm_e[i % num_windows]`, where `perm_e` is a
permutation drawn from numpy's PCG64 generator seeded with `[seed, e]`. So:

- the order depends only on (num_windows, seed): the scratch arm and the pruned arm of an experiment read
  the same windows in the same order;
- every window is read exactly once per epoch, and each epoch is reshuffled;
- any position can be computed directly, so resuming at position `p` continues the identical stream, with no
  state other than `p` to checkpoint;
- with `world_size` processes and micro-batch size `B`, micro-batch `k` of rank `r` reads positions
  `start + (k * world_size + r) * B` ... `+ B - 1` (`rank_microbatches`): the ranks together consume the
  global stream in order, without overlap; a checkpointed position stays valid if the number of processes
  changes on resume (the same stream continues, only divided differently).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np


def document_order(num_documents: int, seed: int | None, split: str) -> np.ndarray:
    """The order in which a split's documents are packed: position k of the token stream holds document `out[k]`.

    Args:
        num_documents: documents of the split, in source order (empty ones included).
        seed: shuffle seed (a non-negative integer), or None to keep the source order.
        split: the split's name; mixed into the seed (through a stable hash) so splits are shuffled independently.

    Returns:
        An int64 permutation of `range(num_documents)` (the identity when `seed` is None).
    """
    _check_nonnegative_int("num_documents", num_documents)
    if seed is None:
        return np.arange(num_documents, dtype=np.int64)
    _check_nonnegative_int("shuffle_seed", seed)
    split_key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), split_key]).permutation(num_documents).astype(np.int64)


def order_sha256(permutation: np.ndarray) -> str:
    """sha256 of a document order as little-endian int64 bytes (recorded in manifests and run records)."""
    return hashlib.sha256(np.ascontiguousarray(permutation, dtype="<i8").tobytes()).hexdigest()


def _check_nonnegative_int(name: str, value: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative integer.")


class WindowOrder:
    """Maps global stream positions to window indices of one slice, reshuffled every epoch.

    Args:
        num_windows: windows in one epoch over the slice (>= 1).
        seed: seed of the order (a non-negative integer); the same seed gives the same order everywhere.
    """

    def __init__(self, num_windows: int, seed: int) -> None:
        if not isinstance(num_windows, int | np.integer) or isinstance(num_windows, bool) or num_windows < 1:
            raise ValueError(
                f"num_windows={num_windows!r}: a slice needs at least one window to train on. Enlarge the slice "
                "or lower seq_len."
            )
        _check_nonnegative_int("seed", seed)
        self.num_windows = int(num_windows)
        self.seed = int(seed)
        self._epoch: int | None = None
        self._perm: np.ndarray | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The window order of one epoch (a permutation of `range(num_windows)`, int64)."""
        _check_nonnegative_int("epoch", epoch)
        if epoch != self._epoch:
            generator = np.random.Generator(np.random.PCG64([self.seed, int(epoch)]))
            self._perm = generator.permutation(self.num_windows).astype(np.int64)
            self._epoch = int(epoch)
        return self._perm

    def window_at(self, position: int) -> int:
        """The window read at global stream position `position`."""
        _check_nonnegative_int("position", position)
        epoch, offset = divmod(int(position), self.num_windows)
        return int(self.permutation(epoch)[offset])

    def windows(self, start: int, stop: int) -> np.ndarray:
        """The windows read at positions `[start, stop)`, crossing epoch boundaries as needed (int64)."""
        _check_nonnegative_int("start", start)
        _check_nonnegative_int("stop", stop)
        if stop < start:
            raise ValueError(f"windows(start={start}, stop={stop}): stop must be >= start.")
        parts = []
        position = int(start)
        while position < stop:
            epoch, offset = divmod(position, self.num_windows)
            take = min(self.num_windows - offset, int(stop) - position)
            parts.append(self.permutation(epoch)[offset : offset + take])
            position += take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def epochs_started(self, position: int) -> int:
        """Epochs touched once `position` windows have been consumed (0 for 0; 1 for 1 ... num_windows)."""
        _check_nonnegative_int("position", position)
        return -(-int(position) // self.num_windows)

    def epochs_completed(self, position: int) -> float:
        """Passes over the slice once `position` windows have been consumed: `position / num_windows`."""
        _check_nonnegative_int("position", position)
        return position / self.num_windows

    # Only the defining numbers travel to DataLoader workers; the cached permutation is rebuilt on demand.
    def __getstate__(self) -> dict:
        return {"num_windows": self.num_windows, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["num_windows"], state["seed"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowOrder):
            return NotImplemented
        return (self.num_windows, self.seed) == (other.num_windows, other.seed)

    def __hash__(self) -> int:
        return hash((self.num_windows, self.seed))

    def __repr__(self) -> str:
        return f"WindowOrder(num_windows={self.num_windows}, seed={self.seed})"


def rank_microbatches(
    order: WindowOrder, start_position: int, rank: int, world_size: int, micro_batch_size: int
) -> Iterator[np.ndarray]:
    """One process's micro-batches of window indices, endlessly, from a global stream position.

    Micro-batch `k` of rank `r` is `order.windows(p, p + B)` with `p = start_position + (k * world_size + r) * B`.

    Args:
        order: the run's window order.
        start_position: global windows already consumed by all processes together (0 for a fresh run; the
            checkpointed position when resuming).
        rank: this process's index in `[0, world_size)`.
        world_size: number of data-parallel processes.
        micro_batch_size: windows per micro-batch (`B`).

    Yields:
        int64 arrays of `micro_batch_size` window indices.
    """
    _check_nonnegative_int("start_position", start_position)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be a positive integer.")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r} must be an integer in [0, world_size={world_size}).")
    if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size!r} must be a positive integer.")
    return _microbatches(order, int(start_position), rank, world_size, micro_batch_size)


def _microbatches(order: WindowOrder, start: int, rank: int, world_size: int, size: int) -> Iterator[np.ndarray]:
    # A separate generator so argument errors surface when rank_microbatches is called, not at first next().
    position = start + rank * size
    step = world_size * size
    while True:
        yield order.windows(position, position + size)
        position += step
