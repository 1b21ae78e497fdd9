"""Compare the jobs of a sweep: ``sweep.csv``, ``sweep.md`` and ``sweep.png`` in the sweep directory.

One row per job: its overrides, status, parameters and attention share (``budget.json``), best
``val/loss`` (``summary.json``: ``best_val_loss``, else the last ``val_loss``), tokens/s, steps and
wall time. ``sweep.png`` plots val/loss against parameters, each point labelled by the overrides
that differ between the jobs; its title counts the jobs it cannot show, and why.

Which jobs: every job the sweep planned, when it recorded its plan — ``jobs.json`` in the sweep
directory, written when a multirun with Hydra's basic sweeper starts (``{"jobs": [{"num", "overrides"}]}``).
Otherwise (Optuna and other sweepers choose each job as they go: no plan up front, no ``jobs.json``)
the jobs that started: the directories below the sweep holding ``.hydra/overrides.yaml``.

A job's status: ``ok``; ``failed`` with the error (``failure.json``, or a non-finite val/loss);
``interrupted`` (its directory exists but holds neither ``summary.json`` nor ``failure.json``: the sweep
was stopped or killed during it, or it is still running); ``not run`` (planned, never started).

Written

* after every job of a multirun, at its end, and when the sweep process exits without reaching that end (a
  SIGTERM or Ctrl-C during a job), by :class:`SweepComparison` (a Hydra callback registered in
  ``conf/config.yaml`` under ``hydra.callbacks``; single runs are left alone), so a sweep with failed jobs —
  which Hydra's basic sweeper reports by raising at its end, before ``on_multirun_end`` — or an interrupted
  one still gets its comparison (SIGKILL leaves the one written after the last finished job);
* on demand: ``python run.py task=compare sweep_dir=multirun/<date>/<time>`` (or ``sweep_dir=last``: the newest
  sweep under ``paths.sweeps_dir``).
"""

from __future__ import annotations

import atexit
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

from ..config.preflight import plan_jobs
from ..config.printing import is_rank_zero
from ..errors import ConfigError
from ..files import atomic_write
from ..tables import table

log = logging.getLogger(__name__)

COLUMNS = ["job", "status", "label", "overrides", "params", "attention_share", "best_val_loss", "tokens_per_s",
           "steps", "wall_time_s", "error"]
FAILURE_FILE = "failure.json"  # written by builder.tasks.run_task when a multirun job fails
PLAN_FILE = "jobs.json"  # the sweep's planned jobs, written when a basic-sweeper multirun starts
OUTPUTS = ("sweep.csv", "sweep.md", "sweep.png")
# statuses besides ok and failed
INTERRUPTED, NOT_RUN = "interrupted", "not run"
INTERRUPTED_WHY = "started, but left neither summary.json nor failure.json (stopped by a signal, killed, or still running)"
NOT_RUN_WHY = "never started (the sweep stopped before it, or has not reached it yet)"


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
        row.update(status=INTERRUPTED, error=INTERRUPTED_WHY)
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


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # hydra.yaml is long; the C loader reads it in a blink


def _job_num(job: Path) -> int | None:
    """The job's number in its sweep (``hydra.job.num`` in ``.hydra/hydra.yaml``; else a numeric directory name)."""
    try:
        num = yaml.load((job / ".hydra" / "hydra.yaml").read_text(), Loader=_YAML_LOADER)["hydra"]["job"]["num"]
        return int(num)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return int(job.name) if job.name.isdigit() else None


def read_plan(sweep_dir: str | Path) -> list[dict] | None:
    """The planned jobs (``jobs.json``: ``[{"num": int, "overrides": [str]}]``), or None when the sweep recorded none."""
    plan = _read_json(Path(sweep_dir) / PLAN_FILE)
    try:
        return [{"num": int(j["num"]), "overrides": [str(o) for o in j["overrides"]]} for j in plan["jobs"]]
    except (TypeError, KeyError, ValueError):
        return None


def _not_run_row(planned: dict) -> dict[str, Any]:
    return {"job": str(planned["num"]), "status": NOT_RUN, "overrides": planned["overrides"], "params": None,
            "attention_share": None, "best_val_loss": None, "tokens_per_s": None, "steps": None, "wall_time_s": None,
            "error": NOT_RUN_WHY}


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job of the sweep (see :func:`job_row`; planned jobs that never started: ``not run``), with a
    short ``label``. Planned jobs come in their order, then any started job the plan does not name."""
    root = Path(sweep_dir)
    jobs = find_jobs(root)
    plan = read_plan(root)
    if plan is None:
        rows = [job_row(job, root) for job in jobs]
    else:
        by_num: dict[int | None, Path] = {}
        for job in jobs:
            by_num.setdefault(_job_num(job), job)
        rows = [job_row(by_num[p["num"]], root) if p["num"] in by_num else _not_run_row(p) for p in plan]
        planned = {by_num[p["num"]] for p in plan if p["num"] in by_num}
        rows += [job_row(job, root) for job in jobs if job not in planned]
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


def counts(rows: list[dict]) -> str:
    """``"3 jobs: 1 ok, 0 failed, 1 interrupted, 1 not run"`` (interrupted and not run only when there are some)."""
    n = {status: sum(r["status"] == status for r in rows) for status in ("ok", "failed", INTERRUPTED, NOT_RUN)}
    parts = [f"{n['ok']} ok", f"{n['failed']} failed"] + [f"{n[s]} {s}" for s in (INTERRUPTED, NOT_RUN) if n[s]]
    return f"{len(rows)} jobs: " + ", ".join(parts)


def _without_val_loss(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and _finite(r["best_val_loss"]) is None]


def to_markdown(rows: list[dict], sweep_dir: Path, planned: bool = False) -> str:
    best = best_row(rows)
    failed = [r for r in rows if r["status"] == "failed"]
    unfinished = [r for r in rows if r["status"] in (INTERRUPTED, NOT_RUN)]
    lines = [f"# Sweep {sweep_dir}", "", counts(rows) + "."]
    if not planned and rows:
        lines.append(f"(The jobs that started: the sweep recorded no plan in {PLAN_FILE}; a sweeper that picks each job "
                     "as it goes, such as Optuna, has none.)")
    if best is not None:
        lines.append(f"Best: job {best['job']} (`{best['label']}`), val/loss {best['best_val_loss']:.4f}.")
    no_val = _without_val_loss(rows)
    if no_val:
        lines.append(f"No val/loss in {len(no_val)} ok job{'s' if len(no_val) > 1 else ''} (no validation ran: a "
                     "training run validates at its end, unless trainer.limit_val_batches=0 or the data has no "
                     "validation windows; or not a training job): " + ", ".join(r["job"] for r in no_val) + ".")
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
    if unfinished:
        lines += ["", "## Jobs that did not finish", ""]
        lines += [f"- job {r['job']} (`{r['label']}`): {r['status']}: {r['error']}" for r in unfinished]
    return "\n".join(lines) + "\n"


def draw(rows: list[dict], path: Path, title: str) -> dict[str, str]:
    """val/loss against parameters, one labelled point per successful job (a bar per job when all have one size).
    Returns the texts drawn besides the points: ``{"title", "empty"}`` (see :func:`plot_text`)."""
    # start-up: every task imports this module (the sweep callback); matplotlib only when a sweep is drawn
    from matplotlib.figure import Figure

    from ..figures import place_labels, save_png  # (matplotlib, as above: only when a sweep is drawn)

    ok = _plotted(rows)
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
        if ok and max(xs) / max(min(xs), 1) > 10:
            ax.set_xscale("log")
        ax.margins(0.15)  # room for the labels of the outermost points
        ax.set_xlabel("parameters")
    ax.set_ylabel("best val/loss")
    title, empty = plot_text(rows, title)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if empty:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    if ok and len(sizes) > 1:  # the points' labels, placed once the layout is final so that none overlaps another
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
        place_labels(ax, [(r["params"], r["best_val_loss"]) for r in ok], [r["label"] for r in ok], fontsize=8)
    save_png(fig, path, dpi=110)
    return {"title": title, "empty": empty}


def _plotted(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and _finite(r["best_val_loss"]) is not None and r["params"]]


def plot_text(rows: list[dict], title: str) -> tuple[str, str]:
    """``sweep.png``'s title — with the jobs it does not show, counted by why: ``(1 failed, 2 no val/loss, not
    shown)`` — and the text drawn in an empty plot (``""`` when a point is drawn)."""
    ok, shown = [r for r in rows if r["status"] == "ok"], _plotted(rows)
    why = {"failed": sum(r["status"] == "failed" for r in rows), INTERRUPTED: sum(r["status"] == INTERRUPTED for r in rows),
           NOT_RUN: sum(r["status"] == NOT_RUN for r in rows), "no val/loss": len(_without_val_loss(rows)),
           "no parameter count": sum(_finite(r["best_val_loss"]) is not None and not r["params"] for r in ok)}
    parts = [f"{n} {reason}" for reason, n in why.items() if n]
    if parts:
        title += f" ({', '.join(parts)}, not shown)"
    if shown:
        empty = ""
    elif ok:
        empty = "no job with a val/loss" if why["no val/loss"] else "no job with a parameter count"
    else:
        empty = "no successful job yet"
    return title, empty


def compare_sweep(sweep_dir: str | Path, *, plot: bool = True) -> dict[str, Any]:
    """Write ``sweep.csv``, ``sweep.md`` (and ``sweep.png``) into ``sweep_dir``; return the rows, the best row, the
    markdown, the plot's texts (``{"title", "empty"}``, also when not drawn) and the paths written."""
    root = Path(sweep_dir).resolve()
    rows = collect(root)
    atomic_write(root / "sweep.csv", to_csv(rows))
    markdown = to_markdown(rows, root, planned=read_plan(root) is not None)
    atomic_write(root / "sweep.md", markdown)
    title = f"sweep {root.parent.name}/{root.name}"
    plot_texts = draw(rows, root / "sweep.png", title) if plot else dict(zip(("title", "empty"), plot_text(rows, title)))
    return {"rows": rows, "best": best_row(rows), "markdown": markdown, "plot": plot_texts,
            "files": [str(root / name) for name in OUTPUTS if (root / name).exists()]}


# --------------------------------------------------------------------------------------------------
# task=compare and the Hydra callback
# --------------------------------------------------------------------------------------------------


def latest_sweep(root: Path) -> Path | None:
    """The sweep directory under ``root`` (``paths.sweeps_dir``) written last (its jobs: ``<sweep>/<num>/.hydra/``; its
    plan: ``<sweep>/jobs.json``)."""
    if not root.is_dir():
        return None
    # what a sweep writes: a plan when it starts (a sweep stopped before its first job has only that), then its jobs
    marks = [(p.stat().st_mtime, p.parent) for p in root.glob(f"**/{PLAN_FILE}")]
    marks += [(p.stat().st_mtime, p.parent.parent.parent) for p in root.glob("**/.hydra/overrides.yaml")]
    return max(marks, key=lambda m: m[0])[1] if marks else None


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
    if not find_jobs(sweep) and read_plan(sweep) is None:
        raise ConfigError("sweep_dir", value, f"a sweep directory with jobs (<job>/.hydra/overrides.yaml, or {PLAN_FILE})")
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


def write_plan(config) -> Path | None:
    """``jobs.json`` in the sweep directory: the jobs :func:`plan_jobs` finds (a stale plan is removed when the
    sweeper makes none). Returns its path, or None."""
    sweep = _sweep_dir(config)
    path = sweep / PLAN_FILE
    try:
        jobs = plan_jobs(config)
    except Exception as err:  # a sweep the basic sweeper cannot expand: no plan
        log.info(f"sweep plan not recorded ({err}): the comparison lists the jobs that started")
        jobs = None
    if jobs is None:
        path.unlink(missing_ok=True)
        return None
    payload = {"sweeper": str(config.hydra.sweeper.get("_target_")), "jobs": jobs}
    atomic_write(path, json.dumps(payload, indent=2) + "\n")
    return path


class SweepComparison(Callback):
    """Hydra callback: record the sweep's planned jobs when it starts, refresh its comparison after each job, and
    write the comparison at its end — or when the process exits before that end (a SIGTERM or Ctrl-C in a job ends
    the sweep by raising through Hydra, which then calls neither ``on_job_end`` nor ``on_multirun_end``)."""

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot
        self._sweep: Path | None = None  # set while a multirun of this process has started and not ended

    def on_multirun_start(self, config, **kwargs) -> None:
        if not is_rank_zero():
            return
        try:
            self._sweep = _sweep_dir(config)
            atexit.register(self._at_exit)
            write_plan(config)
        except Exception as err:
            log.warning(f"sweep plan not written: {err}")

    def _at_exit(self) -> None:
        sweep, self._sweep = self._sweep, None
        if sweep is None or not (find_jobs(sweep) or read_plan(sweep) is not None):
            return
        try:
            compare_sweep(sweep, plot=self.plot)
            log.info(f"sweep comparison (written as the sweep process exits): {sweep / 'sweep.md'}")
        except Exception as err:
            log.warning(f"sweep comparison not written: {err}")

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
        self._sweep = None  # ended: nothing left for the exit hook
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
