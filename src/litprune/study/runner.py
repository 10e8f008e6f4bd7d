"""`litprune study`: run a whole token-matched study from one YAML, resumably, and write its report.

What it does, in order:

1. Reads and checks the study YAML (`litprune.study.spec`): every problem is reported before any work.
2. Expands it into ordinary `litprune fit` configs under `<out_dir>/configs/` (`litprune.study.arms`).
3. Runs the arms in dependency order (parents, then the `P_M-R_N` / `S_N` pairs, then the `S_M+N` arms), each as
   its own process: `python -m litprune fit --config <arm>.yaml --ckpt_path last`. So an arm is an ordinary run:
   resumable on its own, launchable alone (e.g. on a cluster), with its own run directory and log
   (`<out_dir>/logs/<arm>.log`). `--workers K` runs up to K arms at a time (`run_arms`), each as soon as the arms it
   depends on have finished (the parents; in a chain, the run before: a Sheared-LLaMA pruning phase, an earlier stage
   of an iterative prune): by default one per CPU core with one thread each, or one per GPU.
   On a cluster, `--launcher slurm` or `--launcher torchrun` instead writes each arm's job script, in the same order,
   and runs nothing (`litprune.study.launchers`).
4. Evaluates every finished arm's export (`litprune.eval.run.run_eval`: the configured tasks and held-out
   perplexity; `litprune.study.heldout`: the loss of every held-out window, which the report's intervals pair),
   writing `<run dir>/eval.json`.
5. Writes the ledger, `results.csv`, `results.json`, `report.md` and the plots (`litprune.study.report`).

Resuming: rerun the same command. An arm whose `results.json` exists and whose config is unchanged (its hash is
kept in `<run dir>/study_arm.json`) is skipped; an arm that was interrupted continues from its last checkpoint
(`--ckpt_path last`), which litprune resumes bit-exactly; an arm whose config changed since it started is an
error (delete its run directory to run it again). The study's processes end with it: each arm process is
killed if the study process dies, and Ctrl-C or SIGTERM terminates every running arm's process group. A failed arm
stops new arms from starting; the running ones finish, then the study reports the failure and its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from litprune.study.arms import Arm, expand_study, write_arm_configs
from litprune.study.launchers import check_launch, check_launcher, write_launch_scripts
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
        seen = (results.get("run") or {}).get("tokens_seen")
        return ArmStatus("done", f"{seen:,} tokens" if isinstance(seen, int) else "tokens not recorded")
    if last.exists():
        return ArmStatus("partial", "resumes from checkpoints/last.ckpt")
    return ArmStatus("started", "no checkpoint yet: starts over")


def run_study(
    config: str | Path | StudySpec,
    dry_run: bool = False,
    python: str | None = None,
    evaluate: bool = True,
    echo: Any = print,
    workers: int | None = None,
    launcher: str = "local",
) -> dict[str, Any]:
    """Run (or, with `dry_run`, only plan) a study; see the module docstring.

    Args:
        config: the study YAML (or an already loaded `StudySpec`).
        dry_run: list the arms, their budgets, configs and the planned token ledger, write the configs, train nothing.
        python: interpreter for the arm processes (default: the running one).
        evaluate: evaluate finished arms (the study's `eval` settings); False skips evaluation.
        echo: where progress lines go (default `print`).
        workers: arm processes at a time (None: `default_workers`); arms still start only after the arms they
            depend on. Above 1, each arm gets OMP_NUM_THREADS=1 (unless the study's `env` sets it) and, on GPUs, its
            own `trainer.devices` GPUs through CUDA_VISIBLE_DEVICES. `local` launcher only.
        launcher: "local" runs the arms here; "slurm" and "torchrun" write the arms' job scripts, in dependency
            order, and say how to submit or start them (`litprune.study.launchers`), running nothing.

    Returns:
        A summary: `arms` (id, label, status, seconds), `ledger_ok`, and the paths of the report files (with another
        launcher: `launcher` and the `scripts` written, for slurm also `submit`).

    Raises:
        StudyError: an invalid study, `workers` or `launcher` value, an arm whose settings changed since it started,
            or an arm whose process failed (the end of its log is quoted; the arms running beside it finish first).
    """
    launcher = check_launcher(launcher)
    spec = config if isinstance(config, StudySpec) else load_study(config)
    if launcher == "local":
        workers = _check_workers(spec, default_workers(spec) if workers is None else workers)
    elif workers is not None:
        raise StudyError(
            f"--workers={workers!r} applies to --launcher local; with --launcher {launcher} every arm is a job of its "
            "own, sized by trainer.num_nodes and trainer.devices. Remove --workers."
        )
    arms = expand_study(spec)
    if launcher != "local":
        check_launch(spec, arms, launcher)  # before any file is written
    out = spec.out_path
    write_arm_configs(arms)
    statuses = {arm.id: arm_status(arm) for arm in arms}
    echo(_plan_text(spec, arms, statuses))
    planned = build_ledger(spec, arms, measured=False)
    if dry_run:
        echo("\nPlanned token ledger (" + planned.convention + "):\n" + planned.to_markdown())
    if not planned.ok:
        # Nothing is trained on a plan whose budgets or token ranges already break the study's definitions.
        raise StudyError("The planned budgets do not match their definitions:\n" + planned.to_markdown())
    if launcher != "local":
        written = write_launch_scripts(spec, arms, launcher, dry_run=dry_run, evaluate=evaluate, echo=echo)
        return {
            "dry_run": dry_run,
            "launcher": launcher,
            "arms": [_arm_summary(a, statuses[a.id]) for a in arms],
            "ledger_ok": planned.ok,
            **written,
        }
    if dry_run:
        return {"dry_run": True, "arms": [_arm_summary(a, statuses[a.id]) for a in arms], "ledger_ok": planned.ok}

    python = python or sys.executable
    (out / "logs").mkdir(parents=True, exist_ok=True)
    todo = [a for a in arms if statuses[a.id].state != "done"]
    echo(
        f"\n{len(arms) - len(todo)} of {len(arms)} arms already done; running {len(todo)}."
        + (f" Up to {workers} at a time." if workers > 1 and len(todo) > 1 else "")
    )
    timings = run_arms(
        todo,
        workers=workers,
        launch=lambda arm, slot, log: _launch_arm(arm, log, python, _arm_environment(spec, workers, slot)),
        logs=out / "logs",
        echo=echo,
        resuming={a.id for a in todo if statuses[a.id].state == "partial"},
    )
    if evaluate and spec.eval.enabled:
        _evaluate_all(spec, arms, echo)
    from litprune.study.report import write_report

    paths = write_report(spec, arms)
    ledger = build_ledger(spec, arms)
    echo(f"\nReport: {paths['report']}")
    if not ledger.ok:
        raise StudyError("Budget checks failed (see report.md):\n  " + "\n  ".join(ledger.failures()))
    statuses = {arm.id: arm_status(arm) for arm in arms}
    return {
        "dry_run": False,
        "arms": [{**_arm_summary(a, statuses[a.id]), "seconds": timings.get(a.id)} for a in arms],
        "ledger_ok": ledger.ok,
        **{k: str(v) for k, v in paths.items()},
    }


def study_command(
    *,
    config: str | None = None,
    dry_run: bool = False,
    evaluate: bool = True,
    workers: int | None = None,
    launcher: str = "local",
) -> None:
    """Run a token-matched pruning-vs-scratch study (S_N, P_M-R_N, S_M+N for every method and ratio) from one YAML.

    Arms run in dependency order as ordinary `litprune fit` runs (configs under <out_dir>/configs/, runs under
    <out_dir>/runs/), several at a time (--workers); rerunning the same command resumes: finished arms are
    skipped, an interrupted arm continues from its last checkpoint. At the end the study writes results.csv,
    results.json, report.md and plots into out_dir. Example: `litprune study --config configs/study/tiny.yaml`.

    Args:
        config: the study YAML (see configs/study/tiny.yaml and docs/study.md).
        dry_run: list the arms, budgets, configs and the planned token ledger, write the configs, train nothing.
        evaluate: evaluate every finished arm with the study's eval settings (set false to skip).
        workers: arms to train at a time, each starting once the arms it depends on have finished (default: one per
            CPU core, each arm with one thread (OMP_NUM_THREADS=1 unless the study's env sets it); on GPUs one arm
            per trainer.devices GPUs). After a failed arm no new arm starts; the running ones finish.
        launcher: where the arms run: local (here, the default), slurm (write one sbatch script per arm and
            <out_dir>/slurm/submit.sh, which submits them parents first with afterok dependencies, then a report
            job; run it with bash) or torchrun (write and print the per-node torchrun command of each arm, in
            dependency order). Job settings come from the study's launch section (time, partition, account,
            extra_sbatch, setup); see docs/study.md.
    """
    if not config:
        raise ValueError(
            "litprune study needs --config <study.yaml>, e.g. litprune study --config configs/study/tiny.yaml"
        )
    run_study(config, dry_run=dry_run, evaluate=evaluate, workers=workers, launcher=launcher)


def study_main(argv: list[str]) -> None:
    """`litprune study ...`: parse the command line (`--dry-run` is accepted as a flag) and run the study."""
    study_command(**study_arguments(argv))


def study_arguments(argv: list[str]) -> dict[str, Any]:
    """The keyword arguments of `study_command` that a `litprune study ...` command line gives (`argv` without
    `litprune study`).

    Raises:
        SystemExit: an unknown or malformed option (jsonargparse prints the usage).
    """
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
    return {key: parsed[key] for key in ("config", "dry_run", "evaluate", "workers", "launcher")}


# ---------------------------------------------------------------------------------------------------- running
def run_arms(
    arms: list[Arm],
    workers: int,
    launch: Callable[[Arm, int, IO[str]], subprocess.Popen],
    logs: Path,
    echo: Any = print,
    resuming: set[str] | frozenset[str] = frozenset(),
    poll_seconds: float = 0.1,
) -> dict[str, float]:
    """Run arm processes, up to `workers` at a time, each once the arms it depends on have finished.

    Arms start in the order given (the study's dependency order) as soon as a worker slot is free and every arm in
    their `depends_on` is done (not in `arms`, i.e. finished earlier, or finished successfully here). An arm
    succeeds when its process exits with 0 and its `results.json` exists. After a failure no new arm starts; the
    running ones finish, then the first failure is raised. On Ctrl-C, SIGTERM or any other exception the running
    arms' process groups are terminated.

    Args:
        arms: the arms to run, in dependency order.
        workers: the most arm processes at a time.
        launch: starts one arm's process: `launch(arm, slot, log)` with `slot` in `range(workers)` (free while the
            process runs, e.g. to pick a GPU) and the open log file; returns the process.
        logs: the folder of the per-arm logs (`<arm>.log`, appended to).
        echo: where progress lines go.
        resuming: ids of arms that continue from a checkpoint (the start line says "resuming").
        poll_seconds: how often running processes are checked.

    Returns:
        Seconds per finished arm id.

    Raises:
        StudyError: an arm failed (its exit code and the end of its log are quoted; arms not started are named) or an
            arm depends on one that is neither finished nor to be run.
    """
    if workers < 1:
        raise StudyError(f"workers={workers!r}: give at least 1 arm process at a time.")
    ids = {arm.id for arm in arms}
    waiting = list(arms)
    running: dict[str, _Running] = {}
    finished: set[str] = set()
    failures: list[str] = []
    timings: dict[str, float] = {}
    started = 0
    study_start = time.monotonic()
    with _terminate_on_signals():
        try:
            while waiting or running:
                while not failures and len(running) < workers:
                    arm = next((a for a in waiting if all(d in finished or d not in ids for d in a.depends_on)), None)
                    if arm is None:
                        break
                    missing = [d for d in arm.depends_on if d not in ids and run_result(arm.run_dir.parent / d) is None]
                    if missing:
                        raise StudyError(
                            f"Arm {arm.id} needs {', '.join(missing)}, which has not finished; rerun the study."
                        )
                    waiting.remove(arm)
                    started += 1
                    slot = min(set(range(workers)) - {r.slot for r in running.values()})
                    log_path = logs / f"{arm.id}.log"
                    echo(
                        f"[{started}/{len(arms)}] {arm.id} ({arm.label}, {arm.train_tokens:,} tokens): "
                        f"{'resuming' if arm.id in resuming else 'starting'}  (log: {log_path})"
                    )
                    running[arm.id] = _start(arm, slot, log_path, launch, started)
                if not running:
                    break  # only arms that wait on a failed one are left
                time.sleep(poll_seconds)
                for job in [job for job in running.values() if job.process.poll() is not None]:
                    del running[job.arm.id]
                    job.log.close()
                    seconds = time.monotonic() - job.start
                    failure = _failure(job, seconds)
                    tally = f"study: {time.monotonic() - study_start:.0f} s, {len(running)} running"
                    if failure:
                        failures.append(failure)
                        echo(
                            f"[{job.number}/{len(arms)}] {job.arm.id}: FAILED (exit code {job.process.returncode}; "
                            f"log: {job.log_path}); starting no new arms, {len(running)} still running"
                        )
                        continue
                    finished.add(job.arm.id)
                    timings[job.arm.id] = seconds
                    loss = ((run_result(job.arm.run_dir) or {}).get("final") or {}).get("val/loss")
                    echo(
                        f"[{job.number}/{len(arms)}] {job.arm.id}: done in {seconds:.0f} s"
                        + (f", val loss {loss:.4f}" if loss is not None else "")
                        + f"  ({tally})"
                    )
        except BaseException:
            _terminate([job.process for job in running.values()])
            for job in running.values():
                job.log.close()
            raise
    if waiting and not failures:
        raise StudyError(f"Arms {', '.join(a.id for a in waiting)} wait on arms that never ran; rerun the study.")
    if failures:
        unstarted = [arm.id for arm in waiting]
        raise StudyError(
            "\n\n".join(failures)
            + (f"\n\nNot started: {', '.join(unstarted)}." if unstarted else "")
            + "\nFix the cause and rerun the same command: finished arms are kept and a failed one resumes from its "
            "last checkpoint."
        )
    return timings


def default_workers(spec: StudySpec) -> int:
    """Arm processes at a time when `--workers` is not given: one per GPU (per `trainer.devices` GPUs) when the arms
    train on GPUs, else one per CPU core this process may use (each arm then gets one thread)."""
    gpus = _arm_gpus(spec)
    if gpus is not None:
        return max(1, len(gpus) // _devices_per_arm(spec))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Running:
    arm: Arm
    process: subprocess.Popen
    slot: int
    log: IO[str]
    log_path: Path
    start: float
    number: int


def _start(arm: Arm, slot: int, log_path: Path, launch: Callable, number: int) -> _Running:
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
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed when the process ends)
    try:
        process = launch(arm, slot, log)
    except BaseException:
        log.close()
        raise
    return _Running(arm, process, slot, log, log_path, time.monotonic(), number)


def _failure(job: _Running, seconds: float) -> str | None:
    """The failure message of a finished arm process, or None (and the marker records completion) if it succeeded."""
    code = job.process.returncode
    if code == 0 and run_result(job.arm.run_dir) is not None:
        atomic_write_json(
            job.arm.run_dir / MARKER,
            {
                **(read_json(job.arm.run_dir / MARKER) or {}),
                "completed": True,
                "seconds_last_attempt": round(seconds, 1),
            },
            default=str,
        )
        return None
    why = f"exit code {code}" if code != 0 else "exit code 0 but no results.json"
    tail = "\n".join(job.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
    return f"Arm {job.arm.id} failed ({why}); the end of {job.log_path}:\n{tail}"


def _launch_arm(arm: Arm, log: IO[str], python: str, environment: dict[str, str]) -> subprocess.Popen:
    command = [python, "-m", "litprune", "fit", "--config", str(arm.config_path), "--ckpt_path", "last"]
    log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
    log.flush()
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, preexec_fn=_arm_process)


def _arm_environment(spec: StudySpec, workers: int, slot: int) -> dict[str, str]:
    """The arm process's environment: the study's `env`; with several workers one thread per arm unless `env` says
    otherwise, and on GPUs the slot's own GPU(s)."""
    environment = dict(os.environ)
    if workers > 1:
        environment["OMP_NUM_THREADS"] = "1"
        gpus = _arm_gpus(spec)
        if gpus is not None:
            per_arm = _devices_per_arm(spec)
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[slot * per_arm : (slot + 1) * per_arm])
    environment.update({key: str(value) for key, value in spec.env.items()})
    return environment


def _check_workers(spec: StudySpec, workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise StudyError(f"--workers={workers!r}: give the number of arms to run at a time, 1 or more.")
    gpus = _arm_gpus(spec)
    if workers > 1 and gpus is not None and workers * _devices_per_arm(spec) > len(gpus):
        raise StudyError(
            f"--workers={workers} with trainer.devices={_devices_per_arm(spec)} needs "
            f"{workers * _devices_per_arm(spec)} GPUs, {len(gpus)} visible: use --workers "
            f"{max(1, len(gpus) // _devices_per_arm(spec))} or fewer."
        )
    return workers


def _devices_per_arm(spec: StudySpec) -> int:
    devices = spec.trainer.get("devices", 1)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def _arm_gpus(spec: StudySpec) -> list[str] | None:
    """The GPUs the arms may share (None when they train on CPU): CUDA_VISIBLE_DEVICES, or every GPU torch sees."""
    accelerator = str(spec.trainer.get("accelerator", "auto"))
    if accelerator == "cpu" or accelerator not in ("gpu", "cuda", "auto"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


@contextmanager
def _terminate_on_signals():
    """While arms run, SIGTERM and SIGHUP raise KeyboardInterrupt, so the running arms end as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminate(processes: list[subprocess.Popen], grace_seconds: float = 10.0) -> None:
    """SIGTERM each arm's process group (the arm and anything it started), then SIGKILL what is left after a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass  # already gone
        deadline = time.monotonic() + grace_seconds
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
    for process in processes:
        process.wait()


def _arm_process() -> None:
    """In the arm process, before it runs: its own process group (so the study can end it with all it started, and
    Ctrl-C reaches only the study, which then ends the arms), and death with the study process."""
    os.setpgid(0, 0)
    _die_with_parent()


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
    from litprune.eval.run import load_for_eval
    from litprune.study.heldout import heldout_loss, heldout_windows

    windows = None
    for index, arm in enumerate(pending, 1):
        start = time.monotonic()
        out = arm.run_dir / EVAL_RECORD
        if spec.eval.loss_slice is not None and windows is None:
            windows = heldout_windows(spec)
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
        if windows is not None:
            loaded = load_for_eval(arm.run_dir / "export")
            record["heldout_loss"] = heldout_loss(loaded.model, spec, windows)
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
