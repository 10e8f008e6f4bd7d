"""Retraining by knowledge distillation: a frozen teacher (the parent, or any Hugging Face checkpoint with the run's
tokenizer) guides the student's next-token distribution.

The objective at every training step, per predicted token, averaged over the tokens of the micro-batch:

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)

where `p^T = softmax(logits / T)`. The `T^2` factor keeps the gradient of the KL term on the scale of the CE term
whatever the temperature (the gradient of the KL with respect to the student's logits is `(p_s^T - p_t^T) / T`).
Validation and test stay plain CE, so the curves of a distilled arm and a plain arm compare directly.

Design choices:

- Top-k (`top_k: k`): right after the teacher's forward, each position keeps only the teacher's k most probable
  tokens, their log-probabilities at temperature T (normalised over the whole vocabulary, not renormalised) and the
  log of the probability of all other tokens together, so a step holds `[B, T, k]` values and ids plus `[B, T]`
  instead of `[B, T, V]` logits. The KL is then taken between the teacher's and the student's distributions over
  k + 1 outcomes, the teacher's top-k tokens one by one and "any other token" as one outcome:
  `sum_{i in top-k} p_t(i) (log p_t(i) - log p_s(i)) + p_t(rest) (log p_t(rest) - log p_s(rest))`, with
  `p_s(rest) = 1 - sum_{i in top-k} p_s(i)` from the student's full softmax at T. It is a true KL (>= 0, and 0 when
  the student equals the teacher), never above the full KL, and equal to it when the teacher gives the other tokens
  no mass; the student matches the teacher's top-k probabilities and its total mass elsewhere, but not how that mass
  spreads over the other tokens. (Renormalising the teacher over its top-k instead would ask the student to move
  all its mass onto k tokens, so even the teacher itself would not score 0.)
- The teacher is held outside the student's module tree (`Teacher`, a plain object), so it is never in
  `state_dict`, in a checkpoint, in the optimizer, moved by the strategy or switched to train mode by Lightning. It
  is frozen (`requires_grad=False`), in eval mode, loaded once per fit at the compute dtype (bf16 under a bf16
  precision) on the run's device, and runs under `torch.no_grad()`; the extra memory is its weights plus one batch
  of its logits (or of its top-k). Under FSDP2 (`ModelParallelStrategy`) it is sharded like the student
  (`litprune.models.sharding.shard_model`) and its gathered parameters are freed after each forward.
- Before any weight is read, the teacher's config is checked against the run: its tokenizer must be the run's
  (`litprune.inits.parent.check_run_data`, as for a pruned parent), its positions must hold the training windows,
  and its `vocab_size` must equal the student's (the KL compares logits token by token).
- A resumed fit loads the teacher again from its path; its weight fingerprint (sha256 of the weight files of a
  local directory, the resolved revision of a hub id) and the distillation settings must match the checkpoint's.
- The run record (`run_record()["distillation"]`, in `results.json` and `export/litprune.json`) names the teacher,
  the settings, its parameter counts, the tokens it processed (every training token: it sees each batch once) and
  its forward FLOPs (`2 x non-embedding parameters x tokens`). The arm's training budget N is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from litprune.inits.parent import check_run_data
from litprune.models.loading import load_model_config
from litprune.models.params import ParameterCount, count_parameters
from litprune.models.sharding import reshard_all
from litprune.utils.hub import hub_errors

IGNORE_INDEX = -100  # labels at this value are not predicted (F.cross_entropy's default); none in packed windows


@dataclass(frozen=True)
class Distillation:
    """Distil from a frozen teacher while retraining: `alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)`.

    ```yaml
    model:
      init_args:
        distill: {teacher: runs/tiny_scratch/export, alpha: 0.5, temperature: 1.0}
    ```

    Args:
        teacher: the teacher checkpoint: a directory written by `save_pretrained` (e.g. the parent's
            `<run dir>/export`) or a hub id. It must use the run's tokenizer and have the student's vocab_size.
        alpha: weight of the cross-entropy on the data's labels, in [0, 1]; the KL term gets `1 - alpha`. 1 trains
            on plain CE (the KL is still measured and logged), 0 on the teacher's distribution alone.
        temperature: softening temperature T > 0 of both distributions in the KL; the KL term is scaled by T^2.
        top_k: keep only the teacher's k most probable tokens per position (1 <= k < vocab_size; null: the whole
            vocabulary). The KL then compares teacher and student on those k tokens and on the total probability
            of all other tokens (k + 1 outcomes; see the module docstring); this saves the memory of a batch of the
            teacher's full logits.

    Raises:
        ValueError: an argument out of range (its name, value and the allowed range are given).
    """

    teacher: str
    alpha: float = 0.5
    temperature: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.teacher, str) or not self.teacher.strip():
            problems.append(
                f"teacher={self.teacher!r} must name the teacher checkpoint: a directory written by save_pretrained "
                "(e.g. runs/tiny_scratch/export) or a hub id"
            )
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha={self.alpha!r} must be a number in [0, 1] (the weight of the CE term)")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature <= 0
        ):
            problems.append(f"temperature={self.temperature!r} must be a finite number > 0 (1.0: no softening)")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            problems.append(f"top_k={self.top_k!r} must be an integer >= 1, or null for the whole vocabulary")
        if problems:
            raise ValueError("model.init_args.distill: " + "; ".join(problems) + ".")

    def settings(self) -> dict[str, Any]:
        """The settings as plain JSON values (the record's and the resume check's)."""
        return {"alpha": float(self.alpha), "temperature": float(self.temperature), "top_k": self.top_k}


# ------------------------------------------------------------------------------------------------------ the loss


class TeacherTargets(NamedTuple):
    """What the loss needs of the teacher's forward: its logits, or its top-k summary (`teacher_targets`).

    Attributes:
        logits: `[B, T, V]` teacher logits (the whole vocabulary); None for top-k.
        top_log_probs: `[B, T, k]` log-probabilities at temperature T of the teacher's k most probable tokens
            (normalised over the whole vocabulary).
        top_indices: `[B, T, k]` their token ids.
        rest_log_prob: `[B, T]` log of the teacher's total probability at T of all other tokens.
    """

    logits: Tensor | None = None
    top_log_probs: Tensor | None = None
    top_indices: Tensor | None = None
    rest_log_prob: Tensor | None = None


class DistillationLoss(NamedTuple):
    """The training objective of one step and its two terms (scalars; `total` carries the gradient)."""

    total: Tensor
    ce: Tensor
    kl: Tensor


def teacher_targets(teacher_logits: Tensor, top_k: int | None = None, temperature: float = 1.0) -> TeacherTargets:
    """What the loss keeps of `[B, T, V]` teacher logits: all of them (`top_k` None), or per position the
    log-probabilities at `temperature` of the `top_k` most probable tokens, their ids and the log-probability of all
    other tokens together. The top-k summary carries no gradient (it is the teacher's side).

    Raises:
        ValueError: `top_k` is not below the vocabulary size (use None for the whole vocabulary).
    """
    if top_k is None:
        return TeacherTargets(logits=teacher_logits)
    vocab = teacher_logits.shape[-1]
    if top_k >= vocab:
        raise ValueError(
            f"model.init_args.distill.top_k={top_k} keeps the whole vocabulary of {vocab} tokens; set top_k below "
            f"{vocab}, or null for the full distribution."
        )
    with torch.no_grad():  # the teacher's side: targets, never trained through
        log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # [B, T, V]
        top, indices = log_probs.topk(top_k, dim=-1, sorted=False)  # [B, T, k]
        # The other tokens' probabilities summed directly (no 1 - sum(top) cancellation), in place.
        rest = log_probs.exp_().scatter_(-1, indices, 0.0).sum(-1).log()  # [B, T]; -inf when they have no mass
    return TeacherTargets(top_log_probs=top, top_indices=indices, rest_log_prob=rest)


def distillation_loss(
    student_logits: Tensor, targets: TeacherTargets, labels: Tensor, alpha: float, temperature: float
) -> DistillationLoss:
    """`alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)`, each term a mean over the predicted tokens.

    Computed in fp32 whatever the logits' dtype. With a top-k summary of the teacher, the KL is taken over k + 1
    outcomes: the teacher's top-k tokens and all other tokens as one (see the module docstring). Positions whose
    label is -100 count in neither term.

    Args:
        student_logits: `[B, T, V]` student logits (with gradient).
        targets: the teacher's logits or top-k (`teacher_targets`), same `[B, T]`.
        labels: `[B, T]` next-token ids.
        alpha: weight of the CE term, in [0, 1].
        temperature: temperature T of both distributions in the KL.
    """
    flat = student_logits.float().flatten(0, 1)  # [N, V]
    labels = labels.flatten()  # [N]
    log_probs = F.log_softmax(flat, dim=-1)
    ce = F.nll_loss(log_probs, labels, ignore_index=IGNORE_INDEX)
    student = log_probs if temperature == 1.0 else F.log_softmax(flat / temperature, dim=-1)  # [N, V]
    if targets.logits is not None:
        teacher = F.log_softmax(targets.logits.float().flatten(0, 1) / temperature, dim=-1)  # [N, V]
        per_token = (teacher.exp() * (teacher - student)).sum(-1)  # [N]
    else:
        indices = targets.top_indices.flatten(0, 1)  # [N, k]
        teacher = targets.top_log_probs.float().flatten(0, 1)  # [N, k]
        per_token = (teacher.exp() * (teacher - student.gather(-1, indices))).sum(-1)  # [N]
        teacher_rest = targets.rest_log_prob.float().flatten()  # [N]
        student_rest = student.scatter(-1, indices, float("-inf")).logsumexp(-1)  # [N], log p_s(other tokens)
        rest = teacher_rest.exp() * (teacher_rest - student_rest)
        per_token = per_token + torch.where(torch.isneginf(teacher_rest), 0.0, rest)  # no mass elsewhere: adds 0
    kl = per_token[labels != IGNORE_INDEX].mean()
    if alpha == 1.0:
        total = ce  # exactly the plain objective; the KL is only measured
    else:
        total = alpha * ce + (1.0 - alpha) * temperature**2 * kl
    return DistillationLoss(total=total, ce=ce, kl=kl)


# ---------------------------------------------------------------------------------------------------- the teacher


def compute_dtype(precision: Any) -> torch.dtype:
    """The dtype a Lightning precision computes in: bf16 for `bf16-*`, fp16 for `16-*`, fp32 otherwise."""
    name = str(precision)
    if name.startswith("bf16"):
        return torch.bfloat16
    if name.startswith("16"):
        return torch.float16
    return torch.float32


def read_teacher_config(distill: Distillation, data: Any = None) -> PretrainedConfig:
    """Read the teacher's config (no weights) and check the run's data fits it: same tokenizer, windows within its
    positions (`litprune.inits.parent.check_run_data`; nothing is checked about the data when `data` is None).

    Raises:
        FileNotFoundError: the teacher path looks local but holds no `config.json`.
        HubAccessError: a hub id the hub cannot serve.
        ValueError: not a Llama-layout model; the run's tokenizer is not the teacher's; windows too long.
    """
    config = load_model_config(distill.teacher, what="teacher")
    check_run_data(distill.teacher, config, data, role="teacher")
    return config


def check_teacher_vocab(teacher: str, teacher_vocab: int, student_vocab: int) -> None:
    """Raise unless teacher and student have the same `vocab_size` (the KL compares their logits token by token)."""
    if int(teacher_vocab) != int(student_vocab):
        raise ValueError(
            f"The teacher {teacher!r} has vocab_size={teacher_vocab} but the student has vocab_size={student_vocab}: "
            "distillation compares their next-token distributions token by token, so both must have the same "
            "vocabulary. Distil from a model trained with the run's tokenizer and embedding size (e.g. the parent's "
            "export), or set model.init_args.overrides.vocab_size to the teacher's."
        )


@dataclass
class Teacher:
    """The frozen teacher of a distillation run, held outside the student's module tree (a plain object, so never
    in `state_dict`, in checkpoints or in the optimizer).

    Made at setup from the teacher's config (`read_teacher_config`, no weights); `load` reads the weights once the
    student exists.

    Attributes:
        path: the teacher's directory or hub id.
        config: its config.
        fingerprint: its weight fingerprint (`weights_fingerprint`), or None when unknown.
        model: the loaded model (frozen, eval mode), or None before `load` / after `release`.
        parameters: its parameter counts, set by `load`.
    """

    path: str
    config: PretrainedConfig
    fingerprint: str | None
    model: PreTrainedModel | None = None
    parameters: ParameterCount | None = None

    def load(
        self,
        student_vocab: int,
        device: torch.device | str,
        dtype: torch.dtype,
        shard: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """Check the vocabulary against the student's, then load the weights at `dtype`, frozen and in eval mode,
        onto `device`, or sharded by `shard(model)` (FSDP2; it moves the shards to the mesh's device).

        Raises:
            ValueError: the teacher's vocab_size is not the student's.
        """
        check_teacher_vocab(self.path, int(self.config.vocab_size), int(student_vocab))
        local = Path(self.path).expanduser()
        with hub_errors(self.path, "teacher"):
            model = AutoModelForCausalLM.from_pretrained(
                str(local) if local.exists() else self.path, config=self.config, dtype=dtype
            )
        model.config.use_cache = False
        model.requires_grad_(False)
        model.eval()
        self.parameters = count_parameters(model)
        if shard is not None:
            shard(model)
        else:
            model.to(device)
        self.model = model

    def release(self) -> None:
        """Drop the weights (the counts and fingerprint stay for the record); `load` brings them back."""
        self.model = None

    def targets(self, input_ids: Tensor, top_k: int | None = None, temperature: float = 1.0) -> TeacherTargets:
        """The teacher's logits (or top-k summary at `temperature`) for `[B, T]` input ids, without gradient.

        Raises:
            RuntimeError: the teacher is not loaded.
        """
        if self.model is None:
            raise RuntimeError(
                f"The teacher {self.path!r} is not loaded: CausalLM.configure_model loads it at the start of "
                "trainer.fit."
            )
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, use_cache=False).logits  # [B, T, V]
            targets = teacher_targets(logits, top_k, temperature)
            del logits
        reshard_all(self.model)  # FSDP2 keeps the root's gathered weights after a forward; free them
        return targets

    def record(self) -> dict[str, Any]:
        """Fingerprint and parameter counts, for the run record."""
        return {
            "teacher_fingerprint": self.fingerprint,
            "teacher_parameters": self.parameters.as_dict() if self.parameters is not None else None,
        }


def distillation_record(distill: Distillation, teacher: Teacher | None, tokens_seen: int) -> dict[str, Any]:
    """`run_record()["distillation"]`: the teacher, the settings, its size, tokens and forward FLOPs.

    `teacher_tokens` is the run's `tokens_seen` (the teacher processes every training token once) and
    `teacher_flops` is `2 x teacher non-embedding parameters x teacher_tokens` (None before the teacher is loaded).
    """
    record: dict[str, Any] = {"teacher": distill.teacher, **distill.settings()}
    unknown = {"teacher_fingerprint": None, "teacher_parameters": None}
    record.update(teacher.record() if teacher is not None else unknown)
    parameters = record["teacher_parameters"]
    record["teacher_tokens"] = int(tokens_seen)
    record["teacher_flops"] = 2 * parameters["non_embedding"] * int(tokens_seen) if parameters else None
    return record


def check_resumed_distillation(
    saved: dict[str, Any] | None, distill: Distillation | None, fingerprint: str | None, source: str
) -> None:
    """Raise unless a resumed fit distils as its checkpoint did: same settings, same teacher weights.

    Args:
        saved: the checkpoint's `distillation` record (None: it trained without distillation).
        distill: the current settings (None: no distillation now).
        fingerprint: the current teacher's weight fingerprint (None: unknown; then the paths are compared).
        source: the checkpoint, for the message.

    Raises:
        ValueError: distillation switched on or off, other settings, or another teacher; the message lists
            "checkpoint X vs now Y" for each difference.
    """
    if saved is None and distill is None:
        return
    if saved is None or distill is None:
        then = "with distillation" if saved is not None else "without distillation"
        now = f"model.init_args.distill={distill.teacher!r}" if distill is not None else "no model.init_args.distill"
        raise ValueError(
            f"Cannot resume from {source}: it was trained {then}, and now the run has {now}. Resume with the "
            "original settings (the run's config.yaml), or start a new run in another --trainer.default_root_dir."
        )
    differences = [
        f"{key}: checkpoint {saved.get(key)!r} vs now {value!r}"
        for key, value in distill.settings().items()
        if saved.get(key) != value
    ]
    then = saved.get("teacher_fingerprint")
    if then is not None and fingerprint is not None:
        if then != fingerprint:
            differences.append(
                f"teacher weights: checkpoint {then} ({saved.get('teacher')!r}) vs now {fingerprint} "
                f"({distill.teacher!r})"
            )
    elif saved.get("teacher") != distill.teacher:
        differences.append(f"teacher: checkpoint {saved.get('teacher')!r} vs now {distill.teacher!r}")
    if differences:
        listing = "\n  ".join(differences)
        raise ValueError(
            f"Cannot resume from {source}: the distillation differs from the checkpoint's:\n  {listing}\nResume with "
            "the same teacher checkpoint and distill settings, or start a new run in another "
            "--trainer.default_root_dir."
        )
