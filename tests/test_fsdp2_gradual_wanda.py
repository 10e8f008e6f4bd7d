"""A gradual Wanda schedule under FSDP2 (ModelParallelStrategy, 2 CPU processes over gloo) prunes exactly what one
process prunes when both read the same global batches.

Each of the 2 ranks reads half of every global batch (rank r: micro-batch 2k + r of the one global stream), so the
single-process run accumulates 2 micro-batches per optimizer step (`accumulate_grad_batches=2`, same
`micro_batch_size`): every optimizer step reads the same 16 windows in both runs, as the same two forwards of 8.
Doubling `micro_batch_size` instead would also read the same windows, but as one forward of 16, whose per-token sums
(the loss mean, Wanda's sum of squares) round differently.

Wanda's statistics are sums over tokens, never means: each rank adds `sum_tokens x_j^2` of its own forwards and a
pruning event sums the ranks' buffers (`sum_across_ranks`). With `frequency=1` every event scores exactly one
optimizer step of statistics, i.e. `a + b` for the two halves in both runs (one process: `0 + a + b`), the same
floating-point sum; with several steps between events the two runs would add the same numbers in another order
(`(a0 + a1) + (b0 + b1)` vs `((a0 + b0) + a1) + b1`) and masks could differ at near-ties. The gradients agree too:
FSDP2 sums the ranks' gradients halved, `g_a / 2 + g_b / 2`, which is what accumulating `loss / 2` twice gives (halving
is exact in floating point). Gradient clipping is off (`gradient_clip_val=null`; litprune's default clips at 1.0): the
global norm of sharded gradients sums the ranks' squares in another order than one process does, so once clipping
acts the clip factors, and from then on the weights, differ in the last bit (seen here from the update of step 3
on; test_fsdp2.py checks clipping itself). The two runs are then the same computation, bit for bit: the final masks
are compared exactly, with no tolerance, and so are the exported weights.

What the masks can and cannot tell: a sum and a mean over ranks scale every input feature alike, which ranks no weight
differently, so they are indistinguishable here; scoring only a rank's own half of the statistics (no sum across
ranks) changes hundreds of entries of every tensor and fails this test.

Slow tier (`pytest -m slow`, about 30 s on 2 cores): one 2-process and one 1-process `litprune fit` of the tests'
tiny config.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_fsdp2 import _assert_masks_exact, _callbacks_config, _fit

from litprune.training.metrics_logger import read_metrics

STEPS = 6  # events at steps 1, 2, 3, 4 need the batches of steps 0-3 and a step 4 to run the last one at
MAX_TOKENS = STEPS * 2 * 8 * 32  # 2 micro-batches (2 ranks, or 2 accumulated) of 8 windows of 32 tokens per step


@pytest.mark.slow
def test_fsdp2_gradual_wanda_masks_equal_a_single_process_run_on_the_same_global_batches(embedded_cache, tmp_path):
    gradual = {
        "class_path": "litprune.callbacks.sparse_mask.SparseMask",
        "init_args": {
            "mask_source": "dense",
            "schedule": "gradual",
            "score": "wanda",  # per_row defaults to true: Wanda's rule, each output row prunes the same fraction
            "initial_ratio": 0.1,
            "ratio": 0.5,
            "start_step": 1,
            "end_step": 4,
            "frequency": 1,
        },
    }
    extra = _callbacks_config(tmp_path / "gradual.yaml", gradual)
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    no_clip = "--trainer.gradient_clip_val=null"
    _fit(sharded, extra, no_clip, max_tokens=MAX_TOKENS)
    _fit(single, extra, no_clip, "--trainer.accumulate_grad_batches=2", devices=1, max_tokens=MAX_TOKENS)

    # Both runs took the same optimizer steps and pruned at the same steps (4 events, ratio 0.1 -> 0.5).
    metrics = {run: read_metrics(run / "metrics.jsonl") for run in (sharded, single)}
    for key in ("sparsity/target", "sparsity/global"):
        assert metrics[sharded][key] == metrics[single][key], key
    assert len(set(metrics[single]["sparsity/target"].values())) == 5  # 0.0 before step 1, then one per event
    assert metrics[single]["sparsity/target"][STEPS - 1] == 0.5

    masks_sharded = _assert_masks_exact(sharded / "export", None)
    masks_single = _assert_masks_exact(single / "export", None)
    assert masks_sharded.keys() == masks_single.keys()
    differing = {
        name: int((masks_sharded[name] != masks_single[name]).sum())
        for name in masks_single
        if not torch.equal(masks_sharded[name], masks_single[name])
    }
    assert not differing, f"mask entries that differ, by tensor: {differing}"
    for name, keep in masks_single.items():
        assert bool(((~keep).sum(1) == keep.shape[1] // 2).all()), name  # Wanda's rule per row, on whole rows
    # The masks are exact because the runs are: the same weights at every event, hence the same scores.
    weights_sharded = load_file(sharded / "export" / "model.safetensors")
    weights_single = load_file(single / "export" / "model.safetensors")
    assert weights_sharded.keys() == weights_single.keys()
    assert [name for name in weights_single if not torch.equal(weights_sharded[name], weights_single[name])] == []
