"""Sparse checkpoints: HF weights with zeros in place + packed masks + record, round-tripped for real; the one bit
packing (`litprune.models.mask_packing`) pinned to numpy.packbits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from litprune.models.mask_packing import pack_mask, packed_size, unpack_mask
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


# ---------------------------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (7, 13), (16, 16), (2, 3, 11)])
def test_pack_mask_is_numpy_packbits_big_endian(shape):
    g = torch.Generator().manual_seed(sum(shape))
    for keep in (0.0, 0.3, 1.0):
        mask = torch.rand(shape, generator=g) < keep
        packed = pack_mask(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == packed_size(mask.numel()) == (mask.numel() + 7) // 8
        assert packed.numpy().tobytes() == np.packbits(mask.numpy().reshape(-1), bitorder="big").tobytes()
        unpacked = unpack_mask(packed, list(shape))
        assert unpacked.dtype == torch.bool and torch.equal(unpacked, mask)


def test_unpack_mask_rejects_a_wrong_size_or_dtype():
    with pytest.raises(ValueError, match=r"for shape \[3, 5\] needs 2 uint8 bytes, got 3 of dtype torch.uint8"):
        unpack_mask(torch.zeros(3, dtype=torch.uint8), [3, 5])
    with pytest.raises(ValueError, match=r"needs 2 uint8 bytes, got 2 of dtype torch.int32"):
        unpack_mask(torch.zeros(2, dtype=torch.int32), (3, 5))


def _save_masks_numpy(masks: dict[str, torch.Tensor], path) -> None:
    """The mask file as litprune wrote it before `mask_packing` (numpy.packbits directly), kept to pin the format."""
    tensors = {
        name: torch.from_numpy(np.packbits(m.cpu().reshape(-1).numpy(), bitorder="big")) for name, m in masks.items()
    }
    shapes = {name: list(m.shape) for name, m in masks.items()}
    save_file(tensors, str(path), metadata={"format": "litprune-packbits-v1", "shapes": json.dumps(shapes)})


def _header_and_data(path) -> tuple[dict, bytes]:
    """A safetensors file's JSON header (parsed: safetensors orders the metadata entries arbitrarily, even between
    two saves of the same dict) and its data section, byte for byte."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def test_mask_file_is_byte_identical_to_the_numpy_format(pruned, tmp_path):
    _, result = pruned
    g = torch.Generator().manual_seed(3)
    masks = {**result.masks, "odd.weight": torch.rand(5, 7, generator=g) > 0.5, "one": torch.tensor([True])}
    _save_masks_numpy(masks, tmp_path / "numpy.safetensors")
    save_masks(masks, tmp_path / "torch.safetensors")
    header, data = _header_and_data(tmp_path / "torch.safetensors")
    assert (header, data) == _header_and_data(tmp_path / "numpy.safetensors")  # same metadata, offsets and bytes
    assert header["__metadata__"]["format"] == "litprune-packbits-v1"
    loaded = load_masks(tmp_path / "numpy.safetensors")  # and a file in the numpy format reads back exactly
    assert loaded.keys() == masks.keys() and all(torch.equal(loaded[k], masks[k].cpu()) for k in masks)


def test_a_truncated_mask_is_reported_with_the_file(tmp_path):
    save_file(
        {"w": torch.zeros(1, dtype=torch.uint8)},
        str(tmp_path / MASKS_FILE),
        metadata={"format": "litprune-packbits-v1", "shapes": json.dumps({"w": [3, 5]})},
    )
    with pytest.raises(ValueError, match=r"mask 'w' holds 1 torch.uint8 values, shape \[3, 5\] needs 2 uint8 bytes"):
        load_masks(tmp_path)
