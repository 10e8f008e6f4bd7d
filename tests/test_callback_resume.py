"""SparseMask checkpoints: bit-identical resume mid-schedule, never-dense saves, compact weights_only state,
clear errors when settings or weights do not match, and checkpoints of older versions still resume."""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
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

from litprune.callbacks.sparse_mask import SparseMask
from litprune.models.mask_packing import unpack_mask
from litprune.pruning.schedules import cubic_ratio
from litprune.training.mask_state import STATE_VERSION, upgrade_state

pytestmark = pytest.mark.usefixtures("single_thread")


def gradual(score: str) -> SparseMask:
    # 4 batches per epoch, 12 steps: events at 2, 5, 8, 10; the epoch-1 checkpoint (step 4) sits between
    # events 2 and 5, so the schedule position and, for Wanda, the input norms of steps 2-3 must survive.
    return SparseMask(
        mask_source="dense", schedule="gradual", score=score, ratio=0.6, start_step=2, end_step=10, frequency=3
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


def mlp_checkpoint(tmp_path, **kwargs) -> str:
    callback = SparseMask(targets=r".*\.weight", mask_source="dense", **kwargs)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    pl.Trainer(callbacks=[callback, saver], **trainer_kwargs(max_epochs=1, enable_checkpointing=True)).fit(
        MLP(), mlp_loader()
    )
    (path,) = glob.glob(os.path.join(tmp_path, "*.ckpt"))
    return path


def test_changed_settings_on_resume_name_what_differs(tmp_path):
    path = mlp_checkpoint(tmp_path, schedule="gradual", ratio=0.5, end_step=20, frequency=2)
    callback = SparseMask(
        targets=r".*\.weight", mask_source="dense", schedule="gradual", ratio=0.7, end_step=20, frequency=4
    )
    with pytest.raises(ValueError, match=r"frequency: checkpoint=2, now=4; ratio: checkpoint=0.5, now=0.7"):
        pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=2)).fit(MLP(), mlp_loader(), ckpt_path=path)


def test_changed_targets_on_resume_name_what_differs(tmp_path):
    path = mlp_checkpoint(tmp_path, schedule="one_shot", ratio=0.5)
    callback = SparseMask(targets=r"net\.0\.weight", mask_source="dense", schedule="one_shot", ratio=0.5)
    with pytest.raises(ValueError, match=r"targets: checkpoint='\.\*\\\\\.weight', now='net\\\\\.0\\\\\.weight'"):
        pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=2)).fit(MLP(), mlp_loader(), ckpt_path=path)


@pytest.mark.parametrize("strict", [True, False])
def test_restored_masks_are_verified_against_restored_weights(tmp_path, strict):
    path = mlp_checkpoint(tmp_path, schedule="one_shot", ratio=0.5)
    checkpoint = torch.load(path, weights_only=False)
    weight = checkpoint["state_dict"]["net.2.weight"]
    assert torch.count_nonzero(weight) == weight.numel() // 2
    weight.fill_(0.25)  # e.g. dense weights pasted into a sparse run's checkpoint
    torch.save(checkpoint, path)

    callback = SparseMask(
        targets=r".*\.weight", mask_source="dense", schedule="one_shot", ratio=0.5, strict_restore=strict
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


# ---------------------------------------------------------------------------------------------- older checkpoints

#: A real Lightning checkpoint written by SparseMask state version 1 (litprune 582da38, before `sparsity` became
#: `ratio`), by tests/fixtures/make_sparse_mask_state_v1.py: the `MLP` on `mlp_loader(num_rows=56)` (7 steps per
#: epoch), gradual Wanda from ratio 0.1 at step 2 to 0.6 at step 12 every 3 steps, saved at the end of epoch 0
#: (step 7): last event 5, Wanda statistics of steps 5 and 6 pending. Never regenerate it with newer code.
V1_CHECKPOINT = Path(__file__).parent / "fixtures" / "sparse_mask_state_v1.ckpt"


def v1_run_now(**overrides) -> SparseMask:
    """The fixture run's callback, in today's vocabulary."""
    kwargs = dict(
        targets=r".*\.weight",
        mask_source="dense",
        schedule="gradual",
        score="wanda",
        ratio=0.6,
        initial_ratio=0.1,
        start_step=2,
        end_step=12,
        frequency=3,
    )
    return SparseMask(**{**kwargs, **overrides})


def v1_masks(state: dict) -> dict[str, torch.Tensor]:
    """The fixture's masks, unpacked with numpy (independently of litprune's unpacking)."""
    return {
        name: torch.from_numpy(
            np.unpackbits(entry["packed"].numpy(), count=math.prod(entry["shape"]), bitorder="big").astype(bool)
        ).reshape(entry["shape"])
        for name, entry in state["masks"].items()
    }


class CaptureRestored(pl.Callback):
    """Listed after SparseMask: what it holds once the checkpoint is restored, before the first resumed step."""

    def __init__(self, sparse_mask: SparseMask) -> None:
        self.sparse_mask = sparse_mask
        self.first_step: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_step is None:
            self.first_step = trainer.global_step  # Lightning restores the loops after on_fit_start

    def on_fit_start(self, trainer, pl_module):
        self.masks = {name: mask.clone() for name, mask in self.sparse_mask.masks.items()}
        self.last_event_step = self.sparse_mask.last_event_step
        self.current_ratio = self.sparse_mask.current_ratio
        self.norms = self.sparse_mask._norms.state_dict()


def resume_v1(tmp_path, checkpoint_path, callback: SparseMask) -> tuple[CaptureRestored, MLP]:
    module = MLP(seed=123)  # a different init: the weights must come from the checkpoint
    probe = CaptureRestored(callback)
    pl.Trainer(callbacks=[callback, probe], **trainer_kwargs(max_epochs=2, default_root_dir=tmp_path)).fit(
        module, mlp_loader(num_rows=56), ckpt_path=checkpoint_path
    )
    return probe, module


def test_version_1_checkpoint_restores_and_resumes(tmp_path):
    checkpoint = torch.load(V1_CHECKPOINT, weights_only=True)
    saved = find_state(checkpoint)
    # The fixture really is version 1, in the old vocabulary.
    assert saved["version"] == 1 and saved["settings"]["sparsity"] == 0.6 and "current_sparsity" in saved
    expected = v1_masks(saved)
    assert all(0 < (~mask).sum() < mask.numel() for mask in expected.values())  # the masks are non-trivial

    callback = v1_run_now()
    probe, module = resume_v1(tmp_path, V1_CHECKPOINT, callback)

    assert probe.first_step == 7 and probe.last_event_step == 5
    assert probe.current_ratio == saved["current_sparsity"] == pytest.approx(cubic_ratio(5, 0.1, 0.6, 2, 12, 3))
    assert probe.masks.keys() == expected.keys()
    for name, mask in expected.items():
        assert torch.equal(probe.masks[name], mask), name
    assert torch.equal(probe.norms["sum_sq"], saved["input_norms"]["sum_sq"])
    assert probe.norms["num_rows"] == saved["input_norms"]["num_rows"] > 0

    # The resumed run goes on with the schedule (events 8, 11 and 12) from the restored masks.
    assert callback.last_event_step == 12 and callback.current_ratio == 0.6
    params = dict(module.named_parameters())
    for name, mask in callback.masks.items():
        assert not torch.any(mask & ~expected[name]), f"{name}: a pruned entry of the checkpoint came back"
        assert torch.all((~mask).sum(1) == int(0.6 * mask.shape[1])), name  # Wanda: the same count in every row
        assert torch.count_nonzero(params[name][~mask]) == 0, name


def test_version_1_settings_are_compared_under_their_new_names(tmp_path):
    with pytest.raises(ValueError, match=r"settings: ratio: checkpoint=0\.6, now=0\.7\. Resume with"):
        resume_v1(tmp_path, V1_CHECKPOINT, v1_run_now(ratio=0.7))


def test_state_without_its_optional_keys_still_resumes(tmp_path):
    checkpoint = torch.load(V1_CHECKPOINT, weights_only=True)
    state = find_state(checkpoint)
    del state["version"], state["current_sparsity"], state["input_norms"]
    del state["settings"]["clip_on"]  # a setting an older version did not record counts as its default
    path = tmp_path / "trimmed.ckpt"
    torch.save(checkpoint, path)

    probe, _ = resume_v1(tmp_path, path, v1_run_now())
    assert probe.last_event_step == 5 and torch.equal(probe.masks["net.2.weight"], v1_masks(state)["net.2.weight"])
    assert probe.current_ratio == pytest.approx(cubic_ratio(5, 0.1, 0.6, 2, 12, 3))  # taken from the schedule
    assert probe.norms["num_rows"] == 0 and not probe.norms["sum_sq"].any()  # statistics start over
    with pytest.raises(ValueError, match=r"clip_on: checkpoint='unmasked', now='masked'"):
        resume_v1(tmp_path, path, v1_run_now(clip_on="masked"))


def test_upgrade_state_translates_version_1_and_fills_defaults():
    v1 = {
        "version": 1,
        "settings": {"sparsity": 0.5, "initial_sparsity": 0.0, "schedule": "one_shot"},
        "masks": {},
        "last_event_step": 3,
        "current_sparsity": 0.5,
    }
    assert upgrade_state(v1) == {
        "version": STATE_VERSION,
        "settings": {"ratio": 0.5, "initial_ratio": 0.0, "schedule": "one_shot"},
        "masks": {},
        "last_event_step": 3,
        "current_ratio": 0.5,
        "input_norms": None,
    }
    assert upgrade_state({"masks": {}}) == {
        "version": STATE_VERSION,
        "settings": {},
        "masks": {},
        "last_event_step": -1,
        "current_ratio": None,
        "input_norms": None,
    }
    # Only version 1 used the old names: a current state is taken as it is.
    assert upgrade_state({"version": STATE_VERSION, "masks": {}, "settings": {"sparsity": 1}})["settings"] == {
        "sparsity": 1
    }
    with pytest.raises(ValueError, match=rf"state version {STATE_VERSION + 1} is not supported.*versions 1 to"):
        upgrade_state({"version": STATE_VERSION + 1, "masks": {}})
    with pytest.raises(ValueError, match=r"holds no masks \(keys: \['last_event_step', 'version'\]\)"):
        upgrade_state({"version": 1, "last_event_step": 2})


def test_current_state_uses_the_ratio_vocabulary(tmp_path):
    path = mlp_checkpoint(tmp_path, schedule="one_shot", ratio=0.5)
    state = find_state(torch.load(path, weights_only=True))
    assert state["version"] == STATE_VERSION == 2
    assert state["current_ratio"] == 0.5 and state["settings"]["ratio"] == 0.5 and "initial_ratio" in state["settings"]
    assert not any("sparsity" in key for key in [*state, *state["settings"]])
