"""A prepared GPU check for the day one GPU is lent: training throughput and MFU, SparseMask overhead, pruning time
and 2:4 semi-structured matmul speed, in one command that writes every figure to a JSON file.

    python benchmarks/gpu_check.py --out gpu_check.json             # one H100/H200, about 3-5 minutes
    python benchmarks/gpu_check.py --device cpu --smoke --out x.json  # toy sizes on CPU, seconds (plumbing only)

Sections (each key of the JSON; a failing section records `{"error": ..., "traceback": ...}` and the next one still
runs; once `--budget-s` seconds have passed, the remaining sections record `{"skipped": ...}`):

1. `train_throughput`: a ~1B Llama (the `llama3.1-8b` preset shrunk to Llama-3.2-1B's shape: 16 layers, hidden 2048,
   MLP 8192, 32 query / 8 KV heads of 64, vocab 128256, untied head; 0.97B non-embedding parameters) trained by a real
   Lightning Trainer with `ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)` (FSDP2 over one GPU,
   `CausalLM.configure_model`'s path), bf16-mixed, AdamW, gradient clipping 1.0, on random token windows.
   Step time = wall time between consecutive `on_train_batch_end` (CUDA synchronised), the first `--warmup-steps`
   excluded. MFU = tokens/s x FLOPs per token / peak bf16 dense FLOPs, with FLOPs per token =
   6 x non-embedding parameters + 12 x layers x (heads x head_dim) x seq_len (attention scores, PaLM appendix B;
   `training_flops_per_token`). `mfu_torchtitan_convention` counts the output head too (6 x parameters other than the
   input embedding), as torchtitan does, whose 33-39% for Llama-3.1-8B on H100 is printed beside it.
2. `sparse_mask_overhead`: the same run with `SparseMask(mask_source="dense", schedule="one_shot", pattern="2:4")`
   (magnitude 2:4 masks made at fit start, then held on gradients and weights every step); ratio of median step
   times, sparse / dense (the dense figures are section 1's run when it succeeded).
3. `prune_time`: `prune_sparse` (Wanda, then SparseGPT, 2:4) on the same architecture in bf16 on the GPU, calibrated
   on `--calib-samples` x `--calib-seqlen` random token ids; total seconds and seconds per decoder layer. A layer's
   time runs from the end of the previous layer's last forward to the end of its own (CUDA synchronised in forward
   hooks), so it holds its statistics pass, the pruning and the pass feeding the next layer; layer 0 also holds the
   embedding pass, the last layer ends when `prune_sparse` returns.
4. `semi_structured`: `F.linear(x, W)` against `F.linear(x, to_sparse_semi_structured(W))` for 2:4 weights of
   Llama-1B and Llama-8B linears, fp16 and bf16, `--tokens` rows of x, per backend (CUTLASS, and cuSPARSELt where
   available): medians of CUDA-event-timed repeats after warm-up, speedup = dense ms / sparse ms, and the largest
   difference to the dense product relative to its largest entry. Needs CUDA with compute capability >= 8.0;
   elsewhere the reason is recorded.

`meta` holds the device, versions, arguments, the peak FLOPs used and where it came from, `failed_sections` (an
error, or skipped or cut short by `--budget-s`), `not_measured_sections` (skipped on purpose: section 4 without CUDA,
or left out by `--only`) and `complete` (both empty). The exit status is 1 when a section failed, else 0. The JSON is
rewritten after every section, so a run killed from outside still leaves what it measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TORCHTITAN_REFERENCE = "torchtitan: 33-39% MFU for Llama-3.1-8B on H100 (bf16, FSDP2; its convention counts the head)"

PEAK_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    # Substrings of torch.cuda.get_device_name(), most specific first; dense (no 2:4) bf16 tensor-core peaks from
    # NVIDIA's datasheets (half of the "with sparsity" figures).
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM, same tensor cores as H100 SXM (GH200 matches here too)
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
)

LLAMA_1B = {
    # Llama-3.2-1B's shape on the 8B preset (its vocabulary, rope and norms); head left untied like the 8B's.
    "num_hidden_layers": 16,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
}
TINY = {"vocab_size": 256}

# (in_features, out_features) of 2:4 linears: Llama-1B up/down, Llama-8B up/down (gate has up's shape).
SEMI_SHAPES_FULL = ((2048, 8192), (8192, 2048), (4096, 14336), (14336, 4096))
SEMI_SHAPES_SMOKE = ((128, 256),)


# --------------------------------------------------------------------------------------------- pure arithmetic
def training_flops_per_token(params: int, num_layers: int, attention_width: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x params (forward + backward matmuls) + 12 x layers x width x seq_len.

    The second term is the attention scores and their weighted sum (QK^T and AV, forward and backward, PaLM appendix
    B), with `attention_width` = query heads x head_dim (the hidden size for Llama shapes), not halved for causality.
    """
    return 6.0 * params + 12.0 * num_layers * attention_width * seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOPs per second / peak FLOPs per second (a fraction, not percent)."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def peak_tflops_for(device_name: str) -> float | None:
    """The dense bf16 peak (TFLOPs) of a GPU named like `torch.cuda.get_device_name()`; None if not in the table."""
    for key, tflops in PEAK_BF16_DENSE_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


# ------------------------------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class Sizes:
    """Everything sized: the model, the training runs, the calibration and the matmuls."""

    preset: str
    overrides: dict[str, Any]
    seq_len: int
    micro_batch: int
    warmup_steps: int
    steps: int
    calib_samples: int
    calib_seqlen: int
    calib_batch: int
    semi_shapes: tuple[tuple[int, int], ...]
    tokens: tuple[int, ...]
    semi_warmup: int
    semi_repeats: int


def resolve_sizes(args: argparse.Namespace) -> Sizes:
    if args.smoke:  # a toy of every section: the plumbing, not the figures
        return Sizes("tiny", TINY, 32, 2, 1, 2, 4, 32, 2, SEMI_SHAPES_SMOKE, (128,), 1, 3)
    return Sizes(
        "llama3.1-8b",
        LLAMA_1B,
        args.seq_len,
        args.micro_batch,
        args.warmup_steps,
        args.steps,
        args.calib_samples,
        args.calib_seqlen,
        args.calib_batch,
        SEMI_SHAPES_FULL,
        tuple(args.tokens),
        args.semi_warmup,
        args.semi_repeats,
    )


# ---------------------------------------------------------------------------------------------- recording
class Section(dict):
    """A section's figures: each `put` prints the figure as it is measured and keeps it for the JSON."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def put(self, key: str, value: Any, unit: str = "") -> Any:
        self[key] = value
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"[{self.name}] {key}: {shown}{' ' + unit if unit else ''}", flush=True)
        return value


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    peak_tflops: float | None
    peak_source: str
    deadline: float
    dense_run: dict[str, Any] | None = None

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- sections 1 and 2: training
def _llama_config(sizes: Sizes):
    from litprune.models.presets import build_llama_config

    return build_llama_config(sizes.preset, sizes.overrides)


def _random_windows_datamodule(vocab_size: int, seq_len: int, micro_batch: int, batches: int):
    """A `LightningDataModule` of seeded random token windows, shaped as `CausalLM` expects (labels shifted)."""
    from lightning.pytorch import LightningDataModule
    from torch.utils.data import DataLoader, Dataset

    class Windows(Dataset):
        def __init__(self, windows: torch.Tensor) -> None:
            self.windows = windows  # [n, seq_len + 1]

        def __len__(self) -> int:
            return len(self.windows)

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            window = self.windows[index]
            return {"input_ids": window[:-1], "labels": window[1:]}

    class RandomWindows(LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.seq_len, self.micro_batch_size = seq_len, micro_batch

        def train_dataloader(self) -> DataLoader:
            generator = torch.Generator().manual_seed(0)
            windows = torch.randint(0, vocab_size, (batches * micro_batch, seq_len + 1), generator=generator)
            return DataLoader(Windows(windows), batch_size=micro_batch, shuffle=False)

    return RandomWindows()


def train_run(ctx: Context, sparse: bool) -> dict[str, Any]:
    """One `CausalLM` fit under `ModelParallelStrategy` on one device; step times and the setup time."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy

    from litprune.callbacks.sparse_mask import SparseMask
    from litprune.modules.causal_lm import CausalLM

    sizes = ctx.sizes
    total_steps = sizes.warmup_steps + sizes.steps
    tokens_per_step = sizes.micro_batch * sizes.seq_len
    config = _llama_config(sizes)
    ends: list[float] = []
    marks: dict[str, float] = {}
    device = ctx.device

    class StepClock(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            sync(device)
            marks["train_start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync(device)
            ends.append(time.perf_counter())

    callbacks: list[pl.Callback] = []
    mask = None
    if sparse:
        mask = SparseMask(
            mask_source="dense", schedule="one_shot", pattern="2:4", score="magnitude", log_every_n_steps=10**9
        )
        callbacks.append(mask)
    callbacks.append(StepClock())  # last, so a step ends after every other callback's batch-end hooks
    module = CausalLM(preset=sizes.preset, overrides=sizes.overrides, max_tokens=total_steps * tokens_per_step)
    data = _random_windows_datamodule(config.vocab_size, sizes.seq_len, sizes.micro_batch, total_steps)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        precision=ctx.args.precision,
        gradient_clip_val=1.0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=10**6,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    if len(ends) != total_steps:
        raise RuntimeError(f"the fit ran {len(ends)} steps, {total_steps} were planned (warm-up + timed)")
    from litprune.models.sharding import is_sharded_model, mixed_precision_policy

    param_dtype, reduce_dtype = mixed_precision_policy(trainer.precision)
    # The first timed step is the one after the last warm-up step ends.
    step_s = [b - a for a, b in zip(ends[sizes.warmup_steps - 1 : -1], ends[sizes.warmup_steps :], strict=True)]
    run = {
        "setup_s": marks["train_start"] - start,
        "step_s": step_s,
        "median_step_s": statistics.median(step_s),
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step * len(step_s) / sum(step_s),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "fsdp2_sharded": is_sharded_model(module.model),
        "fsdp2_mixed_precision": {"param_dtype": str(param_dtype), "reduce_dtype": str(reduce_dtype)},
    }
    if mask is not None:
        run["mask_hook_s_total"] = dict(mask.hook_time_s)
        run["masked_tensors"] = len(mask.masks)
        run["mask_sparsity"] = sum(int((~keep).sum()) for keep in mask.masks.values()) / sum(
            keep.numel() for keep in mask.masks.values()
        )
    del trainer, module, mask
    return run


def _parameter_counts(sizes: Sizes) -> dict[str, int]:
    from transformers import LlamaForCausalLM

    from litprune.models.params import count_parameters

    with torch.device("meta"):
        model = LlamaForCausalLM(_llama_config(sizes))
    count = count_parameters(model)
    return {
        "total": count.total,
        "non_embedding": count.non_embedding,
        "without_input_embedding": count.total - model.get_input_embeddings().weight.numel(),
    }


def section_train_throughput(ctx: Context, out: Section) -> None:
    sizes, config = ctx.sizes, _llama_config(ctx.sizes)
    out.put("model", f"{sizes.preset} + {sizes.overrides}")
    params = out.put("parameters", _parameter_counts(sizes))
    out.put("seq_len", sizes.seq_len)
    out.put("micro_batch", sizes.micro_batch)
    out.put("warmup_steps", sizes.warmup_steps)
    out.put("timed_steps", sizes.steps)
    out.put("precision", ctx.args.precision)
    run = train_run(ctx, sparse=False)
    ctx.dense_run = run
    out.put("setup_s", run["setup_s"], "s (model build, sharding, init until on_train_start)")
    out.put("median_step_s", run["median_step_s"], "s")
    out.put("step_s", run["step_s"])
    tokens_per_s = out.put("tokens_per_s", run["tokens_per_s"])
    out.put("peak_memory_gib", run["peak_memory_gib"])
    out.put("fsdp2_sharded", run["fsdp2_sharded"])
    out.put("fsdp2_mixed_precision", run["fsdp2_mixed_precision"])
    width = config.num_attention_heads * config.head_dim
    flops = training_flops_per_token(params["non_embedding"], config.num_hidden_layers, width, sizes.seq_len)
    titan = training_flops_per_token(params["without_input_embedding"], config.num_hidden_layers, width, sizes.seq_len)
    out.put("flops_per_token", flops)
    out.put(
        "flops_convention",
        "6 x non-embedding params + 12 x layers x (heads x head_dim) x seq_len per token (attention included)",
    )
    out.put("flops_per_token_torchtitan_convention", titan)
    if ctx.peak_tflops is None:
        out.put("mfu", None)
        out.put("mfu_missing_reason", ctx.peak_source)
        return
    out.put("peak_tflops", ctx.peak_tflops)
    out.put("mfu", mfu(tokens_per_s, flops, ctx.peak_tflops))
    out.put("mfu_torchtitan_convention", mfu(tokens_per_s, titan, ctx.peak_tflops))
    out.put("reference", TORCHTITAN_REFERENCE)


def section_sparse_mask_overhead(ctx: Context, out: Section) -> None:
    dense = ctx.dense_run
    out.put("dense_source", "train_throughput" if dense is not None else "own run (train_throughput has no figures)")
    if dense is None:
        dense = train_run(ctx, sparse=False)
    release_memory(ctx.device)
    sparse = train_run(ctx, sparse=True)
    out.put("callback", "SparseMask(mask_source='dense', schedule='one_shot', pattern='2:4', score='magnitude')")
    out.put("masked_tensors", sparse["masked_tensors"])
    out.put("mask_sparsity", sparse["mask_sparsity"])
    out.put("dense_median_step_s", dense["median_step_s"], "s")
    out.put("sparse_median_step_s", sparse["median_step_s"], "s")
    out.put("sparse_step_s", sparse["step_s"])
    out.put("step_time_ratio", sparse["median_step_s"] / dense["median_step_s"], "(sparse / dense)")
    out.put("sparse_tokens_per_s", sparse["tokens_per_s"])
    out.put("mask_hook_s_total", sparse["mask_hook_s_total"], "(host time inside SparseMask hooks, whole run)")
    out.put("sparse_peak_memory_gib", sparse["peak_memory_gib"])


# ------------------------------------------------------------------------------------- section 3: pruning time
class LayerClock:
    """Forward hooks on every decoder layer keep the (synchronised) end time of each layer's latest forward."""

    def __init__(self, layers: nn.ModuleList, device: torch.device) -> None:
        self.ends: dict[int, float] = {}
        self.handles = [layer.register_forward_hook(self._hook(i, device)) for i, layer in enumerate(layers)]

    def _hook(self, index: int, device: torch.device) -> Callable:
        def hook(module, inputs, output) -> None:
            sync(device)
            self.ends[index] = time.perf_counter()

        return hook

    def per_layer(self, start: float, end: float, count: int) -> list[float]:
        """Seconds per layer: from the previous layer's end (or `start`) to this one's (the last: `end`)."""
        bounds = [start] + [self.ends[i] for i in range(count - 1)] + [end]
        return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def section_prune_time(ctx: Context, out: Section) -> None:
    from transformers import LlamaForCausalLM

    from litprune.pruning.sparse import prune_sparse
    from litprune.pruning.targets import decoder_layers

    sizes, device, pattern = ctx.sizes, ctx.device, ctx.args.prune_pattern
    config = _llama_config(sizes)
    torch.manual_seed(0)
    with torch.device(device):
        parent = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    windows = torch.randint(
        0, config.vocab_size, (sizes.calib_samples, sizes.calib_seqlen), generator=torch.Generator().manual_seed(1)
    )
    out.put("model_dtype", "bfloat16")
    out.put("pattern", pattern)
    out.put("calibration", f"{sizes.calib_samples} x {sizes.calib_seqlen} random token ids, batch {sizes.calib_batch}")
    for method in ("wanda", "sparsegpt"):
        if ctx.time_left() <= 0:
            out.put(f"{method}_skipped", f"--budget-s={ctx.args.budget_s} exceeded before {method}")
            continue
        model = copy.deepcopy(parent)
        _, layers = decoder_layers(model)
        clock = LayerClock(layers, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        sync(device)
        start = time.perf_counter()
        try:
            result = prune_sparse(
                model, method, pattern=pattern, windows=windows, progress=False, batch_size=sizes.calib_batch
            )
            sync(device)
            end = time.perf_counter()
        finally:
            clock.remove()
        out.put(f"{method}_total_s", end - start, "s")
        out.put(f"{method}_per_layer_s", clock.per_layer(start, end, len(layers)))
        out.put(f"{method}_sparsity", result.sparsity)
        if device.type == "cuda":
            out.put(f"{method}_peak_extra_gib", (torch.cuda.max_memory_allocated(device) - before) / 2**30)
        del model, result
        release_memory(device)


# ------------------------------------------------------------------------------ section 4: semi-structured 2:4
def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of `fn()` over `repeats` calls after `warmup` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def two_four_weight(out_features: int, in_features: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A random `[out, in]` weight pruned to 2:4 by magnitude (`litprune.pruning.patterns.nm_mask`)."""
    from litprune.pruning.patterns import nm_mask

    generator = torch.Generator(device=device).manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator, device=device, dtype=dtype)
    return weight * nm_mask(weight.abs(), 2, 4)


@contextmanager
def semi_structured_backend(name: str):
    """Route `to_sparse_semi_structured` to CUTLASS or cuSPARSELt (torch's own switch), restored afterwards."""
    from torch.sparse import SparseSemiStructuredTensor

    saved = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = name == "cutlass"
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = saved


def semi_structured_unsupported(device: torch.device) -> str | None:
    """Why 2:4 semi-structured kernels cannot run on `device`, or None."""
    if device.type != "cuda":
        return f"semi-structured 2:4 kernels are CUDA-only; this run is on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        return f"semi-structured 2:4 needs compute capability >= 8.0 (Ampere); this GPU has {capability}"
    return None


def compress(weight: torch.Tensor, backends: list[str]) -> dict[str, torch.Tensor | str]:
    """`to_sparse_semi_structured(weight)` per backend, or the error text of a backend that refused it."""
    from torch.sparse import to_sparse_semi_structured

    compressed: dict[str, torch.Tensor | str] = {}
    for backend in backends:
        try:
            with semi_structured_backend(backend):
                compressed[backend] = to_sparse_semi_structured(weight)
        except Exception as err:  # recorded in every case of this weight; the other backend may still work
            compressed[backend] = f"{type(err).__name__}: {err}"
    return compressed


def time_linear(
    x: torch.Tensor, weight: torch.Tensor, compressed: dict[str, torch.Tensor | str], warmup: int, repeats: int
) -> dict[str, Any]:
    """Dense and per-backend 2:4 timings of `F.linear(x, weight)`: x `[tokens, in]`, weight `[out, in]`."""
    device = x.device
    (tokens, in_features), out_features = x.shape, weight.shape[0]
    dense_ms = median_ms(lambda: F.linear(x, weight), device, warmup, repeats)
    reference = F.linear(x, weight).float()
    case: dict[str, Any] = {
        "dtype": str(x.dtype).removeprefix("torch."),
        "in_features": in_features,
        "out_features": out_features,
        "tokens": tokens,
        "dense_ms": dense_ms,
        "dense_tflops": 2.0 * tokens * in_features * out_features / dense_ms / 1e9,
    }
    label = f"{case['dtype']} {in_features}->{out_features} x{tokens}"
    print(f"[semi_structured] {label}: dense {dense_ms:.4g} ms ({case['dense_tflops']:.4g} TFLOP/s)", flush=True)
    for backend, sparse in compressed.items():
        try:
            if isinstance(sparse, str):
                raise RuntimeError(sparse)
            sparse_ms = median_ms(lambda w=sparse: F.linear(x, w), device, warmup, repeats)
            diff = ((F.linear(x, sparse).float() - reference).abs().max() / reference.abs().max()).item()
        except Exception as err:  # recorded for this case; the next case still runs
            case[backend] = {"error": f"{type(err).__name__}: {err}"}
            print(f"[semi_structured] {label}: {backend} error: {case[backend]['error']}", flush=True)
            continue
        case[backend] = {"ms": sparse_ms, "speedup": dense_ms / sparse_ms, "max_rel_diff": diff}
        print(
            f"[semi_structured] {label}: {backend} {sparse_ms:.4g} ms, speedup {dense_ms / sparse_ms:.3f}x "
            f"(dense / 2:4), max rel diff {diff:.2e}",
            flush=True,
        )
    return case


def section_semi_structured(ctx: Context, out: Section) -> None:
    device, sizes = ctx.device, ctx.sizes
    reason = semi_structured_unsupported(device)
    if reason is not None:
        out.put("skipped", reason)
        return
    backends = ["cutlass"] + (["cusparselt"] if torch.backends.cusparselt.is_available() else [])
    out.put("backends", backends)
    if "cusparselt" in backends:
        out.put("cusparselt_version", torch.backends.cusparselt.version())
    out.put("timing", f"median of {sizes.semi_repeats} CUDA-event-timed calls after {sizes.semi_warmup} warm-up calls")
    cases: list[dict[str, Any]] = out.put("cases", [])
    for dtype in (torch.float16, torch.bfloat16):
        for in_features, out_features in sizes.semi_shapes:
            if ctx.time_left() <= 0:
                out.put("budget_stop", f"--budget-s={ctx.args.budget_s} exceeded; later cases not run")
                return
            weight = two_four_weight(out_features, in_features, dtype, device)
            compressed = compress(weight, backends)
            for tokens in sizes.tokens:
                x = torch.randn(tokens, in_features, device=device, dtype=dtype)
                cases.append(time_linear(x, weight, compressed, sizes.semi_warmup, sizes.semi_repeats))
            del weight, compressed
            release_memory(device)


SECTIONS: tuple[tuple[str, Callable[[Context, Section], None]], ...] = (
    ("train_throughput", section_train_throughput),
    ("sparse_mask_overhead", section_sparse_mask_overhead),
    ("prune_time", section_prune_time),
    ("semi_structured", section_semi_structured),
)


# ---------------------------------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from litprune.pruning.patterns import parse_pattern

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="JSON file for every figure (rewritten per section)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (cpu only with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes of every section (plumbing check, seconds)")
    parser.add_argument("--only", nargs="+", choices=[n for n, _ in SECTIONS], metavar="SECTION", help="run only these")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the sections left after this many seconds")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOPs for MFU (default: table by GPU name)")
    parser.add_argument("--precision", default="bf16-mixed", help="Trainer precision of sections 1 and 2")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per training window")
    parser.add_argument("--micro-batch", type=int, default=4, help="windows per training step")
    parser.add_argument("--warmup-steps", type=int, default=5, help="training steps excluded from timing")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration windows for Wanda and SparseGPT")
    parser.add_argument("--calib-seqlen", type=int, default=2048, help="tokens per calibration window")
    parser.add_argument("--calib-batch", type=int, default=8, help="calibration windows per forward")
    parser.add_argument("--prune-pattern", default="2:4", help="N:M pattern pruned in section 3")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384], help="rows of x in section 4")
    parser.add_argument("--semi-warmup", type=int, default=10, help="untimed calls before each timed matmul series")
    parser.add_argument("--semi-repeats", type=int, default=50, help="timed calls per matmul")
    args = parser.parse_args(argv)
    problems = []
    positive = ("seq_len", "micro_batch", "warmup_steps", "steps", "calib_samples", "calib_seqlen", "calib_batch")
    positive += ("semi_warmup", "semi_repeats")
    problems += [f"--{k.replace('_', '-')}={getattr(args, k)} must be >= 1" for k in positive if getattr(args, k) < 1]
    problems += [f"--tokens {t} must be >= 1" for t in args.tokens if t < 1]
    try:
        if not parse_pattern(args.prune_pattern).is_nm:
            problems.append(f"--prune-pattern={args.prune_pattern!r} must be an N:M pattern such as 2:4")
    except ValueError as err:
        problems.append(f"--prune-pattern={args.prune_pattern!r}: {err}")
    if args.budget_s <= 0:
        problems.append(f"--budget-s={args.budget_s} must be positive")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        problems.append(f"--peak-tflops={args.peak_tflops} must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"--device={args.device} but CUDA is not available; use --device cpu --smoke")
    elif args.device == "cpu" and not args.smoke:
        problems.append("--device=cpu trains a 1B model for hours; add --smoke for the toy plumbing run")
    elif not (args.device == "cpu" or args.device.startswith("cuda")):
        problems.append(f"--device={args.device!r} is not cpu, cuda or cuda:N")
    if problems:
        parser.error("; ".join(problems))
    return args


def _peak(args: argparse.Namespace, device: torch.device) -> tuple[float | None, str]:
    if args.peak_tflops is not None:
        return args.peak_tflops, "--peak-tflops"
    if device.type != "cuda":
        return None, f"no peak FLOPs known for {device.type}; pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops_for(name)
    if peak is None:
        return None, f"{name!r} is not in PEAK_BF16_DENSE_TFLOPS; pass --peak-tflops"
    return peak, f"table entry for {name!r}"


def _meta(args: argparse.Namespace, device: torch.device, sizes: Sizes, peak: float | None, source: str) -> dict:
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "sizes": asdict(sizes),
        "device": device.type if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "peak_tflops": peak,
        "peak_source": source,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.type == "cuda":
        meta["capability"] = list(torch.cuda.get_device_capability(device))
    return meta


def main(argv: list[str] | None = None) -> int:
    from litprune.utils.atomic import atomic_write_json

    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    warnings.filterwarnings("ignore", module="lightning")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    sizes = resolve_sizes(args)
    peak, source = _peak(args, device)
    ctx = Context(args, sizes, device, peak, source, deadline=start + args.budget_s)
    results: dict[str, Any] = {"meta": _meta(args, device, sizes, peak, source)}
    print(f"gpu_check on {results['meta']['device']}, torch {torch.__version__}, peak bf16: {peak} TFLOPs ({source})")
    failed: list[str] = []  # an error, or cut short by --budget-s: the exit status is 1
    not_measured: list[str] = []  # skipped on purpose (no semi-structured kernels on this device)
    for name, run_section in SECTIONS:
        section = Section(name)
        if args.only and name not in args.only:
            section.put("skipped", "not selected by --only")
            not_measured.append(name)
        elif ctx.time_left() <= 0:
            section.put("skipped", f"--budget-s={args.budget_s} exceeded after {time.perf_counter() - start:.0f} s")
            failed.append(name)
        else:
            began = time.perf_counter()
            try:
                run_section(ctx, section)
            except Exception as err:
                section.clear()
                section.put("error", f"{type(err).__name__}: {err}")
                section["traceback"] = traceback.format_exc()
                print(section["traceback"], file=sys.stderr, flush=True)
            section.put("seconds", time.perf_counter() - began, "s")
            if "error" in section or "budget_stop" in section or any(k.endswith("_skipped") for k in section):
                failed.append(name)
            elif "skipped" in section:
                not_measured.append(name)
        results[name] = dict(section)
        release_memory(device)
        results["meta"].update(
            elapsed_s=time.perf_counter() - start,
            failed_sections=failed,
            not_measured_sections=not_measured,
            complete=not failed and not not_measured,
        )
        atomic_write_json(args.out, results, default=str)
    print(
        f"wrote {args.out} in {time.perf_counter() - start:.1f} s; failed or cut short: {failed or 'none'}; "
        f"not measured here: {not_measured or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
