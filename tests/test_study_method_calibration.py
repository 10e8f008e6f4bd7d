"""Per-method calibration in the study YAML: `methods[i].calibration` over the study's `calibration`, reaching the
arms' init arguments and the planned ledger, with seeds repeated per repetition and clear errors for what a method
cannot set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_study_spec import micro_study

from litprune.study.arms import expand_study
from litprune.study.ledger import build_ledger
from litprune.study.spec import StudyError, load_study

REPO = Path(__file__).resolve().parents[1]


def _load(tmp_path: Path, methods: list[dict], **changes):
    study = micro_study(tmp_path / "out", methods=methods, **changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return load_study(path)


def _init(arm) -> dict:
    return arm.config["model"]["init_args"]["init"]["init_args"]


def test_a_method_calibration_overrides_the_studys_for_that_method_only(tmp_path):
    spec = _load(
        tmp_path,
        [
            {"method": "minitron_depth", "ratios": [0.5], "calibration": {"scorer": "task:litprune_next_line"}},
            {"method": "minitron_width", "ratios": [0.5]},
            {"method": "wanda", "ratios": [0.5], "calibration": {"nsamples": 4, "seqlen": 16, "seed": 7}},
        ],
        arms=["S_N", "P_M-R_N"],
    )
    arms = {a.id: a for a in expand_study(spec)}
    study_windows = {"slice": "calib", "nsamples": 8, "seqlen": 32, "seed": 0}
    depth = _init(arms["minitron_depth-0.5.P_M-R_N.N2048"])
    assert depth["scorer"] == "task:litprune_next_line" and depth["calibration"] == study_windows
    assert _init(arms["minitron_width-0.5.P_M-R_N.N2048"])["calibration"] == study_windows
    assert "scorer" not in _init(arms["minitron_width-0.5.P_M-R_N.N2048"])
    own = {"slice": "calib", "nsamples": 4, "seqlen": 16, "seed": 7}
    # The sparse scratch arm draws the method's mask, so it calibrates as the pruned arm does.
    assert _init(arms["wanda-unstructured-0.5.P_M-R_N.N2048"])["calibration"] == own
    assert _init(arms["wanda-unstructured-0.5.S_N.N2048"])["calibration"] == own
    planned = {e.arm: e.calibration_tokens for e in build_ledger(spec, list(arms.values()), measured=False).entries}
    assert planned["wanda-unstructured-0.5.P_M-R_N.N2048"] == 4 * 16
    assert planned["minitron_width-0.5.P_M-R_N.N2048"] == 8 * 32
    assert planned["minitron_depth-0.5.P_M-R_N.N2048"] == 0  # a task-scored depth prune reads no corpus windows


def test_repetitions_replace_a_methods_calibration_seed(tmp_path):
    spec = _load(
        tmp_path, [{"method": "wanda", "ratios": [0.5], "calibration": {"seed": 7}}], arms=["P_M-R_N"], seeds=[0, 1]
    )
    seeds = {a.id: _init(a)["calibration"]["seed"] for a in expand_study(spec) if not a.is_parent}
    assert seeds == {"wanda-unstructured-0.5.P_M-R_N.N2048.s0": 0, "wanda-unstructured-0.5.P_M-R_N.N2048.s1": 1}


def test_what_a_method_calibration_cannot_set_is_refused_with_the_fix(tmp_path):
    with pytest.raises(StudyError) as info:
        _load(
            tmp_path,
            [
                {"method": "minitron_depth", "ratios": [0.5], "calibration": {"source": "wikitext-103", "nsample": 4}},
                {"method": "wanda", "ratios": [0.5], "calibration": {"scorer": "task:winogrande", "seqlen": 0}},
                {
                    "method": "minitron_depth",
                    "ratios": [0.6],
                    "options": {"scorer": "perplexity"},
                    "calibration": {"scorer": "perplexity", "scorer_fewshot": 5},
                },
            ],
        )
    message = str(info.value)
    assert "methods[0] (minitron_depth): calibration.source cannot be set per method" in message
    assert "slices.calibration='calib'" in message and "WikiText-103 or C4 is not read" in message
    assert "unknown key calibration.nsample (did you mean 'nsamples'?)" in message
    assert "methods[1] (wanda): calibration.scorer applies to minitron_depth only" in message
    assert (
        "methods[1] (wanda): calibration: Invalid calibration settings: seqlen=0 must be a positive integer" in message
    )
    assert "methods[2] (minitron_depth): scorer is set both in options and in calibration" in message
    assert "scorer_fewshot and scorer_limit apply to a task scorer" in message


def test_paper_study_calibrates_each_method_as_its_authors(tmp_path):
    from litprune.models.presets import build_llama_config
    from litprune.pruning.shapes import solve_shape

    spec = load_study(REPO / "configs" / "study" / "llama3.1-8b.yaml")
    spec.out_dir = str(tmp_path / "out")
    pruned = {a.group: _init(a) for a in expand_study(spec) if a.label == "P_M-R_N"}
    depth = pruned["minitron_depth-0.5"]
    assert (depth["scorer"], depth["scorer_fewshot"]) == ("task:winogrande", 5)  # the reference's 8B script
    config = build_llama_config("llama3.1-8b", vocab_size=128256)
    assert solve_shape(config, "depth", ratio=depth["ratio"]).shape.as_dict()["num_hidden_layers"] == 16  # of 32
    # Sheared-LLaMA's P_M-R_N continues from its pruning phase's export: it reads no calibration windows.
    windows = {
        group: {k: init["calibration"][k] for k in ("nsamples", "seqlen", "seed")}
        for group, init in pruned.items()
        if "calibration" in init
    }
    assert windows["minitron_width-0.5"] == {"nsamples": 1024, "seqlen": 8192, "seed": 42}
    assert (
        windows["sparsegpt-2of4-0.5"]
        == windows["sparsegpt-unstructured-0.5"]
        == {
            "nsamples": 128,
            "seqlen": 8192,
            "seed": 0,
        }
    )
    assert {init["calibration"]["slice"] for init in pruned.values() if "calibration" in init} == {"calibration"}
