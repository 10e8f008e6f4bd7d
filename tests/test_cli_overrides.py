"""Command-line overrides of settings two `class_path` levels deep parse like the same settings in YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

import litprune.cli  # noqa: F401  (installs the nested-override fix, as the litprune command does)
from litprune.cli.lightning_cli import LitpruneCLI
from litprune.inits import SparsePrune

REPO = Path(__file__).resolve().parents[1]
WANDA_2OF4 = REPO / "configs" / "experiment" / "tiny_sparse_wanda_2of4.yaml"
RATIO = "--model.init_args.init.init_args.ratio"


def _init(args: list[str]) -> SparsePrune:
    cli = LitpruneCLI(args=["--config", str(WANDA_2OF4), *args], run=False)
    return cli.model.init_strategy


def test_null_ratio_on_the_command_line_reaches_the_init():
    assert _init([]).ratio == 0.5
    init = _init([f"{RATIO}=null"])
    assert init.ratio is None and init.pattern == "2:4"


def test_null_ratio_in_yaml_reaches_the_init(tmp_path):
    override = tmp_path / "ratio_null.yaml"
    override.write_text("model:\n  init_args:\n    init:\n      init_args:\n        ratio: null\n")
    assert _init(["--config", str(override)]).ratio is None


def test_other_values_still_reach_the_init():
    init = _init([f"{RATIO}=0.5", "--model.init_args.init.init_args.method_kwargs={batch_size: 4}"])
    assert init.ratio == 0.5 and init.method_kwargs == {"batch_size": 4}


class Inner:
    def __init__(self, ratio: float | None = 0.5, name: str | None = "x", options: dict | None = None) -> None:
        self.ratio, self.name, self.options = ratio, name, options


class Outer:
    def __init__(self, inner: Inner | None = None) -> None:
        self.inner = inner


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ("ratio=null", "ratio", None),
        ("ratio=0.25", "ratio", 0.25),
        ("name=null", "name", None),  # was the string "None"
        ("name=wanda", "name", "wanda"),
        ("options={a: null, b: [1, 2]}", "options", {"a": None, "b": [1, 2]}),
    ],
)
def test_nested_override_keeps_the_parsed_value(override, field, expected):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=Outer | None)
    spec = json.dumps({"class_path": f"{__name__}.Outer", "init_args": {"inner": {"class_path": f"{__name__}.Inner"}}})
    config = parser.parse_args(["--model", spec, f"--model.init_args.inner.init_args.{override}"])
    assert config.model.init_args.inner.init_args[field] == expected
