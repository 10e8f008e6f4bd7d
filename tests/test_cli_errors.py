"""Errors of the `litprune` command end with litprune's own message, not jsonargparse's dump of the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from litprune.cli import main
from litprune.cli.errors import user_message
from litprune.utils.errors import error_chain

REPO = Path(__file__).resolve().parents[1]
WANDA_2OF4 = str(REPO / "configs" / "experiment" / "tiny_sparse_wanda_2of4.yaml")
INIT = "--model.init_args.init.init_args"


def _last_line_of_error(args: list[str], capsys, monkeypatch) -> str:
    monkeypatch.delenv("LITPRUNE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert not any(line.lstrip().startswith("Given value") for line in lines), "\n".join(lines)
    return lines[-1]


def test_a_value_the_init_refuses_is_the_last_line(capsys, monkeypatch, tmp_path):
    last = _last_line_of_error(
        ["fit", "--config", WANDA_2OF4, f"--trainer.default_root_dir={tmp_path}", f"{INIT}.pattern=2:3"],
        capsys,
        monkeypatch,
    )
    assert last.startswith("litprune: error: SparsePrune: Pattern 2:3 prunes exactly 0.666667"), last


def test_a_misspelt_method_is_the_last_line(capsys, monkeypatch, tmp_path):
    last = _last_line_of_error(
        ["fit", "--config", WANDA_2OF4, f"--trainer.default_root_dir={tmp_path}", f"{INIT}.method=wandaa"],
        capsys,
        monkeypatch,
    )
    assert "Unknown method 'wandaa'. Did you mean 'wanda'?" in last, last


def test_a_value_of_the_wrong_type_names_its_key_on_the_last_line(capsys, monkeypatch, tmp_path):
    last = _last_line_of_error(
        ["fit", "--config", WANDA_2OF4, f"--trainer.default_root_dir={tmp_path}", f"{INIT}.ratio=abc"],
        capsys,
        monkeypatch,
    )
    assert "model.init_args.init.init_args.ratio" in last and "abc" in last, last
    assert "accepted: float, null" in last, last


def test_errors_without_the_parser_keep_their_message():
    try:
        try:
            raise KeyError("inner")
        except KeyError as err:
            raise ValueError("outer message") from err
    except ValueError as error:
        assert user_message(error) == "outer message"
        assert [type(e) for e in error_chain(error)] == [ValueError, KeyError]
