"""The study's report: `results.csv`, `results.json`, `report.md` and the plots, all computed from the arms' records.

`report.md` has one table per method x ratio with the arms `S_N`, `P_M-R_N` and `S_M+N` (validation loss,
perplexity, task accuracy, held-out perplexity), the token ledger with its checks, and a short reading. The
reading is computed from the numbers, never written in advance: for each pair it states which arm is ahead and by
how much at equal training tokens and at equal total tokens, calls a difference below `tie_threshold` nats (or,
for accuracy, below two standard errors) a tie, and says how the gap moves with N and with the ratio when the
study has more than one of them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from litprune.study.arms import Arm
from litprune.study.ledger import NOT_MEASURED, Ledger, build_ledger
from litprune.study.records import eval_result, heldout_perplexity, run_result, task_accuracy
from litprune.study.spec import StudySpec
from litprune.training.budget import paper_token_label
from litprune.utils.atomic import atomic_file, atomic_write_json, atomic_write_text

ARM_ORDER = {"S_N": 0, "P_M-R_N": 1, "S_M+N": 2}


def collect_rows(spec: StudySpec, arms: list[Arm], ledger: Ledger | None = None) -> list[dict[str, Any]]:
    """One flat row per arm (finished or not): identity, budgets, parameters, validation and evaluation numbers."""
    ledger = ledger or build_ledger(spec, arms)
    entries = {e.arm: e for e in ledger.entries}
    rows = []
    for arm in arms:
        result = run_result(arm.run_dir) or {}
        run, final = result.get("run") or {}, result.get("final") or {}
        evaluation = eval_result(arm.run_dir)
        entry = entries[arm.id]
        row: dict[str, Any] = {
            "arm": arm.id,
            "label": arm.label,
            "group": arm.group,
            "methods": ",".join(arm.methods),
            "kind": arm.kind,
            "ratio": arm.ratio,
            "pattern": arm.pattern,
            "parent": arm.parent,
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
            "train_range": _range_cell(entry, "train"),
            "calibration_range": _range_cell(entry, "calibration"),
            "not_measured": ",".join(entry.not_measured),
            "flops_total": entry.flops.get("total"),
            "params_total": (run.get("parameters") or {}).get("total"),
            "params_non_embedding": (run.get("parameters") or {}).get("non_embedding"),
            "achieved_ratio": _achieved_ratio(run.get("init") or {}),
            "val_loss": final.get("val/loss"),
            "val_ppl": final.get("val/ppl"),
            "epochs": _epochs(result.get("data") or {}),
        }
        for task, value in task_accuracy(evaluation).items():
            row[f"task:{task}"] = value
        for entry_task in (evaluation or {}).get("tasks", []):
            if entry_task.get("stderr") is not None:
                row[f"task_stderr:{entry_task['task']}"] = entry_task["stderr"]
        for source, value in heldout_perplexity(evaluation).items():
            row[f"ppl:{source}"] = value
        rows.append(row)
    return rows


def write_report(spec: StudySpec, arms: list[Arm]) -> dict[str, Path]:
    """Write results.csv, results.json, report.md and the plots into the study's out_dir; return their paths."""
    out = spec.out_path
    out.mkdir(parents=True, exist_ok=True)
    ledger = build_ledger(spec, arms)
    rows = collect_rows(spec, arms, ledger)
    readings = compute_readings(rows, spec.tie_threshold)
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
            "ledger": ledger.as_dict(),
            "readings": readings,
        },
        default=str,
    )
    from litprune.study.plots import plot_study

    plots = plot_study(spec, arms, out / "plots")
    report = out / "report.md"
    atomic_write_text(report, render_markdown(spec, rows, ledger, readings, plots))
    return {"report": report, "csv": out / "results.csv", "json": out / "results.json", **plots}


# -------------------------------------------------------------------------------------------------- readings
def compute_readings(rows: list[dict[str, Any]], tie: float) -> list[str]:
    """Sentences that state what the numbers show, each computed from them (see the module docstring)."""
    readings: list[str] = []
    gaps_train: dict[tuple[str, float], list[tuple[int, float]]] = {}
    total_wins: dict[str, list[bool]] = {}
    for method, ratio, n, pr, s_n, s_long in _pairs(rows):
        tag = f"{method} at ratio {ratio:g}, N = {n:,} ({paper_token_label(n)})"
        if pr.get("val_loss") is None:
            continue
        if s_n is not None and s_n.get("val_loss") is not None:
            gap = s_n["val_loss"] - pr["val_loss"]
            gaps_train.setdefault((method, ratio), []).append((n, gap))
            readings.append(
                f"{tag}, equal training tokens: {_compare('P_M-R_N', pr, 'S_N', s_n, tie)}"
                + _accuracy_note(pr, s_n, "P_M-R_N", "S_N")
            )
        if s_long is not None and s_long.get("val_loss") is not None:
            gap = s_long["val_loss"] - pr["val_loss"]
            total_wins.setdefault(method, []).append(gap > tie)
            readings.append(
                f"{tag}, equal total tokens ({_tokens(s_long['train_tokens'])} = M + N): "
                f"{_compare('P_M-R_N', pr, 'S_M+N', s_long, tie)}" + _accuracy_note(pr, s_long, "P_M-R_N", "S_M+N")
            )
    for (method, ratio), gaps in gaps_train.items():
        if len(gaps) > 1:
            (n0, g0), (n1, g1) = gaps[0], gaps[-1]
            trend = "shrinks" if abs(g1) < abs(g0) else "grows"
            readings.append(
                f"{method} at ratio {ratio:g}: the equal-training gap (S_N - P_M-R_N validation loss) {trend} from "
                f"{g0:+.3f} at N = {n0:,} to {g1:+.3f} at N = {n1:,}."
            )
    by_method: dict[str, list[tuple[float, float]]] = {}
    for (method, ratio), gaps in gaps_train.items():
        by_method.setdefault(method, []).append((ratio, gaps[-1][1]))
    for method, points in by_method.items():
        if len(points) > 1:
            points.sort()
            (r0, g0), (r1, g1) = points[0], points[-1]
            trend = "shrinks" if abs(g1) < abs(g0) else "grows"
            readings.append(
                f"{method}: at the largest N, the equal-training gap {trend} from {g0:+.3f} at ratio {r0:g} to "
                f"{g1:+.3f} at ratio {r1:g}."
            )
    if total_wins:
        keeps = sorted(m for m, wins in total_wins.items() if all(wins))
        loses = sorted(m for m, wins in total_wins.items() if not any(wins))
        mixed = sorted(set(total_wins) - set(keeps) - set(loses))
        summary = []
        if keeps:
            summary.append(f"pruning keeps its edge at equal total tokens for {', '.join(keeps)}")
        if loses:
            summary.append(f"scratch matches or beats pruning at equal total tokens for {', '.join(loses)}")
        if mixed:
            summary.append(f"the equal-total comparison depends on ratio or N for {', '.join(mixed)}")
        readings.append("Overall: " + "; ".join(summary) + ".")
    return readings


def _pairs(rows: list[dict[str, Any]]):
    """(method, ratio, N, P_M-R_N row, S_N row, S_M+N row) for every pruned arm."""
    for pr in rows:
        if pr["label"] != "P_M-R_N":
            continue
        method = pr["methods"].split(",")[0]
        partners = [
            r
            for r in rows
            if r["N"] == pr["N"]
            and r["ratio"] == pr["ratio"]
            and r["parent"] == pr["parent"]
            and r["pattern"] == pr["pattern"]
            and method in r["methods"].split(",")
        ]
        s_n = next((r for r in partners if r["label"] == "S_N"), None)
        s_long = next((r for r in partners if r["label"] == "S_M+N"), None)
        name = method if pr["pattern"] in (None, "unstructured") else f"{method} {pr['pattern']}"
        yield name, pr["ratio"], pr["N"], pr, s_n, s_long


def _compare(name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any], tie: float) -> str:
    la, lb = a["val_loss"], b["val_loss"]
    gap = lb - la
    if abs(gap) < tie:
        return (
            f"{name_a} and {name_b} are within {tie:g} nats of each other ({la:.3f} vs {lb:.3f} validation loss), "
            "a tie at this scale."
        )
    winner, loser = (name_a, name_b) if gap > 0 else (name_b, name_a)
    return f"{winner} beats {loser} by {abs(gap):.3f} nats of validation loss ({name_a} {la:.3f} vs {name_b} {lb:.3f})."


def _accuracy_note(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    notes = []
    for key in a:
        if not key.startswith("task:") or b.get(key) is None:
            continue
        task = key.split(":", 1)[1]
        va, vb = a[key], b[key]
        se = math.hypot(a.get(f"task_stderr:{task}") or 0.0, b.get(f"task_stderr:{task}") or 0.0)
        if se and abs(va - vb) < 2 * se:
            notes.append(f"{task} accuracy {va:.3f} vs {vb:.3f}, within two standard errors")
        else:
            better = name_a if va > vb else name_b
            notes.append(f"{task} accuracy {va:.3f} vs {vb:.3f} ({better} ahead)")
    text = "; ".join(notes)
    return f" Task {text}." if notes else ""


# ---------------------------------------------------------------------------------------------------- markdown
def render_markdown(spec: StudySpec, rows, ledger: Ledger, readings: list[str], plots: dict[str, Path]) -> str:
    out = spec.out_path
    lines = [
        f"# Study `{spec.name}`: pruning vs training from scratch",
        "",
        f"Command: `litprune study --config {spec.source or '<study.yaml>'}`",
        "",
        "Arms (the paper's notation): `P_M` the parent pretrained on M tokens; `P_M-R_N` the parent pruned, then "
        "retrained on N tokens; `S_N` the pruned architecture from random init, trained on N tokens (equal training "
        "tokens); `S_M+N` the same from random init on M + N tokens (equal total tokens). Sparse scratch arms keep "
        "the method's mask (see the `inherits` column of the ledger).",
        "",
    ]
    parents = [r for r in rows if r["label"] == "P_M"]
    for row in parents:
        lines.append(
            f"Parent `{row['arm']}`: {_fmt_int(row['params_total'])} parameters "
            f"({_fmt_int(row['params_non_embedding'])} non-embedding), M = {_tokens(row['train_tokens'])} tokens "
            f"({row['train_tokens_label']}), validation loss {_fmt(row['val_loss'])}, perplexity "
            f"{_fmt(row['val_ppl'], 2)}."
        )
    task_columns = sorted({k for r in rows for k in r if k.startswith("task:")})
    ppl_columns = sorted({k for r in rows for k in r if k.startswith("ppl:")})
    header = [
        "arm",
        "N",
        "train tokens",
        "total tokens",
        "val loss",
        "val ppl",
        *[f"{c.split(':', 1)[1]} acc" for c in task_columns],
        *[f"{c.split(':', 1)[1]} ppl" for c in ppl_columns],
    ]
    if parents:
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [_table_row(r, task_columns, ppl_columns) for r in parents]
    for method, ratio, items in _groups(rows):
        lines += ["", f"## {method}, ratio {ratio:g}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [_table_row(r, task_columns, ppl_columns) for r in items]
    lines += ["", "## What the numbers show", ""]
    lines += [f"- {text}" for text in readings] or ["- No finished pair yet."]
    lines += [
        "",
        f"A difference below {spec.tie_threshold:g} nats of validation loss is called a tie; each arm is a single "
        "seed, so smaller differences are not evidence.",
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
    ]
    for name, path in plots.items():
        lines.append(f"![{name}]({Path(path).relative_to(out).as_posix()})")
    return "\n".join(lines) + "\n"


def _groups(rows):
    seen: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for method, ratio, _n, pr, s_n, s_long in _pairs(rows):
        items = seen.setdefault((method, ratio), [])
        for row in (s_n, pr, s_long):
            if row is not None and row not in items:
                items.append(row)
    for (method, ratio), items in seen.items():
        items.sort(key=lambda r: (r["N"], ARM_ORDER.get(r["label"], 3)))
        yield method, ratio, items


def _table_row(row, task_columns, ppl_columns) -> str:
    cells = [
        f"`{row['label']}`" if row["label"] != "P_M" else f"`P_M` ({row['arm']})",
        _fmt_int(row["N"]),
        f"{_tokens(row['train_tokens'])} ({row['train_tokens_label']})",
        _tokens(row["total_tokens"]),
        _fmt(row["val_loss"]),
        _fmt(row["val_ppl"], 2),
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


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _achieved_ratio(init: dict[str, Any]) -> float | None:
    achieved = init.get("achieved_ratio") or init.get("achieved")
    if isinstance(achieved, dict):
        return achieved.get("non_embedding")
    if isinstance(init.get("sparsity"), dict):
        return init["sparsity"].get("overall")
    return achieved if isinstance(achieved, float) else None


def _epochs(data: dict[str, Any]) -> float | None:
    epochs = data.get("epochs") or {}
    return next(iter(epochs.values()), None) if isinstance(epochs, dict) else None
