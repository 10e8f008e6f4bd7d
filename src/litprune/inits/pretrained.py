"""`FromPretrained`: any Hugging Face checkpoint directory or litprune export as the initial model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig

from litprune.inits.base import InitResult, InitStrategy
from litprune.inits.parent import check_run_data
from litprune.inits.pruned import init_record_of, read_pruning_record
from litprune.models.loading import load_causal_lm, load_model_config
from litprune.models.sparse_checkpoint import MASKS_FILE, RECORD_FILE, check_zeros, load_masks


class FromPretrained(InitStrategy):
    """Load a Hugging Face causal LM checkpoint directory (or a litprune export) as the initial model.

    Nothing is downloaded unless `path` is a hub name and the hub is reachable; remote code is never run
    unless `trust_remote_code` is set. An offline or unreachable hub, a gated repository without a token and a
    missing repository each stop the run with one message that says what to do.

    Before the weights are read, the run's data is checked against the checkpoint, as for a pruned parent
    (`litprune.inits.parent.check_run_data`): the run's tokenizer must be the checkpoint's (its size equal to the
    checkpoint's `vocab_size`, unless the checkpoint ships that very tokenizer with a padded embedding; the same
    tokenizer where the checkpoint records one), and the training windows must fit its positions.

    A sparse checkpoint (written by `litprune.models.sparse_checkpoint.save_sparse`, e.g. the export of a sparse
    run) comes back with its keep-masks (`InitResult.masks`, after checking that every masked-out weight is 0)
    and its `sparsity.json` in the record (`sparsity`), so a run with a `SparseMask(mask_source="module")`
    callback keeps the same pattern.

    A pruned model written by `litprune prune` (a directory with `pruning.json`, `litprune.inits.pruned`) is how a
    run of several processes starts from a pruned parent: every rank loads it, and the run's record is the one an
    in-fit pruning would have left: the init record is the pruning's (strategy, parent, method, calibration
    provenance, plus `pruned_model`, where it was loaded from) and the calibration tokens enter the token ledger
    (`init_tokens.calibration`). The masks of a sparse method come back as above:

    ```yaml
    model:
      init_args:
        init:
          class_path: litprune.inits.FromPretrained
          init_args: {path: runs/tiny_sparse_wanda_2of4/pruned}   # litprune prune ... --out <this path>
    trainer:
      callbacks:   # sparse methods: keep the masks while retraining
        - class_path: litprune.callbacks.sparse_mask.SparseMask
          init_args: {mask_source: module}
    ```

    Args:
        path: a local directory written by `save_pretrained` (litprune exports one per run, under
            `<run dir>/export`), or a hub model id.
        trust_remote_code: allow model code shipped with the checkpoint (off by default).

    Raises:
        FileNotFoundError: (build) `path` looks local but holds no `config.json`.
        HubAccessError: (build) a hub id the hub cannot serve (offline, unreachable, gated, missing).
        ValueError: (build) not a Llama-layout model; the run's tokenizer is not the checkpoint's; windows longer
            than its positions; a masked-out weight that is not 0; a damaged `pruning.json`.
    """

    def __init__(self, path: str, trust_remote_code: bool = False) -> None:
        self.path = str(path)
        self.trust_remote_code = bool(trust_remote_code)

    @property
    def needs_architecture(self) -> bool:
        return False

    def build(self, config: LlamaConfig | None, data: Any = None) -> InitResult:
        config = load_model_config(self.path, trust_remote_code=self.trust_remote_code, what="checkpoint")
        check_run_data(self.path, config, data, role="checkpoint")
        model = load_causal_lm(self.path, trust_remote_code=self.trust_remote_code, what="checkpoint")
        record: dict[str, Any] = {"strategy": "from_pretrained", "path": self.path}
        local = Path(self.path).expanduser()
        masks: dict[str, torch.Tensor] = {}
        if (local / MASKS_FILE).is_file():
            masks = load_masks(local)
            check_zeros(model, masks, f"FromPretrained({self.path!r})")
            record_file = local / RECORD_FILE
            record["sparsity"] = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
        tokens: dict[str, int] = {}
        pruning = read_pruning_record(local) if local.is_dir() else None
        if pruning is not None:
            record = init_record_of(pruning, self.path)
            tokens = {key: int(value) for key, value in (pruning.get("tokens") or {}).items()}
        return InitResult(model=model, record=record, masks=masks, tokens=tokens)
