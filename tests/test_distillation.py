"""Distillation from a frozen teacher: the loss against a hand computation (T^2 scaling, alpha = 1 is plain CE,
top-k), argument checks, and real `litprune fit` runs: the teacher stays frozen, in eval mode and outside the
module (state_dict, checkpoint, optimizer), masks survive, the record reaches results.json and the export, a
teacher of another vocabulary is refused before training, and a crashed run resumes bit-identically (a changed
teacher is refused)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import make_tiny_llama, tiny_run_args
from lightning.pytorch import Callback
from safetensors.torch import load_file, save_file

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.models.params import count_parameters
from litprune.models.sparse_checkpoint import load_masks
from litprune.modules.distillation import (
    Distillation,
    TeacherTargets,
    compute_dtype,
    distillation_loss,
    teacher_targets,
)
from litprune.training.metrics_logger import read_metrics

REPO = Path(__file__).resolve().parents[1]
ONE_SHOT_2OF4 = REPO / "callbacks" / "one_shot_2of4.yaml"
TOKENS = 2048  # 8 steps of 8 x 32 tokens; the tests' config checkpoints every 2 steps and validates every 4


# ------------------------------------------------------------------------------------------------------- the loss


def _log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    log_z = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - log_z for x in scaled]


def _kl(teacher: list[float], student: list[float]) -> float:
    """KL(p || q) from the log-probabilities of p (over its support) and of q at the same tokens."""
    return sum(math.exp(t) * (t - s) for t, s in zip(teacher, student, strict=True))


STUDENT = [[[2.0, 0.5, -1.0, 0.0], [0.3, 0.1, 1.2, -0.4]]]  # [B=1, T=2, V=4]
TEACHER = [[[1.0, 1.5, -0.5, 0.2], [-1.0, 0.4, 2.0, 0.0]]]
LABELS = [[0, 3]]


def test_loss_is_alpha_ce_plus_t_squared_kl_by_hand():
    alpha, temperature = 0.25, 2.0
    result = distillation_loss(
        torch.tensor(STUDENT), TeacherTargets(torch.tensor(TEACHER)), torch.tensor(LABELS), alpha, temperature
    )
    ce = -sum(_log_softmax(STUDENT[0][t])[LABELS[0][t]] for t in range(2)) / 2
    kl = sum(_kl(_log_softmax(TEACHER[0][t], 2.0), _log_softmax(STUDENT[0][t], 2.0)) for t in range(2)) / 2
    assert result.ce.item() == pytest.approx(ce, rel=1e-6)
    assert result.kl.item() == pytest.approx(kl, rel=1e-6)
    assert result.total.item() == pytest.approx(alpha * ce + (1 - alpha) * temperature**2 * kl, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_the_t_squared_factor_keeps_the_kl_gradient_at_t_times_the_probability_gap(temperature):
    # d(T^2 KL)/d(student logits) = T (p_s^T - p_t^T), per token, averaged over the N tokens.
    student = torch.tensor(STUDENT, requires_grad=True)
    result = distillation_loss(student, TeacherTargets(torch.tensor(TEACHER)), torch.tensor(LABELS), 0.0, temperature)
    result.total.backward()
    gap = F.softmax(student.detach() / temperature, -1) - F.softmax(torch.tensor(TEACHER) / temperature, -1)
    torch.testing.assert_close(student.grad, temperature * gap / 2)


@pytest.mark.parametrize("top_k", [None, 2])
def test_alpha_one_is_exactly_the_plain_cross_entropy(top_k):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 16, generator=g, requires_grad=True)
    teacher, labels = torch.randn(2, 5, 16, generator=g), torch.randint(0, 16, (2, 5), generator=g)
    plain_student = student.detach().clone().requires_grad_(True)
    plain = F.cross_entropy(plain_student.flatten(0, 1), labels.flatten())
    plain.backward()
    result = distillation_loss(student, teacher_targets(teacher, top_k, 3.0), labels, alpha=1.0, temperature=3.0)
    result.total.backward()
    assert torch.equal(result.total.detach(), plain.detach())
    assert torch.equal(student.grad, plain_student.grad)
    assert result.kl.item() > 0  # still measured


def _outcomes(log_probs: list[float], top: list[int], rest: list[int]) -> list[float]:
    """Log-probabilities of the k top tokens one by one (not renormalised), then of every other token as one."""
    return [log_probs[i] for i in top] + [math.log(sum(math.exp(log_probs[i]) for i in rest))]


def test_top_k_compares_the_teachers_top_tokens_and_the_mass_of_all_others_by_hand():
    temperature = 1.5
    targets = teacher_targets(torch.tensor(TEACHER), top_k=2, temperature=temperature)
    assert (
        targets.logits is None and targets.top_log_probs.shape == (1, 2, 2) and targets.top_indices.shape == (1, 2, 2)
    )
    assert targets.rest_log_prob.shape == (1, 2)
    result = distillation_loss(torch.tensor(STUDENT), targets, torch.tensor(LABELS), 0.0, temperature)
    expected = 0.0
    for t in range(2):
        top = sorted(range(4), key=lambda i: -TEACHER[0][t][i])[:2]
        rest = [i for i in range(4) if i not in top]
        teacher, student = _log_softmax(TEACHER[0][t], temperature), _log_softmax(STUDENT[0][t], temperature)

        expected += _kl(_outcomes(teacher, top, rest), _outcomes(student, top, rest)) / 2
    assert result.kl.item() == pytest.approx(expected, rel=1e-6)
    assert result.total.item() == pytest.approx(temperature**2 * expected, rel=1e-6)


def test_top_k_kl_is_zero_for_the_teacher_itself_and_never_above_the_full_kl():
    g = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(2, 6, 32, generator=g) * 3, torch.randn(2, 6, 32, generator=g) * 3
    labels = torch.randint(0, 32, (2, 6), generator=g)
    full = distillation_loss(student, teacher_targets(teacher), labels, 0.0, 2.0).kl.item()
    for k in (1, 4, 31):
        top = distillation_loss(student, teacher_targets(teacher, k, 2.0), labels, 0.0, 2.0).kl.item()
        assert 0.0 < top <= full + 1e-6
        itself = distillation_loss(teacher, teacher_targets(teacher, k, 2.0), labels, 0.0, 2.0).kl.item()
        assert itself == pytest.approx(0.0, abs=1e-6)


def test_top_k_equals_the_full_kl_when_the_teacher_gives_the_other_tokens_no_mass():
    teacher = torch.tensor([[[3.0, -1e4, 1.0, -1e4], [-1e4, 0.5, -1e4, 2.0]]])
    student, labels = torch.tensor(STUDENT), torch.tensor(LABELS)
    full = distillation_loss(student, teacher_targets(teacher), labels, 0.3, 2.0)
    top = distillation_loss(student, teacher_targets(teacher, 2, 2.0), labels, 0.3, 2.0)
    assert top.kl.item() == pytest.approx(full.kl.item(), rel=1e-6)
    assert top.total.item() == pytest.approx(full.total.item(), rel=1e-6)


def test_top_k_must_leave_tokens_out():
    with pytest.raises(ValueError, match=r"top_k=4 keeps the whole vocabulary of 4 tokens"):
        teacher_targets(torch.tensor(TEACHER), top_k=4)


def test_ignored_labels_count_in_neither_term():
    labels = torch.tensor([[0, -100]])
    result = distillation_loss(torch.tensor(STUDENT), teacher_targets(torch.tensor(TEACHER)), labels, 0.5, 1.0)
    first = distillation_loss(
        torch.tensor(STUDENT)[:, :1], TeacherTargets(torch.tensor(TEACHER)[:, :1]), labels[:, :1], 0.5, 1.0
    )
    assert result.ce.item() == pytest.approx(first.ce.item()) and result.kl.item() == pytest.approx(first.kl.item())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"teacher": ""}, "teacher='' must name the teacher checkpoint"),
        ({"alpha": 1.5}, r"alpha=1.5 must be a number in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha=-0.1 must be a number in \[0, 1\]"),
        ({"temperature": 0.0}, "temperature=0.0 must be a finite number > 0"),
        ({"top_k": 0}, "top_k=0 must be an integer >= 1, or null"),
        ({"top_k": 2.5}, "top_k=2.5 must be an integer >= 1, or null"),
        ({"temperature": float("inf")}, "temperature=inf must be a finite number > 0"),
    ],
)
def test_distillation_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Distillation(**{"teacher": "runs/tiny_scratch/export", **kwargs})


def test_the_teacher_computes_in_the_trainers_dtype():
    assert compute_dtype("bf16-mixed") == torch.bfloat16 and compute_dtype("bf16-true") == torch.bfloat16
    assert compute_dtype("16-mixed") == torch.float16
    assert compute_dtype("32-true") == torch.float32


# ------------------------------------------------------------------------------------------------ real fit runs


class TeacherProbe(Callback):
    """Checks at every training step where the teacher is: frozen, in eval mode, outside the module and optimizer."""

    def __init__(self) -> None:
        self.teacher_ids: set[int] = set()
        self.failures: list[str] = []
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        teacher = pl_module.teacher.model
        self.steps += 1
        self.teacher_ids.add(id(teacher))
        student = {id(p) for p in pl_module.parameters()}
        in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        checks = {
            "eval mode": not teacher.training and not any(m.training for m in teacher.modules()),
            "frozen": not any(p.requires_grad or p.grad is not None for p in teacher.parameters()),
            "outside the module": not any(id(p) in student for p in teacher.parameters()),
            "outside state_dict": set(pl_module.state_dict()) == {f"model.{k}" for k in pl_module.model.state_dict()},
            "outside the optimizer": not any(id(p) in in_optimizer for p in teacher.parameters()),
            "student trains": pl_module.model.training,
            "same device": next(teacher.parameters()).device == pl_module.device,
        }
        self.failures += [f"step {trainer.global_step}: {name}" for name, ok in checks.items() if not ok]


def _fit(run_dir: Path, distill: dict, *extra: str, callbacks: list | None = None, init: dict | None = None):
    override = {"model": {"init_args": {"distill": distill}}}
    if init is not None:
        override["model"]["init_args"].update({"preset": None, "arm": "P_M-R_N", "init": init})
    if callbacks:
        override["trainer"] = {"callbacks+": callbacks}
    path = run_dir.parent / f"{run_dir.name}_override.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(override), encoding="utf-8")
    args = tiny_run_args(run_dir, TOKENS, **{"trainer.enable_progress_bar": "false"})
    return LitpruneCLI(args=[*args, "--config", str(path), *extra])


@pytest.fixture
def teacher(tiny_parent, tmp_path) -> Path:
    """A private copy of the tests' tiny parent (the teacher of these runs; one test changes its weights)."""
    return Path(shutil.copytree(tiny_parent, tmp_path / "teacher"))


def test_sparse_distilled_fit_keeps_teacher_out_masks_exact_and_records_it(teacher, tmp_path):
    run_dir = tmp_path / "run"
    distill = {"teacher": str(teacher), "alpha": 0.5, "temperature": 1.0}
    from_parent = {"class_path": "litprune.inits.FromPretrained", "init_args": {"path": str(teacher)}}
    probe = {"class_path": "test_distillation.TeacherProbe"}
    cli = _fit(run_dir, distill, "--config", str(ONE_SHOT_2OF4), callbacks=[probe], init=from_parent)

    (probe,) = [c for c in cli.trainer.callbacks if isinstance(c, TeacherProbe)]
    assert probe.steps == 8 and probe.failures == []
    assert len(probe.teacher_ids) == 1  # loaded once for the fit
    assert cli.model.teacher.model is None  # released when fit ended

    # Checkpoints hold the student alone; the optimizer state covers the student's parameters only.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    student_keys = {f"model.{k}" for k in cli.model.model.state_dict()}
    assert set(checkpoint["state_dict"]) == student_keys
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(list(cli.model.model.parameters()))

    # The masks survive distillation: exactly 2 of every 4 weights are 0 in the export.
    masks = load_masks(run_dir / "export")
    weights = load_file(run_dir / "export" / "model.safetensors")
    assert len(masks) == 4 * 7
    for name, keep in masks.items():
        assert int(weights[name][~keep].count_nonzero()) == 0, name
        assert bool((keep.reshape(keep.shape[0], -1, 4).sum(-1) == 2).all()), name

    parent = count_parameters(make_tiny_llama(vocab_size=512)).as_dict()
    for record in (
        json.loads((run_dir / "results.json").read_text())["run"],
        json.loads((run_dir / "export" / "litprune.json").read_text())["run"],
    ):
        distillation = record["distillation"]
        assert distillation["teacher"] == str(teacher)
        assert (distillation["alpha"], distillation["temperature"], distillation["top_k"]) == (0.5, 1.0, None)
        assert distillation["teacher_parameters"] == parent
        assert record["tokens_seen"] == TOKENS and distillation["teacher_tokens"] == TOKENS
        assert distillation["teacher_flops"] == 2 * parent["non_embedding"] * TOKENS
        assert distillation["teacher_fingerprint"].startswith("sha256:")

    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert sorted(metrics["train/kl"]) == list(range(8)) and sorted(metrics["train/ce"]) == list(range(8))
    for step, total in metrics["train/loss"].items():
        assert total == pytest.approx(0.5 * metrics["train/ce"][step] + 0.5 * metrics["train/kl"][step], rel=1e-5)
        assert metrics["train/ppl"][step] == pytest.approx(math.exp(metrics["train/ce"][step]), rel=1e-4)
    # The student starts as the teacher itself pruned to 2:4: the KL is positive, and validation stays plain CE.
    assert all(kl > 0 for kl in metrics["train/kl"].values())
    assert "val/loss" in metrics and "val/kl" not in metrics


def test_resumed_distilled_run_matches_the_uninterrupted_one_and_refuses_a_changed_teacher(teacher, tmp_path):
    distill = {"teacher": str(teacher), "alpha": 0.3, "temperature": 2.0, "top_k": 64}
    straight = tmp_path / "straight"
    _fit(straight, distill)

    interrupted = tmp_path / "interrupted"
    crash = {"class_path": "resume_helpers.FailAtStep", "init_args": {"step": 5}}
    with pytest.raises(RuntimeError, match="interrupted at step 5"):
        _fit(interrupted, distill, callbacks=[crash])
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["litprune"]["distillation"]["teacher_tokens"] == TOKENS // 2
    _fit(interrupted, distill, "--ckpt_path=last")

    a, b = load_file(straight / "export" / "model.safetensors"), load_file(interrupted / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train/loss", "train/ce", "train/kl"):
        assert read_metrics(straight / "metrics.jsonl")[key] == read_metrics(interrupted / "metrics.jsonl")[key]
    record = json.loads((interrupted / "results.json").read_text())["run"]["distillation"]
    assert record["top_k"] == 64 and record["teacher_tokens"] == TOKENS

    # The teacher at the same path now holds other weights: resuming is refused before any training.
    weights = load_file(teacher / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 1.01
    save_file(weights, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"(?s)distillation differs from the checkpoint's.*teacher weights: checkpoint"
    ):
        _fit(interrupted, distill, "--ckpt_path=last")


def test_a_teacher_with_another_tokenizer_is_refused_before_training(tmp_path):
    other = tmp_path / "other"
    make_tiny_llama(vocab_size=256).save_pretrained(other)
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"The run's tokenizer has 512 tokens but the teacher .* has vocab_size=256"):
        _fit(run_dir, {"teacher": str(other)})
    assert not (run_dir / "checkpoints").exists()


def test_a_teacher_with_another_vocab_size_than_the_student_is_refused_before_training(tiny_parent, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"vocab_size=512 but the student has vocab_size=640"):
        _fit(run_dir, {"teacher": str(tiny_parent)}, "--model.init_args.overrides={vocab_size: 640}")
    assert not (run_dir / "checkpoints").exists()


def test_a_missing_teacher_is_refused_with_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="No Hugging Face checkpoint at .*nowhere"):
        _fit(tmp_path / "run", {"teacher": str(tmp_path / "nowhere")})
