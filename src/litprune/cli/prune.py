"""`litprune prune`: prune a parent once, in one process, and write the pruned model its retraining runs start from.

    litprune prune --config configs/experiment/tiny_sparse_wanda_2of4.yaml --out runs/tiny_sparse_wanda_2of4/pruned

The config is the retraining run's own fit config (or any config whose `model.init_args.init` is a pruning init,
`StructuredPrune` or `SparsePrune`, with a `data` section); every `litprune fit` option is accepted and only the
model and data sections are built. The init prunes exactly as it would inside `litprune fit`: the parent is loaded
once, calibration windows are drawn from the config's data (`calibration.slice`), the method runs on `--device`
(default `auto`: the first GPU when there is one). The pruned model is written to `--out`, atomically, as an
ordinary Hugging Face checkpoint plus, for sparse methods, its keep-masks, and the pruning record `pruning.json`
(layout: `litprune.inits.pruned`). An existing `--out` is refused unless `--overwrite`.

The retraining run then starts, on every rank, from

    model:
      init_args:
        init:
          class_path: litprune.inits.FromPretrained
          init_args: {path: <--out>}

which hands over the masks of a sparse method (keep the `SparseMask(mask_source: module)` callback) and records the
pruning's provenance and calibration tokens (`init_tokens.calibration`) in the run record.

A `litprune fit` of more than one process with a pruning init never prunes on every rank (`pruned_init_for_fit`):
when Lightning launches the processes itself (one machine), the launching process prunes once into
`<run dir>/pruned` before any other process starts, and every process starts `FromPretrained` of it; when the
processes are started outside (srun, torchrun) and `<run dir>/pruned` does not exist yet, the run is refused with
the `litprune prune` command to run first (`litprune study --launcher slurm` writes it into each arm's job).

Memory: the parent is loaded whole in fp32 (8B parameters: 32 GB of host memory, then as much GPU memory with
`--device cuda`; an H100/H200 holds it). Depth pruning and the sparse methods work on that one copy; width pruning
builds the smaller model beside it. Sequential layer-by-layer offloading, for a parent that does not fit on one
GPU, is not implemented: prune such a parent with `--device cpu` (slower, host memory only).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

DEVICES_HELP = "'auto' (the first CUDA device when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N'"


def prune_main(argv: list[str]) -> None:
    """`litprune prune`: parse the command line and run `prune`."""
    parser = argparse.ArgumentParser(
        prog="litprune prune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every other argument (--config files, dotted overrides) is read as `litprune fit` reads it.",
        allow_abbrev=False,
    )
    parser.add_argument("--out", required=True, help="directory to write the pruned model to (must not exist)")
    parser.add_argument("--device", default="auto", help=f"where to prune: {DEVICES_HELP}")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    options, fit_args = parser.parse_known_args(argv)
    if not any(arg == "--config" or arg.startswith("--config=") for arg in fit_args):
        parser.error("give the run's config: --config <fit config>.yaml (a config with a pruning init and data)")
    prune(fit_args, options.out, device=options.device, overwrite=options.overwrite, command=["prune", *argv])


def prune(
    fit_args: list[str],
    out: str | Path,
    device: str = "auto",
    overwrite: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Prune the parent of a run config's pruning init once and write the pruned model to `out`.

    Args:
        fit_args: `litprune fit` arguments of the run config (`--config` files, dotted overrides).
        out: directory to write (atomically); it must not exist unless `overwrite`.
        device: where to prune: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        overwrite: replace an existing `out`.
        command: the litprune command line, for the record (default: this function's arguments).

    Returns:
        The pruning record written to `out/pruning.json`.

    Raises:
        FileExistsError: `out` exists and `overwrite` is False (checked before anything is loaded).
        ValueError: the config's init does not prune a parent; a bad device; any check of the init or the data.
    """
    from litprune.cli.run_sections import read_run_sections
    from litprune.eval.borrow import resolve_device
    from litprune.inits.parent import read_parent_config, run_tokenizer
    from litprune.inits.pruned import check_output, write_pruned
    from litprune.models.fingerprint import weights_fingerprint

    check_output(out, overwrite)
    resolved = resolve_device(device)
    sections = read_run_sections(fit_args)
    init = getattr(sections.model, "init_strategy", None)
    if not getattr(init, "prunes_parent", False):
        raise ValueError(
            f"model.init_args.init is {type(init).__name__}, which prunes no parent; `litprune prune` runs a "
            "pruning init (litprune.inits.StructuredPrune or litprune.inits.SparsePrune). Give the config of the "
            "pruned run (e.g. configs/experiment/tiny_sparse_wanda_2of4.yaml)."
        )
    data = sections.data
    parent_config = read_parent_config(init.parent)
    print(f"litprune prune: pruning {init.parent} with {type(init).__name__} on {resolved}", file=sys.stderr)
    started = time.perf_counter()
    result = init.build(None, data, device=resolved)
    seconds = time.perf_counter() - started
    tokenizer = run_tokenizer(data)
    if tokenizer is not None:
        from litprune.modules.causal_lm import align_token_ids

        align_token_ids(result.model, tokenizer)  # as the run would; FromPretrained then finds nothing to change
    job = {
        "command": shlex.join(["litprune", *(command or ["prune", *fit_args, "--out", str(out)])]),
        "device": str(resolved),
        "seconds": round(seconds, 3),
    }
    record = write_pruned(
        result,
        out,
        tokenizer,
        parent_parameters=_parameter_counts(parent_config),
        parent_fingerprint=weights_fingerprint(init.parent, parent_config),
        init_config=(sections.config.get("model") or {}).get("init_args", {}).get("init"),
        data_record=data.record() if getattr(data, "store_path", None) is not None else None,
        job=job,
        overwrite=overwrite,
    )
    print(_report(record, out))
    return record


def pruned_init_for_fit(
    init: Any,
    world_size: int,
    resuming: bool,
    fit_args: list[str] | None,
    run_dir: str | Path,
    launches_processes: bool,
) -> Any | None:
    """The init a fit of several processes starts from instead of a pruning init, so that no rank prunes on its own.

    A resumed fit (weights from the checkpoint) and a fit of one process (it prunes in the run, as before) keep
    their init: None is returned. Otherwise the pruned model `<run_dir>/pruned` is used: pruned here first when
    this process launches the others (`launches_processes`) and it does not exist yet.

    Args:
        init: the run's init strategy (`CausalLM.init_strategy`).
        world_size: the run's processes (nodes x devices).
        resuming: the fit resumes from a checkpoint.
        fit_args: the `litprune fit` arguments (to prune with, and to spell out the `litprune prune` command).
        run_dir: the run directory.
        launches_processes: this process starts the run's other processes (Lightning's launcher on one machine),
            so pruning here happens once, before they start.

    Returns:
        `FromPretrained(<run_dir>/pruned)`, or None when the init stays.

    Raises:
        ValueError: the processes are started outside and the pruned model does not exist yet (the message gives
            the `litprune prune` command and the `FromPretrained` init), or `<run_dir>/pruned` holds a pruning of
            another parent or method.
    """
    if resuming or world_size <= 1 or not getattr(init, "prunes_parent", False):
        return None
    from litprune.cli.run_sections import command_for
    from litprune.inits.pretrained import FromPretrained
    from litprune.inits.pruned import read_pruning_record

    out = Path(run_dir) / "pruned"
    if read_pruning_record(out) is None:
        if not launches_processes or fit_args is None:
            raise ValueError(
                f"model.init_args.init is {type(init).__name__}, which loads the parent and prunes it inside the run, "
                f"but this run's {world_size} processes were started outside litprune (srun, torchrun): each would "
                "load the parent and calibrate on its own. Prune once, in one process (on a GPU when there is "
                f"one):\n  {command_for('prune', fit_args, '--out', str(out))}\nand rerun this command (it then starts "
                f"from {out}), or start the run from the pruned model in the config:\n"
                f"{retrain_yaml(str(out), _is_sparse(init))}"
            )
        print(f"litprune: pruning once, before the {world_size} processes start, into {out}", file=sys.stderr)
        prune(fit_args, out, command=["prune", *fit_args, "--out", str(out)])
    _check_same_pruning(init, read_pruning_record(out) or {}, out)
    return FromPretrained(path=str(out))


def _check_same_pruning(init: Any, record: dict[str, Any], out: Path) -> None:
    """Refuse a pruned model of another parent, method or ratio than the run's init asks for."""
    # Records written before per-layer ratios existed pruned with uniform ratios.
    stored = {"layer_ratios": "uniform", "owl": None, **((record.get("init") or {}).get("init_args") or {})}
    differ = [
        f"{key}: {stored[key]!r} there, {getattr(init, key)!r} in this run"
        for key in ("parent", "method", "ratio", "pattern", "layer_ratios", "owl")
        if key in stored and hasattr(init, key) and str(stored[key]) != str(getattr(init, key))
    ]
    if differ:
        raise ValueError(
            f"{out} holds a pruned model made with other settings ({'; '.join(differ)}). Delete it (the run prunes "
            "again) or point the run at another directory."
        )


def retrain_yaml(path: str, sparse: bool) -> str:
    """The config lines that start a run from the pruned model at `path` (and keep its masks when `sparse`)."""
    text = (
        "  model:\n    init_args:\n      init:\n        class_path: litprune.inits.FromPretrained\n"
        f"        init_args: {{path: {path}}}"
    )
    if sparse:
        text += (
            "\n  and keep the SparseMask callback that keeps the masks (mask_source: module):\n  trainer:\n"
            "    callbacks:\n      - class_path: litprune.callbacks.sparse_mask.SparseMask\n"
            "        init_args: {mask_source: module}"
        )
    return text


def _is_sparse(init: Any) -> bool:
    from litprune.inits.sparse import SparsePrune

    return isinstance(init, SparsePrune)


def _parameter_counts(config: Any) -> dict[str, int]:
    """Parameter counts of the model `config` describes, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from litprune.models.params import count_parameters

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return count_parameters(skeleton).as_dict()


def _report(record: dict[str, Any], out: str | Path) -> str:
    summary = record["summary"]
    parent, pruned = summary["parameters_parent"], summary["parameters_pruned"]
    what = " ".join(str(x) for x in (summary.get("method"), summary.get("pattern")) if x)
    achieved = summary.get("achieved_ratio")
    lines = [
        f"litprune prune: wrote {out}",
        f"  {summary.get('strategy')} {what}: achieved ratio {achieved:.4f} of {summary.get('achieved_ratio_of')}"
        if isinstance(achieved, float)
        else f"  {summary.get('strategy')} {what}",
        f"  parameters: {parent['total']:,} -> {pruned['total']:,} ({parent['non_embedding']:,} -> "
        f"{pruned['non_embedding']:,} non-embedding)"
        + (f", {record['parameters']['nonzero']:,} non-zero" if "nonzero" in record["parameters"] else ""),
    ]
    calibration = record.get("calibration") or {}
    tokens = (record.get("tokens") or {}).get("calibration")
    if tokens:
        lines.append(
            f"  calibration: {tokens:,} tokens, {calibration.get('nsamples')} windows of {calibration.get('seqlen')} "
            f"from slice {calibration.get('slice')!r} (split {calibration.get('split')!r}, tokens "
            f"[{calibration.get('start')}, {calibration.get('end')})), seed {calibration.get('seed')}"
        )
    lines.append(f"  {record['job']['seconds']:.1f} s on {record['job']['device']}")
    lines.append("Start the retraining run from it (on every rank) with:")
    lines.append(retrain_yaml(str(out), bool(record.get("strategy") == "sparse_prune")))
    return "\n".join(lines)
