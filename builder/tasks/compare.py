"""Compare the jobs of a sweep: ``sweep.csv``, ``sweep.md`` and ``sweep.png`` in the sweep directory.

One row per job (a directory below the sweep with ``.hydra/overrides.yaml``): its overrides, status
(``ok``, or ``failed`` with the error), parameters and attention share (``budget.json``), best
``val/loss`` (``summary.json``: ``best_val_loss``, else the last ``val_loss``), tokens/s, steps and
wall time. ``sweep.png`` plots val/loss against parameters, each point labelled by the overrides
that differ between the jobs.

Written

* after every job of a multirun and at its end, by :class:`SweepComparison` (a Hydra callback
  registered in ``conf/config.yaml`` under ``hydra.callbacks``; single runs are left alone), so a
  sweep with failed jobs — which Hydra's basic sweeper reports by raising at its end, before
  ``on_multirun_end`` — still gets its comparison;
* on demand: ``python run.py task=compare sweep_dir=multirun/<date>/<time>`` (or ``sweep_dir=last``: the newest
  sweep under ``paths.sweeps_dir``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from ..config.printing import is_rank_zero
from ..errors import ConfigError
from ..files import atomic_path, atomic_write
from ..tables import table

log = logging.getLogger(__name__)

COLUMNS = ["job", "status", "label", "overrides", "params", "attention_share", "best_val_loss", "tokens_per_s",
           "steps", "wall_time_s", "error"]
FAILURE_FILE = "failure.json"  # written by builder.tasks.run_task when a multirun job fails
OUTPUTS = ("sweep.csv", "sweep.md", "sweep.png")


# --------------------------------------------------------------------------------------------------
# reading the jobs
# --------------------------------------------------------------------------------------------------


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def find_jobs(sweep_dir: str | Path) -> list[Path]:
    """Job directories below ``sweep_dir`` (those holding ``.hydra/overrides.yaml``), in job order."""
    root = Path(sweep_dir)
    jobs = [p.parent.parent for p in root.glob("**/.hydra/overrides.yaml")]
    return sorted((j for j in jobs if j != root), key=lambda j: _natural(j.relative_to(root)))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_overrides(job: Path) -> list[str]:
    try:
        items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in items]


def _task(job: Path) -> str:
    try:
        return str((yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}).get("task", "train"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "train"


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def job_row(job: Path, root: Path) -> dict[str, Any]:
    """What one job left behind, as one row of the comparison (keys: :data:`COLUMNS` less ``label``)."""
    summary = _read_json(job / "summary.json")
    budget = _read_json(job / "budget.json") or {}
    failure = _read_json(job / FAILURE_FILE)
    row: dict[str, Any] = {"job": job.relative_to(root).as_posix(), "overrides": _read_overrides(job),
                           "params": budget.get("total_params"), "attention_share": budget.get("attention_share"),
                           "best_val_loss": None, "tokens_per_s": None, "steps": None, "wall_time_s": None, "error": ""}
    if summary is not None:
        loss = summary.get("best_val_loss")
        loss = loss if loss is not None else summary.get("val_loss")
        row.update(best_val_loss=loss, tokens_per_s=summary.get("tokens_per_s"), steps=summary.get("steps"),
                   wall_time_s=summary.get("wall_time_s"))
    if failure is not None:
        row.update(status="failed", error=str(failure.get("error", "")))
    elif summary is None and _task(job) != "train":
        row["status"] = "ok"  # task=report etc.: parameters, no training metrics
    elif summary is None:
        row.update(status="failed", error="no summary.json (the job was killed, or is still running)")
    elif loss is not None and _finite(loss) is None:
        row.update(status="failed", error=f"val/loss is {loss}")
    else:
        row["status"] = "ok"
    return row


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _labels(rows: list[dict]) -> list[str]:
    """Each job's overrides that are not the same in every job (all of them when nothing varies)."""
    maps = [dict(_split(o) for o in r["overrides"]) for r in rows]
    keys: list[str] = []
    for m in maps:
        keys += [k for k in m if k not in keys]
    varying = [k for k in keys if len({m.get(k) for m in maps}) > 1]
    labels = []
    for r, m in zip(rows, maps):
        shown = [f"{k}={m[k]}" for k in varying if k in m] if varying else list(r["overrides"])
        labels.append(" ".join(shown) or f"job {r['job']}")
    return labels


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job of the sweep (see :func:`job_row`), with a short ``label``."""
    root = Path(sweep_dir)
    rows = [job_row(job, root) for job in find_jobs(root)]
    for row, label in zip(rows, _labels(rows)):
        row["label"] = label
    return rows


def best_row(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["status"] == "ok" and _finite(r["best_val_loss"]) is not None]
    return min(ok, key=lambda r: r["best_val_loss"]) if ok else None


# --------------------------------------------------------------------------------------------------
# writing the comparison
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: r.get(k) for k in COLUMNS}, "overrides": " ".join(r["overrides"])})
    return buf.getvalue()


def to_markdown(rows: list[dict], sweep_dir: Path) -> str:
    best = best_row(rows)
    failed = [r for r in rows if r["status"] != "ok"]
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(rows)} jobs: {len(rows) - len(failed)} ok, {len(failed)} failed."]
    if best is not None:
        lines.append(f"Best: job {best['job']} (`{best['label']}`), val/loss {best['best_val_loss']:.4f}.")
    optuna = sweep_dir / "optimization_results.yaml"
    if optuna.is_file():
        lines += ["", "Optuna (optimization_results.yaml):", "", "```yaml", optuna.read_text().rstrip(), "```"]
    common = [o for o in (rows[0]["overrides"] if rows else []) if all(o in r["overrides"] for r in rows)]
    if common and len(rows) > 1:
        lines += ["", "Every job: " + " ".join(f"`{o}`" for o in common)]
    rows_out = []
    for r in rows:
        mark = " **(best)**" if r is best else ""
        own = [o for o in r["overrides"] if o not in common] if len(rows) > 1 else r["overrides"]
        rows_out.append([r["job"], r["status"] + mark, " ".join(f"`{o}`" for o in own) or "(none)",
                         _fmt(r["params"], ","), _fmt(r["attention_share"], ".1%"), _fmt(_finite(r["best_val_loss"]), ".4f"),
                         _fmt(r["tokens_per_s"], ",.0f"), _fmt(r["steps"], "d"), _fmt(r["wall_time_s"], ".1f")])
    lines += ["", table(["job", "status", "overrides", "parameters", "attention share", "best val/loss", "tokens/s", "steps",
                         "wall time (s)"], rows_out, markdown=True, align="lllrrrrrr")]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {r['job']} (`{r['label']}`): {' '.join(str(r['error']).split())}" for r in failed]
    return "\n".join(lines) + "\n"


def draw(rows: list[dict], path: Path, title: str) -> None:
    """val/loss against parameters, one labelled point per successful job (a bar per job when all have one size)."""
    # start-up: every task imports this module (the sweep callback); matplotlib only when a sweep is drawn
    from matplotlib.figure import Figure

    ok = [r for r in rows if r["status"] == "ok" and _finite(r["best_val_loss"]) is not None and r["params"]]
    fig = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    sizes = {r["params"] for r in ok}
    if len(sizes) == 1:  # one budget (heads_vs_width): compare the jobs side by side
        ax.bar(range(len(ok)), [r["best_val_loss"] for r in ok], color="tab:blue")
        ax.set_xticks(range(len(ok)), [r["label"] for r in ok], rotation=20, ha="right", fontsize=8)
        ax.set_xlabel(f"job (all {next(iter(sizes)):,} parameters)")
        low = min(r["best_val_loss"] for r in ok)
        ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low) - 0.05))
    else:
        xs, ys = [r["params"] for r in ok], [r["best_val_loss"] for r in ok]
        ax.scatter(xs, ys, color="tab:blue", zorder=3)
        for r in ok:
            ax.annotate(r["label"], (r["params"], r["best_val_loss"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        if ok and max(xs) / max(min(xs), 1) > 10:
            ax.set_xscale("log")
        ax.set_xlabel("parameters")
    ax.set_ylabel("best val/loss")
    failed = len(rows) - len(ok)
    ax.set_title(title + (f" ({failed} failed, not shown)" if failed else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    if not ok:
        ax.text(0.5, 0.5, "no successful job yet", ha="center", va="center", transform=ax.transAxes)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def compare_sweep(sweep_dir: str | Path, *, plot: bool = True) -> dict[str, Any]:
    """Write ``sweep.csv``, ``sweep.md`` (and ``sweep.png``) into ``sweep_dir``; return the rows and paths."""
    root = Path(sweep_dir).resolve()
    rows = collect(root)
    atomic_write(root / "sweep.csv", to_csv(rows))
    markdown = to_markdown(rows, root)
    atomic_write(root / "sweep.md", markdown)
    if plot:
        draw(rows, root / "sweep.png", f"sweep {root.parent.name}/{root.name}")
    return {"rows": rows, "best": best_row(rows), "markdown": markdown,
            "files": [str(root / name) for name in OUTPUTS if (root / name).exists()]}


# --------------------------------------------------------------------------------------------------
# task=compare and the Hydra callback
# --------------------------------------------------------------------------------------------------


def latest_sweep(root: Path) -> Path | None:
    """The sweep directory under ``root`` (``paths.sweeps_dir``) whose job was written last (jobs: ``<sweep>/<num>/.hydra/``)."""
    jobs = [p.parent.parent for p in root.glob("**/.hydra/overrides.yaml")] if root.is_dir() else []
    return max(jobs, key=lambda p: p.stat().st_mtime).parent if jobs else None


def run(cfg, out_dir: Path) -> int:
    """``task=compare sweep_dir=PATH|last``: write the comparison files into the sweep and print the table."""
    value = cfg.get("sweep_dir")
    if value in (None, ""):
        raise ConfigError("sweep_dir", value, "a sweep directory (e.g. multirun/<date>/<time>), or `last`")
    sweeps = Path(str(cfg.paths.sweeps_dir)).expanduser()
    sweep = latest_sweep(sweeps) if value == "last" else Path(str(value)).expanduser()
    if sweep is None:
        raise ConfigError("sweep_dir", value, f"a sweep directory; none found under {sweeps}/ (paths.sweeps_dir)")
    if not sweep.is_dir():
        raise ConfigError("sweep_dir", value, "an existing sweep directory (e.g. multirun/<date>/<time>)")
    if not find_jobs(sweep):
        raise ConfigError("sweep_dir", value, "a sweep directory with jobs (<job>/.hydra/overrides.yaml)")
    result = compare_sweep(sweep)
    print(result["markdown"])
    print("written: " + ", ".join(result["files"]))
    return 0


def _mode_is_multirun(config) -> bool:
    try:
        return config.hydra.mode == RunMode.MULTIRUN
    except Exception:
        return False


def _sweep_dir(config) -> Path:
    sweep = Path(str(config.hydra.sweep.dir))
    return sweep if sweep.is_absolute() else Path(str(config.hydra.runtime.cwd)) / sweep


class SweepComparison(Callback):
    """Hydra callback: refresh the sweep's comparison after each multirun job, and write it at the end."""

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not _mode_is_multirun(config) or not is_rank_zero():  # SLURM: one task of a multi-task job writes
            return
        try:
            job_dir = Path(str(config.hydra.runtime.output_dir))
            if job_return.status == JobStatus.FAILED and not (job_dir / FAILURE_FILE).exists():
                record_failure(job_dir, getattr(job_return, "_return_value", None))
            compare_sweep(_sweep_dir(config), plot=self.plot)
        except Exception as err:  # a comparison must never end a sweep
            log.warning(f"sweep comparison not written: {err}")

    def on_multirun_end(self, config, **kwargs) -> None:
        if not is_rank_zero():
            return
        try:
            sweep = _sweep_dir(config)
            if not find_jobs(sweep):
                return
            result = compare_sweep(sweep, plot=self.plot)
            best = result["best"]
            text = (f"best: job {best['job']} ({best['label']}) val/loss {best['best_val_loss']:.4f}" if best
                    else "no job with a val/loss")
            log.info(f"sweep comparison: {sweep / 'sweep.md'} ({text})")
        except Exception as err:
            log.warning(f"sweep comparison not written: {err}")


def record_failure(job_dir: Path, err: BaseException | None) -> None:
    """Leave ``failure.json`` in a failed job's directory, so the comparison lists it as failed."""
    text = str(err) if err is not None else "failed"
    payload = {"status": "failed", "error_type": type(err).__name__ if err is not None else None, "error": text}
    atomic_write(Path(job_dir) / FAILURE_FILE, json.dumps(payload, indent=2) + "\n")
