"""Tensor parallelism (trainer=fsdp_cpu trainer.tensor_parallel=2: two real CPU processes over gloo splitting each
block's heads and MLP, builder/training/tensor_parallel.py): the losses of one process, checkpoints that load and
resume as any other, and the refusals of what it does not split."""

import pytest
import torch
from conftest import home_env, run_cli, train_run
from test_fsdp import SMALL, assert_same_params, losses, train, weights

import builder
from builder.config.checks import check_job
from builder.training.fsdp import FullyShardedStrategy
from components.attention import GroupedQueryAttention

# a Llama-shaped block: RMSNorm, rotary positions, SwiGLU, 4 query heads sharing 2 key/value heads
LLAMA = ["model=tinyllama_1b", "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.attention.n_kv_heads=2",
         "model.mlp.hidden=64", "model.context_length=32", "model.vocab_size=128"]
TP = ["trainer=fsdp_cpu", "trainer.tensor_parallel=2", "data.batch_size=4", "trainer.max_steps=4"]
ONE = ["trainer=cpu", "data.batch_size=4", "trainer.max_steps=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "tp")


def one_process(env, name, *overrides):
    """The same run in one process (trainer=cpu), in this interpreter: the reference."""
    return train_run(env, name, *SMALL, *ONE, *overrides)


@pytest.fixture(scope="module")
def tp_run(env):
    """A gelu GPT (4 heads) split over 2 processes: pure tensor parallelism (one data-parallel replica)."""
    return train(env, "tp", *TP, "model.n_heads=4")


# the weights after a few AdamW steps, against one process's: the split matmuls add in another order (seen: 4.4e-6)
ATOL = 1e-5


def assert_same_losses(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) == 4
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5), step


def test_two_tensor_parallel_processes_train_as_one_and_checkpoint_as_one(env, tp_run):
    out, proc = tp_run
    assert "Starting with 2 processes" in proc.stdout + proc.stderr and "Done: 4 steps" in proc.stdout
    single, _ = one_process(env, "single", "model.n_heads=4")
    assert_same_losses(losses(out), losses(single))
    # the checkpoint holds the q/k/v rows as built: it is any sharded checkpoint, read by builder.load_model
    step2 = out / "checkpoints" / "step-2.ckpt"
    assert_same_params(weights(step2, env["root"]), weights(single / "checkpoints" / "step-2.ckpt", env["root"]), ATOL)
    model, tokenizer, _ = builder.load_model(step2)
    reference, _, _ = builder.load_model(single / "checkpoints" / "step-2.ckpt")
    assert_same_params(model.state_dict(), reference.state_dict(), ATOL)
    assert model.blocks[0].attention.n_heads == 4  # (a loaded model computes every head)
    sample = run_cli("task=sample", f"checkpoint={out / 'checkpoints' / 'last.ckpt'}", "prompt=the",
                     "max_new_tokens=5", f"hydra.run.dir={env['root'] / 'sample'}", env=env["env"])
    assert sample.returncode == 0 and sample.stdout.startswith("the"), sample.stderr[-2000:]
    # the text sample and the attention probe (every head, gathered from both processes) were written once
    assert (out / "samples.txt").read_text().count("--- step 2 ---") == 1
    assert (out / "attention" / "patterns_step4.png").exists()


def test_a_tensor_parallel_checkpoint_resumes_to_the_uninterrupted_run_with_activation_checkpointing(env, tp_run):
    """Resumed with each block recomputed in the backward pass (what task=plan's tensor-parallel command launches),
    which changes no loss: the steps after the checkpoint are the uninterrupted run's."""
    out, _ = tp_run
    resumed, proc = train(env, "resumed", *TP, "model.n_heads=4", "train.activation_checkpointing=true",
                          f"ckpt_path={out / 'checkpoints' / 'step-2.ckpt'}")
    assert "Restoring states from the checkpoint path" in proc.stdout + proc.stderr
    a, r = losses(out), losses(resumed)
    assert sorted(r) == [2, 3]  # steps 3 and 4 only, as the uninterrupted run trained them
    for step in r:
        assert r[step] == pytest.approx(a[step], abs=1e-5), step
    assert_same_params(weights(resumed / "checkpoints" / "last.ckpt", env["root"]),
                       weights(out / "checkpoints" / "last.ckpt", env["root"]))


def test_a_llama_shaped_model_with_grouped_query_attention_trains_as_one(env):
    split, _ = train(env, "llama_tp", *TP, *LLAMA)
    single, _ = one_process(env, "llama_single", *LLAMA)
    assert_same_losses(losses(split), losses(single))
    assert_same_params(weights(split / "checkpoints" / "last.ckpt", env["root"]),
                       weights(single / "checkpoints" / "last.ckpt", env["root"]), ATOL)


def _count_held(rank: int, port: int, model_cfgs: list[dict], found) -> None:
    """One of two gloo processes: each model built split over both (as configure_model builds it); the parameters
    this process holds go into ``found[rank, i]``."""
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from builder.training.fsdp import build_sharded

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("data_parallel", "tensor_parallel"))
        for i, model_cfg in enumerate(model_cfgs):
            model = build_sharded(model_cfg, mesh["data_parallel"], torch.device("cpu"),
                                  tp_mesh=mesh["tensor_parallel"])
            found[rank, i] = sum(p.to_local().numel() for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_the_memory_estimate_holds_what_each_tensor_parallel_process_holds():
    """builder/memory.py's weights (so gradients and AdamW's moments) under tensor_parallel=2: exactly the parameters
    each of two real processes holds (attention and MLP split, embeddings, norms and row-wise biases whole)."""
    import socket

    import torch.multiprocessing as mp

    from builder.budget import parameter_budget
    from builder.config.plain import to_plain
    from builder.memory import training_memory

    cfgs = [to_plain(builder.compose(["model.d_model=32", "model.n_layers=2", *overrides]).model)
            for overrides in (["model.n_heads=4"], LLAMA)]  # a gelu GPT with biases; the Llama-shaped model
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    found = mp.Manager().dict()
    mp.spawn(_count_held, args=(port, cfgs, found), nprocs=2)
    for i, model_cfg in enumerate(cfgs):
        budget = parameter_budget(model_cfg)
        estimate = training_memory(budget, 1, 16, "32-true", shards=1, tensor_parallel=2)
        assert found[0, i] == found[1, i] == estimate["weights"] // 4 < budget["total_params"], i


def test_split_rows_give_each_process_its_query_heads_and_the_key_value_heads_they_read():
    attention = GroupedQueryAttention(d_model=8, n_heads=4, d_head=2, n_kv_heads=2)
    rows = attention.split_rows(2).view(2, -1)  # the two processes' rows of the fused q/k/v weight
    q, k, v = torch.arange(8).view(4, 2), 8 + torch.arange(4).view(2, 2), 12 + torch.arange(4).view(2, 2)
    assert rows[0].tolist() == torch.cat([q[0], q[1], k[0], v[0]]).tolist()  # query heads 0, 1 read kv head 0
    assert rows[1].tolist() == torch.cat([q[2], q[3], k[1], v[1]]).tolist()
    attention.keep_heads(2)
    assert (attention.n_heads, attention.n_kv_heads) == (2, 1)
    with pytest.raises(ValueError, match="do not divide"):
        GroupedQueryAttention(d_model=8, n_heads=4, d_head=2, n_kv_heads=1).split_rows(2)


@pytest.mark.parametrize("overrides, match", [
    (["trainer=ddp_cpu"], r"trainer.tensor_parallel=2 is not accepted: 1: only trainer.strategy=fsdp2"),
    (["trainer.devices=3"], r"trainer.tensor_parallel=2 is not accepted: a divisor of the 3 processes"),
    (["model=tiny_moe"], r"model.mlp='moe' is not accepted: one of gelu, relu, swiglu, geglu under trainer."
                         r"tensor_parallel=2: a mixture of experts"),
    (["model=deepseek_v3"], r"model.attention='latent' is not accepted: one of multi_head, grouped_query"),
    (["model.n_heads=1"], r"model.n_heads=1 is not accepted: a multiple of trainer.tensor_parallel=2"),
    (LLAMA[:-3] + ["model.attention.n_kv_heads=1"], r"model.attention.n_kv_heads=1 is not accepted: a multiple of"),
    (["model.mlp.hidden=33"], r"model.mlp.hidden=33 is not accepted: a multiple of trainer.tensor_parallel=2"),
    (["model.attention.sinks=true"], r"model.attention.sinks=True is not accepted: false under"),
])
def test_what_tensor_parallelism_does_not_split_is_refused_before_training(overrides, match):
    cfg = builder.compose(["trainer=fsdp_cpu", "trainer.tensor_parallel=2", *overrides])
    with pytest.raises(builder.ConfigError, match=match):
        check_job(cfg)


def test_the_cli_refuses_in_one_paragraph_with_status_2(tmp_path):
    proc = run_cli("trainer=fsdp_cpu", "trainer.tensor_parallel=2", "model=tiny_moe", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "model.mlp='moe' is not accepted" in proc.stderr + proc.stdout
    with pytest.raises(builder.ConfigError, match="checkpoint_format='full' is not accepted: sharded under trainer."
                       "tensor_parallel=2"):
        FullyShardedStrategy("full", tensor_parallel=2)

