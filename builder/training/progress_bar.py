"""The training progress bar: Lightning's rich bar, counting the run's optimizer steps.

An adapter of Lightning's private API, and why: ``RichProgressBar`` offers no public way to say what its training
bar counts or how it is titled — its total comes from the public ``total_train_batches``, but where the bar starts
(``_add_task``), what each update sets it to (``_update``), its title (``_get_train_description``) and when it reads
the logged metrics back (``_update_metrics``) are its private methods, overridden here and nowhere else.
pyproject pins Lightning's minor version; tests/test_progress.py runs the bar through a real Trainer.
"""

from __future__ import annotations

from pytorch_lightning.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar counting optimizer steps of the whole run (``40/2000``), as ``trainer.max_steps`` does.

    Lightning's own counts the batches of the epoch and titles it ``Epoch 0/-2`` when no epoch limit is set
    (``trainer.max_epochs=-1``), and ``2020/19`` after a resume. A run with no end at all (neither limit) counts the
    epoch's batches, as Lightning does."""

    def _steps(self) -> int | None:
        total = self.trainer.estimated_stepping_batches
        return int(total) if total != float("inf") and total > 0 else None

    @property
    def total_train_batches(self):
        return self._steps() or super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = self.trainer.max_epochs
        text = f"Epoch {current_epoch}" + (f"/{epochs - 1}" if epochs is not None and epochs > 0 else "")
        return text if self._steps() is None else f"{text} · step"

    def _add_task(self, total_batches, description: str, visible: bool = True):
        train = description == self._get_train_description(self.trainer.current_epoch)  # (not a validation bar)
        if not (train and self._steps() and self.progress is not None):
            return super()._add_task(total_batches, description, visible)
        style = self.theme.description  # as Lightning's, but a resumed run's bar starts where it stopped
        return self.progress.add_task(f"[{style}]{description}" if style else description, total=total_batches,
                                      visible=visible, completed=self.trainer.global_step)

    def _update_metrics(self, trainer, pl_module) -> None:
        # reading the logged metrics reads them back from the device: on a GPU, a wait for its queue. Lightning's
        # bar does it after every batch; here a GPU run's bar shows them every trainer.log_every_n_steps steps
        every = max(1, int(trainer.log_every_n_steps or 1))
        if trainer.training and pl_module.device.type == "cuda" and trainer.global_step % every:
            return
        super()._update_metrics(trainer, pl_module)

    def _update(self, progress_bar_id, current: int, visible: bool = True, hard: bool = False) -> None:
        if progress_bar_id is not None and progress_bar_id == self.train_progress_bar_id and self._steps():
            current = self.trainer.global_step
        super()._update(progress_bar_id, current, visible, hard)
