"""Training-recipe pieces. Map: `budget` (`TokenBudget`, the one home of tokens per optimizer step), `lr_schedule`
(warmup + cosine), `metrics_logger` (append-only `metrics.jsonl`), `log_step` (the step Lightning logs a batch
under), `checkpoint_io` (atomic checkpoint writes, `previous.ckpt`, reads that name a corrupt file), `mask_state`
(the checkpoint format of the SparseMask callback's masks and schedule, and its older versions)."""
