"""What litprune needs to know about the Lightning strategy, in one place: is it sharded, over which mesh, and may it
clip gradients by norm.

- The scale path is FSDP2 through Lightning's `ModelParallelStrategy` (`configs/trainer/fsdp_8b.yaml`; on a laptop
  `configs/trainer/fsdp2_cpu.yaml`): parameters become DTensors sharded on dim 0 over the data-parallel mesh, and
  Lightning clips their gradients by norm.
- Lightning's older `FSDPStrategy` (FSDP1) cannot clip by norm, while the paper's recipe (and litprune's default
  `gradient_clip_val: 1.0`) does: such a run is refused before the model is built (`check_gradient_clipping`).
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = (
    "ModelParallelStrategy (FSDP2), as in configs/trainer/fsdp_8b.yaml (configs/trainer/fsdp2_cpu.yaml on CPU)"
)
"""What to use instead of a strategy litprune refuses."""


def is_model_parallel(strategy: Any) -> bool:
    """Whether `strategy` is Lightning's `ModelParallelStrategy` (FSDP2 applied in `configure_model`)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def data_parallel_mesh(strategy: Any) -> Any | None:
    """The 1-D data-parallel `DeviceMesh` to shard over under `ModelParallelStrategy`; None under any other strategy.

    Raises:
        ValueError: the strategy asks for tensor parallelism, which litprune's models do not implement.
    """
    if not is_model_parallel(strategy):
        return None
    mesh = strategy.device_mesh
    tensor_parallel = mesh["tensor_parallel"].size()
    if tensor_parallel != 1:
        raise ValueError(
            f"ModelParallelStrategy tensor_parallel_size={tensor_parallel}: litprune shards with FSDP2 only. Set "
            "tensor_parallel_size: 1 and data_parallel_size to the number of processes (configs/trainer/fsdp_8b.yaml)."
        )
    return mesh["data_parallel"]


def check_gradient_clipping(trainer: Any) -> None:
    """Refuse Lightning's `FSDPStrategy` when the trainer clips gradients by norm (it cannot), naming the replacement.

    Raises:
        ValueError: `FSDPStrategy` with `gradient_clip_val` set and `gradient_clip_algorithm` 'norm' (the default).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    clip = getattr(trainer, "gradient_clip_val", None)
    algorithm = str(getattr(trainer, "gradient_clip_algorithm", None) or "norm").lower()
    if isinstance(trainer.strategy, FSDPStrategy) and clip and algorithm.endswith("norm"):
        raise ValueError(
            f"trainer.strategy=FSDPStrategy cannot clip gradients by norm (trainer.gradient_clip_val={clip}, "
            "algorithm 'norm', the paper's recipe and litprune's default). Use "
            f"{REPLACEMENT}: --config configs/trainer/fsdp_8b.yaml."
        )
