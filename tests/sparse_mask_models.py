"""Small LightningModules and data for the SparseMask tests (a tiny real Llama and a plain MLP)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TinyLlamaLM(pl.LightningModule):
    """Causal-LM training of the conftest tiny Llama with the paper's AdamW settings (betas 0.9/0.95)."""

    def __init__(self, seed: int = 0, lr: float = 1e-2, weight_decay: float = 0.1) -> None:
        super().__init__()
        from conftest import make_tiny_llama  # imported here so the MLP-only DDP script skips transformers

        self.model = make_tiny_llama(seed=seed)
        self.model.train()
        self.lr = lr
        self.weight_decay = weight_decay

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch, labels=batch).loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", self.model(input_ids=batch, labels=batch).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, betas=(0.9, 0.95), weight_decay=self.weight_decay)


class MLP(pl.LightningModule):
    """A non-LLM regression MLP: parameter names are `net.0.weight`, `net.2.weight`, `net.4.weight` (+ biases)."""

    def __init__(self, seed: int = 0, lr: float = 1e-2) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.lr = lr

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, y = batch[:, :16], batch[:, 16:]
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x, y = batch[:, :16], batch[:, 16:]
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.1)


def token_loader(num_windows: int = 8, seq_len: int = 32, batch_size: int = 2, seed: int = 1234) -> DataLoader:
    """Deterministic (unshuffled) windows of token ids < 256."""
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, 256, (num_windows, seq_len), generator=g)
    return DataLoader(list(windows), batch_size=batch_size, shuffle=False)


def mlp_loader(num_rows: int = 64, batch_size: int = 8, seed: int = 0, scale: float = 1.0) -> DataLoader:
    """Rows of 16 inputs (feature j scaled by j + 1, so input norms differ per feature) and 4 targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, 16, generator=g) * torch.arange(1, 17) * scale
    y = torch.randn(num_rows, 4, generator=g)
    return DataLoader(list(torch.cat([x, y], dim=1)), batch_size=batch_size, shuffle=False)


def random_llama_masks(module: TinyLlamaLM, keep: float = 0.5, seed: int = 7) -> dict[str, torch.Tensor]:
    """Random keep-masks for the 7 decoder linears, keyed by the LightningModule's parameter names."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(p.shape, generator=g) < keep
        for name, p in module.named_parameters()
        if name.endswith(".weight") and name.split(".")[-2] in LLAMA_LINEARS
    }


def trainer_kwargs(**overrides) -> dict:
    """Quiet CPU Trainer settings for tests."""
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def single_thread():
    """One intra-op thread: tiny models run several times faster on shared CPU cores than with two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
