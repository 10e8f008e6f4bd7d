"""Examples per second of litprune's live-model lm-eval adapter against lm-eval's own `HFLM`.

One process evaluates the same small Hugging Face Llama (`build_llama_config("small")`, vocabulary of a byte-level
BPE trained here on the embedded corpus) on the same offline task (`litprune_next_line`, generated from the
embedded corpus's held-out split) three ways, interleaved over several repetitions so that machine load drifts
affect all alike:

- `adapter`: `litprune.eval.harness.evaluate_tasks(model, tokenizer, ...)` on the model in memory (task
  resolution, tokenizer copy, model borrow and random-state restore included);
- `hflm`: lm-eval's `HFLM(pretrained=<saved directory>, tokenizer=<saved directory>, batch_size=B,
  device="cpu")`, the ordinary way to evaluate a saved model from Python (what the CLI builds), followed by
  `simple_evaluate` with a task manager over the task's directory only (so neither side pays for lm-eval's
  full task index). Loading from the directory is timed, as it is part of that path; saving the model is not.
- `hflm_bs1` (informational, one repetition on the first 16 examples): the same `HFLM` without `batch_size`,
  i.e. lm-eval's default of 1, which is what `simple_evaluate(model=HFLM(...), batch_size=B)` silently runs
  (lm-eval issue 3207).

Each repetition reports examples per second = examples / wall time of (construct + evaluate). The table shows
medians; the last line is `adapter_vs_hflm_speed: X`, the ratio of the adapter's median throughput to `hflm`'s at
the same batch size (>= 1.0 means the adapter is at least as fast). Both run the same forward passes; the
adapter saves the per-call costs around them (loading from disk, and the environment report that
`simple_evaluate` builds with subprocesses), so on a small model the ratio is well above 1 and on a large one,
where the forward passes dominate, it tends to 1. The warm-up checks that both report the same accuracy.

Run: `python benchmarks/eval_speed.py` (about 1-3 minutes on 2 CPU cores; `--help` for sizes).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from litprune.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from litprune.eval.harness import evaluate_tasks  # noqa: E402
from litprune.eval.offline_tasks import NEXT_LINE, prepare_offline_task  # noqa: E402
from litprune.eval.text_sources import embedded_documents  # noqa: E402
from litprune.models.presets import build_llama_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=64, help="examples evaluated per repetition (lm-eval limit)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of both adapter and hflm")
    parser.add_argument("--repetitions", type=int, default=5, help="interleaved repetitions per configuration")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary trained for the benchmark")
    args = parser.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    documents = embedded_documents("test")
    train_texts = [text for _, text in embedded_documents("train")[:200]]
    tokenizer = train_bpe_tokenizer(train_texts, vocab_size=args.vocab_size)
    torch.manual_seed(0)
    model = LlamaForCausalLM(build_llama_config("small", vocab_size=len(tokenizer))).eval()
    max_examples = max(args.examples, 100)
    bs1_examples = min(args.examples, 16)
    task = prepare_offline_task(NEXT_LINE, documents, max_examples=max_examples)
    manager = TaskManager(include_path=str(task.directory), include_defaults=False)

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "model"
        model.save_pretrained(saved, safe_serialization=True)
        tokenizer.save_pretrained(saved)

        def run_adapter() -> float:
            (result,) = evaluate_tasks(
                model,
                tokenizer,
                [NEXT_LINE],
                batch_size=args.batch_size,
                limit=args.examples,
                task_documents=documents,
                max_examples=max_examples,
            )
            return result.metrics["acc"]

        def run_hflm(batch_size: int | None, examples: int = args.examples) -> float:
            kwargs = {} if batch_size is None else {"batch_size": batch_size}
            lm = HFLM(pretrained=str(saved), tokenizer=str(saved), device="cpu", **kwargs)
            out = evaluator.simple_evaluate(
                model=lm, tasks=[task.name], limit=examples, task_manager=manager, log_samples=False
            )
            return out["results"][task.name]["acc,none"]

        runs = {"adapter": run_adapter, "hflm": lambda: run_hflm(args.batch_size)}
        rates: dict[str, list[float]] = {name: [] for name in [*runs, "hflm_bs1"]}
        accuracy: dict[str, float] = {}
        # Warm-up (first-call imports, dataset cache, allocator); both sides must score the same examples alike.
        if run_adapter() != run_hflm(args.batch_size):
            raise RuntimeError("adapter and HFLM disagree on accuracy; the comparison would be meaningless")
        for _ in range(args.repetitions):
            for name, fn in runs.items():
                start = time.perf_counter()
                accuracy[name] = fn()
                rates[name].append(args.examples / (time.perf_counter() - start))
        start = time.perf_counter()
        accuracy["hflm_bs1"] = run_hflm(None, bs1_examples)
        rates["hflm_bs1"].append(bs1_examples / (time.perf_counter() - start))

    print(f"model: small preset, {sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tokenizer)}")
    print(f"task: {NEXT_LINE}, {args.examples} examples x 4 choices, batch size {args.batch_size}, CPU")
    print(f"{'configuration':<14} {'reps':>4} {'median ex/s':>12} {'min ex/s':>10} {'max ex/s':>10} {'acc':>7}")
    for name, values in rates.items():
        print(
            f"{name:<14} {len(values):>4} {statistics.median(values):>12.1f} {min(values):>10.1f} "
            f"{max(values):>10.1f} {accuracy[name]:>7.3f}"
        )
    print(f"hflm_bs1: HFLM's default batch size 1, on the first {bs1_examples} examples only (its acc is over those)")
    ratio = statistics.median(rates["adapter"]) / statistics.median(rates["hflm"])
    print(f"adapter_vs_hflm_speed: {ratio:.3f}")


if __name__ == "__main__":
    main()
