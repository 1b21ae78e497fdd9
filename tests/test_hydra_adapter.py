"""builder/config/hydra_adapter.py is the one module reading Hydra's private API. These tests fail loudly, naming it,
when a Hydra release changes what it relies on: the command line as ``hydra.main`` parses it, and the jobs the basic
sweeper runs."""

from __future__ import annotations

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
