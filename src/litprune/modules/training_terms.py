"""Extra terms a callback adds to `CausalLM`'s training objective, with their own optimizer parameter groups.

Some methods learn more than the model's weights: Sheared-LLaMA learns mask logits and Lagrange multipliers next
to the weights and adds a constraint penalty to the language-model loss. Such a method registers a
`TrainingTerm` on the module (`CausalLM.add_training_term`) from its callback's `setup`, before the optimizer is
built. The term's parameters then live in the module (so they are in `state_dict`, on the right device and in every
checkpoint), its groups join the one optimizer with their own learning rates (the LR schedule scales every group by
the same factor), and its loss is added to the cross-entropy at every training step and logged as
`train/<name>`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainingTerm(nn.Module):
    """A module whose parameters train next to the model's and whose `loss()` joins the training objective.

    Subclasses implement `loss` and may override `param_groups`; `loss` is called once per training step, after
    the model's forward of that step.
    """

    def loss(self) -> torch.Tensor | None:
        """The term to add to the training loss at this step (a scalar), or None to add nothing."""
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups for this term's parameters; `lr` is the model's peak LR. Default: one group at `lr`
        without weight decay."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": 0.0}] if params else []
