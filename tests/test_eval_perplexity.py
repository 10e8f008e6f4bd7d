"""Perplexity under the paper's protocol, checked against lm-eval's rolling log-likelihood on the same windows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny_llama
from eval_support import ascii_text, byte_tokenizer
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from litprune.eval.perplexity import choose_window_length, perplexity, select_windows, tokenize_once, windowed_nll
from litprune.eval.text_sources import TextSourceError, load_documents, load_text_source, parse_source_spec


@pytest.fixture
def model_and_tokenizer():
    tokenizer = byte_tokenizer()
    return make_tiny_llama(seed=3, vocab_size=len(tokenizer)), tokenizer


def test_matches_lm_eval_rolling_loglikelihood_on_the_same_windows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    window, max_windows = 64, 5
    text = ascii_text(2000)
    ours = perplexity(model, tokenizer, text, window_length=window, max_windows=max_windows, batch_size=2)

    # lm-eval side: each of our windows [w0, w1 .. w63] is one rolling request over w1..w63 with w0 as the
    # prefix token and max_length 63, so lm-eval scores exactly our 63 predictions per window.
    ids = tokenize_once(tokenizer, text)
    assert len(ids) // window > max_windows and ours.selection == "spread"
    assert ours.window_starts[0] == 0 and ours.window_starts[-1] == (len(ids) // window - 1) * window
    total_ll, predicted = 0.0, 0
    for k, start in enumerate(ours.window_starts):
        chunk = ids[start : start + window]
        lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=window - 1, prefix_token_id=chunk[0], batch_size=1)
        string = tokenizer.decode(chunk[1:])
        assert lm.tok_encode(string) == chunk[1:]  # the byte tokenizer round-trips, so the tokens coincide
        (ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (string,), 0)], disable_tqdm=True)
        assert ours.window_nll[k] == pytest.approx(-ll / (window - 1), rel=1e-4)  # window by window
        total_ll += ll
        predicted += len(chunk) - 1
    lm_eval_ppl = math.exp(-total_ll / predicted)

    assert ours.num_tokens == predicted == max_windows * (window - 1) == sum(ours.window_tokens)
    assert ours.perplexity == pytest.approx(lm_eval_ppl, rel=1e-4)


def test_reports_protocol_and_counts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    text = ascii_text(3000)
    result = perplexity(model, tokenizer, text, window_length=100, max_windows=7, source="notes", split="test")
    ids = tokenize_once(tokenizer, text)
    assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]  # a single BOS, at the start
    assert (result.source, result.split, result.window_length) == ("notes", "test", 100)
    assert result.num_windows == 7 and result.num_tokens == 7 * 99 and result.text_tokens == len(ids)
    assert result.perplexity == pytest.approx(math.exp(result.mean_loss))
    assert json.loads(json.dumps(result.to_dict()))["num_windows"] == 7


def test_windows_are_capped_and_the_tail_dropped(model_and_tokenizer):
    model, _ = model_and_tokenizer
    ids = list(range(1, 251))  # 250 tokens: 3 full windows of 80, a 10-token tail
    every = windowed_nll(model, ids, window_length=80, max_windows=100)
    assert (every.num_windows, every.num_tokens, every.starts) == (3, 3 * 79, [0, 80, 160])
    capped = windowed_nll(model, ids, window_length=80, max_windows=2)
    assert (capped.num_windows, capped.num_tokens, capped.starts) == (2, 2 * 79, [0, 160])  # first and last
    first = windowed_nll(model, ids, window_length=80, max_windows=2, selection="first")
    assert first.starts == [0, 80]
    # The same window gives the same loss whichever rule picked it: windows never depend on their neighbours.
    assert first.window_sums[0] == pytest.approx(capped.window_sums[0]) == pytest.approx(every.window_sums[0])
    assert capped.window_sums[1] == pytest.approx(every.window_sums[2])
    with pytest.raises(ValueError, match="selection='middle' must be one of spread, first"):
        windowed_nll(model, ids, window_length=80, max_windows=2, selection="middle")


def test_spread_selection_covers_the_whole_stream_deterministically():
    assert select_windows(1000, 5) == [0, 250, 500, 749, 999]  # np.linspace(0, 999, 5).round()
    assert select_windows(1000, 1) == [0]
    assert select_windows(4, 10) == select_windows(4, 10, "first") == [0, 1, 2, 3]
    assert select_windows(10, 3, "first") == [0, 1, 2]
    for available, cap in ((257, 256), (300, 256), (1000, 999), (7, 6)):
        chosen = select_windows(available, cap)
        assert len(chosen) == cap and chosen == sorted(set(chosen))  # no duplicate after rounding
        assert chosen[0] == 0 and chosen[-1] == available - 1
    late = select_windows(1000, 16)
    assert sum(k >= 500 for k in late) == 8  # half the windows from the second half of the text


def test_per_window_losses_are_recorded_and_average_to_the_mean_loss(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    text = ascii_text(3000)
    result = perplexity(model, tokenizer, text, window_length=100, max_windows=4)
    ids = tokenize_once(tokenizer, text)
    available = len(ids) // 100
    assert result.selection == "spread" and result.num_windows == 4 < available
    assert result.window_starts == [100 * k for k in select_windows(available, 4)]
    assert result.window_tokens == [99] * 4
    assert sum(result.window_nll) / 4 == pytest.approx(result.mean_loss)
    assert ids[result.window_starts[0]] == tokenizer.bos_token_id  # only the first window starts with the BOS
    assert all(ids[start] != tokenizer.bos_token_id for start in result.window_starts[1:])
    entry = json.loads(json.dumps(result.to_dict()))
    assert (len(entry["window_nll"]), len(entry["window_tokens"]), entry["selection"]) == (4, 4, "spread")
    first = perplexity(model, tokenizer, text, window_length=100, max_windows=4, selection="first")
    assert first.window_starts == [0, 100, 200, 300] and first.selection == "first"


def test_equals_mean_cross_entropy_of_each_window_and_restores_training_flag(model_and_tokenizer):
    model, _ = model_and_tokenizer
    model.train()
    ids = torch.randint(0, 256, (3 * 40 + 5,), generator=torch.Generator().manual_seed(0))
    losses = windowed_nll(model, ids, window_length=40, max_windows=10, batch_size=3)
    total, tokens = losses.total, losses.num_tokens
    assert model.training
    model.eval()
    with torch.no_grad():
        # The model's own loss (labels = inputs) is the mean over a window's 39 predictions.
        reference = [model(input_ids=w[None], labels=w[None]).loss for w in ids[:120].view(3, 40)]
    assert total / tokens == pytest.approx(float(torch.stack(reference).mean()), rel=1e-5)
    assert losses.window_means == pytest.approx([float(loss) for loss in reference], rel=1e-5)


def test_text_shorter_than_one_window_is_an_error_naming_the_source(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match=r"'tiny\.txt'.*fewer than one window of 512"):
        perplexity(model, tokenizer, "too short", window_length=512, source="tiny.txt")


def test_window_longer_than_the_model_context_is_rejected(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="max_position_embeddings=1024"):
        perplexity(model, tokenizer, ascii_text(5000), window_length=2048)


def test_window_length_rules(model_and_tokenizer):
    model, _ = model_and_tokenizer  # max_position_embeddings=1024
    assert choose_window_length(model, 256, training_seq_len=128) == (256, "explicit")
    assert choose_window_length(model, None, training_seq_len=128) == (128, "training")
    assert choose_window_length(model, None) == (1024, "model_context")  # the paper's 8192, capped
    with pytest.raises(ValueError, match=r"training run's seq_len=2048 \(read from run/litprune.json\).*pass seq_len"):
        choose_window_length(model, None, training_seq_len=2048, training_source="run/litprune.json")


def test_tokenizer_larger_than_the_embedding_is_rejected():
    tokenizer = byte_tokenizer()  # 258 tokens
    model = make_tiny_llama(vocab_size=256)
    with pytest.raises(ValueError, match="258 tokens but the model's embedding has only 256 rows"):
        perplexity(model, tokenizer, ascii_text(2000), window_length=64)


def test_local_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first document", encoding="utf-8")
    rows = [{"text": "row one", "id": 1}, {"text": "row two", "id": 2}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")

    single = load_text_source(str(tmp_path / "a.txt"))
    assert (single.split, single.text) == ("file", "first document")
    jsonl = load_text_source(str(tmp_path / "b.jsonl"))
    assert jsonl.text == "row one\n\nrow two"
    assert load_text_source(f"{tmp_path / 'b.jsonl'}#id").text == "1\n\n2"
    assert [name for name, _ in load_documents(str(tmp_path))] == ["a.txt", "b.jsonl:1", "b.jsonl:2"]
    with pytest.raises(TextSourceError, match="no field 'body'"):
        load_text_source(f"{tmp_path / 'b.jsonl'}#body")


def test_source_specs_name_their_split_and_unknown_names_get_suggestions(tmp_path):
    assert parse_source_spec("wikitext2:test") == ("wikitext2", "test", None)
    assert parse_source_spec("c4") == ("c4", None, None)
    with pytest.raises(TextSourceError, match="Did you mean 'wikitext2'"):
        parse_source_spec("wikitxt2")
    with pytest.raises(TextSourceError, match="no file or directory"):
        parse_source_spec(str(tmp_path / "missing.txt"))
    with pytest.raises(TextSourceError, match="splits"):
        parse_source_spec("embedded:dev")


def test_unreachable_hub_is_a_clear_error():
    # The test environment is offline (HF_HUB_OFFLINE=1): the error must say what failed and what to do instead.
    with pytest.raises(TextSourceError, match=r"'wikitext2'.*split 'test'.*local file"):
        load_text_source("wikitext2:test")


def test_embedded_held_out_split_is_the_default():
    source = load_text_source("embedded")
    assert source.split == "test" and len(source.documents) > 5
    assert source.label == "embedded:test"
