"""`EvalCallback`: lm-eval tasks and windowed perplexity on the live model, during and at the end of training.

No save, no conversion: the LightningModule's Hugging Face model is evaluated in place (see
`litprune.eval.harness`), and everything training depends on (train/eval flag, device, random states) is
restored afterwards, so a run with the callback trains exactly like a run without it.

What the callback reads from the run:

- the model: `pl_module.model` (the Hugging Face model a litprune LightningModule holds); fallback: `pl_module`
  itself when it is a Hugging Face model (it has `get_input_embeddings`).
- the tokenizer: the `tokenizer` argument (a directory) when given, else `trainer.datamodule.tokenizer`, else
  `pl_module.tokenizer`.
- the token count: `pl_module.tokens_seen`. It is required for `every_n_tokens`; without it, end-of-training
  results are labelled by global step only.

Results go to the trainer's loggers (`eval/<task>/<metric>`, `eval/ppl/<source:split>`,
`eval/loss/<source:split>`, at the current global step) and to one JSON file per evaluation
(`eval-tokens<N>.json`, or `eval-step<S>.json` without a token count), written atomically into `dirpath`,
else the checkpoint directory (`ModelCheckpoint.dirpath`), else `trainer.log_dir`.

Only the global-zero process evaluates; the others wait at a barrier. That suits single-device runs and DDP
(every process holds the whole model). Sharded strategies (FSDP) are not supported: export the model and use
`litprune eval` instead.

The end-of-training evaluation runs in `on_train_end`, while the model is still on its accelerator (Lightning
moves it to CPU before `on_fit_end`). It is skipped when a periodic evaluation already ran at the same token
count.

Example (LightningCLI YAML):

    trainer:
      callbacks:
        - class_path: litprune.eval.callback.EvalCallback
          init_args:
            tasks: [offline]
            perplexity: ["embedded:val"]
            every_n_tokens: 50_000_000
            limit: 200
            max_windows: 16
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from litprune.eval.offline_tasks import DEFAULT_MAX_EXAMPLES, OfflineTask, prepare_offline_task
from litprune.eval.perplexity import PAPER_MAX_WINDOWS, choose_window_length
from litprune.eval.tasks import TaskSpec, resolve_tasks
from litprune.eval.text_sources import TextSource, load_documents, load_text_source, parse_source_spec


class EvalCallback(Callback):
    """Run lm-eval tasks and perplexities on the live model at the end of training and every N tokens.

    Args:
        tasks: task names or presets (`offline`, `paper`, any lm-eval task, `name:metric`); may be empty.
        perplexity: text sources for windowed perplexity (`embedded:val`, `wikitext`, a path, ...); may be empty.
        every_n_tokens: also evaluate each time `pl_module.tokens_seen` crosses a multiple of this; None = never.
        at_fit_end: evaluate when training ends.
        batch_size: lm-eval requests per forward pass.
        limit: evaluate only the first N examples of each task (cheap in-training signals).
        seq_len: perplexity window; default the run's training `seq_len` (`trainer.datamodule.seq_len`), as
            `litprune eval` uses for the export, else the paper's 8192 or the model's context length if shorter.
        max_windows: at most this many perplexity windows per source.
        num_fewshot: few-shot examples per prompt.
        task_documents: text source spec to build the offline tasks from; default the embedded held-out split.
        max_examples: examples per generated offline task.
        tokenizer: tokenizer directory, when the datamodule does not expose `tokenizer`.
        ppl_batch_size: perplexity windows per forward pass.
        dirpath: directory for the JSON files; default the checkpoint directory, else the trainer's log_dir.
        add_bos_token: BOS in front of every task request (true/false); default the tokenizer's own behaviour.
        task_seed: seed of the offline tasks' example sampling and order (`limit` keeps the first examples).

    Raises:
        ValueError: invalid arguments (all listed at once), an unknown task (with close matches) or an unknown
            text source, at construction.
    """

    def __init__(
        self,
        tasks: list[str],
        perplexity: list[str],
        every_n_tokens: int | None = None,
        at_fit_end: bool = True,
        batch_size: int = 16,
        limit: int | None = None,
        seq_len: int | None = None,
        max_windows: int = PAPER_MAX_WINDOWS,
        num_fewshot: int = 0,
        task_documents: str | None = None,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        tokenizer: str | None = None,
        ppl_batch_size: int = 1,
        dirpath: str | None = None,
        add_bos_token: bool | None = None,
        task_seed: int = 0,
    ) -> None:
        problems = []
        if not isinstance(tasks, list | tuple) or not isinstance(perplexity, list | tuple):
            problems.append(f"tasks={tasks!r} and perplexity={perplexity!r} must be lists of names")
        elif not tasks and not perplexity:
            problems.append("tasks and perplexity are both empty; name at least one task or text source")
        if every_n_tokens is not None and (not isinstance(every_n_tokens, int) or every_n_tokens < 1):
            problems.append(f"every_n_tokens={every_n_tokens!r} must be a positive integer or None")
        if every_n_tokens is None and not at_fit_end:
            problems.append("every_n_tokens=None and at_fit_end=False would never evaluate; enable one of them")
        for name, value in (
            ("batch_size", batch_size),
            ("max_windows", max_windows),
            ("max_examples", max_examples),
            ("ppl_batch_size", ppl_batch_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            problems.append(f"limit={limit!r} must be a positive integer or None")
        if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 2):
            problems.append(f"seq_len={seq_len!r} must be an integer of at least 2, or None")
        if not isinstance(num_fewshot, int) or num_fewshot < 0:
            problems.append(f"num_fewshot={num_fewshot!r} must be 0 or more")
        if not isinstance(task_seed, int) or isinstance(task_seed, bool) or task_seed < 0:
            problems.append(f"task_seed={task_seed!r} must be a non-negative integer")
        if problems:
            raise ValueError("EvalCallback: invalid arguments:\n  " + "\n  ".join(problems))
        self.specs: list[TaskSpec] = resolve_tasks(list(tasks)) if tasks else []
        for spec in perplexity:
            parse_source_spec(spec)
        self.tasks = list(tasks)
        self.perplexity = list(perplexity)
        self.every_n_tokens = every_n_tokens
        self.at_fit_end = at_fit_end
        self.batch_size = batch_size
        self.limit = limit
        self.seq_len = seq_len
        self.max_windows = max_windows
        self.num_fewshot = num_fewshot
        self.task_documents = task_documents
        self.max_examples = max_examples
        self.tokenizer_dir = tokenizer
        self.ppl_batch_size = ppl_batch_size
        self.dirpath = dirpath
        self.add_bos_token = add_bos_token
        self.task_seed = task_seed
        self.next_eval_tokens: int | None = every_n_tokens
        self.last_eval_tokens: int | None = None
        self.records: list[dict[str, Any]] = []
        self._sources: list[TextSource] | None = None
        self._offline: dict[str, OfflineTask] | None = None
        self._tokenizer: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tasks=self.tasks, perplexity=self.perplexity, every=self.every_n_tokens)

    def state_dict(self) -> dict[str, Any]:
        return {"next_eval_tokens": self.next_eval_tokens, "last_eval_tokens": self.last_eval_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_eval_tokens = state_dict.get("next_eval_tokens", self.every_n_tokens)
        self.last_eval_tokens = state_dict.get("last_eval_tokens")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Every check that needs the run happens here, before the first step, not hours later.
        model = self._model(pl_module)
        if self.every_n_tokens is not None and not hasattr(pl_module, "tokens_seen"):
            raise ValueError(
                f"EvalCallback(every_n_tokens={self.every_n_tokens}) needs pl_module.tokens_seen, which "
                f"{type(pl_module).__name__} does not have; use at_fit_end only, or count tokens in the module."
            )
        self._tokenizer = self._resolve_tokenizer(trainer, pl_module)
        from litprune.eval.borrow import check_tokenizer_fits

        check_tokenizer_fits(model, self._tokenizer)
        if self.perplexity:
            self._window(trainer, model)
        if trainer.is_global_zero:
            self._prepare_inputs()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_tokens is None or self.next_eval_tokens is None:
            return
        tokens = int(pl_module.tokens_seen)
        if tokens < self.next_eval_tokens:
            return
        self.next_eval_tokens = (tokens // self.every_n_tokens + 1) * self.every_n_tokens
        self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.at_fit_end:
            return
        tokens = getattr(pl_module, "tokens_seen", None)
        if tokens is not None and self.last_eval_tokens == int(tokens):
            return
        self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: Any, pl_module: Any) -> dict[str, Any] | None:
        """Evaluate now on global zero, log the metrics and write the JSON; returns the record (None elsewhere)."""
        tokens = getattr(pl_module, "tokens_seen", None)
        tokens = int(tokens) if tokens is not None else None
        self.last_eval_tokens = tokens
        record = None
        if trainer.is_global_zero:
            record = self._evaluate(trainer, pl_module, tokens)
        trainer.strategy.barrier("litprune-eval")
        return record

    def _evaluate(self, trainer: Any, pl_module: Any, tokens: int | None) -> dict[str, Any]:
        from litprune.eval.harness import run_specs
        from litprune.eval.run import perplexity_entry
        from litprune.utils.atomic import atomic_write_json

        model = self._model(pl_module)
        if self._tokenizer is None:
            self._tokenizer = self._resolve_tokenizer(trainer, pl_module)
        self._prepare_inputs()
        task_results = []
        if self.specs:
            task_results = run_specs(
                model,
                self._tokenizer,
                self.specs,
                self._offline or {},
                self.batch_size,
                self.limit,
                self.num_fewshot,
                add_bos_token=self.add_bos_token,
            )
        window, window_rule = self._window(trainer, model)
        ppl = [
            perplexity_entry(model, self._tokenizer, source, window, self.max_windows, self.ppl_batch_size)
            for source in self._sources or []
        ]
        metrics: dict[str, float] = {}
        for result in task_results:
            for name, value in result.metrics.items():
                metrics[f"eval/{result.task}/{name}"] = value
        for entry in ppl:
            label = f"{entry['source']}:{entry['split']}"
            metrics[f"eval/ppl/{label}"] = entry["perplexity"]
            metrics[f"eval/loss/{label}"] = entry["mean_loss"]
        if tokens is not None:
            metrics["eval/tokens_seen"] = float(tokens)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        record = {
            "format": "litprune-eval/1",
            "global_step": trainer.global_step,
            "tokens_seen": tokens,
            "run": pl_module.run_record() if hasattr(pl_module, "run_record") else None,
            "settings": {
                "batch_size": self.batch_size,
                "limit": self.limit,
                "num_fewshot": self.num_fewshot,
                "seq_len": window,
                "seq_len_source": window_rule,
                "max_windows": self.max_windows,
                "window_selection": "spread",
                "task_documents": self.task_documents or "embedded:test",
                "max_examples": self.max_examples,
                "task_seed": self.task_seed,
                "add_bos_token": self.add_bos_token,
            },
            "tasks": [result.to_dict() for result in task_results],
            "perplexity": ppl,
        }
        name = f"eval-tokens{tokens}.json" if tokens is not None else f"eval-step{trainer.global_step}.json"
        record["path"] = str(atomic_write_json(self._output_dir(trainer) / name, record, default=str))
        self.records.append(record)
        return record

    def _prepare_inputs(self) -> None:
        # Load text (possibly from the hub) and generate offline tasks once, on the evaluating process only.
        if self._sources is None:
            self._sources = [load_text_source(spec) for spec in self.perplexity]
        if self._offline is None:
            documents = load_documents(self.task_documents) if self.task_documents is not None else None
            size, seed = self.max_examples, self.task_seed
            self._offline = {
                spec.name: prepare_offline_task(spec.name, documents, max_examples=size, seed=seed)
                for spec in self.specs
                if spec.offline
            }

    def _window(self, trainer: Any, model: Any) -> tuple[int, str]:
        # The same rule as `litprune eval` on the export: explicit, else the training seq_len, else the context.
        training = getattr(getattr(trainer, "datamodule", None), "seq_len", None)
        training = int(training) if isinstance(training, int) and not isinstance(training, bool) else None
        return choose_window_length(model, self.seq_len, training, "trainer.datamodule.seq_len")

    def _model(self, pl_module: Any) -> Any:
        model = getattr(pl_module, "model", None)
        if model is not None and hasattr(model, "get_input_embeddings"):
            return model
        if hasattr(pl_module, "get_input_embeddings"):
            return pl_module
        raise ValueError(
            f"EvalCallback needs a Hugging Face model: {type(pl_module).__name__} has no `.model` with "
            "get_input_embeddings() and is not one itself."
        )

    def _resolve_tokenizer(self, trainer: Any, pl_module: Any) -> Any:
        if self.tokenizer_dir is not None:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.tokenizer_dir)
        for owner in (getattr(trainer, "datamodule", None), pl_module):
            tokenizer = getattr(owner, "tokenizer", None) if owner is not None else None
            if tokenizer is not None:
                return tokenizer
        raise ValueError(
            "EvalCallback found no tokenizer: trainer.datamodule.tokenizer and pl_module.tokenizer are missing or "
            "None. Pass EvalCallback(tokenizer=<tokenizer directory>)."
        )

    def _output_dir(self, trainer: Any) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            return Path(checkpoint.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir)
