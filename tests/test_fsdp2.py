"""FSDP2 (Lightning's ModelParallelStrategy, configs/trainer/fsdp2_cpu.yaml) on two CPU processes over gloo: real
`litprune fit` runs, killed half-way (SIGKILL of both processes) and resumed with `--ckpt_path last`, end exactly as
uninterrupted ones (full and distributed checkpoints); sparse runs keep their masks exact through sharding, resume
(also from a one-process checkpoint) and the gathered export; a per-tensor ratio gives the masks of a single
process; gradient clipping by norm clips the global norm of the sharded gradients.

Slow tier (`pytest -m slow`, about 4 minutes on 2 cores): most cases run two or three 2-process fits of the tests'
tiny config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_args
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from litprune.models.sparse_checkpoint import load_masks, save_sparse
from litprune.pruning.sparse import prune_sparse
from litprune.training.metrics_logger import read_metrics

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FSDP2 = REPO / "configs" / "trainer" / "fsdp2_cpu.yaml"
FROM_INIT = REPO / "callbacks" / "sparse_mask_from_init.yaml"
MAX_TOKENS = 4096  # 8 steps of 2 processes x 8 x 32 tokens; the tests' config checkpoints every 2 steps
STEPS = 8


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _fit(run_dir: Path, *extra: str, devices: int = 2, max_tokens: int = MAX_TOKENS, wait: bool = True):
    cmd = [sys.executable, "-m", "litprune", *tiny_run_args(run_dir, max_tokens)]
    if devices == 2:
        cmd.append(f"--config={FSDP2}")
    cmd += ["--trainer.enable_progress_bar=false", *extra]
    # A session of its own: the kill reaches rank 1, which Lightning starts as a child of rank 0.
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    if wait:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-4000:]
    return proc


def _callbacks_config(path: Path, *callbacks: dict) -> str:
    path.write_text(yaml.safe_dump({"trainer": {"callbacks+": list(callbacks)}}), encoding="utf-8")
    return f"--config={path}"


def _killed_and_resumed(tmp_path: Path, *extra: str, stall_step: int = 5, first_devices: int = 2) -> Path:
    """A run stalled after `stall_step` (last checkpoint one step earlier), killed, then resumed on 2 processes;
    its directory. `first_devices=1` runs the first part on one process (no sharding)."""
    run_dir = tmp_path / "interrupted"
    flag = tmp_path / "stalled"
    stall = {"class_path": "resume_helpers.StallAtStep", "init_args": {"step": stall_step, "flag": str(flag)}}
    stall_config = _callbacks_config(tmp_path / "stall.yaml", stall)
    proc = _fit(run_dir, *extra, stall_config, devices=first_devices, wait=False)
    deadline = time.monotonic() + 900
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-4000:]
        assert time.monotonic() < deadline, "the run never reached the stall step"
        time.sleep(0.2)
    time.sleep(0.5)  # both ranks are stalled by now (the flag is written by whichever comes first)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "export").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == stall_step - 1
    _fit(run_dir, *extra, "--ckpt_path=last")
    return run_dir


def _assert_same_run(a: Path, b: Path) -> None:
    weights_a, weights_b = load_file(a / "export" / "model.safetensors"), load_file(b / "export" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    loss_a = read_metrics(a / "metrics.jsonl")["train/loss"]
    loss_b = read_metrics(b / "metrics.jsonl")["train/loss"]
    assert sorted(loss_a) == list(range(STEPS))
    assert loss_a == loss_b


def _assert_masks_exact(export: Path, pattern: str | None) -> dict[str, torch.Tensor]:
    weights = load_file(export / "model.safetensors")
    masks = load_masks(export / "sparsity_masks.safetensors")
    assert len(masks) == 4 * 7  # every decoder linear of the tiny model
    for name, keep in masks.items():
        weight = weights[name]
        assert weight.shape == keep.shape
        assert int(weight[~keep].count_nonzero()) == 0, name  # masked weights exactly 0 after the gather
        if pattern == "2:4":
            kept = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
            assert int((kept > 2).sum()) == 0, name
            assert bool((keep.reshape(keep.shape[0], -1, 4).sum(-1) == 2).all()), name  # exactly 2 of every 4
    return masks


def test_fsdp2_scratch_fit_killed_and_resumed_matches_uninterrupted(embedded_cache, tmp_path):
    straight = tmp_path / "straight"
    _fit(straight)
    # The model really was sharded: the checkpoint's litprune record comes from an FSDP2 run of 2 processes.
    record = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["litprune"]
    assert record["step_shape"]["world_size"] == 2 and record["tokens_seen"] == MAX_TOKENS
    _assert_same_run(straight, _killed_and_resumed(tmp_path))


def _pruned_2of4(parent: Path, out: Path) -> Path:
    """The tests' parent pruned to 2:4 with Wanda, written as a sparse checkpoint (weights, masks, record).

    Runs of several processes start from a model pruned once (`litprune prune` does this from the command line);
    `FromPretrained` of it hands the masks to the run.
    """
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32)
    windows = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    result = prune_sparse(model, "wanda", ratio=0.5, pattern="2:4", windows=windows)
    return save_sparse(model, result.masks, result.record, out, tokenizer=AutoTokenizer.from_pretrained(parent))


def test_fsdp2_sparse_2of4_fit_keeps_exact_masks_through_kill_resume_and_export(tiny_parent, tmp_path):
    pruned = _pruned_2of4(tiny_parent, tmp_path / "pruned")
    sparse = [
        "--model.init_args.init=litprune.inits.FromPretrained",
        f"--model.init_args.init.init_args.path={pruned}",
        "--model.init_args.preset=null",
        "--model.init_args.arm=P_M-R_N",
        f"--config={FROM_INIT}",
    ]
    straight = tmp_path / "straight"
    _fit(straight, *sparse)
    resumed = _killed_and_resumed(tmp_path, *sparse)
    _assert_same_run(straight, resumed)
    masks_a = _assert_masks_exact(straight / "export", "2:4")
    masks_b = _assert_masks_exact(resumed / "export", "2:4")
    assert all(torch.equal(masks_a[name], masks_b[name]) for name in masks_a)
    # The checkpoint holds whole masks (gathered from both ranks), the same as the export's.
    state = next(
        s
        for s in torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"].values()
        if isinstance(s, dict) and "masks" in s
    )
    assert {name.removeprefix("model."): entry["shape"] for name, entry in state["masks"].items()} == {
        name: list(mask.shape) for name, mask in masks_a.items()
    }


def test_a_single_process_sparse_checkpoint_resumes_resharded_on_two_ranks(tiny_parent, tmp_path):
    # The callback state holds whole masks: two ranks cut their rows out of a checkpoint one process wrote. The
    # steps left are re-planned for the doubled tokens per step (replan_on_resume).
    pruned = _pruned_2of4(tiny_parent, tmp_path / "pruned")
    sparse = [
        "--model.init_args.init=litprune.inits.FromPretrained",
        f"--model.init_args.init.init_args.path={pruned}",
        "--model.init_args.preset=null",
        "--model.init_args.replan_on_resume=true",
        f"--config={FROM_INIT}",
    ]
    resumed = _killed_and_resumed(tmp_path, *sparse, first_devices=1)
    record = json.loads((resumed / "results.json").read_text())["run"]
    assert record["tokens_seen"] == MAX_TOKENS and record["step_shape"]["world_size"] == 2
    masks = _assert_masks_exact(resumed / "export", "2:4")
    given = load_masks(pruned / "sparsity_masks.safetensors")
    assert all(torch.equal(masks[name], given[name]) for name in given)


def test_fsdp2_gradual_wanda_resumed_between_events_matches_uninterrupted(embedded_cache, tmp_path):
    gradual = {
        "class_path": "litprune.callbacks.sparse_mask.SparseMask",
        "init_args": {
            "mask_source": "dense",
            "schedule": "gradual",
            "score": "wanda",
            "ratio": 0.5,
            "start_step": 2,
            "end_step": 6,
            "frequency": 2,
        },
    }
    extra = [_callbacks_config(tmp_path / "gradual.yaml", gradual)]
    straight = tmp_path / "straight"
    _fit(straight, *extra)
    # Killed after step 5: the checkpoint of step 4 holds one batch of Wanda statistics per rank since the event.
    resumed = _killed_and_resumed(tmp_path, *extra)
    _assert_same_run(straight, resumed)
    masks = _assert_masks_exact(straight / "export", None)
    for name, keep in masks.items():
        assert bool(((~keep).sum(1) == keep.shape[1] // 2).all()), name  # Wanda's rule per row, on whole rows


def test_fsdp2_per_tensor_magnitude_masks_equal_a_single_process_run(embedded_cache, tmp_path):
    # One global k-th value per tensor needs the whole tensor: the sharded run gathers the scores. At step 0 both
    # runs score the same initial weights (the sharded random init is the unsharded one, rank by rank).
    one_shot = {
        "class_path": "litprune.callbacks.sparse_mask.SparseMask",
        "init_args": {"mask_source": "dense", "schedule": "one_shot", "ratio": 0.5, "per_row": False},
    }
    extra = _callbacks_config(tmp_path / "one_shot.yaml", one_shot)
    _fit(tmp_path / "sharded", extra, max_tokens=1024)
    _fit(tmp_path / "single", extra, devices=1, max_tokens=1024)
    sharded = _assert_masks_exact(tmp_path / "sharded" / "export", None)
    single = _assert_masks_exact(tmp_path / "single" / "export", None)
    assert sharded.keys() == single.keys()
    for name in single:
        assert torch.equal(sharded[name], single[name]), name
        assert int((~single[name]).sum()) == single[name].numel() // 2, name


def test_fsdp2_clips_the_global_norm_of_sharded_gradients(tmp_path):
    # Lightning's ModelParallelStrategy clips DTensor gradients by their global norm: right before the update the
    # norm over both ranks' shards is the clip value (clipping each shard by its own norm would leave sqrt(2) x it).
    script = TESTS / "fsdp2_clip_script.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=TESTS,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert ranks[0] == ranks[1]
    result = ranks[0]
    assert result["dtensor_grads"] and len(result["after"]) == 3
    for before, after in zip(result["before"], result["after"], strict=True):
        assert before > result["clip"]
        assert after == pytest.approx(result["clip"], rel=1e-4)


def test_cpu_offload_on_a_cpu_run_is_refused_with_what_to_set(embedded_cache, tmp_path):
    proc = _fit(tmp_path / "run", "--model.init_args.cpu_offload=true", max_tokens=1024, wait=False)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "cpu_offload=true moves FSDP2 shards from an accelerator" in err and "Set cpu_offload: false" in err


def test_fsdp2_distributed_checkpoint_killed_and_resumed_matches_uninterrupted(embedded_cache, tmp_path):
    # configs/trainer/fsdp_8b.yaml's format: a checkpoint directory of per-rank shards plus meta.pt (which holds the
    # callback states, so the gathered whole masks). Driven through the CLI's objects: `--ckpt_path last` names
    # checkpoint files only.
    script = TESTS / "fsdp2_distributed_checkpoint_script.py"

    def run(run_dir: Path, ckpt: str = "", *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, str(script), str(run_dir), str(MAX_TOKENS), ckpt, *extra]
        return subprocess.Popen(
            cmd,
            cwd=TESTS,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finish(proc: subprocess.Popen) -> None:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-4000:]

    straight, interrupted, flag = tmp_path / "straight", tmp_path / "interrupted", tmp_path / "stalled"
    finish(run(straight))
    stall = {"class_path": "resume_helpers.StallAtStep", "init_args": {"step": 5, "flag": str(flag)}}
    stall_config = tmp_path / "stall.yaml"
    stall_config.write_text(yaml.safe_dump({"trainer": {"callbacks+": [stall]}}), encoding="utf-8")
    proc = run(interrupted, "", str(stall_config))
    deadline = time.monotonic() + 900
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-4000:]
        assert time.monotonic() < deadline, "the run never reached the stall step"
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = interrupted / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / "meta.pt").is_file()
    assert torch.load(ckpt / "meta.pt", weights_only=True)["global_step"] == 4
    finish(run(interrupted, str(ckpt)))
    _assert_same_run(straight, interrupted)
    masks_a = _assert_masks_exact(straight / "export", "2:4")
    masks_b = _assert_masks_exact(interrupted / "export", "2:4")
    assert all(torch.equal(masks_a[name], masks_b[name]) for name in masks_a)
