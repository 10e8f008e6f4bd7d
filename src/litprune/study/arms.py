"""Expand a study into its arms: ordinary `litprune fit` configs written to disk, in dependency order.

Every arm is a plain LightningCLI fit config (`<out_dir>/configs/<arm id>.yaml`) whose run directory is
`<out_dir>/runs/<arm id>/`, so any arm can also be launched alone, for example on a cluster:

    litprune fit --config runs/study_tiny/configs/minitron_depth-0.5.P_M-R_N.N524288.yaml --ckpt_path last

Arms, in the paper's notation (one set per method x ratio x N):

| arm | init | trains on | tokens |
|---|---|---|---|
| `P_M` | random (the parent's preset) | `slices.parent` | M |
| `P_M-R_N` | the parent, pruned (`StructuredPrune` / `SparsePrune`) | `slices.retrain` | N |
| `S_N` | the pruned shape, random init (`ScratchTarget`; sparse: `SparsePrune(control=...)`) | `slices.retrain` | N |
| `S_M+N` | as `S_N`, but never a trained tensor (`long_control`) | the parent's and the retraining tokens | M + N |
| `S_N[control]` | sparse controls (`random_same_mask`, ...) | `slices.retrain` | N |

`S_N` and `P_M-R_N` of the same target share every setting but the init: same data config (so the same sample
order), same recipe, same batch shape. Both depth methods prune to the same shape, so their `S_N` and `S_M+N` arms
are shared (`depth-<ratio>`); sparse scratch arms keep the method's mask, so they belong to their method.

Repetitions: with `seeds: [...]` every arm, the parents included, runs once per seed (ids end in `.s<seed>`); with
`lr: [...]` every compared arm runs once per learning rate (ids end in `.lr<value>`), and the report keeps, per arm,
the value with the lowest validation loss.

Order: parents first (every other arm reads the parent's export), then the `P_M-R_N` and `S_N` pairs, then the
long `S_M+N` arms.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from litprune.study.spec import (
    CALIBRATION_WINDOWS,
    SCORER_KEYS,
    MethodSpec,
    ParentSpec,
    StudySpec,
    long_slice,
    tokens_per_step,
)
from litprune.utils.atomic import atomic_write_text

CAUSAL_LM = "litprune.modules.causal_lm.CausalLM"
DATA_MODULE = "litprune.data.datamodule.TokenDataModule"
SPARSE_MASK = "litprune.callbacks.sparse_mask.SparseMask"


@dataclass
class Arm:
    """One run of the study.

    Attributes:
        id: unique name, also the file name of its config and run directory (e.g. `minitron_depth-0.5.P_M-R_N.N524288`).
        label: the arm in the paper's notation: `P_M`, `P_M-R_N`, `S_N`, `S_M+N` or `S_N[<control>]`.
        group: the target it belongs to (`minitron_depth-0.5`, `depth-0.5`, `wanda-unstructured-0.5`; parents:
            their name).
        methods: the methods this arm serves (a shared depth scratch arm serves both depth methods).
        kind: "parent", "depth", "width" or "sparse".
        ratio: pruning ratio (None for a parent).
        parent: the parent's name.
        retrain_tokens: the N this arm belongs to (None for a parent).
        parent_tokens: M of its parent (None when unknown).
        train_tokens: tokens this arm's own run trains on.
        uses_parent_weights: whether the starting weights come from the parent (P_M-R_N; sparse controls keep
            its mask, `reinit` also its embeddings and norms).
        depends_on: ids of arms that must finish first.
        config: the fit config (what the YAML file holds).
        config_path: where the config is written.
        run_dir: the arm's run directory (`trainer.default_root_dir`).
        pattern: the sparse pattern (None for dense arms).
        seed: the study repetition the arm belongs to (`seeds`; None: the seeds as configured).
        lr: the swept peak learning rate it trains at (`lr`; None: `model.lr`).
    """

    id: str
    label: str
    group: str
    methods: list[str]
    kind: str
    ratio: float | None
    parent: str
    retrain_tokens: int | None
    parent_tokens: int | None
    train_tokens: int
    uses_parent_weights: bool
    depends_on: list[str]
    config: dict[str, Any]
    config_path: Path
    run_dir: Path
    pattern: str | None = None
    seed: int | None = None
    lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config_text(self) -> str:
        """The YAML written to `config_path` (hash-stable: keys keep their order)."""
        header = (
            f"# {self.label} of study arm {self.id}, written by `litprune study` (edit the study YAML, not this).\n"
            f"#   litprune fit --config {self.config_path} --ckpt_path last\n"
        )
        return header + yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False)

    @property
    def config_hash(self) -> str:
        """sha256 of the config's content: a completed arm is reused only while its config is unchanged."""
        return hashlib.sha256(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def is_parent(self) -> bool:
        return self.kind == "parent"


def expand_study(spec: StudySpec) -> list[Arm]:
    """All arms of a (checked) study, in dependency order, with their fit configs (nothing is written).

    With several `seeds`, every arm (parents included) is repeated per seed and its id ends in `.s<seed>`; with
    several `lr` values, every compared arm is repeated per value and its id ends in `.lr<value>`.
    """
    out = spec.out_path
    parents: list[Arm] = []
    pairs: dict[str, Arm] = {}
    longs: dict[str, Arm] = {}
    for seed in spec.seed_values:
        seeded = _seeded(spec, seed)
        suffix = f".s{seed}" if len(spec.seed_values) > 1 else ""
        parent_arm: dict[str, str] = {}
        parent_export: dict[str, str] = {}
        for parent in seeded.parents.values():
            if parent.trained:
                arm = _parent_arm(seeded, parent, out, suffix)
                arm.seed = seed
                parents.append(arm)
                parent_arm[parent.name], parent_export[parent.name] = arm.id, str(arm.run_dir / "export")
            else:
                parent_arm[parent.name], parent_export[parent.name] = parent.name, str(parent.path)
        for lr in spec.lr_values:
            tag = suffix + (f".lr{lr:g}" if len(spec.lr_values) > 1 else "")
            for method in seeded.methods:
                parent = seeded.parents[seeded.parent_of(method)]
                where = (parent_arm[parent.name], parent_export[parent.name])
                for ratio in method.ratios:
                    for n in seeded.retrain_tokens:
                        for arm in _method_arms(seeded, method, float(ratio), n, parent, where, out, tag, lr):
                            arm.seed = seed
                            target = longs if arm.label == "S_M+N" else pairs
                            if arm.id in target:
                                target[arm.id].methods.append(method.method)
                            else:
                                target[arm.id] = arm
    return parents + list(pairs.values()) + list(longs.values())


def _seeded(spec: StudySpec, seed: int | None) -> StudySpec:
    """The study as repetition `seed` runs it: every seed of the study replaced by `seed` (None: unchanged)."""
    if seed is None:
        return spec
    parents = {
        name: dataclasses.replace(parent, init={**parent.init, "seed": seed}) for name, parent in spec.parents.items()
    }
    # A method's own calibration seed is replaced too, so every repetition draws its own windows.
    methods = [
        dataclasses.replace(m, calibration={**m.calibration, "seed": seed}) if "seed" in m.calibration else m
        for m in spec.methods
    ]
    return dataclasses.replace(
        spec,
        parents=parents,
        methods=methods,
        seed_everything=seed,
        scratch_init={**spec.scratch_init, "seed": seed},
        data={**spec.data, "seed": seed},
        calibration={**spec.calibration, "seed": seed},
    )


def write_arm_configs(arms: list[Arm]) -> None:
    """Write every arm's fit config (atomically; an unchanged file is left as is)."""
    for arm in arms:
        text = arm.config_text
        if arm.config_path.is_file() and arm.config_path.read_text(encoding="utf-8") == text:
            continue
        atomic_write_text(arm.config_path, text)


# --------------------------------------------------------------------------------------------------- building
def _parent_arm(spec: StudySpec, parent: ParentSpec, out: Path, suffix: str) -> Arm:
    arm_id = parent.name + suffix
    init = {"class_path": "litprune.inits.RandomInit", "init_args": dict(parent.init)}
    model = {
        **spec.model,
        **parent.model,
        "arm": "P_M",
        "preset": parent.preset,
        "max_tokens": parent.tokens,
        "init": init,
    }
    if parent.overrides:
        model["overrides"] = dict(parent.overrides)
    data = _data(spec, train=spec.slices.parent, keep=[spec.slices.parent])
    config = _fit_config(spec, arm_id, out, model, data, parent.tokens, trainer_extra=parent.trainer)
    return Arm(
        id=arm_id,
        label="P_M",
        group=parent.name,
        methods=[],
        kind="parent",
        ratio=None,
        parent=arm_id,
        retrain_tokens=None,
        parent_tokens=parent.tokens,
        train_tokens=parent.tokens,
        uses_parent_weights=False,
        depends_on=[],
        config=config,
        config_path=out / "configs" / f"{arm_id}.yaml",
        run_dir=out / "runs" / arm_id,
    )


def _method_arms(spec, method: MethodSpec, ratio: float, n: int, parent: ParentSpec, where, out: Path, tag, lr):
    """The arms of one method x ratio x N (one repetition, one learning rate); `where` = (parent arm id, export)."""
    from litprune.study.spec import _parent_tokens

    parent_id, export = where
    m_tokens = _parent_tokens(parent)
    depends = [parent_id] if parent.trained else []
    kind = method.kind
    if kind == "sparse":
        pruned_group = scratch_group = f"{method.method}-{_pattern_tag(method.pattern)}-{ratio:g}"
    else:
        pruned_group, scratch_group = f"{method.method}-{ratio:g}", f"{kind}-{ratio:g}"
    common = {
        "kind": kind,
        "ratio": ratio,
        "parent": parent_id,
        "retrain_tokens": n,
        "parent_tokens": m_tokens,
        "depends_on": depends,
        "pattern": method.pattern if kind == "sparse" else None,
    }
    wanted = []
    if "P_M-R_N" in spec.arms:
        wanted.append(
            ("P_M-R_N", pruned_group, _pruned_init(spec, method, ratio, export), n, True, spec.slices.retrain)
        )
    if "S_N" in spec.arms:
        wanted.append(
            (
                "S_N",
                scratch_group,
                _scratch_init(spec, method, ratio, export, method.scratch),
                n,
                kind == "sparse" and method.scratch == "reinit",
                spec.slices.retrain,
            )
        )
    if kind == "sparse":
        for control in method.controls:
            wanted.append(
                (
                    f"S_N[{control}]",
                    scratch_group,
                    _scratch_init(spec, method, ratio, export, control),
                    n,
                    control == "reinit",
                    spec.slices.retrain,
                )
            )
    if "S_M+N" in spec.arms and m_tokens:
        name, _ = long_slice(spec)
        wanted.append(
            (
                "S_M+N",
                scratch_group,
                _scratch_init(spec, method, ratio, export, long_control(method)),
                m_tokens + n,
                False,
                name,
            )
        )
    for label, group, init, tokens, uses_parent, train_slice in wanted:
        arm_id = f"{group}.{_file_label(label)}.N{n}{tag}"
        model = {**spec.model, "arm": label, "preset": None, "max_tokens": tokens, "init": init}
        if lr is not None:
            model["lr"] = lr
        if label == "S_M+N":
            name, slice_spec = long_slice(spec)
            # Sparse scratch arms calibrate (to draw the method's mask) on the calibration slice, which must then
            # lie outside the joined slice (checked by the study).
            keep = [name, spec.slices.calibration] if kind == "sparse" else [name]
            data = _data(spec, train=name, keep=keep, extra_slices={name: slice_spec} if slice_spec else None)
        else:
            data = _data(spec, train=train_slice, keep=[spec.slices.retrain, spec.slices.calibration])
        callbacks = [_sparse_mask_callback()] if kind == "sparse" else []
        config = _fit_config(spec, arm_id, out, model, data, tokens, callbacks=callbacks)
        yield Arm(
            id=arm_id,
            label=label,
            group=group,
            methods=[method.method],
            train_tokens=tokens,
            uses_parent_weights=uses_parent,
            config=config,
            config_path=out / "configs" / f"{arm_id}.yaml",
            run_dir=out / "runs" / arm_id,
            lr=lr,
            **copy.deepcopy(common),
        )


def long_control(method: MethodSpec) -> str:
    """How a sparse method's `S_M+N` starts: its `scratch` control, unless that is the paper's `reinit`, which keeps
    the parent's trained embeddings and norm gains; `S_M+N` must not inherit trained tensors (it would then have
    seen the parent's M tokens on top of its own M + N), so it takes `random_same_mask` (the method's mask, every
    tensor drawn at random) instead."""
    return "random_same_mask" if method.scratch == "reinit" else method.scratch


def _pruned_init(spec: StudySpec, method: MethodSpec, ratio: float, export: str) -> dict[str, Any]:
    # The study's calibration windows, then the method's own (`methods[i].calibration`); its scorer keys are
    # StructuredPrune arguments, not window settings.
    own = method.calibration
    calibration = {
        "slice": spec.slices.calibration,
        **spec.calibration,
        **{key: own[key] for key in CALIBRATION_WINDOWS if key in own},
    }
    scorer = {key: own[key] for key in SCORER_KEYS if key in own}
    if method.kind == "sparse":
        return {
            "class_path": "litprune.inits.SparsePrune",
            "init_args": {
                "parent": export,
                "method": method.method,
                "ratio": ratio,
                "pattern": str(method.pattern),
                "calibration": calibration,
                "control": "none",
                "method_kwargs": dict(method.options),
            },
        }
    return {
        "class_path": "litprune.inits.StructuredPrune",
        "init_args": {
            "parent": export,
            "method": method.method,
            "ratio": ratio,
            "convention": method.convention,
            "calibration": calibration,
            **method.options,
            **scorer,
        },
    }


def _scratch_init(spec: StudySpec, method: MethodSpec, ratio: float, export: str, control: str) -> dict[str, Any]:
    seed = int(spec.scratch_init.get("seed", 0))
    if method.kind == "sparse":
        # The scratch arm keeps the method's mask, so it calibrates exactly as the pruned arm does.
        init = _pruned_init(spec, method, ratio, export)
        init["init_args"].update({"control": control, "control_seed": seed})
        return init
    return {
        "class_path": "litprune.inits.ScratchTarget",
        "init_args": {
            "parent": export,
            "method": method.kind,
            "ratio": ratio,
            "convention": method.convention,
            "seed": seed,
            "scheme": spec.scratch_init.get("scheme", "normal"),
        },
    }


def _sparse_mask_callback() -> dict[str, Any]:
    return {
        "class_path": SPARSE_MASK,
        "init_args": {
            "mask_source": "module",
            "schedule": "none",
            "semantics": "explicit",
            "clip_on": "unmasked",
        },
    }


def _data(spec: StudySpec, train: str, keep: list[str], extra_slices: dict | None = None) -> dict[str, Any]:
    """The arm's data settings: the study's, with only the slices this arm reads (slices of one data module must
    not overlap, and `S_M+N`'s joined slice overlaps the others)."""
    data = copy.deepcopy(spec.data)
    val, test = data.get("val_slice", "val"), data.get("test_slice", "test")
    defined = data.get("slices")
    if isinstance(defined, dict) or extra_slices:
        names = [*keep, val, test]
        chosen = {k: v for k, v in (defined or {}).items() if k in names}
        chosen.update(extra_slices or {})
        data["slices"] = chosen
    data["train_slice"] = train
    return {"class_path": DATA_MODULE, "init_args": data}


def _fit_config(spec, arm_id, out, model, data, tokens, callbacks=None, trainer_extra=None) -> dict[str, Any]:
    trainer = copy.deepcopy(spec.trainer)
    trainer.update(copy.deepcopy(trainer_extra or {}))
    trainer["default_root_dir"] = str(out / "runs" / arm_id)
    step = tokens_per_step(spec)
    steps = max(1, tokens // step)
    interval = max(1, steps // spec.curve_points)
    trainer.setdefault("val_check_interval", interval)
    trainer.setdefault("log_every_n_steps", max(1, min(interval, 10)))
    trainer["check_val_every_n_epoch"] = None
    if callbacks:
        trainer["callbacks"] = [*(trainer.get("callbacks") or []), *callbacks]
    checkpoint = {"every_n_train_steps": interval, **copy.deepcopy(spec.checkpoint)}
    return {
        "seed_everything": spec.seed_everything,
        "trainer": trainer,
        "checkpoint": checkpoint,
        "model": {"class_path": CAUSAL_LM, "init_args": model},
        "data": data,
    }


def _pattern_tag(pattern: str) -> str:
    return str(pattern).replace(":", "of")


def _file_label(label: str) -> str:
    return label.replace("[", "-").replace("]", "")
