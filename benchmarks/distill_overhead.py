"""Per-step cost of retraining by distillation: plain CE vs distillation from a teacher twice the student's size.

The student is litprune's `CausalLM` with the `small` preset (vocab 4096, 4 layers, ~1.8M parameters, 0.79M
non-embedding); the teacher is the same shape with 8 layers (twice the non-embedding parameters), random weights,
written once with `save_pretrained`. Both train on the same fixed `[batch, seq_len]` batch with a real Trainer,
AdamW and gradient clipping, three ways:

- `plain`: the plain cross-entropy objective (no `distill`);
- `distill`: `distill: {alpha: 0.5, temperature: 1.0}`, KL over the whole vocabulary;
- `distill_top64`: the same with `top_k: 64`.

After one untimed short run of each configuration (the first runs of a process pay one-off costs), the
configurations are interleaved over several repetitions (plain, distill, distill_top64, plain, ...) so that
machine load drifts affect all alike; the first steps of each run are dropped as warm-up. A step is timed from
`on_train_batch_start` to `on_train_batch_end` (teacher forward, student forward and backward, optimizer step;
data loading excluded), twice: wall time, and the CPU time of this process. With one torch thread (the default) the
CPU time is the step's own compute, which other jobs on the machine do not inflate the way they inflate wall time;
on an idle machine the two agree. Medians over all measured steps.

Run: `python benchmarks/distill_overhead.py` (about 1 minute on 2 idle CPU cores; `--help` for sizes). Last line:
`distill_step_ratio: X` = median `distill` step CPU time / median `plain` step CPU time.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from litprune.models.params import count_parameters
from litprune.models.presets import build_llama_config
from litprune.modules.causal_lm import CausalLM
from litprune.modules.distillation import Distillation

VOCAB, PRESET = 4096, "small"
CONFIGS = {"plain": None, "distill": {"top_k": None}, "distill_top64": {"top_k": 64}}


class SameBatch(Dataset):
    """The same packed batch (`input_ids`, `labels` shifted by one), `length` times."""

    def __init__(self, tokens: torch.Tensor, length: int) -> None:
        self.batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


class FixedBatchData(pl.LightningDataModule):
    """The shape CausalLM sizes its budget from (`seq_len`, `micro_batch_size`) and a loader of one fixed batch."""

    def __init__(self, tokens: torch.Tensor, steps: int) -> None:
        super().__init__()
        self.tokens, self.steps = tokens, steps
        self.micro_batch_size, self.seq_len = tokens.shape[0], tokens.shape[1] - 1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SameBatch(self.tokens, self.steps), batch_size=None)


class StepClock(pl.Callback):
    """(wall, CPU) seconds of each step from batch start to batch end, after `warmup` steps."""

    def __init__(self, warmup: int, times: list[tuple[float, float]]) -> None:
        self.warmup, self.times, self._start = warmup, times, (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.times.append((time.perf_counter() - self._start[0], time.process_time() - self._start[1]))


def run_once(
    config: str, teacher: Path, tokens: torch.Tensor, steps: int, warmup: int, times: list[tuple[float, float]]
) -> None:
    settings = CONFIGS[config]
    distill = None if settings is None else Distillation(teacher=str(teacher), alpha=0.5, temperature=1.0, **settings)
    data = FixedBatchData(tokens, steps)
    module = CausalLM(
        preset=PRESET,
        overrides={"vocab_size": VOCAB},
        max_tokens=steps * tokens.shape[0] * (tokens.shape[1] - 1),
        distill=distill,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        gradient_clip_val=1.0,
        callbacks=[StepClock(warmup, times)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved rounds of the three configurations")
    parser.add_argument("--steps", type=int, default=14, help="steps per run (the first --warmup are not timed)")
    parser.add_argument("--warmup", type=int, default=4, help="steps dropped at the start of each run")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()

    tokens = torch.randint(0, VOCAB, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    student_config = build_llama_config(PRESET, vocab_size=VOCAB)
    teacher_config = build_llama_config(PRESET, {"num_hidden_layers": 2 * student_config.num_hidden_layers}, VOCAB)
    torch.manual_seed(1)
    teacher_model = LlamaForCausalLM(teacher_config)
    student_counts = count_parameters(LlamaForCausalLM(student_config))
    teacher_counts = count_parameters(teacher_model)
    times: dict[str, list[tuple[float, float]]] = {config: [] for config in CONFIGS}
    ratios: list[float] = []  # distill / plain median CPU step time within each repetition
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher"
        teacher_model.save_pretrained(teacher)
        for config in CONFIGS:  # untimed: the first runs of a process pay one-off costs (thread pools, allocator)
            run_once(config, teacher, tokens, args.warmup + 1, args.warmup + 1, [])
        for _ in range(args.repetitions):
            this: dict[str, list[tuple[float, float]]] = {config: [] for config in CONFIGS}
            for config in CONFIGS:
                run_once(config, teacher, tokens, args.steps, args.warmup, this[config])
                times[config] += this[config]
            ratios.append(
                statistics.median(t[1] for t in this["distill"]) / statistics.median(t[1] for t in this["plain"])
            )

    tokens_per_step = args.batch * args.seq_len
    logits_mib = tokens_per_step * VOCAB * 4 / 2**20
    print(
        f"student: {PRESET} preset, vocab {VOCAB}, {student_counts}; teacher: {teacher_config.num_hidden_layers} "
        f"layers, {teacher_counts} ({teacher_counts.non_embedding / student_counts.non_embedding:.2f}x non-embedding)"
    )
    print(
        f"batch {args.batch}x{args.seq_len}, fp32, {args.threads} thread(s); {args.repetitions} interleaved "
        f"repetitions x {args.steps - args.warmup} timed steps ({args.warmup} warm-up dropped); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; wall {time.perf_counter() - start:.0f} s"
    )
    print(
        f"teacher memory: weights {teacher_counts.total * 4 / 2**20:.1f} MiB (fp32), one batch of logits "
        f"{logits_mib:.1f} MiB (top-64: {tokens_per_step * 64 * 12 / 2**20:.2f} MiB of log-probs and ids)"
    )
    wall = {config: statistics.median(t[0] for t in times[config]) for config in CONFIGS}
    cpu = {config: statistics.median(t[1] for t in times[config]) for config in CONFIGS}
    print(f"{'config':<15}{'wall ms':>10}{'vs plain':>10}{'CPU ms':>10}{'vs plain':>10}{'tokens/s (CPU)':>16}")
    for config in CONFIGS:
        print(
            f"{config:<15}{wall[config] * 1e3:>10.1f}{wall[config] / wall['plain']:>9.2f}x{cpu[config] * 1e3:>10.1f}"
            f"{cpu[config] / cpu['plain']:>9.2f}x{tokens_per_step / cpu[config]:>16.0f}"
        )
    print(f"per-repetition distill / plain CPU step ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"distill_step_ratio: {cpu['distill'] / cpu['plain']:.3f}")


if __name__ == "__main__":
    main()
