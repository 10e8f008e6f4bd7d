"""SparseMask logs the sparsity of an optimizer step at the same logged step as Lightning's metrics of that step
(train/loss through `self.log`), in litprune's metrics.jsonl and in Lightning's CSVLogger."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from sparse_mask_models import MLP, mlp_loader, single_thread, trainer_kwargs  # noqa: F401  (fixture)
from torch import nn

from litprune.callbacks.sparse_mask import SparseMask
from litprune.training.metrics_logger import MetricsLogger, read_metrics

pytestmark = pytest.mark.usefixtures("single_thread")


class LoggingMLP(MLP):
    """The SparseMask test MLP, logging its training loss and the sparsity of the weights that computed it."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, y = batch[:, :16], batch[:, 16:]
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        weights = [self.net[i].weight for i in (0, 2, 4)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        self.log("train/zero_fraction", zeros / sum(w.numel() for w in weights))
        return loss


def csv_series(path: str) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    series.setdefault(key, {})[int(row["step"])] = float(value)
    return series


def run(tmp_path, accumulate_grad_batches: int = 1, log_every_n_steps: int = 1) -> tuple[dict, dict]:
    """Fit 6 optimizer steps with a one-shot magnitude event at step 3; return the jsonl and CSV series."""
    callback = SparseMask(
        targets=r"net\.[024]\.weight", mask_source="dense", schedule="one_shot", ratio=0.5, start_step=3
    )
    csv_logger = CSVLogger(tmp_path, name="csv")
    jsonl_logger = MetricsLogger(save_dir=str(tmp_path / "jsonl"))
    trainer = Trainer(
        callbacks=[callback],
        **trainer_kwargs(
            logger=[jsonl_logger, csv_logger],
            max_steps=6,
            accumulate_grad_batches=accumulate_grad_batches,
            log_every_n_steps=log_every_n_steps,
        ),
    )
    trainer.fit(LoggingMLP(), mlp_loader(num_rows=128))
    return read_metrics(jsonl_logger.path), csv_series(f"{csv_logger.log_dir}/metrics.csv")


@pytest.mark.parametrize("accumulate_grad_batches", [1, 2])
def test_sparsity_and_loss_of_a_step_share_the_logged_step(tmp_path, accumulate_grad_batches):
    for series in run(tmp_path, accumulate_grad_batches):
        loss_steps = sorted(series["train/loss"])
        assert loss_steps == list(range(6))  # Lightning labels optimizer step k (1-based) as k - 1
        assert sorted(series["sparsity/global"]) == loss_steps
        assert sorted(series["sparsity/target"]) == loss_steps
        assert sorted(series["sparsity/net.2.weight"]) == loss_steps
        # The event at global_step 3 prunes before the 4th step's forward pass: that step's loss was computed
        # with half the weights at zero, and its sparsity entry says so.
        for step in loss_steps:
            assert series["sparsity/global"][step] == pytest.approx(series["train/zero_fraction"][step]), step
        assert series["sparsity/global"][2] == 0.0
        assert series["sparsity/global"][3] == pytest.approx(0.5)


def test_sparsity_follows_its_own_cadence_on_lightning_steps(tmp_path):
    # Trainer logs every step, the callback every 2 optimizer steps: its entries land on Lightning's labels of
    # optimizer steps 2, 4 and 6.
    callback = SparseMask(
        targets=r"net\.[024]\.weight",
        mask_source="dense",
        schedule="one_shot",
        ratio=0.5,
        start_step=3,
        log_every_n_steps=2,
    )
    jsonl_logger = MetricsLogger(save_dir=str(tmp_path))
    trainer = Trainer(callbacks=[callback], **trainer_kwargs(logger=jsonl_logger, max_steps=6, log_every_n_steps=1))
    trainer.fit(LoggingMLP(), mlp_loader(num_rows=128))
    series = read_metrics(jsonl_logger.path)
    assert sorted(series["sparsity/global"]) == [1, 3, 5]
    for step in (1, 3, 5):
        assert series["sparsity/global"][step] == pytest.approx(series["train/zero_fraction"][step]), step
