"""Another library's private API is read in one adapter module per need, each saying why.

Hydra: builder/config/hydra_adapter.py (the command line as ``hydra.main`` parses it, the jobs the basic sweeper
runs); these tests fail loudly, naming it, when a Hydra release changes either. Lightning: builder/training/launch.py
(the script launcher of a multirun job's processes) and builder/training/progress_bar.py (the step-counting bar)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
from pathlib import Path

import pytest

from builder.config import hydra_adapter

ADAPTER = "builder/config/hydra_adapter.py relies on Hydra's private API, which changed: "
BUILDER = Path(__file__).resolve().parents[1] / "builder"


def test_only_the_adapter_imports_hydras_private_api():
    found = subprocess.run(["grep", "-rln", "hydra._internal", str(BUILDER), "--include=*.py"], capture_output=True,
                           text=True).stdout.split()
    assert [Path(p).relative_to(BUILDER.parent).as_posix() for p in found] == ["builder/config/hydra_adapter.py"]


def test_the_command_line_is_read_as_hydra_main_reads_it():
    ns = hydra_adapter.parse_command_line(["-m", "-cd", "/x", "--config-name", "other", "task=report", "seed=1,2"])
    try:
        assert (ns.multirun, ns.config_dir, ns.config_name, ns.overrides) == (True, "/x", "other",
                                                                              ["task=report", "seed=1,2"])
        ns = hydra_adapter.parse_command_line(["--cfg", "job", "--experimental-rerun", "f.pickle"])
        assert (ns.cfg, ns.experimental_rerun, ns.config_path, ns.help) == ("job", "f.pickle", None, False)
    except (AttributeError, AssertionError) as err:
        pytest.fail(ADAPTER + f"hydra._internal.utils.get_args_parser ({err})")


@pytest.mark.parametrize("args,ordered", [
    (["task=report", "-m", "seed=1,2"], ["-m", "task=report", "seed=1,2"]),
    (["a=1", "--cfg", "job", "b=2", "--info", "c=3"], ["--cfg", "job", "a=1", "b=2", "c=3", "--info"]),
    (["a=1", "--info", "defaults", "-cn", "x", "--config-dir=/y", "b=2"],
     ["--info", "defaults", "-cn", "x", "--config-dir=/y", "a=1", "b=2"]),
    (["-x", "a=1"], ["-x", "a=1"]),  # no flag of Hydra's: left where it is, for argparse to refuse
])
def test_flags_after_overrides_mean_what_they_mean_before_them(args, ordered):
    assert hydra_adapter.flags_first(args) == ordered
    if "-x" not in args:
        assert hydra_adapter.parse_command_line(ordered).overrides == [a for a in args if "=" in a and "-" not in a]


def test_a_flag_after_an_override_runs_as_before_it(tmp_path, cli):
    """`run.py task=report -m model.n_layers=1,2`: two jobs, as with -m first (Hydra's argparse alone refuses it)."""
    proc = cli("task=report", "model=tiny", "-m", "model.n_layers=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


def test_the_basic_sweepers_jobs_are_planned_in_its_order():
    try:
        jobs = hydra_adapter.plan_basic_sweep(["model.n_layers=1,2", "task=report", "model/mask=causal,none"])
    except Exception as err:  # noqa: BLE001 - any change of the private API is reported the same way
        pytest.fail(ADAPTER + f"BasicSweeper.split_arguments ({type(err).__name__}: {err})")
    assert jobs == [["model.n_layers=1", "task=report", "model/mask=causal"],
                    ["model.n_layers=1", "task=report", "model/mask=none"],
                    ["model.n_layers=2", "task=report", "model/mask=causal"],
                    ["model.n_layers=2", "task=report", "model/mask=none"]], ADAPTER + "BasicSweeper.split_arguments"
    assert hydra_adapter.BASIC_SWEEPER == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    from hydra.core.config_store import ConfigStore

    shipped = ConfigStore.instance().load("hydra/sweeper/basic.yaml").node  # what hydra/sweeper=basic composes
    assert shipped._target_ == hydra_adapter.BASIC_SWEEPER, ADAPTER + "the basic sweeper's _target_ moved"


# module -> why it may use Lightning's private names (its docstring says more)
LIGHTNING_ADAPTERS = {"builder.training.launch": "the script launcher of a multirun job's DDP processes",
                      "builder.training.progress_bar": "RichProgressBar's private methods, to count steps",
                      "builder.training.fsdp": "ModelParallelStrategy's two mesh sizes, set before its set-up",
                      "builder.training.loggers": "WandbLogger's init arguments, for the offline retry"}


def _builder_modules():
    import builder

    for info in pkgutil.walk_packages(builder.__path__, "builder."):
        yield importlib.import_module(info.name)


def test_lightnings_private_api_is_used_in_its_adapters_only():
    """No other module imports a private name of Lightning, or overrides a private method of a Lightning class."""
    users = {}
    for module in _builder_modules():
        source = inspect.getsource(module)
        if any(line.strip().startswith("from ") and "lightning" in line and " import _" in line
               for line in source.splitlines()):
            users.setdefault(module.__name__, []).append("imports a private name")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in ("pytorch_lightning", "lightning_fabric")]
            for name in vars(cls):
                if name.startswith("_") and not name.startswith("__") and name != "_abc_impl" and any(
                        name in vars(b) for b in bases):
                    users.setdefault(module.__name__, []).append(f"{cls.__name__}.{name}")
    assert set(users) <= set(LIGHTNING_ADAPTERS), {m: u for m, u in users.items() if m not in LIGHTNING_ADAPTERS}
    for name in LIGHTNING_ADAPTERS:  # each says what it uses and why
        assert "Lightning's private API" in inspect.getsource(importlib.import_module(name)), name
