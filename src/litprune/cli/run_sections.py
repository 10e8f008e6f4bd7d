"""A run's config read exactly as `litprune fit` reads it, of which only the model and the data are built.

`litprune prune` and `litprune prepare` work on the config of the run they serve, so they take the same arguments
as `litprune fit`: `--config` files composed in order (later files win) and dotted overrides. The whole config is
parsed by `LitpruneCLI`'s own parser (unknown keys and bad values fail as they would in fit), then only the
`model` and `data` sections are instantiated: no Trainer, loggers or callbacks are built, so a config written for 8
GPUs is read on a machine without one. The fit-only `--ckpt_path` is dropped.

`command_for` turns the arguments of a `litprune fit` command line into another litprune command on the same
config, for the errors that tell a user what to run first.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

MODEL_CLASS = "litprune.modules.causal_lm.CausalLM"
FIT_SUBCOMMANDS = ("fit", "validate", "test")


@dataclass
class RunSections:
    """The built model and data of a run config, and the resolved config they came from.

    Attributes:
        model: the LightningModule (`CausalLM`: its `init_strategy` is the configured init); None when not built.
        data: the LightningDataModule (`TokenDataModule`), not set up.
        config: the resolved config (plain dict, every section, as `litprune fit` would save it).
    """

    model: Any
    data: Any
    config: dict[str, Any]


def read_run_sections(args: list[str], build_model: bool = True) -> RunSections:
    """Parse run-config arguments as `litprune fit` does; build its data and (when `build_model`) its model.

    Args:
        args: `litprune fit` arguments without the subcommand: `--config` files and dotted overrides.
        build_model: build the model section too. Without it a data-only YAML (just a `data:` section) is accepted:
            the default `CausalLM` is put first, so a model section of the configs still wins.

    Raises:
        SystemExit: the parser's own errors (unknown keys, bad values), printed as `litprune fit` prints them.
        ValueError: a class's own check failed while building the model or the data.
    """
    import jsonargparse
    from lightning.pytorch import LightningDataModule, LightningModule

    from litprune.cli.lightning_cli import LitpruneCLI

    args = strip_fit_only(args)
    if not build_model:
        args = [f"--model={MODEL_CLASS}", *args]

    class _ParseOnly(LitpruneCLI):
        def parse_arguments(self, parser: Any, arguments: Any) -> None:
            self.config = parser.parse_args(arguments)  # without LightningCLI's warning about sys.argv

        def _set_seed(self) -> None:
            """The seeds that matter (calibration windows, controls) are explicit arguments of the inits."""

        def instantiate_classes(self) -> None:
            """Parse only; the sections are built below."""

    cli = _ParseOnly(args=args, run=False)
    config = cli.config.as_dict()
    config.pop("config", None)  # the config files themselves
    keys = ("model", "data") if build_model else ("data",)
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=False)
    parsed = parser.parse_object({key: config.get(key) for key in keys})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    built = instantiate(parsed)
    return RunSections(model=built.get("model") if build_model else None, data=built.get("data"), config=config)


def strip_fit_only(args: list[str]) -> list[str]:
    """`args` without a leading fit/validate/test subcommand and without `--ckpt_path` (a fit-only option)."""
    args = list(args)
    if args and args[0] in FIT_SUBCOMMANDS:
        args = args[1:]
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            out.append(arg)
    return out


def command_for(subcommand: str, fit_args: list[str] | None, *extra: str) -> str:
    """The `litprune <subcommand>` command line on the config of a `litprune fit` command line, plus `extra`.

    Args:
        subcommand: "prune" or "prepare".
        fit_args: the arguments `litprune fit` was given (with or without the subcommand); None when unknown.
        extra: further arguments, e.g. `--out`, `runs/x/pruned`.
    """
    args = strip_fit_only(fit_args) if fit_args else ["--config", "<the run's config files>"]
    return shlex.join(["litprune", subcommand, *args, *extra])
