"""The study's figures (matplotlib, Agg backend: PNG files, no display needed), after the paper's Figure 1.

- `loss_vs_training_tokens.png` (Figure 1, left): per method, validation loss against the arm's own training
  tokens for `P_M-R_N` (solid) and `S_N` (dashed), one curve per N from `metrics.jsonl`, with the final values
  of every N marked, so the equal-training-budget gap reads off vertically.
  A chain's `P_M-R_N` (a learned method: pruning phase, then continued pretraining) is drawn after its pruning
  phase (`P_M-R_N[prune]`, dotted), from the tokens that phase trained on. Distilled arms, when the study has
  them: `P_M-RD_N` (purple, solid) and `S_N-D` (red, dashed).
- `equal_total_budget.png` (Figure 1, right): per method, validation loss against *total* tokens: the parent's
  curve from 0 to M, `P_M-R_N` continuing from M to M + N, and `S_M+N` from 0 to M + N, so the equal-total
  comparison is the vertical gap at the right end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litprune.study.arms import PRUNED_LABELS, Arm
from litprune.study.records import loss_curve, run_result
from litprune.study.spec import StudySpec


def plot_study(spec: StudySpec, arms: list[Arm], out_dir: Path) -> dict[str, Path]:
    """Draw both figures from the finished arms; return `{name: path}` of the PNGs written."""
    from litprune.utils.extras import require

    matplotlib = require("matplotlib", "study", "Drawing the study's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {arm.id: _curve(arm) for arm in arms}
    # A chain's last run continues where its earlier runs stopped: its curve starts at their tokens.
    by_id = {arm.id: arm for arm in arms}
    for arm in arms:
        offset = sum(by_id[i].train_tokens for i in arm.chain if i in by_id)
        if offset:
            curves[arm.id] = [(offset + tokens, value) for tokens, value in curves[arm.id]]
    groups = _method_groups(arms)
    if not groups:
        return {}
    paths = {}
    paths["loss_vs_training_tokens"] = _figure(
        plt, groups, out_dir / "loss_vs_training_tokens.png", lambda ax, items: _left_panel(ax, items, curves)
    )
    parents = {arm.id: arm for arm in arms if arm.is_parent}
    paths["equal_total_budget"] = _figure(
        plt, groups, out_dir / "equal_total_budget.png", lambda ax, items: _right_panel(ax, items, curves, parents)
    )
    return paths


def _curve(arm: Arm) -> list[tuple[int, float]]:
    run = (run_result(arm.run_dir) or {}).get("run") or {}
    per_step = run.get("tokens_per_step")
    if not per_step:
        return []
    return loss_curve(arm.run_dir, int(per_step), run.get("steps"))


def _method_groups(arms: list[Arm]) -> dict[str, list[Arm]]:
    """Arms per pruned target (`<method>-<ratio>`), each with its scratch partners."""
    groups: dict[str, list[Arm]] = {}
    for pruned in (a for a in arms if a.label in PRUNED_LABELS):
        items = groups.setdefault(pruned.group, [])
        method = pruned.methods[0]
        for arm in arms:
            if (
                arm is pruned
                or (
                    not arm.is_parent
                    and arm.label not in PRUNED_LABELS
                    and method in arm.methods
                    and arm.ratio == pruned.ratio
                    and arm.pattern == pruned.pattern
                    and arm.parent == pruned.parent
                )
            ) and arm not in items:
                items.append(arm)
    return groups


def _figure(plt: Any, groups: dict[str, list[Arm]], path: Path, draw) -> Path:
    count = len(groups)
    cols = min(3, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, items) in zip(axes.flat, groups.items(), strict=False):
        draw(ax, items)
        ax.set_title(name)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _left_panel(ax: Any, items: list[Arm], curves: dict[str, list[tuple[int, float]]]) -> None:
    finals: dict[str, list[tuple[int, float]]] = {}
    colors = {"P_M-R_N": "tab:blue", "S_N": "tab:orange", "P_M-RD_N": "tab:purple", "S_N-D": "tab:red"}
    for arm in sorted(items, key=lambda a: a.retrain_tokens or 0):
        base = arm.label.split("[")[0]
        if base not in colors:
            continue
        curve = curves.get(arm.id) or []
        if not curve:
            continue
        xs, ys = zip(*curve, strict=True)
        style = "-" if arm.label in ("P_M-R_N", "P_M-RD_N") else ("--" if arm.label in ("S_N", "S_N-D") else ":")
        ax.plot(xs, ys, style, color=colors[base], alpha=0.6, label=f"{arm.label}, N={arm.retrain_tokens:,}")
        finals.setdefault(arm.label, []).append(curve[-1])
    for label, points in finals.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, "o", color=colors[label.split("[")[0]], markersize=6)
    ax.set_xlabel("training tokens")


def _right_panel(ax: Any, items: list[Arm], curves, parents: dict[str, Arm]) -> None:
    pruned = [a for a in items if a.label == "P_M-R_N"]
    longs = [a for a in items if a.label == "S_M+N"]
    drawn_parent = False
    for arm in sorted(pruned, key=lambda a: a.retrain_tokens or 0):
        parent = parents.get(arm.parent)
        offset = arm.parent_tokens or 0
        if parent is not None and curves.get(parent.id) and not drawn_parent:
            xs, ys = zip(*curves[parent.id], strict=True)
            ax.plot(xs, ys, "-", color="gray", label="P_M (parent)")
            drawn_parent = True
            offset = curves[parent.id][-1][0]
        curve = curves.get(arm.id) or []
        if curve:
            xs, ys = zip(*curve, strict=True)
            ax.plot([offset + x for x in xs], ys, "-", color="tab:blue", label=f"P_M-R_N, N={arm.retrain_tokens:,}")
            ax.plot([offset + xs[-1]], [ys[-1]], "o", color="tab:blue")
    for arm in sorted(longs, key=lambda a: a.retrain_tokens or 0):
        curve = curves.get(arm.id) or []
        if curve:
            xs, ys = zip(*curve, strict=True)
            ax.plot(xs, ys, "--", color="tab:green", label=f"S_M+N, M+N={arm.train_tokens:,}")
            ax.plot([xs[-1]], [ys[-1]], "s", color="tab:green")
    ax.set_xlabel("total tokens (parent pretraining + own training)")
