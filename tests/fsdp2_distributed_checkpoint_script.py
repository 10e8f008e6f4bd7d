"""A tiny sparse FSDP2 fit on two CPU processes with distributed checkpoints (`save_distributed_checkpoint: true`,
a directory of shards plus `meta.pt`, as configs/trainer/fsdp_8b.yaml writes); run by tests/test_fsdp2.py.

Usage: python tests/fsdp2_distributed_checkpoint_script.py RUN_DIR MAX_TOKENS [CKPT_DIR] [EXTRA_CONFIG]

The CLI builds the trainer and the module (`run=False`); the fit then resumes from CKPT_DIR when given, with the
module told to build from it, as `litprune fit --ckpt_path` does for a checkpoint file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import tiny_run_args

from litprune.cli.lightning_cli import LitpruneCLI

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    run_dir, max_tokens = Path(sys.argv[1]), int(sys.argv[2])
    ckpt = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
    extra = [f"--config={sys.argv[4]}"] if len(sys.argv) > 4 else []
    args = tiny_run_args(run_dir, max_tokens)[1:]  # without the `fit` subcommand (run=False)
    args += [
        f"--config={REPO / 'configs' / 'trainer' / 'fsdp2_cpu.yaml'}",
        "--trainer.strategy.init_args.save_distributed_checkpoint=true",
        "--trainer.enable_progress_bar=false",
        f"--config={REPO / 'callbacks' / 'one_shot_2of4.yaml'}",
        *extra,
    ]
    cli = LitpruneCLI(args=args, run=False)
    if ckpt is not None:
        cli.model.resume_checkpoint = ckpt
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)


if __name__ == "__main__":
    main()
