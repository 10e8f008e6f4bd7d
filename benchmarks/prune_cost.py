"""Cost of one-shot pruning: wall time (calibration included) and peak extra memory of each method.

Every method prunes the same seeded random-weight Llama (8 layers, hidden 256, MLP 768, vocab 4096 by default;
saved once with `save_pretrained` and loaded by every worker) with the same calibration windows (seeded random token
ids `[nsamples, seqlen]`), through the public entry points:

- `prune_sparse`: magnitude, Wanda and SparseGPT, each unstructured at ratio 0.5 and 2:4;
- `prune_structured`: Minitron-depth (perplexity scorer), ShortGPT and Minitron-width at ratio 0.5
  (non-embedding convention); depth methods run with `inplace=True`, so no extra copy of the parent is timed.

Timing: each method runs in its own fresh worker process (multiprocessing "forkserver", forked from a server that has
only imported torch, transformers and litprune; "spawn" where forkserver does not exist) that loads the model
once. A timed run deep copies it, then times one call (calibration forwards, scoring and pruning;
`time.perf_counter`, with a CUDA synchronize on GPU). Timing starts once every worker has loaded; the workers are
then timed round-robin, one run at a time, so load from other processes hits every method alike. The table gives
the median and the minimum over `--repeats` runs; the first run in each worker counts like the others.

Memory: after the timed runs, each worker prunes once more, measuring the memory that call adds to what the
process held right before it (the model, its copy and the windows). On CPU (Linux) that is the peak resident set
size (`VmHWM`, reset through `/proc/self/clear_refs` just before the call) minus the resident set size before it.
Before that call the worker fixes glibc's mmap threshold at 128 KiB (`mallopt`; every larger buffer is then its own
mapping, returned to the system when freed) and hands freed heap pages back (`malloc_trim(0)`), so the resident set
follows live memory instead of depending on how earlier calls left the heap; with the default adaptive threshold
the same figure varied by up to 30 MB between runs. The timed runs keep the default allocator (a fixed threshold
slows allocation-heavy code) and come first, so one-time costs of a first call (lazy imports, thread pools) are not
counted. Where the allocator settings or the reset are not available, `ru_maxrss` since the process started stands
in and the header line says the figure is inexact. On CUDA: `torch.cuda.max_memory_allocated` minus
`torch.cuda.memory_allocated` before the call. The result objects (masks, a width-pruned model) count.

The last line is `wanda_vs_sparsegpt_time: X` = Wanda's median seconds / SparseGPT's median seconds, both
unstructured at ratio 0.5. Runs in about a minute on a 2-core CPU:

    python benchmarks/prune_cost.py [--device cpu] [--nsamples 16] [--seqlen 128] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import ctypes.util
import gc
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from litprune.models.presets import build_llama_config
from litprune.pruning.sparse import CALIBRATED_METHODS, prune_sparse
from litprune.pruning.structured import STRUCTURED_METHODS, prune_structured


@dataclass(frozen=True)
class Case:
    """One measured configuration: a method of `prune_sparse` or `prune_structured` and its pattern or ratio."""

    method: str
    ratio: float | None
    pattern: str = "unstructured"

    @property
    def label(self) -> str:
        if self.method in STRUCTURED_METHODS:
            return f"ratio {self.ratio:g}"
        return self.pattern if self.pattern != "unstructured" else f"unstructured {self.ratio:g}"


# What a worker imports; the forkserver imports it once, before it forks any worker.
WORKER_IMPORTS = [
    "torch",
    "transformers.models.llama.modeling_llama",
    "litprune.pruning.sparse",
    "litprune.pruning.structured",
]

CASES = [
    Case("magnitude", 0.5),
    Case("magnitude", None, "2:4"),
    Case("wanda", 0.5),
    Case("wanda", None, "2:4"),
    Case("sparsegpt", 0.5),
    Case("sparsegpt", None, "2:4"),
    Case("minitron_depth", 0.5),
    Case("shortgpt", 0.5),
    Case("minitron_width", 0.5),
]


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _prune(model: torch.nn.Module, case: Case, windows: torch.Tensor, batch_size: int) -> str:
    """Run one case on `model` and return a short summary of the result (to show that it did the job)."""
    if case.method in STRUCTURED_METHODS:
        depth = STRUCTURED_METHODS[case.method] == "depth"
        _, record = prune_structured(
            model, case.method, ratio=case.ratio, windows=windows, batch_size=batch_size, inplace=depth
        )
        return f"L{len(record['kept_layers'])} d{record['kept_hidden_size']} f{record['kept_intermediate_size']}"
    calibrated = case.method in CALIBRATED_METHODS
    result = prune_sparse(
        model,
        case.method,
        case.ratio,
        pattern=case.pattern,
        windows=windows if calibrated else None,
        progress=False,
        **({"batch_size": batch_size} if calibrated else {}),
    )
    return f"sparsity {result.sparsity:.3f}"


def _settle_allocator() -> bool:
    """Make the resident set follow live memory (glibc); False where that is not possible.

    Fixes the mmap threshold at 128 KiB (turning off glibc's adaptive raise), so every allocation of that size or
    more is its own mapping, returned to the system when freed, then hands the heap pages already freed back to the
    system (`malloc_trim(0)`). Otherwise a call reuses buffers an earlier call freed, unseen by the resident set
    size, and the peak depends on how the heap happens to be fragmented.
    """
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
        mallopt, malloc_trim = (libc.mallopt, libc.malloc_trim) if libc is not None else (None, None)
    except (OSError, AttributeError):  # not glibc
        return False
    if mallopt is None or mallopt(-3, 128 * 1024) != 1:  # -3 = M_MMAP_THRESHOLD; 1 = done
        return False
    malloc_trim(0)  # returns whether anything was released; either way no freed page stays resident
    return True


def _worker(conn, case: Case, model_dir: str, windows_path: str, device: str, threads: int, batch_size: int) -> None:
    """Load the model, say "ready", then prune a fresh deep copy once per "time" or "memory" message and reply."""
    try:
        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        parent = LlamaForCausalLM.from_pretrained(model_dir).eval().to(device)
        windows = torch.load(windows_path)
        cuda = device.startswith("cuda")
        conn.send(("ready",))
        while (mode := conn.recv()) in ("time", "memory"):
            model = copy.deepcopy(parent)
            gc.collect()
            exact_peak = True
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            elif mode == "memory":
                exact_peak = _settle_allocator() and _reset_peak_rss()
                before = _proc_status_kb("VmRSS") * 1024
            start = time.perf_counter()
            summary = _prune(model, case, windows, batch_size)
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            if mode == "time":
                conn.send(("ok", seconds, summary))
            elif cuda:
                conn.send(("ok", torch.cuda.max_memory_allocated(device) - before, True))
            elif exact_peak:
                conn.send(("ok", _proc_status_kb("VmHWM") * 1024 - before, True))
            else:
                conn.send(("ok", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, False))
            del model
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Workers:
    """One worker process per case, started together and stopped together (by their own handles)."""

    def __init__(self, context, cases: list[Case], worker_args: tuple) -> None:
        self.connections: dict[Case, object] = {}
        self.processes: list = []
        try:
            for case in cases:
                ours, theirs = context.Pipe()
                process = context.Process(target=_worker, args=(theirs, case, *worker_args))
                process.start()
                self.processes.append(process)
                self.connections[case] = ours
            for case, conn in self.connections.items():
                _check_reply(case, conn.recv())  # every worker has loaded before anything is measured
        except BaseException:
            self.stop()
            raise

    def run(self, case: Case, mode: str) -> tuple:
        """Have the worker of `case` prune once; `mode` is "time" or "memory"."""
        conn = self.connections[case]
        conn.send(mode)
        return _check_reply(case, conn.recv())

    def stop(self) -> None:
        for process, conn in zip(self.processes, self.connections.values(), strict=True):
            if process.is_alive():
                with contextlib.suppress(OSError):
                    conn.send("stop")
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()


def _check_reply(case: Case, reply: tuple) -> tuple:
    if reply[0] == "error":
        raise RuntimeError(f"{case.method} ({case.label}) failed in its worker:\n{reply[1]}")
    return reply


def build_parent(args: argparse.Namespace) -> LlamaForCausalLM:
    overrides = {
        "num_hidden_layers": args.layers,
        "hidden_size": args.hidden,
        "intermediate_size": args.mlp,
        "num_attention_heads": args.hidden // args.head_dim,
        "num_key_value_heads": args.hidden // args.head_dim // 2,
        "head_dim": args.head_dim,
    }
    config = build_llama_config("small", overrides=overrides, vocab_size=args.vocab)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where to prune: cpu, cuda or cuda:N")
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per calibration window")
    parser.add_argument("--batch-size", type=int, default=1, help="calibration windows per forward (every method)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (round-robin)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker (1 keeps timings stable)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the random parent")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random parent")
    parser.add_argument("--mlp", type=int, default=768, help="MLP intermediate size of the random parent")
    parser.add_argument("--head-dim", type=int, default=32, help="attention head size (KV heads = heads / 2)")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size of the random parent")
    args = parser.parse_args()
    positive = ("nsamples", "seqlen", "batch_size", "repeats", "threads")
    positive += ("layers", "hidden", "mlp", "head_dim", "vocab")
    problems = [f"--{k.replace('_', '-')}={getattr(args, k)} must be >= 1" for k in positive if getattr(args, k) < 1]
    if args.hidden % (2 * args.head_dim):
        problems.append(f"--hidden={args.hidden} must be a multiple of 2 * --head-dim={2 * args.head_dim}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"--device={args.device} but CUDA is not available; use --device cpu")
    if problems:
        parser.error("; ".join(problems))
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()

    parent = build_parent(args)
    windows = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(1))
    params = sum(p.numel() for p in parent.parameters())
    # Fresh processes forked from a server that has imported only what a worker needs, so none re-imports torch.
    if "forkserver" in mp.get_all_start_methods():
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(WORKER_IMPORTS)
    else:
        context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, windows_path = Path(tmp) / "parent", Path(tmp) / "windows.pt"
        parent.save_pretrained(model_dir)
        torch.save(windows, windows_path)
        del parent
        worker_args = (str(model_dir), str(windows_path), args.device, args.threads, args.batch_size)
        seconds: dict[Case, list[float]] = {case: [] for case in CASES}
        summaries: dict[Case, str] = {}
        workers = Workers(context, CASES, worker_args)
        peaks: dict[Case, int] = {}
        exact = True
        try:
            for _ in range(args.repeats):
                for case in CASES:
                    _, elapsed, summaries[case] = workers.run(case, "time")
                    seconds[case].append(elapsed)
            for case in CASES:
                _, peaks[case], exact_peak = workers.run(case, "memory")
                exact = exact and exact_peak
        finally:
            workers.stop()

    if args.device.startswith("cuda"):
        memory = "peak MB = max_memory_allocated - allocated before"
    elif exact:
        memory = "peak MB = peak RSS (VmHWM reset before the call) - RSS before"
    else:
        memory = "peak MB = peak RSS - RSS before, inexact (no mallopt/malloc_trim or no VmHWM reset: see --help)"
    print(
        f"parent: {args.layers} layers, hidden {args.hidden}, mlp {args.mlp}, vocab {args.vocab}, {params:,} params; "
        f"windows {args.nsamples}x{args.seqlen}, batch {args.batch_size}; {args.device}, {args.threads} thread(s); "
        f"{args.repeats} round-robin runs; {memory}"
    )
    header = f"{'method':<16}{'pattern/ratio':<18}{'median s':>10}{'min s':>9}{'peak MB':>9}  result"
    print(header)
    print("-" * len(header))
    medians = {}
    for case in CASES:
        medians[case] = statistics.median(seconds[case])
        print(
            f"{case.method:<16}{case.label:<18}{medians[case]:>10.3f}{min(seconds[case]):>9.3f}"
            f"{peaks[case] / 2**20:>9.1f}  {summaries[case]}"
        )
    wanda, sparsegpt = medians[Case("wanda", 0.5)], medians[Case("sparsegpt", 0.5)]
    print(f"wanda_vs_sparsegpt_time: {wanda / sparsegpt:.3f}")


if __name__ == "__main__":
    main()
