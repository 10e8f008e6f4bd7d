"""`ScratchTarget`: the scratch baseline (`S_N`) of a structured pruned arm, the pruned architecture from random init.

```yaml
init:
  class_path: litprune.inits.ScratchTarget
  init_args: {parent: runs/tiny_scratch/export, method: depth, ratio: 0.5, seed: 0}
```

The scratch twin of a FLAP arm carries FLAP's bias flags (`attention_bias` / `mlp_bias`, as its `compensate`
option needs) with zero-initialised biases, so the two arms have the same module tree and only the weights differ.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from litprune.inits.base import InitResult
from litprune.inits.parent import check_run_data, parent_record, read_parent_config
from litprune.inits.random import RandomInit
from litprune.inits.structured import TargetShapeInit, check_target_arguments
from litprune.models.params import count_parameters
from litprune.pruning.structured import check_flap_arguments, target_config_flags


class ScratchTarget(TargetShapeInit):
    """The scratch baseline (`S_N`) of a structured pruned arm: the pruned architecture from random init.

    Only the parent's `config.json` is read (never its weights); the target shape is solved exactly as
    `StructuredPrune` solves it, and the model is built with the parent's class and config fields (rotary
    settings, tied embeddings, ...) and initialised by `RandomInit(seed, scheme)`. So the scratch and the pruned
    arm of the same parent, method and ratio have identical parameter names and shapes. Both depth methods give
    the same shape, so one scratch run serves Minitron-depth and ShortGPT.

    Args:
        parent: the parent checkpoint directory (or litprune export) whose pruned shape to train.
        method: "depth", "width" or "attention_mlp", or a method name: "minitron_depth", "shortgpt",
            "minitron_width", "flap", "wanda_sp" (as for `StructuredPrune`) or "sheared" (Sheared-LLaMA's width
            target).
        ratio: pruned fraction of parameters under `convention`, as for `StructuredPrune`.
        target: explicit shape, as for `StructuredPrune`.
        convention: "non_embedding" (default) or "total".
        seed: seed of the random init.
        scheme: "normal" (Hugging Face's N(0, 0.02^2)) or "fan_in" (the paper's MaxText init).
        flap: method "flap" only: the pruned arm's FLAP options (the same mapping may be copied); only
            `compensate` changes the architecture (its bias flags). An adaptive structure has per-layer widths
            and so no scratch twin: it is refused.

    Raises:
        ValueError: as `StructuredPrune` for method, ratio, target and convention; unknown scheme; FLAP
            options given to another method, invalid, or with `structure: adaptive`.
    """

    def __init__(
        self,
        parent: str,
        method: str,
        ratio: float | None = None,
        target: dict[str, int] | None = None,
        convention: str = "non_embedding",
        seed: int = 0,
        scheme: Literal["normal", "fan_in"] = "normal",
        flap: dict[str, Any] | None = None,
    ) -> None:
        problems = check_target_arguments(parent, method, ratio, target, convention, accept_kinds=True)
        options = check_flap_arguments(method, flap, ratio, target, problems)
        if options is not None and options.structure == "adaptive":
            problems.append(
                "flap.structure='adaptive' keeps different widths per layer, so it has no one architecture to build "
                "from scratch. Pair the scratch arm with a structure: uniform FLAP arm."
            )
        try:
            self.random_init = RandomInit(seed=seed, scheme=scheme)
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("ScratchTarget: " + " ".join(problems))
        self.seed = int(seed)
        self.scheme = scheme
        self.flap = flap
        self.adopt_target(parent, method, ratio, target, convention)

    def target_config(self) -> PretrainedConfig:
        """The parent's config carrying the solved target shape (explicit `head_dim`) and the method's flags."""
        return self._with_flags(self.plan().shape.apply(read_parent_config(self.parent)))

    def _with_flags(self, config: PretrainedConfig) -> PretrainedConfig:
        for key, value in target_config_flags(self.method, self.flap).items():
            setattr(config, key, value)
        return config

    def build(self, config: PretrainedConfig | None = None, data: Any = None) -> InitResult:
        """Build the target architecture from random init; `config` is ignored (the parent defines it)."""
        parent_config = read_parent_config(self.parent)
        plan = self.plan()
        check_run_data(self.parent, parent_config, data)
        target_config = self._with_flags(plan.shape.apply(parent_config))
        model = AutoModelForCausalLM.from_config(target_config, dtype=torch.float32)
        # Under a sharded-init context the weights are on the meta device and are initialised after sharding.
        if not any(p.is_meta for p in model.parameters()):
            self.random_init.apply(model)
        model.train()
        record = {
            "strategy": "scratch_target",
            "parent": parent_record(self.parent),
            "method": self.method,
            "kind": self.kind,
            "ratio_requested": self.ratio,
            "target_requested": self.target,
            "convention": self.convention,
            "target_shape": plan.shape.as_dict(),
            "config_flags": target_config_flags(self.method, self.flap),
            "achieved_ratio": dict(plan.achieved),
            "params_parent": plan.params_parent.as_dict(),
            "params_after": count_parameters(model).as_dict(),
            "seed": self.seed,
            "scheme": self.scheme,
            "std": self.random_init.std,
        }
        return InitResult(model=model, record=record)
