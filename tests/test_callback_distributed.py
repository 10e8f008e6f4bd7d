"""The strategy checks SparseMask relies on, without a Trainer (the two-rank run is tests/test_callback_ddp.py)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

from litprune.callbacks.distributed import check_mask_strategy, mask_checksums, masks_differing_across_ranks


def test_sharded_strategies_are_refused_with_what_to_use_instead():
    check_mask_strategy(SingleDeviceStrategy(torch.device("cpu")))
    check_mask_strategy(DDPStrategy())
    with pytest.raises(ValueError, match=r"SparseMask supports single-device and DDP.*FSDPStrategy shards.*'ddp'"):
        check_mask_strategy(FSDPStrategy())


def test_checksums_tell_masks_apart_by_row_and_column():
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, 2] = True
    moved_row, moved_col = torch.zeros_like(mask), torch.zeros_like(mask)
    moved_row[2, 2] = True  # same count, same column
    moved_col[1, 3] = True  # same count, same row
    sums = mask_checksums({"a": mask, "b": moved_row, "c": moved_col, "d": mask.clone()})
    assert sums.shape == (4, 2) and sums.dtype == torch.float64
    assert not torch.equal(sums[0], sums[1]) and not torch.equal(sums[0], sums[2]) and torch.equal(sums[0], sums[3])


def test_a_single_process_has_nothing_to_compare():
    assert masks_differing_across_ranks({"a": torch.ones(2, 2, dtype=torch.bool)}, world_size=1) == []
    assert not torch.distributed.is_initialized()
    assert masks_differing_across_ranks({"a": torch.ones(2, 2, dtype=torch.bool)}, world_size=2) == []
