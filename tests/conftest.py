"""Shared fixtures: tiny real Llama models and a prepared embedded corpus, built locally (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from litprune.models.presets import build_llama_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are overhead-bound: one thread is faster and keeps parallel CI jobs from oversubscribing cores.
# Set once for the whole session; test modules do not set it again.
torch.set_num_threads(1)

# The vocabulary of the embedded BPE used by tests (small: trains and tokenizes fast).
TEST_VOCAB = 512

# The training budget of the session's tiny parent (`tiny_parent`): 32 steps of 8 x 32 tokens.
TINY_PARENT_TOKENS = 8192


def make_tiny_llama(seed: int = 0, vocab_size: int = 256, **overrides) -> LlamaForCausalLM:
    """The methods-spec tiny shape (L=4, d=64, H=4, KV=2, hd=16, F=128, vocab 256), fp32, seeded."""
    config = build_llama_config("tiny", overrides=overrides, vocab_size=vocab_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()


@pytest.fixture
def token_windows() -> torch.Tensor:
    """Eight seeded windows of 32 token ids in [0, 256)."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, 256, (8, 32), generator=g)


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """A session cache holding the embedded corpus's BPE (vocab TEST_VOCAB) and its token shards.

    Sets LITPRUNE_CACHE for this process and every subprocess a test starts, so CLI runs reuse it.
    """
    root = tmp_path_factory.mktemp("litprune_cache")
    previous = os.environ.get("LITPRUNE_CACHE")
    os.environ["LITPRUNE_CACHE"] = str(root)
    from litprune.data.prepare import TextSource, prepare_tokens
    from litprune.data.tokenizer import embedded_tokenizer

    prepare_tokens(TextSource(kind="embedded"), embedded_tokenizer(TEST_VOCAB))
    yield root
    if previous is None:
        os.environ.pop("LITPRUNE_CACHE", None)
    else:
        os.environ["LITPRUNE_CACHE"] = previous


@pytest.fixture(autouse=True)
def _session_cache_env(embedded_cache, monkeypatch):
    """Every test starts with LITPRUNE_CACHE at the session cache, whatever an earlier test left in the environment.

    (A test may point it elsewhere with its own `monkeypatch.setenv`; that is undone when the test ends.)
    """
    monkeypatch.setenv("LITPRUNE_CACHE", str(embedded_cache))


def tiny_run_args(run_dir: Path, max_tokens: int = 8192, **extra: str) -> list[str]:
    """Command-line arguments for a seconds-long `litprune fit` of the tiny preset on the embedded corpus."""
    args = [
        "fit",
        "--config",
        str(Path(__file__).parent / "configs" / "tiny_fit.yaml"),
        f"--trainer.default_root_dir={run_dir}",
        f"--model.init_args.max_tokens={max_tokens}",
    ]
    args += [f"--{key}={value}" for key, value in extra.items()]
    return args


def train_tiny_parent(run_dir: Path, max_tokens: int) -> Path:
    """Train the tests' tiny parent with `litprune fit` (tests/configs/tiny_fit.yaml); return its export dir."""
    from litprune.cli.lightning_cli import LitpruneCLI

    LitpruneCLI(args=tiny_run_args(run_dir, max_tokens, **{"trainer.enable_progress_bar": "false"}))
    return run_dir / "export"


@pytest.fixture(scope="module")
def tiny_data(embedded_cache):
    """The data module of the tests' runs (same settings as tests/configs/tiny_fit.yaml), set up."""
    from litprune.data.datamodule import TokenDataModule

    module = TokenDataModule(vocab_size=TEST_VOCAB, seq_len=32, micro_batch_size=8, val_max_windows=16)
    module.setup("fit")
    return module


def _directory_digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def tiny_parent(embedded_cache, tmp_path_factory) -> Path:
    """The export of the tests' tiny parent, trained once per session for TINY_PARENT_TOKENS on the embedded corpus.

    Shared by the pruned-init tests, so it is read-only: a test that needs to change it copies the directory
    first. Teardown fails if any file in it changed.
    """
    export = train_tiny_parent(tmp_path_factory.mktemp("tiny_parent") / "run", TINY_PARENT_TOKENS)
    before = _directory_digest(export)
    yield export
    assert _directory_digest(export) == before, f"a test modified the shared tiny parent at {export}; copy it first."
