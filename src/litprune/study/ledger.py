"""The token and FLOP ledger: what every arm consumed, per phase, and the checks that prove the budgets.

Phases of an arm's lineage (exact token counts, with the paper's nominal label beside them,
`litprune.training.budget.paper_token_label`):

- `pretrain`: the parent's pretraining tokens M, counted for the arms that start from the parent's weights
  (`P_M-R_N`, and the parent itself); 0 for scratch arms, as in the paper's `S_N` (the sparse `reinit` control
  keeps the parent's mask, embeddings and norm gains, which the `inherits` column states);
- `calibration`: tokens the pruning method read in forward passes of the parent (`init_tokens.calibration`);
- `train`: tokens of the arm's own run (`tokens_seen` of its `results.json`).

Distilled arms (`P_M-RD_N`, `S_N-D`): the training tokens stay N; the teacher's forward FLOPs (`2 x` the parent's
non-embedding parameters `x` the training tokens) are added as a phase of their own (`flops["teacher"]`), and the
arm is labelled as inheriting from the parent (`inherits`: "..., parent as teacher"; a scratch arm's total is marked
`(+M inherited)`, since it learns from a model trained on M tokens that its total does not count).

Each entry also holds the token ranges the arm read (`litprune.study.records.TokenRange`): its training slice
(`train`: slice, split, `[start, end)` in the split, tokens, epochs, from the data module's record) and, when its
init calibrates, the calibration slice (`calibration`, from the calibration provenance).

`total = pretrain + train` is the paper's total budget (calibration is listed apart: it is forward-only and
drawn from the parent's data).

Chains (a learned method's `P_M-R_N`, e.g. Sheared-LLaMA: a pruning phase, then continued pretraining of its
export): the pruning phase's tokens are retraining-side training tokens of the pruned arm, so the `P_M-R_N` entry's
`train` is the sum over the chain's runs (pruning phase + continued pretraining = N) and its training FLOPs are
`6 x parent non-embedding params x pruning tokens` (the dense parent runs, masked, in the pruning phase) plus
`6 x the small model's non-embedding params x continued tokens`. The pruning phase also has an entry of its own
(`P_M-R_N[prune]`), listed for its token range; its tokens are already in the chain's row.

FLOPs convention (stated in every report): `6 x P x T` for training (forward + backward) and `2 x P x T` for a
forward-only calibration pass, with P the *non-embedding* parameters of the model that ran (the parent for
pretraining and calibration, the arm's model for its own run), as in Kaplan et al. (2020). Attention-score FLOPs
and the input embedding / output head are not counted; sparse models are counted dense, since zeros are still
multiplied on dense hardware.

Checks, for every compared pair (method x ratio x N):
`S_N.train == N`, `P_M-R_N.train == N`, `S_N.train == P_M-R_N.train` (equal training tokens),
`S_M+N.train == M + N` and `S_M+N.train == P_M.train + P_M-R_N.train` (equal total tokens); and, by token ranges
(same split and intersecting `[start, end)` = overlap), `P_M.train` disjoint from `P_M-R_N.train` and from
`S_N.train`, and `P_M-R_N.calibration` disjoint from `P_M.train` and from `P_M-R_N.train`; for a chain also
`P_M-R_N[prune].train` (or `[stage<k>]`) disjoint from `P_M.train` and from `P_M-R_N.train` (the chain never reads
a token twice), and a stage's calibration disjoint from both.
The parent's range is checked when the study trained the parent (a parent from disk has no recorded range).

Statuses: `ok` (measured from finished runs), `FAILED`, `not measured` (a finished run's record lacks the value or
range: a failure, since nothing was proved), `pending` (an arm has not finished) and, in a dry run, `planned`
(the plan agrees with itself; nothing is proved until the runs finish).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from litprune.eval.task_scorer import is_task_scorer
from litprune.study.arms import PRUNE_STAGE, PRUNED_LABELS, Arm
from litprune.study.records import TokenRange, calibration_range, declared_range, run_result, train_range
from litprune.study.spec import StudySpec
from litprune.training.budget import paper_token_label

FLOPS_CONVENTION = (
    "FLOPs = 6 x non-embedding parameters x training tokens (forward + backward) + 2 x non-embedding parameters "
    "of the parent x calibration tokens (forward only), as in Kaplan et al. (2020); attention-score and "
    "embedding/output-head FLOPs are not counted; sparse models are counted dense. A learned method's pruning "
    "phase (Sheared-LLaMA) trains the dense parent under masks: its tokens count as the pruned arm's training "
    "tokens, at 6 x the parent's non-embedding parameters. A distilled arm (P_M-RD_N, S_N-D) adds its teacher's "
    "forward passes: 2 x the teacher's (the parent's) non-embedding parameters x the arm's training tokens; its "
    "training tokens stay N."
)

CHAIN_NOTE = (
    "`P_M-R_N[...]` rows are earlier runs of a chain: the pruning phase of a learned method (`[prune]`) or the stages "
    "of an iterative prune (`[stage<k>]`); each counts the runs up to it, and the chain's `P_M-R_N` row counts them "
    "all: its train tokens are the sum over the chain (= N), its calibration the sum over the stages."
)

NOT_MEASURED = "not measured"
"""Status of a check, and text of a ledger cell, whose value a finished run's record lacks."""

INHERITED_MARK = " (+M inherited)"
"""Marks the total of an arm that starts from the parent's trained embeddings and norm gains (the `reinit` control)."""

INHERITED_NOTE = (
    f"`{INHERITED_MARK.strip()}`: the arm starts from tensors the parent trained on its M tokens (embeddings and "
    "norm gains, the paper's sparse `reinit` control) or learns from the parent's outputs (a distilled scratch arm, "
    "`S_N-D`, whose teacher was trained on M tokens), which its total does not count; it is not a from-scratch arm "
    "at equal total tokens."
)

FAILING = ("FAILED", NOT_MEASURED)
"""Check statuses that fail the study."""


@dataclass
class LedgerEntry:
    """Tokens and FLOPs of one arm.

    Attributes:
        arm: the arm id.
        label: the arm in the paper's notation.
        group: its method x ratio group.
        retrain_tokens: the N the arm belongs to (None for a parent).
        pretrain_tokens: M when the arm starts from the parent's weights (else 0); None when not measured.
        calibration_tokens: tokens read by the pruning method; None when not measured.
        train_tokens: tokens of the arm's own run; None when not measured.
        total_tokens: pretrain + train (the paper's total budget); None when either is not measured.
        inherits: what the starting point takes from the parent ("weights", "mask", "mask, embeddings, norms",
            "shape" or "nothing").
        params_non_embedding: non-embedding parameters of the arm's model (None when unknown).
        parent_params_non_embedding: the same for its parent.
        flops: per phase (`pretrain`, `calibration`, `train`, and `teacher` for a distilled arm) and `total`, None
            where a parameter count is unknown.
        measured: True when the token counts come from the finished run's `results.json`, False when planned.
        ranges: the token ranges read, by role (`train`, and `calibration` when the init calibrates): measured from
            a finished run, else planned from the arm's config.
        not_measured: what a finished run's record lacks (`train`, `pretrain`, `calibration`, `train range`,
            `calibration range`); each fails the checks that use it.
        chain: ids of the earlier runs whose tokens and FLOPs this entry includes (a learned method's pruning
            phase); empty for an ordinary arm.
        stage: "prune" for the pruning phase of a chain (counted again in the chain's `P_M-R_N` entry), else None.
    """

    arm: str
    label: str
    group: str
    retrain_tokens: int | None
    pretrain_tokens: int | None
    calibration_tokens: int | None
    train_tokens: int | None
    total_tokens: int | None
    inherits: str
    params_non_embedding: int | None
    parent_params_non_embedding: int | None
    flops: dict[str, float | None] = field(default_factory=dict)
    measured: bool = False
    ranges: dict[str, TokenRange] = field(default_factory=dict)
    not_measured: list[str] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)
    stage: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        """The paper's nominal labels of the token counts ("not measured" where a finished run lacks one)."""
        return {
            "pretrain": _label(self.pretrain_tokens) if self.pretrain_tokens != 0 else "0",
            "train": _label(self.train_tokens),
            "total": _label(self.total_tokens),
        }

    @property
    def uncounted_inheritance(self) -> bool:
        """The arm starts from trained tensors of the parent (its embeddings and norm gains) but counts none of the
        parent's M tokens: its total is marked in every table, and sentences comparing totals say so."""
        return ("embeddings" in self.inherits or "teacher" in self.inherits) and not self.pretrain_tokens

    def ranges_text(self) -> str:
        """The ranges read, e.g. `train retrain: train[131,072, 262,144) x 0.02 epochs`."""
        parts = []
        for role, read in self.ranges.items():
            epochs = f" x {read.epochs:.3g} epochs" if read.epochs is not None else ""
            parts.append(f"{role} {read}{epochs}")
        parts += [f"{what}: {NOT_MEASURED}" for what in self.not_measured if what.endswith("range")]
        return "; ".join(parts) or "-"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": self.labels}


@dataclass
class BudgetCheck:
    """One checked budget identity of a compared pair.

    Attributes:
        pair: the compared target (`<group> N=<N>`).
        check: the identity, e.g. `S_N.train == P_M-R_N.train` or `P_M.train disjoint from P_M-R_N.train`.
        left: the left side's value: a token count, or a token range as text (None when unknown).
        right: the right side's value.
        status: "ok", "FAILED", "not measured", "pending" or "planned" (see the module docstring).
    """

    pair: str
    check: str
    left: int | str | None
    right: int | str | None
    status: str

    def sides(self) -> str:
        """Both sides as text, e.g. `2,048 vs 2,048` or `pretrain: train[0, 8,192) vs retrain: train[8,192, ...)`."""
        return f"{_n(self.left)} vs {_n(self.right)}"


@dataclass
class Ledger:
    """Every arm's entry and every budget check."""

    entries: list[LedgerEntry]
    checks: list[BudgetCheck]
    convention: str = FLOPS_CONVENTION

    @property
    def ok(self) -> bool:
        """No check failed or went unmeasured (pending and planned ones are not failures)."""
        return all(c.status not in FAILING for c in self.checks)

    def failures(self) -> list[str]:
        """One line per failed or unmeasured check, naming both sides."""
        return [f"{c.pair}: {c.check} ({c.sides()}): {c.status}" for c in self.checks if c.status in FAILING]

    def as_dict(self) -> dict[str, Any]:
        return {
            "flops_convention": self.convention,
            "entries": [e.as_dict() for e in self.entries],
            "checks": [asdict(c) for c in self.checks],
        }

    def to_markdown(self) -> str:
        lines = [
            "| arm | N | pretrain (M) | calibration | train | total | label (train / total) | inherits | FLOPs | "
            "token ranges read |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in self.entries:
            flops = e.flops.get("total")
            mark = INHERITED_MARK if e.uncounted_inheritance else ""
            lines.append(
                f"| {e.arm} | {_n(e.retrain_tokens)} | {_count(e.pretrain_tokens)} | {_count(e.calibration_tokens)} | "
                f"{_count(e.train_tokens)} | {_count(e.total_tokens)}{mark} | "
                f"{e.labels['train']} / {e.labels['total']} | "
                f"{e.inherits} | {'n/a' if flops is None else f'{flops:.3g}'} | {e.ranges_text()} |"
            )
        if any(e.uncounted_inheritance for e in self.entries):
            lines += ["", INHERITED_NOTE]
        if any(e.stage is not None for e in self.entries):
            lines += ["", CHAIN_NOTE]
        lines += ["", "| pair | check | left | right | status |", "|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.pair} | `{c.check}` | {_n(c.left)} | {_n(c.right)} | {c.status} |")
        return "\n".join(lines)


def build_ledger(spec: StudySpec, arms: list[Arm], measured: bool = True) -> Ledger:
    """The ledger of a study: measured values from finished arms (when `measured`), planned values otherwise.

    Planned values come from the arm configs (budgets, calibration windows) and parameter counts solved from the
    parent's config, so a dry run already shows that the budgets match.
    """
    by_id = {arm.id: arm for arm in arms}
    results = {arm.id: run_result(arm.run_dir) if measured else None for arm in arms}
    planned_params = _planned_parameters(spec, arms)
    entries = {}
    for arm in arms:
        entries[arm.id] = _entry(arm, results, by_id, planned_params, spec)
    checks = _checks(arms, entries, measured)
    return Ledger(entries=list(entries.values()), checks=checks)


def _entry(arm: Arm, results, by_id, planned_params, spec: StudySpec) -> LedgerEntry:
    result = results.get(arm.id)
    finished = result is not None
    run = (result or {}).get("run") or {}
    parent_arm = by_id.get(arm.parent)
    parent_result = results.get(parent_arm.id) if parent_arm is not None else None
    parent_run = (parent_result or {}).get("run") or {}
    missing: list[str] = []
    params = ((run.get("parameters") or {}).get("non_embedding")) or planned_params.get(arm.id)
    parent_params = ((parent_run.get("parameters") or {}).get("non_embedding")) or planned_params.get(arm.parent)
    if arm.is_parent:
        parent_params = params
    if arm.stage == PRUNE_STAGE:
        params = parent_params  # the pruning phase trains the dense parent under masks
    # A finished run's own record is the only source of a measured value: what it lacks is "not measured",
    # never the plan's number. A chain's runs are measured once its last run has finished.
    phases = [*(by_id[i] for i in arm.chain if i in by_id), arm]

    def size(phase: Arm) -> int | None:
        """Non-embedding parameters of the model a run trains (a pruning phase: the dense parent)."""
        if phase.stage == PRUNE_STAGE:
            return parent_params
        if phase is arm:
            return params
        record = (results.get(phase.id) or {}).get("run") or {}
        return ((record.get("parameters") or {}).get("non_embedding")) or planned_params.get(phase.id)

    train, train_flops = _train_phases(arm, phases, results, finished, size, missing)
    planned_calibration = 0 if arm.is_parent else _planned_calibration(arm, _init_args(arm))
    pretrain: int | None = 0
    calibration: int | None = 0
    calibration_flops: float | None = 0.0
    if not arm.is_parent:
        # Each run of a chain that prunes calibrates on the model it prunes: the parent, then the previous run's.
        for i, phase in enumerate(phases):
            planned = _planned_calibration(phase, _init_args(phase))
            record = (results.get(phase.id) or {}).get("run") or {}
            if finished and planned:
                count = _measured(record.get("init_tokens") or {}, "calibration", "calibration", missing)
            elif finished:
                count = int((record.get("init_tokens") or {}).get("calibration", 0))
            else:
                count = planned
            phase_flops = _flops(2.0, parent_params if i == 0 else size(phases[i - 1]), count)
            calibration = None if calibration is None or count is None else calibration + count
            calibration_flops = (
                None if calibration_flops is None or phase_flops is None else calibration_flops + phase_flops
            )
        if starts_from_parent_weights(arm):
            if parent_result is not None:
                pretrain = _measured(parent_run, "tokens_seen", "pretrain", missing)
            else:
                pretrain = arm.parent_tokens or 0
    ranges = _ranges(arm, result, planned_calibration, missing)
    flops: dict[str, float | None] = {
        "pretrain": _flops(6.0, parent_params, pretrain),
        "calibration": calibration_flops,
        "train": train_flops,
    }
    if arm.distill is not None:
        # The teacher (the parent) runs forward on every training token of the arm.
        flops["teacher"] = _flops(2.0, _teacher_params(run, parent_params) if finished else parent_params, train)
    known = [v for v in flops.values() if v is not None]
    flops["total"] = sum(known) if len(known) == len(flops) else None
    return LedgerEntry(
        arm=arm.id,
        label=arm.label,
        group=arm.group,
        retrain_tokens=arm.retrain_tokens,
        pretrain_tokens=pretrain,
        calibration_tokens=calibration,
        train_tokens=train,
        total_tokens=None if pretrain is None or train is None else pretrain + train,
        inherits=_inherits(arm),
        params_non_embedding=params,
        parent_params_non_embedding=parent_params,
        flops=flops,
        measured=finished,
        ranges=ranges,
        not_measured=list(dict.fromkeys(missing)),
        chain=list(arm.chain),
        stage=arm.stage,
    )


def _teacher_params(run: dict[str, Any], parent_params: int | None) -> int | None:
    """The teacher's non-embedding parameters as the finished run recorded them (`distillation.teacher_parameters`),
    else the parent's."""
    recorded = ((run.get("distillation") or {}).get("teacher_parameters") or {}).get("non_embedding")
    return int(recorded) if recorded else parent_params


def starts_from_parent_weights(arm: Arm) -> bool:
    """Whether the arm's training starts from the parent's trained weights, so the parent's M tokens count in its
    total: the pruned arms and a chain's pruning phase (not the sparse `reinit` control, which keeps only the
    parent's embeddings and norm gains)."""
    return not arm.is_parent and arm.label.startswith("P_M-R")


def _train_phases(arm: Arm, phases: list[Arm], results, finished: bool, size, missing) -> tuple:
    """`(train tokens, train FLOPs)` of an arm, summed over the runs of its chain, each at its model's `size`."""
    if len(arm.chain) != len(phases) - 1:
        missing.append("train")  # a run of the chain is not in the study
        return None, None
    tokens: int | None = 0
    flops: float | None = 0.0
    for phase in phases:
        if finished:
            record = (results.get(phase.id) or {}).get("run") or {}
            count = _measured(record, "tokens_seen", "train", missing)
        else:
            count = phase.train_tokens
        tokens = None if tokens is None or count is None else tokens + count
        phase_flops = _flops(6.0, size(phase), count)
        flops = None if flops is None or phase_flops is None else flops + phase_flops
    return tokens, flops


def _measured(record: dict[str, Any], key: str, what: str, missing: list[str]) -> int | None:
    """`record[key]` as an int, or None with `what` added to `missing` when the record lacks it."""
    if record.get(key) is None:
        missing.append(what)
        return None
    return int(record[key])


def _flops(factor: float, params: int | None, tokens: int | None) -> float | None:
    if tokens == 0:
        return 0.0
    return None if params is None or tokens is None else factor * params * tokens


def _ranges(arm: Arm, result: dict[str, Any] | None, planned_calibration: int, missing: list[str]) -> dict:
    """The token ranges an arm read: from its `results.json` when finished, else from its config."""
    ranges: dict[str, TokenRange] = {}
    if result is None:
        found = {"train": _planned_range(arm, "train")}
        if planned_calibration:
            found["calibration"] = _planned_range(arm, "calibration")
    else:
        found = {"train": train_range(result)}
        if planned_calibration:
            found["calibration"] = calibration_range(result)
    for role, read in found.items():
        if read is None:
            missing.append(f"{role} range")
        else:
            ranges[role] = read
    return ranges


def _planned_range(arm: Arm, role: str) -> TokenRange:
    """The slice an arm's config reads for `role` (`litprune.study.records.declared_range`)."""
    data = arm.config["data"]["init_args"]
    if role == "train":
        name = data["train_slice"]
    else:
        name = (_init_args(arm).get("calibration") or {}).get("slice", "train")
    return declared_range(data.get("slices"), name, role)


def _init_args(arm: Arm) -> dict[str, Any]:
    return arm.config["model"]["init_args"]["init"]["init_args"]


def _planned_calibration(arm: Arm, init: dict[str, Any]) -> int:
    calibration = init.get("calibration")
    if not calibration or (arm.kind == "sparse" and init.get("method") == "magnitude"):
        return 0
    if arm.kind != "sparse" and "ScratchTarget" in arm.config["model"]["init_args"]["init"]["class_path"]:
        return 0
    if init.get("method") == "minitron_depth" and is_task_scorer(init.get("scorer")):
        return 0  # a task-scored depth prune reads the task's examples, no corpus windows
    return int(calibration["nsamples"]) * int(calibration["seqlen"])


def _inherits(arm: Arm) -> str:
    if arm.is_parent:
        return "nothing"
    teacher = ", parent as teacher" if arm.distill is not None else ""
    if starts_from_parent_weights(arm):
        return "weights" + teacher
    if arm.kind != "sparse":
        return "shape" + teacher
    control = arm.config["model"]["init_args"]["init"]["init_args"].get("control")
    return ("mask, embeddings, norms" if control == "reinit" else "mask") + teacher


def _checks(arms: list[Arm], entries: dict[str, LedgerEntry], measured: bool) -> list[BudgetCheck]:
    checks: list[BudgetCheck] = []
    parents = {a.id: a for a in arms if a.is_parent}
    by_id = {a.id: a for a in arms}
    for pruned in (a for a in arms if a.label in PRUNED_LABELS):
        n = pruned.retrain_tokens
        ref = pruned.label
        pair = f"{pruned.group} N={n:,}"
        partners = [
            a
            for a in arms
            if not a.is_parent
            and a.retrain_tokens == n
            and pruned.methods[0] in a.methods
            and a.ratio == pruned.ratio
            and a.pattern == pruned.pattern
            and a.parent == pruned.parent
            and a.lr == pruned.lr
            and a.seed == pruned.seed
        ]
        scratch = [a for a in partners if a.label in ("S_N", "S_N-D")]
        long = next((a for a in partners if a.label == "S_M+N"), None)
        undistilled = next((a for a in partners if a.label == "P_M-R_N"), None) if ref != "P_M-R_N" else None
        # With both pruned arms in the study, the identities of the arms they share are checked once, with P_M-R_N.
        shared = undistilled is not None
        parent = parents.get(pruned.parent)

        def status(involved: list[tuple[Arm | None, str]], differ: bool | None) -> str:
            """`differ`: the two sides break the identity (None: a side is unknown)."""
            if any(arm is not None and what in entries[arm.id].not_measured for arm, what in involved):
                return NOT_MEASURED
            if differ is None:
                return "pending"
            if differ:
                return "FAILED"
            if not measured:
                return "planned"
            return "ok" if all(entries[arm.id].measured for arm, _ in involved if arm is not None) else "pending"

        def add(
            check: str, left: int | None, right: int | None, involved: list[tuple[Arm | None, str]], pair: str = pair
        ) -> None:
            differ = None if left is None or right is None else left != right
            state = status(involved, differ)
            if state == NOT_MEASURED:  # the unknown side is the one a finished run did not record
                left, right = (NOT_MEASURED if v is None else v for v in (left, right))
            checks.append(BudgetCheck(pair, check, left, right, state))

        def add_disjoint(a: tuple[str, Arm, str], b: tuple[str, Arm, str], pair: str = pair) -> None:
            (name_a, arm_a, role_a), (name_b, arm_b, role_b) = a, b
            read_a, read_b = entries[arm_a.id].ranges.get(role_a), entries[arm_b.id].ranges.get(role_b)
            differ = None if read_a is None or read_b is None else read_a.overlaps(read_b)
            involved = [(arm_a, f"{role_a} range"), (arm_b, f"{role_b} range")]
            left, right = (NOT_MEASURED if r is None else str(r) for r in (read_a, read_b))
            checks.append(BudgetCheck(pair, f"{name_a} disjoint from {name_b}", left, right, status(involved, differ)))

        pr_train = entries[pruned.id].train_tokens
        add(f"{ref}.train == N", pr_train, n, [(pruned, "train")])
        for other in scratch:
            s_train = entries[other.id].train_tokens
            if not shared:
                add(f"{other.label}.train == N", s_train, n, [(other, "train")])
            add(f"{other.label}.train == {ref}.train", s_train, pr_train, [(other, "train"), (pruned, "train")])
        if undistilled is not None:
            u_train = entries[undistilled.id].train_tokens
            add(f"{ref}.train == P_M-R_N.train", pr_train, u_train, [(pruned, "train"), (undistilled, "train")])
        if long is not None:
            # M as the study defines it, then as the parent's run actually consumed it.
            declared_m = pruned.parent_tokens
            m_tokens = entries[parent.id].train_tokens if parent is not None else declared_m
            long_train = entries[long.id].train_tokens
            if not shared:
                add(
                    "S_M+N.train == M + N",
                    long_train,
                    None if declared_m is None else declared_m + n,
                    [(long, "train")],
                )
            add(
                f"S_M+N.train == P_M.train + {ref}.train",
                long_train,
                None if m_tokens is None or pr_train is None else m_tokens + pr_train,
                [(long, "train"), (parent, "train"), (pruned, "train")],
            )
        # Token ranges: the retraining arms and the pruning method's calibration never read the parent's tokens,
        # and calibration never reads the tokens the pruned model retrains on.
        calibrates = _calibrates(entries[pruned.id])
        if parent is not None:
            add_disjoint(("P_M.train", parent, "train"), (f"{ref}.train", pruned, "train"))
            for other in [] if shared else scratch:
                add_disjoint(("P_M.train", parent, "train"), (f"{other.label}.train", other, "train"))
            if calibrates:
                add_disjoint((f"{ref}.calibration", pruned, "calibration"), ("P_M.train", parent, "train"))
        if calibrates:
            add_disjoint((f"{ref}.calibration", pruned, "calibration"), (f"{ref}.train", pruned, "train"))
        # A chain reads disjoint parts of the retraining slice, none of the parent's.
        for stage in (by_id[i] for i in pruned.chain if i in by_id):
            name = f"{stage.label}.train"
            if parent is not None:
                add_disjoint(("P_M.train", parent, "train"), (name, stage, "train"))
            add_disjoint((name, stage, "train"), (f"{ref}.train", pruned, "train"))
            if _calibrates(entries[stage.id]):  # a stage of an iterative prune calibrates too
                calibration = (f"{stage.label}.calibration", stage, "calibration")
                if parent is not None:
                    add_disjoint(calibration, ("P_M.train", parent, "train"))
                add_disjoint(calibration, (f"{ref}.train", pruned, "train"))
    return checks


def _calibrates(entry: LedgerEntry) -> bool:
    return "calibration" in entry.ranges or "calibration range" in entry.not_measured


def _planned_parameters(spec: StudySpec, arms: list[Arm]) -> dict[str, int]:
    """Non-embedding parameter counts solved from configs (no weights): parents and structured targets."""
    from litprune.pruning.shapes import count_config_parameters, solve_shape
    from litprune.study.spec import data_vocab

    out: dict[str, int] = {}
    configs = {}
    for parent in spec.parents.values():
        try:
            if parent.trained:
                from litprune.models.presets import build_llama_config

                config = build_llama_config(parent.preset, parent.overrides, vocab_size=data_vocab(spec) or 32000)
            else:
                from litprune.inits.parent import read_parent_config

                config = read_parent_config(str(parent.path))
        except (OSError, ValueError):
            continue
        configs[parent.name] = config
        out[parent.name] = count_config_parameters(config).non_embedding
    # A parent arm's id carries its repetition (`parent.s1`); its group is the parent's name in the study.
    names = {arm.id: arm.group for arm in arms if arm.is_parent}
    solved: dict[tuple, int | None] = {}
    for arm in arms:
        parent = names.get(arm.parent, arm.parent)
        if parent not in configs:
            continue
        if arm.is_parent or arm.kind == "sparse" or arm.stage == PRUNE_STAGE or arm.shape is None:
            out[arm.id] = out[parent]
            continue
        # Arms of one target (N values, seeds, learning rates, scratch twins) share one solve.
        key = (parent, arm.kind, repr(sorted(arm.shape.items())))
        if key not in solved:
            try:
                solved[key] = solve_shape(configs[parent], arm.kind, **arm.shape).params_target.non_embedding
            except ValueError:
                solved[key] = None
        if solved[key] is not None:
            out[arm.id] = solved[key]
    return out


def _n(value: int | str | None) -> str:
    if isinstance(value, str):
        return value
    return "-" if value is None else f"{value:,}"


def _count(value: int | None) -> str:
    """A token count of the ledger table; None is a value a finished run did not record."""
    return NOT_MEASURED if value is None else f"{value:,}"


def _label(value: int | None) -> str:
    return NOT_MEASURED if value is None else paper_token_label(value)
