"""Every YAML under configs/ and callbacks/ parses with the litprune CLI (class paths and argument types checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from litprune.cli.lightning_cli import LitpruneCLI

REPO = Path(__file__).resolve().parents[1]
# configs/study/ holds study specs (litprune study), parsed by the study tests; every other YAML is a fit config.
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "study" not in p.relative_to(REPO).parts)
SNIPPETS = sorted((REPO / "callbacks").rglob("*.yaml"))
BASE = REPO / "tests" / "configs" / "tiny_fit.yaml"


def _parses(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        LitpruneCLI(args=["fit", *args, "--print_config"])
    assert info.value.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def test_there_are_configs_for_every_concern():
    names = {p.parent.name for p in CONFIGS}
    assert {"trainer", "model", "data", "experiment"} <= names
    assert (REPO / "configs" / "experiment" / "tiny_scratch.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_parses(path, capsys):
    # Concern files are fragments: compose them over the test base so required sections exist.
    printed = _parses(["--config", str(BASE), "--config", str(path)], capsys)
    assert "model:" in printed


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: str(p.relative_to(REPO)))
def test_callback_snippet_composes_with_a_run(path, capsys):
    printed = _parses(["--config", str(BASE), "--config", str(path)], capsys)
    assert "callbacks:" in printed


def test_configs_compose_later_files_win(capsys):
    printed = _parses(
        ["--config", str(REPO / "configs/model/tiny.yaml"), "--config", str(REPO / "configs/model/small.yaml")], capsys
    )
    assert "preset: small" in printed
