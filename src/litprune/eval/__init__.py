"""Evaluation: lm-eval-harness on the live model, the paper's perplexity protocol, and offline tasks.

- `harness`: `evaluate_tasks(model, tokenizer, ["paper"])` runs lm-eval on an in-memory Hugging Face model
  (`LiveHFLM`, batched, no save or conversion) and returns `TaskResult`s, each with its per-example values.
- `tasks`: the `paper` and `offline` presets, the paper's metric per task, name checking with close matches.
- `offline_tasks`: `litprune_next_line` and `litprune_next_span`, multiple-choice tasks generated
  deterministically (seeded, in shuffled order) from held-out text into the cache, as ordinary lm-eval task YAMLs.
- `perplexity`: `perplexity(model, tokenizer, text)` under the paper's protocol (one tokenization, one BOS,
  non-overlapping windows, a window cap with windows spread over the text); the result states split, window
  length, windows, tokens and the loss of every window.
- `text_sources`: hub corpora by name (`c4`, `wikitext`, `cnn_dailymail`, ...) with an explicit split, local
  files, and the embedded held-out split.
- `task_scorer`: `make_task_scorer("task:winogrande", tokenizer)`, one lm-eval task as a Minitron-depth scorer
  (a callable `model -> float` for `litprune.pruning`); `StructuredPrune` resolves `scorer: task:...` with it.
- `run`: `run_eval(...)`, the `litprune eval` command: evaluate a saved model and write one JSON record.
- `callback`: `EvalCallback`, the same evaluations inside a Lightning run, every N tokens and at the end.
- `borrow`: how a live model is evaluated and handed back unchanged (mode, device, random states).

Submodules are imported on use, so `import litprune.eval` does not import lm-eval.
"""
