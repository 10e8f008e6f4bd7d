"""`litprune prepare`: tokenize a run's text into its prepared token shards, once, before training.

    litprune prepare --config configs/experiment/tiny_scratch.yaml
    litprune prepare --config configs/data/dclm.yaml --num-proc 64

The config is a run's fit config, or a data YAML holding only a `data:` section (any `litprune fit` option is
accepted; only the data section is built). The source is read and tokenized with `--num-proc` worker processes
(`datasets` map `num_proc`) into the directory the run will read (`litprune.data.prepare.prepare_tokens`), which
is then printed with the tokens per split. Preparing is idempotent: when the shards exist, nothing is read again.

A killed prepare leaves no half-written output: the shards are published under their final name only when every
split is complete, and the next `litprune prepare` sweeps what the killed one left and finishes the job (the Hugging
Face download cache is reused; the tokenization starts over).

Runs with `data.init_args.prepared_only: true`, and by default every run of several processes with a hub source,
never tokenize: when the shards are missing they stop at once and name this command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def prepare_main(argv: list[str]) -> None:
    """`litprune prepare`: parse the command line and run `prepare`."""
    parser = argparse.ArgumentParser(
        prog="litprune prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every other argument (--config files, dotted overrides) is read as `litprune fit` reads it.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--num-proc",
        "--num_proc",
        dest="num_proc",
        type=int,
        default=1,
        help="worker processes reading and tokenizing the text (1: this process, whose Rust tokenizer still "
        "uses several threads)",
    )
    options, fit_args = parser.parse_known_args(argv)
    if not any(arg == "--config" or arg.startswith("--config=") for arg in fit_args):
        parser.error("give the run's config: --config <fit config or data YAML>.yaml")
    prepare(fit_args, num_proc=options.num_proc)


def prepare(fit_args: list[str], num_proc: int = 1) -> Path:
    """Prepare the token shards of a run config's data; return their directory.

    Args:
        fit_args: `litprune fit` arguments (`--config` files, dotted overrides); a data-only YAML is accepted.
        num_proc: worker processes for reading and tokenizing.

    Raises:
        ValueError: `num_proc` is not a positive integer; the data module is not a `TokenDataModule`; any check
            of the source (missing files, a text field that is not there, ...).
    """
    from litprune.cli.run_sections import read_run_sections
    from litprune.data.prepare import MANIFEST_NAME, is_prepared

    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"--num-proc {num_proc!r} must be a positive integer (1 tokenizes in this process).")
    data = read_run_sections(fit_args, build_model=False).data
    if not hasattr(data, "prepare") or not hasattr(data, "prepared_dir"):
        raise ValueError(
            f"data is {type(data).__name__}; `litprune prepare` prepares the token shards of a "
            "litprune.data.datamodule.TokenDataModule."
        )
    directory = data.prepared_dir()
    already = is_prepared(directory)
    started = time.perf_counter()
    directory = data.prepare(num_proc=num_proc)
    seconds = time.perf_counter() - started
    manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    state = "already prepared, nothing to do" if already else f"prepared in {seconds:.1f} s, {num_proc} process(es)"
    tokenizer = manifest.get("tokenizer") or {}
    print(f"litprune prepare: {directory} ({state})")
    print(
        f"  tokenizer {tokenizer.get('name_or_path') or 'embedded BPE'} ({tokenizer.get('vocab_size'):,} tokens), "
        f"{manifest.get('dtype')} shards"
    )
    for split, entry in (manifest.get("splits") or {}).items():
        print(
            f"  {split}: {entry['tokens']:,} tokens, {entry['documents']:,} documents, "
            f"{len(entry.get('shards') or [])} shard(s)"
        )
    return directory
