"""task=report: print the parameter budget of a model (or several side by side) and write budget.json|md|png."""

from __future__ import annotations

import sys
from pathlib import Path

from ..budget import parameter_budget
from ..config.compose import preset_configs
from ..report import check_line, expand_models, write_budget_files


def run(cfg, out_dir: Path, model_name: str | None = None) -> int:
    """Print and write the report for ``cfg.model`` or each of ``cfg.models``; exit status 3 when a count disagrees."""
    out_dir = Path(out_dir)
    if cfg.get("models"):
        names = expand_models(cfg.models)
        presets = preset_configs(names)
        budgets = [parameter_budget(presets[n], n) for n in names]  # in the order asked (a glob's matches sorted)
    else:
        budgets = [parameter_budget(cfg.model, model_name)]
    print(write_budget_files(budgets, out_dir))
    print(f"\nwrote {out_dir / 'budget.json'}, budget.md, budget.png")
    bad = [b for b in budgets if b["check"]["agree"] is False]
    for b in bad:
        print(check_line(b), file=sys.stderr)
    return 3 if bad else 0
