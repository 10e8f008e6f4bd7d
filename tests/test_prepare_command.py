"""`litprune prepare`: a run's text tokenized once into its prepared shards; runs that may not tokenize
(`prepared_only`, or several processes with a hub source) stop at once with that command when the shards are missing.

The text is a few local JSONL files (a new prepared directory per test), tokenized by the tests' embedded BPE, which
the session cache already holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TEST_VOCAB, tiny_run_args

from litprune.cli import main
from litprune.cli.lightning_cli import LitpruneCLI
from litprune.cli.run_config import config_differences
from litprune.cli.run_sections import read_run_sections
from litprune.data.datamodule import TokenDataModule
from litprune.data.prepare import MANIFEST_NAME, TextSource, is_prepared
from litprune.utils.atomic import hidden_sibling

REPO = Path(__file__).resolve().parents[1]


def _write_corpus(root: Path) -> dict[str, list[str]]:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in (("train", 40), ("val", 8)):
        path = root / f"{split}.jsonl"
        lines = [json.dumps({"text": f"def {split}_{i}(x):\n    return x * {i} + {split!r}\n"}) for i in range(count)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[split] = [str(path)]
    return files


def _data_yaml(tmp_path: Path, **init_args) -> Path:
    """A data-only YAML (just a `data:` section) over local files, as `configs/data/*.yaml` are written."""
    source = {"kind": "files", "files": _write_corpus(tmp_path / "text")}
    data = {
        "class_path": "litprune.data.datamodule.TokenDataModule",
        "init_args": {"source": source, "vocab_size": TEST_VOCAB, "seq_len": 32, "test_slice": None, **init_args},
    }
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    return path


def test_prepare_writes_the_shards_and_a_second_call_is_a_no_op(tmp_path, capsys):
    config = _data_yaml(tmp_path)
    data = read_run_sections(["--config", str(config)], build_model=False).data
    directory = data.prepared_dir()
    assert not is_prepared(directory)

    main(["prepare", "--config", str(config), "--num-proc", "2"])
    printed = capsys.readouterr().out
    manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert f"litprune prepare: {directory} (prepared in" in printed
    for split in ("train", "val"):
        assert f"  {split}: {manifest['splits'][split]['tokens']:,} tokens, " in printed
        assert (directory / f"{split}-00000.bin").is_file()
    written = (directory / MANIFEST_NAME).stat().st_mtime_ns

    main(["prepare", "--config", str(config)])
    assert f"litprune prepare: {directory} (already prepared, nothing to do)" in capsys.readouterr().out
    assert (directory / MANIFEST_NAME).stat().st_mtime_ns == written


def test_a_rerun_after_a_killed_prepare_finishes(tmp_path, capsys):
    config = _data_yaml(tmp_path)
    directory = read_run_sections(["--config", str(config)], build_model=False).data.prepared_dir()
    # What a prepare killed mid-way leaves: its half-written output and work directory under hidden names.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = []
    for kind, parent in (("tmp", directory), ("work", directory.parent / "prepare")):
        name = hidden_sibling(parent, kind).name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
        leftover = directory.parent / name
        leftover.mkdir(parents=True)
        (leftover / "train-00000.bin").write_bytes(b"\0" * 10)
        leftovers.append(leftover)

    main(["prepare", "--config", str(config)])
    assert is_prepared(directory) and "(prepared in" in capsys.readouterr().out
    assert not any(leftover.exists() for leftover in leftovers)


def test_prepared_only_fails_fast_with_the_command(tmp_path):
    config = _data_yaml(tmp_path, prepared_only=True)
    data = read_run_sections(["--config", str(config)], build_model=False).data
    with pytest.raises(ValueError, match="data.init_args.prepared_only is true") as info:
        data.setup("fit")
    assert str(data.prepared_dir()) in str(info.value)
    assert "litprune prepare --config" in str(info.value)

    # `litprune fit` names the exact command, on the run's own config files, before anything is built.
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        LitpruneCLI(args=[*tiny_run_args(run_dir), "--config", str(config)])
    expected = f"litprune prepare --config {REPO / 'tests/configs/tiny_fit.yaml'} --trainer.default_root_dir={run_dir}"
    assert expected in str(info.value) and f"--config {config} --num-proc <processes>" in str(info.value)
    assert not is_prepared(data.prepared_dir()) and not (run_dir / "config.yaml").exists()

    # Once prepared, the same run reads the shards.
    main(["prepare", "--config", str(config)])
    data.setup("fit")
    assert data.store_path == data.prepared_dir()


def test_multi_process_runs_with_a_hub_source_do_not_tokenize(embedded_cache):
    hub = TextSource(kind="hub", hub_path="someone/corpus", hub_splits={"train": "train"})
    data = TokenDataModule(source=hub, vocab_size=TEST_VOCAB)
    assert data.prepared_only_reason(1) is None
    assert "the run has 2 processes and its source is a hub dataset" in data.prepared_only_reason(2)
    assert TokenDataModule(source=hub, vocab_size=TEST_VOCAB, prepared_only=False).prepared_only_reason(8) is None
    assert TokenDataModule(vocab_size=TEST_VOCAB).prepared_only_reason(8) is None  # local text: rank 0 prepares
    # The key of a hub source needs no download, so the check is immediate.
    with pytest.raises(ValueError, match="litprune prepare --config run.yaml --num-proc"):
        data.check_prepared(2, command="litprune prepare --config run.yaml")
    data.check_prepared(1)  # one process may tokenize


def test_prepare_reads_a_data_only_yaml_and_a_fit_config():
    hub = read_run_sections(["--config", str(REPO / "configs/data/dclm.yaml")], build_model=False).data
    assert hub.source.kind == "hub" and hub.prepared_only is True
    fit = read_run_sections(["--config", str(REPO / "configs/experiment/tiny_scratch.yaml")], build_model=False)
    assert fit.model is None and fit.data.source.kind == "embedded"


def test_prepared_only_may_change_on_resume():
    saved = {"data": {"init_args": {"seq_len": 32}}}
    assert config_differences(saved, {"data": {"init_args": {"seq_len": 32, "prepared_only": True}}}) == []


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--num-proc", "2"])
    assert "give the run's config" in capsys.readouterr().err
    with pytest.raises(ValueError, match="prepared_only='yes' must be true, false or null"):
        TokenDataModule(prepared_only="yes")
    with pytest.raises(SystemExit):
        main(["prepare", "--config", str(_data_yaml(tmp_path)), "--num-proc", "0"])
    assert "--num-proc 0 must be a positive integer" in capsys.readouterr().err
