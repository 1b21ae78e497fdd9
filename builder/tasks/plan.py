"""task=plan: what training the model takes on many GPUs (builder/plan.py): plan.json, plan.md and a short table.

The model is the composed one (``model=PRESET`` and overrides) or the one ``checkpoint=`` describes (a checkpoint,
an export, a Hugging Face directory; its weights are not read)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from ..budget import parameter_budget
from ..checkpoint import model_config_of
from ..config.checks import checked
from ..config.cli import overrides_as_typed
from ..config.plain import to_plain
from ..config.printing import inputs_checked
from ..files import atomic_write
from ..model import model_config
from ..plan import kept_overrides, launch_command, make_plan, markdown, model_overrides, shell, summary


def _overrides() -> list[str]:
    return overrides_as_typed(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(cfg, out_dir: Path, model_name: str | None = None) -> int:
    out_dir = Path(out_dir)
    settings = checked(cfg)
    kept = kept_overrides(_overrides())
    if cfg.get("checkpoint"):
        model_cfg = model_config_of(cfg.checkpoint)
        model_name = Path(str(cfg.checkpoint)).name
        kept = [o for o in kept if not o.split("=", 1)[0].lstrip("+~").startswith("model")]
        kept = model_overrides(asdict(model_config(model_cfg))) + kept
    else:
        model_cfg = to_plain(cfg.model)
    budget = parameter_budget(model_cfg, model_name)
    written = OmegaConf.to_container(cfg.data, resolve=False).get("context_length")
    context = budget["config"]["context_length"] if written == "${model.context_length}" else settings.data.context_length
    plan = make_plan(budget, settings.plan, settings.data.batch_size, context, model_cfg)
    inputs_checked(model_cfg, f"checkpoint={cfg.checkpoint}") if cfg.get("checkpoint") else inputs_checked()
    command = launch_command(plan, kept)
    plan["command"], plan["slurm_command"] = command["args"], command["slurm"]
    atomic_write(out_dir / "plan.json", json.dumps(plan, indent=2) + "\n")
    atomic_write(out_dir / "plan.md", markdown(plan, command))
    print(summary(plan))
    print(f"\nlaunch: {shell(command['args'])}\nSLURM:  {shell(command['slurm'])}")
    print(f"\nwrote {out_dir / 'plan.json'}, plan.md")
    return 0
