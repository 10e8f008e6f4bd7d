"""Training throughput of `litprune fit` against a minimal hand-written PyTorch loop.

Both train the same model (the `small` preset, same seeded init) on the same batches (the embedded corpus's
training stream, read through the same DataLoader) with the same optimizer, schedule and gradient clipping.
The two are interleaved over several repetitions (the machine's speed drifts by several percent), the first
steps of each repetition are dropped as warm-up, and per-step wall times (data loading included) are compared
by their medians.

    python benchmarks/throughput.py [--reps 3] [--steps 40] [--warmup 8]

Last line: `fit_vs_plain_ratio: X` = tokens/s of fit / tokens/s of the plain loop, the median over repetitions of
the ratio within each repetition (target X >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.data.datamodule import TokenDataModule
from litprune.inits import RandomInit
from litprune.models.presets import build_llama_config
from litprune.training.lr_schedule import WarmupCosine

SEQ_LEN, MICRO_BATCH, PRESET = 256, 8, "small"


class StepTimer(Callback):
    """Wall time between consecutive training batches (everything Lightning does per step included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def run_fit(steps: int, root: Path) -> list[float]:
    timer = StepTimer()
    cli = LitpruneCLI(
        args=[
            f"--trainer.default_root_dir={root}",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.val_check_interval=100000",
            "--trainer.log_every_n_steps=10",
            "--checkpoint.every_n_train_steps=100000",
            "--checkpoint.save_last=false",
            f"--model.init_args.preset={PRESET}",
            f"--model.init_args.max_tokens={steps * SEQ_LEN * MICRO_BATCH}",
            f"--data.init_args.seq_len={SEQ_LEN}",
            f"--data.init_args.micro_batch_size={MICRO_BATCH}",
            "--data.init_args.val_slice=null",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.times


def run_plain(steps: int) -> list[float]:
    data = TokenDataModule(seq_len=SEQ_LEN, micro_batch_size=MICRO_BATCH, val_slice=None)
    data.setup("fit")
    model = RandomInit(seed=0).build(build_llama_config(PRESET, vocab_size=len(data.tokenizer))).model
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps=steps))
    times: list[float] = []
    last = None
    for step, batch in enumerate(data.train_dataloader()):
        if step == steps:
            break
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss.item()  # the same host sync Lightning's logging does
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        last = now
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    args = parser.parse_args()
    tokens_per_step = SEQ_LEN * MICRO_BATCH
    samples: dict[str, list[float]] = {"litprune fit": [], "plain loop": []}
    pair_ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = ["litprune fit", "plain loop"] if rep % 2 == 0 else ["plain loop", "litprune fit"]
            for name in order:
                if name == "litprune fit":
                    times = run_fit(args.steps, Path(tmp) / f"fit{rep}")
                else:
                    times = run_plain(args.steps)
                samples[name] += times[args.warmup :]
                print(f"rep {rep} {name:13s} median step {statistics.median(times[args.warmup :]) * 1e3:8.1f} ms")
            fit = statistics.median(samples["litprune fit"][-(args.steps - args.warmup - 1) :])
            plain = statistics.median(samples["plain loop"][-(args.steps - args.warmup - 1) :])
            pair_ratios.append(plain / fit)
    print(
        f"\nmodel: {PRESET} preset, seq_len {SEQ_LEN}, micro-batch {MICRO_BATCH}, torch threads "
        f"{torch.get_num_threads()}, {args.reps} interleaved repetitions x {args.steps} steps "
        f"(first {args.warmup} dropped)"
    )
    print(f"{'loop':14s} {'median ms/step':>15s} {'tokens/s':>10s} {'steps':>6s}")
    rates = {}
    for name, times in samples.items():
        median = statistics.median(times)
        rates[name] = tokens_per_step / median
        print(f"{name:14s} {median * 1e3:15.1f} {rates[name]:10.0f} {len(times):6d}")
    # Each repetition runs both loops back to back; the ratio of a pair is robust to the machine's slow drift,
    # so the reported figure is the median of the per-repetition ratios.
    print("per-repetition tokens/s ratios (fit / plain): " + ", ".join(f"{r:.3f}" for r in pair_ratios))
    print(f"fit_vs_plain_ratio: {statistics.median(pair_ratios):.3f}")


if __name__ == "__main__":
    main()
