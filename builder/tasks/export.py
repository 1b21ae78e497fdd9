"""task=export: a checkpoint as ``model.safetensors`` + ``hydraformer.json`` (model config and tokenizer), or with
``format=hf`` as a Hugging Face directory (``config.json`` + ``model.safetensors`` [+ ``tokenizer.json`` and
``tokenizer_config.json``]) that transformers' AutoModelForCausalLM loads: the family is the one whose table in
builder/hf.py expresses the model. It prints the name of every file it wrote."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import EXPORT_FORMATS, write_export
from ..config.printing import inputs_checked
from ..errors import ConfigError
from ..hf import hf_config_for
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    fmt = cfg.get("format", "hydraformer")
    if fmt not in EXPORT_FORMATS:
        raise ConfigError("format", fmt, f"one of {', '.join(EXPORT_FORMATS)} (task=export format=hf writes a "
                          "Hugging Face directory)")
    model, tokenizer, model_cfg = read_model(cfg, "format=hf", dtype="auto", checked=False)
    if fmt == "hf":  # a model no family's table expresses is refused before the config is shown
        hf_config_for(model_cfg, "checkpoint", cfg.checkpoint)
    inputs_checked(model_cfg, f"checkpoint={cfg.checkpoint}")
    dest = write_export(model, tokenizer, model_cfg, Path(out_dir) / "export", fmt, cfg.checkpoint,
                        shard_size=cfg.get("shard_size"))
    written = sorted(p.name for p in dest.iterdir())  # a folder of this run's own: all of it is this export's
    what = "a Hugging Face directory" if fmt == "hf" else "hydraformer's export, which load_model reads"
    print(f"exported to {dest} ({what}): {', '.join(written)}")
    return 0
