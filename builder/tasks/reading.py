"""The one way a task reads the model it looks at: ``checkpoint=`` (a training checkpoint, an export directory or a
Hugging Face directory), refused in one paragraph when missing or unreadable, and the run's config shown only once the
model has loaded (a bad checkpoint prints its error alone, never a config tree first).

The tasks in ``READS_CHECKPOINT`` (builder.tasks) read their model here; builder.tasks leaves the showing of their
config to them (``inputs_checked``, here when ``checked`` is true, else by the task once its own checks pass)."""

from __future__ import annotations

from ..checkpoint import load_model
from ..config.printing import inputs_checked
from ..errors import ConfigError
from ..interp.pictures import encode_text

READABLE = "a checkpoint, export or Hugging Face directory"


def read_model(cfg, example: str = "", *, texts: dict | None = None, dtype: str | None = None,
               checked: bool = True):
    """``load_model(cfg.checkpoint)`` -> (model, tokenizer or None, plain model config). ``example``: the rest of
    the command line the refusal of a missing checkpoint shows (``"text='...'"``); ``texts``: key -> the text (or
    texts) the task will encode, each refused here, naming its key, when the model's tokenizer cannot encode it or
    it is longer than the model's context; ``dtype``: in place of ``cfg.dtype``; ``checked``: the task has nothing
    left to refuse once the model loads, so its config is shown."""
    checkpoint = cfg.get("checkpoint")
    if checkpoint in (None, ""):
        raise ConfigError("checkpoint", checkpoint, f"{READABLE}: python run.py task={cfg.get('task')} "
                          f"checkpoint=PATH{' ' + example if example else ''}")
    model, tokenizer, model_cfg = load_model(checkpoint, dtype=cfg.get("dtype") if dtype is None else dtype)
    for key, value in (texts or {}).items():
        for text in [value] if isinstance(value, str) else list(value or ()):
            if tokenizer is None:
                raise ConfigError("checkpoint", checkpoint, f"a model that carries its tokenizer, to encode {key}")
            encode_text(tokenizer, str(text), model, key)
    if checked:
        inputs_checked(model_cfg, f"checkpoint={checkpoint}")
    return model, tokenizer, model_cfg
