"""`litprune study --launcher slurm|torchrun`: job scripts that run a study's arms on a cluster, parents first.

The default launcher, `local` (`litprune.study.runner.run_study`), runs every arm as a child process of the study.
On a cluster each arm is a multi-node job of its own, so these launchers only write scripts:

- `slurm`: one `<out_dir>/slurm/<arm>.sbatch` per arm (`--nodes` = the arm's `trainer.num_nodes`,
  `--ntasks-per-node` and `--gpus-per-node` = its `trainer.devices`, then `srun litprune fit --config <arm>.yaml
  --ckpt_path last`: srun starts one task per device and Lightning's SLURM environment gives each its rank); a
  `report.sbatch` that runs `litprune study --config <study> --launcher local` once every arm has finished (it finds
  them done, evaluates them and writes the report); and `submit.sh`, which submits the arms in dependency order,
  each with `--dependency=afterok:<job ids of the arms it depends on>` (ids from `sbatch --parsable`), then the
  report job after all of them. Job logs go to `<out_dir>/logs/<arm>.<job id>.log`.
- `torchrun`: one `<out_dir>/torchrun/<arm>.sh` per arm, started on each of the arm's nodes with `NODE_RANK` and
  `MASTER_ADDR` set (`torchrun --nnodes N --nproc-per-node D --node-rank $NODE_RANK ... -m litprune fit ...`);
  the commands are printed in dependency order.

Pruning: `litprune fit` refuses a pruning init (`StructuredPrune`, `SparsePrune`: the `P_M-R_N` arms and the
sparse scratch arms, which draw the method's mask) in a run of several processes, since every rank would load and
prune the parent. Such an arm's parent is pruned once, in one process, by `litprune prune --config <arm>.yaml --out
<run dir>/pruned`, and the arm trains from `<out_dir>/configs/<arm>.from_pruned.yaml`: its config with the init
replaced by `FromPretrained(<run dir>/pruned)` (`from_pruned_config`), which hands over the weights, a sparse
method's masks and the pruning record (calibration tokens included, for the ledger). In a SLURM job the batch script
prunes on the job's first node before `srun` starts the training tasks (skipped once `pruned/` exists); with
torchrun, `<out_dir>/torchrun/<arm>.prune.sh` runs once on one node before the arm's nodes start. A run of one
process prunes inside `litprune fit`, as locally.

The study YAML's `launch` section (`litprune.study.spec.LaunchSpec`) sets the time limit, partition, account,
further sbatch options and the setup lines every job runs first (e.g. activating the environment).

Design choices:
- Nothing is submitted here: the user runs `bash <out_dir>/slurm/submit.sh`, so a dry run and a real run write the
  same files and the scheduler stays in the user's hands.
- Every arm script keeps the local runner's contract for its run directory (`runner.arm_status`), so the final
  local study sees each arm as its own: before the first start the script writes the study marker
  (`study_arm.json`, with the config hash); an arm already finished with this config exits 0 at once; an arm started
  with other settings, or a run directory the study did not start, is refused with the same advice as locally.
- `submit.sh` does not submit finished arms: after a failure or a time limit, rerun it and only what is left is
  submitted; each of those arms resumes from its last checkpoint (`--ckpt_path last`).
- Paths in the scripts are absolute and the jobs start in the directory the scripts were written from, where the
  study's relative paths (`out_dir`, the arms' run directories) resolve. Scripts are written atomically.
"""

from __future__ import annotations

import copy
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from litprune.inits.pruned import PRUNING_RECORD
from litprune.study.arms import Arm
from litprune.study.records import MARKER
from litprune.study.spec import StudyError, StudySpec
from litprune.utils.atomic import atomic_write_text
from litprune.utils.suggest import did_you_mean

LAUNCHERS: tuple[str, ...] = ("local", "slurm", "torchrun")
"""How `litprune study` runs the arms: here (`local`, the default), or by writing SLURM or torchrun job scripts."""

SUBMIT_SCRIPT = "submit.sh"
"""The script under `<out_dir>/slurm/` that submits every arm job and the report job."""

FROM_PRETRAINED = "litprune.inits.FromPretrained"
"""The init an arm of several processes trains from once its parent has been pruned by `litprune prune`."""

PRUNED_DIR = "pruned"
"""Where in an arm's run directory `litprune prune` writes the pruned model (the folder its own error suggests)."""

REPORT_JOB = "report"
"""The name of the final SLURM job (`<out_dir>/slurm/report.sbatch`): evaluation and report once every arm is done."""


def check_launcher(launcher: object) -> str:
    """Return `launcher` if it is one of `LAUNCHERS`.

    Raises:
        StudyError: an unknown launcher; the message names it, the close match and the choices.
    """
    if isinstance(launcher, str) and launcher in LAUNCHERS:
        return launcher
    hint = did_you_mean(launcher, LAUNCHERS, cutoff=0.5)
    raise StudyError(
        f"--launcher={launcher!r} is not a launcher.{hint} Choose local (run the arms here, the default), slurm "
        "(write sbatch scripts and submit.sh) or torchrun (write the per-node torchrun commands)."
    )


@dataclass(frozen=True)
class ArmJob:
    """One arm as a distributed job: where it runs.

    Attributes:
        arm: the arm.
        nodes: nodes of the job (the arm's `trainer.num_nodes`).
        devices: processes per node, one per device (the arm's `trainer.devices`).
        gpus: whether the devices are GPUs (`trainer.accelerator` is not `cpu`), so the job asks for them.
        prune: whether the arm's init prunes the parent (`StructuredPrune`, `SparsePrune`) in a run of several
            processes, which `litprune fit` refuses: the parent is then pruned once, in one process, by
            `litprune prune` into `<run dir>/pruned`, and the arm trains from there (`from_pruned_config`).
    """

    arm: Arm
    nodes: int
    devices: int
    gpus: bool
    prune: bool = False


def arm_jobs(arms: list[Arm], launcher: str) -> list[ArmJob]:
    """Each arm's job shape, read from its own trainer settings (a parent may have its own `trainer`).

    Raises:
        StudyError: `trainer.devices` or `trainer.num_nodes` of some arm is not a positive integer (e.g. "auto"):
            a job script must say how many nodes and processes to start. Every bad value is named with its arms.
    """
    jobs, bad = [], {}
    for arm in arms:
        trainer = arm.config.get("trainer") or {}
        shape = {key: trainer.get(key, 1) for key in ("num_nodes", "devices")}
        wrong = [key for key, v in shape.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        for key in wrong:
            bad.setdefault(f"trainer.{key}={shape[key]!r}", []).append(arm.id)
        if not wrong:
            gpus = str(trainer.get("accelerator", "auto")) != "cpu"
            prune = prunes_parent(arm) and shape["num_nodes"] * shape["devices"] > 1
            jobs.append(ArmJob(arm, nodes=shape["num_nodes"], devices=shape["devices"], gpus=gpus, prune=prune))
    if bad:
        listing = "; ".join(f"{value} (arms {', '.join(ids)})" for value, ids in bad.items())
        raise StudyError(
            f"--launcher {launcher} writes jobs with a fixed number of nodes and processes per node, but {listing}. "
            "Set trainer.devices to the devices per node (e.g. devices: 8) and trainer.num_nodes to the nodes per arm "
            "(default 1), as integers, in the study YAML (or in a parent's trainer)."
        )
    return jobs


def prunes_parent(arm: Arm) -> bool:
    """Whether the arm's init loads the parent and prunes it (`StructuredPrune`, `SparsePrune`; their
    `prunes_parent`): the pruned arms and the sparse scratch arms, which draw the method's mask."""
    from litprune.inits import SparsePrune, StructuredPrune

    class_path = str(arm.config["model"]["init_args"]["init"]["class_path"])
    return class_path.rpartition(".")[2] in (StructuredPrune.__name__, SparsePrune.__name__)


def from_pruned_config(arm: Arm, pruned: Path) -> dict[str, Any]:
    """The arm's fit config with its pruning init replaced by `FromPretrained(pruned)`: the directory
    `litprune prune --config <arm>.yaml --out <pruned>` writes (the pruned weights, a sparse method's masks, which the
    arm's `SparseMask(mask_source: module)` keeps, and the pruning record with its calibration tokens)."""
    config = copy.deepcopy(arm.config)
    config["model"]["init_args"]["init"] = {"class_path": FROM_PRETRAINED, "init_args": {"path": str(pruned)}}
    return config


def check_launch(spec: StudySpec, arms: list[Arm], launcher: str) -> list[ArmJob]:
    """Everything `write_launch_scripts` needs, checked before any file is written: the arms' job shapes.

    Raises:
        StudyError: `launcher` is "local" or unknown, the study was not read from a file, or an arm has no integer
            `trainer.devices` / `trainer.num_nodes`.
    """
    launcher = check_launcher(launcher)
    if launcher == "local":
        raise StudyError("--launcher local runs the arms here (litprune.study.runner.run_study); it writes no scripts.")
    if not spec.source:
        raise StudyError(
            f"--launcher {launcher} needs the study read from a file, since the jobs rerun it: pass "
            "--config <study.yaml> (or load_study(path))."
        )
    return arm_jobs(arms, launcher)


def write_launch_scripts(
    spec: StudySpec,
    arms: list[Arm],
    launcher: str,
    dry_run: bool = False,
    evaluate: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """Write the job scripts of `launcher` ("slurm" or "torchrun") for `arms` (in dependency order) and say how to run
    them; nothing is submitted or started.

    Args:
        spec: the study, read from a file (the report job and the printed commands rerun it).
        arms: the study's arms in dependency order (`expand_study`), their configs already written.
        launcher: "slurm" or "torchrun".
        dry_run: only changes what is printed (what would be submitted); the same scripts are written.
        evaluate: whether the report job evaluates the arms (`--evaluate false` otherwise).
        echo: where the instructions go.

    Returns:
        `scripts` (every script written, in submission order), and for slurm `submit` (the submit script).

    Raises:
        StudyError: an unknown launcher, a study not read from a file, an arm without integer nodes and devices,
            or a path with whitespace (sbatch options cannot hold it).
    """
    jobs = check_launch(spec, arms, launcher)
    where = ScriptPaths(spec)
    for job in jobs:
        if job.prune:
            header = (
                f"# {job.arm.label} of study arm {job.arm.id}, trained from its parent pruned once by `litprune "
                f"prune`\n# (written by `litprune study --launcher {launcher}`; the study's own config: "
                f"{job.arm.config_path}).\n"
            )
            config = from_pruned_config(job.arm, where.pruned(job.arm))
            atomic_write_text(where.fit_config(job), header + yaml.safe_dump(config, sort_keys=False))
    if launcher == "slurm":
        return _write_slurm(spec, jobs, where, dry_run, evaluate, echo)
    return _write_torchrun(spec, jobs, where, dry_run, evaluate, echo)


# ---------------------------------------------------------------------------------------------------------- slurm
def slurm_arm_script(spec: StudySpec, job: ArmJob, where: ScriptPaths) -> str:
    """The sbatch script of one arm: its nodes and devices, the study's `launch` settings, the run-directory guard,
    the setup lines and `srun litprune fit --config <arm>.yaml --ckpt_path last` (for an arm whose parent is pruned
    once ahead: `litprune prune` on the job's first node, then `srun` of the `from_pruned` config)."""
    arm = job.arm
    lines = [
        "#!/bin/bash",
        f"# {arm.label} of study {spec.name!r}: arm {arm.id}, {_shape(job)}.",
        "# Written by `litprune study --launcher slurm` (edit the study YAML and rerun that, not this file);",
        f"# submitted by {where.slurm / SUBMIT_SCRIPT} after "
        + (", ".join(arm.depends_on) if arm.depends_on else "nothing (it depends on no arm)")
        + ".",
        *_sbatch_options(
            spec,
            where,
            name=f"{spec.name}.{arm.id}",
            log=f"{arm.id}.%j.log",
            resources=[f"--nodes={job.nodes}", f"--ntasks-per-node={job.devices}"]
            + ([f"--gpus-per-node={job.devices}"] if job.gpus else []),
        ),
        "",
        "set -eo pipefail",
        f"cd {_q(where.workdir)}",
        *_arm_guard(arm, where),
        *_environment(spec),
    ]
    if job.prune:
        # One process prunes (on this first node of the job), then every task trains from the pruned model.
        lines += [
            f"if [ ! -f {_q(where.pruned(arm) / PRUNING_RECORD)} ]; then",
            f"  {_prune_command(where, arm)}",
            "fi",
        ]
    lines.append(f"srun litprune fit --config {_q(where.fit_config(job))} --ckpt_path last")
    return "\n".join(lines) + "\n"


def slurm_report_script(spec: StudySpec, jobs: list[ArmJob], where: ScriptPaths, evaluate: bool) -> str:
    """The final job: `litprune study --config <study> --launcher local` on one node, which finds every arm finished,
    evaluates them and writes the report."""
    gpus = any(job.gpus for job in jobs)
    lines = [
        "#!/bin/bash",
        f"# Evaluation and report of study {spec.name!r}, after every arm job has succeeded (submit.sh sets the",
        "# dependency). Written by `litprune study --launcher slurm`.",
        *_sbatch_options(
            spec,
            where,
            name=f"{spec.name}.{REPORT_JOB}",
            log=f"{REPORT_JOB}.%j.log",
            resources=["--nodes=1", "--ntasks=1"] + (["--gpus-per-node=1"] if gpus else []),
        ),
        "",
        "set -eo pipefail",
        f"cd {_q(where.workdir)}",
        *_environment(spec),
        _report_command(where, evaluate),
    ]
    return "\n".join(lines) + "\n"


def slurm_submit_script(spec: StudySpec, jobs: list[ArmJob], where: ScriptPaths, evaluate: bool = True) -> str:
    """`submit.sh`: sbatch every unfinished arm in dependency order, each after the jobs of the arms it depends on
    (`--dependency=afterok:...`), then the report job after all of them."""
    number = {job.arm.id: i for i, job in enumerate(jobs, 1)}
    lines = [
        "#!/bin/bash",
        f"# Submits the {len(jobs)} arm jobs of study {spec.name!r} to SLURM, parents first, each after the jobs of",
        "# the arms it depends on (--dependency=afterok), then the report job after all of them. Written by",
        "# `litprune study --launcher slurm` (edit the study YAML and rerun that, not this file).",
        "# Rerun it after a failure or a time limit: finished arms are not submitted again, the others resume from",
        "# their last checkpoint.",
        "set -eo pipefail",
        f"cd {_q(where.workdir)}",
        "",
        "# Jobs of this study still queued or running would run their arm twice: wait for them or cancel them.",
        "if command -v squeue > /dev/null; then",
        f"  queued=$(squeue -h -u \"$USER\" -o %j | awk -v p={_q(spec.name + '.')} 'index($0, p) == 1' | tr '\\n' ' ')",
        '  if [ -n "$queued" ]; then',
        f'    echo "Jobs of study {spec.name} are still queued or running (squeue -u $USER): $queued. Wait for them, '
        'or cancel them with scancel, then rerun this script." >&2',
        "    exit 1",
        "  fi",
        "fi",
        "",
        "# submit SCRIPT [JOB_ID...]: sbatch SCRIPT to start once the given jobs have succeeded (an empty id is an",
        "# arm that had already finished); prints the new job's id.",
        "submit() {",
        "  local script=$1 ids=() id out",
        "  shift",
        '  for id in "$@"; do',
        '    if [ -n "$id" ]; then ids+=("$id"); fi',
        "  done",
        '  if [ "${#ids[@]}" -gt 0 ]; then',
        '    out=$(IFS=:; sbatch --parsable --dependency="afterok:${ids[*]}" "$script") || exit 1',
        "  else",
        '    out=$(sbatch --parsable "$script") || exit 1',
        "  fi",
        '  out=${out%%;*}  # "<job id>;<cluster>" on federated clusters',
        '  if [ -z "$out" ]; then echo "sbatch printed no job id for $script" >&2; exit 1; fi',
        '  echo "$out"',
        "}",
        "",
        "# finished RUN_DIR: the arm's run has finished (results.json and export/), so it is not submitted again.",
        'finished() { [ -f "$1/results.json" ] && [ -d "$1/export" ]; }',
    ]
    for job in jobs:
        arm, i = job.arm, number[job.arm.id]
        after = [f'"$job_{number[d]}"' for d in arm.depends_on if d in number]
        note = f" (after {', '.join(d for d in arm.depends_on if d in number)})" if after else ""
        lines += [
            "",
            f"# {i}. {arm.id}: {arm.label}, {_shape(job)}{note}",
            f'job_{i}=""',
            f"if finished {_q(where.abs(arm.run_dir))}; then",
            f'  echo "{arm.id}: finished, not submitted"',
            "else",
            f"  job_{i}=$(submit {_q(where.slurm_script(arm.id))}{''.join(' ' + a for a in after)})",
            f'  echo "{arm.id}: job $job_{i}{note}"',
            "fi",
        ]
    everything = " ".join(f'"$job_{number[job.arm.id]}"' for job in jobs)
    lines += [
        "",
        f"# {len(jobs) + 1}. the report: evaluation of every arm, results and report.md, after every arm job.",
        f"report=$(submit {_q(where.slurm_script(REPORT_JOB))} {everything})",
        f'echo "report: job $report (after every arm): {_report_command(where, evaluate)}"',
        f'echo "Logs: {where.abs(where.out / "logs")}/<arm>.<job id>.log; queue: squeue -u $USER"',
    ]
    return "\n".join(lines) + "\n"


def _write_slurm(spec, jobs, where, dry_run, evaluate, echo) -> dict[str, Any]:
    if where.has_whitespace():
        raise StudyError(
            f"--launcher slurm: the working directory {str(where.workdir)!r} or out_dir {str(where.abs(where.out))!r} "
            "contains whitespace, which #SBATCH options cannot hold. Run from (and write to) a path without spaces."
        )
    (where.abs(where.out) / "logs").mkdir(parents=True, exist_ok=True)  # sbatch cannot create the log folder
    scripts = [where.slurm_script(job.arm.id) for job in jobs]
    for job, path in zip(jobs, scripts, strict=True):
        atomic_write_text(path, slurm_arm_script(spec, job, where))
    report = atomic_write_text(where.slurm_script(REPORT_JOB), slurm_report_script(spec, jobs, where, evaluate))
    submit = atomic_write_text(where.slurm / SUBMIT_SCRIPT, slurm_submit_script(spec, jobs, where, evaluate))
    lines = [
        "",
        f"{'Would submit' if dry_run else 'To submit'}, in this order (bash {where.rel(submit)} does it; arms already "
        "finished are skipped):",
    ]
    for i, (job, path) in enumerate(zip(jobs, scripts, strict=True), 1):
        after = ":".join(f"<job of {d}>" for d in job.arm.depends_on)
        dependency = f"--dependency=afterok:{after} " if after else ""
        prunes = ", prunes its parent first" if job.prune else ""
        lines.append(
            f"  {i:>2}. sbatch --parsable {dependency}{where.rel(path)}   # {job.arm.label}, {_shape(job)}{prunes}"
        )
    lines.append(f"  {len(jobs) + 1:>2}. sbatch --parsable --dependency=afterok:<every arm's job> {where.rel(report)}")
    lines.append(
        f"\nWrote {len(jobs) + 2} scripts under {where.rel(where.slurm)}/; "
        + ("nothing was submitted (dry run). " if dry_run else "nothing was submitted yet. ")
        + f"Submit them with:\n  bash {where.rel(submit)}"
    )
    echo("\n".join(lines))
    return {"scripts": [str(p) for p in [*scripts, report]], "submit": str(submit)}


# ------------------------------------------------------------------------------------------------------- torchrun
def torchrun_command(spec: StudySpec, job: ArmJob, where: ScriptPaths) -> str:
    """The command one node of the arm runs: torchrun starts `devices` processes of `litprune fit` there."""
    return (
        f"torchrun --nnodes {job.nodes} --nproc-per-node {job.devices} --node-rank $NODE_RANK "
        f"--master-addr $MASTER_ADDR --master-port ${{MASTER_PORT:-{spec.launch.master_port}}} "
        f"-m litprune fit --config {_q(where.fit_config(job))} --ckpt_path last"
    )


def torchrun_arm_script(spec: StudySpec, job: ArmJob, where: ScriptPaths) -> str:
    """The script every node of one arm runs (NODE_RANK and MASTER_ADDR set; one node: 0 and localhost)."""
    arm = job.arm
    if job.nodes > 1:
        ranks = [
            f': "${{NODE_RANK:?set NODE_RANK to the rank of this node, 0 to {job.nodes - 1}}}"',
            ': "${MASTER_ADDR:?set MASTER_ADDR to the address of the node with NODE_RANK=0}"',
        ]
        usage = f"NODE_RANK=<0..{job.nodes - 1}> MASTER_ADDR=<node 0's address> bash {where.torchrun_script(arm.id)}"
    else:
        ranks = ['NODE_RANK="${NODE_RANK:-0}"', 'MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"']
        usage = f"bash {where.torchrun_script(arm.id)}"
    before = [*arm.depends_on, *([f"{where.torchrun_script(arm.id + '.prune')} (once)"] if job.prune else [])]
    lines = [
        "#!/bin/bash",
        f"# {arm.label} of study {spec.name!r}: arm {arm.id}, {_shape(job)}.",
        "# Written by `litprune study --launcher torchrun` (edit the study YAML and rerun that, not this file).",
        "# Start it on every node of the arm at once, once "
        + (", ".join(before) + " has finished:" if before else "you like (it depends on no arm):"),
        f"#   {usage}",
        "set -eo pipefail",
        *ranks,
        f"cd {_q(where.workdir)}",
        *_arm_guard(arm, where),
    ]
    if job.prune:
        lines += [
            f"if [ ! -f {_q(where.pruned(arm) / PRUNING_RECORD)} ]; then",
            f'  echo "litprune: error: arm {arm.id} trains from its parent pruned once: run bash '
            f'{where.torchrun_script(arm.id + ".prune")} on one node first." >&2',
            "  exit 1",
            "fi",
        ]
    lines += [*_environment(spec), torchrun_command(spec, job, where)]
    return "\n".join(lines) + "\n"


def torchrun_prune_script(spec: StudySpec, job: ArmJob, where: ScriptPaths) -> str:
    """The script that prunes an arm's parent once, in one process, before the arm's nodes start."""
    arm = job.arm
    lines = [
        "#!/bin/bash",
        f"# Prunes the parent of arm {arm.id} of study {spec.name!r} once, in one process, into",
        f"# {where.pruned(arm)}; run it on one node after {', '.join(arm.depends_on) or 'the parent'} has finished,",
        f"# then {where.torchrun_script(arm.id)} on the arm's nodes. Written by `litprune study --launcher torchrun`.",
        "set -eo pipefail",
        f"cd {_q(where.workdir)}",
        *_arm_guard(arm, where),
        *_environment(spec),
        f"if [ -f {_q(where.pruned(arm) / PRUNING_RECORD)} ]; then",
        f'  echo "Arm {arm.id}: the parent is already pruned ({where.pruned(arm)})."',
        "  exit 0",
        "fi",
        _prune_command(where, arm),
    ]
    return "\n".join(lines) + "\n"


def _write_torchrun(spec, jobs, where, dry_run, evaluate, echo) -> dict[str, Any]:
    scripts, prune_scripts = [], {}
    for job in jobs:
        if job.prune:
            prune_scripts[job.arm.id] = atomic_write_text(
                where.torchrun_script(job.arm.id + ".prune"), torchrun_prune_script(spec, job, where)
            )
        scripts.append(atomic_write_text(where.torchrun_script(job.arm.id), torchrun_arm_script(spec, job, where)))
    lines = [
        "",
        f"{'Would run' if dry_run else 'Run'} each arm on its nodes, in this order, an arm once the arms it depends on "
        "have finished (scripts of arms already finished exit at once):",
    ]
    for i, (job, path) in enumerate(zip(jobs, scripts, strict=True), 1):
        after = f", after {', '.join(job.arm.depends_on)}" if job.arm.depends_on else ""
        ranks = f"NODE_RANK=<0..{job.nodes - 1}> MASTER_ADDR=<node 0's address> " if job.nodes > 1 else ""
        lines.append(f"  {i:>2}. {job.arm.id} ({job.arm.label}, {_shape(job)}{after}):")
        if job.prune:
            lines.append(f"      on one node, once: bash {where.rel(prune_scripts[job.arm.id])}")
            lines.append(f"      which runs: {_prune_command(where, job.arm)}")
        lines += [
            f"      on each node: {ranks}bash {where.rel(path)}",
            f"      which runs: {torchrun_command(spec, job, where)}",
        ]
    lines.append(
        f"  {len(jobs) + 1:>2}. then evaluate every arm and write the report: {_report_command(where, evaluate)}"
    )
    lines.append(
        f"\nWrote {len(scripts)} scripts under {where.rel(where.torchrun)}/"
        + ("; nothing was started (dry run)." if dry_run else "; nothing was started.")
    )
    echo("\n".join(lines))
    return {"scripts": [str(p) for p in [*prune_scripts.values(), *scripts]]}


# -------------------------------------------------------------------------------------------------------- helpers
class ScriptPaths:
    """Where the scripts go and how they name things: absolute paths, with the working directory the jobs start in
    (where the study's relative paths resolve)."""

    def __init__(self, spec: StudySpec) -> None:
        self.workdir = Path.cwd().resolve()
        self.out = spec.out_path
        self.source = self.abs(Path(spec.source).expanduser())
        self.slurm = self.abs(self.out) / "slurm"
        self.torchrun = self.abs(self.out) / "torchrun"

    def abs(self, path: Path) -> Path:
        return path if path.is_absolute() else self.workdir / path

    def rel(self, path: str | Path) -> str:
        """`path` as the user typed it from the working directory (relative when it lies below it)."""
        path = Path(path)
        return str(path.relative_to(self.workdir)) if path.is_relative_to(self.workdir) else str(path)

    def pruned(self, arm: Arm) -> Path:
        """Where `litprune prune` writes the arm's pruned parent."""
        return self.abs(arm.run_dir) / PRUNED_DIR

    def fit_config(self, job: ArmJob) -> Path:
        """The config the arm's processes train with: the arm's own, or, when its parent is pruned once ahead, the
        arm's config starting from that pruned model (`from_pruned_config`)."""
        if job.prune:
            return self.abs(self.out) / "configs" / f"{job.arm.id}.from_pruned.yaml"
        return self.abs(job.arm.config_path)

    def slurm_script(self, name: str) -> Path:
        return self.slurm / f"{name}.sbatch"

    def torchrun_script(self, name: str) -> Path:
        return self.torchrun / f"{name}.sh"

    def has_whitespace(self) -> bool:
        return any(char.isspace() for char in str(self.workdir) + str(self.abs(self.out)))


def _sbatch_options(spec: StudySpec, where: ScriptPaths, name: str, log: str, resources: list[str]) -> list[str]:
    launch = spec.launch
    options = [f"--job-name={name}", *resources]
    options += [f"--time={launch.time}"] if launch.time else []
    options += [f"--partition={launch.partition}"] if launch.partition else []
    options += [f"--account={launch.account}"] if launch.account else []
    options += [f"--chdir={where.workdir}", f"--output={where.abs(where.out) / 'logs' / log}", *launch.extra_sbatch]
    return [f"#SBATCH {option}" for option in options]


def _environment(spec: StudySpec) -> list[str]:
    """The study's `launch.setup` lines, then its `env` exported (as the local runner gives them to the arms)."""
    return [*spec.launch.setup, *(f"export {key}={_q(value)}" for key, value in spec.env.items())]


def _arm_guard(arm: Arm, where: ScriptPaths) -> list[str]:
    """Shell lines that apply `runner.arm_status`'s rules to the arm's run directory before litprune starts: a run of
    other settings or not started by the study is refused, a finished arm exits 0, and a new one gets its marker."""
    run_dir = where.abs(arm.run_dir)
    record = {"arm": arm.id, "label": arm.label, "config": str(arm.config_path), "config_hash": arm.config_hash}
    marker = json.dumps({**record, "started": "@STARTED@"}, indent=2)
    # An unquoted heredoc expands $ ` and \\: escape them, then let only the start time expand.
    marker = marker.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
    marker = marker.replace('"@STARTED@"', '"$(date +%Y-%m-%dT%H:%M:%S)"')
    hash_line = json.dumps({"config_hash": arm.config_hash})[1:-1]  # "config_hash": "<sha256>", as the marker has it
    return [
        f"run_dir={_q(run_dir)}",
        f'marker="$run_dir/{MARKER}"',
        'if [ -f "$marker" ]; then',
        f'  if ! grep -qF {_q(hash_line)} "$marker"; then',
        f'    echo "litprune: error: arm {arm.id} was started with different settings (the config hash in $marker is '
        "not this config's): the study YAML changed since. Restore the settings to resume it, or delete $run_dir "
        'to run the arm again with the new ones." >&2',
        "    exit 1",
        "  fi",
        '  if [ -f "$run_dir/results.json" ] && [ -d "$run_dir/export" ]; then',
        f'    echo "Arm {arm.id} has finished ($run_dir holds results.json and export/); nothing to run."',
        "    exit 0",
        "  fi",
        'elif [ -e "$run_dir/results.json" ] || [ -e "$run_dir/checkpoints/last.ckpt" ]; then',
        f'  echo "litprune: error: arm {arm.id}: $run_dir holds a run the study did not start (no {MARKER}). Move it '
        'away or delete it, or point out_dir at another directory." >&2',
        "  exit 1",
        "else",
        '  mkdir -p "$run_dir"',
        '  cat > "$marker.$(hostname).$$.tmp" <<MARKER',
        *marker.splitlines(),
        "MARKER",
        '  mv "$marker.$(hostname).$$.tmp" "$marker"',
        "fi",
    ]


def _prune_command(where: ScriptPaths, arm: Arm) -> str:
    return f"litprune prune --config {_q(where.abs(arm.config_path))} --out {_q(where.pruned(arm))}"


def _report_command(where: ScriptPaths, evaluate: bool) -> str:
    return f"litprune study --config {_q(where.source)} --launcher local" + ("" if evaluate else " --evaluate false")


def _shape(job: ArmJob) -> str:
    per_node = f"{job.devices} {'GPU' if job.gpus else 'process'}{'s' if job.devices > 1 else ''}"
    return f"{job.nodes} node{'s' if job.nodes > 1 else ''} x {per_node}"


def _q(value: object) -> str:
    return shlex.quote(str(value))
