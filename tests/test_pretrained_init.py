"""`FromPretrained` checks the run's data against the checkpoint before reading its weights, as pruned inits do."""

from __future__ import annotations

import pytest
from conftest import TEST_VOCAB, make_tiny_llama

from litprune.data.tokenizer import train_bpe_tokenizer
from litprune.inits import FromPretrained


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def test_a_tokenizer_larger_than_the_embedding_is_refused_before_the_weights_load(tmp_path, data):
    checkpoint = tmp_path / "vocab256"
    make_tiny_llama(vocab_size=256).save_pretrained(checkpoint)
    (checkpoint / "model.safetensors").unlink()  # the check must not need the weights
    with pytest.raises(ValueError, match=r"tokenizer has 512 tokens but the checkpoint .* vocab_size=256"):
        FromPretrained(str(checkpoint)).build(None, data)


def test_a_tokenizer_other_than_the_recorded_one_is_refused(tmp_path, data):
    checkpoint = tmp_path / "retokenized"
    make_tiny_llama(vocab_size=TEST_VOCAB).save_pretrained(checkpoint)
    train_bpe_tokenizer(["def f(x):\n    return x\n"] * 4, 258).save_pretrained(checkpoint)
    with pytest.raises(ValueError, match=r"run's tokenizer \(512 tokens.*is not the checkpoint's tokenizer \(258"):
        FromPretrained(str(checkpoint)).build(None, data)


def test_the_checkpoints_own_tokenizer_with_a_padded_embedding_loads(tmp_path, data):
    checkpoint = tmp_path / "padded"
    make_tiny_llama(vocab_size=TEST_VOCAB + 8).save_pretrained(checkpoint)
    data.tokenizer.save_pretrained(checkpoint)
    result = FromPretrained(str(checkpoint)).build(None, data)
    assert result.model.config.vocab_size == TEST_VOCAB + 8


def test_windows_longer_than_the_checkpoints_positions_are_refused(tmp_path, data):
    checkpoint = tmp_path / "short"
    make_tiny_llama(vocab_size=TEST_VOCAB, max_position_embeddings=16).save_pretrained(checkpoint)
    with pytest.raises(ValueError, match=r"max_position_embeddings"):
        FromPretrained(str(checkpoint)).build(None, data)
