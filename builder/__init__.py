"""builder: turns configs into things — models, budgets, reports.

The Python API other parts build on:

    cfg = builder.compose(["model=gpt3_175b"])
    model = builder.build_model(cfg.model)
    budget = builder.parameter_budget(cfg.model)
"""

from .budget import parameter_budget
from .capture import capture_attention
from .checkpoint import load_model
from .compose import compose
from .errors import ConfigError
from .model import build_model

__all__ = ["ConfigError", "build_model", "capture_attention", "compose", "load_model", "parameter_budget"]
