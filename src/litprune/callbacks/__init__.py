"""Lightning callbacks, hooks only (the arithmetic they run lives in the floors below).

Map: `sparse_mask` (`SparseMask`: keep-masks through every optimizer step, pruning schedules, exact resume; its
checkpoint state and its older versions in `litprune.training.mask_state`, its DDP checks in `distributed`), `export`
(`HFExport`: `save_pretrained` export with the run record, sparse when the run has masks), `progress`
(`TokenProgressBar`: tokens seen against the budget), `validate_at_start` (`ValidateAtStart`: the initial model's
validation loss, the first point of every loss curve), `sheared` (`ShearedPruning`: Sheared-LLaMA's hard-concrete
structure masks learned during training under a target-shape constraint, then the model materialised at the target
shape; the mask arithmetic lives in `litprune.pruning.hard_concrete`, `sheared_masks`, `sheared_forward` and
`sheared_materialise`).
"""

from litprune.callbacks.validate_at_start import ValidateAtStart

__all__ = ["ValidateAtStart"]
