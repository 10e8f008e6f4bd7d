"""Training-recipe pieces. Map: `budget` (`TokenBudget`, the one home of tokens per optimizer step), `lr_schedule`
(warmup + cosine), `metrics_logger` (append-only `metrics.jsonl`), `checkpoint_io` (atomic checkpoint writes)."""
