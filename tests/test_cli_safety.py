"""The command line fails safely: configs that would run code are refused before Hydra starts anything, a typo in
a key or group gets the closest match, the help page lists what a person picks from, the config is shown short and
only after the task checked its inputs, and broken files, settings and disks are one paragraph.

Every mistake: exit status 2, one paragraph ("Error: ..."), no traceback, no run directory left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, Touch, refused, run_cli

import builder
from builder.config.plain import to_plain
from builder.tasks import READS_CHECKPOINT

TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.context_length=16"]


def tiny_checkpoint(path: Path, alphabet: str = "abcdefghijklmnopqrstuvwxyz .,", **extra) -> dict:
    """A small checkpoint as task=train writes it (model config, tokenizer, state_dict), without training."""
    from builder.data.tokenizers import CharTokenizer

    cfg = to_plain(builder.compose([*TINY, f"model.vocab_size={len(alphabet) + 1}"]).model)
    model = builder.build_model(cfg)
    tok = CharTokenizer(alphabet)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": cfg, "tokenizer": tok.to_dict()}, **extra}, path)
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    ckpt = root / "small.ckpt"
    model_cfg = tiny_checkpoint(ckpt)
    from builder.checkpoint import export_model

    export = export_model(ckpt, root / "exported")
    conf = root / "userconf" / "experiment"  # a person's own experiments, in a --config-dir
    conf.mkdir(parents=True)
    evil = root / "evilconf" / "experiment"  # a folder with a file Hydra would act on while composing: refused whole
    evil.mkdir(parents=True)
    (evil / "typo.yaml").write_text("# @package _global_\nmodel:\n  nlayers: 3\n")
    mark = root / "pwned"
    (evil / "evil.yaml").write_text(f"# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: os.makedirs\n"
                                    f"      name: {mark}\n")
    (conf / "component_target.yaml").write_text("# @package _global_\nmodel:\n  norm:\n    _target_: os.system\n")
    (conf / "typo.yaml").write_text("# @package _global_\nmodel:\n  nlayers: 3\n")
    off = root / "offconf" / "experiment"
    off.mkdir(parents=True)
    (off / "off.yaml").write_text("# @package _global_\nhydra:\n  callbacks:\n    preflight: null\n")
    return {"root": root, "ckpt": ckpt, "model": model_cfg, "export": export, "conf": conf.parent, "evil": evil.parent,
            "mark": mark}


# --------------------------------------------------------------------------------------------------
# 1. configs never name code to run
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,words", [
    (["+hydra.callbacks.evil._target_=os.makedirs", "+hydra.callbacks.evil.name={mark}"],
     ["hydra.callbacks.evil", "os.makedirs", "never name code", "sweep_comparison"]),
    (["-cd", "{evil}", "experiment=evil"], ["hydra.callbacks.evil", "os.makedirs", "never name code"]),
    (["-cd", "{evil}", "experiment=typo"], ["hydra.callbacks.evil", "experiment/evil.yaml", "never name code"]),
    (["-m", "-cd", "{evil}", "experiment=heads_vs_width,evil"], ["hydra.callbacks.evil", "never name code"]),
    (["hydra.searchpath=[file://{evil}]", "experiment=evil"], ["hydra.callbacks.evil", "never name code"]),
    (["hydra.job_logging.handlers.console.class=subprocess.Popen"],
     ["hydra.job_logging.handlers.console.class", "subprocess.Popen", "never name code"]),
    (["hydra.hydra_logging.handlers.console.class=subprocess.Popen"],
     ["hydra.hydra_logging.handlers.console.class", "subprocess.Popen", "never name code"]),
    (["~hydra.callbacks.preflight"], ["hydra.callbacks.preflight", "stays"]),
    (["hydra.callbacks=null"], ["hydra.callbacks", "stays"]),
    (["-cd", "{root}/offconf", "experiment=off"], ["hydra.callbacks.preflight", "stays", "experiment/off.yaml"]),
], ids=["override", "experiment-file", "folder-with-such-a-file", "multirun-experiment", "searchpath",
        "logging-class", "hydra-logging-class", "preflight-removed", "callbacks-removed", "preflight-off-in-a-file"])
def test_hydra_callbacks_and_hooks_of_ours_only(tmp_path, files, args, words):
    out = tmp_path / "run"
    args = [a.format(**files) for a in args]
    proc = run_cli(*args, "task=report", f"hydra.run.dir={out}", f"hydra.sweep.dir={out}")
    refused(proc, out, *words)
    assert not files["mark"].exists(), "Hydra instantiated the callback"


def test_hydras_rerun_flag_is_refused_before_it_unpickles(tmp_path, files):
    """``--experimental-rerun FILE`` would unpickle FILE (a pickle runs any code it names)."""
    import pickle

    payload = tmp_path / "config.pickle"
    payload.write_bytes(pickle.dumps(Touch(str(files["mark"]))))
    proc = run_cli("--experimental-rerun", str(payload), cwd=tmp_path)
    refused(proc, tmp_path / "outputs", "--experimental-rerun", "unpickles", "overrides.yaml")
    assert not files["mark"].exists(), "the pickle was loaded"


@pytest.mark.parametrize("args,key", [
    (["+train._target_=os.system"], "train._target_"),
    (["+trainer._target_=os.system"], "trainer._target_"),
    (["+paths._target_=os.system"], "paths._target_"),
    (["+model.attention={{_target_:os.system}}"], "model.attention._target_"),
    (["-cd", "{conf}", "experiment=component_target"], "model.norm._target_"),
], ids=["train", "trainer", "paths", "model-dict", "experiment-file"])
def test_target_under_keys_we_build_is_refused(tmp_path, files, args, key):
    out = tmp_path / "run"
    proc = run_cli(*[a.format(**files) for a in args], "task=report", f"hydra.run.dir={out}")
    refused(proc, out, key, "os.system", "no _target_")


def test_our_own_hydra_hooks_compose_and_pass():
    """What we ship is not refused: every experiment, debug config, the Optuna study, the SLURM launcher, and
    switching our sweep callback off."""
    from builder.config.cli import options
    from builder.config.preflight import check_command
    from builder.tasks import TASKS

    needs = {"gpt2_small_repro": [f"data.path={REPO / 'README.md'}"]}  # its corpus is the user's own
    for group in ("experiment", "debug"):
        for name in options(group):
            assert check_command([f"{group}={name}", *needs.get(name, [])], TASKS), (group, name)
    for args in (["hparams_search=optuna"], ["hydra/launcher=slurm"], ["~hydra.callbacks.sweep_comparison"],
                 ["+hydra.callbacks.sweep_comparison.plot=false"], ["-m", "model.n_heads=2,4", "model/mask=causal,none"]):
        assert check_command(args, TASKS), args


# --------------------------------------------------------------------------------------------------
# 2. key and group typos: the closest match, exit 2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,words", [
    ("modle=tiny", ["modle", "did you mean 'model'"]),
    ("+modle=tiny", ["modle", "did you mean 'model'"]),
    ("model.nlayers=3", ["model.nlayers", "did you mean 'n_layers'"]),
    ("+model.nlayers=3", ["model.nlayers", "did you mean 'n_layers'"]),
    ("+model.foo=1", ["model.foo", "a key of model", "d_model", "init_std"]),
    ("trainer.max_step=5", ["trainer.max_step", "did you mean 'max_steps'", "pytorch_lightning.Trainer"]),
    ("tarin.lr=1", ["tarin.lr", "did you mean 'train'"]),
    ("callbacks.text_samples.promt=x", ["callbacks.text_samples.promt", "did you mean 'prompt'"]),
    ("+data.tokenzier=char", ["data.tokenzier", "did you mean 'tokenizer'"]),
    ("model.n_layers=abc", ["model.n_layers", "abc", "Integer"]),
])
def test_key_and_group_typos_name_the_closest(tmp_path, override, words):
    out = tmp_path / "run"
    proc = run_cli("task=report", override, f"hydra.run.dir={out}")
    error = refused(proc, out, *words)
    assert "To append to your config use" not in error  # Hydra's advice (+key) is not the answer to a typo


def test_typo_in_an_experiment_file_names_the_file(tmp_path, files):
    out = tmp_path / "run"
    proc = run_cli("-cd", str(files["conf"]), "task=report", "experiment=typo", f"hydra.run.dir={out}")
    refused(proc, out, "model.nlayers=3", "did you mean 'n_layers'", "experiment/typo.yaml")


def test_full_error_shows_the_traceback_of_a_typo(tmp_path):
    proc = run_cli("task=report", "model.nlayers=3", f"hydra.run.dir={tmp_path / 'r'}", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "n_layers" in proc.stderr


# an override Hydra cannot parse: its own paragraph, one line ending the output, Hydra's reason (not its heading)
@pytest.mark.parametrize("args, words", [
    (["model.n_layers=[1"], ["model.n_layers='[1'", "no viable alternative at input '[1'"]),
    (["-m", "seed=1,[2"], ["seed='1,[2'", "expecting {COMMA, BRACKET_CLOSE}"]),
    (["text=a\"b"], ["text='a\"b'", "LexerNoViableAltException"]),
    (["+foo={a:"], ["+foo='{a:'", "no viable alternative"]),
    (["model.n_layers=${"], ["model.n_layers='${'", "extraneous input '{' expecting <EOF>",
                             "for a literal '${', write '\\${'"]),
    (["prompt=${oops"], ["prompt='${oops'", "for a literal '${', write '\\${'"]),
])
def test_an_override_hydra_cannot_parse_is_one_line(tmp_path, args, words):
    out = tmp_path / "run"
    proc = run_cli(*args, "task=report", f"hydra.run.dir={out}", f"hydra.sweep.dir={out}")
    error = refused(proc, out, "an override Hydra can parse", *words)
    assert proc.stderr == error + "\n" and proc.stdout == ""
    assert "Error parsing override" not in error and "See https://hydra.cc/docs/1" not in error


# a sweep where one value is needed, in a run of one job (no -m): one paragraph that says to quote the value
@pytest.mark.parametrize("line, quoted", [
    ("callbacks.attention_probe.text=near the garden , the mole",
     """'callbacks.attention_probe.text="near the garden , the mole"'"""),
    ("model.n_heads=2,4", """'model.n_heads="2,4"'"""),
    ("trainer.max_steps=range(1,3)", "'trainer.max_steps=\"range(1,3)\"'"),
    ("model=tiny,gpt2_small", """'model="tiny,gpt2_small"'"""),
])
def test_a_sweep_where_one_value_is_needed_is_one_paragraph(tmp_path, line, quoted):
    out = tmp_path / "run"
    proc = run_cli(line, "task=report", f"hydra.run.dir={out}")
    key, value = line.split("=", 1)
    refused(proc, out, f"{key}={value!r} is not accepted", "as a sweep", f"quote the value, e.g. {quoted}",
            "add -m (--multirun)")


def test_an_override_hydra_cannot_parse_ends_a_new_interpreters_output_with_a_newline(tmp_path):
    proc = run_cli("task=report", "model.n_layers=[1", cwd=tmp_path, fresh=True)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: model.n_layers='[1'")
    assert proc.stderr.endswith("')\n") and proc.stderr.count("\n") == 1


# a ${...} in a value that does not resolve: one paragraph naming the key and how to write a literal '${'
LITERAL = "for a literal '${', write '\\${'"


@pytest.mark.parametrize("args, words", [
    (["task=attend", "text=a ${oops} b"], ["text='a ${oops} b'", "'text=a \\${oops} b'", "'oops' not found"]),
    (["task=lens", "text=${model.nope}"], ["text='${model.nope}'", "'model.nope' not found"]),
    (["task=sample", "prompt=${oc.env:HYDRAFORMER_UNSET_FOR_TEST}"],
     ["prompt='${oc.env:HYDRAFORMER_UNSET_FOR_TEST}'", "HYDRAFORMER_UNSET_FOR_TEST"]),
    (["task=context", "word=${nope:x}", "contexts=[a]"], ["word='${nope:x}'", "Unsupported interpolation type nope"]),
    (["task=context", "word=mole", "contexts=[a,b ${oops}]"], ["contexts[1]='b ${oops}'", "'b \\${oops}'"]),
    (["task=embed", "words=[a,${oops}]"], ["words[1]='${oops}'"]),
    (["task=embed", "pairs=[[a,${oops}]]"], ["pairs[0][1]='${oops}'"]),
    (["task=embed", "groups={x:[${oops}]}"], ["groups.x[0]='${oops}'"]),
    (["task=train", "callbacks.text_samples.prompt=x ${oops}"],
     ["callbacks.text_samples.prompt='x ${oops}'", "'callbacks.text_samples.prompt=x \\${oops}'"]),
    (["task=train", "callbacks.attention_probe.text=${oops}"], ["callbacks.attention_probe.text='${oops}'"]),
    (["-m", "task=attend", "text=a,b ${oops}"], ["text='b ${oops}'"]),  # every job of a sweep
    (["task=attend", "text='a ${ b'"], ["text='a ${ b'", "no viable alternative"]),  # no interpolation at all
])
def test_a_value_whose_interpolation_does_not_resolve_is_one_paragraph(tmp_path, files, args, words):
    """It was an InterpolationKeyError traceback (raised while reading Hydra's record of the command line)."""
    out = tmp_path / "run"
    proc = run_cli(*args, f"checkpoint={files['ckpt']}", f"hydra.run.dir={out}", f"hydra.sweep.dir={out}",
                   env={"HYDRAFORMER_UNSET_FOR_TEST": None})
    refused(proc, out, LITERAL, *words)


def test_an_escaped_interpolation_is_taken_literally(tmp_path):
    """``\\${`` gives a literal ``${``: the model reads it, the saved config.yaml loads back the same text, and a
    sweep's jobs get it too."""
    from omegaconf import OmegaConf

    ckpt = tmp_path / "dollar.ckpt"
    tiny_checkpoint(ckpt, alphabet="abcdefghijklmnopqrstuvwxyz .,${}")
    out = tmp_path / "attend"
    proc = run_cli("task=attend", f"checkpoint={ckpt}", "text=a \\${x} b", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "on 'a ${x} b'" in proc.stdout
    assert OmegaConf.load(out / "config.yaml").text == "a ${x} b"
    out = tmp_path / "sample"
    proc = run_cli("task=sample", f"checkpoint={ckpt}", "prompt=\\${x}", "max_new_tokens=2", f"hydra.run.dir={out}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "sample.txt").read_text().startswith("${x}")
    assert OmegaConf.load(out / "config.yaml").prompt == "${x}"
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "task=report", "text=a \\${x} b,c", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.load(sweep / "0" / "config.yaml").text == "a ${x} b"


# --------------------------------------------------------------------------------------------------
# 3. the help page
# --------------------------------------------------------------------------------------------------


def _check_help(text: str) -> None:
    from builder.config.cli import groups, options
    from builder.tasks import TASKS

    tasks = text.split("== Tasks", 1)[1].split("==", 2)[1]
    for task in TASKS:
        assert re.search(rf"^\s+{task}\s", tasks, re.M), task
    listing = text.split("== Groups", 1)[1].split("== Common keys", 1)[0]
    for group in groups():
        line = re.search(rf"^\s+{re.escape(group)}\s+(.+(?:\n\s{{20}}\S.*)*)", listing, re.M)
        assert line, group
        assert [o.strip() for o in line.group(1).split("(")[0].replace("\n", " ").split(",")] == options(group)
    assert "schema" not in listing
    assert "== Common keys" in text and "checkpoint=" in text and text.count("\n  hydraformer ") >= 3  # examples


def test_help_page_lists_tasks_groups_options_keys_and_examples(tmp_path):
    proc = run_cli("--help", "hydra/help=hydraformer", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_help(proc.stdout)


def test_help_is_the_default_page(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_help(proc.stdout)


# --------------------------------------------------------------------------------------------------
# 4. the config: short, after validation, the model really used
# --------------------------------------------------------------------------------------------------


def _tree(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config"))
    end = next(i for i, line in enumerate(lines) if "every key:" in line)
    return lines[start:end + 1]


def test_report_shows_choices_and_changes_and_saves_everything(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("task=report", "model=gpt2_small", "model.n_layers=2", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _tree(proc.stderr)
    tree = "\n".join(lines[:-1])
    assert len(lines) < 10, tree
    assert "├── model: gpt2_small" in tree and "n_layers: 2" in tree and "d_model" not in tree
    assert "data" not in tree and "trainer" not in tree  # task=report reads neither
    assert lines[-1].endswith(f"every key: {out / 'config.yaml'}")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["d_model"] == 768 and saved["model"]["n_layers"] == 2 and saved["trainer"]["max_steps"]
    assert "├── model" in (out / "config_tree.txt").read_text()


def test_sample_shows_the_checkpoints_model_after_loading_it(tmp_path, files):
    out = tmp_path / "run"
    proc = run_cli("task=sample", f"checkpoint={files['ckpt']}", "prompt=the", "max_new_tokens=3", "top_k=null",
                   f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tree = "\n".join(_tree(proc.stderr))
    assert f"model: from checkpoint={files['ckpt']}" in tree
    assert "d_model: 32" in tree and "model: tiny" not in tree and "d_model: 128" not in tree
    assert "top_k: null" in tree and "max_new_tokens: 3" in tree
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == files["model"]  # the checkpoint's model, not model=tiny's
    assert "checkpoint=" in (out / "config.yaml").read_text().splitlines()[2]


def test_a_failing_task_prints_no_config(tmp_path, files):
    out = tmp_path / "run"
    refused(run_cli("task=report", "model.n_heads=5", f"hydra.run.dir={out}"), out, "model.n_heads")
    refused(run_cli("task=sample", f"checkpoint={files['ckpt']}", "prompt=THE", f"hydra.run.dir={out}"), out, "prompt")


# --------------------------------------------------------------------------------------------------
# 5. broken files, settings and disks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage,words", [
    ("json", ["hydraformer.json is not readable JSON"]),
    ("no_model", ["holds no model config"]),
    ("missing_weights", ["model.safetensors is missing"]),
    ("corrupt_weights", ["model.safetensors is not a readable safetensors file"]),
])
def test_malformed_export_directory(tmp_path, files, damage, words):
    export = tmp_path / "export"
    export.mkdir()
    for f in files["export"].iterdir():
        (export / f.name).write_bytes(f.read_bytes())
    if damage == "json":
        (export / "hydraformer.json").write_text("{not json")
    elif damage == "no_model":
        (export / "hydraformer.json").write_text(json.dumps({"model": 3}))
    elif damage == "missing_weights":
        (export / "model.safetensors").unlink()
    else:
        (export / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes()[:100])
    out = tmp_path / "run"
    refused(run_cli("task=sample", f"checkpoint={export}", f"hydra.run.dir={out}"), out, "checkpoint=", str(export),
            *words)


@pytest.mark.parametrize("override,words", [
    ("temperature=-1", ["temperature=-1", ">= 0"]),
    ("top_k=0", ["top_k=0", "> 0", "null"]),
    ("max_new_tokens=-1", ["max_new_tokens=-1", ">= 0"]),
    ("compile=maybe", ["compile", "maybe"]),
])
def test_sampling_options_out_of_range(tmp_path, files, override, words):
    out = tmp_path / "run"
    refused(run_cli("task=sample", f"checkpoint={files['ckpt']}", "prompt=the", override, f"hydra.run.dir={out}"),
            out, *words)


@pytest.mark.parametrize("fmt, tokenizer, want", [
    ("hf", True, ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]),
    ("hf", False, ["config.json", "model.safetensors"]),
    ("hydraformer", True, ["hydraformer.json", "model.safetensors"]),
])
def test_export_names_every_file_it_writes(tmp_path, fmt, tokenizer, want):
    """format=hf named config.json and model.safetensors of the four files it wrote."""
    ckpt = tmp_path / "small.ckpt"
    tiny_checkpoint(ckpt)
    if not tokenizer:
        state = torch.load(ckpt, weights_only=True)
        del state["hyper_parameters"]["tokenizer"]
        torch.save(state, ckpt)
    out = tmp_path / "run"
    proc = run_cli("task=export", f"checkpoint={ckpt}", f"format={fmt}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (out / "export").iterdir())
    assert written == want
    line = next(line for line in proc.stdout.splitlines() if line.startswith("exported to "))
    assert line.endswith("): " + ", ".join(want)), line


# what each asks for before its model
NEEDS = {"context": ["word=cat", "contexts=[a cat]"], "embed": ["words=[cat]"], "patch": ["clean=a b", "corrupted=a c"]}


@pytest.mark.parametrize("task", READS_CHECKPOINT)
def test_every_task_that_reads_a_model_refuses_a_bad_one_before_showing_its_config(tmp_path, task):
    """Garbage, a pickle that would run code, a missing file, no checkpoint at all: one paragraph naming
    ``checkpoint``, no config tree printed first, nothing unpickled, no run folder left."""
    garbage, evil = tmp_path / "garbage.ckpt", tmp_path / "evil.ckpt"
    garbage.write_bytes(b"not a checkpoint\n")
    torch.save({"state_dict": Touch(str(tmp_path / "ran"))}, evil)
    for checkpoint, words in ((garbage, ["not a zip archive", "Unsupported operand"]),
                              (evil, ["unsupported GLOBAL os.makedirs"]),
                              (tmp_path / "missing.ckpt", ["missing.ckpt"]),
                              (None, [f"python run.py task={task} checkpoint=PATH"])):
        out = tmp_path / "run"
        given = [] if checkpoint is None else [f"checkpoint={checkpoint}"]
        refused(run_cli(f"task={task}", *given, *NEEDS.get(task, []), f"hydra.run.dir={out}", cwd=tmp_path), out,
                "checkpoint=", *words)
    assert not (tmp_path / "ran").exists()


def test_a_task_that_shows_its_own_config_is_listed_as_one():
    """builder.tasks shows a task's config just before it runs unless the task says when its inputs are checked
    (inputs_checked, or read_model, which calls it): a task doing that must be in SHOW_THEIR_CONFIG, or its config
    is printed twice, the first time before a refusal."""
    from builder.tasks import SHOW_THEIR_CONFIG, TASKS

    for name, module in TASKS.items():
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        shows = "inputs_checked(" in source or "read_model(" in source
        assert shows == (name in SHOW_THEIR_CONFIG), name


def test_truncated_and_foreign_files_cannot_be_resumed_from(tmp_path, files):
    from builder.checkpoint import check_resumable
    from builder.errors import ConfigError

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(files["ckpt"].read_bytes()[:3000])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, words in ((truncated, "could not be loaded safely"), (text, "could not be loaded safely"),
                        (files["ckpt"], "no optimizer state")):
        with pytest.raises(ConfigError, match=words) as err:
            check_resumable(str(path))
        assert str(err.value).startswith(f"ckpt_path='{path}'")
    resumable = tmp_path / "last.ckpt"
    cfg = tiny_checkpoint(resumable, optimizer_states=[], global_step=3)
    assert check_resumable(str(resumable), cfg) == str(resumable) and check_resumable(None) is None
    with pytest.raises(ConfigError, match="the model config differs: model.d_model: 32 in the checkpoint, 64 now"):
        check_resumable(str(resumable), {**cfg, "d_model": 64})


def test_ckpt_path_truncated_through_the_cli(tmp_path, files):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(files["ckpt"].read_bytes()[:3000])
    out = tmp_path / "run"
    env = {"HYDRAFORMER_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    refused(run_cli(*TINY, "logger=csv", f"ckpt_path={truncated}", f"hydra.run.dir={out}", env=env), out,
            "ckpt_path=", str(truncated))


@pytest.mark.parametrize("env,override,words", [
    ({"WANDB_MODE": "nonsense"}, None, ["WANDB_MODE='nonsense'", "online, offline", "unset"]),
    ({}, "logger.wandb.mode=onlin", ["logger.wandb.mode='onlin'", "did you mean 'online'"]),
], ids=["env", "config"])
def test_unknown_wandb_mode(tmp_path, env, override, words):
    out = tmp_path / "run"
    args = ["logger=wandb", "trainer.max_steps=1", f"hydra.run.dir={out}"] + ([override] if override else [])
    refused(run_cli(*args, env={"HYDRAFORMER_CACHE": str(tmp_path / "cache"), **env}), out, *words)


def _sys_refuses_folders() -> bool:
    try:
        os.mkdir("/sys/hydraformer-probe")
    except OSError:
        return True
    os.rmdir("/sys/hydraformer-probe")
    return False


def test_cache_and_run_folders_that_cannot_be_written(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = tmp_path / "run"
    train = ["logger=csv", "trainer.max_steps=1", f"hydra.run.dir={out}"]
    refused(run_cli(*train, env={"HYDRAFORMER_CACHE": str(a_file), "WANDB_MODE": "offline"}), out,
            f"HYDRAFORMER_CACHE='{a_file}'", "is a file")
    refused(run_cli("task=report", f"hydra.run.dir={a_file / 'run'}"), out, "hydra.run.dir=", str(a_file), "is a file")
    if not _sys_refuses_folders():
        pytest.skip("/sys takes new folders here: no read-only place to point at")
    refused(run_cli(*train, env={"HYDRAFORMER_CACHE": "/sys/hydraformer-cache", "WANDB_MODE": "offline"}), out,
            "HYDRAFORMER_CACHE='/sys/hydraformer-cache'", "operation not permitted")
    refused(run_cli("task=report", "paths.runs_dir=/sys/hydraformer-runs"), out, "paths.runs_dir='/sys/hydraformer-runs'")


def test_no_space_left_on_device_is_one_paragraph(tmp_path):
    """A real ENOSPC: the task's output goes to /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, str(REPO / "run.py"), "task=report", f"hydra.run.dir={out}"], cwd=REPO,
                              env={**env, "PYTHONUNBUFFERED": "1"}, stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=300)
    proc.stdout = ""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "stdout='/dev/full' is not accepted" in proc.stderr and "no space left on device" in proc.stderr


def test_a_full_disk_under_the_run_directory_names_the_setting_and_the_file(tmp_path):
    """ENOSPC, EROFS, EACCES from a write below hydra.run.dir or the token cache (the mapping run_task applies)."""
    from builder.tasks import file_system_error

    cfg = builder.compose([f"paths.cache_dir={tmp_path / 'cache'}"])
    out = tmp_path / "run"
    for code, words in ((errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
                        (errno.EACCES, "permission denied")):
        err = file_system_error(OSError(code, os.strerror(code), str(out / "checkpoints" / "last.ckpt")), cfg, out)
        assert str(err).startswith(f"hydra.run.dir='{out}' is not accepted") and words in str(err)
        assert str(out / "checkpoints" / "last.ckpt") in str(err)
    err = file_system_error(OSError(errno.ENOSPC, "full", str(tmp_path / "cache" / "x.bin")), cfg, out)
    assert str(err).startswith("data.cache_dir=") and "no space left on device" in str(err)
    assert file_system_error(OSError(errno.ENOENT, "gone", "x"), cfg, out) is None
