"""The strategy checks SparseMask relies on, without a Trainer (the two-rank run is tests/test_callback_ddp.py)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

from litprune.callbacks.distributed import check_mask_strategy, mask_digests, masks_differing_across_ranks


def test_flattening_strategies_are_refused_with_what_to_use_instead():
    check_mask_strategy(SingleDeviceStrategy(torch.device("cpu")))
    check_mask_strategy(DDPStrategy())
    check_mask_strategy(ModelParallelStrategy())
    with pytest.raises(
        ValueError,
        match=r"SparseMask supports single-device, DDP and FSDP2.*FSDPStrategy flattens.*"
        r"ModelParallelStrategy.*configs/trainer/fsdp_8b.yaml.*'ddp'",
    ):
        check_mask_strategy(FSDPStrategy())


def test_digests_tell_apart_masks_that_row_and_column_sums_confuse():
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, 2] = mask[2, 3] = True
    swapped = torch.zeros_like(mask)
    swapped[1, 3] = swapped[2, 2] = True  # a 2x2 swap: every row count and every column count is unchanged
    assert torch.equal(mask.sum(0), swapped.sum(0)) and torch.equal(mask.sum(1), swapped.sum(1))
    reshaped = mask.reshape(6, 4)  # same bits, another shape
    digests = mask_digests({"a": mask, "b": swapped, "c": reshaped, "d": mask.clone()})
    assert digests.shape == (4, 33) and digests.dtype == torch.int64
    assert not torch.equal(digests[0], digests[1]) and not torch.equal(digests[0], digests[2])
    assert torch.equal(digests[0], digests[3])


def test_a_single_process_has_nothing_to_compare():
    assert masks_differing_across_ranks({"a": torch.ones(2, 2, dtype=torch.bool)}, world_size=1) == []
    assert not torch.distributed.is_initialized()
    assert masks_differing_across_ranks({"a": torch.ones(2, 2, dtype=torch.bool)}, world_size=2) == []
