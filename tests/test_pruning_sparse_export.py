"""Sparse checkpoints: HF weights with zeros in place + packed masks + record, round-tripped for real."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from litprune.models.sparse_checkpoint import MASKS_FILE, RECORD_FILE, load_masks, load_sparse, save_masks, save_sparse
from litprune.pruning.sparse import prune_sparse


@pytest.fixture
def pruned(token_windows):
    model = make_tiny_llama()
    result = prune_sparse(model, "wanda", 0.5, windows=token_windows[:2], progress=False)
    return model, result


def test_round_trip_gives_identical_logits_masks_and_record(pruned, token_windows, tmp_path):
    model, result = pruned
    out = save_sparse(model, result.masks, result.record, tmp_path / "wanda-0.5")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", MASKS_FILE, RECORD_FILE}
    loaded, masks, record = load_sparse(out)
    assert isinstance(loaded, LlamaForCausalLM)
    with torch.no_grad():
        assert torch.equal(loaded(token_windows).logits, model(token_windows).logits)
    assert masks.keys() == result.masks.keys()
    assert all(torch.equal(masks[k], result.masks[k]) for k in masks)
    assert record == json.loads(json.dumps(result.record))
    assert [p.name for p in tmp_path.iterdir()] == ["wanda-0.5"]  # no temporary directory left behind


def test_masks_are_stored_one_bit_per_weight(pruned, tmp_path):
    _, result = pruned
    save_masks(result.masks, tmp_path / "masks.safetensors")
    packed = load_file(tmp_path / "masks.safetensors")
    for name, keep in result.masks.items():
        assert packed[name].dtype == torch.uint8 and packed[name].numel() == (keep.numel() + 7) // 8
    odd = {"w": torch.rand(3, 5) > 0.5}  # 15 bits: the last byte is partly padding
    save_masks(odd, tmp_path / "odd.safetensors")
    assert torch.equal(load_masks(tmp_path / "odd.safetensors")["w"], odd["w"])


def test_bf16_round_trip(tmp_path):
    model = make_tiny_llama().to(torch.bfloat16)
    result = prune_sparse(model, "magnitude", pattern="2:4")
    loaded, masks, _ = load_sparse(save_sparse(model, result.masks, result.record, tmp_path / "m"))
    assert loaded.dtype == torch.bfloat16
    # Parameters compared bit for bit (`.to(bf16)` also cast the rotary buffers, which loading recomputes in fp32).
    saved = dict(model.named_parameters())
    assert all(torch.equal(p, saved[name]) for name, p in loaded.named_parameters())
    assert all(torch.equal(masks[k], result.masks[k]) for k in masks)


def test_load_rejects_weights_that_lost_their_zeros(pruned, tmp_path):
    model, result = pruned
    out = save_sparse(model, result.masks, result.record, tmp_path / "ckpt")
    weights = load_file(out / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    weights[name] = weights[name] + 0.01  # e.g. a dense fine-tune or a LoRA merge
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"'{name}': 4096 masked-out entries are not zero"):
        load_sparse(out)


def test_save_refuses_weights_that_do_not_match_the_masks(pruned, tmp_path):
    model, result = pruned
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    with pytest.raises(ValueError, match=r"(?s)save_sparse: the masks do not match.*q_proj.weight': 2048 masked-out"):
        save_sparse(model, result.masks, result.record, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_existing_directory_needs_overwrite_and_is_replaced_whole(pruned, tmp_path):
    model, result = pruned
    out = tmp_path / "ckpt"
    save_sparse(model, result.masks, result.record, out)
    (out / "stale.txt").write_text("from an older run")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        save_sparse(model, result.masks, result.record, out)
    save_sparse(model, result.masks, {**result.record, "note": "second"}, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / RECORD_FILE).read_text())["note"] == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_unserialisable_record_fails_before_writing(pruned, tmp_path):
    model, result = pruned
    with pytest.raises(ValueError, match="record must be JSON-serialisable"):
        save_sparse(model, result.masks, {"windows": torch.zeros(2)}, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_missing_or_foreign_mask_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=MASKS_FILE):
        load_masks(tmp_path)
    save_file({"w": torch.zeros(2, dtype=torch.uint8)}, tmp_path / MASKS_FILE)
    with pytest.raises(ValueError, match="is not a litprune mask file"):
        load_masks(tmp_path)
    with pytest.raises(FileNotFoundError, match=RECORD_FILE):
        load_sparse(tmp_path)
