"""On a CUDA GPU: bf16 training through run.py, torch.compile, capture and sampling on cuda, FSDP on one GPU.

These need a GPU, so CI (which has none) skips them; ``benchmarks/gpu_check.sh`` runs them on a GPU machine
(``pytest -m gpu``), beside the throughput benchmarks.
"""

import json

import pytest
import torch
from conftest import home_env, train_run

import builder
from builder.generate import generate

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")]

SMALL = ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.context_length=64",
         "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5", "train.warmup_steps=5",
         "callbacks.attention_probe.text=the cat sat on the mat", "callbacks.text_samples.prompt=the "]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "gpu")


def train(env, name, *overrides):
    """In a new interpreter: CUDA, compiled kernels and a process group (FSDP) of their own, as CI has never run
    these trainings inside a pytest process on a GPU (run_cli's ``fresh``)."""
    return train_run(env, name, *SMALL, *overrides, fresh=True)


def test_bf16_training_on_one_gpu(env):
    out, proc = train(env, "bf16", "trainer=gpu", "trainer.max_steps=60", "trainer.val_check_interval=30",
                      "logger=[wandb,csv]", "train.lr=3e-3")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["val_loss"] < 2.0  # the repeated corpus is learnable in 60 steps
    assert "bf16-mixed" in (out / "config.yaml").read_text()
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_compiled_training_on_one_gpu(env):
    out, proc = train(env, "compile", "trainer=gpu", "trainer.max_steps=20", "trainer.val_check_interval=20",
                      "train.compile=true", "logger=csv")
    assert "Done: 20 steps" in proc.stdout


def test_fsdp_on_one_gpu(env):
    out, proc = train(env, "fsdp", "trainer=fsdp", "trainer.devices=1", "trainer.max_steps=10",
                      "trainer.val_check_interval=10", "logger=csv")
    assert (out / "checkpoints").is_dir() and "Done: 10 steps" in proc.stdout


def test_capture_and_sampling_on_cuda():
    torch.manual_seed(0)
    cfg = builder.compose(["model=llama2_7b", "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
                           "model.attention.n_kv_heads=2", "model.mlp.hidden=128", "model.vocab_size=100",
                           "model.context_length=64"]).model
    model = builder.build_model(cfg).cuda().eval()
    ids = torch.randint(0, 100, (2, 16), device="cuda")
    with torch.no_grad():
        fused = model(ids)
        with builder.capture_attention(model) as rec:
            explicit = model(ids)
    torch.testing.assert_close(explicit, fused, atol=1e-4, rtol=1e-4)
    assert rec.pattern(0).device.type == "cpu" or rec.pattern(0).is_cuda
    out = generate(model, ids, 20, temperature=0.0)
    assert out.shape == (2, 36) and out.is_cuda
    assert torch.equal(generate(model, ids, 20, temperature=0.0, compile=True), out)  # the compiled decoding step
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert generate(model, ids, 8, temperature=0.8).shape == (2, 24)
