"""CPU benchmark: parameter counts and forward latency of structurally pruned models against their parent.

Builds a random-weight parent from the "small" preset (8 layers instead of 4 and a 4096-token vocabulary, so the
decoder rather than the output head dominates the cost), prunes it with Minitron-depth, ShortGPT and
Minitron-width at ratios 0.5 and 0.75 (non-embedding convention), and prints one table:

    model | layers | hidden | mlp | total params | non-embedding | prune s | batch 1 ms | batch 16 ms | speedup

Latency is the median over repeats of a no-grad forward at a fixed sequence length, after warm-up, with models
timed round-robin; speedup is parent / pruned at batch 16. The last line is `depth_0.5_speedup: X`
(Minitron-depth at 0.5, batch 16).
Runs in well under three minutes on one CPU thread:

    python benchmarks/structured_speed.py [--threads 1] [--seq-len 128] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from litprune.models.params import count_parameters
from litprune.models.presets import build_llama_config
from litprune.pruning.structured import prune_structured


def forward_latencies_ms(models: list[torch.nn.Module], batch: int, seq_len: int, repeats: int, vocab: int):
    """Median wall time of one no-grad forward per model, in milliseconds.

    Models are timed round-robin (one forward each per round), so load from other processes on a shared
    machine hits every model alike instead of whichever happened to run at that moment.
    """
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for round_ in range(repeats + 2):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(input_ids=ids, use_cache=False)
                if round_ >= 2:  # the first rounds warm up allocators and kernels
                    times[i].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps timings stable)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence in the timed forward")
    parser.add_argument("--repeats", type=int, default=15, help="timed forwards per model and batch size")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size of the random parent")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = build_llama_config("small", overrides={"num_hidden_layers": 8}, vocab_size=args.vocab)
    torch.manual_seed(0)
    parent = LlamaForCausalLM(config).eval()
    windows = torch.randint(0, args.vocab, (8, 128), generator=torch.Generator().manual_seed(1))

    rows = [("parent", parent, 0.0)]
    for ratio in (0.5, 0.75):
        for method in ("minitron_depth", "shortgpt", "minitron_width"):
            start = time.perf_counter()
            pruned, _ = prune_structured(parent, method, ratio=ratio, windows=windows)
            rows.append((f"{method}@{ratio}", pruned.eval(), time.perf_counter() - start))

    header = (
        f"{'model':<22}{'layers':>7}{'hidden':>7}{'mlp':>6}{'total':>11}{'non-emb':>10}"
        f"{'prune s':>9}{'b1 ms':>9}{'b16 ms':>9}{'speedup':>9}"
    )
    print(f"parent: small preset, 8 layers, vocab {args.vocab}; seq_len {args.seq_len}; {args.threads} thread(s)")
    print(header)
    print("-" * len(header))
    models = [model for _, model, _ in rows]
    b1 = forward_latencies_ms(models, 1, args.seq_len, args.repeats, args.vocab)
    b16 = forward_latencies_ms(models, 16, args.seq_len, args.repeats, args.vocab)
    speedups = {}
    for i, (name, model, prune_s) in enumerate(rows):
        count = count_parameters(model)
        speedups[name] = b16[0] / b16[i]
        c = model.config
        print(
            f"{name:<22}{c.num_hidden_layers:>7}{c.hidden_size:>7}{c.intermediate_size:>6}{count.total:>11,}"
            f"{count.non_embedding:>10,}{prune_s:>9.2f}{b1[i]:>9.2f}{b16[i]:>9.2f}{speedups[name]:>8.2f}x"
        )
    print(f"depth_0.5_speedup: {speedups['minitron_depth@0.5']:.2f}")


if __name__ == "__main__":
    main()
