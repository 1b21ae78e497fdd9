"""builder/training/loggers.py: loggers from names / Hydra config, offline wandb, tables, text and pictures."""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from builder.training import loggers as L

try:
    from wandb_offline import find_runs, isolate_wandb, load_table, metric, read_run, teardown_wandb
except ImportError:  # tests/ imported as a package
    from tests.wandb_offline import (
        find_runs,
        isolate_wandb,
        load_table,
        metric,
        read_run,
        teardown_wandb,
    )

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_wandb_auth(monkeypatch, tmp_path):
    """No WANDB_* variables, no API key, HOME without a .netrc."""
    home = tmp_path / "home"
    home.mkdir()
    isolate_wandb(monkeypatch, home, mode=None)
    L._sync_hint_shown.clear()
    yield home
    teardown_wandb()


# --------------------------------------------------------------------------
# import / mode decision
# --------------------------------------------------------------------------


def test_import_does_not_import_wandb():
    code = "import sys, builder.training.loggers; print('wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_wandb_mode_offline_without_key(no_wandb_auth):
    assert not L.has_wandb_credentials()
    assert L.wandb_mode() == "offline"


def test_wandb_mode_online_with_env_key(no_wandb_auth, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert L.wandb_mode() == "online"


def test_wandb_mode_netrc(no_wandb_auth, monkeypatch):
    netrc = no_wandb_auth / ".netrc"
    netrc.write_text("machine example.com\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    assert L.wandb_mode() == "offline"  # entry for another host
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert L.wandb_mode() == "online"
    # self-hosted server: the entry must match WANDB_BASE_URL's host
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert L.wandb_mode() == "offline"


def test_wandb_mode_netrc_default_forge_host(no_wandb_auth):
    # wandb 0.31's default server is the CoreWeave Forge proxy
    netrc = no_wandb_auth / ".netrc"
    netrc.write_text("machine api.forge.coreweave.com login user password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert L.wandb_mode() == "online"


def test_wandb_mode_env_and_override_win(no_wandb_auth, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert L.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert L.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert L.wandb_mode() == "disabled"
    assert L.wandb_mode("online") == "online"
    with pytest.raises(ValueError, match="did you mean 'offline'"):
        L.wandb_mode("ofline")


# --------------------------------------------------------------------------
# construction / errors
# --------------------------------------------------------------------------


def test_unknown_logger_name(tmp_path):
    with pytest.raises(ValueError) as err:
        L.make_loggers(["csv", "wnadb"], tmp_path)
    msg = str(err.value)
    assert "logger" in msg
    assert "'wnadb'" in msg
    for name in L.LOGGER_NAMES:
        assert name in msg
    assert "did you mean 'wandb'" in msg

    with pytest.raises(ValueError, match="did you mean 'tensorboard'"):
        L.make_loggers_from_config({"tensorbord": {}}, tmp_path)


def test_names_normalised_and_deduplicated(no_wandb_auth, tmp_path):
    loggers = L.make_loggers(["CSV", "csv", "tensorboard"], tmp_path / "run")
    assert [type(lg) for lg in loggers] == [CSVLogger, TensorBoardLogger]
    assert Path(loggers[0].log_dir).resolve() == (tmp_path / "run" / "csv").resolve()
    assert Path(loggers[1].log_dir).resolve() == (tmp_path / "run" / "tensorboard").resolve()
    assert L.make_loggers([], tmp_path) == []
    assert L.make_loggers(None, tmp_path) == []


def test_loggers_write_nothing_until_the_config_is_logged(no_wandb_auth, tmp_path):
    """What task=train relies on to leave no logger folder behind when it refuses a run after making its loggers
    (train.skip_nonfinite once the Trainer has counted devices=auto)."""
    run = tmp_path / "run"
    loggers = L.make_loggers(["csv", "tensorboard"], run, config={"seed": 3}, hparams_now=False)
    assert not (run / "csv").exists() and not (run / "tensorboard").exists()
    L.log_config(loggers, {"seed": 3})
    assert "seed: 3" in (run / "csv" / "hparams.yaml").read_text()
    assert loggers[1].hparams == {"seed": 3}  # tensorboard keeps them until it saves
    eager = L.make_loggers(["csv"], tmp_path / "eager", config={"seed": 3})  # the default: written at once
    assert (tmp_path / "eager" / "csv" / "hparams.yaml").exists() and len(eager) == 1


def test_tensorboard_missing_is_explained(tmp_path, monkeypatch):
    real = L.importlib.util.find_spec
    monkeypatch.setattr(
        L.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
        L.make_loggers(["tensorboard"], tmp_path)


def test_finish_wandb_without_run():
    assert L.finish_wandb() is False


# --------------------------------------------------------------------------
# a real Trainer with wandb (offline) + csv
# --------------------------------------------------------------------------


class TinyModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def test_trainer_offline_wandb_and_csv(no_wandb_auth, tmp_path, caplog):
    save_dir = tmp_path / "hydra_run"
    cfg = {"model": {"d_model": 8}, "optim": {"lr": 0.1}}
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        loggers = L.make_loggers(["wandb", "csv"], save_dir, group="sweep-1", run_name="tiny", config=cfg)
    wb, csv_logger = loggers
    assert isinstance(wb, WandbLogger) and isinstance(csv_logger, CSVLogger)
    assert "wandb sync" in caplog.text and str(save_dir / "wandb") in caplog.text

    trainer = pl.Trainer(
        max_steps=3,
        logger=loggers,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    assert L.wandb_run_dir(loggers) is None  # not started yet, and not started by asking
    trainer.fit(TinyModule())
    run_dir = L.wandb_run_dir(loggers)
    assert run_dir and Path(run_dir).parent == (save_dir / "wandb").resolve()
    assert Path(run_dir).name.startswith("offline-run-")
    assert L.finish_wandb() is True
    assert L.finish_wandb() is False
    assert time.monotonic() - start < 30

    # csv
    metrics_csv = save_dir / "csv" / "metrics.csv"
    assert metrics_csv.is_file()
    with metrics_csv.open() as f:
        csv_losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert len(csv_losses) == 3

    # wandb: the offline run lives inside save_dir and holds the same values
    (path,) = find_runs(save_dir)
    assert path.is_relative_to(save_dir.resolve())
    run = read_run(path)
    assert run["run"]["project"] == "hydraformer"
    assert run["run"]["group"] == "sweep-1"
    assert run["run"]["name"] == "tiny"
    assert run["config"]["model"] == {"d_model": 8}
    assert metric(run, "train/loss") == csv_losses
    assert metric(run, "trainer/global_step") == [0, 1, 2]
    assert run["exit_code"] == 0


# --------------------------------------------------------------------------
# Hydra composition of conf/logger
# --------------------------------------------------------------------------


@pytest.fixture
def conf_dir(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf" / "logger", conf / "logger")
    (conf / "config.yaml").write_text("defaults:\n  - logger: wandb\n  - _self_\n")
    return conf


def _compose(conf_dir, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        return compose("config", overrides=overrides)


def test_hydra_logger_group_composition(conf_dir):
    from omegaconf import OmegaConf

    cfg = _compose(conf_dir, [])
    assert list(cfg.logger) == ["wandb"]
    assert cfg.logger.wandb.project == "hydraformer"
    assert cfg.logger.wandb.mode is None

    cfg = _compose(conf_dir, ["logger=[wandb,csv]"])
    assert list(cfg.logger) == ["wandb", "csv"]

    cfg = _compose(conf_dir, ["logger=[wandb,csv,tensorboard]", "logger.wandb.group=g1"])
    assert list(cfg.logger) == ["wandb", "csv", "tensorboard"]
    assert cfg.logger.wandb.group == "g1"

    assert list(_compose(conf_dir, ["logger=csv"]).logger) == ["csv"]
    assert "logger" not in OmegaConf.to_container(_compose(conf_dir, ["~logger"]))


def test_make_loggers_from_composed_config(conf_dir, no_wandb_auth, tmp_path):
    cfg = _compose(
        conf_dir,
        ["logger=[wandb,csv]", "logger.wandb.mode=disabled", "logger.wandb.tags=[a,b]"],
    )
    loggers = L.make_loggers_from_config(cfg.logger, tmp_path / "out", config=cfg)
    wb, csv_logger = loggers
    assert isinstance(wb, L.OfflineFallbackWandbLogger) and isinstance(csv_logger, CSVLogger)
    assert wb._wandb_init["mode"] == "disabled"
    assert wb._wandb_init["tags"] == ["a", "b"]
    assert wb._wandb_init["project"] == "hydraformer"
    assert wb._wandb_init["dir"] == str((tmp_path / "out").resolve())
    assert wb._wandb_init["config"]["logger"]["wandb"]["tags"] == ["a", "b"]

    cfg = _compose(conf_dir, ["logger=[wandb,csv]", "logger.wandb=null"])
    assert [type(lg) for lg in L.make_loggers_from_config(cfg.logger, tmp_path)] == [CSVLogger]
    assert L.make_loggers_from_config(None, tmp_path) == []


# --------------------------------------------------------------------------
# tables / text / images
# --------------------------------------------------------------------------


def test_media_helpers(no_wandb_auth, tmp_path):
    from PIL import Image

    save_dir = tmp_path / "media_run"
    loggers = L.make_loggers(["wandb", "csv", "tensorboard"], save_dir, wandb_mode="offline")
    wb, csv_logger, tb = loggers

    columns = ["component", "params", "share"]
    rows = [["embedding", 4096, 0.25], ["blocks", np.int64(12288), np.float64(0.75)]]
    L.log_table(loggers, "budget/table", columns, rows)
    L.log_text(loggers, "samples", ["prompt", "completion"], [["Hi", "there | you"]], step=3)

    img = (np.arange(8 * 8 * 3).reshape(8, 8, 3) % 256).astype(np.uint8)
    png = tmp_path / "chart.png"
    Image.fromarray(img).save(png)
    L.log_image(loggers, "budget/chart", png)
    L.log_image(loggers, "attention/patterns", png, step=5, caption="step 5")
    with pytest.raises(ValueError, match="row 0"):
        L.log_table(loggers, "bad", ["a", "b"], [[1]])

    tb.experiment.flush()
    L.finish_wandb()

    # csv side files
    csv_dir = Path(csv_logger.log_dir)
    with (csv_dir / "tables" / "budget" / "table.csv").open() as f:
        assert list(csv.reader(f)) == [
            columns,
            ["embedding", "4096", "0.25"],
            ["blocks", "12288", "0.75"],
        ]
    assert (csv_dir / "text" / "samples_step3.csv").is_file()
    assert (csv_dir / "images" / "budget" / "chart.png").read_bytes() == png.read_bytes()
    assert (csv_dir / "images" / "attention" / "patterns_step5.png").read_bytes() == png.read_bytes()

    # wandb: table data and image references
    run = read_run(find_runs(save_dir)[0])
    assert load_table(run, "budget/table") == {
        "columns": columns,
        "data": [["embedding", 4096, 0.25], ["blocks", 12288, 0.75]],
    }
    assert load_table(run, "samples")["data"] == [["Hi", "there | you"]]
    chart, patterns = run["summary"]["budget/chart"], run["summary"]["attention/patterns"]
    assert chart["_type"] == "images/separated" and chart["count"] == 1 and (chart["width"], chart["height"]) == (8, 8)
    assert patterns["captions"] == ["step 5"]
    (image_row,) = [r for r in run["history"] if "attention/patterns" in r]
    assert image_row["trainer/global_step"] == 5
    (text_row,) = [r for r in run["history"] if "samples" in r]
    assert text_row["trainer/global_step"] == 3

    # tensorboard: text and image summaries
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb.log_dir), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"budget/table/text_summary", "samples/text_summary"} <= set(tags["tensors"])
    assert {"budget/chart", "attention/patterns"} <= set(tags["images"])


def test_multirun_jobs_get_separate_runs(no_wandb_auth, tmp_path):
    """Hydra multirun: one process, several jobs; finish_wandb() between them."""
    ids = []
    for job in range(2):
        save_dir = tmp_path / "multirun" / str(job)
        loggers = L.make_loggers(["wandb"], save_dir, group="sweep", run_name=f"job{job}")
        trainer = pl.Trainer(
            max_steps=2,
            logger=loggers,
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(TinyModule())
        assert L.finish_wandb()
        (path,) = find_runs(save_dir)
        run = read_run(path)
        assert run["run"]["name"] == f"job{job}"
        assert len(metric(run, "train/loss")) == 2
        ids.append(run["run"]["id"])
    assert ids[0] != ids[1]
    assert "WANDB_MODE" not in __import__("os").environ  # WandbLogger(offline=True) would set it


def test_online_init_failure_falls_back_offline(no_wandb_auth, tmp_path, monkeypatch):
    import wandb
    from wandb.errors import CommError

    real_init = wandb.init
    modes = []

    def fake_init(*args, **kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":
            raise CommError("Timed out while retrying: no network")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    # a server that accepts connections (so the 2-second reachability probe passes) but whose init fails
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    (wb,) = L.make_loggers(["wandb"], tmp_path, wandb_mode=None)
    server.close()
    assert wb._wandb_init["mode"] == "online"
    with pytest.warns(UserWarning, match="continuing offline"):
        wb.log_metrics({"train/loss": 1.5}, step=0)
    wb.log_metrics({"train/loss": 0.5}, step=1)
    L.finish_wandb()
    assert modes == ["online", "offline"]
    assert metric(read_run(find_runs(tmp_path)[0]), "train/loss") == [1.5, 0.5]

    (plain,) = L.make_loggers(["wandb"], tmp_path / "b", options={"wandb": {"offline_fallback": False}})
    assert type(plain) is WandbLogger
