"""The token and FLOP ledger: what every arm consumed, per phase, and the checks that prove the budgets.

Phases of an arm's lineage (exact token counts, with the paper's nominal label beside them,
`litprune.training.budget.paper_token_label`):

- `pretrain`: the parent's pretraining tokens M, counted for the arms that start from the parent's weights
  (`P_M-R_N`, and the parent itself); 0 for scratch arms, as in the paper's `S_N` (the sparse `reinit` control
  keeps the parent's mask, embeddings and norm gains, which the `inherits` column states);
- `calibration`: tokens the pruning method read in forward passes of the parent (`init_tokens.calibration`);
- `train`: tokens of the arm's own run (`tokens_seen` of its `results.json`).

`total = pretrain + train` is the paper's total budget (calibration is listed apart: it is forward-only and
drawn from the parent's data).

FLOPs convention (stated in every report): `6 x P x T` for training (forward + backward) and `2 x P x T` for a
forward-only calibration pass, with P the *non-embedding* parameters of the model that ran (the parent for
pretraining and calibration, the arm's model for its own run), as in Kaplan et al. (2020). Attention-score FLOPs
and the input embedding / output head are not counted; sparse models are counted dense, since zeros are still
multiplied on dense hardware.

Checks, for every compared pair (method x ratio x N):
`S_N.train == N`, `P_M-R_N.train == N`, `S_N.train == P_M-R_N.train` (equal training tokens),
`S_M+N.train == M + N` and `S_M+N.train == P_M.train + P_M-R_N.train` (equal total tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from litprune.study.arms import Arm
from litprune.study.records import run_result
from litprune.study.spec import StudySpec
from litprune.training.budget import paper_token_label

FLOPS_CONVENTION = (
    "FLOPs = 6 x non-embedding parameters x training tokens (forward + backward) + 2 x non-embedding parameters "
    "of the parent x calibration tokens (forward only), as in Kaplan et al. (2020); attention-score and "
    "embedding/output-head FLOPs are not counted; sparse models are counted dense."
)


@dataclass
class LedgerEntry:
    """Tokens and FLOPs of one arm.

    Attributes:
        arm: the arm id.
        label: the arm in the paper's notation.
        group: its method x ratio group.
        retrain_tokens: the N the arm belongs to (None for a parent).
        pretrain_tokens: M when the arm starts from the parent's weights (else 0).
        calibration_tokens: tokens read by the pruning method.
        train_tokens: tokens of the arm's own run.
        total_tokens: pretrain + train (the paper's total budget).
        inherits: what the starting point takes from the parent ("weights", "mask", "mask, embeddings, norms",
            "shape" or "nothing").
        params_non_embedding: non-embedding parameters of the arm's model (None when unknown).
        parent_params_non_embedding: the same for its parent.
        flops: per phase (`pretrain`, `calibration`, `train`) and `total`, None where a parameter count is unknown.
        measured: True when the token counts come from the finished run's `results.json`, False when planned.
    """

    arm: str
    label: str
    group: str
    retrain_tokens: int | None
    pretrain_tokens: int
    calibration_tokens: int
    train_tokens: int
    total_tokens: int
    inherits: str
    params_non_embedding: int | None
    parent_params_non_embedding: int | None
    flops: dict[str, float | None] = field(default_factory=dict)
    measured: bool = False

    @property
    def labels(self) -> dict[str, str]:
        """The paper's nominal labels of the token counts."""
        return {
            "pretrain": paper_token_label(self.pretrain_tokens) if self.pretrain_tokens else "0",
            "train": paper_token_label(self.train_tokens),
            "total": paper_token_label(self.total_tokens),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": self.labels}


@dataclass
class BudgetCheck:
    """One checked budget identity of a compared pair.

    Attributes:
        pair: the compared target (`<group> N=<N>`).
        check: the identity, e.g. `S_N.train == P_M-R_N.train`.
        left: the left side's value (None while an arm has not finished).
        right: the right side's value.
        status: "ok", "FAILED" or "pending".
    """

    pair: str
    check: str
    left: int | None
    right: int | None
    status: str


@dataclass
class Ledger:
    """Every arm's entry and every budget check."""

    entries: list[LedgerEntry]
    checks: list[BudgetCheck]
    convention: str = FLOPS_CONVENTION

    @property
    def ok(self) -> bool:
        """No check failed (pending ones are not failures)."""
        return all(c.status != "FAILED" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "flops_convention": self.convention,
            "entries": [e.as_dict() for e in self.entries],
            "checks": [asdict(c) for c in self.checks],
        }

    def to_markdown(self) -> str:
        lines = [
            "| arm | N | pretrain (M) | calibration | train | total | label (train / total) | inherits | FLOPs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in self.entries:
            flops = e.flops.get("total")
            lines.append(
                f"| {e.arm} | {_n(e.retrain_tokens)} | {e.pretrain_tokens:,} | {e.calibration_tokens:,} | "
                f"{e.train_tokens:,} | {e.total_tokens:,} | {e.labels['train']} / {e.labels['total']} | {e.inherits} | "
                f"{'n/a' if flops is None else f'{flops:.3g}'} |"
            )
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
    run = (result or {}).get("run") or {}
    parent_arm = by_id.get(arm.parent)
    parent_run = ((results.get(parent_arm.id) or {}).get("run") or {}) if parent_arm is not None else {}
    train = int(run["tokens_seen"]) if "tokens_seen" in run else arm.train_tokens
    if arm.is_parent:
        calibration, pretrain = 0, 0
    else:
        init = arm.config["model"]["init_args"]["init"]["init_args"]
        planned_calibration = _planned_calibration(arm, init)
        calibration = int((run.get("init_tokens") or {}).get("calibration", 0)) if result else planned_calibration
        m_tokens = int(parent_run["tokens_seen"]) if "tokens_seen" in parent_run else (arm.parent_tokens or 0)
        pretrain = m_tokens if arm.label == "P_M-R_N" else 0
    params = ((run.get("parameters") or {}).get("non_embedding")) or planned_params.get(arm.id)
    parent_params = ((parent_run.get("parameters") or {}).get("non_embedding")) or planned_params.get(arm.parent)
    if arm.is_parent:
        parent_params = params
    flops: dict[str, float | None] = {
        "pretrain": 6.0 * parent_params * pretrain if parent_params is not None else None,
        "calibration": 2.0 * parent_params * calibration if parent_params is not None else None,
        "train": 6.0 * params * train if params is not None else None,
    }
    if pretrain == 0:
        flops["pretrain"] = 0.0
    if calibration == 0:
        flops["calibration"] = 0.0
    known = [v for v in flops.values() if v is not None]
    flops["total"] = sum(known) if len(known) == 3 else None
    return LedgerEntry(
        arm=arm.id,
        label=arm.label,
        group=arm.group,
        retrain_tokens=arm.retrain_tokens,
        pretrain_tokens=pretrain,
        calibration_tokens=calibration,
        train_tokens=train,
        total_tokens=pretrain + train,
        inherits=_inherits(arm),
        params_non_embedding=params,
        parent_params_non_embedding=parent_params,
        flops=flops,
        measured=bool(result),
    )


def _planned_calibration(arm: Arm, init: dict[str, Any]) -> int:
    calibration = init.get("calibration")
    if not calibration or (arm.kind == "sparse" and init.get("method") == "magnitude"):
        return 0
    if arm.kind != "sparse" and "ScratchTarget" in arm.config["model"]["init_args"]["init"]["class_path"]:
        return 0
    return int(calibration["nsamples"]) * int(calibration["seqlen"])


def _inherits(arm: Arm) -> str:
    if arm.is_parent:
        return "nothing"
    if arm.label == "P_M-R_N":
        return "weights"
    if arm.kind != "sparse":
        return "shape"
    control = arm.config["model"]["init_args"]["init"]["init_args"].get("control")
    return "mask, embeddings, norms" if control == "reinit" else "mask"


def _checks(arms: list[Arm], entries: dict[str, LedgerEntry], measured: bool) -> list[BudgetCheck]:
    checks: list[BudgetCheck] = []
    parents = {a.id: a for a in arms if a.is_parent}
    for pruned in (a for a in arms if a.label == "P_M-R_N"):
        n = pruned.retrain_tokens
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
        ]
        scratch = next((a for a in partners if a.label == "S_N"), None)
        long = next((a for a in partners if a.label == "S_M+N"), None)
        parent = parents.get(pruned.parent)

        def add(check: str, left: int | None, right: int | None, involved: list[Arm | None], pair: str = pair) -> None:
            if left is None or right is None:
                status = "pending"
            elif left != right:
                status = "FAILED"
            elif not measured:
                status = "ok (planned)"
            elif all(entries[a.id].measured for a in involved if a is not None):
                status = "ok"
            else:
                status = "pending"
            checks.append(BudgetCheck(pair=pair, check=check, left=left, right=right, status=status))

        pr_train = entries[pruned.id].train_tokens
        add("P_M-R_N.train == N", pr_train, n, [pruned])
        if scratch is not None:
            s_train = entries[scratch.id].train_tokens
            add("S_N.train == N", s_train, n, [scratch])
            add("S_N.train == P_M-R_N.train", s_train, pr_train, [scratch, pruned])
        if long is not None:
            # M as the study defines it, then as the parent's run actually consumed it.
            declared_m = pruned.parent_tokens
            m_tokens = entries[parent.id].train_tokens if parent is not None else declared_m
            long_train = entries[long.id].train_tokens
            add("S_M+N.train == M + N", long_train, None if declared_m is None else declared_m + n, [long])
            add(
                "S_M+N.train == P_M.train + P_M-R_N.train",
                long_train,
                None if m_tokens is None else m_tokens + pr_train,
                [long, parent, pruned],
            )
    return checks


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
    for arm in arms:
        if arm.is_parent or arm.parent not in configs:
            continue
        if arm.kind == "sparse":
            out[arm.id] = out[arm.parent]
            continue
        init = arm.config["model"]["init_args"]["init"]["init_args"]
        try:
            plan = solve_shape(configs[arm.parent], arm.kind, ratio=arm.ratio, convention=init["convention"])
        except ValueError:
            continue
        out[arm.id] = plan.params_target.non_embedding
    return out


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
