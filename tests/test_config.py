"""Composition and bad input: each mistake gets one paragraph naming key, value and what is accepted."""

import pytest

import builder

BAD = [
    # (overrides, words the message must hold)
    (["model/attention=multihed"], ["model/attention", "multihed", "multi_head", "grouped_query", "did you mean"]),
    (["model.attention.name=multihed"], ["model/attention", "multihed", "did you mean 'multi_head'"]),
    (["model/attn=x"], ["model/attn", "attention", "did you mean"]),
    (["model=gpt3_176b"], ["model", "gpt3_176b", "gpt3_175b", "did you mean"]),
    (["task=reprot"], ["task", "reprot", "report"]),
    (["model.n_heads=5"], ["model.n_heads", "5", "divisor of model.d_model=128", "d_head"]),
    (["model/attention=grouped_query", "model.attention.n_kv_heads=3"],
     ["model.attention.n_kv_heads", "3", "divisor of model.n_heads=4"]),
    (["model/mask=sliding_window", "model.mask.window=0"], ["model.mask.window", "0", "an integer > 0"]),
    (["model/mask=alternating", "model.mask.window=-2"], ["model.mask.window", "-2", "an integer > 0"]),
    (["model.vocab_size=0"], ["model.vocab_size", "0", "an integer > 0"]),
    (["model.context_length=-1"], ["model.context_length", "-1", "an integer > 0"]),
    (["model.n_layers=0"], ["model.n_layers", "0", "an integer > 0"]),
    (["model.d_model=0"], ["model.d_model", "0", "an integer > 0"]),
    (["model.n_layers=abc"], ["model.n_layers", "abc", "Integer"]),
    (["model.bias=maybe"], ["model.bias", "maybe", "bool"]),
    (["model.mlp.hidden=abc"], ["model.mlp.hidden", "abc", "Integer"]),
    (["model.norm.layout=middle"], ["model.norm.layout", "middle", "pre", "post"]),
    (["model.dropout=1.5"], ["model.dropout", "1.5", "a number >= 0 and < 1"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_gets_one_clear_message(tmp_path, cli, overrides, words):
    out = tmp_path / "run"
    proc = cli("task=report", *overrides, f"hydra.run.dir={out}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert not out.exists(), "a failed run must not leave a half-written run directory"


def test_full_error_shows_traceback(tmp_path, cli):
    proc = cli("task=report", "model.n_heads=5", f"hydra.run.dir={tmp_path / 'r'}", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_compose_api_matches_run_py_config():
    cfg = builder.compose(["model=gpt2_small", "model/attention=grouped_query", "model.attention.n_kv_heads=2"])
    assert cfg.model.attention.name == "grouped_query" and cfg.model.attention.n_kv_heads == 2
    assert cfg.model.d_model == 768 and cfg.task == "train"


def test_presets_read_from_their_yaml_equal_hydras_composition():
    """``preset_configs`` (the budget report's preset table) reads the presets' YAML itself: the same configs as
    Hydra composes, for every preset, parents and ``override`` entries included."""
    from omegaconf import OmegaConf

    from builder.config.compose import _preset_layers, preset_configs
    from builder.report import preset_names

    names = preset_names()
    fast = preset_configs(names)
    hydra = builder.compose([f"+model@presets.{n}={n}" for n in names], config_name="model_only").presets
    for name in names:
        _preset_layers(name, {})  # read directly, not by the fallback
        assert OmegaConf.to_container(fast[name]) == OmegaConf.to_container(hydra[name]), name
    assert fast["mistral_7b"].mask.name == "sliding_window" and fast["mistral_7b"].mask.window == 4096
    assert fast["gpt2_medium"].norm.name == "layernorm" and fast["gpt2_medium"].d_model == 1024


def test_a_preset_in_another_form_is_composed_by_hydra(tmp_path, monkeypatch):
    """A defaults entry outside the plain forms (here ``optional``) sends that preset to Hydra."""
    import shutil

    from omegaconf import OmegaConf

    from builder.config import compose as compose_module

    conf = tmp_path / "conf"
    shutil.copytree(compose_module.CONF_DIR, conf)
    tiny = (conf / "model" / "tiny.yaml").read_text()
    (conf / "model" / "odd.yaml").write_text(tiny.replace("- mlp: gelu", "- optional mlp: relu")
                                             .replace("n_layers: 4", "n_layers: 3"))
    monkeypatch.setattr(compose_module, "CONF_DIR", conf)
    with pytest.raises(compose_module._NotPlain):
        compose_module._preset_layers("odd", {})
    got = compose_module.preset_configs(["odd", "tiny"])
    assert got["odd"].mlp.name == "relu" and got["odd"].n_layers == 3 and got["odd"].d_model == 128
    assert OmegaConf.to_container(got["tiny"]) == OmegaConf.to_container(
        builder.compose(["model=tiny"], config_name="model_only").model)


def test_schema_rejects_wrong_types_at_composition():
    from omegaconf.errors import ValidationError

    with pytest.raises(Exception) as err:
        builder.compose(["model.n_layers=abc"])
    assert isinstance(err.value, ValidationError) or isinstance(err.value.__cause__, ValidationError)


def test_entry_point_registration(tmp_path, monkeypatch):
    """A third-party package registers a component through the hydraformer.components entry-point group."""
    import importlib.metadata
    import sys

    pkg = tmp_path / "thirdparty_hf"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from torch import nn\nfrom components import register\n\n"
        "@register('norm', 'scaled_identity', shared=('d_model',))\n"
        "class ScaledIdentity(nn.Module):\n"
        "    def __init__(self, d_model: int):\n"
        "        super().__init__()\n"
        "    def forward(self, x):\n"
        "        return x\n")
    dist = tmp_path / "thirdparty_hf-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-hf\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hydraformer.components]\nextra = thirdparty_hf\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    import components.registry as registry

    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "scaled_identity" in registry.names("norm")
    cfg = builder.compose(["model/norm=scaled_identity"])
    model = builder.build_model(cfg.model)
    assert type(model.blocks[0].norm_1).__name__ == "ScaledIdentity"
    b = builder.parameter_budget(cfg.model)
    assert b["check"]["agree"] is None  # no formula: counted on the meta device only
    sys.modules.pop("thirdparty_hf", None)
    registry._REGISTRY["norm"].pop("scaled_identity", None)
    assert importlib.metadata is not None
