"""The training progress bar counts the run's optimizer steps (builder/training/progress_bar.py, the one module that
overrides RichProgressBar's private methods): through a real Trainer, with gradient accumulation and a resume."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from builder.training.progress_bar import StepProgressBar


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        return DataLoader(data, batch_size=4)  # 16 batches an epoch


class _Seen(pl.Callback):
    """What the bar's training task shows after each batch: (completed, total, description)."""

    def __init__(self, bar: StepProgressBar) -> None:
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, *args) -> None:
        task = self.bar.progress.tasks[self.bar.train_progress_bar_id]
        self.seen.append((task.completed, task.total, task.description))


def _fit(tmp_path, ckpt_path=None, **trainer_args):
    bar = StepProgressBar()
    seen = _Seen(bar)
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[bar, seen], logger=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, **trainer_args)
    trainer.fit(_Regression(), ckpt_path=ckpt_path)
    return trainer, seen.seen


def test_the_bar_counts_optimizer_steps_of_the_whole_run(tmp_path):
    trainer, seen = _fit(tmp_path, max_steps=6, accumulate_grad_batches=2, max_epochs=-1)
    assert trainer.global_step == 6
    # Lightning's bar would count 12 batches of an epoch of 16, titled "Epoch 0/-2"
    assert all(total == 6 for _, total, _ in seen) and seen[-1][0] == 6
    assert [done for done, _, _ in seen][:4] == [0, 1, 1, 2]  # a step every second batch
    assert "step" in seen[-1][2] and "/-2" not in seen[-1][2]


def test_a_resumed_run_starts_where_it_stopped(tmp_path):
    _fit(tmp_path / "a", max_steps=3, max_epochs=-1, enable_checkpointing=True)
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    trainer, seen = _fit(tmp_path / "b", ckpt_path=ckpt, max_steps=5, max_epochs=-1)
    assert trainer.global_step == 5
    assert seen[0] == (4, 5, seen[0][2]) and seen[-1][:2] == (5, 5)
