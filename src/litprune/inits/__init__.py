"""Initialisation strategies: how each arm's model gets its first weights (one small class per strategy).

Map: `base` (the `InitStrategy` protocol and its `InitResult`), `random` (`RandomInit`, the `S_N` arms),
`pretrained` (`FromPretrained`), `sparse` (`SparsePrune`, sparse `P_M-R_N` and its scratch controls, drawn by
`sparse_controls`), `structured` (`StructuredPrune`, depth/width `P_M-R_N`), `scratch_target` (`ScratchTarget`,
the matching random arm), `parent` (reading the parent and checking the run's data fits it), `calibration`
(which windows a method calibrates on), `masks` (the typed hand-over of keep-masks to the module), `pruned` (the
pruned model `litprune prune` writes once and `FromPretrained` loads on every rank of a run).

YAML names them by their short path, e.g. `class_path: litprune.inits.SparsePrune`.
"""

from litprune.inits.base import InitResult, InitStrategy
from litprune.inits.calibration import Calibration
from litprune.inits.pretrained import FromPretrained
from litprune.inits.random import RandomInit
from litprune.inits.scratch_target import ScratchTarget
from litprune.inits.sparse import SparsePrune
from litprune.inits.structured import StructuredPrune

__all__ = [
    "Calibration",
    "FromPretrained",
    "InitResult",
    "InitStrategy",
    "RandomInit",
    "ScratchTarget",
    "SparsePrune",
    "StructuredPrune",
]
