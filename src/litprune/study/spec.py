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
that are not defined. The arms themselves are built by `litprune.study.arms.expand_study`.
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

ARM_KINDS: tuple[str, ...] = ("S_N", "P_M-R_N", "S_M+N")
"""The arms of every method x ratio x N, in the paper's notation."""

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
        method: structured (`minitron_depth`, `shortgpt`, `minitron_width`) or sparse (`wanda`, `sparsegpt`,
            `magnitude`).
        ratios: pruned fractions; structured ratios are read on `convention` parameters, sparse ratios per matrix.
        parent: the parent to prune (a key of `parents`); default: the study's only parent.
        pattern: sparse only: `unstructured`, `2:4`, `4:8` (N:M patterns only at ratio N/M).
        convention: structured only: `non_embedding` (the paper's) or `total`.
        scratch: sparse only: how the `S_N` / `S_M+N` arms start (`reinit`, the paper's, or `random_same_mask`,
            `random_fresh_mask`).
        controls: sparse only: extra scratch arms trained for N tokens, one per listed control.
        options: method options: sparse `method_kwargs`; structured `scorer`, `batch_size`.
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

    @property
    def kind(self) -> str:
        """ "depth", "width" or "sparse"."""
        return STRUCTURED_METHODS.get(self.method, "sparse")


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
        arms: which of `S_N`, `P_M-R_N`, `S_M+N` to run.
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
    arms: list[str] = field(default_factory=lambda: list(ARM_KINDS))
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
        if ratios is None:
            problems.append(f"methods[{i}] ({body['method']}) needs ratios, e.g. ratios: [0.5]")
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
    for key in ("data", "model", "trainer", "checkpoint", "calibration", "scratch_init", "env"):
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
        problems.append(f"arms={spec.arms!r}: choose from {list(ARM_KINDS)} (at least one)")
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
    known = [*STRUCTURED_METHODS, *SPARSE_METHODS]
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
    if not method.ratios:
        problems.append(f"{where}: ratios is empty; give at least one, e.g. [0.5]")
    if len(set(map(str, method.ratios))) != len(method.ratios):
        problems.append(f"{where}: ratios={method.ratios!r} repeats a value")
    config = configs.get(parent)
    if method.kind == "sparse":
        _check_sparse(where, method, problems)
    else:
        _check_structured(where, method, config, problems)
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
    unknown = sorted(set(method.options) - {"scorer", "batch_size"})
    if unknown:
        problems.append(f"{where}: options {unknown} do not apply; structured methods accept scorer, batch_size")
    try:
        check_convention(method.convention)
    except ValueError as err:
        problems.append(f"{where}: {err}")
        return
    for ratio in method.ratios:
        try:
            check_ratio_open(ratio)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        if config is None:
            continue  # a hub parent: its shape is solved when the arm builds it
        try:
            solve_shape(config, method.kind, ratio=float(ratio), convention=method.convention)
        except ValueError as err:
            problems.append(f"{where}: ratio {ratio} cannot be reached on the parent's shape: {err}")


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
