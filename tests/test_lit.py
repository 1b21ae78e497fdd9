"""The LightningModule's parts in process: schedule, weight-decay groups, FSDP wrapping, bad training input."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO

import builder
from builder.training.module import LitGPT, lr_lambda, no_decay_names

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
    assert opt.defaults["fused"] is True  # fused AdamW on CPU too
    foreach = LitGPT(dict(cfg.model), {**TRAIN, "fused_optimizer": False}, None, total_steps=100)
    assert foreach.configure_optimizers()["optimizer"].defaults["foreach"] is True


def test_fsdp_preset_is_fsdp2_in_bf16():
    """trainer=fsdp takes the path trainer=fsdp_cpu's two-process tests run (tests/test_fsdp.py), on every GPU."""
    from builder.config.checks import check_job
    from builder.tasks.train import make_strategy
    from builder.training.fsdp import FullyShardedStrategy

    cfg = builder.compose(["trainer=fsdp"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == -1 and cfg.trainer.accelerator == "gpu"
    strategy = make_strategy(dict(cfg.trainer), None)
    assert isinstance(strategy, FullyShardedStrategy) and strategy.checkpoint_format == "sharded"
    with pytest.raises(builder.ConfigError, match=r"trainer.precision='16-mixed'.*bf16-mixed.*loss scaler"):
        check_job(builder.compose(["trainer=fsdp", "trainer.precision=16-mixed"]))  # TrainerConfig's rule


def test_lightning_fsdp_strategy_still_wraps_each_block():
    from pytorch_lightning.strategies import FSDPStrategy

    from builder.tasks.train import make_strategy
    from components import Block

    strategy = make_strategy({"strategy": "fsdp", "precision": "bf16-mixed"}, None)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}


class _NormAfterClipping(LitGPT):
    """Records the gradient norm the optimizer is handed, after our clipping hook ran."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed+scaler"])
def test_gradients_are_clipped_with_the_fused_optimizer(precision):
    """Lightning refuses to clip for a fused optimizer under mixed precision; our hook clips when no
    loss scaler is involved, and with a loss scaler (fp16; scaled gradients) AdamW stays foreach."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.precision import MixedPrecision
    from torch.utils.data import DataLoader, TensorDataset

    fused = precision != "16-mixed+scaler"
    # Lightning runs "16-mixed" as bf16 on a CPU; the plugin below is fp16 with a real GradScaler, as on a GPU
    plugin = {} if fused else {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}

    cfg = builder.compose(["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.vocab_size=20",
                           "model.context_length=8"])
    module = _NormAfterClipping(dict(cfg.model), TRAIN, None, total_steps=3)
    module.norms = []
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 20, (12, 8), generator=g), torch.randint(0, 20, (12, 8), generator=g))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, gradient_clip_val=1e-3,
                         **({"precision": precision} if fused else plugin),
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert bool(trainer.optimizers[0].defaults["fused"]) is fused
    assert len(module.norms) == 3 and max(module.norms) <= 1e-3 * 1.001, module.norms


@pytest.mark.parametrize("preset", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp"])
def test_trainer_presets_compose(preset):
    cfg = builder.compose([f"trainer={preset}"])
    assert cfg.trainer.accelerator in ("cpu", "gpu") and cfg.trainer.max_steps > 0


BAD_TRAIN = [
    (["data=text", "data.path=/nonexistent/corpus.txt"], ["data.path", "/nonexistent/corpus.txt"]),
    (["data=text"], ["data.path is required when data.source='text'"]),
    (["callbacks.text_samples.prompt='\u6f22'"], ["callbacks.text_samples.prompt", "\u6f22", "tokenizer"]),
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


def test_bad_model_and_data_settings_are_refused_before_lightning_is_imported(tmp_path):
    """task=train refuses a model, data, train or trainer value before it imports Lightning (seconds of start-up): one fresh
    interpreter runs run.py once per bad value and says after each whether Lightning has been imported."""
    bad = {"model.n_heads=5": "a divisor of model.d_model", "data.tokenizer=bpe": "byte_bpe",
           "data.val_fraction=2": "a number >= 0 and < 1", "data.batch_size=0": "an integer > 0",
           "train.lr=0": "a number > 0", "train.min_lr=0.01": "from 0 to train.lr (0.001)",
           "trainer.val_check_interval=1.5": "fraction of each epoch", "trainer.max_steps=-5": "an integer >= -1"}
    script = ("import runpy, sys\n"
              f"for override in {list(bad)!r}:\n"
              f"    sys.argv = ['run.py', override, 'hydra.run.dir={tmp_path / 'run'}']\n"
              "    try:\n"
              "        runpy.run_path('run.py', run_name='__main__')\n"
              "    except SystemExit as stop:\n"
              "        print(override, 'exit', stop.code, 'lightning imported:', 'pytorch_lightning' in sys.modules)\n"
              "        print('---', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == [f"{o} exit 2 lightning imported: False" for o in bad], proc.stderr[-3000:]
    for (override, words), err in zip(bad.items(), proc.stderr.split("---\n")):
        key, value = override.split("=")
        assert f"{key}={value}" in err.replace("'", "") and words in err, err
    assert not (tmp_path / "run").exists()


def test_no_checkpoint_is_written_of_an_optimizer_state_that_is_not_finite(tmp_path):
    """An update can overflow AdamW's second moment (a gradient past 1.8e19 squares to inf) and leave the weights
    finite: that weight then never moves again. A save checks the optimizer's state with the weights: refused, the
    moment named, nothing written."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from builder.errors import NonFiniteLossError

    cfg = builder.compose(["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.vocab_size=20",
                           "model.context_length=8"])
    module = LitGPT(dict(cfg.model), TRAIN, None, total_steps=2)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 20, (8, 8), generator=g), torch.randint(0, 20, (8, 8), generator=g))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "finite.ckpt")
    optimizer = trainer.optimizers[0]
    param = optimizer.param_groups[0]["params"][1]
    optimizer.state[param]["exp_avg_sq"].view(-1)[0] = float("inf")
    assert all(torch.isfinite(p).all() for p in module.parameters())
    with pytest.raises(NonFiniteLossError, match=r"the optimizer's state is no longer finite at step 2 "
                                                 r"\(optimizer_states\[0\]\.state\[\d+\]\.exp_avg_sq holds NaN or inf"):
        trainer.save_checkpoint(tmp_path / "overflowed.ckpt")
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["finite.ckpt"]
