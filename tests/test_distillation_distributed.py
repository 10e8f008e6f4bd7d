"""Distillation on two CPU processes (gloo): under FSDP2 (`ModelParallelStrategy`) the teacher is sharded like the
student and, when the student starts as the teacher, the first step's KL is exactly 0; under DDP a distilled run
keeps its 2:4 masks; on both, the record counts the global tokens and the checkpoints hold the student alone.

Slow tier (`pytest -m slow`, about 2 minutes on 2 cores): two 2-process fits of the tests' tiny config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_llama, tiny_run_args
from lightning.pytorch import Callback
from safetensors.torch import load_file

from litprune.models.params import count_parameters
from litprune.models.sparse_checkpoint import load_masks
from litprune.training.metrics_logger import read_metrics

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FSDP2 = REPO / "configs" / "trainer" / "fsdp2_cpu.yaml"
ONE_SHOT_2OF4 = REPO / "callbacks" / "one_shot_2of4.yaml"
MAX_TOKENS = 2048  # 4 steps of 2 processes x 8 x 32 tokens


class TeacherPlacement(Callback):
    """Writes `<out>/rank<k>.json` at the end of training: how the teacher is held on this rank."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        from litprune.models.sharding import is_dtensor, local_tensor

        teacher = pl_module.teacher.model
        params = list(teacher.parameters())
        student = {id(p) for p in pl_module.parameters()}
        report = {
            "dtensor": all(is_dtensor(p) for p in params),
            "local_numel": sum(local_tensor(p).numel() for p in params),
            "global_numel": sum(p.numel() for p in params),
            "eval": not any(m.training for m in teacher.modules()),
            "frozen": not any(p.requires_grad for p in params),
            "outside": not any(id(p) in student for p in params),
            "state_dict": sorted({key.split(".")[0] for key in pl_module.state_dict()}),
        }
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(report), encoding="utf-8")


def _fit(run_dir: Path, teacher: Path, distill: dict, *extra: str, callbacks: list | None = None) -> None:
    override = {
        "model": {
            "init_args": {
                "preset": None,
                "arm": "P_M-R_N",
                "init": {"class_path": "litprune.inits.FromPretrained", "init_args": {"path": str(teacher)}},
                "distill": {"teacher": str(teacher), **distill},
            }
        }
    }
    if callbacks:
        override["trainer"] = {"callbacks+": callbacks}
    path = run_dir.parent / f"{run_dir.name}_override.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(override), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "litprune", *tiny_run_args(run_dir, MAX_TOKENS), "--config", str(path)]
    cmd += ["--trainer.enable_progress_bar=false", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]


def _check_record(run_dir: Path, top_k: int | None) -> None:
    parent = count_parameters(make_tiny_llama(vocab_size=512)).as_dict()  # whole-model counts, not one shard's
    run = json.loads((run_dir / "results.json").read_text())["run"]
    distillation = run["distillation"]
    assert run["tokens_seen"] == MAX_TOKENS and run["step_shape"]["world_size"] == 2
    assert distillation["top_k"] == top_k and distillation["teacher_parameters"] == parent
    assert distillation["teacher_tokens"] == MAX_TOKENS
    assert distillation["teacher_flops"] == 2 * parent["non_embedding"] * MAX_TOKENS
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    exported = load_file(run_dir / "export" / "model.safetensors")
    assert set(state) == {f"model.{name}" for name in exported}  # the student's tensors, no teacher


def test_fsdp2_shards_the_teacher_and_a_student_equal_to_it_starts_at_zero_kl(tiny_parent, tmp_path):
    run_dir, out = tmp_path / "fsdp2", tmp_path / "placement"
    out.mkdir()
    probe = {"class_path": "test_distillation_distributed.TeacherPlacement", "init_args": {"out": str(out)}}
    _fit(run_dir, tiny_parent, {"alpha": 0.5, "temperature": 2.0, "top_k": 64}, f"--config={FSDP2}", callbacks=[probe])

    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    for rank in ranks:
        assert rank["dtensor"] and rank["eval"] and rank["frozen"] and rank["outside"]
        assert rank["local_numel"] < rank["global_numel"]  # each rank holds a shard of the teacher
        assert rank["state_dict"] == ["model"]
    assert ranks[0]["local_numel"] + ranks[1]["local_numel"] == ranks[0]["global_numel"]

    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert sorted(metrics["train/kl"]) == [0, 1, 2, 3]
    # Step 0: the sharded student is the sharded teacher, so their distributions agree on both ranks' batches.
    assert metrics["train/kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert metrics["train/kl"][3] > 0  # and they part once the student trains
    _check_record(run_dir, top_k=64)


def test_ddp_distillation_keeps_the_masks_and_counts_global_tokens(tiny_parent, tmp_path):
    run_dir = tmp_path / "ddp"
    extra = ["--trainer.devices=2", "--trainer.strategy=ddp", f"--config={ONE_SHOT_2OF4}"]
    _fit(run_dir, tiny_parent, {"alpha": 0.5, "temperature": 1.0}, *extra)

    masks = load_masks(run_dir / "export")
    weights = load_file(run_dir / "export" / "model.safetensors")
    assert len(masks) == 4 * 7
    for name, keep in masks.items():
        assert int(weights[name][~keep].count_nonzero()) == 0, name
        assert bool((keep.reshape(keep.shape[0], -1, 4).sum(-1) == 2).all()), name
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert sorted(metrics["train/kl"]) == [0, 1, 2, 3] and all(kl > 0 for kl in metrics["train/kl"].values())
    _check_record(run_dir, top_k=None)
