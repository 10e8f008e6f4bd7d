"""Progress of the long calibration steps: bars on stderr when forced on, silent on a non-terminal by default,
and one switch (`LITPRUNE_PROGRESS` or a function's `progress` argument) to turn them on or off."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from litprune.data.tokenizer import train_bpe_tokenizer
from litprune.pruning.depth import block_influence, minitron_depth_window
from litprune.pruning.scorers import make_perplexity_scorer
from litprune.pruning.sparse import prune_sparse
from litprune.pruning.structured import prune_structured
from litprune.utils.progress import PROGRESS_ENV, progress_enabled


def windows(count: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (count, 16), generator=torch.Generator().manual_seed(0))


def test_depth_window_search_shows_a_bar_over_the_candidates(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    model = make_tiny_llama()
    minitron_depth_window(model, keep=2, scorer=make_perplexity_scorer(windows()))
    err = capsys.readouterr().err
    # The dense baseline plus the keep + 1 = 3 candidate windows.
    assert "depth window search" in err and "4/4" in err


def test_sparse_sequential_calibration_shows_a_bar_over_layers(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    for method in ("wanda", "sparsegpt"):
        prune_sparse(make_tiny_llama(), method, ratio=0.5, windows=windows())
        err = capsys.readouterr().err
        assert "calibration inputs" in err and "3/3" in err, method  # the windows run up to the first layer
        assert "sequential pruning" in err and "4/4" in err, method  # then layer by layer


def test_other_calibration_passes_and_tokenizer_training_show_progress(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "on")
    model = make_tiny_llama()
    block_influence(model, windows())
    assert "block influence" in capsys.readouterr().err
    prune_structured(model, "minitron_width", ratio=0.5, windows=windows())
    assert "width importance" in capsys.readouterr().err
    prune_structured(model, "minitron_depth", ratio=0.5, windows=windows())
    assert "depth window search" in capsys.readouterr().err
    train_bpe_tokenizer(["def f(x):\n    return x\n"] * 4, vocab_size=300)
    assert "tokenizer" in capsys.readouterr().err


def test_silent_by_default_off_a_terminal_and_switchable(monkeypatch, capsys):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    model = make_tiny_llama()
    minitron_depth_window(model, keep=2, scorer=make_perplexity_scorer(windows()))
    prune_sparse(model, "wanda", ratio=0.5, windows=windows())
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal
    monkeypatch.setenv(PROGRESS_ENV, "0")
    prune_sparse(make_tiny_llama(), "wanda", ratio=0.5, windows=windows())
    assert capsys.readouterr().err == ""
    # An explicit argument wins over the variable.
    prune_sparse(make_tiny_llama(), "wanda", ratio=0.5, windows=windows(), progress=True)
    assert "sequential pruning" in capsys.readouterr().err
    monkeypatch.setenv(PROGRESS_ENV, "1")
    prune_sparse(make_tiny_llama(), "wanda", ratio=0.5, windows=windows(), progress=False)
    assert capsys.readouterr().err == ""


def test_progress_setting_values(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("off", False), ("auto", None), ("", None)):
        monkeypatch.setenv(PROGRESS_ENV, value)
        assert progress_enabled() is expected, value
    monkeypatch.setenv(PROGRESS_ENV, "sometimes")
    with pytest.raises(ValueError, match=r"LITPRUNE_PROGRESS='sometimes'.*1, 0 or auto"):
        progress_enabled()
