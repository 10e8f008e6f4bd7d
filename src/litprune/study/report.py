"""The study's report: `results.csv`, `results.json`, `report.md` and the plots, all computed from the arms' records.

`report.md` has one table per method x ratio with the arms `S_N`, `P_M-R_N` and `S_M+N` (held-out loss,
validation loss, task accuracy, held-out perplexity), the comparisons with their intervals, the token ledger with
its checks, a reading and a comparison with the paper's findings. Every sentence is computed from the numbers,
never written in advance.

How a comparison is decided (`litprune.study.intervals`): both arms' losses on the same held-out windows
(`litprune.study.heldout`) are paired window by window; the paired bootstrap interval of the mean difference
decides: "beats" when the whole interval lies on one side of zero, "tie" when it contains zero. Task accuracy
differences are paired example by example the same way. With an `lr` sweep, each arm's learning rate is the one
with the lowest final validation loss (`data.val_slice`, disjoint from the held-out slice the numbers come from).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litprune.study.arms import PRUNED_LABELS, Arm
from litprune.study.heldout import heldout_values
from litprune.study.intervals import METHOD, Interval, paired_interval
from litprune.study.ledger import CHAIN_NOTE, INHERITED_MARK, INHERITED_NOTE, NOT_MEASURED, Ledger, build_ledger
from litprune.study.records import eval_result, heldout_perplexity, run_result, task_accuracy
from litprune.study.spec import StudySpec
from litprune.training.budget import paper_token_label
from litprune.utils.atomic import atomic_file, atomic_write_json, atomic_write_text

ARM_ORDER = {
    "S_N": 0,
    "S_N-D": 1,
    "P_M-R_N[prune]": 2,
    "P_M-R_N": 3,
    "P_M-RD_N[prune]": 4,
    "P_M-RD_N": 5,
    "S_M+N": 6,
}

COMPARED: dict[str, tuple[str, ...] | None] = {
    "P_M-R_N": None,  # every scratch arm of its target: S_N, S_N[<control>], S_M+N
    "P_M-RD_N": ("P_M-R_N", "S_N", "S_N-D", "S_M+N"),
    "S_N-D": ("S_N",),
}
"""Each compared arm and the arms it is compared with (None: every scratch arm of the target but `S_N-D`). The
distilled arms are compared at equal training tokens with `P_M-R_N`, `S_N` and each other, and with `S_M+N` at equal
total tokens."""

PAPER_SCRATCH_ABOVE_PARENT = {"depth": 2.50 - 2.40, "width": 2.46 - 2.40}
"""The paper's Figure 1: validation loss of its 4B scratch targets after 250B tokens (S_250, the equal-total arm of
N = 50B) minus its 8B parent's (P_200, 2.40), by granularity: what halving the model costs at equal total tokens."""


def collect_rows(spec: StudySpec, arms: list[Arm], ledger: Ledger | None = None) -> list[dict[str, Any]]:
    """One flat row per arm (finished or not): identity, budgets, parameters, validation and evaluation numbers.

    `selected` is False for an arm of an `lr` sweep that another learning rate beat on validation loss (and for
    an unfinished one while another is finished); such rows stay in results.csv but not in the comparisons.
    """
    ledger = ledger or build_ledger(spec, arms)
    entries = {e.arm: e for e in ledger.entries}
    parent_names = {arm.id: arm.group for arm in arms if arm.is_parent}
    rows = []
    for arm in arms:
        result = run_result(arm.run_dir) or {}
        run, final = result.get("run") or {}, result.get("final") or {}
        evaluation = eval_result(arm.run_dir)
        entry = entries[arm.id]
        heldout = (evaluation or {}).get("heldout_loss") or {}
        row: dict[str, Any] = {
            "arm": arm.id,
            "label": arm.label,
            "group": arm.group,
            "methods": ",".join(arm.methods),
            "kind": arm.kind,
            "ratio": arm.ratio,
            "pattern": arm.pattern,
            "parent": arm.parent,
            "parent_name": parent_names.get(arm.parent, arm.parent),
            "seed": arm.seed,
            "lr": arm.lr,
            "stage": arm.stage,
            "selected": True,
            "N": arm.retrain_tokens,
            "M": arm.parent_tokens,
            "finished": bool(result),
            "pretrain_tokens": entry.pretrain_tokens,
            "calibration_tokens": entry.calibration_tokens,
            "train_tokens": entry.train_tokens,
            "total_tokens": entry.total_tokens,
            "train_tokens_label": entry.labels["train"],
            "total_tokens_label": entry.labels["total"],
            "inherits": entry.inherits,
            "uncounted_inheritance": entry.uncounted_inheritance,
            "train_range": _range_cell(entry, "train"),
            "calibration_range": _range_cell(entry, "calibration"),
            "not_measured": ",".join(entry.not_measured),
            "flops_total": entry.flops.get("total"),
            "params_total": (run.get("parameters") or {}).get("total"),
            "params_non_embedding": (run.get("parameters") or {}).get("non_embedding"),
            "achieved_ratio": _achieved_ratio(run.get("init") or {}, arm, entry),
            "heldout_loss": heldout.get("loss"),
            "val_loss": final.get("val/loss"),
            "val_ppl": final.get("val/ppl"),
            "epochs": _epochs(result.get("data") or {}),
        }
        for task, value in task_accuracy(evaluation).items():
            row[f"task:{task}"] = value
        for source, value in heldout_perplexity(evaluation).items():
            row[f"ppl:{source}"] = value
        rows.append(row)
    _select_learning_rates(rows)
    return rows


def _select_learning_rates(rows: list[dict[str, Any]]) -> None:
    """Per arm of an `lr` sweep, keep the learning rate with the lowest final validation loss."""
    sweeps: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["lr"] is not None:
            sweeps.setdefault((row["group"], row["label"], row["N"], row["seed"]), []).append(row)
    for candidates in sweeps.values():
        done = [r for r in candidates if r["val_loss"] is not None]
        best = min(done, key=lambda r: r["val_loss"]) if done else None
        for row in candidates:
            row["selected"] = best is None or row is best


@dataclass
class Comparison:
    """A compared arm (`P_M-R_N`, or a distilled arm) against another arm of the same target and N, over every seed.

    Attributes:
        method: the method's name (with its pattern when not unstructured).
        kind: "depth", "width" or "sparse".
        ratio: the pruning ratio.
        n: the retraining budget N.
        setting: "equal training tokens" or "equal total tokens".
        scratch: the other arm's label (`S_N`, `S_N[<control>]`, `S_M+N`; for a distilled arm also `P_M-R_N`,
            `S_N-D`).
        pruned: the compared arm's rows (one per seed).
        other: the other arm's rows, in the same seed order.
        loss: the interval of held-out loss `other - compared` (positive: the compared arm has the lower loss);
            None until both sides are evaluated.
        accuracy: per task, the interval of accuracy `compared - other` (positive: the compared arm is ahead).
        reference: the compared arm's label: `P_M-R_N` (the paper's comparisons), `P_M-RD_N` or `S_N-D`.
    """

    method: str
    kind: str
    ratio: float
    n: int
    setting: str
    scratch: str
    pruned: list[dict[str, Any]]
    other: list[dict[str, Any]]
    loss: Interval | None = None
    accuracy: dict[str, Interval] = field(default_factory=dict)
    reference: str = "P_M-R_N"

    @property
    def verdict(self) -> str | None:
        """ "pruned" (the compared arm wins), "scratch" (the other arm wins) or "tie" (None without an interval)."""
        if self.loss is None:
            return None
        return {"b higher": "pruned", "a higher": "scratch", "tie": "tie"}[self.loss.verdict]

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "ratio": self.ratio,
            "N": self.n,
            "setting": self.setting,
            "compared": self.reference,
            "scratch": self.scratch,
            "pruned_arms": [r["arm"] for r in self.pruned],
            "scratch_arms": [r["arm"] for r in self.other],
            "loss_difference": None if self.loss is None else self.loss.as_dict(),
            "verdict": self.verdict,
            "accuracy_difference": {task: i.as_dict() for task, i in self.accuracy.items()},
        }


def _stages_of(row: dict[str, Any], method: str) -> str | None:
    """The stage ratios of a pruned arm pruned in stages (`"0.25-0.5"`, read from its group
    `<method>[-<pattern>]-<r1>-<r2>...`), or None for a one-shot arm."""
    suffix = row["group"].removeprefix(f"{method}-").removeprefix(f"{row['pattern']}-")
    parts = suffix.split("-")
    try:
        [float(part) for part in parts]
    except ValueError:
        return None
    return suffix if len(parts) > 1 else None


def compare_arms(spec: StudySpec, rows: list[dict[str, Any]], arms: list[Arm]) -> list[Comparison]:
    """Every comparison the study defines, with paired bootstrap intervals where both sides are evaluated."""
    records = {arm.id: eval_result(arm.run_dir) for arm in arms}
    selected = [r for r in rows if r["selected"] and r["label"] != "P_M"]
    comparisons: dict[tuple, Comparison] = {}
    for pr in (r for r in selected if r["label"] in COMPARED):
        wanted = COMPARED[pr["label"]]
        method = pr["methods"].split(",")[0]
        name = method if pr["pattern"] in (None, "unstructured") else f"{method} {pr['pattern']}"
        stages = _stages_of(pr, method)
        if stages:
            name = f"{name} in stages {stages}"
        partners = [
            r
            for r in selected
            if (r["label"] in wanted if wanted else r["label"] not in (*COMPARED, *PRUNED_LABELS))
            and r["stage"] is None  # a chain's pruning phase is part of P_M-R_N, not a scratch arm
            # a pruned partner is the same target's (a staged P_M-R_N is not a one-shot P_M-RD_N's partner)
            and (r["label"] not in PRUNED_LABELS or r["group"] == pr["group"])
            and r["N"] == pr["N"]
            and r["ratio"] == pr["ratio"]
            and r["parent"] == pr["parent"]
            and r["seed"] == pr["seed"]
            and r["pattern"] == pr["pattern"]
            and method in r["methods"].split(",")
        ]
        for other in partners:
            setting = "equal total tokens" if other["label"] == "S_M+N" else "equal training tokens"
            key = (name, pr["ratio"], pr["N"], pr["parent_name"], pr["label"], other["label"])
            item = comparisons.setdefault(
                key,
                Comparison(
                    name, pr["kind"], pr["ratio"], pr["N"], setting, other["label"], [], [], reference=pr["label"]
                ),
            )
            item.pruned.append(pr)
            item.other.append(other)
    for item in comparisons.values():
        _intervals(spec, item, records)
    order = {"equal training tokens": 0, "equal total tokens": 1}
    return sorted(
        comparisons.values(),
        key=lambda c: (c.method, c.ratio, c.n, ARM_ORDER.get(c.reference, 0), order[c.setting], c.scratch),
    )


def _intervals(spec: StudySpec, item: Comparison, records: dict[str, Any]) -> None:
    ev = spec.eval
    losses = [(heldout_values(records.get(a["arm"])), heldout_values(records.get(b["arm"]))) for a, b in _seeds(item)]
    if losses and all(a is not None and b is not None and a[0] == b[0] for a, b in losses):
        item.loss = paired_interval(
            [a[1] for a, _ in losses], [b[1] for _, b in losses], ev.resamples, ev.confidence, seed=0
        )
    tasks = set.intersection(*[set(_per_example(records.get(r["arm"]))) for r in item.pruned + item.other] or [set()])
    for task in sorted(tasks):
        pairs = [
            (_per_example(records.get(a["arm"]))[task], _per_example(records.get(b["arm"]))[task])
            for a, b in _seeds(item)
        ]
        if all(a[0] == b[0] for a, b in pairs):
            # Accuracy: higher is better, so the difference is P_M-R_N minus scratch.
            item.accuracy[task] = paired_interval(
                [b[1] for a, b in pairs], [a[1] for a, b in pairs], ev.resamples, ev.confidence, seed=0
            )


def _seeds(item: Comparison):
    return list(zip(item.pruned, item.other, strict=True))


def _per_example(record: dict[str, Any] | None) -> dict[str, tuple[list, list[float]]]:
    """`{task: (example ids, per-example values)}` of an evaluation record."""
    out = {}
    for entry in (record or {}).get("tasks", []):
        per = entry.get("per_example")
        if isinstance(per, dict) and per.get("values"):
            ids = list(per.get("doc_ids") or range(len(per["values"])))
            out[entry["task"]] = (ids, [float(v) for v in per["values"]])
    return out


def write_report(spec: StudySpec, arms: list[Arm]) -> dict[str, Path]:
    """Write results.csv, results.json, report.md and the plots into the study's out_dir; return their paths."""
    out = spec.out_path
    out.mkdir(parents=True, exist_ok=True)
    ledger = build_ledger(spec, arms)
    rows = collect_rows(spec, arms, ledger)
    comparisons = compare_arms(spec, rows, arms)
    readings = compute_readings(comparisons)
    paper = compare_with_paper(comparisons, rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_file(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_json(
        out / "results.json",
        {
            "study": spec.name,
            "config": spec.source,
            "arms": rows,
            "comparisons": [c.as_dict() for c in comparisons],
            "interval_method": METHOD,
            "ledger": ledger.as_dict(),
            "readings": readings,
            "compared_with_paper": paper,
        },
        default=str,
    )
    from litprune.study.plots import plot_study

    shown = {r["arm"] for r in rows if r["selected"] and r["seed"] == spec.seed_values[0]}
    plots = plot_study(spec, [a for a in arms if a.id in shown], out / "plots")
    report = out / "report.md"
    atomic_write_text(report, render_markdown(spec, rows, ledger, comparisons, readings, paper, plots))
    return {"report": report, "csv": out / "results.csv", "json": out / "results.json", **plots}


# -------------------------------------------------------------------------------------------------- readings
def compute_readings(comparisons: list[Comparison]) -> list[str]:
    """Sentences that state what the numbers show, each computed from the comparisons and their intervals."""
    readings = []
    for item in comparisons:
        tag = f"{item.method} at ratio {item.ratio:g}, N = {item.n:,} ({paper_token_label(item.n)}), {item.setting}"
        if item.loss is None:
            continue
        readings.append(f"{tag}: {_loss_sentence(item)}{_accuracy_sentence(item)}")
    by_target: dict[tuple, list[Comparison]] = {}
    for item in comparisons:
        if item.loss is not None and item.scratch == "S_N" and item.reference == "P_M-R_N":
            by_target.setdefault((item.method, item.ratio), []).append(item)
    for (method, ratio), items in by_target.items():
        if len(items) > 1:
            first, last = items[0], items[-1]
            readings.append(
                f"{method} at ratio {ratio:g}: the equal-training gap (S_N - P_M-R_N held-out loss) moves from "
                f"{first.loss.text()} at N = {first.n:,} to {last.loss.text()} at N = {last.n:,}"
                f" ({_trend(first.loss, last.loss)})."
            )
    return readings


def _loss_sentence(item: Comparison) -> str:
    interval = item.loss
    pct = f"{interval.confidence:.0%}"
    pruned = _mean(item.pruned, "heldout_loss")
    other = _mean(item.other, "heldout_loss")
    ref = item.reference
    values = f"held-out loss {ref} {pruned:.3f} vs {item.scratch} {other:.3f}"
    difference = f"{item.scratch} - {ref} = {interval.text()} ({pct} interval"
    difference += f", {interval.seeds} seeds, seed spread {interval.seed_spread:.3f})" if interval.seeds > 1 else ")"
    if item.verdict == "tie":
        verdict = f"{ref} and {item.scratch} tie: the interval contains zero"
    elif item.verdict == "pruned":
        verdict = f"{ref} beats {item.scratch}"
    else:
        verdict = f"{item.scratch} beats {ref}"
    flag = ""
    for label, side in ((item.reference, item.pruned), (item.scratch, item.other)):
        if not any(r["uncounted_inheritance"] for r in side):
            continue
        if any("teacher" in r["inherits"] for r in side):
            flag += (
                f" {label} learns from the parent's outputs (distillation), so it is not a from-scratch arm: its "
                "tokens exclude the M its teacher was trained on."
            )
        else:
            flag += (
                f" {label} starts from the parent's trained embeddings and norm gains, so it is not a from-scratch "
                "arm: its tokens exclude the M the parent trained those tensors on."
            )
    return f"{verdict} ({values}; {difference}).{flag}"


def _accuracy_sentence(item: Comparison) -> str:
    parts = []
    for task, interval in item.accuracy.items():
        pruned, other = _mean(item.pruned, f"task:{task}"), _mean(item.other, f"task:{task}")
        if interval.verdict == "tie":
            result = "no difference resolved"
        else:
            result = f"{item.reference} ahead" if interval.verdict == "b higher" else f"{item.scratch} ahead"
        parts.append(
            f"{task} accuracy {pruned:.3f} vs {other:.3f}, {item.reference} - {item.scratch} = {interval.text()} over "
            f"{interval.units} examples: {result}"
        )
    return f" Task: {'; '.join(parts)}." if parts else ""


def _trend(first: Interval, last: Interval) -> str:
    if last.high < first.low or last.low > first.high:
        size = "shrinks" if abs(last.mean) < abs(first.mean) else "grows"
        return f"it {size}; the intervals do not overlap"
    return "the intervals overlap, so no change is resolved"


def _capacity_lines(total: list[Comparison], rows: list[dict[str, Any]]) -> list[str]:
    """How much held-out loss the half-size scratch model gives up against the dense parent at equal total tokens,
    next to the paper's figure: when it gives up little, pruning has little capacity to preserve."""
    parents = {r["arm"]: r["heldout_loss"] for r in rows if r["label"] == "P_M" and r["heldout_loss"] is not None}
    gaps: dict[str, list[float]] = {}
    for item in total:
        for row in item.other:
            parent = parents.get(row["parent"])
            if parent is not None and row["heldout_loss"] is not None:
                gaps.setdefault(item.kind, []).append(row["heldout_loss"] - parent)
    if not gaps:
        return []
    parts = []
    for kind, values in sorted(gaps.items()):
        paper = PAPER_SCRATCH_ABOVE_PARENT.get(kind)
        reference = f" (the paper's {kind} target: {paper:+.2f})" if paper is not None else ""
        parts.append(f"{kind} {min(values):+.3f} to {max(values):+.3f}{reference}")
    text = (
        "Capacity: at equal total tokens the pruned-shape scratch models end this far from the dense parent's held-out "
        f"loss: {'; '.join(parts)}."
    )
    references = {kind: PAPER_SCRATCH_ABOVE_PARENT[kind] for kind in gaps if kind in PAPER_SCRATCH_ABOVE_PARENT}
    if references and all(max(gaps[kind]) < paper for kind, paper in references.items()):
        text += (
            f" The {' and '.join(references)} gaps are smaller than the paper's: the smaller shape learns nearly all "
            "the parent knows from the same tokens, which leaves pruning less to preserve at equal total tokens "
            "than at the paper's scale."
        )
    return [text]


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    values = [r.get(key) for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


def compare_with_paper(comparisons: list[Comparison], rows: list[dict[str, Any]]) -> list[str]:
    """The paper's two findings, each checked against this study's intervals (see docs/paper.md):

    1. at equal training tokens the pruned init beats scratch for every method, by a margin that shrinks as N
       grows;
    2. at equal total tokens sparse pruning keeps its edge, while coarse (depth, width) pruning is matched or
       beaten by scratch.
    """
    # The paper's findings are about P_M-R_N; the distilled arms' comparisons are read in their own sentences.
    decided = [c for c in comparisons if c.loss is not None and c.reference == "P_M-R_N"]
    if not decided:
        return ["No comparison is evaluated yet, so nothing can be compared with the paper."]
    lines = []
    training = [c for c in decided if c.setting == "equal training tokens" and c.scratch == "S_N"]
    if training:
        wins = [c for c in training if c.verdict == "pruned"]
        shrink: list[str] = []
        grow: list[str] = []
        for method in sorted({c.method for c in training}):
            items = sorted((c for c in training if c.method == method), key=lambda c: c.n)
            if len(items) > 1:
                (shrink if abs(items[-1].loss.mean) < abs(items[0].loss.mean) else grow).append(method)
        holds = len(wins) == len(training)
        text = (
            f"Finding 1 (equal training tokens: pruning wins): {'shown' if holds else 'not shown'} here; P_M-R_N beats "
            f"S_N in {len(wins)} of {len(training)} comparisons."
        )
        if shrink or grow:
            text += (
                f" The paper's gap shrinks with N; here the mean gap shrinks from the smallest to the largest N for "
                f"{', '.join(shrink) or 'no method'} and grows for {', '.join(grow) or 'no method'}."
            )
        lines.append(text)
    total = [c for c in decided if c.setting == "equal total tokens"]
    if total:
        coarse = [c for c in total if c.kind in ("depth", "width")]
        sparse = [c for c in total if c.kind == "sparse"]
        parts = []
        if coarse:
            matched = [c for c in coarse if c.verdict in ("scratch", "tie")]
            parts.append(
                f"coarse methods are matched or beaten by S_M+N in {len(matched)} of {len(coarse)} comparisons "
                f"({'as' if len(matched) == len(coarse) else 'unlike'} the paper)"
            )
        if sparse:
            kept = [c for c in sparse if c.verdict == "pruned"]
            parts.append(
                f"sparse methods keep their edge over S_M+N in {len(kept)} of {len(sparse)} comparisons "
                f"({'as' if len(kept) == len(sparse) else 'unlike'} the paper)"
            )
        finding = "Finding 2 (equal total tokens: sparse keeps its edge, coarse does not): "
        lines.append(finding + "; ".join(parts) + ".")
    lines += _capacity_lines(total, rows)
    parents = [r for r in rows if r["label"] == "P_M" and r["train_tokens"] and r["params_non_embedding"]]
    if parents:
        per_param = parents[0]["train_tokens"] / parents[0]["params_non_embedding"]
        lines.append(
            f"Scale: the parent has {parents[0]['params_non_embedding']:,} non-embedding parameters and read "
            f"{per_param:.1f} tokens per non-embedding parameter (the paper's Llama-3.1-8B: 6,979,588,096 and about "
            "29). At a size about 10^4 times smaller, on other data, agreement in direction is what the study can "
            "show; the size of each gap is not expected to match."
        )
    return lines


# ---------------------------------------------------------------------------------------------------- markdown
def render_markdown(
    spec: StudySpec,
    rows: list[dict[str, Any]],
    ledger: Ledger,
    comparisons: list[Comparison],
    readings: list[str],
    paper: list[str],
    plots: dict[str, Path],
) -> str:
    out = spec.out_path
    lines = [
        f"# Study `{spec.name}`: pruning vs training from scratch",
        "",
        f"Command: `litprune study --config {spec.source or '<study.yaml>'}`",
        "",
        "Arms (the paper's notation): `P_M` the parent pretrained on M tokens; `P_M-R_N` the parent pruned, then "
        "retrained on N tokens; `S_N` the pruned architecture from random init, trained on N tokens (equal training "
        "tokens); `S_M+N` the same from random init on M + N tokens (equal total tokens); `S_N[<control>]` another "
        "scratch control of a sparse method. Sparse scratch arms keep the method's mask; the paper's `reinit` "
        "control also keeps the parent's trained embeddings and norm gains (the `inherits` column of the ledger); "
        "`S_M+N` never starts from a trained tensor."
        + (
            " `P_M-RD_N` is `P_M-R_N` retrained by distillation from the parent and `S_N-D` is `S_N` distilled from "
            "the parent: both still train on N tokens, and their FLOPs include the teacher's forward passes."
            if any(r["label"] in ("P_M-RD_N", "S_N-D") for r in rows)
            else ""
        ),
        "",
        _evaluation_text(spec, rows),
        "",
    ]
    parents = [r for r in rows if r["label"] == "P_M"]
    for row in parents:
        lines.append(
            f"Parent `{row['arm']}`: {_fmt_int(row['params_total'])} parameters "
            f"({_fmt_int(row['params_non_embedding'])} non-embedding), M = {_tokens(row['train_tokens'])} tokens "
            f"({row['train_tokens_label']}), held-out loss {_fmt(row['heldout_loss'])}, validation loss "
            f"{_fmt(row['val_loss'])}."
        )
    task_columns = sorted({k for r in rows for k in r if k.startswith("task:")})
    ppl_columns = sorted({k for r in rows for k in r if k.startswith("ppl:")})
    extra = [c for c in ("seed", "lr") if any(r[c] is not None for r in rows)]
    header = [
        "arm",
        *extra,
        "N",
        "train tokens",
        "total tokens",
        "FLOPs",
        "held-out loss",
        "val loss",
        *[f"{c.split(':', 1)[1]} acc" for c in task_columns],
        *[f"{c.split(':', 1)[1]} ppl" for c in ppl_columns],
    ]
    table_head = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if parents:
        lines += ["", *table_head, *[_table_row(r, extra, task_columns, ppl_columns) for r in parents]]
    for title, items in _groups(rows):
        lines += ["", f"## {title}", "", *table_head, *[_table_row(r, extra, task_columns, ppl_columns) for r in items]]
    if any(r["uncounted_inheritance"] for r in rows):
        lines += ["", INHERITED_NOTE]
    if any(r["stage"] is not None for r in rows):
        lines += ["", CHAIN_NOTE]
    if any(r["lr"] is not None for r in rows):
        lines += [
            "",
            "Learning rates: every compared arm was trained at each value of `lr`; the tables show the one with the "
            "lowest final validation loss (on the validation slice, not the held-out one). Per arm: "
            + "; ".join(f"`{r['arm']}` {r['lr']:g}" for r in rows if r["selected"] and r["lr"] is not None)
            + ".",
        ]
    lines += ["", "## Comparisons", "", _comparison_table(comparisons), "", "## What the numbers show", ""]
    lines += [f"- {text}" for text in readings] or ["- No evaluated pair yet."]
    lines += [
        "",
        f"How a comparison is decided: {METHOD}, {spec.eval.resamples:,} resamples, {spec.eval.confidence:.0%} "
        "intervals. A comparison whose interval contains zero is a tie at this sample size; the interval covers the "
        "held-out windows (and seeds) drawn, not other training runs unless several seeds were run.",
        "",
        "## Compared with the paper",
        "",
        *[f"- {line}" for line in paper],
        "",
        "## Token and FLOP ledger",
        "",
        ledger.convention,
        "",
        ledger.to_markdown(),
        "",
        *ledger_sentences(ledger),
        "",
        "## Plots",
        "",
        "Curves: validation loss on the validation slice, with a point at step 0 (the starting model: for `P_M-R_N` "
        "the pruned parent before retraining).",
        "",
    ]
    for name, path in plots.items():
        lines.append(f"![{name}]({Path(path).relative_to(out).as_posix()})")
    return "\n".join(lines) + "\n"


def _evaluation_text(spec: StudySpec, rows: list[dict[str, Any]]) -> str:
    """Where the numbers come from: slices, windows and tokens."""
    data = spec.data
    seq_len = data.get("seq_len")
    val = data.get("val_slice", "val")
    val_size = (
        f"{data['val_tokens']:,} tokens" if data.get("val_tokens") else f"{data.get('val_max_windows', 'all')} windows"
    )
    text = (
        f"Evaluation: the held-out loss is the mean next-token loss on "
        f"{_heldout_size(spec, rows)} of slice `{spec.eval.loss_slice}`, windows of {seq_len} tokens (the training "
        f"context) spread evenly over the whole slice; every arm reads the same windows. Validation (curves, "
        f"learning-rate choice) reads {val_size} spread over slice `{val}`."
    )
    if spec.eval.tasks:
        text += f" Tasks: {', '.join(spec.eval.tasks)}, {spec.eval.limit or 'all'} examples drawn by a seeded shuffle."
    return text


def _heldout_size(spec: StudySpec, rows: list[dict[str, Any]]) -> str:
    if spec.eval.loss_tokens is None:
        return "every window"
    seq_len = spec.data.get("seq_len") or 1
    windows = spec.eval.loss_tokens // seq_len
    return f"{windows:,} windows ({windows * seq_len:,} tokens)"


def _comparison_table(comparisons: list[Comparison]) -> str:
    """One row per comparison; with several seeds, the seed count and the spread of the per-seed mean differences."""
    seeded = any(c.loss is not None and c.loss.seeds > 1 for c in comparisons)
    extra = " seeds | seed spread (sd) |" if seeded else ""
    head = (
        "| method | ratio | N | setting | arm | compared with | held-out loss, other - arm (interval) | decision | "
        "FLOPs, arm / other |"
    )
    lines = [
        head + extra,
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if seeded else ""),
    ]
    for c in comparisons:
        interval = "-" if c.loss is None else c.loss.text()
        decision = {"pruned": f"{c.reference} beats", "scratch": f"{c.scratch} beats", "tie": "tie"}
        flops = f"{_flops_text(_mean(c.pruned, 'flops_total'))} / {_flops_text(_mean(c.other, 'flops_total'))}"
        row = f"| {c.method} | {c.ratio:g} | {c.n:,} | {c.setting} | `{c.reference}` | `{c.scratch}` | {interval} | "
        row += f"{decision.get(c.verdict, 'not evaluated')} | {flops} |"
        if seeded:
            spread = c.loss.seed_spread if c.loss is not None else None
            row += f" {len(c.pruned)} | {'-' if spread is None else f'{spread:.3f}'} |"
        lines.append(row)
    return "\n".join(lines)


def _groups(rows: list[dict[str, Any]]):
    """(title, rows) per method x ratio: its pruned arms and their scratch partners, by N and arm."""
    shown = [r for r in rows if r["selected"] and r["label"] != "P_M"]
    seen: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for pr in (r for r in shown if r["label"] in PRUNED_LABELS):
        method = pr["methods"].split(",")[0]
        name = method if pr["pattern"] in (None, "unstructured") else f"{method} {pr['pattern']}"
        items = seen.setdefault((name, pr["ratio"]), [])
        for row in shown:
            if (
                (row is pr or (row["label"] not in PRUNED_LABELS and method in row["methods"].split(",")))
                and row["ratio"] == pr["ratio"]
                and row["pattern"] == pr["pattern"]
                and row not in items
            ):
                items.append(row)
    for (name, ratio), items in seen.items():
        items.sort(key=lambda r: (r["N"], r["seed"] or 0, ARM_ORDER.get(r["label"], len(ARM_ORDER)), r["label"]))
        yield f"{name}, ratio {ratio:g}", items


def _table_row(row, extra, task_columns, ppl_columns) -> str:
    total = _tokens(row["total_tokens"]) + (INHERITED_MARK if row["uncounted_inheritance"] else "")
    cells = [
        f"`{row['label']}`" if row["label"] != "P_M" else f"`P_M` ({row['arm']})",
        *[("-" if row[c] is None else f"{row[c]:g}") for c in extra],
        _fmt_int(row["N"]),
        f"{_tokens(row['train_tokens'])} ({row['train_tokens_label']})",
        total,
        _flops_text(row["flops_total"]),
        _fmt(row["heldout_loss"]),
        _fmt(row["val_loss"]),
        *[_fmt(row.get(c)) for c in task_columns],
        *[_fmt(row.get(c), 2) for c in ppl_columns],
    ]
    return "| " + " | ".join(cells) + " |"


def ledger_sentences(ledger: Ledger) -> list[str]:
    """What the ledger's checks prove, one line per outcome, naming every check that did not hold."""
    by_status: dict[str, list] = {}
    for check in ledger.checks:
        by_status.setdefault(check.status, []).append(check)
    lines = []
    if by_status.get("ok"):
        lines.append(f"- {len(by_status['ok'])} of {len(ledger.checks)} checks hold, measured from the finished runs.")
    if by_status.get("planned"):
        lines.append(
            f"- {len(by_status['planned'])} checks are planned only: the arms' configs agree with the budget "
            "definitions and slice layout; nothing is measured until the runs finish."
        )
    for status, why in (
        ("FAILED", ""),
        (NOT_MEASURED, ": a finished run's record lacks the value, so nothing is proved; they fail the study"),
        ("pending", ": an arm has not finished"),
    ):
        items = by_status.get(status, [])
        if items:
            lines.append(f"- {status}, {len(items)} of {len(ledger.checks)} checks{why}:")
        lines += [f"  - {c.pair}, `{c.check}`: {c.sides()}." for c in items]
    return lines or ["- No compared pair, so no check."]


def _tokens(value: int | None) -> str:
    return NOT_MEASURED if value is None else f"{value:,}"


def _range_cell(entry, role: str) -> str | None:
    read = entry.ranges.get(role)
    if read is not None:
        return str(read)
    return NOT_MEASURED if f"{role} range" in entry.not_measured else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _flops_text(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3g}"  # value != value: NaN, a mean of nothing


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _achieved_ratio(init: dict[str, Any], arm: Arm, entry: Any) -> float | None:
    """The pruned share of the non-embedding parameters (the overall sparsity for a sparse arm), of the ORIGINAL
    parent: the last run of a structured chain (a later stage, or continued pretraining after a learned pruning
    phase) started from an earlier run's export, so its own record would measure against that instead."""
    if arm.chain and arm.kind != "sparse":
        params, parent = entry.params_non_embedding, entry.parent_params_non_embedding
        return 1.0 - params / parent if params and parent else None
    init = init.get("sheared") or init  # a learned method's pruning phase records under its method
    achieved = init.get("achieved_ratio") or init.get("achieved")
    if isinstance(achieved, dict):
        return achieved.get("non_embedding")
    if isinstance(init.get("sparsity"), dict):
        return init["sparsity"].get("overall")
    return achieved if isinstance(achieved, float) else None


def _epochs(data: dict[str, Any]) -> float | None:
    epochs = data.get("epochs") or {}
    return next(iter(epochs.values()), None) if isinstance(epochs, dict) else None
