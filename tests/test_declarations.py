"""One declaration per key: every key's type, range and meaning are data beside it, and one check reads them.

The bad values here are generated from the declarations themselves (negative, zero where excluded, NaN, inf, huge,
the wrong type, an unknown choice), so a key declared next month is covered without a new test.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing

import pytest
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from conftest import REPO

import builder
import components
from builder.config.checks import check_job
from builder.config.plain import to_plain
from builder.config.schema import CALLBACK_SCHEMAS, STRATEGY_KEYS, TRAINER_SET_BY_US, Config, TrainerConfig
from builder.config.spec import Declared, check, declared
from builder.errors import ConfigError
from components.registry import OneOf, settings_class


def bad_values(d: Declared) -> list:
    """Values the declaration ``d`` refuses, derived from it alone."""
    out = []
    bare = d.type
    choices = next((c.choices for c in d.constraints if isinstance(c, OneOf)), None)
    if choices is not None:
        out.append("no_such_choice")
    if bare is typing.Any:
        return out
    if typing.get_origin(bare) in (list, tuple):
        out.append("not a list")
        sizes = [c for c in d.constraints if isinstance(c, (MinLen, MaxLen))]
        if sizes and isinstance(sizes[0], MinLen) and sizes[0].min_length > 0:
            out.append([])
        return out
    if bare is bool:
        return out + ["maybe", 2]
    if bare is str:
        return out + [3]
    if bare in (int, float):
        out += ["abc", True]
        if bare is int:
            out += [1.5, 2 ** 64]
        else:
            out += [math.nan, math.inf, -math.inf]
        step = 1 if bare is int else 0.5
        for c in d.constraints:
            if isinstance(c, Gt):
                out.append(c.gt)
            elif isinstance(c, Ge):
                out.append(c.ge - step)
            elif isinstance(c, Lt):
                out.append(c.lt)
            elif isinstance(c, Le):
                out.append(c.le + step)
    if not d.optional and not d.required:
        out.append(None)
    return out



def _set(plain: dict, key: str, value) -> dict:
    node = plain
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return plain


def _cases():
    """(overrides to compose, dotted key, declaration) for every declared key: the root config's (model, data,
    train, trainer, task keys), each callback's settings and each registered component's settings."""
    cases = [([], d) for d in declared(Config) if not d.key.startswith("model.")]
    for name, cls in CALLBACK_SCHEMAS.items():
        cases += [([], dataclasses.replace(d, key=f"callbacks.{name}.{d.key}")) for d in declared(cls)]
    for kind in components.KINDS:
        for name in components.names(kind):
            for d in declared(settings_class(kind, name)):
                if d.key != "name":
                    cases.append(([f"model/{kind}={name}"], dataclasses.replace(d, key=f"model.{kind}.{d.key}")))
    return cases


# keys whose declaration is a bare ``Any`` checked by a rule between keys, with their own tests below
RULE_CHECKED = {"trainer.devices", "trainer.fast_dev_run", "trainer.max_time", "trainer.val_check_interval",
                "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches",
                "trainer.limit_predict_batches", "trainer.overfit_batches"}
# keys that hold another library's or a person's free-form mapping (logger options, paths, task=embed's groups)
FREE_FORM = {"logger", "callbacks", "paths", "groups"}


@pytest.fixture(scope="module")
def composed():
    cache = {}

    def get(overrides: list[str]) -> dict:
        key = tuple(overrides)
        if key not in cache:
            cache[key] = to_plain(builder.compose(["task=train", *overrides]))
        return to_plain(cache[key])  # a fresh copy

    return get


def test_every_declared_key_refuses_what_its_declaration_excludes(composed):
    checked_keys, skipped = 0, set()
    for overrides, d in _cases():
        values = bad_values(d)
        if not values:
            skipped.add(d.key)
            continue
        base = composed(overrides)
        check_job(base)  # the config itself passes
        for value in values:
            plain = _set(composed(overrides), d.key, value)
            with pytest.raises(ConfigError) as err:
                check_job(plain)
            assert err.value.key.split("[")[0] == d.key, (d.key, value, str(err.value))
            assert "is not accepted" in str(err.value)
            checked_keys += 1
    assert skipped <= RULE_CHECKED | FREE_FORM | {"model.embedding", "model.attention", "model.mask", "model.mlp",
                                                  "model.norm"}, skipped
    assert checked_keys > 300


@pytest.mark.parametrize("key,value", [
    ("trainer.devices", 0), ("trainer.devices", -2), ("trainer.devices", "x"), ("trainer.devices", [0, -1]),
    ("trainer.fast_dev_run", -1), ("trainer.val_check_interval", 0), ("trainer.val_check_interval", 1.5),
    ("trainer.limit_val_batches", -1), ("trainer.limit_train_batches", 1.5), ("trainer.overfit_batches", math.nan),
    ("trainer.max_time", 5),
])
def test_rules_between_values_name_the_key(composed, key, value):
    with pytest.raises(ConfigError) as err:
        check_job(_set(composed([]), key, value))
    assert err.value.key == key


def test_the_refusal_words_come_from_the_declaration(composed):
    with pytest.raises(ConfigError) as err:
        check_job(_set(composed([]), "model.n_layers", -5))
    assert str(err.value) == "model.n_layers=-5 is not accepted: an integer > 0 (transformer blocks)"
    with pytest.raises(ConfigError) as err:
        check_job(_set(composed(["model/norm=rmsnorm"]), "model.norm.layout", "middel"))
    assert "one of pre, post, parallel, sandwich" in str(err.value) and "did you mean 'middle'" not in str(err.value)
    with pytest.raises(ConfigError, match=r"train\.betas\[1\]=1\.5 is not accepted: a list of 2 numbers >= 0 and < 1"):
        check_job(_set(composed([]), "train.betas", [0.9, 1.5]))


def test_trainer_keys_are_lightnings_arguments_with_its_defaults():
    """trainer.* is declared once here (so a bad value is refused before Lightning is imported); its names, and the
    defaults where the declaration keeps Lightning's, are pytorch_lightning.Trainer's own."""
    import pytorch_lightning as pl

    params = inspect.signature(pl.Trainer.__init__).parameters
    ours = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    lightning = {name for name in params if name != "self"}
    assert set(ours) - set(STRATEGY_KEYS) <= lightning, set(ours) - lightning
    assert lightning - set(ours) == set(TRAINER_SET_BY_US), lightning - set(ours)
    for name, f in ours.items():
        if name in STRATEGY_KEYS:
            continue
        assert f.default == params[name].default, (name, f.default, params[name].default)


def test_component_settings_are_declared_beside_their_modules_and_build():
    """Each registered component's settings compose as a typed node (model/<kind>=<name>) and build the module
    from the checked object: no constructor introspection."""
    for kind in components.KINDS:
        for name in components.names(kind):
            cls = settings_class(kind, name)
            assert cls.__module__ == components.get(kind, name).__module__ or cls.__module__ == "types"
            assert cls().name == name
            cfg = builder.compose([f"model/{kind}={name}", "model/embedding=rotary" if kind != "embedding" else
                                   f"model/embedding={name}"])
            model = builder.build_model(cfg.model)
            assert model(__import__("torch").tensor([[1, 2, 3]])).shape == (1, 3, cfg.model.vocab_size)


def test_a_plain_dict_from_a_checkpoint_goes_through_the_same_check():
    from builder.model import model_config

    plain = to_plain(builder.compose(["model=tiny"]).model)
    short = {k: v for k, v in plain.items() if k not in ("bias", "dropout", "init_std")}
    assert model_config(short).bias is True
    with pytest.raises(ConfigError, match=r"model.nlayers=3 is not accepted: a key of model \(did you mean 'n_layers'"):
        model_config({**plain, "nlayers": 3})
    with pytest.raises(ConfigError, match=r"model.attention.softcap=-1.0 is not accepted: a number > 0, or null"):
        model_config({**plain, "attention": {**plain["attention"], "softcap": -1.0}})
    with pytest.raises(ConfigError, match=r"model.n_heads='4' is not accepted: an integer > 0"):
        model_config({**plain, "n_heads": "4"})


def test_check_returns_the_declared_objects():
    checked = check_job(builder.compose(["model=llama3_8b", "task=report"]))
    assert isinstance(checked, Config) and checked.model.attention.n_kv_heads == 8
    assert type(checked.model.attention).__name__ == "GroupedQuerySettings"
    assert checked.trainer.processes() == 1
    assert check(TrainerConfig, {"devices": "0,1", "num_nodes": 2}, "trainer").processes() == 4


def test_the_key_reference_is_generated_from_the_declarations():
    from builder.config.keys import markdown, sections

    assert (REPO / "docs" / "keys.md").read_text() == markdown(), "run: python -m builder.config.keys > docs/keys.md"
    text = markdown()
    for _title, rows, prefix in sections():
        for d in rows:
            assert f"`{prefix}{d.key}`" in text


def test_the_help_page_says_what_each_common_key_accepts(tmp_path, cli):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert re.search(r"^ +model\.n_layers +an integer > 0: transformer blocks$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^ +train\.lr +a number > 0: the peak learning rate$", proc.stdout, re.M)


ISSUE_VALUES = ["trainer.max_steps=-5", "trainer.accumulate_grad_batches=0", "trainer.devices=0",
                "callbacks.model_checkpoint.every_n_train_steps=-1", "model.init_std=nan", "trainer.gradient_clip_val=-1",
                "trainer.log_every_n_steps=0", "model.mlp.hidden=0", "model.norm.eps=-1", "model.norm.eps=nan",
                "task=report model.mlp.hidden=-3", "task=report model.n_heads=5", "trainer.max_time=5",
                "model/attention=grouped_query model.attention.n_kv_heads=3", "data.val_fraction=inf"]


@pytest.mark.parametrize("args", ISSUE_VALUES)
def test_out_of_range_values_on_the_command_line_are_refused_with_exit_2_and_no_folder(tmp_path, cli, args):
    """Values once accepted or ending in a traceback: one paragraph naming the key, exit 2, and nothing written
    (not even an empty outputs/<date>/ in the folder the command ran from)."""
    overrides = args.split()
    key = next(o for o in reversed(overrides) if not o.startswith(("task=", "model/"))).split("=")[0]
    proc = cli(*overrides, cwd=tmp_path, env={"HYDRAFORMER_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"Error: {key}=") and "is not accepted" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))


@pytest.mark.parametrize("args,key", [
    ("-m model.n_layers=1,x,2", "model.n_layers"),
    ("-m task=report model.n_heads=2,5", "model.n_heads"),
    ("-m model/mask=causal,sliding_window model.mask.window=0", "model.mask.window"),
    ("-m trainer.max_steps=2,-5 seed=1,2", "trainer.max_steps"),
], ids=["type", "rule", "group-then-value", "range"])
def test_a_sweep_with_one_bad_job_is_refused_before_any_job_runs(tmp_path, cli, args, key):
    """Every job the basic sweeper will run is composed and checked by the preflight before the first starts: one
    paragraph naming the key, exit 2, no sweep folder (Hydra alone would run the good jobs first)."""
    proc = cli(*args.split(), cwd=tmp_path, env={"HYDRAFORMER_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.startswith(f"Error: {key}="), proc.stderr
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))
