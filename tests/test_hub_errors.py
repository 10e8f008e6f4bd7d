"""A hub id the Hugging Face Hub cannot serve ends in one clear message: offline, unreachable, gated, missing.

Offline and unreachable are real (HF_HUB_OFFLINE=1 with an empty cache; HF_ENDPOINT on a closed loopback port).
Gated and missing repositories are huggingface_hub's own exceptions raised from its download function, so
transformers wraps them exactly as it does for a real response.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import transformers
import transformers.utils.hub
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from litprune.cli.lightning_cli import LitpruneCLI
from litprune.data.datamodule import TokenDataModule
from litprune.inits import FromPretrained, SparsePrune
from litprune.inits.parent import read_parent_config
from litprune.models.loading import load_causal_lm
from litprune.utils.hub import HubAccessError

REPO = Path(__file__).resolve().parents[1]
HUB_CONFIG = REPO / "configs" / "experiment" / "prune_hub_llama.yaml"
HUB_ID = "meta-llama/Llama-3.2-1B"

LOADS = {
    "parent config": read_parent_config,
    "model": load_causal_lm,
    "FromPretrained": lambda name: FromPretrained(name).build(None),
    "tokenizer": lambda name: TokenDataModule(tokenizer=name).load_tokenizer(),
}


def _hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "LITPRUNE_CACHE": str(tmp_path / "cache")}
    env.pop("HF_TOKEN", None)
    env.pop("LITPRUNE_DEBUG", None)
    return {**env, **extra}


def test_offline_fit_of_the_hub_config_ends_with_one_clear_message(tmp_path):
    args = [
        sys.executable,
        "-m",
        "litprune",
        "fit",
        "--config",
        str(HUB_CONFIG),
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
    ]
    env = _hub_env(tmp_path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith(f"litprune: error: The tokenizer '{HUB_ID}' is neither a local directory nor in"), lines
    assert "HF_HUB_OFFLINE=1" in lines[-1] and f"hf download {HUB_ID}" in lines[-1]
    assert "Traceback" not in result.stderr


def test_an_unreachable_hub_is_named_with_its_endpoint(tmp_path):
    code = (
        "from litprune.inits.parent import read_parent_config\n"
        "from litprune.utils.hub import HubAccessError\n"
        "try:\n"
        f"    read_parent_config({HUB_ID!r})\n"
        "except HubAccessError as error:\n"
        "    print(error)\n"
    )
    env = _hub_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Cannot reach the Hugging Face Hub at http://127.0.0.1:9 to download the parent"), (
        result.stdout
    )


def _raise_from_the_hub(error_type: type[Exception]):
    def download(repo_id: str, filename: str, *args, **kwargs):
        url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
        response = httpx2.Response(403 if error_type is GatedRepoError else 404, request=httpx2.Request("GET", url))
        raise error_type(f"Client Error for url {url}", response=response)

    return download


@pytest.mark.parametrize("load", LOADS.values(), ids=LOADS.keys())
def test_a_gated_repository_says_how_to_log_in(load, monkeypatch):
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", _raise_from_the_hub(GatedRepoError))
    with pytest.raises(HubAccessError, match=rf"'{HUB_ID}' is a gated repository") as info:
        load(HUB_ID)
    assert "hf auth login" in str(info.value) and "huggingface-cli login" in str(info.value)
    assert "HF_TOKEN" in str(info.value) and f"https://huggingface.co/{HUB_ID}" in str(info.value)


@pytest.mark.parametrize("load", LOADS.values(), ids=LOADS.keys())
def test_a_missing_repository_is_named(load, monkeypatch):
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", _raise_from_the_hub(RepositoryNotFoundError))
    with pytest.raises(HubAccessError, match=r"'meta-llama/Llama-9-1B' was not found on the Hugging Face Hub"):
        load("meta-llama/Llama-9-1B")


def test_a_path_that_is_no_hub_id_is_named():
    with pytest.raises(HubAccessError, match=r"'runs/never_run/export' is neither a local directory nor a valid"):
        read_parent_config("runs/never_run/export")


def _no_hub(*args, **kwargs):
    raise AssertionError("the hub was asked while parsing a config")


def test_the_hub_config_parses_without_touching_the_hub(monkeypatch, capsys):
    for auto in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", _no_hub)
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", _no_hub)
    with pytest.raises(SystemExit) as info:
        LitpruneCLI(args=["fit", "--config", str(HUB_CONFIG), "--print_config"])
    assert info.value.code in (0, None), capsys.readouterr().err
    assert f"parent: {HUB_ID}" in capsys.readouterr().out
    init = SparsePrune(parent=HUB_ID, method="wanda", ratio=0.5, pattern="2:4")
    assert init.parent == HUB_ID
