"""`EvalCallback` in a real Lightning Trainer: runs at the end of fit and every N tokens, logs, writes JSON."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_tiny_llama
from eval_support import ascii_text, byte_tokenizer, stdlib_documents
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from litprune.eval.callback import EvalCallback

SEQ = 32


class TinyModule(pl.LightningModule):
    """The contract the callback relies on: `.model` (a Hugging Face LM) and `.tokens_seen`."""

    def __init__(self, vocab_size: int, **overrides) -> None:
        super().__init__()
        self.model = make_tiny_llama(vocab_size=vocab_size, **overrides).train()
        self.tokens_seen = 0
        self.training_flags: list[bool] = []

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        self.training_flags.append(self.model.training)
        self.tokens_seen += ids.numel()
        return self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class TinyData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = byte_tokenizer()

    def train_dataloader(self):
        ids = torch.randint(0, 256, (16, SEQ), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(ids), batch_size=2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LITPRUNE_CACHE", str(tmp_path / "cache"))


def _trainer(tmp_path, callback, max_steps):
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_runs_at_fit_end_and_every_n_tokens_logging_and_writing_json(tmp_path):
    docs = tmp_path / "held_out"
    docs.mkdir()
    for name, text in stdlib_documents():
        (docs / name).write_text(text, encoding="utf-8")
    (tmp_path / "ppl.txt").write_text(ascii_text(2000), encoding="utf-8")
    callback = EvalCallback(
        tasks=["litprune_next_line"],
        perplexity=[str(tmp_path / "ppl.txt")],
        every_n_tokens=3 * 2 * SEQ,  # every third step
        limit=4,
        batch_size=8,
        seq_len=64,
        max_windows=2,
        task_documents=str(docs),
        max_examples=20,
        dirpath=str(tmp_path / "evals"),
    )
    module = TinyModule(vocab_size=len(byte_tokenizer()))
    _trainer(tmp_path, callback, max_steps=4).fit(module, datamodule=TinyData())

    # Periodic evaluation after step 3 (192 tokens), then the end of training (step 4, 256 tokens).
    assert [r["tokens_seen"] for r in callback.records] == [192, 256]
    assert sorted(p.name for p in (tmp_path / "evals").iterdir()) == ["eval-tokens192.json", "eval-tokens256.json"]
    final = json.loads((tmp_path / "evals" / "eval-tokens256.json").read_text(encoding="utf-8"))
    assert final["global_step"] == 4 and final["tasks"][0]["num_examples"] == 4
    assert final["perplexity"][0]["num_windows"] == 2 and final["perplexity"][0]["window_length"] == 64
    assert len(final["perplexity"][0]["window_nll"]) == 2 and final["perplexity"][0]["selection"] == "spread"
    assert final["tasks"][0]["per_example"]["doc_ids"] == [0, 1, 2, 3]
    assert (final["settings"]["seq_len_source"], final["settings"]["task_seed"]) == ("explicit", 0)
    assert all(module.training_flags)  # the step after an evaluation still trains in train mode

    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")), encoding="utf-8")))
    logged = [row for row in rows if row.get("eval/litprune_next_line/acc")]
    assert [int(row["step"]) for row in logged] == [3, 4]
    assert float(logged[-1]["eval/tokens_seen"]) == 256.0
    ppl_key = f"eval/ppl/{tmp_path / 'ppl.txt'}:file"
    assert float(logged[-1][ppl_key]) == pytest.approx(final["perplexity"][0]["perplexity"])


def test_state_round_trip_resumes_the_schedule():
    callback = EvalCallback(tasks=[], perplexity=["embedded:val"], every_n_tokens=100)
    callback.next_eval_tokens, callback.last_eval_tokens = 700, 650
    other = EvalCallback(tasks=[], perplexity=["embedded:val"], every_n_tokens=100)
    other.load_state_dict(callback.state_dict())
    assert (other.next_eval_tokens, other.last_eval_tokens) == (700, 650)
    assert other.state_key == callback.state_key


def test_arguments_are_checked_at_construction():
    with pytest.raises(ValueError) as info:
        EvalCallback(tasks=[], perplexity=[], every_n_tokens=0, batch_size=0, task_seed=-1)
    message = str(info.value)
    assert "both empty" in message and "every_n_tokens=0" in message and "batch_size=0" in message
    assert "task_seed=-1 must be a non-negative integer" in message
    with pytest.raises(ValueError, match="never evaluate"):
        EvalCallback(tasks=["offline"], perplexity=[], at_fit_end=False)
    with pytest.raises(ValueError, match="did you mean 'litprune_next_line'"):
        EvalCallback(tasks=["litprune_nextline"], perplexity=[])
    with pytest.raises(ValueError, match="Unknown text source 'wikitxt'"):
        EvalCallback(tasks=[], perplexity=["wikitxt"])


def test_default_window_is_the_datamodules_training_seq_len():
    from types import SimpleNamespace

    model = make_tiny_llama(vocab_size=len(byte_tokenizer()))  # max_position_embeddings=1024
    trained = SimpleNamespace(datamodule=SimpleNamespace(seq_len=48))
    assert EvalCallback(tasks=[], perplexity=["embedded"])._window(trained, model) == (48, "training")
    assert EvalCallback(tasks=[], perplexity=["embedded"], seq_len=64)._window(trained, model) == (64, "explicit")
    no_data = SimpleNamespace(datamodule=None)
    assert EvalCallback(tasks=[], perplexity=["embedded"])._window(no_data, model) == (1024, "model_context")


def test_missing_tokenizer_fails_before_the_first_step(tmp_path):
    class NoTokenizerData(TinyData):
        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = None

    module = TinyModule(vocab_size=258)
    trainer = _trainer(tmp_path, EvalCallback(tasks=["offline"], perplexity=[]), max_steps=2)
    with pytest.raises(ValueError, match="found no tokenizer"):
        trainer.fit(module, datamodule=NoTokenizerData())
    assert module.tokens_seen == 0


def test_training_with_the_callback_matches_training_without_it(tmp_path):
    # Attention dropout makes training consume random numbers; lm-eval reseeds the global generators, so
    # identical weights show that evaluation restored the random states (and the train mode) exactly.
    def train(callbacks, root):
        pl.seed_everything(0)
        module = TinyModule(vocab_size=258, attention_dropout=0.5)
        trainer = pl.Trainer(
            default_root_dir=root,
            max_steps=4,
            accelerator="cpu",
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=TinyData())
        return module.model.state_dict()

    callback = EvalCallback(
        tasks=["litprune_next_span"],
        perplexity=[],
        every_n_tokens=2 * SEQ,
        at_fit_end=False,
        limit=2,
        task_documents=None,
        max_examples=10,
        dirpath=str(tmp_path / "evals"),
    )
    with_eval = train([callback], tmp_path / "a")
    without = train([], tmp_path / "b")
    assert len(callback.records) == 4
    assert all(torch.equal(with_eval[k], without[k]) for k in without)
