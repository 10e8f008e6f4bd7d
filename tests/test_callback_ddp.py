"""SparseMask under DDP: two CPU processes (gloo), bf16-mixed, gradual Wanda; every rank ends with identical
masks and weights although each rank saw different batches and gathered different local input norms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_sparse_mask_script.py")


def test_ddp_two_cpu_ranks_end_with_identical_masks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "bf16-mixed"],
        cwd=SCRIPT.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Different data per rank, hence different local Wanda statistics before the first event ...
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]
    assert ranks[0]["local_norms"] != ranks[1]["local_norms"]
    # ... yet identical masks (statistics all-reduced before scoring) and identical weights.
    assert ranks[0]["masks"] == ranks[1]["masks"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["last_event_step"] == ranks[1]["last_event_step"] == 6
    for rank in ranks:
        assert rank["nonzero_at_masked"] == 0
        assert all(s == pytest.approx(0.5) for s in rank["sparsity"].values())
