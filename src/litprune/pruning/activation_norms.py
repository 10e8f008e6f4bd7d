"""Online input-feature norms of linear layers, gathered from training batches for Wanda scores.

Wanda scores a weight `W_ij` by `|W_ij| * ||X_j||_2`, where `X_j` collects input feature `j` of the layer over
every token seen (methods-spec section 5). During gradual pruning there is no separate calibration pass: a
forward pre-hook on each targeted `nn.Linear` adds `sum_tokens x_j^2` (fp32) for the training batches between
two pruning events, and the statistics are reset after every event.

All layers share one flat fp32 buffer, so a DDP run needs a single all-reduce before scoring, and the whole
state fits in a checkpoint as one tensor (resuming between two events gives the same next mask).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class ActivationNorms:
    """Per-input-feature sums of squares for a set of linear layers.

    Args:
        modules: layer name -> `nn.Linear` whose inputs are measured. The name is the key used by `norm()`.

    Attributes:
        active: statistics are only recorded while True (the owner switches it on for training batches only,
            so validation batches never leak into the scores).
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self._modules = dict(modules)
        self._slices: dict[str, slice] = {}
        offset = 0
        for name, module in self._modules.items():
            if not isinstance(module, nn.Linear):
                raise TypeError(
                    f"Wanda input norms need an nn.Linear, but {name!r} is {type(module).__name__}. "
                    "Narrow `targets` to linear weights or use score='magnitude'."
                )
            self._slices[name] = slice(offset, offset + module.in_features)
            offset += module.in_features
        # [sum of in_features over layers]; created on the CPU and moved to the activations' device on first use.
        self.sum_sq = torch.zeros(offset, dtype=torch.float32)
        self.num_rows = 0
        self.active = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def names(self) -> list[str]:
        return list(self._modules)

    def attach(self) -> None:
        """Register the forward pre-hooks (idempotent)."""
        if self._handles:
            return
        for index, (name, module) in enumerate(self._modules.items()):
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name, index)))

    def detach(self) -> None:
        """Remove the forward hooks; the statistics are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, name: str, index: int) -> Callable:
        part = self._slices[name]

        def hook(module: nn.Module, args: tuple) -> None:
            if not self.active or not args:
                return
            x = args[0]
            with torch.no_grad():
                if self.sum_sq.device != x.device:
                    self.sum_sq = self.sum_sq.to(x.device)
                # x: [..., in_features] -> per-feature sum of squares over every token of the batch.
                self.sum_sq[part] += x.detach().float().pow(2).reshape(-1, x.shape[-1]).sum(dim=0)
                if index == 0:
                    # Rows (tokens) are counted once per forward, on the first layer, for a mean if wanted.
                    self.num_rows += x.numel() // x.shape[-1]

        return hook

    def norm(self, name: str, sum_sq: Tensor | None = None) -> Tensor:
        """`||X_j||_2` for every input feature `j` of layer `name` (a `[in_features]` fp32 tensor)."""
        source = self.sum_sq if sum_sq is None else sum_sq
        return source[self._slices[name]].sqrt()

    def reset(self) -> None:
        """Forget everything recorded so far (called after each pruning event)."""
        self.sum_sq.zero_()
        self.num_rows = 0

    def state_dict(self) -> dict:
        return {"names": self.names, "sum_sq": self.sum_sq.detach().cpu().clone(), "num_rows": int(self.num_rows)}

    def load_state_dict(self, state: dict) -> None:
        """Restore statistics saved by `state_dict`.

        Raises:
            ValueError: the saved layers or sizes differ from this instance's.
        """
        if list(state["names"]) != self.names or state["sum_sq"].numel() != self.sum_sq.numel():
            raise ValueError(
                "Saved Wanda input norms were gathered for other layers "
                f"({len(state['names'])} layers, {state['sum_sq'].numel()} features) than the current targets "
                f"({len(self.names)} layers, {self.sum_sq.numel()} features). Resume with the same `targets`."
            )
        self.sum_sq = state["sum_sq"].to(device=self.sum_sq.device, dtype=torch.float32).clone()
        self.num_rows = int(state["num_rows"])
