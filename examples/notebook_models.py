"""The model the example notebooks look at, found or trained: ``find_or_train()`` returns its checkpoint's path.

The notebooks start in ``examples/`` of a clone and need nothing set. They look at a word-level model of the
adjectives language (``data=adjectives``): the README's own run, ``outputs/adj`` (``python run.py
experiment=adjective_head logger=csv hydra.run.dir=outputs/adj``), when there is one, else one trained here for
300 steps (about 15 s on an idle 2-core CPU) into ``outputs/notebook/adjective_head``, and found there next time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README_RUN = REPO / "outputs" / "adj" / "checkpoints" / "last.ckpt"
OWN_RUN = REPO / "outputs" / "notebook" / "adjective_head"
STEPS = 300


def find_or_train(model: str | Path | None = None) -> Path:
    """``model`` when given (a checkpoint, an export or a Hugging Face directory), else the README's adjective_head
    run, else this folder's own small one, trained now if it is not there yet."""
    if model is not None:
        return Path(model)
    for found in (README_RUN, OWN_RUN / "checkpoints" / "last.ckpt"):
        if found.is_file():
            return found
    overrides = ["experiment=adjective_head", f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}",
                 f"callbacks.model_checkpoint.every_n_train_steps={STEPS}", "logger=csv",
                 "trainer.enable_progress_bar=false", f"hydra.run.dir={OWN_RUN}"]
    print("no model yet; training one:", "python run.py", " ".join(overrides))
    done = subprocess.run([sys.executable, "run.py", *overrides], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return OWN_RUN / "checkpoints" / "last.ckpt"


def shown(path: Path) -> str:
    """``path`` relative to the clone when it lies inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
