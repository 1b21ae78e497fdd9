"""The LightningModule's parts in process: schedule, weight-decay groups, FSDP wrapping, bad training input."""

import math

import pytest

import builder
from builder.lit import LitGPT, lr_lambda, no_decay_names

TRAIN = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8,
         "fused_optimizer": True, "compile": False}


def test_warmup_then_cosine():
    assert lr_lambda(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_lambda(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_norms_embeddings():
    cfg = builder.compose(["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.vocab_size=20"])
    module = LitGPT(dict(cfg.model), TRAIN, None, total_steps=100)
    skip = no_decay_names(module.model)
    assert "token_embedding.weight" in skip and "positions.table.weight" in skip
    assert "blocks.0.norm_1.weight" in skip and "blocks.0.attention.qkv.bias" in skip
    assert "blocks.0.attention.qkv.weight" not in skip and "blocks.0.mlp.fc.weight" not in skip
    opt = module.configure_optimizers()["optimizer"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in module.parameters())
    assert all(p.ndim == 2 for p in decayed["params"])


def test_fsdp_preset_wraps_each_block():
    from pytorch_lightning.strategies import FSDPStrategy

    from builder.train import make_strategy
    from components import Block

    cfg = builder.compose(["trainer=fsdp"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == -1
    strategy = make_strategy(dict(cfg.trainer), None)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}


@pytest.mark.parametrize("preset", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp"])
def test_trainer_presets_compose(preset):
    cfg = builder.compose([f"trainer={preset}"])
    assert cfg.trainer.accelerator in ("cpu", "gpu") and cfg.trainer.max_steps > 0


BAD_TRAIN = [
    (["data=text", "data.path=/nonexistent/corpus.txt"], ["data.path", "/nonexistent/corpus.txt"]),
    (["train.sample_prompt='\u6f22'"], ["train.sample_prompt", "\u6f22", "tokenizer"]),
    (["ckpt_path=/nonexistent.ckpt"], ["ckpt_path", "/nonexistent.ckpt", "existing checkpoint"]),
    (["data.tokenizer=bpe"], ["data.tokenizer", "bpe", "byte_bpe"]),
    (["logger=wnadb"], ["logger", "wnadb", "wandb"]),
]


@pytest.mark.parametrize("overrides,words", BAD_TRAIN, ids=[o[-1] for o, _ in BAD_TRAIN])
def test_bad_training_input(tmp_path, cli, overrides, words):
    out = tmp_path / "run"
    proc = cli(*overrides, "logger=csv" if "logger" not in overrides[0] else overrides[0], f"hydra.run.dir={out}",
               env={"HYDRAFORMER_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr[-2000:])
    assert not out.exists()
