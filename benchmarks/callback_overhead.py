"""Per-step cost of keeping a Llama sparse during training: no callback vs SparseMask vs Lightning's ModelPruning.

One process trains the same small Hugging Face Llama (`build_llama_config("small", vocab_size=4096)`, ~1.8M
parameters) on the same fixed batch with a real Trainer, three ways:

- `none`: dense training, no callback;
- `sparse_mask`: `SparseMask(mask_source="dense", schedule="one_shot", ratio=0.5)` (magnitude, per matrix,
  pruned at fit start);
- `model_pruning`: `ModelPruning("l1_unstructured", amount=0.5)` on the same 7 decoder linears per layer
  (its defaults: global unstructured, lottery-ticket copies kept). It prunes at the end of an epoch, so every
  run has a warm-up epoch whose steps are dropped; only the second epoch, with both callbacks at 50%
  sparsity, is measured.

The configurations are interleaved over several repetitions (none, sparse_mask, model_pruning, none, ...) so
that machine load drifts affect all three alike; the table reports medians over all measured steps.

- step time: wall time from the first `on_train_batch_start` to the last `on_train_batch_end` of a batch
  (forward, backward, optimizer step and every callback's batch hooks; data loading excluded);
- extra tensor memory: bytes of tensors the callback makes the run hold, counted directly at the end of the
  measured epoch: SparseMask's bool masks vs ModelPruning's `weight_mask` buffers, the recomputed `weight`
  tensors and its deep copies of the original layers;
- hook time: `SparseMask.hook_time_s` (perf_counter around the bodies of all its hooks, the optimizer step
  hooks included) accumulated per measured step; its median divided by the median SparseMask step time is
  printed last as `mask_step_overhead`.

Run: `python benchmarks/callback_overhead.py` (about 2 minutes on 2 CPU cores; `--help` for sizes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelPruning
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import LlamaForCausalLM

from litprune.callbacks.sparse_mask import SparseMask
from litprune.models.presets import build_llama_config

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIGS = ("none", "sparse_mask", "model_pruning")


class LlamaLM(pl.LightningModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = LlamaForCausalLM(build_llama_config("small", vocab_size=4096))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)


class SameBatch(Dataset):
    """The same `[batch, seq]` token batch, `length` times."""

    def __init__(self, batch: torch.Tensor, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.batch


class StepClock(pl.Callback):
    """Two instances bracket the callback list: `first` starts the clock, `last` stops it."""

    def __init__(self, role: str, record: dict, sparse_mask: SparseMask | None) -> None:
        self.role, self.record, self.sparse_mask = role, record, sparse_mask

    def _hook_total(self) -> float:
        return sum(self.sparse_mask.hook_time_s.values()) if self.sparse_mask else 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.role == "first":
            self.record["t0"] = time.perf_counter()
            self.record["h0"] = self._hook_total()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.role == "last" and trainer.current_epoch == 1:
            # The optimizer step (and SparseMask's step hooks) ran between the two clock hooks.
            self.record["steps"].append(time.perf_counter() - self.record["t0"])
            self.record["hooks"].append(self._hook_total() - self.record["h0"])


class ExtraMemory(pl.Callback):
    """Counts the tensors a pruning callback adds, at the end of the measured epoch (before ModelPruning
    prunes again)."""

    def __init__(self, record: dict, sparse_mask: SparseMask | None, pruning: ModelPruning | None) -> None:
        self.record, self.sparse_mask, self.pruning = record, sparse_mask, pruning

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        extra, pruned, total = 0, 0, 0
        if self.sparse_mask is not None:
            for mask in self.sparse_mask.masks.values():
                extra += mask.numel() * mask.element_size()
                pruned += int((~mask).sum())
                total += mask.numel()
        if self.pruning is not None:
            for module in pl_module.modules():
                if hasattr(module, "weight_mask"):
                    extra += module.weight_mask.numel() * module.weight_mask.element_size()
                    extra += module.weight.numel() * module.weight.element_size()  # recomputed every forward
                    pruned += int((module.weight_mask == 0).sum())
                    total += module.weight_mask.numel()
            for layer in (self.pruning._original_layers or {}).values():
                extra += sum(t.numel() * t.element_size() for t in layer["data"].state_dict().values())
        self.record["extra_bytes"] = extra
        self.record["sparsity"] = pruned / total if total else 0.0


def linears(module: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for name, m in module.named_modules() if name.split(".")[-1] in LINEARS]


def run_once(config: str, batch: torch.Tensor, steps: int, record: dict) -> None:
    module = LlamaLM(seed=0)
    sparse_mask = pruning = None
    callbacks: list[pl.Callback] = []
    if config == "sparse_mask":
        sparse_mask = SparseMask(mask_source="dense", schedule="one_shot", ratio=0.5, log_every_n_steps=10**9)
        callbacks.append(sparse_mask)
    elif config == "model_pruning":
        pruning = ModelPruning("l1_unstructured", parameters_to_prune=linears(module), amount=0.5, verbose=0)
        callbacks.append(pruning)
    # ExtraMemory precedes the pruning callback so it measures before ModelPruning's next epoch-end pruning.
    callbacks = [
        StepClock("first", record, sparse_mask),
        ExtraMemory(record, sparse_mask, pruning),
        *callbacks,
        StepClock("last", record, sparse_mask),
    ]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(SameBatch(batch, steps), batch_size=None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=4, help="interleaved rounds of the three configurations")
    parser.add_argument("--steps", type=int, default=12, help="steps per epoch (epoch 0 is warm-up, epoch 1 timed)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    batch = torch.randint(0, 4096, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    records = {c: {"steps": [], "hooks": []} for c in CONFIGS}
    for _ in range(args.repetitions):
        for config in CONFIGS:
            run_once(config, batch, args.steps, records[config])

    base = statistics.median(records["none"]["steps"])
    params = sum(p.numel() for p in LlamaLM(seed=0).parameters())
    print(
        f"model: Llama 'small' preset, vocab 4096, {params:,} parameters; batch {args.batch}x{args.seq_len}; "
        f"{args.repetitions} interleaved repetitions x {args.steps} timed steps; {args.threads} thread(s); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (step times are noisy on a loaded machine; "
        "the hook time below is measured directly)"
    )
    print(f"{'config':<15}{'median step ms':>16}{'vs none':>10}{'sparsity':>10}{'extra tensor MiB':>18}")
    for config in CONFIGS:
        median = statistics.median(records[config]["steps"])
        print(
            f"{config:<15}{median * 1e3:>16.2f}{median / base - 1:>+10.1%}"
            f"{records[config].get('sparsity', 0.0):>10.2f}{records[config].get('extra_bytes', 0) / 2**20:>18.3f}"
        )
    hook = statistics.median(records["sparse_mask"]["hooks"])
    step = statistics.median(records["sparse_mask"]["steps"])
    print(f"SparseMask median time inside its hooks per step: {hook * 1e3:.3f} ms")
    print(f"mask_step_overhead: {hook / step:.4f}")


if __name__ == "__main__":
    main()
