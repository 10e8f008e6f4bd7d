"""The one-home rules: atomic writes, "did you mean" hints, the positions check and the study's step arithmetic."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from litprune.data.datamodule import TokenDataModule
from litprune.inits.sparse import CONTROLS
from litprune.models.positions import check_seq_len
from litprune.pruning.sparse import METHODS
from litprune.study.spec import SCRATCH_CONTROLS, StudyError, check_study, study_from_dict, tokens_per_step
from litprune.training.budget import TokenBudget
from litprune.training.checkpoint_io import AtomicCheckpointIO
from litprune.utils.atomic import atomic_dir, atomic_file, atomic_write_json, atomic_write_text
from litprune.utils.suggest import did_you_mean, suggestion


# ------------------------------------------------------------------------------------------------ atomic writes
def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_file_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".file.bin.")
        tmp.write_bytes(b"new")
        assert not target.exists(), "nothing is visible under the final name before the block ends"
    assert target.read_bytes() == b"new"
    assert _names(target.parent) == ["file.bin"]


def test_atomic_file_keeps_the_old_content_when_the_writer_raises(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["file.bin"]


def test_atomic_file_refuses_a_writer_that_wrote_nothing(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="must write the file at `tmp`"):
        with atomic_file(target):
            pass
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["file.bin"]


def test_atomic_write_json_formats_as_asked_and_writes_nothing_for_unserialisable_values(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"b": 1, "a": Path("x")}, default=str, sort_keys=True)
    assert path.read_text(encoding="utf-8") == '{\n  "a": "x",\n  "b": 1\n}\n'
    assert json.loads(atomic_write_text(tmp_path / "b.json", '{"k": 2}').read_text()) == {"k": 2}
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "a.json", {"a": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "x", "b": 1}
    assert _names(tmp_path) == ["a.json", "b.json"]


def test_atomic_dir_replace_swaps_a_whole_directory_or_keeps_the_old_one(tmp_path):
    final = tmp_path / "export"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_dir(final, replace=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("crash")
    assert _names(final) == ["old.txt"] and _names(tmp_path) == ["export"]
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(final) == ["new.txt"] and _names(tmp_path) == ["export"]


def test_atomic_dir_without_replace_keeps_an_existing_directory(tmp_path):
    final = tmp_path / "cache"
    final.mkdir()
    (final / "first.txt").write_text("first")
    with atomic_dir(final) as tmp:
        (tmp / "second.txt").write_text("second")
    assert _names(final) == ["first.txt"] and _names(tmp_path) == ["cache"]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot be pickled")


def test_checkpoint_io_keeps_the_previous_checkpoint_when_saving_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="cannot be pickled"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(2), "bad": _Unpicklable()}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert _names(path.parent) == ["last.ckpt"]


# ----------------------------------------------------------------------------------------------- suggestions
def test_suggestions_have_one_format():
    assert suggestion([]) == ""
    assert suggestion(["a"]) == " Did you mean 'a'?"
    assert suggestion(["a", "b"]) == " Did you mean 'a' or 'b'?"
    assert suggestion(["a", "b", "c"]) == " Did you mean 'a', 'b' or 'c'?"
    assert suggestion(["a", "b"], sentence=False) == "did you mean 'a' or 'b'?"


def test_did_you_mean_finds_close_names_only():
    assert did_you_mean("wnada", METHODS) == " Did you mean 'wanda'?"
    assert did_you_mean("zzzz", METHODS) == ""
    assert did_you_mean("curve_point", ["curve_points", "name"], sentence=False) == "did you mean 'curve_points'?"
    assert did_you_mean("magnitud", ["magnitudes", "magnitude", "wanda"], n=1) == " Did you mean 'magnitude'?"


# ------------------------------------------------------------------------------------------------- positions
def test_seq_len_above_the_positions_is_refused_with_both_values():
    config = LlamaConfig(max_position_embeddings=1024)
    check_seq_len(1024, config)
    check_seq_len(None, config)
    check_seq_len(4096, None)
    with pytest.raises(ValueError) as info:
        check_seq_len(2048, config, whose="the parent's", source="'runs/p/export'", remedy="pick another parent")
    assert str(info.value) == (
        "data.init_args.seq_len=2048 exceeds the parent's max_position_embeddings=1024 ('runs/p/export'). "
        "Lower data.init_args.seq_len to at most 1024, or pick another parent."
    )


# ----------------------------------------------------------------------------------------------------- study
def _study(data: dict, trainer: dict, retrain_tokens: int = 4096) -> dict:
    return {
        "name": "s",
        "out_dir": "runs/s",
        "parents": {"p": {"preset": "tiny", "tokens": 8192}},
        "methods": [{"method": "minitron_depth", "ratios": [0.5]}],
        "retrain_tokens": [retrain_tokens],
        "arms": ["S_N"],
        "data": data,
        "trainer": trainer,
    }


def test_study_steps_come_from_token_budget_and_the_data_module_defaults():
    defaults = inspect.signature(TokenDataModule.__init__).parameters
    spec = study_from_dict(_study({}, {}))
    assert tokens_per_step(spec) == defaults["seq_len"].default * defaults["micro_batch_size"].default
    shape = {"seq_len": 32, "micro_batch_size": 4}
    spec = study_from_dict(_study(shape, {"accumulate_grad_batches": 3, "devices": 2, "num_nodes": 5}))
    budget = TokenBudget(
        max_tokens=32 * 4 * 3 * 10, seq_len=32, micro_batch_size=4, accumulate_grad_batches=3, world_size=10
    )
    assert tokens_per_step(spec) == budget.tokens_per_step
    with pytest.raises(StudyError, match=r"trainer.devices='two'"):
        tokens_per_step(study_from_dict(_study({}, {"devices": "two"})))


def test_study_budget_errors_are_token_budget_errors():
    spec = study_from_dict(_study({"seq_len": 32, "micro_batch_size": 8}, {}, retrain_tokens=1000))
    with pytest.raises(StudyError) as info:
        check_study(spec)
    expected = TokenBudget.budget_problem(1000, 256, "retrain_tokens N=1,000")
    assert expected.split(";")[0] in str(info.value) and "use 768 or 1,024" in str(info.value)


def test_study_sparse_names_are_the_registries():
    assert set(SCRATCH_CONTROLS) == set(CONTROLS) - {"none"}
    study = _study({}, {})
    study["methods"] = [{"method": "wandaa", "ratios": [0.5]}]
    with pytest.raises(StudyError) as info:
        check_study(study_from_dict(study))
    assert "Did you mean 'wanda'" in str(info.value)
    assert all(name in str(info.value) for name in METHODS)
