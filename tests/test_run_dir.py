"""Run directories: a refused config leaves none behind, and temporaries of killed processes are swept at the next
start (a run, a prepare step) while a live process's are kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run_args

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.data.tokenizer import train_bpe_tokenizer
from litprune.utils.atomic import hidden_sibling, sweep_stale_temporaries, temporary_owner

REPO = Path(__file__).resolve().parents[1]
SPARSE_INIT = "--model.init_args.init=litprune.inits.SparsePrune"


def _left_by_a_killed_process(*targets: tuple[Path, str, bool]) -> list[Path]:
    """Temporaries (`hidden_sibling(target, kind)`, a directory when flagged) made by a process that then died."""
    code = (
        "import os, sys\nfrom pathlib import Path\nfrom litprune.utils.atomic import hidden_sibling\n"
        "for target, kind, is_dir in eval(sys.argv[1]):\n"
        "    path = hidden_sibling(Path(target), kind)\n"
        "    path.parent.mkdir(parents=True, exist_ok=True)\n"
        "    (path.mkdir() if is_dir else path.write_bytes(b'partial'))\n"
        "    print(path)\n"
        "sys.stdout.flush()\n"
        "os._exit(0)  # no clean-up, as a killed process\n"
    )
    spec = repr([(str(target), kind, is_dir) for target, kind, is_dir in targets])
    out = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, check=True).stdout
    return [Path(line) for line in out.splitlines()]


def test_sweep_removes_dead_owners_temporaries_only(tmp_path):
    dead = _left_by_a_killed_process((tmp_path / "last.ckpt", "tmp", False), (tmp_path / "export", "old", True))
    live = hidden_sibling(tmp_path / "last.ckpt")
    live.write_bytes(b"being written")
    foreign = tmp_path / ".prepare-work-abc123"  # no owner in the name: never touched
    foreign.mkdir()
    assert all(temporary_owner(path) for path in dead) and temporary_owner(foreign) is None
    assert sorted(sweep_stale_temporaries(tmp_path)) == sorted(dead)
    assert not any(path.exists() for path in dead)
    assert live.exists() and foreign.exists()


def test_a_run_start_and_a_prepare_step_sweep_killed_temporaries(embedded_cache, tmp_path):
    run_dir = tmp_path / "run"
    tokens_root = embedded_cache / "tokens"
    dead = _left_by_a_killed_process(
        (run_dir / "checkpoints" / "last.ckpt", "tmp", False),
        (run_dir / "export", "tmp", True),
        (tokens_root / "prepare", "work", True),
    )
    live = hidden_sibling(tokens_root / "prepare", "work")
    live.mkdir()
    try:
        LitpruneCLI(args=tiny_run_args(run_dir, 2048, **{"trainer.enable_progress_bar": "false"}))
        assert not any(path.exists() for path in dead)
        assert live.exists()
    finally:
        shutil.rmtree(live, ignore_errors=True)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "previous.ckpt"]


@pytest.fixture
def parent_with_other_tokenizer(tiny_parent, tmp_path) -> Path:
    parent = Path(shutil.copytree(tiny_parent, tmp_path / "parent"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (parent / name).unlink()
    train_bpe_tokenizer(["def f(x):\n    return x\n"] * 4, 258).save_pretrained(parent)
    return parent


def _sparse_init(parent: Path, pattern: str, ratio: float | None) -> list[str]:
    init = "--model.init_args.init.init_args"
    calibration = "{slice: train, nsamples: 4, seqlen: 32, seed: 0}"
    return [
        SPARSE_INIT,
        f"{init}.parent={parent}",
        f"{init}.method=magnitude",
        f"{init}.ratio={'null' if ratio is None else ratio}",
        f"{init}.pattern={pattern}",
        f"{init}.calibration={calibration}",
        "--model.init_args.preset=null",
        "--data.init_args.train_slice=train",
        f"--config={REPO / 'callbacks' / 'sparse_mask_from_init.yaml'}",
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("pattern_2of3", r"2:3"),
        ("targets_match_nothing", r"nothing"),
        ("mask_from_init_on_scratch", r"(?i)mask"),
        ("tokenizer_not_the_parents", r"is not the parent's tokenizer"),
    ],
)
def test_a_refused_config_leaves_no_run_directory(case, message, tiny_parent, tmp_path, request):
    run_dir = tmp_path / "run"
    if case == "pattern_2of3":
        extra = _sparse_init(tiny_parent, "2:3", None)  # the tiny dims (64, 128) are not multiples of 3
    elif case == "targets_match_nothing":
        mask = tmp_path / "mask.yaml"
        mask.write_text(
            "trainer:\n  callbacks:\n    - class_path: litprune.callbacks.sparse_mask.SparseMask\n"
            "      init_args: {targets: nothing, mask_source: zeros}\n"
        )
        extra = [f"--config={mask}"]
    elif case == "mask_from_init_on_scratch":
        extra = [f"--config={REPO / 'callbacks' / 'sparse_mask_from_init.yaml'}"]
    else:
        extra = _sparse_init(request.getfixturevalue("parent_with_other_tokenizer"), "2:4", 0.5)
    args = tiny_run_args(run_dir, 2048, **{"trainer.enable_progress_bar": "false"}) + extra
    with pytest.raises(ValueError, match=message):
        LitpruneCLI(args=args)
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))
