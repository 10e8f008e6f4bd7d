"""Named token slices (bounds, disjointness), windows inside a slice, and the resumable window order."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from litprune.data.order import WindowOrder, rank_microbatches
from litprune.data.prepare import TextSource, prepare_tokens
from litprune.data.slices import (
    ResolvedSlice,
    TokenSlice,
    default_slices,
    disjointness_record,
    num_windows,
    resolve_slices,
    window_tokens,
)
from litprune.data.store import TokenStore
from litprune.data.tokenizer import train_bpe_tokenizer

DOCS = [f"def f{k}(x):\n    return x * {k} + {k * k}\n" for k in range(40)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TokenStore:
    root = tmp_path_factory.mktemp("slices")
    (root / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:30]))
    (root / "val.txt").write_text("".join(DOCS[30:]))
    tok = train_bpe_tokenizer(DOCS, vocab_size=300)
    source = TextSource(kind="files", files={"train": [str(root / "train.jsonl")], "val": [str(root / "val.txt")]})
    # A small shard size so windows also cross shard boundaries.
    return TokenStore(prepare_tokens(source, tok, out_root=root / "tokens", shard_tokens=50))


def test_store_fixture_has_two_splits(store):
    assert store.splits == ["train", "val"]
    assert store.num_tokens("train") > 300 and store.num_tokens("val") > 50


def test_resolve_fills_the_end_and_keeps_order(store):
    n = store.num_tokens("train")
    resolved = resolve_slices(
        {"retrain": TokenSlice("train", 100), "pretrain": TokenSlice("train", 0, 100), "val": TokenSlice("val")}, store
    )
    assert list(resolved) == ["retrain", "pretrain", "val"]
    assert resolved["retrain"] == ResolvedSlice("retrain", "train", 100, n)
    assert resolved["pretrain"].tokens == 100
    assert resolved["val"].end == store.num_tokens("val")


def test_resolve_accepts_yaml_mappings(store):
    resolved = resolve_slices(
        {"a": {"split": "train", "start": 0, "end": 10}, "b": {"split": "train", "start": 10}}, store
    )
    assert resolved["a"] == ResolvedSlice("a", "train", 0, 10)
    with pytest.raises(ValueError, match=r"Slice 'c'.*must have a 'split'.*\['stop'\]"):
        resolve_slices({"c": {"split": "train", "stop": 5}}, store)


def test_unknown_split_lists_available_ones(store):
    with pytest.raises(
        ValueError, match=r"slice 'eval': split 'validation' does not exist; available splits: \['train', 'val'\]"
    ):
        resolve_slices({"eval": TokenSlice("validation")}, store)


@pytest.mark.parametrize(("start", "end"), [(-1, 10), (10, 10), (20, 10), (0, "big"), (0, 10**9)])
def test_bad_bounds_name_slice_values_and_split_size(store, start, end):
    n = store.num_tokens("train")
    pattern = rf"slice 'pretrain': start={start!r}, end={end!r} .* split 'train', which holds {n} tokens"
    with pytest.raises(ValueError, match=pattern):
        resolve_slices({"pretrain": TokenSlice("train", start, end)}, store)


def test_overlapping_slices_name_both_and_the_range(store):
    slices = {"pretrain": TokenSlice("train", 0, 200), "retrain": TokenSlice("train", 150)}
    with pytest.raises(
        ValueError,
        match=r"'pretrain' \[0, 200\) and 'retrain' \[150, \d+\) of split 'train' overlap on tokens \[150, 200\)",
    ):
        resolve_slices(slices, store)
    nested = {"outer": TokenSlice("train", 0, 300), "inner": TokenSlice("train", 100, 120)}
    with pytest.raises(ValueError, match=r"overlap on tokens \[100, 120\)"):
        resolve_slices(nested, store)


def test_adjacent_slices_and_slices_of_other_splits_are_disjoint(store):
    slices = {"a": TokenSlice("train", 0, 100), "b": TokenSlice("train", 100, 200), "v": TokenSlice("val", 0, 100)}
    resolved = resolve_slices(slices, store)
    record = disjointness_record(resolved)
    assert record["disjoint"] is True and record["overlaps"] == []
    assert record["by_split"] == {"train": [["a", 0, 100], ["b", 100, 200]], "val": [["v", 0, 100]]}
    assert record["slices"]["b"] == {"split": "train", "start": 100, "end": 200, "tokens": 100}


def test_all_problems_are_reported_together(store):
    slices = {
        "x": TokenSlice("nope"),
        "y": TokenSlice("train", 5, 2),
        "a": TokenSlice("val", 0, 9),
        "b": TokenSlice("val", 8),
    }
    with pytest.raises(ValueError) as info:
        resolve_slices(slices, store)
    message = str(info.value)
    assert "'x'" in message and "'y'" in message and "'a' [0, 9) and 'b'" in message


def test_default_slices_one_per_split(store):
    assert default_slices(store) == {"train": TokenSlice("train"), "val": TokenSlice("val")}


def test_num_windows():
    assert num_windows(0, 4) == 0
    assert num_windows(4, 4) == 0, "a window needs seq_len + 1 tokens"
    assert num_windows(5, 4) == 1
    assert num_windows(8, 4) == 1
    assert num_windows(9, 4) == 2
    assert num_windows(1001, 10) == 100
    with pytest.raises(ValueError, match="seq_len=0"):
        num_windows(10, 0)


def test_windows_tile_the_slice_with_one_token_overlap(store):
    seq_len = 16
    piece = resolve_slices({"retrain": TokenSlice("train", 37, 37 + 5 * seq_len + 3)}, store)["retrain"]
    count = num_windows(piece.tokens, seq_len)
    assert count == 5
    windows = [window_tokens(store, piece, i, seq_len) for i in range(count)]
    for i, w in enumerate(windows):
        assert w.shape == (seq_len + 1,) and w.dtype == np.int64
        start = piece.start + i * seq_len
        np.testing.assert_array_equal(w, store.read("train", start, start + seq_len + 1))
    for a, b in zip(windows, windows[1:], strict=False):
        assert a[-1] == b[0], "the last target of a window is the first input of the next"
    # Targets (w[1:]) of all windows cover the slice once, without its first token.
    targets = np.concatenate([w[1:] for w in windows])
    np.testing.assert_array_equal(targets, store.read("train", piece.start + 1, piece.start + 1 + count * seq_len))
    with pytest.raises(IndexError, match=r"Window 5 does not exist: slice 'retrain' \(83 tokens\) holds 5 windows"):
        window_tokens(store, piece, 5, seq_len)


# --------------------------------------------------------------------------------------------------- order
def test_order_follows_the_documented_generator():
    order = WindowOrder(37, seed=5)
    for epoch in range(3):
        expected = np.random.Generator(np.random.PCG64([5, epoch])).permutation(37)
        np.testing.assert_array_equal(order.windows(epoch * 37, (epoch + 1) * 37), expected)


def test_same_seed_same_order_and_different_seed_differs():
    a, b, c = WindowOrder(100, seed=1), WindowOrder(100, seed=1), WindowOrder(100, seed=2)
    np.testing.assert_array_equal(a.windows(0, 350), b.windows(0, 350))
    assert not np.array_equal(a.windows(0, 100), c.windows(0, 100))


def test_every_window_once_per_epoch_and_epochs_reshuffle():
    n = 50
    order = WindowOrder(n, seed=3)
    stream = order.windows(0, 4 * n)
    epochs = stream.reshape(4, n)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(n))
    assert len({tuple(e) for e in epochs.tolist()}) == 4, "each epoch has its own order"
    assert [order.window_at(i) for i in range(4 * n)] == stream.tolist()


def test_windows_across_epoch_boundaries_and_empty_ranges():
    order = WindowOrder(7, seed=0)
    full = order.windows(0, 70)
    for start, stop in [(0, 0), (5, 9), (6, 21), (13, 14), (20, 70)]:
        np.testing.assert_array_equal(order.windows(start, stop), full[start:stop])
    assert order.windows(3, 3).dtype == np.int64
    with pytest.raises(ValueError, match="stop must be >= start"):
        order.windows(5, 4)


def test_epoch_counting():
    order = WindowOrder(10, seed=0)
    assert [order.epochs_started(p) for p in (0, 1, 10, 11, 20, 25)] == [0, 1, 1, 2, 2, 3]
    assert order.epochs_completed(0) == 0.0 and order.epochs_completed(25) == 2.5


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_together_read_the_single_process_stream(world_size):
    order = WindowOrder(23, seed=9)
    batch, start, steps = 4, 6, 10
    per_rank = [rank_microbatches(order, start, r, world_size, batch) for r in range(world_size)]
    merged = []
    for _ in range(steps):
        for rank_stream in per_rank:
            merged.append(next(rank_stream))
    merged = np.concatenate(merged)
    np.testing.assert_array_equal(merged, order.windows(start, start + steps * world_size * batch))


def test_resuming_at_any_position_continues_the_same_stream():
    seed, n, batch = 4, 31, 3
    reference = WindowOrder(n, seed).windows(0, 200)
    for position in (0, 1, 30, 31, 32, 97):
        resumed = rank_microbatches(WindowOrder(n, seed), position, 0, 1, batch)
        got = np.concatenate([next(resumed) for _ in range(20)])
        np.testing.assert_array_equal(got, reference[position : position + 60])


def test_order_pickles_to_the_same_stream():
    order = WindowOrder(40, seed=11)
    order.windows(0, 100)  # caches an epoch permutation
    clone = pickle.loads(pickle.dumps(order))
    assert clone == order and len(pickle.dumps(order)) < 300
    np.testing.assert_array_equal(clone.windows(50, 130), order.windows(50, 130))


def test_order_argument_errors():
    with pytest.raises(ValueError, match=r"num_windows=0.*at least one window"):
        WindowOrder(0, seed=0)
    with pytest.raises(ValueError, match=r"seed=-1"):
        WindowOrder(5, seed=-1)
    with pytest.raises(ValueError, match=r"rank=2 must be an integer in \[0, world_size=2\)"):
        rank_microbatches(WindowOrder(5, 0), 0, rank=2, world_size=2, micro_batch_size=1)
    with pytest.raises(ValueError, match=r"micro_batch_size=0"):
        rank_microbatches(WindowOrder(5, 0), 0, rank=0, world_size=1, micro_batch_size=0)
    with pytest.raises(ValueError, match=r"position=-3"):
        WindowOrder(5, 0).window_at(-3)
