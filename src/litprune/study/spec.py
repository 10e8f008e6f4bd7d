"""The study YAML: one file that defines a whole token-matched comparison, checked before anything runs.

A study names one or more parents (`P_M`: pretrained from scratch by litprune for M tokens, or an existing
Hugging Face checkpoint), the pruning methods and ratios, the retraining budgets N, the arms to run and the
settings every arm shares (trainer, data, recipe, calibration, evaluation):

```yaml
name: tiny
out_dir: runs/study_tiny
parents:
  parent: {preset: small, tokens: 2097152}          # P_M, M = 2,097,152 tokens
retrain_tokens: [524288]                             # the N of S_N and P_M-R_N (several: a scaling curve)
arms: [S_N, P_M-R_N, S_M+N]
methods:
  - {method: minitron_depth, ratios: [0.5]}
  - {method: wanda, ratios: [0.5], pattern: unstructured}
slices: {parent: pretrain, retrain: retrain, calibration: pretrain}
calibration: {nsamples: 64, seqlen: 128}
model: {lr: 3.0e-3}                                  # CausalLM arguments shared by every arm
data: {vocab_size: 1024, seq_len: 128, micro_batch_size: 16, slices: {...}}   # TokenDataModule arguments
trainer: {accelerator: cpu, devices: 1}              # Trainer arguments shared by every arm
eval: {tasks: [litprune_next_line], perplexity: [embedded], limit: 200}
```

`load_study` reads the file strictly (an unknown key fails and the close matches are named) and `check_study`
reports every problem at once: an arm that needs a parent the study does not define, a ratio a method cannot
reach on the parent's shape, a budget smaller than one optimizer step or not a whole number of steps, slices
that are not defined, a method option the method does not take. The arms themselves are built by
`litprune.study.arms.expand_study`.

Methods come in three families:

- one-shot structured (`minitron_depth`, `shortgpt`, `minitron_width`, `flap`, `wanda_sp`: the names of
  `litprune.pruning.structured.STRUCTURED_METHODS`), pruned by `StructuredPrune` when the arm starts; their
  `options` are `StructuredPrune`'s own arguments (e.g. `batch_size`, or FLAP's settings), checked by name here;
- sparse (`wanda`, `sparsegpt`, `magnitude`), pruned by `SparsePrune` (`options` are its `method_kwargs`);
- learned (`sheared`: Sheared-LLaMA, `LEARNED_METHODS`): the structure is learned while training, so its
  `P_M-R_N` is a chain of two ordinary runs, a pruning phase that learns the masks
  (`litprune.callbacks.sheared.ShearedPruning`, started from the dense parent) and continued pretraining of its
  export. The chain spends N tokens in all, like `S_N`: the pruning phase takes `prune_fraction` of N (option,
  default `DEFAULT_PRUNE_FRACTION` = 0.2), rounded to whole optimizer steps, at least one step and leaving at least
  one for continued pretraining (`sheared_split`); the two runs read disjoint parts of the retraining slice, split
  in the same proportion, so no token is read twice. Its other `options` are `ShearedPruning`'s arguments
  (`lagrangian_warmup_fraction`, `mask_lr`, `lagrangian_lr`, `seed`, ...). Its target is the width kind, so its
  `S_N` and `S_M+N` are Minitron-width's (shared when both are in the study).

A one-shot structured or sparse method may prune in `stages` (e.g. `[0.3, 0.5]`): its `P_M-R_N` is then a chain of
one run per stage, each pruning the previous stage's export and retraining on an equal share of N in whole steps
(`stage_split`), so no model changes shape mid-run. A structured stage prunes to its ratio's shape of the parent; a
sparse stage tightens the previous stage's mask to its ratio of the parent's prunable weights (`SparsePrune` keeps
every weight the previous stage pruned, so a 0.5 stage after a 0.3 stage ends at exactly 50% zeros) and retrains
under that mask. Sparse stages take the unstructured pattern and Wanda or magnitude (`SPARSE_STAGE_METHODS`): an N:M
pattern fixes the ratio at N/M, so it has no increasing stages, and SparseGPT's weight update revives weights the
previous stage pruned. The scratch and control arms of a staged sparse method are those of the one-shot method at
the last stage's ratio (its mask drawn from the parent), shared with a one-shot entry at that ratio; the chain's own
final mask is drawn from weights retrained on part of N, which a scratch arm must not inherit.

A method may give an explicit `target` shape instead of ratios (e.g. FLAP's `{num_key_value_heads: 5,
intermediate_size: 6528}`): its arms are named after the target and carry the achieved ratio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from litprune.data.datamodule import DEFAULT_MICRO_BATCH_SIZE, DEFAULT_SEQ_LEN
from litprune.data.tokenizer import DEFAULT_VOCAB_SIZE
from litprune.inits.sparse import CONTROLS
from litprune.pruning.sparse import METHODS as SPARSE_METHODS
from litprune.pruning.structured import STRUCTURED_METHODS
from litprune.study.records import declared_range
from litprune.training.budget import TokenBudget
from litprune.utils.suggest import did_you_mean

SCRATCH_CONTROLS: tuple[str, ...] = tuple(name for name in CONTROLS if name != "none")
"""Starting points of the sparse scratch arms: `SparsePrune`'s controls but "none" (that one is `P_M-R_N`)."""

ARM_KINDS: tuple[str, ...] = ("S_N", "P_M-R_N", "S_M+N", "P_M-RD_N", "S_N-D")
"""The arms of every method x ratio x N, in the paper's notation: `S_N`, `P_M-R_N`, `S_M+N`, and the distilled arms
`P_M-RD_N` (the pruned parent retrained by distillation from the parent) and `S_N-D` (the scratch arm distilled from
the parent)."""

DISTILLED_ARMS: tuple[str, ...] = ("P_M-RD_N", "S_N-D")
"""The arms that train by distillation from their parent (`distill` sets alpha, temperature, top_k)."""

DISTILL_KEYS: tuple[str, ...] = ("alpha", "temperature", "top_k")
"""The keys of the study's `distill` (the teacher is always the arm's parent)."""

LEARNED_METHODS: dict[str, str] = {"sheared": "width"}
"""Methods that learn their structure while training (a chain of runs), with the shape kind of their target."""

DEFAULT_PRUNE_FRACTION = 0.2
"""Share of N that a learned method's pruning phase trains on, unless its `prune_fraction` option says otherwise."""

CHAIN_OPTIONS: tuple[str, ...] = ("prune_fraction",)
"""Options of a learned method that the study itself reads (the others are `ShearedPruning`'s arguments)."""

CHAIN_SLICE_SUFFIXES: tuple[str, str] = ("prune_phase", "continued")
"""Names of the two parts of the retraining slice a chain reads: `<slices.retrain>_prune_phase`, `..._continued`."""

STAGE_TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "depth": ("num_hidden_layers",),
    "width": ("hidden_size", "intermediate_size", "num_key_value_heads"),
    "attention_mlp": ("num_key_value_heads", "intermediate_size"),
}
"""The shape fields that fix a stage's shape completely, per kind: an iterative prune's stage hands them to
`StructuredPrune` as its `target`."""

SPARSE_STAGE_METHODS: tuple[str, ...] = ("wanda", "magnitude")
"""Sparse methods that can prune in `stages`: their scores of the previous stage's zeros are 0, the lowest, so each
stage's mask contains the previous one's (`SparsePrune` verifies it)."""

SHEARED_SHAPE_OPTIONS: tuple[str, ...] = ("hidden_multiple", "mlp_multiple")
"""`ShearedPruning` arguments a study refuses: they change the solved shape, which the `S_N` twin (`ScratchTarget`)
would not follow; an explicit `target` sets the shape for both."""

SHEARED_CALLBACK = "litprune.callbacks.sheared.ShearedPruning"
"""The callback that learns Sheared-LLaMA's masks in the pruning phase."""

SHAPE_TARGET_LABELS: dict[str, str] = {
    "num_hidden_layers": "L",
    "hidden_size": "d",
    "intermediate_size": "F",
    "num_key_value_heads": "kv",
}
"""Short names of target shape fields in arm ids (`flap-kv5-F6528`)."""

CALIBRATION_WINDOWS: tuple[str, ...] = ("nsamples", "seqlen", "seed")
"""The keys of the study's `calibration` (and a method's): the calibration windows drawn from `slices.calibration`."""

SCORER_KEYS: tuple[str, ...] = ("scorer", "scorer_fewshot", "scorer_limit")
"""The Minitron-depth window score a method's `calibration` may also set (`StructuredPrune`'s arguments)."""


class StudyError(ValueError):
    """A study file that cannot run; the message lists every problem found."""


@dataclass
class ParentSpec:
    """A parent `P_M`: trained by the study from a preset, or an existing checkpoint.

    Attributes:
        name: the parent's name in the study (methods refer to it with `parent:`).
        preset: architecture to pretrain from random init (`litprune.models.presets`); exclusive with `path`.
        overrides: LlamaConfig fields replacing the preset's.
        tokens: M, the parent's pretraining tokens. Required for a trained parent; for an existing checkpoint, the
            tokens it was pretrained on as far as you know them (read from its `litprune.json` when omitted),
            needed by the `S_M+N` arms.
        path: an existing Hugging Face checkpoint directory (or hub id) used as the parent instead of training.
        init: `RandomInit` arguments of a trained parent (`seed`, `scheme`).
        model: CausalLM arguments for the parent's run only (e.g. `lr`), over the study's `model`.
        trainer: Trainer arguments for the parent's run only, over the study's `trainer`.
    """

    name: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    path: str | None = None
    init: dict[str, Any] = field(default_factory=lambda: {"seed": 0, "scheme": "normal"})
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """Whether the study pretrains this parent itself."""
        return self.path is None


@dataclass
class MethodSpec:
    """One pruning method and the ratios to run it at.

    Attributes:
        method: structured (`minitron_depth`, `shortgpt`, `minitron_width`, `flap`, `wanda_sp`), learned
            (`sheared`) or sparse (`wanda`, `sparsegpt`, `magnitude`).
        ratios: pruned fractions; structured ratios are read on `convention` parameters, sparse ratios per matrix.
            May be left out when `target` fixes the shape alone.
        parent: the parent to prune (a key of `parents`); default: the study's only parent.
        pattern: sparse only: `unstructured`, `2:4`, `4:8` (N:M patterns only at ratio N/M).
        convention: structured and learned only: `non_embedding` (the paper's) or `total`.
        scratch: sparse only: how the `S_N` / `S_M+N` arms start (`reinit`, the paper's, or `random_same_mask`,
            `random_fresh_mask`).
        controls: sparse only: extra scratch arms trained for N tokens, one per listed control.
        options: method options: sparse `method_kwargs`; structured: `StructuredPrune`'s own arguments (`scorer`,
            `batch_size`, and those a method adds, e.g. FLAP's); learned: `prune_fraction` (the share of N the
            pruning phase trains on, default 0.2) and `ShearedPruning`'s arguments.
        target: structured and learned only: an explicit target shape (e.g. `{num_key_value_heads: 5,
            intermediate_size: 6528}`), alone or together with `ratios` where the method's solver allows it.
        stages: one-shot structured and sparse (wanda, magnitude; unstructured) only: iterative pruning, e.g.
            `[0.3, 0.5]`: the parent is pruned to each ratio in turn (ratios of the parent, increasing), each stage
            pruning the previous stage's export and retraining on its share of N (`stage_split`); the last ratio is
            the arm's (leave `ratios` out). Structured stages prune to each ratio's shape; sparse stages tighten the
            previous stage's mask to each ratio of the parent's prunable weights.
        calibration: this method's calibration, over the study's `calibration`: the windows (`nsamples`, `seqlen`,
            `seed`) and, for `minitron_depth`, the window score (`scorer`: "perplexity" or "task:<lm-eval task>",
            `scorer_fewshot`, `scorer_limit`). The windows always come from `slices.calibration` of the study's
            data; with `seeds: [...]` the repetition's seed replaces `seed`.
    """

    method: str
    ratios: list[float]
    parent: str | None = None
    pattern: str = "unstructured"
    convention: str = "non_embedding"
    scratch: str = "reinit"
    controls: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    target: dict[str, int] | None = None
    stages: list[float] | None = None

    @property
    def kind(self) -> str:
        """The shape kind of its target: "depth", "width" (also `sheared`'s), a structured method's own kind (e.g.
        FLAP's), or "sparse"."""
        if self.method in LEARNED_METHODS:
            return LEARNED_METHODS[self.method]
        return STRUCTURED_METHODS.get(self.method, "sparse")

    @property
    def learned(self) -> bool:
        """Whether the structure is learned while training (its `P_M-R_N` is a chain of two runs)."""
        return self.method in LEARNED_METHODS

    @property
    def ratio_values(self) -> list[float | None]:
        """The ratios the arms are built at: `ratios`, or one value None when `target` alone fixes the shape."""
        if not self.ratios and self.stages:
            last = self.stages[-1] if isinstance(self.stages, list) else None
            return [float(last)] if isinstance(last, int | float) and not isinstance(last, bool) else []
        if not self.ratios and self.target:
            return [None]
        return [float(ratio) for ratio in self.ratios]


@dataclass
class EvalSpec:
    """Evaluation of every finished arm's export (`litprune.eval.run.run_eval`), kept cheap.

    Attributes:
        tasks: lm-eval task names or presets; the offline tasks `litprune_next_line`, `litprune_next_span` need no
            download. An empty list runs no task.
        perplexity: text sources for held-out perplexity (`embedded` = the embedded corpus's test split).
        limit: examples per task (None: all).
        max_windows: perplexity windows per source.
        seq_len: perplexity window length (None: the training context length the export records, as `litprune
            eval` chooses it).
        batch_size: lm-eval requests per forward pass.
        max_examples: examples generated per offline task.
        loss_slice: the data slice (a name of `data.slices`, or a split when the study defines no slices) on which
            every finished arm's held-out loss is measured, window by window, at the training context length: the
            report's comparisons and intervals come from it. It must not overlap any slice an arm trains or
            validates on (the validation slice chooses the learning rate; see `lr`). None: no held-out loss.
        loss_tokens: tokens of held-out loss windows, spread evenly over the whole slice (`loss_tokens // seq_len`
            windows; None: the whole slice).
        resamples: bootstrap resamples of every interval.
        confidence: the intervals' coverage (0.95: 95% intervals).
        enabled: set false to skip evaluation (the report then shows validation loss only).
    """

    tasks: list[str] = field(default_factory=lambda: ["litprune_next_line"])
    perplexity: list[str] = field(default_factory=lambda: ["embedded"])
    limit: int | None = 200
    max_windows: int = 16
    seq_len: int | None = None
    batch_size: int = 16
    max_examples: int = 500
    loss_slice: str | None = "test"
    loss_tokens: int | None = 65536
    resamples: int = 2000
    confidence: float = 0.95
    enabled: bool = True


@dataclass
class LaunchSpec:
    """How `litprune study --launcher slurm|torchrun` writes the arms' job scripts (`litprune.study.launchers`).

    Nodes and processes per node come from each arm's `trainer.num_nodes` and `trainer.devices`.

    Attributes:
        time: SLURM time limit of each job (`--time`), e.g. "48:00:00" or "2-00:00:00"; None: the partition's.
        partition: SLURM partition (`--partition`); None: the cluster's default.
        account: SLURM account (`--account`); None: yours by default.
        extra_sbatch: further `sbatch` options, one per entry, e.g. ["--cpus-per-task=16", "--exclusive"].
        setup: shell lines every job runs before litprune, e.g. ["source .venv/bin/activate"] or
            ["module load cuda/12.4"] (run from the directory the scripts were written from).
        master_port: torchrun only: the rendezvous port on node 0 (`MASTER_PORT` overrides it at launch).
    """

    time: str | None = None
    partition: str | None = None
    account: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    master_port: int = 29500


@dataclass
class SliceRoles:
    """Which named data slice each phase reads (names of `data.slices`; defaults: one slice per split).

    Attributes:
        parent: the parent's pretraining slice (M tokens are read from it).
        retrain: the slice `P_M-R_N` and `S_N` train on (disjoint from `parent` in the paper).
        calibration: the slice pruning methods calibrate on (the parent's data: no retraining token is used).
        long: the slice `S_M+N` trains on; default: `parent` and `retrain` joined when they are adjacent ranges of
            one split, or `parent` when both name the same slice.
    """

    parent: str = "train"
    retrain: str = "train"
    calibration: str = "train"
    long: str | None = None


@dataclass
class StudySpec:
    """A whole study (see the module docstring for the YAML). Build with `load_study` or `study_from_dict`.

    Attributes:
        name: the study's name (no '/').
        out_dir: where configs, runs, logs and the report go (relative paths: to the working directory).
        parents: named parents `P_M`.
        methods: methods x ratios.
        retrain_tokens: the N values of `S_N` / `P_M-R_N` (several: the scaling curve).
        arms: which of `S_N`, `P_M-R_N`, `S_M+N`, `P_M-RD_N`, `S_N-D` to run (default: the first three).
        distill: the distilled arms' settings, `alpha` (weight of the cross-entropy), `temperature` and `top_k`
            (`litprune.modules.distillation.Distillation`); the teacher is always the arm's parent.
        data: `TokenDataModule` arguments shared by every arm (`train_slice` is set per arm).
        slices: which named slice each phase reads.
        calibration: `nsamples`, `seqlen`, `seed` of the pruning methods' calibration windows.
        model: `CausalLM` arguments shared by every arm (recipe: `lr`, warmup, ...).
        trainer: Trainer arguments shared by every arm.
        checkpoint: ModelCheckpoint arguments (default: a checkpoint at every validation).
        scratch_init: `seed` and `scheme` of the scratch arms' random init (sparse: the control's seed).
        seed_everything: the global seed of every arm.
        seeds: repeat the whole study once per seed: seed s replaces `seed_everything`, every parent's `init.seed`,
            `scratch_init.seed`, `data.seed` (the training order) and `calibration.seed`. None: one repetition
            with the seeds as configured. With several seeds the report shows the mean and spread.
        lr: peak learning rates to sweep for the compared arms (`S_N`, `P_M-R_N`, `S_M+N`; the parent trains at its
            `model.lr`): each arm is trained at each value and the one with the lowest final loss on the
            validation slice (`data.val_slice`) is reported; the report's numbers come from `eval.loss_slice`,
            which is disjoint from it. None: every arm at `model.lr`.
        curve_points: validations per arm (the points of the loss curves).
        eval: evaluation of every finished arm.
        env: environment variables of the arm processes (e.g. `OMP_NUM_THREADS`).
        launch: job-script settings of `--launcher slurm|torchrun` (time limit, partition, setup lines).
        source: the file the study was read from (set by `load_study`).
    """

    name: str
    out_dir: str
    parents: dict[str, ParentSpec]
    methods: list[MethodSpec]
    retrain_tokens: list[int]
    arms: list[str] = field(default_factory=lambda: list(ARM_KINDS[:3]))
    distill: dict[str, Any] = field(default_factory=lambda: {"alpha": 0.5, "temperature": 1.0, "top_k": None})
    data: dict[str, Any] = field(default_factory=dict)
    slices: SliceRoles = field(default_factory=SliceRoles)
    calibration: dict[str, Any] = field(default_factory=lambda: {"nsamples": 64, "seqlen": 128, "seed": 0})
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    scratch_init: dict[str, Any] = field(default_factory=lambda: {"seed": 0, "scheme": "normal"})
    seed_everything: int = 0
    seeds: list[int] | None = None
    lr: list[float] | None = None
    curve_points: int = 8
    eval: EvalSpec = field(default_factory=EvalSpec)
    env: dict[str, str] = field(default_factory=dict)
    launch: LaunchSpec = field(default_factory=LaunchSpec)
    source: str | None = None

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir).expanduser()

    @property
    def seed_values(self) -> list[int | None]:
        """The repetitions: each of `seeds`, or one repetition (None) with the seeds as configured."""
        return list(self.seeds) if self.seeds else [None]

    @property
    def lr_values(self) -> list[float | None]:
        """The swept peak learning rates, or one value (None: `model.lr`)."""
        return [float(v) for v in self.lr] if self.lr else [None]

    def parent_of(self, method: MethodSpec) -> str:
        """Name of the parent a method prunes (its own `parent`, else the only parent)."""
        if method.parent is not None:
            return method.parent
        return next(iter(self.parents)) if len(self.parents) == 1 else ""


# ----------------------------------------------------------------------------------------------------- loading
def load_study(path: str | Path) -> StudySpec:
    """Read and check a study YAML.

    Raises:
        FileNotFoundError: no file at `path`.
        StudyError: unknown keys, wrong types, or any problem `check_study` finds (all listed together).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Study config {str(path)!r} does not exist. Pass a study YAML such as configs/study/tiny.yaml."
        )
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec = study_from_dict(raw, source=str(path))
    check_study(spec)
    return spec


def study_from_dict(raw: Any, source: str | None = None) -> StudySpec:
    """Build a `StudySpec` from parsed YAML, strictly: unknown keys and wrong shapes are errors.

    Raises:
        StudyError: every structural problem found, listed together.
    """
    where = source or "the study config"
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise StudyError(f"{where} must be a mapping of study settings, got {type(raw).__name__}.")
    top = _known(raw, StudySpec, "", problems, exclude={"source"})
    for key in ("name", "out_dir", "parents", "methods", "retrain_tokens"):
        if key not in top:
            problems.append(f"missing required key {key!r}")
    parents: dict[str, ParentSpec] = {}
    raw_parents = top.get("parents") or {}
    if not isinstance(raw_parents, dict):
        problems.append(f"parents must map names to parent settings, got {raw_parents!r}")
        raw_parents = {}
    for name, body in raw_parents.items():
        if not isinstance(body, dict):
            problems.append(f"parents.{name} must be a mapping (preset + tokens, or path), got {body!r}")
            continue
        values = _known(body, ParentSpec, f"parents.{name}.", problems, exclude={"name"})
        parents[str(name)] = ParentSpec(name=str(name), **values)
    methods: list[MethodSpec] = []
    raw_methods = top.get("methods") or []
    if not isinstance(raw_methods, list):
        problems.append(f"methods must be a list of {{method, ratios, ...}} entries, got {raw_methods!r}")
        raw_methods = []
    for i, body in enumerate(raw_methods):
        if not isinstance(body, dict) or "method" not in body:
            problems.append(f"methods[{i}] must be a mapping with at least 'method' and 'ratios', got {body!r}")
            continue
        values = _known(body, MethodSpec, f"methods[{i}].", problems)
        ratios = values.get("ratios")
        if ratios is None and not values.get("target") and not values.get("stages"):
            problems.append(
                f"methods[{i}] ({body['method']}) needs ratios, e.g. ratios: [0.5] (or an explicit target shape)"
            )
        if ratios is None:
            ratios = []
        values["ratios"] = list(ratios) if isinstance(ratios, list | tuple) else [ratios]
        methods.append(MethodSpec(**values))
    slices = SliceRoles(**_known(top.get("slices") or {}, SliceRoles, "slices.", problems))
    eval_spec = EvalSpec(**_known(top.get("eval") or {}, EvalSpec, "eval.", problems))
    raw_launch = top.get("launch") or {}
    if not isinstance(raw_launch, dict):
        problems.append(f"launch must be a mapping of job-script settings (time, partition, ...), got {raw_launch!r}")
        raw_launch = {}
    launch = LaunchSpec(**_known(raw_launch, LaunchSpec, "launch.", problems))
    if problems:
        raise StudyError(_format(where, problems))
    retrain = top.get("retrain_tokens")
    kwargs = {k: v for k, v in top.items() if k not in ("parents", "methods", "slices", "eval", "launch")}
    kwargs["retrain_tokens"] = list(retrain) if isinstance(retrain, list | tuple) else [retrain]
    for key in ("data", "model", "trainer", "checkpoint", "calibration", "scratch_init", "env", "distill"):
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = {}
    return StudySpec(
        parents=parents, methods=methods, slices=slices, eval=eval_spec, launch=launch, source=source, **kwargs
    )


# ---------------------------------------------------------------------------------------------------- checking
def check_study(spec: StudySpec) -> None:
    """Check a study before any work: every problem is collected and raised together.

    Checks: names and types; every method's parent is defined; the arms need a parent the study defines;
    every ratio is reachable on the parent's shape (structured: the shape solver; sparse: the pattern);
    every budget (M, each N, M + N) is at least one optimizer step and a whole number of steps; the named
    slices exist; evaluation settings are valid.

    Raises:
        StudyError: the list of problems, each naming the key, the bad value and what to do.
    """
    problems: list[str] = []
    if not isinstance(spec.name, str) or not spec.name or "/" in spec.name:
        problems.append(f"name={spec.name!r} must be a non-empty string without '/'")
    if not isinstance(spec.out_dir, str) or not spec.out_dir:
        problems.append(f"out_dir={spec.out_dir!r} must be a directory path, e.g. runs/study_tiny")
    unknown_arms = [a for a in spec.arms if a not in ARM_KINDS]
    if unknown_arms or not spec.arms:
        hints = "".join(did_you_mean(a, ARM_KINDS, n=1, cutoff=0.5) for a in unknown_arms)
        problems.append(
            f"arms={spec.arms!r}: choose from {list(ARM_KINDS)} (at least one)" + (f".{hints}" if hints else "")
        )
    if isinstance(spec.model, dict) and "distill" in spec.model:
        problems.append(
            "model.distill is set by the study for the distilled arms (P_M-RD_N, S_N-D); give alpha, temperature "
            "and top_k in the study's distill section and add those arms to arms"
        )
    if not spec.parents:
        problems.append(
            "no parent is defined, but every arm needs one (P_M-R_N prunes it; S_N takes its pruned shape; "
            "S_M+N needs its M). Add parents: {parent: {preset: small, tokens: ...}}"
        )
    if not spec.methods:
        problems.append("methods is empty; list at least one, e.g. {method: minitron_depth, ratios: [0.5]}")
    _check_budget_values(spec, problems)
    step = tokens_per_step(spec, problems)
    vocab = data_vocab(spec)
    parent_configs: dict[str, Any] = {}
    for name, parent in spec.parents.items():
        parent_configs[name] = _check_parent(spec, parent, step, vocab, problems)
    for i, method in enumerate(spec.methods):
        _check_method(spec, i, method, parent_configs, problems)
    if step is not None:
        for n in spec.retrain_tokens:
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                _check_steps(f"retrain_tokens N={n:,}", n, step, problems)
                # With a valid N, M + N is only off when M is (an external parent's M is not checked above).
                if "S_M+N" in spec.arms and n % step == 0:
                    for parent in {spec.parent_of(m) for m in spec.methods}:
                        m_tokens = _parent_tokens(spec.parents.get(parent))
                        if m_tokens:
                            _check_steps(
                                f"M + N = {m_tokens:,} + {n:,} (S_M+N of parent {parent!r})",
                                m_tokens + n,
                                step,
                                problems,
                            )
    _check_repetitions(spec, problems)
    _check_slices(spec, problems)
    _check_calibration(spec, problems)
    _check_eval(spec, problems)
    _check_launch(spec.launch, problems)
    _check_distill(spec, problems)
    if not isinstance(spec.env, dict) or not all(isinstance(k, str) for k in spec.env):
        problems.append(f"env={spec.env!r} must map environment variable names to values, e.g. {{OMP_NUM_THREADS: 1}}")
    if not isinstance(spec.curve_points, int) or spec.curve_points < 1:
        problems.append(f"curve_points={spec.curve_points!r} must be a positive integer (validations per arm)")
    if problems:
        raise StudyError(_format(spec.source or f"study {spec.name!r}", problems))


def _check_repetitions(spec: StudySpec, problems: list[str]) -> None:
    """`seeds` and `lr`: None or non-empty lists of distinct values of the right type."""
    for key, valid, example in (
        ("seeds", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "[0, 1, 2]"),
        ("lr", lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1, "[1.0e-3, 3.0e-3]"),
    ):
        values = getattr(spec, key)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"{key}={values!r} must be a non-empty list, e.g. {key}: {example}, or left out")
            continue
        bad = [v for v in values if not valid(v)]
        if bad:
            what = "non-negative integers" if key == "seeds" else "learning rates in (0, 1)"
            problems.append(f"{key} entries {bad!r} must be {what}, e.g. {key}: {example}")
        elif len(set(values)) != len(values):
            problems.append(f"{key}={values!r} repeats a value; list each once")


def _check_budget_values(spec: StudySpec, problems: list[str]) -> None:
    if not spec.retrain_tokens:
        problems.append("retrain_tokens is empty; give at least one N, e.g. [524288]")
    for n in spec.retrain_tokens:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            problems.append(f"retrain_tokens entry {n!r} must be a positive integer number of tokens")
    if len(set(map(str, spec.retrain_tokens))) != len(spec.retrain_tokens):
        problems.append(f"retrain_tokens={spec.retrain_tokens!r} repeats a value; list each N once")


def tokens_per_step(spec: StudySpec, problems: list[str] | None = None) -> int | None:
    """Tokens of one optimizer step of every arm (they share the batch shape), or None if not decidable.

    `TokenBudget.step_tokens` of the study's `data` and `trainer` settings; a data setting the study leaves unset
    takes `TokenDataModule`'s default, so both always agree.

    Args:
        spec: the study.
        problems: where to add what is wrong; None raises it instead.

    Raises:
        StudyError: a batch setting is not a positive integer (only when `problems` is None).
    """
    found: list[str] = []
    values = {
        "data.seq_len": spec.data.get("seq_len", DEFAULT_SEQ_LEN),
        "data.micro_batch_size": spec.data.get("micro_batch_size", DEFAULT_MICRO_BATCH_SIZE),
        "trainer.accumulate_grad_batches": spec.trainer.get("accumulate_grad_batches", 1),
        "trainer.devices": spec.trainer.get("devices", 1),
        "trainer.num_nodes": spec.trainer.get("num_nodes", 1),
    }
    devices = values["trainer.devices"]
    if devices in ("auto", None):
        values["trainer.devices"] = 1
    elif not isinstance(devices, int) or isinstance(devices, bool):
        found.append(f"trainer.devices={devices!r}: give a number of devices so the study can size its budgets")
    if not found:
        bad = [f"{k}={v!r}" for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            found.append(f"{', '.join(bad)} must be positive integers")
    if found:
        if problems is None:
            raise StudyError(_format(spec.source or f"study {spec.name!r}", found))
        problems.extend(found)
        return None
    return TokenBudget.step_tokens(
        values["data.seq_len"],
        values["data.micro_batch_size"],
        values["trainer.accumulate_grad_batches"],
        values["trainer.devices"] * values["trainer.num_nodes"],
    )


def _check_steps(what: str, tokens: int, step: int, problems: list[str]) -> None:
    problem = TokenBudget.budget_problem(
        tokens, step, what, step="data.seq_len x data.micro_batch_size x trainer.accumulate_grad_batches x devices"
    )
    if problem:
        problems.append(problem.rstrip("."))


def _parent_tokens(parent: ParentSpec | None) -> int | None:
    if parent is None:
        return None
    if parent.tokens is not None:
        return parent.tokens if isinstance(parent.tokens, int) and not isinstance(parent.tokens, bool) else None
    if parent.path is not None:
        import json

        record = Path(parent.path).expanduser() / "litprune.json"
        if record.is_file():
            seen = (json.loads(record.read_text(encoding="utf-8")).get("run") or {}).get("tokens_seen")
            return int(seen) if seen else None
    return None


def parent_config(spec: StudySpec, parent: ParentSpec) -> Any:
    """The parent's config (a `PretrainedConfig`) as far as it is known before any run: built from its preset, or
    read from a local checkpoint; None for a hub parent or one that cannot be read."""
    try:
        if parent.trained:
            from litprune.models.presets import build_llama_config

            return build_llama_config(parent.preset, parent.overrides, vocab_size=data_vocab(spec) or 32000)
        from litprune.inits.parent import read_parent_config

        if not (Path(str(parent.path)).expanduser() / "config.json").is_file():
            return None
        return read_parent_config(str(parent.path))
    except (OSError, ValueError):
        return None


def data_vocab(spec: StudySpec) -> int | None:
    """The vocabulary the embedded BPE will have (None when a named tokenizer decides it)."""
    if spec.data.get("tokenizer"):
        return None
    vocab = spec.data.get("vocab_size", DEFAULT_VOCAB_SIZE)
    return vocab if isinstance(vocab, int) else None


def _check_parent(spec: StudySpec, parent: ParentSpec, step: int | None, vocab: int | None, problems) -> Any:
    """Check one parent; return its config (a PretrainedConfig) when it can be known now."""
    where = f"parents.{parent.name}"
    if (parent.preset is None) == (parent.path is None):
        problems.append(f"{where}: give exactly one of preset (pretrain it here) or path (an existing checkpoint)")
        return None
    if parent.tokens is not None and (
        isinstance(parent.tokens, bool) or not isinstance(parent.tokens, int) or parent.tokens < 1
    ):
        problems.append(f"{where}.tokens={parent.tokens!r} must be a positive integer (M, pretraining tokens)")
        return None
    if parent.trained:
        if parent.tokens is None:
            problems.append(f"{where}.tokens is missing: give M, the parent's pretraining tokens")
        elif step is not None:
            _check_steps(f"{where}.tokens M={parent.tokens:,}", parent.tokens, step, problems)
        from litprune.models.presets import build_llama_config

        try:
            return build_llama_config(parent.preset, parent.overrides, vocab_size=vocab or 32000)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            return None
    if "S_M+N" in spec.arms and _parent_tokens(parent) is None:
        problems.append(
            f"{where}.tokens is missing: the S_M+N arms train for M + N tokens, so give M (the tokens {parent.path!r} "
            "was pretrained on), or drop S_M+N from arms"
        )
    local = Path(parent.path).expanduser()
    if (local / "config.json").is_file():
        from litprune.inits.parent import read_parent_config

        try:
            return read_parent_config(str(local))
        except ValueError as err:
            problems.append(f"{where}: {err}")
    elif str(parent.path).startswith((".", "/", "~")):
        problems.append(f"{where}.path={parent.path!r} holds no config.json; point it at a save_pretrained directory")
    return None


def _check_method(spec: StudySpec, i: int, method: MethodSpec, configs: dict[str, Any], problems) -> None:
    where = f"methods[{i}] ({method.method})"
    known = [*STRUCTURED_METHODS, *LEARNED_METHODS, *SPARSE_METHODS]
    if method.method not in known:
        hint = did_you_mean(method.method, known, cutoff=0.5)
        problems.append(f"{where}: unknown method.{hint} Available: {', '.join(known)}")
        return
    parent = spec.parent_of(method)
    if parent not in spec.parents:
        if method.parent is None and len(spec.parents) > 1:
            problems.append(f"{where} needs a parent: the study defines {sorted(spec.parents)}; set parent: <name>")
        elif spec.parents:
            problems.append(
                f"{where} prunes parent {parent!r}, which the study does not define (defined: {sorted(spec.parents)}). "
                "Add it under parents or fix the name"
            )
    if not method.ratios and not method.target and not method.stages:
        problems.append(f"{where}: ratios is empty; give at least one, e.g. [0.5]")
    if len(set(map(str, method.ratios))) != len(method.ratios):
        problems.append(f"{where}: ratios={method.ratios!r} repeats a value")
    config = configs.get(parent)
    if method.kind == "sparse":
        if method.target is not None:
            problems.append(f"{where}: target applies to structured and learned methods; sparse ratios are per matrix")
        _check_sparse(where, method, problems)
    else:
        _check_structured(where, method, config, problems)
        if method.learned:
            _check_learned(spec, where, method, problems)
        else:
            _check_options(spec, where, method, problems)
    if method.stages is not None:
        _check_stages(spec, where, method, config, problems)
    if method.learned and method.calibration:
        problems.append(
            f"{where}: calibration does not apply: {method.method} learns its masks while training and reads no "
            "calibration windows. Remove it"
        )
    else:
        _check_method_calibration(spec, where, method, problems)


def _check_method_calibration(spec: StudySpec, where: str, method: MethodSpec, problems: list[str]) -> None:
    """A method's own `calibration`: known keys, windows `Calibration` accepts, a scorer only where it applies."""
    from litprune.inits.calibration import Calibration

    own = method.calibration
    if not isinstance(own, dict):
        problems.append(f"{where}: calibration={own!r} must be a mapping, e.g. {{nsamples: 128, seqlen: 8192}}")
        return
    allowed = (*CALIBRATION_WINDOWS, *SCORER_KEYS)
    for key in sorted(set(own) - set(allowed)):
        if key in ("slice", "source"):
            problems.append(
                f"{where}: calibration.{key} cannot be set per method: every method calibrates on the study's "
                f"calibration slice (slices.calibration={spec.slices.calibration!r}), windows of the run's own data; "
                "text such as the references' WikiText-103 or C4 is not read. Remove it"
            )
        else:
            hint = did_you_mean(key, allowed, n=2, sentence=False)
            problems.append(
                f"{where}: unknown key calibration.{key}{f' ({hint})' if hint else ''}; allowed: {', '.join(allowed)}"
            )
    scorer = {key: own[key] for key in SCORER_KEYS if key in own}
    if scorer and method.method != "minitron_depth":
        problems.append(
            f"{where}: calibration.{', calibration.'.join(scorer)} applies to minitron_depth only (the window score); "
            f"{method.method} scores from its calibration windows. Remove it"
        )
    elif scorer:
        if "scorer" in method.options:
            problems.append(f"{where}: scorer is set both in options and in calibration; keep calibration.scorer")
        problems.extend(f"{where}: calibration.{problem}" for problem in _scorer_problems(scorer))
    windows = {key: own[key] for key in CALIBRATION_WINDOWS if key in own}
    if windows and isinstance(spec.calibration, dict):
        try:
            Calibration(slice=spec.slices.calibration, **{**spec.calibration, **windows})
        except (TypeError, ValueError) as err:
            problems.append(f"{where}: calibration: {err}")


def _scorer_problems(scorer: dict[str, Any]) -> list[str]:
    """Problems with a Minitron-depth window score (`scorer`, `scorer_fewshot`, `scorer_limit`), as `StructuredPrune`
    would report them when the arm starts."""
    from litprune.eval.task_scorer import check_task_scorer, is_task_scorer
    from litprune.pruning.scorers import check_scorer

    name = scorer.get("scorer", "perplexity")
    fewshot, limit = scorer.get("scorer_fewshot", 0), scorer.get("scorer_limit")
    try:
        if is_task_scorer(name):
            check_task_scorer(name, fewshot, limit, option_names=SCORER_KEYS[1:])
            return []
        check_scorer(name)
    except ValueError as err:
        return [str(err)]
    if fewshot != 0 or limit is not None:
        return [f"scorer_fewshot and scorer_limit apply to a task scorer (scorer: task:<lm-eval task>), not {name!r}"]
    return []


def _check_structured(where: str, method: MethodSpec, config: Any, problems: list[str]) -> None:
    from litprune.pruning.shapes import check_convention, check_ratio_open, solve_shape

    if method.controls or method.scratch != "reinit" or method.pattern != "unstructured":
        problems.append(f"{where}: pattern, scratch and controls apply to sparse methods only; remove them")
    if not isinstance(method.options, dict):
        problems.append(f"{where}: options={method.options!r} must be a mapping of option names to values")
    target = method.target
    if target is not None and (not isinstance(target, dict) or not target):
        problems.append(
            f"{where}: target={target!r} must be a mapping of shape fields to sizes, e.g. "
            "{num_key_value_heads: 5, intermediate_size: 6528}"
        )
        return
    try:
        check_convention(method.convention)
    except ValueError as err:
        problems.append(f"{where}: {err}")
        return
    if target and not method.ratios and config is None:
        problems.append(
            f"{where}: a target without ratios needs the parent's config to name its arms by the achieved ratio, and "
            "the parent is not on disk; give ratios too, or a local parent"
        )
    for ratio in method.ratio_values if all(isinstance(r, int | float) for r in method.ratios) else method.ratios:
        if ratio is not None:
            try:
                check_ratio_open(ratio)
            except ValueError as err:
                problems.append(f"{where}: {err}")
                continue
        if config is None:
            continue  # a hub parent: its shape is solved when the arm builds it
        what = f"ratio {ratio}" if ratio is not None else f"target {target}"
        try:
            solve_shape(config, method.kind, ratio=ratio, target=target, convention=method.convention)
        except ValueError as err:
            problems.append(f"{where}: {what} cannot be reached on the parent's shape: {err}")


def structured_options(method: str) -> tuple[str, ...]:
    """The options a one-shot structured method takes in a study: `StructuredPrune`'s arguments that the study does
    not set itself (the parent, method, ratio, target, convention and calibration windows come from the study)."""
    import inspect

    from litprune.inits.structured import StructuredPrune

    study_set = {"self", "parent", "method", "ratio", "target", "convention", "calibration"}
    names = [name for name in inspect.signature(StructuredPrune.__init__).parameters if name not in study_set]
    if method != "minitron_depth":
        names = [name for name in names if name not in SCORER_KEYS]  # the window score is Minitron-depth's
    return tuple(names)


def _check_options(spec: StudySpec, where: str, method: MethodSpec, problems: list[str]) -> None:
    """A one-shot structured method's options: `StructuredPrune`'s argument names, then their values, checked by
    `StructuredPrune` itself at each ratio (only when nothing else is wrong with the method, so that a shape the
    parent cannot reach is reported once)."""
    if not isinstance(method.options, dict):
        return
    allowed = structured_options(method.method)
    unknown = sorted(set(method.options) - set(allowed))
    for key in unknown:
        hint = did_you_mean(key, allowed, n=2, sentence=False)
        problems.append(
            f"{where}: unknown option {key!r}{f' ({hint})' if hint else ''}; {method.method} accepts "
            f"{', '.join(allowed) or 'no option'}"
        )
    if unknown or any(problem.startswith(f"{where}:") for problem in problems):
        return
    from litprune.inits.structured import StructuredPrune

    parent = spec.parents.get(spec.parent_of(method))
    if parent is None:
        return
    # The export a trained parent will have (usually not on disk yet: then only the arguments are checked).
    path = str(spec.out_path / "runs" / parent.name / "export") if parent.trained else str(parent.path)
    for ratio in method.ratio_values:
        try:
            StructuredPrune(
                parent=path,
                method=method.method,
                ratio=ratio,
                target=method.target,
                convention=method.convention,
                **method.options,
            )
        except (TypeError, ValueError) as err:
            problems.append(f"{where}: options: {err}")
            return


def sheared_options() -> tuple[str, ...]:
    """The options of a `sheared` method: `prune_fraction` (read by the study) and `ShearedPruning`'s arguments
    but the target ones (`ratio`, `target`, `convention` come from the method entry)."""
    import inspect

    from litprune.callbacks.sheared import ShearedPruning

    study_set = {"self", "ratio", "target", "convention", *SHEARED_SHAPE_OPTIONS}
    callback = [name for name in inspect.signature(ShearedPruning.__init__).parameters if name not in study_set]
    return (*CHAIN_OPTIONS, *callback)


def _check_learned(spec: StudySpec, where: str, method: MethodSpec, problems: list[str]) -> None:
    """A learned method (`sheared`): its options, the callback's own checks, and a pruning phase that fits every N."""
    try:
        allowed = sheared_options()
    except ImportError as err:
        problems.append(f"{where}: needs {SHEARED_CALLBACK}, which cannot be imported ({err})")
        return
    options = method.options if isinstance(method.options, dict) else {}
    unknown = sorted(set(options) - set(allowed))
    for key in [key for key in unknown if key in SHEARED_SHAPE_OPTIONS]:
        unknown.remove(key)
        problems.append(
            f"{where}: option {key!r} would change the target shape, which the S_N and S_M+N arms (ScratchTarget) "
            "would not follow; give the shape with target instead"
        )
    for key in unknown:
        hint = did_you_mean(key, allowed, n=2, sentence=False)
        problems.append(
            f"{where}: unknown option {key!r}{f' ({hint})' if hint else ''}; sheared accepts {', '.join(allowed)}"
        )
    fraction = options.get("prune_fraction", DEFAULT_PRUNE_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        problems.append(
            f"{where}: prune_fraction={fraction!r} must be the share of N the pruning phase trains on, in (0, 1), "
            f"e.g. {DEFAULT_PRUNE_FRACTION}"
        )
        return
    if not unknown:
        from litprune.callbacks.sheared import ShearedPruning

        kwargs = {k: v for k, v in options.items() if k not in CHAIN_OPTIONS}
        for ratio in method.ratio_values if all(isinstance(r, int | float) for r in method.ratios) else []:
            try:
                ShearedPruning(ratio=ratio, target=method.target, convention=method.convention, **kwargs)
            except (TypeError, ValueError) as err:
                problems.append(f"{where}: {err}")
                break
    step = tokens_per_step(spec, [])
    if step is not None:
        for n in spec.retrain_tokens:
            if isinstance(n, int) and not isinstance(n, bool) and n > 0 and n % step == 0:
                try:
                    sheared_split(n, step, fraction)
                except StudyError as err:
                    problems.append(f"{where}: {err}")
    try:
        retrain_range(spec)
    except StudyError as err:
        problems.append(f"{where}: {err}")
    defined = spec.data.get("slices") if isinstance(spec.data.get("slices"), dict) else {}
    for suffix in CHAIN_SLICE_SUFFIXES:
        if f"{spec.slices.retrain}_{suffix}" in defined:
            problems.append(
                f"{where}: data.slices defines {spec.slices.retrain}_{suffix!s}, the name the study gives a part of "
                "the retraining slice for the pruning chain; rename that slice"
            )


def sheared_split(n: int, step: int, prune_fraction: float = DEFAULT_PRUNE_FRACTION) -> tuple[int, int]:
    """How a learned method's `P_M-R_N` spends its N tokens: `(pruning phase, continued pretraining)`.

    Rule: the pruning phase trains `round(prune_fraction x N / step)` optimizer steps, at least one, and at most all
    steps but one (continued pretraining trains at least one step); continued pretraining trains the rest. Both are
    whole numbers of steps and add up to N exactly, so the chain is token-matched with `S_N`.

    Args:
        n: the retraining budget N (a whole number of steps).
        step: tokens per optimizer step.
        prune_fraction: the share of N the pruning phase should take, in (0, 1).

    Raises:
        StudyError: N is less than two steps, so one run of the chain would train nothing.
    """
    steps = n // step
    if steps < 2:
        raise StudyError(
            f"N={n:,} is {steps} optimizer step(s) of {step:,} tokens, but the pruning phase and continued pretraining "
            f"each need at least one; use N >= {2 * step:,}"
        )
    prune = min(max(1, round(prune_fraction * steps)), steps - 1)
    return prune * step, (steps - prune) * step


def retrain_range(spec: StudySpec) -> tuple[str, int, int]:
    """`(split, start, end)` of the retraining slice, which a learned method's chain splits between its two runs.

    Raises:
        StudyError: the slice has no declared end (a whole split), so it cannot be split before the data exists.
    """
    slices = spec.data.get("slices") if isinstance(spec.data.get("slices"), dict) else {}
    declared = declared_range(slices, spec.slices.retrain, "retrain")
    if declared.end is None:
        raise StudyError(
            f"the pruning phase and continued pretraining read disjoint parts of slices.retrain="
            f"{spec.slices.retrain!r}, which has no end offset; declare it with start and end in data.slices, e.g. "
            "retrain: {split: train, start: 4456448, end: 5672960}"
        )
    return declared.split, declared.start, declared.end


def chain_slices(spec: StudySpec, prune_tokens: int, n: int) -> tuple[tuple[str, dict], tuple[str, dict]]:
    """The two parts of the retraining slice a learned method's chain reads: `((name, range), (name, range))` of the
    pruning phase and of continued pretraining (`retrain_parts`)."""
    first, second = retrain_parts(spec, [prune_tokens, n - prune_tokens], list(CHAIN_SLICE_SUFFIXES))
    return first, second


def retrain_parts(spec: StudySpec, tokens: list[int], suffixes: list[str]) -> list[tuple[str, dict]]:
    """The parts of the retraining slice the runs of a chain read, one per run: `[(name, range), ...]`.

    The slice `[start, end)` is cut in proportion to the runs' tokens (cut `i` at `start + floor((end - start) x
    (tokens of runs 1..i) / N)`): each run reads its own part, so the chain reads each part about as often as `S_N`
    reads the whole slice and never reads a token twice across its runs. Part `i` is named
    `<slices.retrain>_<suffixes[i]>`.
    """
    split, start, end = retrain_range(spec)
    total = sum(tokens)
    cuts, done = [start], 0
    for count in tokens:
        done += count
        cuts.append(start + (end - start) * done // total)
    name = spec.slices.retrain
    return [
        (f"{name}_{suffix}", {"split": split, "start": cuts[i], "end": cuts[i + 1]})
        for i, suffix in enumerate(suffixes)
    ]


def stage_split(n: int, step: int, stages: int) -> list[int]:
    """The retraining tokens of each stage of an iterative prune (`stages: [...]`), adding up to N.

    Rule: N's optimizer steps are shared equally, whole steps only; the last `steps % stages` stages take one step
    more. Every stage trains at least one step.

    Raises:
        StudyError: N has fewer steps than there are stages.
    """
    steps = n // step
    if steps < stages:
        raise StudyError(
            f"N={n:,} is {steps} optimizer step(s) of {step:,} tokens, fewer than the {stages} stages, which each "
            f"retrain at least one; use N >= {stages * step:,} or fewer stages"
        )
    base, extra = divmod(steps, stages)
    return [(base + (1 if i >= stages - extra else 0)) * step for i in range(stages)]


def stage_shapes(config: Any, method: MethodSpec) -> list[dict[str, int]]:
    """The target shape of each stage of an iterative prune: the shape of each stage's ratio solved on the parent's
    config (`solve_shape`), as the full target a stage hands `StructuredPrune` to prune the previous stage's export.

    Raises:
        ValueError: a stage's ratio cannot be reached on the parent's shape.
    """
    from litprune.pruning.shapes import solve_shape

    shapes = []
    for ratio in method.stages or []:
        shape = solve_shape(config, method.kind, ratio=float(ratio), convention=method.convention).shape.as_dict()
        shapes.append({key: shape[key] for key in STAGE_TARGET_KEYS[method.kind]})
    return shapes


def _check_stages(spec: StudySpec, where: str, method: MethodSpec, config: Any, problems: list[str]) -> None:
    """An iterative prune: one-shot structured or sparse methods only, increasing ratios; structured shapes that
    shrink stage by stage, sparse stages of an unstructured pattern and a method whose masks nest."""
    stages = method.stages
    sparse = method.kind == "sparse"
    if (method.kind not in STAGE_TARGET_KEYS and not sparse) or method.learned:
        problems.append(
            f"{where}: stages applies to one-shot structured and sparse methods (e.g. minitron_width, wanda); "
            f"{method.method} cannot prune in stages here. Remove stages"
        )
        return
    if sparse and str(method.pattern) != "unstructured":
        # An N:M pattern prunes exactly N/M, so its stages could not increase: refused before the ratios are read.
        problems.append(
            f"{where}: stages need pattern unstructured; pattern {method.pattern!r} prunes a fixed share N/M, so a "
            "later stage cannot prune more than the first. Use pattern: unstructured, or one-shot ratios"
        )
        return
    if (
        not isinstance(stages, list)
        or len(stages) < 2
        or not all(isinstance(r, int | float) and not isinstance(r, bool) and 0 < r < 1 for r in stages)
        or any(b <= a for a, b in zip(stages, stages[1:], strict=False))
    ):
        problems.append(
            f"{where}: stages={stages!r} must list two or more increasing ratios of the parent in (0, 1), e.g. "
            "[0.3, 0.5]"
        )
        return
    if method.ratios and [float(r) for r in method.ratios] != [float(stages[-1])]:
        problems.append(f"{where}: with stages, the arm's ratio is the last stage's ({stages[-1]}); remove ratios")
    if method.target and not sparse:  # a sparse target is refused with the sparse checks
        problems.append(f"{where}: stages and target cannot be combined; give the stages' ratios only")
    if sparse:
        _check_sparse_stages(where, method, problems)
    else:
        _check_stage_shapes(where, method, config, problems)
    step = tokens_per_step(spec, [])
    if step is not None:
        for n in spec.retrain_tokens:
            if isinstance(n, int) and not isinstance(n, bool) and n > 0 and n % step == 0:
                try:
                    stage_split(n, step, len(stages))
                except StudyError as err:
                    problems.append(f"{where}: {err}")
    try:
        retrain_range(spec)
    except StudyError as err:
        problems.append(f"{where}: {err}")


def _check_sparse_stages(where: str, method: MethodSpec, problems: list[str]) -> None:
    """Sparse stages: a method whose stage masks contain the previous stage's zeros."""
    if method.method not in SPARSE_STAGE_METHODS:
        problems.append(
            f"{where}: {method.method} cannot prune in stages: its weight update revives weights the previous stage "
            f"pruned, so a stage's mask need not contain the previous one's. Use one of "
            f"{', '.join(SPARSE_STAGE_METHODS)}, or one-shot ratios"
        )


def _check_stage_shapes(where: str, method: MethodSpec, config: Any, problems: list[str]) -> None:
    """Structured stages: each stage's ratio reachable on the parent's shape and pruning the previous stage's."""
    stages = method.stages
    if config is None:
        problems.append(f"{where}: stages need the parent's config to solve each stage's shape; use a local parent")
        return
    try:
        shapes = stage_shapes(config, method)
    except ValueError as err:
        problems.append(f"{where}: a stage's ratio cannot be reached on the parent's shape: {err}")
        return
    for k in range(1, len(shapes)):
        if shapes[k] == shapes[k - 1] or any(shapes[k][key] > shapes[k - 1][key] for key in shapes[k]):
            problems.append(
                f"{where}: stage {k + 1} (ratio {stages[k]}) gives the shape {shapes[k]}, which does not prune the "
                f"shape of stage {k} ({shapes[k - 1]}); space the ratios further apart"
            )


def target_tag(target: dict[str, int] | None) -> str:
    """A target shape in an arm id, e.g. `kv5-F6528` (fields in the order given)."""
    return "-".join(f"{SHAPE_TARGET_LABELS.get(key, key)}{value}" for key, value in (target or {}).items())


def _check_sparse(where: str, method: MethodSpec, problems: list[str]) -> None:
    from litprune.pruning.patterns import parse_pattern

    if method.convention != "non_embedding":
        problems.append(f"{where}: convention applies to structured methods only; sparse ratios are per matrix")
    try:
        pattern = parse_pattern(str(method.pattern))
    except ValueError as err:
        problems.append(f"{where}: {err}")
        return
    for ratio in method.ratios:
        # A study arm must prune something, so 0 (which the pattern accepts) is refused here.
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
            problems.append(f"{where}: ratio={ratio!r} must be a pruned fraction in (0, 1)")
            continue
        try:
            pattern.resolve_ratio(ratio)
        except ValueError:
            # With a ratio in (0, 1), only an N:M pattern's fixed N/M can refuse it; the fix is in the study's ratios.
            problems.append(
                f"{where}: pattern {pattern} prunes exactly {pattern.ratio:g} of the weights, so ratio {ratio} cannot "
                f"be reached; use ratios: [{pattern.ratio:g}] or an unstructured pattern"
            )
    for name in [method.scratch, *method.controls]:
        if name not in SCRATCH_CONTROLS:
            hint = did_you_mean(name, SCRATCH_CONTROLS, n=2, cutoff=0.5)
            problems.append(f"{where}: unknown sparse control {name!r}.{hint} Available: {', '.join(SCRATCH_CONTROLS)}")
    if len(set(method.controls)) != len(method.controls) or method.scratch in method.controls:
        problems.append(
            f"{where}: controls={method.controls!r} repeat a control or the scratch arm's {method.scratch!r}"
        )


def _check_slices(spec: StudySpec, problems: list[str]) -> None:
    defined = spec.data.get("slices")
    names = set(defined) if isinstance(defined, dict) else {"train", "val", "test"}
    roles = {"parent": spec.slices.parent, "retrain": spec.slices.retrain, "calibration": spec.slices.calibration}
    if spec.slices.long is not None:
        roles["long"] = spec.slices.long
    for role, name in roles.items():
        if name not in names:
            problems.append(f"slices.{role}={name!r} is not a slice of data.slices (defined: {sorted(names)})")
    for key in ("train_slice",):
        if key in spec.data:
            problems.append(f"data.{key} is set by the study for each arm (slices.parent / retrain / long); remove it")
    if problems:
        return
    slices = defined if isinstance(defined, dict) else {}
    calibration = declared_range(slices, spec.slices.calibration, "calibration")
    if "S_M+N" in spec.arms:
        try:
            name, joined = long_slice(spec)
        except StudyError as err:
            problems.append(str(err))
            return
        long = declared_range({**slices, **({name: joined} if joined else {})}, name, "long")
        if any(m.kind == "sparse" for m in spec.methods) and calibration.overlaps(long):
            problems.append(
                f"slices.calibration ({calibration}) overlaps the tokens S_M+N trains on ({long}), but the sparse "
                "S_M+N arms draw their mask from calibration windows read in the same data module, whose slices may "
                "not overlap. Define a separate calibration slice (e.g. the first 131072 tokens of the train split, "
                "before the parent's slice) and name it in slices.calibration"
            )
    _check_heldout_slices(spec, slices, problems)


def _check_heldout_slices(spec: StudySpec, slices: dict[str, Any], problems: list[str]) -> None:
    """The report's held-out loss slice must be disjoint from every slice an arm trains, calibrates or validates
    on (validation chooses the learning rate, so the report's numbers must come from other tokens)."""
    if not spec.eval.enabled or spec.eval.loss_slice is None:
        return
    loss = spec.eval.loss_slice
    names = set(slices) if slices else {"train", "val", "test"}
    if loss not in names:
        problems.append(
            f"eval.loss_slice={loss!r} is not a slice of data.slices (defined: {sorted(names)}); add a held-out slice "
            "(e.g. heldout: {split: test}) or set eval.loss_slice: null"
        )
        return
    heldout = declared_range(slices, loss, "heldout")
    roles = {
        "slices.parent": spec.slices.parent,
        "slices.retrain": spec.slices.retrain,
        "slices.calibration": spec.slices.calibration,
        "data.val_slice": spec.data.get("val_slice", "val"),
    }
    if spec.slices.long is not None:
        roles["slices.long"] = spec.slices.long
    for role, name in roles.items():
        if name is None:
            continue
        other = declared_range(slices, name, role)
        if heldout.overlaps(other):
            problems.append(
                f"eval.loss_slice={loss!r} ({heldout}) overlaps {role}={name!r} ({other}); the report's numbers must "
                "come from tokens no arm trains, calibrates or chooses its learning rate on. Name another slice"
            )


def long_slice(spec: StudySpec) -> tuple[str, dict[str, Any] | None]:
    """The slice `S_M+N` reads: `(name, spec)`; spec is None when it is a slice of `data.slices` as is.

    Raises:
        StudyError: `parent` and `retrain` are different, non-adjacent slices and `slices.long` is not given.
    """
    roles = spec.slices
    if roles.long is not None:
        return roles.long, None
    if roles.parent == roles.retrain:
        return roles.parent, None
    defined = spec.data.get("slices") or {}
    first, second = defined.get(roles.parent), defined.get(roles.retrain)
    if (
        isinstance(first, dict)
        and isinstance(second, dict)
        and first.get("split") == second.get("split")
        and first.get("end") is not None
        and first.get("end") == second.get("start", 0)
    ):
        return "pretrain_and_retrain", {
            "split": first["split"],
            "start": first.get("start", 0),
            "end": second.get("end"),
        }
    raise StudyError(
        f"slices.long is not set and slices.parent={roles.parent!r} and slices.retrain={roles.retrain!r} are not "
        "adjacent ranges of one split, so the study cannot tell which tokens S_M+N trains on. Name a slice in "
        "slices.long, or make the retraining slice start where the parent's ends."
    )


def _check_calibration(spec: StudySpec, problems: list[str]) -> None:
    from litprune.inits.calibration import Calibration

    unknown = sorted(set(spec.calibration) - set(CALIBRATION_WINDOWS))
    if unknown:
        problems.append(
            f"calibration keys {unknown} are unknown: use nsamples, seqlen, seed (the slice is slices.calibration)"
        )
        return
    try:
        Calibration(slice=spec.slices.calibration, **spec.calibration)
    except (TypeError, ValueError) as err:
        problems.append(f"calibration: {err}")


def distill_settings(spec: StudySpec) -> dict[str, Any]:
    """The study's `distill` over `Distillation`'s defaults (alpha 0.5, temperature 1.0, top_k null)."""
    return {"alpha": 0.5, "temperature": 1.0, "top_k": None, **(spec.distill or {})}


def _check_distill(spec: StudySpec, problems: list[str]) -> None:
    """The distilled arms' settings, checked by `Distillation` itself (the teacher, the parent, is set per arm)."""
    if not isinstance(spec.distill, dict):
        problems.append(f"distill={spec.distill!r} must be a mapping, e.g. {{alpha: 0.5, temperature: 1.0}}")
        return
    for key in sorted(set(spec.distill) - set(DISTILL_KEYS)):
        if key == "teacher":
            problems.append(
                "distill.teacher cannot be set: every distilled arm learns from its own parent's export. Remove it"
            )
            continue
        hint = did_you_mean(key, DISTILL_KEYS, n=2, sentence=False)
        problems.append(f"unknown key distill.{key}{f' ({hint})' if hint else ''}; allowed: {', '.join(DISTILL_KEYS)}")
    if set(spec.distill) - set(DISTILL_KEYS):
        return
    from litprune.modules.distillation import Distillation

    try:
        Distillation(teacher="parent", **distill_settings(spec))
    except (TypeError, ValueError) as err:
        problems.append(f"distill: {err}")


def _check_launch(launch: LaunchSpec, problems: list[str]) -> None:
    """The `launch` section: values that go into job scripts, so each is one line of the expected form."""
    if isinstance(launch.time, int) and not isinstance(launch.time, bool):
        problems.append(
            f"launch.time={launch.time!r}: YAML reads an unquoted 48:00:00 as a number of seconds; quote the time "
            'limit, e.g. time: "48:00:00"'
        )
    elif launch.time is not None and (
        not isinstance(launch.time, str) or not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", launch.time)
    ):
        problems.append(
            f"launch.time={launch.time!r} is not a SLURM time limit; use hours:minutes:seconds or "
            'days-hours:minutes:seconds, quoted, e.g. time: "48:00:00"'
        )
    for key in ("partition", "account"):
        value = getattr(launch, key)
        if value is not None and (not isinstance(value, str) or not value or re.search(r"\s", value)):
            problems.append(f"launch.{key}={value!r} must be a {key} name (one word), or null")
    for key, example in (("extra_sbatch", '["--cpus-per-task=16"]'), ("setup", '["source .venv/bin/activate"]')):
        value = getattr(launch, key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() and "\n" not in v for v in value):
            problems.append(f"launch.{key}={value!r} must be a list of one-line strings, e.g. {key}: {example}")
        elif key == "extra_sbatch" and any(not v.startswith("-") for v in value):
            problems.append(
                f"launch.extra_sbatch={value!r}: each entry is an sbatch option starting with '-', e.g. "
                '"--cpus-per-task=16" (without #SBATCH)'
            )
    port = launch.master_port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"launch.master_port={port!r} must be a TCP port number, e.g. 29500")


def _check_eval(spec: StudySpec, problems: list[str]) -> None:
    ev = spec.eval
    if not ev.enabled:
        return
    if ev.limit is not None and (not isinstance(ev.limit, int) or ev.limit < 1):
        problems.append(f"eval.limit={ev.limit!r} must be a positive integer or null")
    if ev.loss_tokens is not None and (
        isinstance(ev.loss_tokens, bool) or not isinstance(ev.loss_tokens, int) or ev.loss_tokens < 1
    ):
        problems.append(f"eval.loss_tokens={ev.loss_tokens!r} must be a positive number of tokens, or null (all)")
    if isinstance(ev.confidence, bool) or not isinstance(ev.confidence, float) or not 0.5 <= ev.confidence < 1:
        problems.append(f"eval.confidence={ev.confidence!r} must be a coverage in [0.5, 1), e.g. 0.95")
    for key in ("max_windows", "batch_size", "max_examples", "resamples"):
        value = getattr(ev, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"eval.{key}={value!r} must be a positive integer")
    if ev.tasks:
        from litprune.eval.tasks import resolve_tasks

        try:
            resolve_tasks(ev.tasks)
        except ValueError as err:
            problems.append(f"eval.tasks: {err}")
    from litprune.eval.text_sources import parse_source_spec

    for source in ev.perplexity:
        try:
            parse_source_spec(source)
        except ValueError as err:
            problems.append(f"eval.perplexity: {err}")


# ------------------------------------------------------------------------------------------------------ helpers
def _known(raw: dict[str, Any], cls: type, prefix: str, problems: list[str], exclude: set[str] = frozenset()):
    allowed = [f.name for f in fields(cls) if f.name not in exclude]
    out = {}
    for key, value in raw.items():
        if key in allowed:
            out[key] = value
        else:
            hint = did_you_mean(key, allowed, n=2, sentence=False)
            problems.append(f"unknown key {prefix}{key}{f' ({hint})' if hint else ''}; allowed: {', '.join(allowed)}")
    return out


def _format(where: str, problems: list[str]) -> str:
    listing = "\n  - ".join(problems)
    return f"{where} cannot run ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  - {listing}"
