"""Two-process CPU DDP run of SparseMask (gradual Wanda on a plain MLP); run by test_callback_ddp.py.

Usage: python tests/ddp_sparse_mask_script.py OUT_DIR PRECISION

Lightning's DDP launcher re-executes this script once per extra rank. Every rank writes OUT_DIR/rank<k>.json
with digests of its final masks and weights, of its first training batch, and of its *local* Wanda input
statistics before the first pruning event, so the test can check that ranks saw different data yet ended with
identical masks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import lightning.pytorch as pl
import torch
from sparse_mask_models import MLP, mlp_loader

from litprune.callbacks.sparse_mask import SparseMask
from litprune.models.mask_packing import pack_mask


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class Probe(pl.Callback):
    """Listed before SparseMask: sees the local statistics right before the first event reduces them."""

    def __init__(self, sparse_mask: SparseMask) -> None:
        self.sparse_mask = sparse_mask
        self.first_batch: str | None = None
        self.local_norms: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = digest(batch)
        if trainer.global_step == self.sparse_mask.start_step and self.local_norms is None:
            self.local_norms = digest(self.sparse_mask._norms.sum_sq)


def main() -> None:
    out_dir, precision = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    module = MLP(seed=0)
    callback = SparseMask(
        targets=r".*\.weight",
        mask_source="dense",
        schedule="gradual",
        score="wanda",
        ratio=0.5,
        start_step=2,
        end_step=6,
        frequency=2,
    )
    probe = Probe(callback)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        precision=precision,
        max_steps=8,
        callbacks=[probe, callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, mlp_loader(num_rows=128))
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "masks": {name: digest(pack_mask(mask)) for name, mask in callback.masks.items()},
        "sparsity": {name: 1 - mask.float().mean().item() for name, mask in callback.masks.items()},
        "weights": {name: digest(p) for name, p in module.named_parameters()},
        "nonzero_at_masked": sum(
            int(torch.count_nonzero(dict(module.named_parameters())[n][~m])) for n, m in callback.masks.items()
        ),
        "first_batch": probe.first_batch,
        "local_norms": probe.local_norms,
        "last_event_step": callback.last_event_step,
    }
    with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
