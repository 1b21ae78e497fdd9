"""Compose the same config ``run.py`` composes, from Python (notebooks, scripts, tests).

The config tree is the ``conf`` package: found through importlib.resources, so an installed wheel
composes exactly like a source checkout.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from importlib.resources import files
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import components

from .schema import AcceleratorConfig, ModelConfig, register_schemas
from .spec import check

CONF_DIR = Path(str(files("conf")))


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """``builder.compose(["model=gpt3_175b"])`` → the composed DictConfig.

    Inside a running Hydra app (``run.py``) the app's own search path is reused.
    """
    register_schemas()
    overrides = list(overrides or [])
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


@functools.cache
def accelerators() -> dict[str, AcceleratorConfig]:
    """conf/plan/default.yaml's accelerators, each entry checked as an AcceleratorConfig: the one table of GPU data
    sheets, which task=plan composes as ``plan.accelerators`` and a training run's MFU reads here (no composition)."""
    table = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "plan" / "default.yaml"))["accelerators"]
    return {name: check(AcceleratorConfig, entry, f"plan.accelerators.{name}") for name, entry in table.items()}


def accelerator_named(device_name: str) -> tuple[str, AcceleratorConfig] | None:
    """The entry of ``accelerators()`` whose ``device_name`` is the longest one ``device_name`` (what
    ``torch.cuda.get_device_name()`` says: ``NVIDIA H100 80GB HBM3``) contains; None when none does."""
    found = [(name, acc) for name, acc in accelerators().items() if acc.device_name and acc.device_name in device_name]
    return max(found, key=lambda item: len(item[1].device_name), default=None)


class _NotPlain(Exception):
    """A preset's defaults list uses a form ``preset_configs`` does not read itself."""


def _deep_merge(into: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def _yaml_reader():
    """``read(path)``: the YAML file as plain containers, each file parsed once (parents and group files are shared
    by many presets), a fresh copy each call (the merge below writes into what it is given)."""
    parsed = functools.cache(lambda path: OmegaConf.to_container(OmegaConf.load(path)))
    return lambda path: copy.deepcopy(parsed(path))


def _preset_layers(name: str, chosen: dict[str, str], read=None) -> list[dict]:
    """The configs Hydra merges for model preset ``name``, in its order; ``chosen``: group options a child overrides;
    ``read``: a ``_yaml_reader()`` to share between calls."""
    read = read or _yaml_reader()
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        raise _NotPlain(name)
    body = read(path)
    defaults = body.pop("defaults", [])
    for entry in defaults:
        if isinstance(entry, dict):
            if len(entry) != 1:
                raise _NotPlain(name)
            (key, option), = entry.items()
            words = key.split()
            if words[0] == "override" and len(words) == 2:
                chosen = {words[1]: option, **chosen}  # a child's override outranks its parent's
            elif len(words) != 1 or "@" in key or "/" in key or not isinstance(option, str):
                raise _NotPlain(name)
        elif not isinstance(entry, str) or "@" in entry or "/" in entry:
            raise _NotPlain(name)
    layers = []
    for entry in defaults:
        if entry == "_self_":
            layers.append(body)
        elif isinstance(entry, str):
            if entry != "schema":
                layers += _preset_layers(entry, chosen, read)
        else:
            (key, option), = entry.items()
            if not key.startswith("override "):
                layers.append({key: _option(key, chosen.get(key, option), read)})
    if "_self_" not in defaults:
        raise _NotPlain(name)
    return layers


def declared_option(kind: str, name) -> dict | None:
    """Component option ``model/<kind>/<name>`` as Hydra composes it from the ConfigStore: its settings' declared
    defaults; None when no component of that name is registered."""
    try:
        return dataclasses.asdict(components.registry.settings_class(kind, str(name))())
    except components.RegistryError:
        return None


def _option(kind: str, name: str, read) -> dict:
    """Component option ``model/<kind>/<name>``: a YAML file of that group when one is there, else its declared
    settings."""
    path = CONF_DIR / "model" / kind / f"{name}.yaml"
    if path.is_file():
        return read(path)
    option = declared_option(kind, name)
    if option is None:
        raise _NotPlain(name)
    return option


def preset_configs(names: list[str]) -> dict[str, DictConfig]:
    """Each model preset in ``names`` as ``compose(["model=<name>"], "model_only").model`` gives it.

    The presets' defaults lists use a small part of Hydra's: ``schema``, ``_self_`` (last), a parent preset,
    ``<group>: <option>`` and ``override <group>: <option>``. Read as such, each is its YAML files merged in Hydra's
    order over the schema, at a tenth of the cost of composing; a preset written with any other form is composed
    by Hydra. tests/test_config.py checks that the two agree for every preset.
    """
    schema = OmegaConf.structured(ModelConfig)
    read = _yaml_reader()
    out, others = {}, []
    for name in names:
        try:
            merged: dict = {}
            for layer in _preset_layers(name, {}, read):
                _deep_merge(merged, layer)
            out[name] = OmegaConf.merge(schema, merged)
        except _NotPlain:
            others.append(name)
    if others:  # one composition with every such preset at presets.<name>: one compose each costs Hydra's set-up
        composed = compose([f"+model@presets.{name}={name}" for name in others], config_name="model_only").presets
        out.update({name: composed[name] for name in others})
    return {name: out[name] for name in names}
