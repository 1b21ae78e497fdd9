"""FSDP2 (trainer=fsdp_cpu: torch's fully_shard under Lightning's ModelParallelStrategy) through run.py: two real
CPU processes over gloo, the model built sharded, sharded and full checkpoints, a resume."""

import csv
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import home_env, train_run
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import builder
from builder.checkpoint import is_sharded_checkpoint
from builder.config.plain import to_plain
from builder.config.schema import TrainerConfig
from builder.config.spec import check
from builder.tasks.train import make_strategy
from builder.training.fsdp import FullyShardedStrategy

SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.context_length=32",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
         "callbacks.throughput.window=2", "callbacks.text_samples.prompt=the ", "callbacks.text_samples.max_new_tokens=8",
         "callbacks.attention_probe.text=the cat sat", "logger=csv", "train.warmup_steps=0", "train.total_steps=4",
         "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return home_env(tmp_path_factory, "fsdp")


def train(env, name, *overrides):
    """Two real processes (a test about processes: run_cli's fresh interpreter, not the pytest process)."""
    return train_run(env, name, *SMALL, *overrides, fresh=True)


def weights(ckpt: Path, tmp: Path) -> dict:
    """A checkpoint's model weights: a file, or a sharded directory gathered into one file first."""
    if ckpt.is_dir():
        dcp_to_torch_save(ckpt, tmp / f"{ckpt.parent.parent.name}_{ckpt.name}.pt")
        ckpt = tmp / f"{ckpt.parent.parent.name}_{ckpt.name}.pt"
    return torch.load(ckpt, weights_only=True)["state_dict"]


def assert_same_params(a: dict, b: dict, atol: float = 2e-6) -> None:
    # a sharded state dict names a tied weight once (token_embedding.weight for unembedding.weight too)
    assert set(a) - {"model.unembedding.weight"} == set(b) - {"model.unembedding.weight"}
    for k in set(a) & set(b):
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def losses(run_dir: Path) -> dict[int, float]:
    rows = csv.DictReader(open(next(run_dir.glob("csv/**/metrics.csv"))))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


@pytest.fixture(scope="module")
def fsdp_run(env):
    """Two processes, batch 4 each, four steps, sharded checkpoints at steps 2 and 4."""
    return train(env, "fsdp", "trainer=fsdp_cpu", "data.batch_size=4", "trainer.max_steps=4")


def test_two_fsdp_processes_equal_one_process_with_double_batch(env, fsdp_run):
    out, proc = fsdp_run
    assert "Starting with 2 processes" in proc.stdout + proc.stderr and "Done: 4 steps" in proc.stdout
    step2 = out / "checkpoints" / "step-2.ckpt"
    assert is_sharded_checkpoint(step2) and is_sharded_checkpoint(out / "checkpoints" / "last.ckpt")
    assert len(list(step2.glob("*.distcp"))) == 2  # one shard file per process
    single, _ = train(env, "single", "trainer=cpu", "data.batch_size=8", "trainer.max_steps=2")
    assert_same_params(weights(step2, env["root"]), weights(single / "checkpoints" / "last.ckpt", env["root"]))
    # builder.load_model (task=sample, export ...) reads the sharded directory itself, in one process
    model, tokenizer, _ = builder.load_model(step2)
    reference, reference_tokenizer, _ = builder.load_model(single / "checkpoints" / "last.ckpt")
    assert_same_params(model.state_dict(), reference.state_dict())
    assert model.unembedding.weight is model.token_embedding.weight
    assert tokenizer.encode("the cat") == reference_tokenizer.encode("the cat")
    # the sample and the attention probe ran with both processes taking part, written once
    assert (out / "samples.txt").read_text().count("--- step 2 ---") == 1
    assert (out / "attention" / "patterns_step2.png").exists() and (out / "attention" / "patterns_step4.png").exists()


def test_sharded_checkpoint_resumes_to_the_uninterrupted_run_and_saves_full(env, fsdp_run):
    out, _ = fsdp_run
    resumed, proc = train(env, "resumed", "trainer=fsdp_cpu", "data.batch_size=4", "trainer.max_steps=4",
                          "trainer.checkpoint_format=full", f"ckpt_path={out / 'checkpoints' / 'step-2.ckpt'}")
    assert "Restoring states from the checkpoint path" in proc.stdout + proc.stderr
    last = resumed / "checkpoints" / "last.ckpt"
    assert last.is_file()  # full: one file, gathered on process 0
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4
    assert_same_params(ckpt["state_dict"], weights(out / "checkpoints" / "last.ckpt", env["root"]))
    a, r = losses(out), losses(resumed)
    assert len(r) == 2 and len(a) == 4  # the resumed run trained steps 3 and 4 only
    for step in r:
        assert r[step] == pytest.approx(a[step], abs=1e-5), step
    model, tokenizer, _ = builder.load_model(last)  # what task=sample and task=export read
    assert model(torch.tensor([tokenizer.encode("the cat")])).shape[-1] == tokenizer.vocab_size


def test_the_gpu_fsdp_preset_trains_in_bf16_on_two_cpu_processes(env, fsdp_run):
    """trainer=fsdp is the GPUs' preset (bf16-mixed: gathered and computed in bf16, reduced in fp32); here on two
    CPU processes: it trains, its shards stay fp32, and its losses follow fp32's (fsdp_run: the same seed)."""
    out, proc = train(env, "fsdp_bf16", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                      "data.batch_size=4", "trainer.max_steps=4")
    assert "Starting with 2 processes" in proc.stdout + proc.stderr and "Done: 4 steps" in proc.stdout
    assert "precision: bf16-mixed" in (out / "config.yaml").read_text()
    model, _, _ = builder.load_model(out / "checkpoints" / "last.ckpt")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    bf16, fp32 = losses(out), losses(fsdp_run[0])
    assert bf16.keys() == fp32.keys() and bf16 != fp32  # computed in bf16: close, not equal
    for step in bf16:
        assert bf16[step] == pytest.approx(fp32[step], abs=0.05), step


def test_fsdp_cpu_preset_and_checkpoint_format():
    cfg = builder.compose(["trainer=fsdp_cpu"])
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 2
    kwargs = dict(cfg.trainer)
    strategy = make_strategy(kwargs, None)
    assert isinstance(strategy, FullyShardedStrategy) and strategy.checkpoint_format == "sharded"
    assert "checkpoint_format" not in kwargs  # not a Trainer argument
    assert make_strategy({**cfg.trainer, "checkpoint_format": "full"}, None)._save_distributed_checkpoint is False
    # the rules live in the declaration (builder/config/schema.py TrainerConfig), checked once per job
    with pytest.raises(builder.ConfigError, match="trainer.checkpoint_format"):
        check(TrainerConfig, {**cfg.trainer, "checkpoint_format": "zip"}, "trainer")
    with pytest.raises(builder.ConfigError, match="only trainer.strategy=fsdp2"):
        check(TrainerConfig, {"strategy": "ddp", "checkpoint_format": "full"}, "trainer")
    with pytest.raises(builder.ConfigError, match="trainer.precision='16-mixed'.*under trainer.strategy=fsdp2"):
        check(TrainerConfig, {**cfg.trainer, "precision": "16-mixed"}, "trainer")


def test_the_finite_check_reads_every_weight_of_a_real_sharded_checkpoint(fsdp_run, tmp_path):
    from builder.checkpoint import _sharded_weights, nonfinite_weights

    step2 = fsdp_run[0] / "checkpoints" / "step-2.ckpt"
    assert nonfinite_weights(step2) is None
    read = dict(_sharded_weights(step2, "ckpt_path"))
    assert_same_params(read, weights(step2, tmp_path))


def test_a_damaged_sharded_checkpoint_is_refused_by_name(env, fsdp_run, tmp_path):
    out, _ = fsdp_run
    broken = tmp_path / "step-2.ckpt"
    shutil.copytree(out / "checkpoints" / "step-2.ckpt", broken)
    shard = sorted(broken.glob("*.distcp"))[1]
    shard.write_bytes(shard.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(builder.ConfigError, match=r"checkpoint=.*step-2.ckpt.*every shard file present and whole"):
        builder.load_model(broken)
    shard.unlink()
    with pytest.raises(builder.ConfigError, match=r"every shard file present and whole.*__1_0.distcp"):
        builder.load_model(broken)
    (broken / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(builder.ConfigError, match=r"holds only torch distributed checkpoint's metadata.*\.metadata was "
                       "refused"):
        builder.load_model(broken)


def write_sharded(path: Path, state: dict, model_cfg: dict, step: int, optimizer: dict | None = None) -> Path:
    """A sharded checkpoint as fsdp2 writes one (torch distributed checkpoint's shards and .metadata, Lightning's
    meta.pt), from one process; ``optimizer``: its optimizer's state, {parameter name: {exp_avg: ..., ...}}."""
    from torch.distributed.checkpoint import FileSystemWriter, save

    with warnings.catch_warnings():  # torch warns that it writes from one process: what we ask of it
        warnings.simplefilter("ignore", UserWarning)
        save({"state_dict": state, **({"optimizer_0": {"state": optimizer}} if optimizer else {})},
             storage_writer=FileSystemWriter(path), no_dist=True)
    torch.save({"hyper_parameters": {"model": model_cfg}, "global_step": step}, path / "meta.pt")
    return path


def test_sharded_weights_that_are_not_finite_are_found_shard_by_shard(tmp_path):
    """A sharded checkpoint is read one tensor at a time for the finite check: ckpt_path=last passes over one with
    a NaN or inf for the newest whose weights are finite, and ckpt_path=THAT_DIRECTORY is refused, naming it."""
    from builder.checkpoint import nonfinite_weights
    from builder.tasks.train import check_sharded_resumable, find_checkpoint

    model_cfg = to_plain(builder.compose(SMALL[:4]).model)
    state = {f"model.{k}": v.clone() for k, v in builder.build_model(model_cfg).state_dict().items()}
    ckpts = tmp_path / "run" / "checkpoints"
    good = write_sharded(ckpts / "step-2.ckpt", state, model_cfg, 2)
    state["model.blocks.1.mlp.proj.weight"][3, 4] = float("inf")
    bad = write_sharded(ckpts / "last.ckpt", state, model_cfg, 4)
    assert is_sharded_checkpoint(good) and is_sharded_checkpoint(bad)
    assert nonfinite_weights(good) is None
    assert nonfinite_weights(bad) == "model.blocks.1.mlp.proj.weight"
    assert find_checkpoint("last", tmp_path / "run") == str(good)
    with pytest.raises(builder.ConfigError, match=r"ckpt_path=.*last.ckpt.*is not accepted: a checkpoint whose "
                                                  r"weights and optimizer state are finite: "
                                                  r"model.blocks.1.mlp.proj.weight holds NaN"):
        check_sharded_resumable(bad, model_cfg, FullyShardedStrategy())
    # an optimizer state that overflowed (the weights finite): refused too, named as the index names it
    state["model.blocks.1.mlp.proj.weight"][3, 4] = 0.0
    moments = {name: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)} for name, v in state.items()}
    assert nonfinite_weights(write_sharded(tmp_path / "fine.ckpt", state, model_cfg, 4, moments)) is None
    moments["model.blocks.0.mlp.fc.weight"]["exp_avg_sq"][1, 2] = float("inf")
    overflowed = write_sharded(tmp_path / "overflowed.ckpt", state, model_cfg, 4, moments)
    with pytest.raises(builder.ConfigError, match=r"optimizer_0.state.model.blocks.0.mlp.fc.weight.exp_avg_sq holds "):
        check_sharded_resumable(overflowed, model_cfg, FullyShardedStrategy())


def test_a_sharded_save_killed_between_its_renames_is_finished_and_other_staging_removed(tmp_path):
    """fsdp2 writes ``.NAME.tmp``, renames NAME to ``.NAME.old``, ``.NAME.tmp`` to NAME, removes ``.NAME.old``.
    Killed between the two renames, the new checkpoint is whole in ``.NAME.tmp``: put in place. Killed while
    writing, ``.NAME.tmp`` is removed and NAME, whole, stays."""
    from builder.training.fsdp import clear_staging

    ckpts = tmp_path / "checkpoints"
    for name, marker in ((".last.ckpt.old", "step 2"), (".last.ckpt.tmp", "step 4"), ("step-6.ckpt", "step 6"),
                         (".step-6.ckpt.tmp", "half"), (".notes.tmp", "not ours")):
        (ckpts / name).mkdir(parents=True)
        (ckpts / name / "meta.pt").write_text(marker)
    removed = clear_staging(ckpts)
    assert sorted(p.name for p in removed) == [".last.ckpt.old", ".step-6.ckpt.tmp"]
    assert {p.name: (p / "meta.pt").read_text() for p in ckpts.iterdir()} == {
        "last.ckpt": "step 4", "step-6.ckpt": "step 6", ".notes.tmp": "not ours"}
