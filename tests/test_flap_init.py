"""FLAP and Wanda-sp as run initialisations: `StructuredPrune(method: flap | wanda_sp)`, their scratch twins
(`ScratchTarget`), the `sheared` target kind, the tiny configs and one short `litprune fit` from a FLAP init.

The pruned arms start from the export of the session's tiny parent (`conftest.tiny_parent`, trained with
`litprune fit`), exactly as the tiny configs do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_args
from transformers import AutoConfig, AutoModelForCausalLM

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.inits import ScratchTarget, StructuredPrune
from litprune.inits.calibration import Calibration
from litprune.pruning.shapes import solve_shape

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = Calibration(nsamples=4, seqlen=32)


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["flap", "wanda_sp"])
def test_pruned_and_scratch_arms_build_the_same_module_tree(method, tiny_parent, tiny_data):
    result = StructuredPrune(str(tiny_parent), method, ratio=0.5, calibration=CALIBRATION).build(None, tiny_data)
    pruned, record = result.model, result.record
    expected = solve_shape(AutoConfig.from_pretrained(tiny_parent), "attention_mlp", ratio=0.5).shape.as_dict()
    assert record["target_shape"] == expected and record["strategy"] == "structured_prune"
    assert {k: getattr(pruned.config, k) for k in expected} == expected
    assert record[method]["kept_groups"] == [expected["num_key_value_heads"]] * expected["num_hidden_layers"]
    assert result.tokens == {"calibration": 4 * 32} and result.masks == {}
    assert record["calibration"]["tokens_used"] == 128 and len(record["calibration"]["sha256"]) == 64
    assert pruned.training
    has_bias = method == "flap"
    assert pruned.config.attention_bias is has_bias and pruned.config.mlp_bias is has_bias

    scratch_init = ScratchTarget(str(tiny_parent), method, ratio=0.5, seed=0)
    scratch = scratch_init.build(None, tiny_data).model
    assert type(scratch) is type(pruned) and _shapes(scratch) == _shapes(pruned)
    assert (scratch.config.attention_bias, scratch.config.mlp_bias) == (has_bias, has_bias)
    biases = [p for name, p in scratch.named_parameters() if name.endswith(".bias")]
    assert len(biases) == (7 * expected["num_hidden_layers"] if has_bias else 0)
    assert all(torch.count_nonzero(b) == 0 for b in biases)  # only the weights differ from the pruned arm
    if has_bias:
        assert any(torch.count_nonzero(p) for n, p in pruned.named_parameters() if n.endswith("o_proj.bias"))
    # The generic kind gives the same shape (the bias flags come from the FLAP method).
    assert ScratchTarget(str(tiny_parent), "attention_mlp", ratio=0.5).plan().shape == scratch_init.plan().shape


def test_adaptive_flap_hands_its_keep_masks_to_the_module(tiny_parent, tiny_data):
    options = {"structure": "adaptive", "output": "masked", "attn_unit_weight": "exact"}
    result = StructuredPrune(str(tiny_parent), "flap", ratio=0.4, calibration=CALIBRATION, flap=options).build(
        None, tiny_data
    )
    parent_config = AutoConfig.from_pretrained(tiny_parent)
    params = dict(result.model.named_parameters())
    assert result.record["target_shape"] is None and "keep_masks" not in result.record
    assert len(result.masks) == 7 * parent_config.num_hidden_layers
    assert sum(int((~m).sum()) for m in result.masks.values()) > 0
    for name, mask in result.masks.items():
        assert mask.shape == params[name].shape and torch.count_nonzero(params[name][~mask]) == 0
    assert result.model.config.intermediate_size == parent_config.intermediate_size  # the parent's shape
    assert result.record["params_after"]["total"] < result.record["params_before"]["total"]
    json.dumps(result.record)  # the record stays plain data


def test_sheared_is_a_scratch_target_kind_but_not_a_one_shot_method(tiny_parent):
    scratch = ScratchTarget(str(tiny_parent), "sheared", ratio=0.5)
    assert scratch.kind == "width"
    assert scratch.plan().shape == ScratchTarget(str(tiny_parent), "width", ratio=0.5).plan().shape
    with pytest.raises(ValueError, match=r"Unknown method 'sheared'"):
        StructuredPrune(str(tiny_parent), "sheared", ratio=0.5)


def test_flap_init_errors_name_the_problem(tiny_parent):
    with pytest.raises(ValueError, match=r"flap option 'strucutre' is unknown\. Did you mean 'structure'"):
        StructuredPrune(str(tiny_parent), "flap", ratio=0.5, flap={"strucutre": "uniform"})
    with pytest.raises(ValueError, match=r"flap=\{'metric': 'IFV'\} only applies to method 'flap'"):
        StructuredPrune(str(tiny_parent), "wanda_sp", ratio=0.5, flap={"metric": "IFV"})
    with pytest.raises(ValueError, match=r"output='sliced' is refused"):
        StructuredPrune(str(tiny_parent), "flap", ratio=0.5, flap={"structure": "adaptive"})
    with pytest.raises(ValueError, match=r"no one architecture to build from scratch"):
        ScratchTarget(str(tiny_parent), "flap", ratio=0.5, flap={"structure": "adaptive", "output": "masked"})
    with pytest.raises(ValueError, match=r"num_attention_heads=3 cannot be reached by removing whole KV groups"):
        StructuredPrune(str(tiny_parent), "flap", target={"num_attention_heads": 3, "intermediate_size": 64})
    with pytest.raises(ValueError, match=r"target keys \['hidden_size'\] do not apply to attention_mlp"):
        ScratchTarget(str(tiny_parent), "wanda_sp", target={"hidden_size": 32})


@pytest.mark.parametrize("name", ["tiny_flap.yaml", "tiny_wanda_sp.yaml"])
def test_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        LitpruneCLI(args=["fit", "--config", str(REPO / "configs" / "experiment" / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    init = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["init"]
    assert init["class_path"] == "litprune.inits.StructuredPrune"
    assert init["init_args"]["method"] == name.removeprefix("tiny_").removesuffix(".yaml")
    assert init["init_args"]["ratio"] == 0.5
    if name == "tiny_flap.yaml":
        assert init["init_args"]["flap"]["metric"] == "WIFV"


def test_flap_init_retrains_and_exports_a_reloadable_llama(tiny_parent, tmp_path):
    init = {
        "class_path": "litprune.inits.StructuredPrune",
        "init_args": {
            "parent": str(tiny_parent),
            "method": "flap",
            "ratio": 0.5,
            "calibration": {"slice": "train", "nsamples": 4, "seqlen": 32},
            "flap": {"metric": "WIFV"},
        },
    }
    run_dir = tmp_path / "flap"
    override = tmp_path / "init.yaml"
    override.write_text(yaml.safe_dump({"model": {"init_args": {"preset": None, "arm": "P_M-R_N", "init": init}}}))
    args = tiny_run_args(run_dir, 512, **{"trainer.enable_progress_bar": "false"})
    LitpruneCLI(args=args + ["--config", str(override)])
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(results["export"])
    assert model.config.attention_bias and model.config.mlp_bias
    assert model.model.layers[0].self_attn.o_proj.bias is not None
    record = results["run"]["init"]
    assert record["method"] == "flap" and record["flap"]["compensate"] == "all"
    assert results["run"]["init_tokens"] == {"calibration": 128}
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
