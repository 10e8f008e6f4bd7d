"""The pruned model `litprune prune` writes once and every rank of the retraining run loads with `FromPretrained`.

A pruned init (`StructuredPrune`, `SparsePrune`) prunes inside `litprune fit`, which is right for one process. A run
of several processes would load the parent and calibrate on every rank, so it starts instead from a pruned model
written beforehand, in one process, by `litprune prune --config <the run's config> --out DIR`:

    DIR/
      config.json, model.safetensors,   an ordinary Hugging Face checkpoint (`save_pretrained`, safetensors), loads
      generation_config.json            with plain `AutoModelForCausalLM.from_pretrained`
      tokenizer.json, ...               the run's tokenizer (`save_pretrained`)
      sparsity_masks.safetensors        sparse methods only: the keep-masks, bit-packed
      sparsity.json                     (`litprune.models.sparse_checkpoint`)
      pruning.json                      the pruning record (`PRUNING_RECORD`, below)
      litprune.json                     a run record in the shape of an export's, so `litprune eval`, the study and
                                        a further prune read DIR like any export

`pruning.json` is the init's own record (strategy, parent path and run record, method, ratio, pattern or target
shape, calibration provenance: source, slice, split, token range, windows, seed, tokens read; achieved ratio or
sparsity) plus `tokens` (what the pruning consumed: `{"calibration": n}`), `parameters` (parent and pruned counts),
`summary` (the one-line facts), the parent's weight fingerprint, the init's config (`init`) and how the job ran
(`job`: command, device, seconds). It marks DIR as freshly pruned: `FromPretrained` of DIR hands the run the same
init record and calibration tokens an in-fit pruning would have (the run's `init_tokens.calibration` for the token
ledger) and, for a sparse method, the masks, which a `SparseMask(mask_source="module")` callback keeps. The export
of a retrained run holds no `pruning.json`, so its calibration tokens are never counted twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from litprune.inits.base import InitResult
from litprune.models.params import count_parameters
from litprune.utils.atomic import atomic_dir

PRUNING_RECORD = "pruning.json"
"""File name of the pruning record in a directory written by `litprune prune`."""

RUN_RECORD = "litprune.json"
"""File name of the run record litprune writes beside every model it saves (exports and pruned models)."""

PRUNING_RECORD_FORMAT = 1


def read_pruning_record(path: str | Path) -> dict[str, Any] | None:
    """The pruning record of a directory written by `litprune prune`, or None for any other checkpoint.

    Raises:
        ValueError: `pruning.json` exists but is not valid JSON (named, with what to do).
    """
    file = Path(path).expanduser() / PRUNING_RECORD
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(
            f"{str(file)!r} is not valid JSON ({err}); the pruned model's record is damaged. Prune again with "
            "`litprune prune ... --overwrite`."
        ) from err
    if not isinstance(record, dict):
        raise ValueError(f"{str(file)!r} holds {type(record).__name__}, not a pruning record (a JSON object).")
    return record


def init_record_of(pruning: dict[str, Any], path: str) -> dict[str, Any]:
    """The run's init record for a model loaded from a pruned directory: the pruning's own init record (so a
    run from `FromPretrained` reads like one that pruned in fit), plus where it was loaded from."""
    record = {key: value for key, value in pruning.items() if key not in ("format", "tokens", "job")}
    record["pruned_model"] = {"path": path, "loaded_by": "FromPretrained", "job": pruning.get("job")}
    return record


def pruning_summary(init_record: dict[str, Any], parent: dict[str, int], pruned: dict[str, int]) -> dict[str, Any]:
    """The facts a reader wants first: method, requested and achieved ratio (and what it is a ratio of), sizes.

    Args:
        init_record: `InitResult.record` of `StructuredPrune` or `SparsePrune`.
        parent: parameter counts of the parent (`ParameterCount.as_dict()`).
        pruned: parameter counts of the pruned model.
    """
    summary: dict[str, Any] = {"strategy": init_record.get("strategy"), "method": init_record.get("method")}
    if init_record.get("strategy") == "sparse_prune":
        sparsity = init_record.get("sparsity") or {}
        summary.update(
            ratio=init_record.get("ratio"),
            pattern=init_record.get("pattern"),
            achieved_ratio=sparsity.get("overall"),
            achieved_ratio_of="target weights (pruned entries / entries of the masked matrices)",
            control=(init_record.get("control") or {}).get("name"),
        )
    else:
        convention = init_record.get("convention", "non_embedding")
        summary.update(
            ratio=init_record.get("ratio_requested"),
            target=init_record.get("target_requested"),
            convention=convention,
            achieved_ratio=(init_record.get("achieved_ratio") or {}).get(convention),
            achieved_ratio_of=f"{convention.replace('_', '-')} parameters removed",
            target_shape=init_record.get("target_shape"),
        )
    summary["parameters_parent"] = parent
    summary["parameters_pruned"] = pruned
    return summary


def write_pruned(
    result: InitResult,
    out: str | Path,
    tokenizer: Any,
    *,
    parent_parameters: dict[str, int],
    parent_fingerprint: str | None,
    init_config: dict[str, Any] | None = None,
    data_record: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a pruned init's result to `out` atomically (layout in the module docstring); return the pruning record.

    Args:
        result: what `StructuredPrune.build` or `SparsePrune.build` returned (masks keyed by HF parameter names).
        out: the directory to write; it appears complete or not at all.
        tokenizer: the run's tokenizer, saved beside the weights.
        parent_parameters: parameter counts of the parent before pruning.
        parent_fingerprint: sha256 of the parent's weight files (None for a hub parent, named by its id).
        init_config: the init as the config gave it (`class_path`, `init_args`).
        data_record: the data module's provenance record, for `litprune.json`.
        job: how the pruning ran (command, device, seconds), recorded as given.
        overwrite: replace an existing `out`.

    Raises:
        FileExistsError: `out` exists and `overwrite` is False.
        ValueError: a masked-out weight is not exactly 0 (`save_sparse` checks it).
    """
    from litprune.callbacks.export import sparsity_record
    from litprune.models.sparse_checkpoint import save_sparse

    out = Path(out).expanduser()
    check_output(out, overwrite)
    model, init_record = result.model, dict(result.record)
    init_record["parent"] = {**(init_record.get("parent") or {}), "fingerprint": parent_fingerprint}
    parameters = {"parent": parent_parameters, "pruned": count_parameters(model).as_dict()}
    if result.masks:
        kept = sum(int(mask.count_nonzero()) for mask in result.masks.values())
        masked = sum(mask.numel() for mask in result.masks.values())
        parameters["nonzero"] = parameters["pruned"]["total"] - (masked - kept)
    record = {
        "format": PRUNING_RECORD_FORMAT,
        "summary": pruning_summary(init_record, parent_parameters, parameters["pruned"]),
        **init_record,
        "tokens": dict(result.tokens),
        "parameters": parameters,
        "init": init_config,
        "job": {**(job or {}), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    record = json.loads(json.dumps(record, default=str))  # plain JSON types, checked before anything is written
    run_record = {
        "run": {
            "arm": None,
            "init": init_record_of(record, str(out)),
            "init_tokens": dict(result.tokens),
            "max_tokens": 0,
            "tokens_seen": 0,
            "parameters": parameters["pruned"],
        },
        "data": data_record,
    }
    with atomic_dir(out, replace=True) as tmp:
        if result.masks:
            masks = {name: mask.detach() for name, mask in result.masks.items()}
            # save_sparse checks the zeros, then replaces the (empty) temporary directory with the sparse checkpoint.
            save_sparse(model, masks, sparsity_record(masks, init_record), tmp, tokenizer=tokenizer, overwrite=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        (tmp / PRUNING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (tmp / RUN_RECORD).write_text(json.dumps(run_record, indent=2, default=str) + "\n", encoding="utf-8")
    return record


def check_output(out: str | Path, overwrite: bool) -> None:
    """Refuse an existing output directory unless `overwrite` (checked before any work, and again when writing).

    Raises:
        FileExistsError: `out` exists and `overwrite` is False.
    """
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        what = "a pruned model" if (out / PRUNING_RECORD).is_file() else "something else"
        raise FileExistsError(
            f"--out {str(out)!r} already exists (it holds {what}). Pass --overwrite to replace it, or choose another "
            "--out."
        )
