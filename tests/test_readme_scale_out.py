"""The README's "Scale out" section: every command in its code blocks is one a user can run as written.

`litprune study` lines are parsed by the study command's own parser and their study config loads; the ones that
only plan or write scripts (`--dry-run`, `--launcher slurm|torchrun`) are run, in a fresh working directory, so the
files that later lines name (`litprune prepare` / `litprune prune` configs, `bash .../submit.sh`, torchrun scripts)
must be among what they wrote. Nothing is trained or submitted.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from litprune.study.runner import study_arguments, study_command
from litprune.study.spec import load_study

REPO = Path(__file__).resolve().parents[1]


def scale_out_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Scale out\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert match, 'README.md has no "## Scale out" section'
    return match.group(1)


def code_lines(section: str) -> list[list[str]]:
    """The commands of the section's bash code blocks (also those indented in list items), comments removed."""
    commands = []
    for _indent, body in re.findall(r"^( *)```bash\n(.*?)^\1```", section, flags=re.M | re.S):
        for line in body.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                commands.append(tokens)
    return commands


def test_scale_out_commands_parse_and_name_files_that_exist(tmp_path, monkeypatch):
    commands = code_lines(scale_out_section())
    monkeypatch.chdir(tmp_path)  # the study's relative out_dir resolves here
    seen = {"study": 0, "prepare": 0, "prune": 0, "bash": 0}
    launchers = set()
    for tokens in commands:
        while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # NODE_RANK=0 MASTER_ADDR=node0 bash ...
            tokens = tokens[1:]
        line = shlex.join(tokens)
        if tokens[:2] == ["litprune", "study"]:
            seen["study"] += 1
            arguments = study_arguments(tokens[2:])
            config = REPO / arguments["config"]
            load_study(config)
            launchers.add(arguments["launcher"])
            if arguments["dry_run"] or arguments["launcher"] != "local":
                study_command(**{**arguments, "config": str(config)})
        elif tokens[:2] in (["litprune", "prepare"], ["litprune", "prune"]):
            seen[tokens[1]] += 1
            options = dict(zip(tokens[2::2], tokens[3::2], strict=True))
            config = options.pop("--config")
            assert (REPO / config).is_file() or (tmp_path / config).is_file(), f"{line}: no such config"
            if tokens[1] == "prune":  # where the arm's job looks for its pruned parent (and then skips pruning)
                assert options == {"--out": str(Path(config).parents[1] / "runs" / Path(config).stem / "pruned")}
            else:
                assert set(options) <= {"--num-proc"}, line
        elif tokens[0] == "bash":
            seen["bash"] += 1
            assert len(tokens) == 2 and (tmp_path / tokens[1]).is_file(), f"{line}: the study wrote no such script"
        else:
            pytest.fail(f"README Scale out: a command this test does not know how to check: {line}")
    assert seen == {"study": 3, "prepare": 1, "prune": 1, "bash": 2}
    assert launchers == {"local", "slurm", "torchrun"}


def test_scale_out_says_what_the_data_needs():
    section = scale_out_section()
    for needed in ("HF_TOKEN", "huggingface-cli login", "LITPRUNE_CACHE", "object storage", "submit.sh"):
        assert needed in section, needed
