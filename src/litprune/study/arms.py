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
| `P_M-RD_N` | as `P_M-R_N`, retrained by distillation from the parent (`model.distill`) | `slices.retrain` | N |
| `S_N-D` | as `S_N`, trained by distillation from the parent | `slices.retrain` | N |

`S_N` and `P_M-R_N` of the same target share every setting but the init: same data config (so the same sample
order), same recipe, same batch shape. Both depth methods prune to the same shape, so their `S_N` and `S_M+N` arms
are shared (`depth-<ratio>`), and so do the width methods (`width-<ratio>`: Minitron-width and Sheared-LLaMA);
sparse scratch arms keep the method's mask, so they belong to their method, and so do the scratch arms of the other
structured kinds (FLAP, Wanda-sp: `ScratchTarget(method: <method>)`, since a method may add config flags to its
shape, such as FLAP's compensation biases). A method with an explicit `target` and no ratio names its arms after the
target (`flap-kv5-F6528`) and records the achieved ratio (non-embedding, or its `convention`).

Learned methods (`sheared`) make `P_M-R_N` a chain of two ordinary runs, in order:

- `P_M-R_N[prune]` (id `<group>.P_M-R_N-prune.N<N>`): `FromPretrained` of the dense parent with the
  `ShearedPruning` callback, `prune_tokens` tokens of `<slices.retrain>_prune_phase`;
- `P_M-R_N` (id `<group>.P_M-R_N.N<N>`): `FromPretrained` of the pruning phase's export, N - `prune_tokens` tokens
  of `<slices.retrain>_continued`.

Iterative pruning (`stages: [0.3, 0.5]`) makes `P_M-R_N` a chain too: `P_M-R_N[stage1]`, ..., each
`StructuredPrune` of the previous stage's export to its stage's shape (structured), or `SparsePrune` of the previous
stage's export at its stage's ratio, retrained under its mask with the `SparseMask` callback (sparse: the mask
tightens stage by stage), the last stage being `P_M-R_N` (`litprune.study.spec.stage_split` shares N between the
stages). The scratch twins are those of a one-shot prune at the last ratio: the final shape, or for a sparse method
the one-shot mask of the parent at that ratio (id `<method>-<pattern>-<last ratio>`).

In a chain, each run depends on the one before (`depends_on`) and lists the earlier ones in `chain`, so the ledger
counts them all toward the `P_M-R_N` arm (`litprune.study.spec.sheared_split` holds Sheared-LLaMA's token rule,
`retrain_parts` the slice split).

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
    CHAIN_OPTIONS,
    DEFAULT_PRUNE_FRACTION,
    SCORER_KEYS,
    SHEARED_CALLBACK,
    MethodSpec,
    ParentSpec,
    StudySpec,
    chain_slices,
    distill_settings,
    long_slice,
    parent_config,
    retrain_parts,
    sheared_split,
    stage_shapes,
    stage_split,
    target_tag,
    tokens_per_step,
)
from litprune.utils.atomic import atomic_write_text

CAUSAL_LM = "litprune.modules.causal_lm.CausalLM"
DATA_MODULE = "litprune.data.datamodule.TokenDataModule"
SPARSE_MASK = "litprune.callbacks.sparse_mask.SparseMask"
FROM_PRETRAINED = "litprune.inits.FromPretrained"

SHARED_SCRATCH_KINDS: tuple[str, ...] = ("depth", "width")
"""Shape kinds whose scratch twin is the bare shape, so every method of the kind shares one `S_N` / `S_M+N`."""

PRUNED_LABELS: tuple[str, ...] = ("P_M-R_N", "P_M-RD_N")
"""The arms that start from the pruned parent (retrained plainly, or by distillation)."""

PRUNE_STAGE = "prune"
"""`Arm.stage` of a learned method's pruning phase (label `P_M-R_N[prune]`)."""


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
        shape: what a structured or learned arm's shape is solved from: `{ratio, target, convention}` (ratio None
            when the explicit target alone fixes it), as `litprune.pruning.shapes.solve_shape(parent config, kind,
            **shape)` takes them; None for parents and sparse arms.
        stage: "prune" for the pruning phase of a learned method's chain (label `P_M-R_N[prune]`), whose tokens the
            chain's `P_M-R_N` counts; None for an ordinary arm.
        chain: ids of the earlier runs of this arm's chain, in order (the pruning phase of a learned method's
            `P_M-R_N`); the ledger counts their tokens and FLOPs toward this arm.
        distill: the `CausalLM.distill` settings of a distilled arm (`P_M-RD_N`, `S_N-D`: the teacher is the parent's
            export); None for the others.
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
    shape: dict[str, Any] | None = None
    stage: str | None = None
    chain: list[str] = field(default_factory=list)
    distill: dict[str, Any] | None = None
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
                for ratio in method.ratio_values:
                    for n in seeded.retrain_tokens:
                        for arm in _method_arms(seeded, method, ratio, n, parent, where, out, tag, lr):
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
    # So does a learned method's mask seed.
    methods = [
        dataclasses.replace(m, options={**m.options, "seed": seed}) if m.learned and "seed" in m.options else m
        for m in methods
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


@dataclass
class _Run:
    """One run `_method_arms` plans, before its fit config is written."""

    label: str
    group: str
    init: dict[str, Any]
    tokens: int
    uses_parent: bool
    train_slice: str
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    stage: str | None = None
    own_slice: dict[str, Any] | None = None
    chain: list[str] = field(default_factory=list)
    distill: dict[str, Any] | None = None
    shape: dict[str, Any] | None = None


def _arm_id(group: str, label: str, n: int, tag: str) -> str:
    return f"{group}.{_file_label(label)}.N{n}{tag}"


def _method_arms(spec, method: MethodSpec, ratio, n: int, parent: ParentSpec, where, out: Path, tag, lr):
    """The arms of one method x ratio x N (one repetition, one learning rate); `where` = (parent arm id, export).

    `ratio` is None when the method's `target` alone fixes the shape; the arms then carry the achieved ratio."""
    from litprune.study.spec import _parent_tokens

    parent_id, export = where
    m_tokens = _parent_tokens(parent)
    depends = [parent_id] if parent.trained else []
    kind = method.kind
    name = _target_name(method, ratio)
    if method.stages:
        # An iterative prune reaches the same final shape (sparse: sparsity) as the one-shot prune at its last ratio
        # (same scratch twins) but is another pruned arm.
        stages = "-".join(f"{r:g}" for r in method.stages)
        if kind == "sparse":
            sparse_name = f"{method.method}-{_pattern_tag(method.pattern)}"
            pruned_group, scratch_group = f"{sparse_name}-{stages}", f"{sparse_name}-{name}"
        else:
            pruned_group = f"{method.method}-{stages}"
            scratch_group = f"{kind}-{name}" if kind in SHARED_SCRATCH_KINDS else f"{method.method}-{name}"
    elif kind == "sparse":
        pruned_group = scratch_group = f"{method.method}-{_pattern_tag(method.pattern)}-{name}"
    elif kind in SHARED_SCRATCH_KINDS:
        pruned_group, scratch_group = f"{method.method}-{name}", f"{kind}-{name}"
    else:
        pruned_group = scratch_group = f"{method.method}-{name}"
    common = {
        "kind": kind,
        "ratio": ratio if ratio is not None else _achieved_ratio(spec, parent, method),
        "parent": parent_id,
        "retrain_tokens": n,
        "parent_tokens": m_tokens,
        "pattern": method.pattern if kind == "sparse" else None,
        "shape": None
        if kind == "sparse"
        else {
            "ratio": ratio,
            "target": dict(method.target) if method.target else None,
            "convention": method.convention,
        },
    }
    scratch_callbacks = [_sparse_mask_callback()] if kind == "sparse" else []
    runs: list[_Run] = []
    # The distilled arms learn from the parent's export, the teacher, with the study's distill settings.
    teacher = {"teacher": export, **distill_settings(spec)}
    for label, distill in (("P_M-R_N", None), ("P_M-RD_N", teacher)):
        if label not in spec.arms:
            continue
        if method.learned:
            runs += _chain_runs(spec, method, ratio, n, export, pruned_group, tag, depends, out, label, distill)
        elif method.stages:
            runs += _stage_runs(spec, method, parent, n, export, pruned_group, tag, depends, out, label, distill)
        else:
            init = _pruned_init(spec, method, ratio, export)
            retrain = spec.slices.retrain
            runs.append(_Run(label, pruned_group, init, n, True, retrain, scratch_callbacks, depends, distill=distill))
    reinit = kind == "sparse" and method.scratch == "reinit"
    for label, distill in (("S_N", None), ("S_N-D", teacher)):
        if label in spec.arms:
            init = _scratch_init(spec, method, ratio, export, method.scratch)
            retrain = spec.slices.retrain
            runs.append(
                _Run(label, scratch_group, init, n, reinit, retrain, scratch_callbacks, depends, distill=distill)
            )
    if kind == "sparse":
        for control in method.controls:
            init = _scratch_init(spec, method, ratio, export, control)
            reinit = control == "reinit"
            label = f"S_N[{control}]"
            runs.append(_Run(label, scratch_group, init, n, reinit, spec.slices.retrain, scratch_callbacks, depends))
    if "S_M+N" in spec.arms and m_tokens:
        long_name, _ = long_slice(spec)
        init = _scratch_init(spec, method, ratio, export, long_control(method))
        runs.append(_Run("S_M+N", scratch_group, init, m_tokens + n, False, long_name, scratch_callbacks, depends))
    for run in runs:
        arm_id = _arm_id(run.group, run.label, n, tag)
        model = {**spec.model, "arm": run.label, "preset": None, "max_tokens": run.tokens, "init": run.init}
        if lr is not None:
            model["lr"] = lr
        if run.distill is not None:
            model["distill"] = dict(run.distill)
        if run.own_slice is not None:
            # A run of a chain reads its own part of the retraining slice (and validates as every arm does).
            # A stage of an iterative prune also reads calibration windows of the calibration slice.
            keep = [spec.slices.calibration] if "calibration" in run.init["init_args"] else []
            data = _data(spec, train=run.train_slice, keep=keep, extra_slices={run.train_slice: run.own_slice})
        elif run.label == "S_M+N":
            long_name, slice_spec = long_slice(spec)
            # Sparse scratch arms calibrate (to draw the method's mask) on the calibration slice, which must then
            # lie outside the joined slice (checked by the study).
            keep = [long_name, spec.slices.calibration] if kind == "sparse" else [long_name]
            extra = {long_name: slice_spec} if slice_spec else None
            data = _data(spec, train=long_name, keep=keep, extra_slices=extra)
        else:
            data = _data(spec, train=run.train_slice, keep=[spec.slices.retrain, spec.slices.calibration])
        config = _fit_config(spec, arm_id, out, model, data, run.tokens, callbacks=run.callbacks)
        arm_common = copy.deepcopy(common)
        if run.shape is not None:
            arm_common["shape"] = dict(run.shape)
        yield Arm(
            id=arm_id,
            label=run.label,
            group=run.group,
            methods=[method.method],
            train_tokens=run.tokens,
            uses_parent_weights=run.uses_parent,
            depends_on=list(run.depends_on),
            config=config,
            config_path=out / "configs" / f"{arm_id}.yaml",
            run_dir=out / "runs" / arm_id,
            lr=lr,
            stage=run.stage,
            chain=list(run.chain),
            distill=copy.deepcopy(run.distill),
            **arm_common,
        )


def _chain_runs(spec, method: MethodSpec, ratio, n: int, export, group, tag, depends, out: Path, label, distill):
    """A learned method's `P_M-R_N` (or, with `distill`, `P_M-RD_N`, distilled in both runs): the pruning phase (masks
    learned from the dense parent, `ShearedPruning`), then continued pretraining of its export, on disjoint parts of
    the retraining slice, N tokens in all."""
    step = tokens_per_step(spec)
    fraction = method.options.get("prune_fraction", DEFAULT_PRUNE_FRACTION)
    prune_tokens, continued_tokens = sheared_split(n, step, fraction)
    (prune_slice, prune_range), (continued_slice, continued_range) = chain_slices(spec, prune_tokens, n)
    callback = {
        "class_path": SHEARED_CALLBACK,
        "init_args": {
            "ratio": ratio,
            "target": dict(method.target) if method.target else None,
            "convention": method.convention,
            "seed": spec.seed_everything,
            **{k: v for k, v in method.options.items() if k not in CHAIN_OPTIONS},
        },
    }
    stage_label = f"{label}[{PRUNE_STAGE}]"
    prune_id = _arm_id(group, stage_label, n, tag)
    prune = _Run(
        stage_label,
        group,
        {"class_path": FROM_PRETRAINED, "init_args": {"path": export}},
        prune_tokens,
        True,
        prune_slice,
        [callback],
        depends,
        stage=PRUNE_STAGE,
        own_slice=prune_range,
        distill=distill,
    )
    continued = _Run(
        label,
        group,
        {"class_path": FROM_PRETRAINED, "init_args": {"path": str(out / "runs" / prune_id / "export")}},
        continued_tokens,
        True,
        continued_slice,
        depends_on=[prune_id],
        own_slice=continued_range,
        chain=[prune_id],
        distill=distill,
    )
    return [prune, continued]


def _stage_runs(
    spec, method: MethodSpec, parent: ParentSpec, n: int, export, group, tag, depends, out: Path, label, distill
):
    """An iterative prune's `P_M-R_N` (or `P_M-RD_N`): stage k prunes the previous stage's export (the parent's for
    the first), then retrains on its share of N (`stage_split`) and its own part of the retraining slice; the last
    stage is the arm. A structured stage prunes to the shape of `stages[k]` (a full `target` for `StructuredPrune`);
    a sparse stage prunes `stages[k]` of the parent's prunable weights (`SparsePrune` keeps the previous stage's
    zeros) and retrains under its mask (`SparseMask`)."""
    step = tokens_per_step(spec)
    ratios = [float(r) for r in method.stages]
    sparse = method.kind == "sparse"
    shapes = [None] * len(ratios) if sparse else stage_shapes(parent_config(spec, parent), method)
    tokens = stage_split(n, step, len(ratios))
    parts = retrain_parts(spec, tokens, [f"stage{k + 1}" for k in range(len(ratios))])
    runs: list[_Run] = []
    source, after, earlier = export, list(depends), []
    for k, (ratio, shape, count, (slice_name, part)) in enumerate(zip(ratios, shapes, tokens, parts, strict=True)):
        last = k == len(ratios) - 1
        if sparse:
            init, callbacks = _pruned_init(spec, method, ratio, source), [_sparse_mask_callback()]
        else:
            init, callbacks = _pruned_init(spec, method, None, source), []
            init["init_args"]["target"] = dict(shape)
        stage_label = label if last else f"{label}[stage{k + 1}]"
        run = _Run(stage_label, group, init, count, True, slice_name, callbacks, after, own_slice=part, distill=distill)
        run.stage = None if last else f"stage{k + 1}"
        run.chain = list(earlier)
        if not sparse:
            run.shape = {"ratio": None, "target": dict(shape), "convention": method.convention}
        runs.append(run)
        run_id = _arm_id(group, stage_label, n, tag)
        source, after = str(out / "runs" / run_id / "export"), [run_id]
        earlier.append(run_id)
    return runs


def _target_name(method: MethodSpec, ratio: float | None) -> str:
    """The part of an arm id that names its target: the ratio (`0.5`), the explicit target (`kv5-F6528`) or both."""
    parts = [target_tag(method.target)] if method.target else []
    if ratio is not None:
        parts.append(f"{ratio:g}")
    return "-".join(parts)


def _achieved_ratio(spec: StudySpec, parent: ParentSpec, method: MethodSpec) -> float | None:
    """The pruned fraction (under the method's convention) of an explicit target on the parent's shape."""
    from litprune.pruning.shapes import solve_shape

    config = parent_config(spec, parent)
    if config is None:
        return None
    plan = solve_shape(config, method.kind, target=method.target, convention=method.convention)
    return round(float(plan.achieved[method.convention]), 4)


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
    args: dict[str, Any] = {"parent": export, "method": method.method, "ratio": ratio}
    if method.target:
        args["target"] = dict(method.target)
    args.update({"convention": method.convention, "calibration": calibration, **method.options, **scorer})
    return {"class_path": "litprune.inits.StructuredPrune", "init_args": args}


def _scratch_init(spec: StudySpec, method: MethodSpec, ratio: float, export: str, control: str) -> dict[str, Any]:
    seed = int(spec.scratch_init.get("seed", 0))
    if method.kind == "sparse":
        # The scratch arm keeps the method's mask, so it calibrates exactly as the pruned arm does.
        init = _pruned_init(spec, method, ratio, export)
        init["init_args"].update({"control": control, "control_seed": seed})
        return init
    args: dict[str, Any] = {
        "parent": export,
        # The shared kinds' twin is the bare shape; another kind's may carry its method's config flags.
        "method": method.kind if method.kind in SHARED_SCRATCH_KINDS else method.method,
        "ratio": ratio,
        "convention": method.convention,
        "seed": seed,
        "scheme": spec.scratch_init.get("scheme", "normal"),
    }
    if method.target:
        args["target"] = dict(method.target)
    return {"class_path": "litprune.inits.ScratchTarget", "init_args": args}


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
