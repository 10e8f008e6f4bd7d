"""`ShearedPruning` with a real Trainer: `litprune fit` of the session's tiny parent (`conftest.tiny_parent`, a
`save_pretrained` export) writes an ordinary export at the target shape with the pruning record, an interrupted
run resumes to exactly the uninterrupted result, and every misconfiguration stops with a clear error."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import make_tiny_llama, tiny_run_args
from jsonargparse import ArgumentParser
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from litprune.callbacks.sheared import ShearedPruning
from litprune.cli.lightning_cli import LitpruneCLI
from litprune.models.params import count_parameters
from litprune.modules.causal_lm import CausalLM
from litprune.pruning.shapes import achieved_ratios, solve_shape
from litprune.training.metrics_logger import read_metrics

PRUNING_TOKENS = 2048  # 8 steps of 8 x 32 tokens; checkpoints every 2 steps, validation every 4 (tiny_fit.yaml)
CALLBACK = {"class_path": "litprune.callbacks.sheared.ShearedPruning", "init_args": {"ratio": 0.5}}


def _write_override(run_dir: Path, parent: Path, callbacks: list[dict]) -> Path:
    override = {
        "model": {
            "init_args": {
                "preset": None,
                "arm": "P_M",
                "init": {"class_path": "litprune.inits.FromPretrained", "init_args": {"path": str(parent)}},
            }
        },
        "trainer": {"callbacks": callbacks},
    }
    override_path = run_dir.parent / f"{run_dir.name}_sheared.yaml"
    override_path.parent.mkdir(parents=True, exist_ok=True)
    override_path.write_text(yaml.safe_dump(override), encoding="utf-8")
    return override_path


def _fit(
    run_dir: Path, parent: Path, *extra_callbacks: dict, extra_args: tuple[str, ...] = (), **callback_args: object
) -> None:
    callback = {**CALLBACK, "init_args": {**CALLBACK["init_args"], **callback_args}}
    override_path = _write_override(run_dir, parent, [callback, *extra_callbacks])
    args = tiny_run_args(run_dir, PRUNING_TOKENS, **{"trainer.enable_progress_bar": "false"})
    LitpruneCLI(args=args + ["--config", str(override_path), *extra_args])


def test_fit_exports_the_target_shape_with_the_pruning_record(tiny_parent, tmp_path):
    run_dir = tmp_path / "sheared"
    _fit(run_dir, tiny_parent, eval_target_model=True)

    parent_config = AutoConfig.from_pretrained(tiny_parent)
    plan = solve_shape(parent_config, "width", ratio=0.5)
    # The same shape Minitron-width reaches at this ratio: Sheared's S_N twin is Minitron-width's.
    export = run_dir / "export"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert {key: getattr(model.config, key) for key in plan.shape.as_dict()} == plan.shape.as_dict()
    model.eval()
    prompt = torch.tensor([[1, 5, 9, 2]])
    generated = model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=True)
    assert generated.shape == (1, 8)

    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    record = results["run"]["init"]["sheared"]
    assert record == json.loads((export / "litprune.json").read_text(encoding="utf-8"))["run"]["init"]["sheared"]
    assert record["method"] == "sheared" and record["head_unit"] == "kv_group"
    assert record["target_shape"] == plan.shape.as_dict()
    assert record["kept"]["hidden"] == {"per_row": plan.shape.hidden_size, "parent_per_row": 64}
    assert record["kept"]["intermediate"]["per_row"] == plan.shape.intermediate_size
    assert record["kept"]["layer"] == {"per_row": 4, "parent_per_row": 4}
    parent = count_parameters(AutoModelForCausalLM.from_pretrained(tiny_parent))
    after = count_parameters(model)
    assert record["parameters"] == {"before": parent.as_dict(), "after": after.as_dict()}
    assert record["achieved_ratio"] == pytest.approx(achieved_ratios(parent, after))
    assert record["achieved_ratio"] == pytest.approx(plan.achieved)
    assert (record["pruning_tokens"], record["pruning_steps"]) == (PRUNING_TOKENS, 8)
    assert set(record["lambdas"]) == {"layer", "head", "intermediate", "hidden"}
    assert results["run"]["parameters"] == after.as_dict()
    # The last validation during pruning (deterministic masks with the target counts, step 8) and the one after fit
    # (the materialised small model) see the same windows: the small model computes what the masked one did.
    val = read_metrics(run_dir / "metrics.jsonl")["val/loss"]
    assert results["final"]["val/loss"] == pytest.approx(val[7], abs=1e-5)

    metrics = read_metrics(run_dir / "metrics.jsonl")
    for name in ("expected_hidden", "target_hidden", "expected_intermediate", "lambda_1_hidden"):
        assert sorted(metrics[f"sheared/{name}"]) == list(range(8)), name
    assert sorted(metrics["train/sheared"]) == list(range(8))
    assert sorted(metrics["sheared/expected_ratio_non_embedding"]) == list(range(8))
    # The warmed-up target reaches the final size after 20% of the 8 steps.
    assert metrics["sheared/target_hidden"][7] == plan.shape.hidden_size


def test_interrupted_pruning_resumes_exactly(tiny_parent, tmp_path):
    straight = tmp_path / "straight"
    _fit(straight, tiny_parent)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="interrupted at step 5"):
        _fit(interrupted, tiny_parent, {"class_path": "resume_helpers.FailAtStep", "init_args": {"step": 5}})
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert any(key.startswith("training_terms.sheared.log_alpha.") for key in saved["state_dict"])
    assert saved["callbacks"]["ShearedPruning"]["materialised"] is False
    # Without the callback, the mid-pruning checkpoint still loads: the mask parameters are skipped, with a warning.
    with pytest.warns(UserWarning, match="training term"):
        loaded = CausalLM.load_from_checkpoint(interrupted / "checkpoints" / "last.ckpt")
    assert not any(name.startswith("training_terms.") for name in loaded.state_dict())
    model_weights = {k: v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model_weights.items())
    _fit(interrupted, tiny_parent, extra_args=("--ckpt_path=last",))

    # The final (pre-materialisation) checkpoints hold identical weights, mask logits and multipliers ...
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # ... and so do the materialised exports.
    _assert_same_exports(straight, interrupted)
    record_a = json.loads((straight / "results.json").read_text())["run"]["init"]["sheared"]
    record_b = json.loads((interrupted / "results.json").read_text())["run"]["init"]["sheared"]
    assert record_a["lambdas"] == record_b["lambdas"]


def _assert_same_exports(a_dir: Path, b_dir: Path) -> None:
    a = load_file(a_dir / "export" / "model.safetensors")
    b = load_file(b_dir / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_a_killed_pruning_process_resumes_exactly(tiny_parent, tmp_path):
    """The real thing: SIGKILL of a `litprune fit` process mid-pruning, then `--ckpt_path last` in a new process."""
    straight = tmp_path / "straight"
    _fit(straight, tiny_parent)

    run_dir, flag = tmp_path / "killed", tmp_path / "stalled"
    stall = {"class_path": "resume_helpers.StallAtStep", "init_args": {"step": 5, "flag": str(flag)}}
    override = _write_override(run_dir, tiny_parent, [CALLBACK, stall])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    args = tiny_run_args(run_dir, PRUNING_TOKENS, **{"trainer.enable_progress_bar": "false"})
    command = [sys.executable, "-m", "litprune", *args, "--config", str(override)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the stall step"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "export").exists()

    override = _write_override(run_dir, tiny_parent, [CALLBACK])
    resumed = subprocess.run(
        [*command[:-1], str(override), "--ckpt_path=last"], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_exports(straight, run_dir)


# ------------------------------------------------------------------------------------------------ arguments

EVERY_OPTION = """
cb:
  class_path: litprune.callbacks.sheared.ShearedPruning
  init_args:
    ratio: 0.6
    target: {num_key_value_heads: 1}
    convention: total
    modules: [head, intermediate, hidden]
    lagrangian_warmup_fraction: 0.1
    mask_lr: 0.5
    lagrangian_lr: 0.25
    seed: 3
    eval_target_model: true
    hidden_multiple: 8
    mlp_multiple: 16
    term_name: l0
"""


def test_every_option_is_yaml_expressible():
    parser = ArgumentParser()
    parser.add_argument("--cb", type=ShearedPruning)
    callback = parser.instantiate_classes(parser.parse_string(EVERY_OPTION)).cb
    init_args = yaml.safe_load(EVERY_OPTION)["cb"]["init_args"]
    assert set(init_args) == set(inspect.signature(ShearedPruning.__init__).parameters) - {"self"}
    assert callback.settings()["modules"] == ["head", "intermediate", "hidden"]
    assert (callback.ratio, callback.target, callback.convention) == (0.6, {"num_key_value_heads": 1}, "total")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"give a ratio \(e\.g\. ratio: 0\.5\) or a target with both hidden_size and intermediate_size"),
        ({"ratio": 1.5}, r"ratio=1\.5 is out of range"),
        (
            {"ratio": 0.5, "target": {"hidden_size": 32, "intermediate_size": 64}},
            r"ratio=0\.5 and a target with both hidden_size and intermediate_size",
        ),
        ({"ratio": 0.5, "target": {"layers": 2}}, r"target keys \['layers'\] are unknown"),
        ({"ratio": 0.5, "target": {"hidden_size": 0}}, r"target\['hidden_size'\]=0 must be a positive integer"),
        ({"ratio": 0.5, "convention": "params"}, r"convention='params' is not one of"),
        ({"ratio": 0.5, "modules": ["heads"]}, r"modules=\['heads'\] must be a non-empty list"),
        ({"ratio": 0.5, "modules": []}, r"modules=\[\] must be a non-empty list"),
        ({"ratio": 0.5, "lagrangian_warmup_fraction": 1.5}, r"lagrangian_warmup_fraction=1\.5 must be a number in"),
        ({"ratio": 0.5, "mask_lr": 0}, r"mask_lr=0 must be a positive number"),
        ({"ratio": 0.5, "lagrangian_lr": -1.0}, r"lagrangian_lr=-1\.0 must be a positive number"),
        ({"ratio": 0.5, "seed": -1}, r"seed=-1 must be a non-negative integer"),
        ({"ratio": 0.5, "eval_target_model": "yes"}, r"eval_target_model='yes' must be true or false"),
        ({"ratio": 0.5, "hidden_multiple": 0}, r"hidden_multiple=0 must be a positive integer"),
    ],
)
def test_bad_arguments_are_refused_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShearedPruning(**kwargs)


def test_all_problems_are_listed_together():
    with pytest.raises(ValueError, match=r"mask_lr=0 .*; seed=-1"):
        ShearedPruning(ratio=0.5, mask_lr=0, seed=-1)


class _Module(nn.Module):
    """The two things `setup` needs of a LightningModule: the HF model and `add_training_term`."""

    def __init__(self, model: nn.Module, resume_checkpoint: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.resume_checkpoint = resume_checkpoint
        self.training_terms = nn.ModuleDict()

    def add_training_term(self, name: str, term: nn.Module) -> None:
        self.training_terms[name] = term


def _setup(callback: ShearedPruning, model: nn.Module | None = None, strategy: object | None = None, **kwargs):
    trainer = SimpleNamespace(strategy=strategy or object())
    module = _Module(model or make_tiny_llama(), **kwargs)
    callback.setup(trainer, module, "fit")
    return module


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": {"hidden_size": 66, "intermediate_size": 64}}, r"hidden_size=66 is out of range"),
        ({"target": {"hidden_size": 30, "intermediate_size": 64}}, r"not a multiple of num_attention_heads=4"),
        ({"ratio": 0.5, "target": {"num_key_value_heads": 3}}, r"num_key_value_heads=3 is out of range"),
        ({"ratio": 0.5, "modules": ["layer", "head", "intermediate"]}, r"learns no mask for it"),
    ],
)
def test_unreachable_targets_are_refused_at_setup(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _setup(ShearedPruning(**kwargs))


def test_setup_registers_the_term_before_training():
    callback = ShearedPruning(ratio=0.5)
    module = _setup(callback)
    names = {name for name, _ in module.named_parameters()}
    assert {"training_terms.sheared.log_alpha.hidden", "training_terms.sheared.lambda_1.head"} <= names
    groups = module.training_terms["sheared"].param_groups(3e-4)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1.0, 0.0), (1.0, 0.0)]


def test_sharding_strategies_are_refused():
    class FSDPStrategy:
        pass

    with pytest.raises(ValueError, match="strategy FSDPStrategy shards parameters"):
        _setup(ShearedPruning(ratio=0.5), strategy=FSDPStrategy())


def test_resume_from_a_checkpoint_without_sheared_state_is_refused(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"callbacks": {}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="not written by a run with ShearedPruning"):
        _setup(ShearedPruning(ratio=0.5), resume_checkpoint=str(path))
    torch.save({"callbacks": {"ShearedPruning": {"materialised": True}}}, path)
    with pytest.raises(ValueError, match="written after the Sheared-LLaMA masks were materialised"):
        _setup(ShearedPruning(ratio=0.5), resume_checkpoint=str(path))


def test_resume_with_other_settings_names_each_difference():
    saved = ShearedPruning(ratio=0.5, seed=1)
    _setup(saved)
    now = ShearedPruning(ratio=0.6, seed=1)
    with pytest.raises(ValueError, match=r"ratio: checkpoint=0\.5, now=0\.6"):
        now.load_state_dict(saved.state_dict())
    same = ShearedPruning(ratio=0.5, seed=1)
    _setup(same)
    same.load_state_dict(saved.state_dict())
