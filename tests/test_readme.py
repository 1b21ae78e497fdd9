"""Every snippet of README.md works as pasted (issue 15).

* each ```python block runs in a fresh interpreter, in an empty temporary folder (its only inputs: the installed
  project, as after the README's ``pip install -e .``); a block that registers a component is then used the way
  the README says (the YAML block after it as the model's config: built, and its parameter count cross-checked);
* each command of a ```bash block that runs the project (``python run.py``, ``hydraformer``, also behind ``srun``
  or ``torchrun ... run.py``) composes: the check ``python run.py ARGS --cfg job`` does before Hydra prints the
  config (``builder.config.cli.precheck_or_exit``: the command line against the config tree, then Hydra's
  composition with the app's search path and the checks of the composed config). A ``-m`` line is checked as
  ``-m`` (the sweep's own composition) and then job by job, each job's overrides as Hydra's basic sweeper expands
  them, with ``--cfg job`` — Hydra itself refuses ``-m`` together with ``--cfg``. These run in this process
  (composition is a fraction of a second; a process per command would be seconds each, for some 45 commands);
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


def _precheck(args: list[str]) -> None:
    """``python run.py ARGS``'s check before Hydra runs (a mistake: exit 2 with one paragraph on stderr)."""
    from builder.config.cli import precheck_or_exit
    from builder.tasks import TASKS
    from builder.tasks import __file__ as app_file

    precheck_or_exit(TASKS, list(args), app_file=app_file)


def _sweep_jobs(args: list[str]) -> list[list[str]] | None:
    """The jobs ``python run.py -m ARGS`` will run (the master config composed as Hydra's multirun does, expanded
    as its basic sweeper does); None for a sweeper that picks its jobs as it goes (Optuna)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from builder.tasks import __file__ as app_file
    from builder.tasks.compare import plan_jobs

    GlobalHydra.instance().clear()
    try:
        search_path = create_automatic_config_search_path(app_file, None, "pkg://conf")
        hydra = Hydra.create_main_hydra2(task_name="hydraformer", config_search_path=search_path)
        cfg = hydra.compose_config("config", args, with_log_configuration=False, run_mode=RunMode.MULTIRUN)
    finally:
        GlobalHydra.instance().clear()
    jobs = plan_jobs(cfg)
    return None if jobs is None else [job["overrides"] for job in jobs]


@pytest.mark.parametrize("args,line", [(args, line) for _, args, line in COMMANDS],
                         ids=[name for name, _, _ in COMMANDS])
def test_readme_command_composes(args, line, request, capsys):
    name = request.node.callspec.id
    if name in NOT_CHECKED:
        pytest.skip(NOT_CHECKED[name])
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    try:
        _precheck(args + ["--cfg", "job"])
        if overrides != args:  # a sweep: each of its jobs, as `python run.py JOB_OVERRIDES --cfg job`
            jobs = _sweep_jobs(overrides)
            assert jobs, f"a sweep with no jobs: {line}"
            for job in jobs:
                _precheck(job + ["--cfg", "job"])
    except SystemExit as stop:
        pytest.fail(f"README.md {name}: `{line}` does not compose (exit {stop.code}):\n{capsys.readouterr().err}")


def test_a_readme_command_composes_through_the_real_cli(tmp_path):
    """The in-process check above against the command itself, on the README's first command: ``--cfg job`` prints
    the composed job config and runs nothing."""
    name, args, line = COMMANDS[0]
    done = run_cli(*args, "--cfg", "job", cwd=tmp_path, env={"HYDRAFORMER_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, f"{name}: {line}\n{done.stderr[-3000:]}"
    assert "model:" in done.stdout and "trainer:" in done.stdout
    assert not any(tmp_path.iterdir())  # nothing was run: no outputs/, no cache
