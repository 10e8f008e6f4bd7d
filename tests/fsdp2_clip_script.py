"""Two-process CPU FSDP2 run (ModelParallelStrategy, gloo) that checks gradient clipping by norm on DTensor
gradients; run by tests/test_fsdp2.py (slow tier).

Usage: python tests/fsdp2_clip_script.py OUT_DIR

The tiny Llama is sharded with litprune's `shard_model`. An optimizer step pre-hook wraps Lightning's closure (as
SparseMask does) and measures the global gradient norm right before the update, i.e. after Lightning clipped it;
`on_before_optimizer_step` measures it before clipping. Every rank writes OUT_DIR/rank<k>.json.
"""

from __future__ import annotations

import json
import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from sparse_mask_models import TinyLlamaLM, token_loader

from litprune.models.sharding import ShardingSettings, is_dtensor, shard_model

CLIP = 0.05


def global_norm(module: torch.nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    return float(norm.full_tensor() if is_dtensor(norm) else norm)


class ShardedLM(TinyLlamaLM):
    def configure_model(self) -> None:
        shard_model(self.model, self.device_mesh["data_parallel"], ShardingSettings())


class NormProbe(pl.Callback):
    def __init__(self) -> None:
        self.before: list[float] = []
        self.after: list[float] = []
        self.dtensor_grads = False

    def on_fit_start(self, trainer, pl_module):
        def pre_hook(optimizer, args, kwargs):
            closure = kwargs["closure"]

            def measured():
                result = closure()
                self.after.append(global_norm(pl_module))
                self.dtensor_grads = all(is_dtensor(p.grad) for p in pl_module.parameters() if p.grad is not None)
                return result

            return args, {**kwargs, "closure": measured}

        trainer.optimizers[0].register_step_pre_hook(pre_hook)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.append(global_norm(pl_module))


def main() -> None:
    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    probe = NormProbe()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        precision="32-true",
        max_steps=3,
        gradient_clip_val=CLIP,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ShardedLM(seed=0), token_loader(num_windows=12, batch_size=2))
    result = {"before": probe.before, "after": probe.after, "clip": CLIP, "dtensor_grads": probe.dtensor_grads}
    with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
