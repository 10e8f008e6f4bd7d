"""The checkpoint state of `SparseMask`: its format, its versions, and reading older ones.

It lives below the callback so that a module reloaded from a checkpoint (`CausalLM.load_from_checkpoint`) reads the
same format without importing the callback.

A state is a plain dict that `torch.load(weights_only=True)` reads (tensors, lists, numbers, strings):

    version          STATE_VERSION
    settings         the settings fingerprint (`SparseMask.settings()`), compared on resume
    masks            {parameter name: {"shape": [out, in, ...], "packed": uint8 tensor}}, bit-packed keep-masks
                     (`litprune.models.mask_packing`, 1 bit per weight)
    last_event_step  optimizer step of the latest pruning event, -1 before the first
    current_ratio    the schedule's ratio after that event (optional: the schedule gives it again)
    input_norms      Wanda statistics gathered since that event (only with score="wanda" and a schedule)
    input_norms_by_rank  under DDP/FSDP2, every rank's own statistics (`sum_sq` [world, features], `num_rows`
                     [world]), since each rank gathers its own until the next event all-reduces them (optional)

Masks are always whole tensors, also under FSDP2, where every rank holds only its rows: the callback gathers them
before saving and each rank cuts its rows out again on resume, so the number of ranks may change between the two.

Version 1 (the first release) named the ratios `sparsity`, `initial_sparsity` (settings) and `current_sparsity`
(state). `upgrade_state` brings any supported version to the current one and gives the optional keys their
defaults, so a later litprune can still resume a checkpoint this one wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from litprune.models.mask_packing import pack_mask, unpack_mask

STATE_VERSION = 2
"""Version of the state this litprune writes; `upgrade_state` reads every version from 1 up to it."""

_RENAMED_IN_V2 = {"sparsity": "ratio", "initial_sparsity": "initial_ratio", "current_sparsity": "current_ratio"}
_STATE_DEFAULTS: dict[str, Any] = {"settings": {}, "last_event_step": -1, "current_ratio": None, "input_norms": None}
ABSENT = "<absent>"
"""How a setting one side does not have is shown in a difference."""


def state_version(state: Mapping[str, Any]) -> int:
    """The version a saved state declares (1 when it declares none, as a hand-made one may).

    Raises:
        ValueError: a version this litprune cannot read (newer, or not a version number).
    """
    version = state.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= STATE_VERSION:
        raise ValueError(
            f"SparseMask state version {version!r} is not supported (this litprune reads versions 1 to "
            f"{STATE_VERSION}); resume with the litprune version that wrote the checkpoint."
        )
    return version


def upgrade_settings(settings: Mapping[str, Any], version: int) -> dict[str, Any]:
    """A settings fingerprint of state `version` with its names translated to the current ones."""
    renames = _RENAMED_IN_V2 if version < 2 else {}
    return {renames.get(key, key): value for key, value in settings.items()}


def upgrade_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A saved state in the current format, whichever supported version wrote it.

    Names of older versions are translated (in the state and in its settings fingerprint), and the optional keys
    an older or hand-made state lacks get their defaults: no settings (each setting then counts as its default
    when compared), no event yet (`last_event_step` -1), `current_ratio` None (the reader takes the schedule's
    ratio at `last_event_step`), no Wanda statistics.

    Raises:
        ValueError: a version this litprune cannot read, or a state without masks.
    """
    version = state_version(state)
    if not isinstance(state.get("masks"), Mapping):
        raise ValueError(
            f"The SparseMask state holds no masks (keys: {sorted(state)}); the checkpoint is corrupt or was not "
            "written by SparseMask. Start a new run from the weights only."
        )
    renames = _RENAMED_IN_V2 if version < 2 else {}
    upgraded = {**_STATE_DEFAULTS, **{renames.get(key, key): value for key, value in state.items()}}
    upgraded["settings"] = upgrade_settings(upgraded["settings"] or {}, version)
    upgraded["version"] = STATE_VERSION
    return upgraded


def pack_masks(masks: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    """The `masks` entry of a state: every mask bit-packed on its device, then moved to the CPU."""
    return {name: {"shape": list(mask.shape), "packed": pack_mask(mask).cpu()} for name, mask in masks.items()}


def decode_masks(saved: Mapping[str, Any]) -> dict[str, Tensor]:
    """Every keep-mask of a state's `masks` entry, on the CPU (the layout is the same in every version)."""
    return {name: unpack_mask(entry["packed"], [int(s) for s in entry["shape"]]) for name, entry in saved.items()}


def is_mask_state(state: Any) -> bool:
    """Whether a callback's checkpoint state holds keep-masks in this format (a `SparseMask` state)."""
    saved = state.get("masks") if isinstance(state, Mapping) else None
    return isinstance(saved, Mapping) and all(
        isinstance(entry, Mapping) and {"shape", "packed"} <= set(entry) for entry in saved.values()
    )


def unpack_masks(saved: Mapping[str, Any], params: Mapping[str, Tensor], targets: str) -> dict[str, Tensor]:
    """The keep-masks of a state's `masks` entry, one per parameter of `params`, on that parameter's device.

    Args:
        saved: the state's `masks` entry.
        params: the targeted parameters of the model being resumed, by name.
        targets: the callback's `targets`, named in the error messages.

    Raises:
        ValueError: the state's masks cover other parameters than `params`, or a mask's shape differs from its
            parameter's (another model or other targets).
    """
    if set(saved) != set(params):
        extra = sorted(set(saved) - set(params))[:5]
        absent = sorted(set(params) - set(saved))[:5]
        raise ValueError(
            f"The checkpoint's masks do not cover the same parameters as targets={targets!r} on this model: only "
            f"in checkpoint {extra}, only in model {absent}. Resume with the same model and targets."
        )
    masks = {}
    for name, param in params.items():
        shape = [int(s) for s in saved[name]["shape"]]
        if shape != list(param.shape):
            raise ValueError(
                f"The checkpoint's mask for {name!r} has shape {shape}, but the parameter has {list(param.shape)}."
            )
        masks[name] = unpack_mask(saved[name]["packed"].to(param.device), shape)
    return masks


def describe_differences(saved: Mapping[str, Any], now: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """`key: checkpoint=X, now=Y` for every setting that differs, joined with "; " (empty when none does).

    A setting the checkpoint does not record (it was written before the setting existed) counts as its value in
    `defaults`, the value older versions implicitly used.
    """

    def then(key: str) -> Any:
        return saved[key] if key in saved else defaults.get(key, ABSENT)

    return "; ".join(
        f"{key}: checkpoint={then(key)!r}, now={now.get(key, ABSENT)!r}"
        for key in sorted(set(saved) | set(now))
        if then(key) != now.get(key, ABSENT)
    )


def own_input_norms(state: Mapping[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """The Wanda statistics (`ActivationNorms.load_state_dict` format) rank `rank` of `world_size` resumes with.

    Its own when the state holds every rank's for as many ranks as now run (`input_norms_by_rank`); otherwise rank 0
    takes the sum of all of them and the other ranks start from zero (the next pruning event all-reduces the
    statistics, so their sum is what counts). Without per-rank statistics (one process, older states) the saved
    `input_norms`.
    """
    saved = dict(state["input_norms"])
    by_rank = state.get("input_norms_by_rank")
    if not by_rank:
        return saved
    sum_sq, num_rows = by_rank["sum_sq"], [int(n) for n in by_rank["num_rows"]]
    if sum_sq.shape[0] == world_size:
        return {**saved, "sum_sq": sum_sq[rank].clone(), "num_rows": num_rows[rank]}
    if rank == 0:
        return {**saved, "sum_sq": sum_sq.sum(0), "num_rows": sum(num_rows)}
    return {**saved, "sum_sq": torch.zeros_like(sum_sq[0]), "num_rows": 0}
