"""Pruning as pure functions on tensors and `nn.Module`s: no Lightning, no files, no data modules.

Map: sparse methods (`magnitude`, `wanda`, `sparsegpt`, entry point `sparse`), their shared pieces (`patterns`:
unstructured and N:M masks; `targets`: which weights; `calibration`: sequential calibration passes and their
statistics; `activation_norms`: input-feature norms from hooks; `schedules`: `PruningSchedule`), structured
methods (`depth`: Minitron depth, ShortGPT; `width`: Minitron width; entry point `structured`; `shapes`: the shape
solver from a ratio; `scorers`: what ranks a candidate).
"""
