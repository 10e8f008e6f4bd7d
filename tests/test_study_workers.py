"""`litprune study --workers`: the arm scheduler with the micro study's real arms and cheap real processes in place
of `litprune fit` (each writes what a finished fit leaves, `results.json`, and its own start/end times)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_study_spec import micro_study

from litprune.study.arms import expand_study, write_arm_configs
from litprune.study.records import MARKER
from litprune.study.runner import _arm_environment, _arm_process, default_workers, run_arms, run_study
from litprune.study.spec import StudyError, study_from_dict

# A stand-in arm process: records when it ran, sleeps, then exits with the given code, writing results.json on 0.
FAKE_ARM = """
import json, sys, time
from pathlib import Path
run_dir, events, seconds, code = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
start = time.time()
time.sleep(seconds)
print("arm output before exit", flush=True)
if code == 0:
    (run_dir / "results.json").write_text(json.dumps({"final": {"val/loss": 4.5}}))
with open(events, "a") as f:
    f.write(json.dumps({"arm": run_dir.name, "start": start, "end": time.time(), "code": code}) + "\\n")
sys.exit(code)
"""


def _arms(tmp_path: Path, **changes):
    spec = study_from_dict(micro_study(tmp_path / "out", **changes))
    arms = expand_study(spec)
    write_arm_configs(arms)
    (tmp_path / "out" / "logs").mkdir(parents=True)
    return spec, arms


def _launcher(events: Path, seconds: dict[str, float] | float = 0.4, codes: dict[str, int] | None = None):
    slots = []

    def launch(arm, slot, log):
        slots.append(slot)
        wait = seconds if isinstance(seconds, float) else seconds.get(arm.id, 0.4)
        command = [sys.executable, "-c", FAKE_ARM, str(arm.run_dir), str(events), str(wait)]
        command.append(str((codes or {}).get(arm.id, 0)))
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    launch.slots = slots
    return launch


def _events(path: Path) -> dict[str, dict]:
    return {e["arm"]: e for e in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def test_workers_respect_dependencies_and_run_at_most_k_at_a_time(tmp_path):
    spec, arms = _arms(tmp_path)
    events, lines = tmp_path / "events.jsonl", []
    launch = _launcher(events)
    timings = run_arms(arms, workers=3, launch=launch, logs=tmp_path / "out" / "logs", echo=lines.append)

    ran = _events(events)
    assert set(ran) == set(timings) == {a.id for a in arms}
    for arm in arms:
        for dependency in arm.depends_on:
            assert ran[arm.id]["start"] > ran[dependency]["end"], f"{arm.id} started before {dependency} ended"
        marker = json.loads((arm.run_dir / MARKER).read_text())
        assert marker["config_hash"] == arm.config_hash and marker["completed"] is True
    # The six arms after the parent ran three at a time: never more, and the slots were reused.
    times = sorted([(e["start"], 1) for e in ran.values()] + [(e["end"], -1) for e in ran.values()])
    running = [sum(step for _, step in times[: i + 1]) for i in range(len(times))]
    assert max(running) == 3
    assert set(launch.slots) == {0, 1, 2}
    # One line when each arm starts and one when it finishes, naming it and its log.
    starts = [line for line in lines if ": starting  (log: " in line]
    finishes = [line for line in lines if ": done in " in line and "val loss 4.5000" in line]
    assert len(starts) == len(finishes) == len(arms)
    assert starts[0] == f"[1/7] parent (P_M, 8,192 tokens): starting  (log: {tmp_path / 'out' / 'logs' / 'parent.log'})"


def test_a_failed_arm_stops_new_starts_lets_running_ones_finish_and_names_its_log(tmp_path):
    spec, arms = _arms(tmp_path)
    failing, running_on = arms[1].id, arms[2].id
    events, lines = tmp_path / "events.jsonl", []
    launch = _launcher(events, seconds={"parent": 0.1, failing: 0.1, running_on: 1.5}, codes={failing: 3})
    with pytest.raises(StudyError) as info:
        run_arms(arms, workers=2, launch=launch, logs=tmp_path / "out" / "logs", echo=lines.append)
    message = str(info.value)
    log = tmp_path / "out" / "logs" / f"{failing}.log"
    assert f"Arm {failing} failed (exit code 3); the end of {log}:\narm output before exit" in message
    assert "Not started: " + ", ".join(a.id for a in arms[3:]) + "." in message
    assert "rerun the same command" in message
    failed_line = f"{failing}: FAILED (exit code 3; log: {log}); starting no new arms, 1 still running"
    assert any(failed_line in line for line in lines)
    # The arm running beside the failed one finished and counts as done; nothing else started.
    ran = _events(events)
    assert set(ran) == {"parent", failing, running_on}
    assert (arms[2].run_dir / "results.json").is_file()
    assert json.loads((arms[2].run_dir / MARKER).read_text())["completed"] is True
    assert "completed" not in json.loads((arms[1].run_dir / MARKER).read_text())


def test_an_arm_whose_dependency_never_finished_is_refused(tmp_path):
    spec, arms = _arms(tmp_path)
    with pytest.raises(StudyError, match=rf"Arm {arms[1].id} needs parent, which has not finished; rerun the study"):
        run_arms(arms[1:], workers=2, launch=_launcher(tmp_path / "e.jsonl"), logs=tmp_path / "out" / "logs")


def test_sigterm_ends_every_running_arm_with_the_processes_it_started(tmp_path):
    spec, arms = _arms(tmp_path)
    pids = tmp_path / "pids"
    pids.mkdir()

    def launch(arm, slot, log):
        # An arm that starts a process of its own (as a data loader or DDP launcher would), then trains forever.
        script = (
            "import subprocess, sys, time; from pathlib import Path\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"Path({str(pids)!r}, {arm.id!r}).write_text(str(child.pid))\n"
            "time.sleep(120)\n"
        )
        command = [sys.executable, "-c", script]
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_arm_process)

    def echo(line):
        if line.startswith("[1/"):
            return
        raise AssertionError("only the parent may start: the others depend on it")

    started, handler = time.monotonic(), signal.getsignal(signal.SIGTERM)

    # The study process receives SIGTERM once the parent's process has started its own child.
    def deliver_sigterm_soon():
        deadline = time.monotonic() + 30
        while not (pids / "parent").exists():
            assert time.monotonic() < deadline, "the arm process never started its child"
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=deliver_sigterm_soon, daemon=True).start()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        run_arms(arms, workers=2, launch=launch, logs=tmp_path / "out" / "logs", echo=echo)
    grandchild = int((pids / "parent").read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the arm's own child outlived the study"
    assert time.monotonic() - started < 60
    assert signal.getsignal(signal.SIGTERM) is handler


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent, init here) counts as ended.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_several_workers_give_each_arm_one_thread_unless_the_study_says_otherwise(tmp_path):
    spec, _ = _arms(tmp_path, env={})
    assert _arm_environment(spec, workers=2, slot=1)["OMP_NUM_THREADS"] == "1"
    assert _arm_environment(spec, workers=1, slot=0).get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    spec, _ = _arms(tmp_path / "b", env={"OMP_NUM_THREADS": "2"})
    assert _arm_environment(spec, workers=2, slot=0)["OMP_NUM_THREADS"] == "2"
    # CPU arms: one worker per core this process may use.
    assert default_workers(spec) == len(os.sched_getaffinity(0))


def test_workers_below_one_are_refused_before_any_work(tmp_path):
    spec, _ = _arms(tmp_path)
    with pytest.raises(StudyError, match=r"--workers=0: give the number of arms to run at a time, 1 or more"):
        run_study(spec, workers=0, echo=lambda text: None)
    assert not (tmp_path / "out" / "runs").exists()
