"""`litprune study --launcher slurm|torchrun`: the job scripts of the paper-scale study, their dependency order, the
run-directory guard every arm script applies, and the errors for values a job script cannot use.

The scripts are executed for real with stand-ins for `sbatch`, `srun` and `squeue` on PATH (small bash scripts that
log their arguments), so the dependency chain and the guard are checked by running them, not by reading them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from test_study_spec import micro_study

from litprune.cli import main
from litprune.study.arms import expand_study
from litprune.study.launchers import LAUNCHERS, check_launcher
from litprune.study.records import MARKER
from litprune.study.runner import arm_status, run_study, study_arguments
from litprune.study.spec import StudyError, load_study

REPO = Path(__file__).resolve().parents[1]
PAPER_STUDY = REPO / "configs" / "study" / "llama3.1-8b.yaml"

# `sbatch` stand-in: logs "<script> <options...>" and prints job ids 101, 102, ... as `sbatch --parsable` does.
FAKE_SBATCH = """#!/bin/bash
n=$(( $(wc -l 2>/dev/null < "$LOG" || echo 0) + 101 ))
script="${@: -1}"
echo "$n $script ${*:1:$#-1}" >> "$LOG"
echo "$n;cluster"
"""
FAKE_SRUN = """#!/bin/bash
echo "srun $*" >> "$LOG"
"""


def _stubs(tmp_path: Path, **scripts: str) -> dict[str, str]:
    """An environment whose PATH starts with a folder of stand-in commands, logging to `$LOG`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(tmp_path / "calls.log")}


def _bash(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def _sbatch_options(text: str) -> dict[str, str]:
    options = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key] = value
    return options


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """`litprune study --config configs/study/llama3.1-8b.yaml --launcher slurm --dry-run`, run in a fresh working
    directory (where the study's relative out_dir resolves), and the study's arms."""
    cwd = tmp_path_factory.mktemp("cluster").resolve()
    before = Path.cwd()
    os.chdir(cwd)
    try:
        main(["study", "--config", str(PAPER_STUDY), "--launcher", "slurm", "--dry-run"])  # exits 0: no SystemExit
        spec = load_study(PAPER_STUDY)
        arms = expand_study(spec)
    finally:
        os.chdir(before)
    return cwd, cwd / spec.out_dir, arms


def test_paper_study_slurm_scripts_ask_for_each_arms_nodes_and_gpus(paper):
    cwd, out, arms = paper
    written = sorted(p.name for p in (out / "slurm").iterdir())
    assert written == sorted([f"{a.id}.sbatch" for a in arms] + ["report.sbatch", "submit.sh"])
    pruning = set()
    for arm in arms:
        text = (out / "slurm" / f"{arm.id}.sbatch").read_text()
        options = _sbatch_options(text)
        assert options["--nodes"] == "4" and options["--ntasks-per-node"] == "8" and options["--gpus-per-node"] == "8"
        assert options["--time"] == "48:00:00" and options["--chdir"] == str(cwd)
        assert options["--output"] == str(out / "logs" / f"{arm.id}.%j.log") and (out / "logs").is_dir()
        srun = [line for line in text.splitlines() if line.startswith("srun ")]
        prune = [line.strip() for line in text.splitlines() if line.strip().startswith("litprune prune ")]
        config, pruned = cwd / arm.config_path, cwd / arm.run_dir / "pruned"
        assert config.is_file() and "source .venv/bin/activate" in text  # the study's launch.setup
        init = arm.config["model"]["init_args"]["init"]["class_path"]
        if init.endswith(("StructuredPrune", "SparsePrune")):
            # 32 processes may not each prune the parent: one prunes on the first node, then all train from it.
            pruning.add(arm.id)
            assert prune == [f"litprune prune --config {config} --out {pruned}"]
            retrain = out / "configs" / f"{arm.id}.from_pruned.yaml"
            assert srun == [f"srun litprune fit --config {retrain} --ckpt_path last"]
            assert text.index("litprune prune") < text.index("srun ")
            written = yaml.safe_load(retrain.read_text())
            assert written["model"]["init_args"]["init"] == {
                "class_path": "litprune.inits.FromPretrained",
                "init_args": {"path": str(pruned)},
            }
            assert {k: v for k, v in written.items() if k != "model"} == {
                k: v for k, v in arm.config.items() if k != "model"
            }
        else:
            assert prune == [] and srun == [f"srun litprune fit --config {config} --ckpt_path last"]
    labels = {a.id: a.label for a in arms}
    assert {labels[a] for a in pruning} == {"P_M-R_N", "S_N", "S_M+N"}  # the sparse scratch arms draw the mask
    assert all(labels[a] == "P_M-R_N" or a.startswith("sparsegpt") for a in pruning)
    report = (out / "slurm" / "report.sbatch").read_text()
    assert _sbatch_options(report)["--nodes"] == "1"
    assert f"litprune study --config {PAPER_STUDY} --launcher local" in report
    for script in (out / "slurm").iterdir():
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script


def test_submit_script_submits_parents_first_with_afterok_on_their_jobs(paper, tmp_path):
    cwd, out, arms = paper
    env = _stubs(tmp_path, sbatch=FAKE_SBATCH)
    result = _bash(out / "slurm" / "submit.sh", env, cwd)
    assert result.returncode == 0, result.stderr
    calls = [line.split() for line in (tmp_path / "calls.log").read_text().splitlines()]
    job_of = {Path(call[1]).name.removesuffix(".sbatch"): call[0] for call in calls}
    order = [Path(call[1]).name.removesuffix(".sbatch") for call in calls]
    assert order == [a.id for a in arms] + ["report"]
    parent = arms[0]
    assert parent.label == "P_M" and not parent.depends_on
    for arm, call in zip(arms, calls, strict=False):
        assert "--parsable" in call
        dependencies = [c for c in call if c.startswith("--dependency=")]
        if arm.is_parent:
            assert dependencies == []
        else:  # every pruned and scratch arm waits for the parent's job (a chain's continued pretraining: for its
            # pruning phase's, which waits for the parent's), submitted before it
            assert arm.depends_on == (arm.chain[-1:] if arm.chain else [parent.id])
            assert dependencies == ["--dependency=afterok:" + ":".join(job_of[d] for d in arm.depends_on)]
            assert all(order.index(d) < order.index(arm.id) for d in arm.depends_on)
    report = calls[-1]
    assert report[2:] == ["--parsable", "--dependency=afterok:" + ":".join(job_of[a.id] for a in arms)]
    assert f"{parent.id}: job {job_of[parent.id]}" in result.stdout


def test_submit_script_skips_finished_arms_and_refuses_while_jobs_are_queued(paper, tmp_path):
    cwd, out, arms = paper
    parent = arms[0]
    run_dir = cwd / parent.run_dir
    (run_dir / "export").mkdir(parents=True)
    (run_dir / "results.json").write_text("{}")
    try:
        env = _stubs(tmp_path, sbatch=FAKE_SBATCH)
        result = _bash(out / "slurm" / "submit.sh", env, cwd)
        assert result.returncode == 0, result.stderr
        assert f"{parent.id}: finished, not submitted" in result.stdout
        calls = [line.split() for line in (tmp_path / "calls.log").read_text().splitlines()]
        assert [Path(c[1]).name for c in calls][0] == f"{arms[1].id}.sbatch"
        # The parent has finished: only a chain's continued pretraining waits, on its pruning phase's job.
        job_of = {Path(call[1]).name.removesuffix(".sbatch"): call[0] for call in calls}
        for arm in arms[1:]:
            call = next(c for c in calls if Path(c[1]).name == f"{arm.id}.sbatch")
            waits = [c for c in call if c.startswith("--dependency")]
            assert waits == ([f"--dependency=afterok:{job_of[arm.chain[-1]]}"] if arm.chain else [])
        # A rerun while jobs of the study are queued would run arms twice.
        (tmp_path / "calls.log").unlink()
        env = _stubs(tmp_path, squeue=f"#!/bin/bash\necho other.job\necho 'llama3.1-8b.{arms[1].id}'\n")
        result = _bash(out / "slurm" / "submit.sh", env, cwd)
        assert result.returncode == 1 and "still queued or running" in result.stderr
        assert not (tmp_path / "calls.log").exists()
    finally:
        (run_dir / "results.json").unlink()
        (run_dir / "export").rmdir()


def test_paper_study_torchrun_commands_in_dependency_order(paper, capsys):
    cwd, out, arms = paper
    before = Path.cwd()
    os.chdir(cwd)
    try:
        summary = run_study(PAPER_STUDY, dry_run=True, launcher="torchrun", echo=print)
    finally:
        os.chdir(before)
    printed = capsys.readouterr().out
    assert summary["launcher"] == "torchrun" and len(summary["scripts"]) >= len(arms)
    positions = [printed.index(f"bash {out.relative_to(cwd)}/torchrun/{a.id}.sh") for a in arms]
    assert positions == sorted(positions)  # parents first
    for arm in arms:
        script = out / "torchrun" / f"{arm.id}.sh"
        text = script.read_text()
        prune = out / "torchrun" / f"{arm.id}.prune.sh"
        config = out / "configs" / f"{arm.id}.from_pruned.yaml" if prune.is_file() else cwd / arm.config_path
        command = (
            "torchrun --nnodes 4 --nproc-per-node 8 --node-rank $NODE_RANK --master-addr $MASTER_ADDR "
            f"--master-port ${{MASTER_PORT:-29500}} -m litprune fit --config {config} --ckpt_path last"
        )
        assert text.rstrip().endswith(command) and command in printed
        if prune.is_file():  # pruned once, on one node, before the arm's nodes start
            assert printed.index(f"bash {prune.relative_to(cwd)}") < printed.index(f"bash {script.relative_to(cwd)}")
            assert f"litprune prune --config {cwd / arm.config_path} --out {cwd / arm.run_dir / 'pruned'}" in (
                prune.read_text()
            )
        for path in (script, prune) if prune.is_file() else (script,):
            assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, path
    # Several nodes: a node must say which one it is.
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "MASTER_ADDR")}
    result = _bash(out / "torchrun" / f"{arms[0].id}.sh", env, cwd)
    assert result.returncode != 0 and "set NODE_RANK" in result.stderr


def _micro(tmp_path: Path, **changes) -> Path:
    study = micro_study(tmp_path / "out", **changes)
    study.setdefault("launch", {"setup": ["echo setup ran"]})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_arm_script_marks_the_run_as_the_studys_and_guards_it_as_the_local_runner_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _micro(tmp_path)
    run_study(config, launcher="slurm", evaluate=False, echo=lambda text: None)
    arms = expand_study(load_study(config))
    report = (tmp_path / "out" / "slurm" / "report.sbatch").read_text().splitlines()[-1]
    assert report == f"litprune study --config {config} --launcher local --evaluate false"
    assert study_arguments(shlex.split(report)[2:])["evaluate"] is False
    pruned = next(a for a in arms if a.label == "P_M-R_N")
    script = tmp_path / "out" / "slurm" / f"{pruned.id}.sbatch"
    options = _sbatch_options(script.read_text())
    assert options["--nodes"] == "1" and options["--ntasks-per-node"] == "1" and "--gpus-per-node" not in options
    env = _stubs(tmp_path, srun=FAKE_SRUN)
    result = _bash(script, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "setup ran" in result.stdout
    log = (tmp_path / "calls.log").read_text()
    assert log == f"srun litprune fit --config {tmp_path / pruned.config_path} --ckpt_path last\n"
    marker = json.loads((pruned.run_dir / MARKER).read_text())
    assert marker["config_hash"] == pruned.config_hash and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]{8}", marker["started"])
    assert arm_status(pruned).state == "started"  # the local study accepts it as its own
    # Finished with this config: the job exits at once, without starting litprune.
    (pruned.run_dir / "export").mkdir()
    (pruned.run_dir / "results.json").write_text(json.dumps({"run": {"tokens_seen": 2048}}))
    assert arm_status(pruned).state == "done"
    result = _bash(script, env, tmp_path)
    assert result.returncode == 0 and "has finished" in result.stdout
    assert (tmp_path / "calls.log").read_text() == log
    # Started with other settings: refused, as the local runner refuses it.
    (pruned.run_dir / MARKER).write_text(json.dumps({**marker, "config_hash": "0" * 64}, indent=2))
    result = _bash(script, env, tmp_path)
    assert result.returncode == 1 and "was started with different settings" in result.stderr
    assert f"delete {pruned.run_dir} to run the arm again" in result.stderr
    # A run directory the study did not start.
    scratch = next(a for a in arms if a.label == "S_N")
    (scratch.run_dir / "checkpoints").mkdir(parents=True)
    (scratch.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    result = _bash(tmp_path / "out" / "slurm" / f"{scratch.id}.sbatch", env, tmp_path)
    assert result.returncode == 1 and "holds a run the study did not start" in result.stderr


def test_one_node_torchrun_script_runs_without_node_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _micro(tmp_path, launch={"master_port": 29611})
    run_study(config, launcher="torchrun", echo=lambda text: None)
    parent = expand_study(load_study(config))[0]
    env = _stubs(tmp_path, torchrun='#!/bin/bash\necho "torchrun $*" >> "$LOG"\n')
    for name in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = _bash(tmp_path / "out" / "torchrun" / f"{parent.id}.sh", env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls.log").read_text().split() == shlex.split(
        "torchrun --nnodes 1 --nproc-per-node 1 --node-rank 0 --master-addr 127.0.0.1 --master-port 29611 "
        f"-m litprune fit --config {tmp_path / parent.config_path} --ckpt_path last"
    )


def test_launcher_option_parses_and_defaults_to_local():
    assert study_arguments(["--config", "s.yaml"])["launcher"] == "local"
    parsed = study_arguments(["--config", "s.yaml", "--launcher", "slurm", "--dry-run"])
    assert parsed["launcher"] == "slurm" and parsed["dry_run"] is True
    assert LAUNCHERS == ("local", "slurm", "torchrun")


def test_values_a_job_script_cannot_use_are_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match=r"--launcher='slrum' is not a launcher\. Did you mean 'slurm'\?"):
        check_launcher("slrum")
    config = _micro(tmp_path)
    with pytest.raises(StudyError, match="not a launcher"):
        run_study(config, launcher="pbs", echo=lambda text: None)
    with pytest.raises(StudyError, match=r"--workers=2 applies to --launcher local"):
        run_study(config, launcher="slurm", workers=2, echo=lambda text: None)

    auto = micro_study(tmp_path / "out")
    auto["trainer"]["devices"] = "auto"
    auto["parents"]["parent"]["trainer"] = {"num_nodes": 1.5}
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(auto, sort_keys=False))
    # The local runner sizes budgets with devices "auto" as 1; a job script needs a number of processes.
    with pytest.raises(StudyError) as info:
        run_study(path, launcher="slurm", echo=lambda text: None)
    message = str(info.value)
    assert "trainer.devices='auto' (arms " in message and "trainer.num_nodes=1.5 (arms parent)" in message
    assert "Set trainer.devices to the devices per node (e.g. devices: 8)" in message
    assert not (tmp_path / "out").exists()  # refused before anything is written

    bad = micro_study(tmp_path / "out", launch={"time": 172800, "extra_sbatch": ["exclusive"], "partiton": "gpu"})
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(StudyError, match=r"unknown key launch\.partiton \(did you mean 'partition'\?\)"):
        load_study(path)
    del bad["launch"]["partiton"]
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert "launch.time=172800: YAML reads an unquoted 48:00:00 as a number of seconds; quote" in str(info.value)
    assert "each entry is an sbatch option starting with '-'" in str(info.value)
