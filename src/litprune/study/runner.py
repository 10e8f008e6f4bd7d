"""`litprune study`: run a whole token-matched study from one YAML, resumably, and write its report.

What it does, in order:

1. Reads and checks the study YAML (`litprune.study.spec`): every problem is reported before any work.
2. Expands it into ordinary `litprune fit` configs under `<out_dir>/configs/` (`litprune.study.arms`).
3. Runs the arms in dependency order (parents, then the `P_M-R_N` / `S_N` pairs, then the `S_M+N` arms), each as
   its own process: `python -m litprune fit --config <arm>.yaml --ckpt_path last`. So an arm is an ordinary run:
   resumable on its own, launchable alone (e.g. on a cluster), with its own run directory and log
   (`<out_dir>/logs/<arm>.log`).
4. Evaluates every finished arm's export (`litprune.eval.run.run_eval`: the configured tasks and held-out
   perplexity), writing `<run dir>/eval.json`.
5. Writes the ledger, `results.csv`, `results.json`, `report.md` and the plots (`litprune.study.report`).

Resuming: rerun the same command. An arm whose `results.json` exists and whose config is unchanged (its hash is
kept in `<run dir>/study_arm.json`) is skipped; an arm that was interrupted continues from its last checkpoint
(`--ckpt_path last`), which litprune resumes bit-exactly; an arm whose config changed since it started is an
error (delete its run directory to run it again). The study's processes end with it: each arm process is
killed if the study process dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from litprune.study.arms import Arm, expand_study, write_arm_configs
from litprune.study.ledger import build_ledger
from litprune.study.records import EVAL_RECORD, MARKER, eval_result, read_json, run_result
from litprune.study.spec import StudyError, StudySpec, load_study
from litprune.training.budget import paper_token_label
from litprune.utils.atomic import atomic_write_json


@dataclass
class ArmStatus:
    """Where an arm stands on disk.

    Attributes:
        state: "done" (finished with this config), "partial" (started with this config, has a checkpoint),
            "new" (nothing yet) or "started" (started with this config, no checkpoint yet).
        detail: a human-readable note.
    """

    state: str
    detail: str = ""


def arm_status(arm: Arm) -> ArmStatus:
    """Decide whether an arm is done, resumable or new, from its run directory.

    Raises:
        StudyError: the run directory belongs to another config (the arm's settings changed since it started) or
            holds a run the study did not start; the message says what to delete.
    """
    marker = read_json(arm.run_dir / MARKER)
    results = run_result(arm.run_dir)
    last = arm.run_dir / "checkpoints" / "last.ckpt"
    if marker is None:
        if results is not None or last.exists():
            raise StudyError(
                f"Arm {arm.id}: {arm.run_dir} holds a run the study did not start (no {MARKER}). Move it away or "
                "delete it, or point out_dir at another directory."
            )
        return ArmStatus("new")
    if marker.get("config_hash") != arm.config_hash:
        raise StudyError(
            f"Arm {arm.id} was started with different settings (config hash {str(marker.get('config_hash'))[:12]} vs "
            f"{arm.config_hash[:12]} now): the study YAML changed since. Restore the settings to resume it, or delete "
            f"{arm.run_dir} to run the arm again with the new ones."
        )
    if results is not None and (arm.run_dir / "export").is_dir():
        return ArmStatus("done", f"{(results.get('run') or {}).get('tokens_seen', '?'):,} tokens")
    if last.exists():
        return ArmStatus("partial", "resumes from checkpoints/last.ckpt")
    return ArmStatus("started", "no checkpoint yet: starts over")


def run_study(
    config: str | Path | StudySpec,
    dry_run: bool = False,
    python: str | None = None,
    evaluate: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """Run (or, with `dry_run`, only plan) a study; see the module docstring.

    Args:
        config: the study YAML (or an already loaded `StudySpec`).
        dry_run: list the arms, their budgets, configs and the planned token ledger, write the configs, train nothing.
        python: interpreter for the arm processes (default: the running one).
        evaluate: evaluate finished arms (the study's `eval` settings); False skips evaluation.
        echo: where progress lines go (default `print`).

    Returns:
        A summary: `arms` (id, label, status, seconds), `ledger_ok`, and the paths of the report files.

    Raises:
        StudyError: an invalid study, an arm whose settings changed since it started, or an arm whose process failed
            (the end of its log is quoted).
    """
    spec = config if isinstance(config, StudySpec) else load_study(config)
    arms = expand_study(spec)
    out = spec.out_path
    write_arm_configs(arms)
    statuses = {arm.id: arm_status(arm) for arm in arms}
    echo(_plan_text(spec, arms, statuses))
    if dry_run:
        ledger = build_ledger(spec, arms, measured=False)
        echo("\nPlanned token ledger (" + ledger.convention + "):\n" + ledger.to_markdown())
        if not ledger.ok:
            raise StudyError("The planned budgets do not match their definitions:\n" + ledger.to_markdown())
        return {"dry_run": True, "arms": [_arm_summary(a, statuses[a.id]) for a in arms], "ledger_ok": ledger.ok}

    python = python or sys.executable
    (out / "logs").mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    todo = [a for a in arms if statuses[a.id].state != "done"]
    echo(f"\n{len(arms) - len(todo)} of {len(arms)} arms already done; running {len(todo)}.")
    study_start = time.monotonic()
    for index, arm in enumerate(todo, 1):
        for dependency in arm.depends_on:
            if run_result(out / "runs" / dependency) is None:
                raise StudyError(f"Arm {arm.id} needs {dependency}, which has not finished; rerun the study.")
        state = statuses[arm.id].state
        echo(
            f"[{index}/{len(todo)}] {arm.id} ({arm.label}, {arm.train_tokens:,} tokens): "
            f"{'resuming' if state == 'partial' else 'starting'}  (log: {out / 'logs' / (arm.id + '.log')})"
        )
        seconds = _run_arm(arm, python, out / "logs" / f"{arm.id}.log", spec.env)
        timings[arm.id] = seconds
        result = run_result(arm.run_dir) or {}
        loss = (result.get("final") or {}).get("val/loss")
        echo(
            f"      done in {seconds:.0f} s"
            + (f", val loss {loss:.4f}" if loss is not None else "")
            + f"  (study: {time.monotonic() - study_start:.0f} s)"
        )
    if evaluate and spec.eval.enabled:
        _evaluate_all(spec, arms, echo)
    from litprune.study.report import write_report

    paths = write_report(spec, arms)
    ledger = build_ledger(spec, arms)
    echo(f"\nReport: {paths['report']}")
    if not ledger.ok:
        failed = [f"{c.pair}: {c.check} ({c.left} vs {c.right})" for c in ledger.checks if c.status == "FAILED"]
        raise StudyError("Budget checks failed (see report.md):\n  " + "\n  ".join(failed))
    statuses = {arm.id: arm_status(arm) for arm in arms}
    return {
        "dry_run": False,
        "arms": [{**_arm_summary(a, statuses[a.id]), "seconds": timings.get(a.id)} for a in arms],
        "ledger_ok": ledger.ok,
        **{k: str(v) for k, v in paths.items()},
    }


def study_command(*, config: str | None = None, dry_run: bool = False, evaluate: bool = True) -> None:
    """Run a token-matched pruning-vs-scratch study (S_N, P_M-R_N, S_M+N for every method and ratio) from one YAML.

    Arms run in dependency order as ordinary `litprune fit` runs (configs under <out_dir>/configs/, runs under
    <out_dir>/runs/); rerunning the same command resumes: finished arms are skipped, an interrupted arm continues
    from its last checkpoint. At the end the study writes results.csv, results.json, report.md and plots into
    out_dir. Example: `litprune study --config configs/study/tiny.yaml`.

    Args:
        config: the study YAML (see configs/study/tiny.yaml and docs/study.md).
        dry_run: list the arms, budgets, configs and the planned token ledger, write the configs, train nothing.
        evaluate: evaluate every finished arm with the study's eval settings (set false to skip).
    """
    if not config:
        raise ValueError(
            "litprune study needs --config <study.yaml>, e.g. litprune study --config configs/study/tiny.yaml"
        )
    run_study(config, dry_run=dry_run, evaluate=evaluate)


def study_main(argv: list[str]) -> None:
    """`litprune study ...`: parse the command line (`--dry-run` is accepted as a flag) and run the study."""
    import jsonargparse

    args = []
    for i, arg in enumerate(argv):
        if arg in ("--dry-run", "--dry_run") and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
            args.append("--dry_run=true")
        elif arg.startswith("--dry-run="):
            args.append("--dry_run=" + arg.split("=", 1)[1])
        else:
            args.append(arg)
    # jsonargparse.CLI reserves `--config` for its own config files, so the parser is built from the function here.
    parser = jsonargparse.ArgumentParser(prog="litprune study")
    parser.add_function_arguments(study_command)
    parsed = parser.parse_args(args)
    study_command(**{key: parsed[key] for key in ("config", "dry_run", "evaluate")})


# ---------------------------------------------------------------------------------------------------- running
def _run_arm(arm: Arm, python: str, log_path: Path, env: dict[str, Any]) -> float:
    marker = read_json(arm.run_dir / MARKER) or {}
    atomic_write_json(
        arm.run_dir / MARKER,
        {
            "arm": arm.id,
            "label": arm.label,
            "config": str(arm.config_path),
            "config_hash": arm.config_hash,
            "started": marker.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        default=str,
    )
    command = [python, "-m", "litprune", "fit", "--config", str(arm.config_path), "--ckpt_path", "last"]
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        environment = {**os.environ, **{key: str(value) for key, value in env.items()}}
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, preexec_fn=_die_with_parent
        )
        try:
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
    seconds = time.monotonic() - start
    if code != 0 or run_result(arm.run_dir) is None:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise StudyError(
            f"Arm {arm.id} failed (exit code {code}); the end of {log_path}:\n{tail}\nFix the cause and rerun the "
            "same command: finished arms are kept and this one resumes from its last checkpoint."
        )
    atomic_write_json(
        arm.run_dir / MARKER,
        {**(read_json(arm.run_dir / MARKER) or {}), "completed": True, "seconds_last_attempt": round(seconds, 1)},
        default=str,
    )
    return seconds


def _die_with_parent() -> None:
    """In the arm process: ask Linux to kill it when the study process dies, so no orphan keeps training."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass  # no libc by that name: the arm then outlives a killed study, as any child process would


def _evaluate_all(spec: StudySpec, arms: list[Arm], echo: Any) -> None:
    settings = asdict(spec.eval)
    pending = []
    for arm in arms:
        record = eval_result(arm.run_dir)
        study = (record or {}).get("study") or {}
        if record is None or study.get("settings") != settings or study.get("config_hash") != arm.config_hash:
            pending.append(arm)
    if not pending:
        return
    import torch

    from litprune.eval.run import run_eval

    # Evaluation runs in this process: give it the thread count the arm processes get.
    threads = spec.env.get("OMP_NUM_THREADS")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        _evaluate(spec, pending, settings, run_eval, echo)
    finally:
        torch.set_num_threads(previous)


def _evaluate(spec: StudySpec, pending: list[Arm], settings: dict[str, Any], run_eval: Any, echo: Any) -> None:
    for index, arm in enumerate(pending, 1):
        start = time.monotonic()
        out = arm.run_dir / EVAL_RECORD
        record = run_eval(
            model=str(arm.run_dir / "export"),
            tasks=list(spec.eval.tasks),
            perplexity=list(spec.eval.perplexity),
            out=str(out),
            batch_size=spec.eval.batch_size,
            limit=spec.eval.limit,
            device="cpu" if spec.trainer.get("accelerator") == "cpu" else "auto",
            seq_len=spec.eval.seq_len,
            max_windows=spec.eval.max_windows,
            max_examples=spec.eval.max_examples,
        )
        record["study"] = {"settings": settings, "config_hash": arm.config_hash}
        atomic_write_json(out, record, default=str)
        echo(f"[eval {index}/{len(pending)}] {arm.id}: {time.monotonic() - start:.0f} s")


# ---------------------------------------------------------------------------------------------------- display
def _plan_text(spec: StudySpec, arms: list[Arm], statuses: dict[str, ArmStatus]) -> str:
    lines = [f"Study {spec.name!r}: {len(arms)} arms, out_dir {spec.out_path}", ""]
    width = max(len(a.id) for a in arms)
    lines.append(f"{'arm'.ljust(width)}  {'label':<24} {'train tokens':>16} {'(paper)':>8}  {'status':<8} config")
    for arm in arms:
        status = statuses[arm.id]
        lines.append(
            f"{arm.id.ljust(width)}  {arm.label:<24} {arm.train_tokens:>16,} {paper_token_label(arm.train_tokens):>8}  "
            f"{status.state:<8} {arm.config_path}"
        )
    return "\n".join(lines)


def _arm_summary(arm: Arm, status: ArmStatus) -> dict[str, Any]:
    return {
        "id": arm.id,
        "label": arm.label,
        "train_tokens": arm.train_tokens,
        "status": status.state,
        "config": str(arm.config_path),
        "run_dir": str(arm.run_dir),
        "depends_on": list(arm.depends_on),
    }
