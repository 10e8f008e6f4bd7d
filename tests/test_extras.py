"""The core install (callback, pruning, inits, `litprune fit`) works without the `eval` and `study` extras.

A subprocess runs on a copy of this environment's site-packages without lm-eval and matplotlib (their modules and
their metadata are gone, as after a core-only install) and imports the core modules; what needs an extra then says
which extra to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_INSTALLED = ("lm_eval", "matplotlib", "mpl_toolkits")

CHECK = """
import sys

import litprune.callbacks.sparse_mask
import litprune.cli
import litprune.cli.lightning_cli
import litprune.eval.callback
import litprune.inits
import litprune.modules.causal_lm
import litprune.pruning
from litprune.utils.extras import MissingExtraError

assert not {"lm_eval", "matplotlib"} & set(sys.modules), sorted({"lm_eval", "matplotlib"} & set(sys.modules))
print("core imports")
try:
    import litprune.eval.harness
except MissingExtraError as error:
    print(error)
try:
    from litprune.study.plots import plot_study

    plot_study(None, [], "unused")
except MissingExtraError as error:
    print(error)
"""


def _site_packages_without(names: tuple[str, ...], root: Path) -> Path:
    """A directory of links to this environment's site-packages entries, less `names` (modules and metadata)."""
    site = Path(sysconfig.get_paths()["purelib"])
    root.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith((*names, "__editable__")) or entry.suffix == ".pth":
            continue
        (root / entry.name).symlink_to(entry)
    return root


def test_core_imports_without_the_eval_and_study_extras(tmp_path):
    site = _site_packages_without(NOT_INSTALLED, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src")])}
    result = subprocess.run(
        [sys.executable, "-S", "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "core imports", result.stdout
    assert lines[1].startswith("Evaluating lm-eval tasks needs the 'lm_eval' package"), lines
    assert "pip install 'litprune[eval]'" in lines[1], lines
    assert lines[2].startswith("Drawing the study's plots needs the 'matplotlib' package"), lines
    assert "pip install 'litprune[study]'" in lines[2], lines


def test_core_dependencies_leave_the_extras_out():
    """A callback-only install does not pull lm-eval or matplotlib; `test` pulls every extra the suite needs."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = " ".join(project["dependencies"]).lower()
    assert not any(name in core for name in ("lm-eval", "lm_eval", "matplotlib", "torchmetrics")), core
    extras = project["optional-dependencies"]
    assert any(dep.startswith("lm-eval") for dep in extras["eval"])
    assert "litprune[eval]" in extras["study"] and any(dep.startswith("matplotlib") for dep in extras["study"])
    assert any(dep.startswith("litprune[") and "study" in dep for dep in extras["test"])
