"""The `litprune` command: `fit`, `validate`, `test` (LightningCLI) and litprune's own subcommands.

Map: `lightning_cli` (`LitpruneCLI`: run directory, checks before any work), `run_config` (the saved config and
the resume checks); `litprune eval` lives in `litprune.eval.run`, `litprune study` in `litprune.study.runner`.

- `litprune fit --config configs/experiment/tiny_scratch.yaml`: train one run (resume: add `--ckpt_path last`).
- `litprune eval runs/tiny_scratch/export --tasks offline --perplexity embedded`: lm-eval tasks and perplexity.
- `litprune study --config configs/study/tiny.yaml`: the token-matched study (arms, ledger, report).
- `litprune prepare --config <run config> --num-proc 16`: tokenize the run's data once, before training
  (`litprune.cli.prepare`).
- `litprune prune --config <pruned run's config> --out runs/x/pruned`: prune the parent once, in one process, for
  runs of several processes to start from with `FromPretrained` (`litprune.cli.prune`).
"""

from __future__ import annotations

import os
import sys

from litprune.cli.nested_overrides import install as _install_nested_overrides
from litprune.utils.extras import MissingExtraError
from litprune.utils.hub import HubAccessError

_install_nested_overrides()


def main(args: list[str] | None = None) -> None:
    """Entry point of `litprune` and `python -m litprune`.

    User errors (bad values in a config, missing files, an unreachable hub, an extra not installed) are printed as
    one clear message without a traceback, and that message is the last thing printed
    (`litprune.cli.errors.user_message` digs it out from under jsonargparse's wrapping); set LITPRUNE_DEBUG=1 to see
    the traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        _dispatch(argv, args is None)
    except (ValueError, FileNotFoundError, FileExistsError, HubAccessError, MissingExtraError) as error:
        if os.environ.get("LITPRUNE_DEBUG"):
            raise
        from litprune.cli.errors import user_message

        print("(set LITPRUNE_DEBUG=1 to see the traceback)", file=sys.stderr)
        print(f"litprune: error: {user_message(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def _dispatch(argv: list[str], from_command_line: bool) -> None:
    import warnings

    # Noise from Lightning's own internals on current torch; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
    if argv and argv[0] == "study":
        from litprune.study.runner import study_main

        study_main(argv[1:])
        return
    if argv and argv[0] == "prune":
        from litprune.cli.prune import prune_main

        prune_main(argv[1:])
        return
    if argv and argv[0] == "prepare":
        from litprune.cli.prepare import prepare_main

        prepare_main(argv[1:])
        return
    if argv and argv[0] == "eval":
        from litprune.eval.run import eval_main

        eval_main(argv[1:])
        return
    from litprune.cli.lightning_cli import LitpruneCLI

    # LightningCLI warns when given args while sys.argv also has some; the launcher of DDP workers re-runs
    # the command line, so pass args only when called from Python.
    LitpruneCLI(args=None if from_command_line else argv)
