"""An installable distribution: a wheel built from this tree, installed into a fresh virtual environment,
runs ``hydraformer task=report model=gpt3_175b`` from an unrelated folder — conf/ travels as package data."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SHIPPED = shutil.ignore_patterns(".git", "outputs", "multirun", "__pycache__", "*.egg-info", "build", "dist",
                                     ".pytest_cache", ".ruff_cache", ".hypothesis", ".venv", "wandb")


def _run(cmd: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_from_anywhere(tmp_path):
    src, dist, venv, elsewhere = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    shutil.copytree(REPO, src, ignore=NOT_SHIPPED)  # build from a copy: the build leaves nothing in the checkout
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=tmp_path)
    (wheel,) = dist.glob("hydraformer-*.whl")
    # a fresh environment; its dependencies (torch, Hydra, ...) come from this one (the running interpreter's own
    # site-packages, a virtual environment's too: --system-site-packages would reach only the base interpreter's),
    # the project only from the wheel
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python, script = venv / "bin" / "python", venv / "bin" / "hydraformer"
    (venv_site,) = {Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=tmp_path).stdout.strip())}
    ours = dict.fromkeys(p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir())
    (venv_site / "_dependencies_from_the_test_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", wheel], cwd=tmp_path)

    elsewhere.mkdir()
    where = _run([python, "-c", "import builder, components, conf, json; from importlib.resources import files; "
                  "print(json.dumps([builder.__file__, components.__file__, conf.__file__, "
                  "str(files('builder.interp') / 'assets' / 'attention.js')]))"], cwd=elsewhere)
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(venv) and Path(path).is_file(), path

    env = {**os.environ, "HOME": str(tmp_path), "WANDB_MODE": "offline"}
    proc = _run([script, "task=report", "model=gpt3_175b"], cwd=elsewhere, env=env)
    assert "Parameter budget: gpt3_175b" in proc.stdout and "174,6" in proc.stdout
    (run_dir,) = (elsewhere / "outputs").glob("*/*_report")
    budget = json.loads((run_dir / "budget.json").read_text())
    assert budget["total_params"] == 174_604_259_328 and (run_dir / "budget.png").stat().st_size > 0
    assert (run_dir / "hydraformer.log").is_file()
    # the console script refuses a mistyped choice like run.py does: one paragraph, exit status 2
    bad = subprocess.run([script, "model=gpt3_176b"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "did you mean 'gpt3_175b'" in bad.stderr
