"""SparseMask checkpoints: bit-identical resume mid-schedule, never-dense saves, compact weights_only state,
and clear errors when settings or weights do not match."""

from __future__ import annotations

import glob
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sparse_mask_models import (
    MLP,
    TinyLlamaLM,
    mlp_loader,
    random_llama_masks,
    single_thread,  # noqa: F401  (fixture)
    token_loader,
    trainer_kwargs,
)

from litprune.callbacks.sparse_mask import SparseMask, pack_mask, unpack_mask

pytestmark = pytest.mark.usefixtures("single_thread")


def gradual(score: str) -> SparseMask:
    # 4 batches per epoch, 12 steps: events at 2, 5, 8, 10; the epoch-1 checkpoint (step 4) sits between
    # events 2 and 5, so the schedule position and, for Wanda, the input norms of steps 2-3 must survive.
    return SparseMask(
        mask_source="dense", schedule="gradual", score=score, sparsity=0.6, start_step=2, end_step=10, frequency=3
    )


def find_state(checkpoint: dict) -> dict:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("SparseMask")]
    return state


@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_resume_mid_schedule_is_bit_identical(tmp_path, score):
    straight = TinyLlamaLM()
    straight_cb = gradual(score)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    pl.Trainer(callbacks=[straight_cb, saver], **trainer_kwargs(max_epochs=3, enable_checkpointing=True)).fit(
        straight, token_loader()
    )
    checkpoint = os.path.join(tmp_path, "epoch=0-step=4.ckpt")
    assert find_state(torch.load(checkpoint, weights_only=True))["last_event_step"] == 2

    resumed = TinyLlamaLM(seed=123)  # different init: everything must come from the checkpoint
    resumed_cb = gradual(score)
    pl.Trainer(callbacks=[resumed_cb], **trainer_kwargs(max_epochs=3)).fit(
        resumed, token_loader(), ckpt_path=checkpoint
    )

    assert straight_cb.last_event_step == resumed_cb.last_event_step == 10
    for name, param in straight.named_parameters():
        assert torch.equal(param, dict(resumed.named_parameters())[name]), name
    for name, mask in straight_cb.masks.items():
        assert torch.equal(mask, resumed_cb.masks[name]), name
        assert (~mask).sum().item() == int(0.6 * mask.numel()) or score == "wanda"


def test_wanda_resume_without_restored_norms_would_differ(tmp_path):
    """Guards the test above: the norms gathered between events really change the next mask."""
    module = TinyLlamaLM()
    callback = gradual("wanda")
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    pl.Trainer(callbacks=[callback, saver], **trainer_kwargs(max_epochs=2, enable_checkpointing=True)).fit(
        module, token_loader()
    )
    path = os.path.join(tmp_path, "epoch=0-step=4.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    find_state(checkpoint)["input_norms"]["sum_sq"].fill_(1.0)
    torch.save(checkpoint, path)
    tampered = TinyLlamaLM()
    tampered_cb = gradual("wanda")
    pl.Trainer(callbacks=[tampered_cb], **trainer_kwargs(max_epochs=2)).fit(tampered, token_loader(), ckpt_path=path)
    assert any(not torch.equal(callback.masks[n], tampered_cb.masks[n]) for n in callback.masks)


class WriteIntoPrunedWeights(pl.Callback):
    """Runs between the optimizer step and ModelCheckpoint and writes into pruned entries (a buggy hook)."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self.written = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        with torch.no_grad():
            for name, mask in self.masks.items():
                params[name][~mask] = 1.0
        self.written += 1


def test_saved_checkpoints_are_never_dense_and_load_weights_only(tmp_path):
    module = TinyLlamaLM()
    masks = random_llama_masks(module, keep=0.3)
    module.pruning_masks = masks
    writer = WriteIntoPrunedWeights(masks)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    pl.Trainer(callbacks=[SparseMask(), writer, saver], **trainer_kwargs(max_steps=4, enable_checkpointing=True)).fit(
        module, token_loader()
    )

    paths = sorted(glob.glob(os.path.join(tmp_path, "*.ckpt")))
    assert len(paths) == 4 and writer.written == 4
    for path in paths:
        checkpoint = torch.load(path, weights_only=True)  # masks are plain uint8 tensors, lists and numbers
        for name, mask in masks.items():
            assert torch.count_nonzero(checkpoint["state_dict"][name][~mask]) == 0, (path, name)
        state = find_state(checkpoint)
        for name, mask in masks.items():
            packed = state["masks"][name]["packed"]
            assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
            assert torch.equal(unpack_mask(packed, state["masks"][name]["shape"]), mask)


def test_pack_roundtrip_matches_numpy_packbits():
    import numpy as np

    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) < 0.4
    packed = pack_mask(mask)
    assert packed.tolist() == np.packbits(mask.numpy().reshape(-1)).tolist()
    assert torch.equal(unpack_mask(packed, [7, 13]), mask)


def mlp_checkpoint(tmp_path, **kwargs) -> str:
    callback = SparseMask(targets=r".*\.weight", mask_source="dense", **kwargs)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    pl.Trainer(callbacks=[callback, saver], **trainer_kwargs(max_epochs=1, enable_checkpointing=True)).fit(
        MLP(), mlp_loader()
    )
    (path,) = glob.glob(os.path.join(tmp_path, "*.ckpt"))
    return path


def test_changed_settings_on_resume_name_what_differs(tmp_path):
    path = mlp_checkpoint(tmp_path, schedule="gradual", sparsity=0.5, end_step=20, frequency=2)
    callback = SparseMask(
        targets=r".*\.weight", mask_source="dense", schedule="gradual", sparsity=0.7, end_step=20, frequency=4
    )
    with pytest.raises(ValueError, match=r"frequency: checkpoint=2, now=4; sparsity: checkpoint=0.5, now=0.7"):
        pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=2)).fit(MLP(), mlp_loader(), ckpt_path=path)


def test_changed_targets_on_resume_name_what_differs(tmp_path):
    path = mlp_checkpoint(tmp_path, schedule="one_shot", sparsity=0.5)
    callback = SparseMask(targets=r"net\.0\.weight", mask_source="dense", schedule="one_shot", sparsity=0.5)
    with pytest.raises(ValueError, match=r"targets: checkpoint='\.\*\\\\\.weight', now='net\\\\\.0\\\\\.weight'"):
        pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=2)).fit(MLP(), mlp_loader(), ckpt_path=path)


@pytest.mark.parametrize("strict", [True, False])
def test_restored_masks_are_verified_against_restored_weights(tmp_path, strict):
    path = mlp_checkpoint(tmp_path, schedule="one_shot", sparsity=0.5)
    checkpoint = torch.load(path, weights_only=False)
    weight = checkpoint["state_dict"]["net.2.weight"]
    assert torch.count_nonzero(weight) == weight.numel() // 2
    weight.fill_(0.25)  # e.g. dense weights pasted into a sparse run's checkpoint
    torch.save(checkpoint, path)

    callback = SparseMask(
        targets=r".*\.weight", mask_source="dense", schedule="one_shot", sparsity=0.5, strict_restore=strict
    )
    module = MLP()
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=2))
    if strict:
        with pytest.raises(ValueError, match=r"disagree with the restored weights: net\.2\.weight \(512 masked"):
            trainer.fit(module, mlp_loader(), ckpt_path=path)
    else:
        with pytest.warns(UserWarning, match="Re-applying the masks"):
            trainer.fit(module, mlp_loader(), ckpt_path=path)
        assert torch.count_nonzero(module.net[2].weight) == module.net[2].weight.numel() // 2
