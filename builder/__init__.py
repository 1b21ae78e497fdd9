"""builder: turns configs into things — models, budgets, reports, pictures.

The Python API (none of it imports Lightning or wandb):

    cfg = builder.compose(["model=gpt3_175b"])          # the config run.py composes
    model = builder.build_model(cfg.model)              # ids [B, T] -> logits [B, T, vocab]
    budget = builder.parameter_budget(cfg.model)        # where the parameters go
    model, tokenizer, model_cfg = builder.load_model(PATH)   # a checkpoint, an export or a Hugging Face dir
    with builder.capture_attention(model) as rec: ...   # every head's q, k, v, scores, mask, pattern, update

The layers, each importing only those below it (tests/test_layers.py holds the rule):

    tasks                 one module per ``task=``: the glue run.py dispatches to
    training | interp     Lightning plumbing | capture, head scores, pictures, the page
    checkpoint | report   loading and exporting models | the budget as text, Markdown and a chart
    hf                    Hugging Face directories of the decoder families, in and out
    budget | generate | memory   counting parameters and FLOPs | sampling with a KV cache | will training fit
    model | data          config -> nn.Module | tokenizers, corpora, token cache, windows
    config                schema, compose, command-line checks, config printing
    errors | files | tables
    components/ (below everything; knows nothing of builder, Hydra or Lightning)
"""

from .budget import parameter_budget
from .checkpoint import load_model
from .errors import ConfigError
from .interp.capture import capture_attention
from .model import build_model

__all__ = ["ConfigError", "build_model", "capture_attention", "compose", "load_model", "parameter_budget"]


def __getattr__(name: str):
    if name == "compose":  # start-up: Hydra is imported by the code that composes, not by loading a model
        from .config.compose import compose

        return compose
    raise AttributeError(f"module 'builder' has no attribute {name!r}")
