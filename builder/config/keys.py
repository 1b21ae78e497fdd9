"""Every declared key as tables: written from the declarations (builder/config/schema.py, components/), so the
key reference (docs/keys.md) and the help page cannot drift from what the check accepts.

    python -m builder.config.keys > docs/keys.md
"""

from __future__ import annotations

import dataclasses

import components

from .schema import (
    CALLBACK_SCHEMAS,
    AcceleratorConfig,
    Config,
    DataConfig,
    ModelConfig,
    PlanConfig,
    TrainConfig,
    TrainerConfig,
)
from .spec import MISSING, Declared, declared

HEADER = ("# Every key\n\nGenerated from the declarations by `python -m builder.config.keys > docs/keys.md` "
          "(tests/test_declarations.py holds this file equal to it). Each key's type, range or choices and meaning "
          "are declared once, beside its default; a value outside them is refused with exit status 2, naming the "
          "key.\n")


def _default(d: Declared) -> str:
    value = d.default
    if value is dataclasses.MISSING or value == MISSING:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(title: str, rows: list[Declared], prefix: str = "") -> str:
    lines = [f"## {title}\n", "| key | default | accepts | meaning |", "|---|---|---|---|"]
    for d in rows:
        lines.append(f"| `{prefix}{d.key}` | `{_cell(_default(d))}` | {_cell(d.phrase())} | {_cell(d.meaning)} |")
    return "\n".join(lines) + "\n"


def sections() -> list[tuple[str, list[Declared], str]]:
    """(title, declarations, key prefix) for every part of the config tree."""
    out = [("Top level: the task and each task's keys", [d for d in declared(Config) if "." not in d.key], ""),
           ("model", [d for d in declared(ModelConfig) if d.key not in components.KINDS], "model.")]
    for kind in components.KINDS:
        for name in components.names(kind):
            rows = [d for d in declared(components.registry.settings_class(kind, name)) if d.key != "name"]
            if rows:
                out.append((f"model/{kind}={name}", rows, f"model.{kind}."))
    out += [("data", declared(DataConfig), "data."), ("train", declared(TrainConfig), "train."),
            ("trainer (pytorch_lightning.Trainer's arguments)", declared(TrainerConfig), "trainer.")]
    out += [(f"callbacks.{name}", declared(cls), f"callbacks.{name}.") for name, cls in CALLBACK_SCHEMAS.items()]
    out += [("plan (task=plan)", declared(PlanConfig), "plan."),
            ("plan.accelerators.NAME (each accelerator of task=plan's table)", declared(AcceleratorConfig),
             "plan.accelerators.NAME.")]
    return out


def markdown() -> str:
    return HEADER + "\n" + "\n".join(table(title, rows, prefix) for title, rows, prefix in sections())


def help_lines(keys: list[str], indent: int = 4, width: int = 118) -> str:
    """``key   what it accepts: meaning`` for each dotted key (a component's: ``model.attention.n_kv_heads``), for
    the help page, one line each, cut at ``width``."""
    found = {f"{prefix}{d.key}": d for _, rows, prefix in sections() for d in rows}
    lines = []
    for key in keys:
        d = found[key]
        text = f"{' ' * indent}{key:<32} {d.phrase()}" + (f": {d.meaning}" if d.meaning else "")
        lines.append(text if len(text) <= width else text[: width - 3] + "...")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
