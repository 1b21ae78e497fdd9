"""The one module of hydraformer that reads Hydra's private API (``hydra._internal``), and why.

Two things hydraformer needs have no public way in Hydra 1.3:

* **the command line as ``hydra.main`` reads it** (``get_args_parser``): the overrides and config folders are
  checked before ``hydra.main`` runs, because Hydra configures logging while it composes and instantiates
  ``hydra.callbacks`` right after — a config that names code to run must be refused before either
  (builder/config/cli.py ``check_command_line``);
* **the jobs of a basic-sweeper multirun before it runs them** (``BasicSweeper.split_arguments``): the preflight
  composes and checks every planned job before the first starts, so ``-m model.n_layers=1,x,2`` is refused
  before job 0 trains, and ``jobs.json`` records the plan for the sweep's comparison.

``tests/test_hydra_adapter.py`` fails loudly, naming this module, when Hydra changes either.
"""

from __future__ import annotations

import argparse

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

# the sweeper whose jobs are known up front (hydra.sweeper._target_ of conf/config.yaml's default)
BASIC_SWEEPER = f"{BasicSweeper.__module__}.{BasicSweeper.__qualname__}"
# where Hydra's own launcher and sweeper live (a config may name them: hydra/launcher=basic ...)
CORE_PLUGINS = BasicSweeper.__module__.rsplit(".", 1)[0] + "."


def flags_first(args: list[str]) -> list[str]:
    """``args`` with Hydra's flags (and their values) moved before the overrides, each group in its order:
    ``task=report -m model.n_layers=1,2`` as ``-m task=report model.n_layers=1,2``. Hydra's argparse takes the
    overrides as one positional list, so a flag after the first override ends every later override's parsing
    ("unrecognized arguments"); the two orders mean the same. A flag whose value may be left out and is (``--info``)
    goes last. A token that is no flag of Hydra's stays among the overrides."""
    actions = {opt: action for action in get_args_parser()._actions for opt in action.option_strings}
    flags, overrides, bare, i = [], [], [], 0
    while i < len(args):
        token = args[i]
        action = actions.get(token.split("=", 1)[0] if token.startswith("--") else token)
        i += 1
        if action is None:
            overrides.append(token)
            continue
        if action.nargs == 0 or (token.startswith("--") and "=" in token):
            flags.append(token)
        elif action.nargs == "?" and (i == len(args) or args[i] not in (action.choices or ())):
            bare.append(token)  # its value left out (--info): last, where no override can be taken for the value
        elif i < len(args):
            flags += [token, args[i]]
            i += 1
        else:
            flags.append(token)  # a value missing: argparse says so
    return flags + overrides + bare


def parse_command_line(args: list[str]) -> argparse.Namespace:
    """``args`` (``sys.argv[1:]``) as ``hydra.main`` parses them: ``overrides``, ``config_dir``, ``config_path``,
    ``config_name``, ``multirun``, ``cfg``, ``help`` ... An unknown flag ends the process as argparse does
    (usage and exit status 2), exactly as ``hydra.main`` would."""
    return get_args_parser().parse_args(args)


def plan_basic_sweep(arguments: list[str], config_loader=None) -> list[list[str]]:
    """The jobs Hydra's basic sweeper runs for ``arguments`` (its ``hydra.sweeper.params`` as ``key=value``, then
    the command line's overrides): one override list per job, in its order. ``config_loader`` (the running app's,
    ``GlobalHydra.instance().config_loader()``) expands ``glob(...)`` over a config group; without it such a sweep
    raises Hydra's error, as does a sweep the basic sweeper cannot expand (``interval``)."""
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]
