"""`litprune eval`: evaluate a saved model (an exported Hugging Face directory or a litprune Lightning checkpoint)
on lm-eval tasks and windowed perplexities, and write one JSON record of everything needed to compare runs.

The record states, for each task, the metric, value, standard error, example counts, task version, lm-eval
version and the metric on every example (`per_example`, by lm-eval `doc_id`); for each perplexity, the source,
split, window length, window count, how the windows were chosen, token counts and the mean loss of every window
(`window_nll`, `window_starts`, `window_tokens`). Two records made with the same settings can thus be compared
example by example and window by window (paired bootstrap intervals of differences). For the
model, a sha256 fingerprint of its weights, its parameter counts and, when the run that produced it left a
record (`litprune.json` in an exported directory, the `litprune` entry of a checkpoint), its token counts. For an
exported directory it also holds `lm_eval_command`: the `lm_eval` command line that gives the same task numbers
with lm-eval's own CLI (`--print-lm-eval-command` prints it without evaluating).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from litprune.eval.borrow import check_tokenizer_fits, resolve_device
from litprune.eval.offline_tasks import DEFAULT_MAX_EXAMPLES, OfflineTask, prepare_offline_task
from litprune.eval.perplexity import PAPER_MAX_WINDOWS, WINDOW_SELECTIONS, choose_window_length, perplexity
from litprune.eval.tasks import TaskSpec, resolve_tasks
from litprune.eval.text_sources import TextSource, load_documents, load_text_source, parse_source_spec
from litprune.models.fingerprint import weight_files_digest
from litprune.utils.atomic import atomic_write_json

PAPER_PERPLEXITY_SOURCES = ("c4", "wikitext", "cnn_dailymail")
RECORD_FORMAT = "litprune-eval/1"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model loaded for evaluation, with where it came from.

    Attributes:
        model: the Hugging Face causal LM.
        tokenizer: its tokenizer.
        kind: `hf_dir` or `lightning_ckpt`.
        fingerprint: sha256 hex digest identifying the weights.
        fingerprint_of: what was hashed.
        run_record: the producing run's record (`litprune.json` or the checkpoint's `litprune` entry), if any.
        run_record_source: where that record was read from.
    """

    model: Any
    tokenizer: Any
    kind: str
    fingerprint: str
    fingerprint_of: str
    run_record: dict[str, Any] | None
    run_record_source: str | None


def run_eval(
    model: str,
    tasks: list[str] | str | None = None,
    perplexity: list[str] | str | None = None,
    out: str | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    device: str = "auto",
    seq_len: int | None = None,
    max_windows: int = PAPER_MAX_WINDOWS,
    num_fewshot: int = 0,
    task_documents: str | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    tokenizer: str | None = None,
    dtype: str = "auto",
    ppl_batch_size: int = 1,
    add_bos_token: bool | None = None,
    print_lm_eval_command: bool = False,
    task_seed: int = 0,
    window_selection: str = "spread",
) -> dict:
    """Evaluate a saved model on lm-eval tasks and perplexities and write the results as JSON.

    Args:
        model: an exported Hugging Face model directory (config.json + safetensors + tokenizer files), or a
            litprune Lightning checkpoint (`.ckpt`).
        tasks: task names or presets: `paper` (the paper's eight zero-shot tasks, downloaded from the hub),
            `offline` (litprune's next-line and next-span tasks built from held-out text, no download), any
            lm-eval task name, or `name:metric`; a list or one comma-separated string (`--tasks offline`,
            `--tasks offline,paper`). Default: `paper`. An empty list runs no task.
        perplexity: text sources for windowed perplexity: `c4`, `wikitext`, `wikitext2`, `wikitext103-raw`,
            `cnn_dailymail`, `embedded` (each optionally `:split`; hub corpora default to the train split, as in
            the paper), or a path to a .txt/.jsonl file or a directory of text files. Default: c4, wikitext and
            cnn_dailymail. An empty list computes none.
        out: where to write the JSON record. Default: `eval.json` inside a model directory, or
            `<checkpoint name>.eval.json` beside a checkpoint.
        batch_size: lm-eval requests per forward pass.
        limit: evaluate only the first N examples of each task (quick checks; the record says so). The offline
            tasks list their examples in a seeded shuffled order (`task_seed`), so their first N sample every
            document.
        device: `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
        seq_len: perplexity window length in tokens. Default: the `seq_len` the model was trained with, when the
            run that produced it left a record (`litprune.json` of an export, the `litprune` entry of a
            checkpoint); else the paper's 8192, or the model's context length (`max_position_embeddings`) when
            that is shorter. The record's `settings.seq_len_source` says which (`explicit`, `training`,
            `model_context`). A value above the context length fails.
        max_windows: at most this many perplexity windows per source (the paper: 256), evenly spread over the
            whole text when it has more (see `window_selection`).
        num_fewshot: few-shot examples per task prompt (the paper: 0).
        task_documents: text to build the offline tasks from (any `perplexity` source spec, usually a
            directory of held-out files). Default: the held-out split of litprune's embedded corpus.
        max_examples: examples per generated offline task.
        tokenizer: tokenizer directory; default the one saved with the model (or named in the checkpoint).
        dtype: weights dtype for evaluation: `auto` (as saved), `float32`, `bfloat16` or `float16`.
        ppl_batch_size: perplexity windows per forward pass.
        add_bos_token: put a BOS token in front of every task request (true) or never (false); default: whatever
            the tokenizer does on its own, as lm-eval's CLI does. Perplexity always starts with one BOS.
        print_lm_eval_command: evaluate nothing; generate the offline tasks and print the `lm_eval` command line
            that reproduces these task numbers with lm-eval's own CLI (model, tasks, include path, few-shot,
            batch size, limit, device). Needs an exported model directory. Perplexity has no lm-eval counterpart.
        task_seed: seed of the offline tasks: which examples are drawn and their order, hence which ones `limit`
            keeps. Each seed is a task variant of its own (`..._s<seed>_...`); recorded in `offline_data.seed`.
        window_selection: which perplexity windows when a text has more than `max_windows`: `spread` (evenly
            over the whole text) or `first` (the first ones, as the paper's reference code).

    Returns:
        The record that was written (a dict; see the module docstring), or `{"lm_eval_command": ...}` when
        printing the command.

    Raises:
        ValueError: every invalid argument at once, an unknown task (with close matches) or text source, a
            tokenizer that does not fit the model, a window longer than the model's context, or a command to
            print for a checkpoint or without tasks.
        FileNotFoundError: the model path does not exist.
    """
    tasks = ["paper"] if tasks is None else _names(tasks)
    perplexity = list(PAPER_PERPLEXITY_SOURCES) if perplexity is None else _names(perplexity)
    _check_arguments(
        batch_size=batch_size,
        limit=limit,
        seq_len=seq_len,
        max_windows=max_windows,
        num_fewshot=num_fewshot,
        max_examples=max_examples,
        dtype=dtype,
        ppl_batch_size=ppl_batch_size,
        device=device,
        task_seed=task_seed,
        window_selection=window_selection,
    )
    model_path = Path(model).expanduser()
    if not model_path.exists():
        raise FileNotFoundError(f"model={model!r}: no such file or directory.")
    # Everything that can fail without the model fails here, before any weights are loaded.
    specs = resolve_tasks(tasks) if tasks else []
    for spec in perplexity:
        parse_source_spec(spec)
    if print_lm_eval_command and not specs:
        raise ValueError("print_lm_eval_command=true needs at least one task (--tasks); lm_eval runs no perplexity.")
    if print_lm_eval_command and not model_path.is_dir():
        raise ValueError(
            f"model={model!r}: lm_eval's command line loads a Hugging Face model directory, not a checkpoint; "
            "pass the run's export (runs/<run>/export) instead."
        )
    documents = load_documents(task_documents) if task_documents is not None else None
    offline = {
        s.name: prepare_offline_task(s.name, documents, max_examples=max_examples, seed=task_seed)
        for s in specs
        if s.offline
    }
    lm_eval_line = None
    if specs and model_path.is_dir():
        command = lm_eval_command(
            model_path,
            specs,
            offline,
            tokenizer=tokenizer,
            dtype=dtype,
            add_bos_token=add_bos_token,
            batch_size=batch_size,
            num_fewshot=num_fewshot,
            limit=limit,
            device=str(resolve_device(device)),
        )
        lm_eval_line = shlex.join(command)
    if print_lm_eval_command:
        if perplexity:
            print(
                f"litprune eval: the perplexities ({', '.join(perplexity)}) have no lm_eval counterpart; the command "
                "reproduces the task numbers only.",
                file=sys.stderr,
            )
        print(lm_eval_line, flush=True)
        return {"lm_eval_command": lm_eval_line}
    sources = [load_text_source(spec) for spec in perplexity]

    loaded = load_for_eval(model_path, tokenizer=tokenizer, dtype=dtype)
    target = resolve_device(device)
    loaded.model.to(target)
    check_tokenizer_fits(loaded.model, loaded.tokenizer)
    window, window_rule = choose_window_length(
        loaded.model, seq_len, training_seq_len(loaded.run_record), loaded.run_record_source
    )

    from litprune.eval.harness import run_specs

    task_results = []
    if specs:
        task_results = run_specs(
            loaded.model, loaded.tokenizer, specs, offline, batch_size, limit, num_fewshot, add_bos_token=add_bos_token
        )
    ppl_results = [
        perplexity_entry(loaded.model, loaded.tokenizer, source, window, max_windows, ppl_batch_size, window_selection)
        for source in sources
    ]
    record = {
        "format": RECORD_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "model": _model_entry(model_path, loaded),
        "training": _training_entry(loaded),
        "settings": {
            "batch_size": batch_size,
            "limit": limit,
            "num_fewshot": num_fewshot,
            "seq_len": window,
            "seq_len_source": window_rule,
            "max_windows": max_windows,
            "window_selection": window_selection,
            "device": str(target),
            "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
            "task_documents": task_documents or "embedded:test",
            "max_examples": max_examples,
            "task_seed": task_seed,
            "add_bos_token": add_bos_token,
        },
        "tasks": [
            {
                **result.to_dict(),
                **({"offline_data": _offline_entry(offline[result.task])} if result.task in offline else {}),
            }
            for result in task_results
        ],
        "perplexity": ppl_results,
        "lm_eval_command": lm_eval_line,
    }
    destination = Path(out) if out is not None else default_output_path(model_path)
    atomic_write_json(destination, record, default=str)
    return record


def lm_eval_command(
    model_dir: str | Path,
    specs: Sequence[TaskSpec],
    offline: Mapping[str, OfflineTask],
    tokenizer: str | None = None,
    dtype: str = "auto",
    add_bos_token: bool | None = None,
    batch_size: int = 16,
    num_fewshot: int = 0,
    limit: int | None = None,
    device: str = "cpu",
) -> list[str]:
    """The `lm_eval` argument list that runs `specs` on an exported model as `run_eval` does.

    Offline tasks are named by their generated variant, and all of them sit under one corpus folder, so a single
    `--include_path` covers them (lm_eval keeps only the last `--include_path` it is given). Seeds are lm-eval's
    defaults, which `litprune.eval.harness` uses too.

    Raises:
        ValueError: offline tasks generated from different documents (they would need two include paths), or a
            path lm_eval's `--model_args` cannot carry (it contains a comma).
    """
    tasks = [offline[spec.name].name if spec.offline else spec.name for spec in specs]
    include_paths = sorted({str(task.include_path) for task in offline.values()})
    if len(include_paths) > 1:
        raise ValueError(
            f"The offline tasks come from different documents ({', '.join(include_paths)}); lm_eval takes one "
            "--include_path. Generate them from the same task_documents."
        )
    model_path = str(Path(model_dir).expanduser().resolve())
    tokenizer_path = str(Path(tokenizer).expanduser().resolve()) if tokenizer is not None else model_path
    for path in {model_path, tokenizer_path}:
        if "," in path:
            raise ValueError(f"{path!r} contains a comma, which lm_eval's --model_args cannot carry; move or link it.")
    model_args = [f"pretrained={model_path}", f"tokenizer={tokenizer_path}"]
    if dtype != "auto":
        model_args.append(f"dtype={dtype}")
    if add_bos_token is not None:
        model_args.append(f"add_bos_token={add_bos_token}")
    command = ["lm_eval", "--model", "hf", "--model_args", ",".join(model_args), "--tasks", ",".join(tasks)]
    if include_paths:
        command += ["--include_path", include_paths[0]]
    command += ["--num_fewshot", str(num_fewshot), "--batch_size", str(batch_size), "--device", device]
    if limit is not None:
        command += ["--limit", str(limit)]
    return command


def eval_main(argv: list[str]) -> None:
    """`litprune eval`: `run_eval` as a command.

    Options may also be spelled with dashes (`--max-examples 40`), and a true/false option given alone is a flag:
    `--print-lm-eval-command` means `--print_lm_eval_command true`.
    """
    from jsonargparse import CLI

    CLI(run_eval, args=_normalised_arguments(argv), prog="litprune eval")


_FLAGS = ("--print_lm_eval_command",)
_BOOLEAN_VALUES = ("true", "false", "yes", "no", "1", "0", "on", "off")


def _normalised_arguments(argv: list[str]) -> list[str]:
    """`--max-examples=5` -> `--max_examples=5`, a bare flag -> `--flag=true`; values are left alone."""
    out = []
    for index, arg in enumerate(argv):
        if arg.startswith("--"):
            option, sep, value = arg.partition("=")
            arg = "--" + option[2:].replace("-", "_") + sep + value
            following = argv[index + 1] if index + 1 < len(argv) else None
            if arg in _FLAGS and (following is None or following.lower() not in _BOOLEAN_VALUES):
                arg += "=true"
        out.append(arg)
    return out


def perplexity_entry(
    model: Any,
    tokenizer: Any,
    source: TextSource,
    seq_len: int,
    max_windows: int,
    batch_size: int,
    selection: str = "spread",
) -> dict:
    """One perplexity result as a JSON-ready dict, with the source's origin and document count."""
    result = perplexity(model, tokenizer, source, seq_len, max_windows, batch_size, selection=selection)
    return {**result.to_dict(), "origin": source.origin, "documents": len(source.documents)}


def load_for_eval(path: str | Path, tokenizer: str | None = None, dtype: str = "auto") -> LoadedModel:
    """Load an exported HF directory or a litprune `.ckpt` (CPU), with its tokenizer, fingerprint and record.

    A checkpoint is read with `torch.load(weights_only=True)`; its `state_dict` holds the HF model under the
    prefix `model.`, its `litprune` entry the HF config (`hf_config`) and the tokenizer directory
    (`tokenizer_dir`, used unless `tokenizer` is given).

    Raises:
        FileNotFoundError: nothing at `path`, or no tokenizer can be found.
        ValueError: a directory without config.json, or a checkpoint without the entries above.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json; point model= at an exported Hugging Face model directory.")
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto" if dtype == "auto" else _DTYPES[dtype])
        tok = AutoTokenizer.from_pretrained(tokenizer or path)
        fingerprint, of = weight_files_digest(path)
        record_path = path / "litprune.json"
        record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
        return LoadedModel(model.eval(), tok, "hf_dir", fingerprint, of, record, str(record_path) if record else None)
    if path.suffix != ".ckpt":
        raise ValueError(f"{path} is neither a model directory nor a .ckpt checkpoint.")
    return _load_checkpoint(path, tokenizer, dtype)


def default_output_path(model_path: Path) -> Path:
    """`<dir>/eval.json` for a model directory, `<name>.eval.json` beside a checkpoint."""
    return model_path / "eval.json" if model_path.is_dir() else model_path.with_suffix(".eval.json")


def token_counts(record: dict[str, Any] | None) -> dict[str, int]:
    """Every integer field whose name mentions tokens, found anywhere in a run record, by dotted path."""
    found: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "hf_config":
                    continue
                path = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(value, int) and not isinstance(value, bool) and "token" in str(key):
                    found[path] = value
                else:
                    walk(value, path)

    walk(record, "")
    return found


def _load_checkpoint(path: Path, tokenizer: str | None, dtype: str) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        raise ValueError(f"Could not read {path} with torch.load(weights_only=True): {err}") from err
    record = checkpoint.get("litprune")
    if not isinstance(record, dict) or "hf_config" not in record:
        raise ValueError(
            f"{path} has no checkpoint['litprune']['hf_config']; it was not written by a litprune LightningModule. "
            "Export the model as a Hugging Face directory and evaluate that instead."
        )
    config_dict = dict(record["hf_config"])
    model_type = config_dict.pop("model_type", "llama")
    config = LlamaConfig(**config_dict) if model_type == "llama" else AutoConfig.for_model(model_type, **config_dict)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    if not state:
        raise ValueError(f"{path}: no 'model.'-prefixed weights in the checkpoint's state_dict.")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state, strict=True)
    saved_dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    model.to(saved_dtype if dtype == "auto" else _DTYPES[dtype])
    tokenizer_dir = tokenizer or record.get("tokenizer_dir")
    if tokenizer_dir is None:
        raise FileNotFoundError(
            f"{path} names no tokenizer (checkpoint['litprune']['tokenizer_dir']); pass tokenizer=<directory>."
        )
    tokenizer_path = Path(tokenizer_dir).expanduser()
    if not tokenizer_path.is_absolute() and not tokenizer_path.exists():
        tokenizer_path = path.parent / tokenizer_path
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    run_record = {k: v for k, v in record.items() if k != "hf_config"}
    return LoadedModel(
        model.eval(), tok, "lightning_ckpt", _state_fingerprint(state), "state_dict tensors", run_record, str(path)
    )


def _state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _model_entry(path: Path, loaded: LoadedModel) -> dict[str, Any]:
    from litprune.models.params import count_parameters

    return {
        "path": str(path.resolve()),
        "kind": loaded.kind,
        "fingerprint": f"sha256:{loaded.fingerprint}",
        "fingerprint_of": loaded.fingerprint_of,
        "parameters": count_parameters(loaded.model).as_dict(),
        "architecture": type(loaded.model).__name__,
    }


def training_seq_len(record: Mapping[str, Any] | None) -> int | None:
    """The `seq_len` a run record says the model was trained with, or None when it says none.

    Read from the data module's record (`data.seq_len`, written into an export's `litprune.json`), else from the
    token budget's step shape (`run.step_shape.seq_len` in an export, `step_shape.seq_len` in a checkpoint's
    `litprune` entry, which holds the run record's fields at its top level).
    """
    if not isinstance(record, Mapping):
        return None
    run = record.get("run", record)
    candidates = (
        (record.get("data") or {}).get("seq_len") if isinstance(record.get("data"), Mapping) else None,
        (run.get("step_shape") or {}).get("seq_len") if isinstance(run, Mapping) else None,
    )
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
            return value
    return None


def _training_entry(loaded: LoadedModel) -> dict[str, Any] | None:
    if loaded.run_record is None:
        return None
    run = loaded.run_record.get("run", loaded.run_record)
    return {
        "record": loaded.run_record_source,
        "arm": run.get("arm") if isinstance(run, dict) else None,
        "tokens_seen": run.get("tokens_seen") if isinstance(run, dict) else None,
        "token_counts": token_counts(loaded.run_record),
    }


def _offline_entry(task: OfflineTask) -> dict[str, Any]:
    return {
        "lm_eval_task": task.name,
        "include_path": str(task.include_path),
        "fingerprint": task.fingerprint,
        "examples": task.num_examples,
        "documents": task.num_documents,
        "seed": task.seed,
        "path": str(task.data_path),
    }


def _versions() -> dict[str, str]:
    import importlib.util

    import transformers

    import litprune

    # A perplexity-only evaluation needs no lm-eval; its absence is recorded as such.
    lm_eval = importlib.import_module("lm_eval") if importlib.util.find_spec("lm_eval") else None

    return {
        "litprune": litprune.__version__,
        "lm_eval": lm_eval.__version__ if lm_eval is not None else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _check_arguments(**values: Any) -> None:
    problems = []
    for name in ("batch_size", "max_windows", "max_examples", "ppl_batch_size"):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{name}={value!r} must be a positive integer")
    seq_len = values["seq_len"]
    if seq_len is not None and (not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2):
        problems.append(f"seq_len={seq_len!r} must be an integer of at least 2 (or unset)")
    limit = values["limit"]
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        problems.append(f"limit={limit!r} must be a positive integer or None")
    task_seed = values["task_seed"]
    if not isinstance(task_seed, int) or isinstance(task_seed, bool) or task_seed < 0:
        problems.append(f"task_seed={task_seed!r} must be a non-negative integer")
    selection = values["window_selection"]
    if selection not in WINDOW_SELECTIONS:
        problems.append(f"window_selection={selection!r} must be one of {', '.join(WINDOW_SELECTIONS)}")
    fewshot = values["num_fewshot"]
    if not isinstance(fewshot, int) or fewshot < 0:
        problems.append(f"num_fewshot={fewshot!r} must be 0 or more")
    if values["dtype"] != "auto" and values["dtype"] not in _DTYPES:
        problems.append(f"dtype={values['dtype']!r} must be one of auto, {', '.join(_DTYPES)}")
    try:
        resolve_device(values["device"])
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ValueError("Invalid evaluation settings:\n  " + "\n  ".join(problems))


def _names(value: list[str] | str) -> list[str]:
    """A list of names from a list or a comma-separated string (what a shell user types)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)
