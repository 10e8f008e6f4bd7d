"""`HFExport`: at the end of fit, write the trained model as an ordinary Hugging Face checkpoint.

`<run dir>/export/` then holds `config.json`, `model.safetensors`, the tokenizer files and `litprune.json`
(the run record: arm, init provenance, exact tokens seen, parameter counts, data provenance). Any HF tool loads
it with `from_pretrained`; litprune uses it as a parent (`FromPretrained(path=...)`) and for evaluation.
The directory is written beside the final location and renamed into place, so it is complete or absent.
The exported `config.json` says `use_cache: true` (generation uses the KV cache), although training runs without it.

A sparse run (one whose masks a `SparseMask` callback keeps, e.g. a `SparsePrune` init) is exported in the layout
of `litprune.models.sparse_checkpoint`: the pruned weights are zeros in place (plain `from_pretrained` still loads
it), `sparsity_masks.safetensors` holds the keep-masks keyed by the Hugging Face parameter names and
`sparsity.json` the pruning record with the measured sparsity. `FromPretrained` of such an export hands the masks
back, so a further run keeps them too.

Under FSDP2 (`ModelParallelStrategy`) every rank takes part in gathering the full weights and the full masks onto
rank 0, which rebuilds an ordinary (unsharded) model from them and writes the same files as an unsharded run: the
masked weights are exactly 0, checked before writing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from torch import Tensor

from litprune.inits.masks import module_masks
from litprune.models.sharding import unsharded_copy
from litprune.utils.atomic import atomic_dir

# Keys of a sparse init's record (`SparsePrune`) that describe the masks; copied into `sparsity.json`.
_SPARSE_RECORD_KEYS = ("method", "pattern", "ratio", "targets", "num_targets", "method_kwargs", "calibration")


class HFExport(Callback):
    """Export model, tokenizer and run record with `save_pretrained` (safetensors) when fit ends.

    When the run has sparsity masks, the export is sparse (see the module docstring). The masks come from the
    `SparseMask` callbacks of the trainer (their final `masks`), or, without such a callback, from the
    LightningModule's `pruning_masks`. A module that carries `pruning_masks` (a sparse init) in a run without a
    `SparseMask` callback is refused at fit start: training would revive the pruned weights. Add
    `--config callbacks/sparse_mask_from_init.yaml`, or set `sparse: false` to train and export densely.

    Args:
        dirname: sub-directory of the run directory (the Trainer's default_root_dir) to write.
        sparse: write the sparse layout when the run has masks (default). False exports a dense checkpoint and
            allows a sparse init to be trained densely.
    """

    def __init__(self, dirname: str = "export", sparse: bool = True) -> None:
        if not dirname or Path(dirname).is_absolute() or ".." in Path(dirname).parts:
            raise ValueError(f"HFExport dirname={dirname!r} must be a relative sub-directory name such as 'export'.")
        if not isinstance(sparse, bool):
            raise ValueError(f"HFExport sparse={sparse!r} must be true or false.")
        self.dirname = dirname
        self.sparse = sparse
        self.path: Path | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        initial = module_masks(pl_module)
        if not self.sparse or not initial or _mask_callbacks(trainer):
            return
        raise ValueError(
            f"The model starts with {len(initial)} sparsity masks (a sparse init such as SparsePrune "
            "or a sparse export), but no SparseMask callback keeps them, so training would make the pruned weights "
            "non-zero. Add `--config callbacks/sparse_mask_from_init.yaml` (SparseMask with mask_source: module), "
            "or set `--export.sparse=false` to train and export densely."
        )

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        run_dir = Path(trainer.default_root_dir)  # the run directory, whichever loggers are attached
        # Both are collectives under sharded strategies: every rank gathers, rank 0 writes.
        state_dict = full_state_dict(trainer)
        masks = self.run_masks(trainer, pl_module) if self.sparse else {}
        if not trainer.is_global_zero:
            return
        record = {"run": pl_module.run_record() if hasattr(pl_module, "run_record") else {}}
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "record"):
            record["data"] = datamodule.record()
        tokenizer = getattr(datamodule, "tokenizer", None)
        sparse_record = None
        if masks:
            sparse_record = sparsity_record(masks, getattr(pl_module, "init_record", None) or {}, trainer)
        model = pl_module.model
        if state_dict is not None:  # sharded: an ordinary model holding the gathered tensors
            model, state_dict = unsharded_copy(model, state_dict), None
        self.path = export_model(model, tokenizer, record, run_dir / self.dirname, masks, sparse_record, state_dict)

    @staticmethod
    def run_masks(trainer: Any, pl_module: Any) -> dict[str, Tensor]:
        """The run's keep-masks keyed by the parameter names of `pl_module.model` (Hugging Face names).

        The `SparseMask` callbacks' masks (keyed by `pl_module` names, `model.` + the HF name) win; without such
        a callback, the module's `pruning_masks`. Masks of parameters outside `pl_module.model` are left out.
        Under FSDP2 the callbacks' masks are gathered whole: every rank must call it.
        """
        masks: dict[str, Tensor] = {}
        for callback in _mask_callbacks(trainer):
            masks.update(callback.full_masks())
        if not masks:
            masks = dict(module_masks(pl_module) or {})
        return {name.removeprefix("model."): mask for name, mask in masks.items() if name.startswith("model.")}


def sparsity_record(masks: dict[str, Tensor], init_record: dict[str, Any], trainer: Any = None) -> dict[str, Any]:
    """The `sparsity.json` record: the sparse init's description, the mask callbacks' settings, measured sparsity."""
    record: dict[str, Any] = {key: init_record[key] for key in _SPARSE_RECORD_KEYS if key in init_record}
    for key in ("strategy", "parent", "control"):
        if key in init_record:
            record[key] = init_record[key]
    if trainer is not None:
        record["mask_callbacks"] = [callback.settings() for callback in _mask_callbacks(trainer)]
    per_matrix = {name: 1.0 - int(mask.count_nonzero()) / mask.numel() for name, mask in masks.items()}
    pruned = sum(mask.numel() - int(mask.count_nonzero()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    record["sparsity"] = {"overall": pruned / total if total else 0.0, "per_matrix": per_matrix}
    return json.loads(json.dumps(record, default=str))  # plain JSON types, as save_sparse requires


def export_model(
    model: Any,
    tokenizer: Any,
    record: dict[str, Any],
    out_dir: Path,
    masks: dict[str, Tensor] | None = None,
    sparse_record: dict[str, Any] | None = None,
    state_dict: dict[str, Tensor] | None = None,
) -> Path:
    """Atomically write `model` (+ tokenizer and `litprune.json`) to `out_dir`, replacing an older export.

    With `masks` (keyed by the model's parameter names), the checkpoint is written by
    `litprune.models.sparse_checkpoint.save_sparse`, which first checks that every masked-out weight is exactly 0,
    and also holds `sparsity_masks.safetensors` and `sparsity.json` (`sparse_record`). `state_dict` (full,
    gathered from a sharded model) replaces the model's own tensors when given.

    Raises:
        ValueError: a masked-out weight is not 0, or a mask names a parameter the model lacks.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, replace=True) as tmp, _inference_config(model):
        if masks:
            from litprune.models.sparse_checkpoint import save_sparse

            # save_sparse replaces the (empty) temporary directory with the complete sparse checkpoint.
            save_sparse(model, masks, sparse_record or {}, tmp, tokenizer=tokenizer, overwrite=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        (tmp / "litprune.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return out_dir


@contextmanager
def _inference_config(model: Any) -> Iterator[None]:
    """Save `model` with `use_cache: true` (training turns the KV cache off in memory); restore the flag after."""
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if config is not None:
        config.use_cache = True
    try:
        yield
    finally:
        if config is not None:
            config.use_cache = previous


def _mask_callbacks(trainer: Any) -> list[Any]:
    from litprune.callbacks.sparse_mask import SparseMask

    return [callback for callback in getattr(trainer, "callbacks", []) if isinstance(callback, SparseMask)]


def full_state_dict(trainer: Any) -> dict[str, Tensor] | None:
    """The model's full state dict gathered onto rank 0 (CPU) when the strategy shards it; None otherwise.

    Under FSDP every rank holds a shard, so `save_pretrained` on the module would write shards; this gathers
    the whole tensors (every rank must call it) with keys of the Hugging Face model (`pl_module.model`); ranks
    other than 0 get an empty dict.
    """
    name = type(getattr(trainer, "strategy", None)).__name__
    if "FSDP" not in name and "ModelParallel" not in name:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    root = trainer.strategy.model  # the wrapped LightningModule: its keys start with "model."
    gathered = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {key.removeprefix("model."): value for key, value in gathered.items() if key.startswith("model.")}
