"""Every snippet of README.md works as pasted (issue 15).

* each ```python block runs in a fresh interpreter, in an empty temporary folder (its only inputs: the installed
  project, as after the README's ``pip install -e .``); a block that registers a component is then used the way
  the README says (the YAML block after it as the model's config: built, and its parameter count cross-checked);
* each command of a ```bash block that runs the project (``python run.py``, ``hydraformer``, also behind ``srun``
  or ``torchrun ... run.py``) passes what the command checks before it writes anything, found without running it
  (``builder.config.preflight.check_command``: the command line, Hydra's composition and the preflight's checks
  of the composed config; a ``-m`` line's master config and then every job its basic sweeper will run). These
  run in this process (composition is a fraction of a second; a process per command would be seconds each, for
  some 45 commands);
  ``test_a_readme_command_composes_through_the_real_cli`` runs one of them as the real command.

One test per snippet (or per command), named after its README line: ``pytest tests/test_readme.py -k L157``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, run_cli

from builder.errors import ConfigError

README = REPO / "README.md"

# Commands that cannot be checked here, with the reason. Composition needs no GPU, no SLURM and no second node,
# so none is listed today; one that did would go here as "L<line>": "why".
NOT_CHECKED: dict[str, str] = {}


# --------------------------------------------------------------------------------------------------
# reading README.md
# --------------------------------------------------------------------------------------------------


def blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Fenced blocks as ``(language, line of the opening fence, lines)``."""
    found, lang, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, lines = line[3:].strip(), number, []
            else:
                found.append((lang, start, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"README.md: the block opened on line {start} is never closed"
    return found


def _logical_lines(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """Shell lines with their ``\\``-continuations joined, each with its README line number."""
    out, pending, first = [], "", 0
    for offset, line in enumerate(lines, 1):
        if not pending:
            first = start + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    if pending:
        out.append((first, pending))
    return out


def _run_py_args(words: list[str]) -> list[str] | None:
    """The arguments a shell command gives the project: ``python run.py ARGS``, ``hydraformer ARGS``, behind
    ``srun`` or as ``torchrun [its options] run.py ARGS``; None for any other command."""
    if words and words[0] == "hydraformer":
        return words[1:]
    for i, word in enumerate(words):
        if word == "run.py" or word.endswith("/run.py"):
            return words[i + 1:]
    return None


def commands(text: str) -> list[tuple[str, list[str], str]]:
    """Every project command of the README's bash blocks: ``(id, arguments, the README line)``."""
    found = []
    for lang, start, lines in blocks(text):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        for number, line in _logical_lines(start, lines):
            words = [os.path.expandvars(w) for w in shlex.split(line, comments=True)]  # $HOME, as the shell does
            segments, current = [], []
            for word in words + ["&&"]:
                if word in ("&&", "||", ";", "|"):
                    segments.append(current)
                    current = []
                else:
                    current.append(word)
            runs = [args for args in map(_run_py_args, segments) if args is not None]
            for k, args in enumerate(runs):
                found.append((f"L{number}" + (f"-{k + 1}" if len(runs) > 1 else ""), args, line.strip()))
    return found


def python_snippets(text: str) -> list[tuple[str, str, str]]:
    """Every ```python block: ``(id, code, the YAML block right after it or "")``."""
    found = []
    all_blocks = blocks(text)
    for i, (lang, start, lines) in enumerate(all_blocks):
        if lang == "python":
            after = all_blocks[i + 1] if i + 1 < len(all_blocks) else ("", 0, [])
            yaml_text = "\n".join(after[2]) if after[0] == "yaml" else ""
            found.append((f"L{start}", "\n".join(lines) + "\n", yaml_text))
    return found


TEXT = README.read_text(encoding="utf-8")
COMMANDS = commands(TEXT)
SNIPPETS = python_snippets(TEXT)


def test_the_readme_has_the_snippets_these_tests_check():
    """A guard against a parser that finds nothing: the README shows many commands and two Python blocks."""
    assert len(COMMANDS) >= 20 and len(SNIPPETS) >= 2, (len(COMMANDS), len(SNIPPETS))
    assert any("-m" in args for _, args, _ in COMMANDS)
    assert set(NOT_CHECKED) <= {name for name, _, _ in COMMANDS}, "an allow-list entry names no README command"


# --------------------------------------------------------------------------------------------------
# python blocks: run as pasted
# --------------------------------------------------------------------------------------------------

# After a block that registers a component: build a small model with it, configured by the YAML block the README
# shows beside it, as `python run.py task=report model/<kind>=<name>` would (the report's count cross-check included).
USE_COMPONENT = """
import builder
import yaml
from omegaconf import OmegaConf
_model = builder.compose(["model.n_layers=2"]).model
OmegaConf.update(_model, {kind!r}, yaml.safe_load({yaml_text!r}), merge=False)
_budget = builder.parameter_budget(_model)
assert _budget["check"]["agree"] is True, _budget["check"]
_x = builder.build_model(_model)(__import__("torch").zeros(1, 8, dtype=__import__("torch").long))
print("component used:", {kind!r}, {name!r}, _budget["total_params"], tuple(_x.shape))
"""


@pytest.mark.parametrize("code,yaml_text", [(code, yaml_text) for _, code, yaml_text in SNIPPETS],
                         ids=[f"{name}-python" for name, _, _ in SNIPPETS])
def test_python_snippet_runs_as_pasted(code, yaml_text, tmp_path):
    script = code
    registers = re.search(r'@register\("(\w+)", "(\w+)"\)', code)
    if registers and yaml_text:
        kind, name = registers.groups()
        script += textwrap.dedent(USE_COMPONENT.format(kind=kind, name=name, yaml_text=yaml_text))
    (tmp_path / "snippet.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRAFORMER_CACHE": str(tmp_path / "cache"),
           "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"the snippet failed:\n{script}\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    if registers and yaml_text:
        assert "component used:" in done.stdout


# --------------------------------------------------------------------------------------------------
# bash blocks: every project command composes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,line", [(args, line) for _, args, line in COMMANDS],
                         ids=[name for name, _, _ in COMMANDS])
def test_readme_command_composes(args, line, request):
    name = request.node.callspec.id
    if name in NOT_CHECKED:
        pytest.skip(NOT_CHECKED[name])
    from builder.config.preflight import check_command
    from builder.tasks import TASKS

    try:
        checked = check_command(list(args), TASKS)
    except ConfigError as err:
        pytest.fail(f"README.md {name}: `{line}` is refused: {err}")
    assert checked >= 1, f"a sweep with no jobs: {line}"


def test_a_readme_command_composes_through_the_real_cli(tmp_path):
    """The in-process check above against the command itself, on the README's first command: ``--cfg job`` prints
    the composed job config and runs nothing."""
    name, args, line = COMMANDS[0]
    done = run_cli(*args, "--cfg", "job", cwd=tmp_path, env={"HYDRAFORMER_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, f"{name}: {line}\n{done.stderr[-3000:]}"
    assert "model:" in done.stdout and "trainer:" in done.stdout
    assert not any(tmp_path.iterdir())  # nothing was run: no outputs/, no cache
