"""The parameter budget as text, Markdown and a chart, and attention's share across the presets.

What ``task=report`` prints and writes (budget.json, budget.md, budget.png), and what a training run
writes beside its checkpoints.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from components.registry import closest

from .budget import GROUPS, formula_total
from .config.compose import CONF_DIR, preset_configs
from .errors import ConfigError
from .figures import place_labels, renderer_for, save_png
from .files import atomic_write
from .tables import table


def preset_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def human(n: float, unit: str = "") -> str:
    """``n`` with an SI prefix (a count: K, M, B, T; with a unit, FLOP: up to Z, and past 1,000 Z in powers of
    ten), so no figure runs to four digits or more before its point."""
    if unit and abs(n) >= 1e24:
        return f"{n:.2e} {unit}"
    big = ((1e21, "Z"), (1e18, "E"), (1e15, "P")) if unit else ()
    for scale, suffix in (*big, (1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def human_bytes(n: float) -> str:
    for scale, suffix in ((2**60, "EiB"), (2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"),
                          (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def expand_models(patterns) -> list[str]:
    """Preset names from names or globs (``gpt3_*``); an unknown one lists the presets."""
    known = preset_names()
    out: list[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(known, str(pattern))
        if not hits:
            raise ConfigError("models", pattern, f"a preset name or glob{closest(pattern, known)}; presets: {', '.join(known)}")
        out += [h for h in hits if h not in out]
    return out


def _group_rows(b: dict) -> list[list[str]]:
    total = b["total_params"]
    rows = []
    for g, v in b["groups"].items():
        label = g + (" (tied to token_embedding)" if v.get("tied") else "")
        rows.append([label, f"{v['weight']:,}", f"{v['bias']:,}", f"{v['total']:,}", f"{100 * v['total'] / total:.2f}%"])
    rows.append(["total", "", "", f"{total:,}", "100.00%"])
    return rows


def _head_rows(b: dict) -> list[list[str]]:
    ph = b["per_head"]
    rows = []
    for name, v in ph["per_head"].items():
        shared = f" (1 per {v['shared_by_heads']} heads)" if v["shared_by_heads"] > 1 else ""
        rows.append([name + shared, f"{v['weight']:,}", f"{ph['per_layer'][name]['weight']:,}",
                     f"{ph['all_layers'][name]['weight']:,}"])
    biases = sum(v["bias"] for v in ph["all_layers"].values())
    rows.append(["sum", f"{ph['per_head_weights']:,}", f"{sum(v['weight'] for v in ph['per_layer'].values()):,}",
                 f"{ph['all_layers_weights']:,}"])
    rows.append(["biases (all layers)", "", "", f"{biases:,}"])
    return rows


def render(b: dict, markdown: bool = False) -> str:
    c = b["config"]
    title = b["model"] or "model"
    comps = ", ".join(f"{k}={v}" for k, v in c["components"].items())
    out = []
    out.append(("## " if markdown else "") + f"Parameter budget: {title}")
    out.append(f"n_layers={c['n_layers']}, d_model={c['d_model']}, n_heads={c['n_heads']}, d_head={c['d_head']}, "
               f"vocab={c['vocab_size']}, context={c['context_length']}; {comps}, {c['norm_layout']}-norm")
    out.append("")
    out.append(table(["group", "weights", "biases", "total", "share"], _group_rows(b), markdown))
    ph = b["per_head"]
    if ph:
        out.append("")
        out.append(("### " if markdown else "") + f"Attention as the lecture counts it: {ph['n_heads']} heads x "
                   f"{ph['n_layers']} layers, each matrix d_model x d_head = {ph['d_model']} x {ph['d_head']}")
        out.append("")
        out.append(table(["matrix", "per head", f"per layer ({ph['n_heads']} heads)", f"all {ph['n_layers']} layers"],
                          _head_rows(b), markdown))
    out.append("")
    out.append(f"Attention share of all parameters: {100 * b['attention_share']:.1f}%")
    out.extend(active_lines(b))
    f = b["flops_per_token"]
    out.append(f"FLOPs per token: forward {human(f['forward'], 'FLOP')} (2 x {f['matmul_weights']:,} matmul weights "
               f"+ {human(f['attention_context'], 'FLOP')} attention over {f['context_length']} tokens); "
               f"training (3x forward) {human(f['training'], 'FLOP')}")
    mem = b["memory_bytes"]
    out.append(f"Training state, fp32: {human_bytes(mem['fp32']['total'])} (weights {human_bytes(mem['fp32']['weights'])}, "
               f"gradients {human_bytes(mem['fp32']['gradients'])}, AdamW moments {human_bytes(mem['fp32']['optimizer'])})")
    bf = mem["bf16_mixed"]
    out.append(f"Training state, bf16 mixed: {human_bytes(bf['total'])} (bf16 weights {human_bytes(bf['weights'])}, "
               f"bf16 gradients {human_bytes(bf['gradients'])}, fp32 master weights {human_bytes(bf['master_weights'])}, "
               f"AdamW moments {human_bytes(bf['optimizer'])}); bf16 weights alone {human_bytes(mem['bf16_weights_only'])}")
    out.append(check_line(b))
    return "\n".join(out)


def active_lines(b: dict) -> list[str]:
    """What one token uses and attention's share of it, with the embedding table counted and not; the KV cache."""
    a, total, out = b["active_params"], b["total_params"], []
    if a["total"] != total:
        out.append(f"Active per token: {a['total']:,} of {total:,} ({100 * a['total'] / total:.1f}%) with the "
                   f"embedding table counted; {a['without_embedding']:,} without it (a looked-up row is no matmul)")
        out.append(f"Attention share of the active parameters: {100 * a['attention_share']:.1f}% "
                   f"({100 * a['attention_share_without_embedding']:.1f}% without the embedding table)")
    kv = b["kv_cache"]
    out.append(f"KV cache: {kv['elements_per_layer']:,} numbers per token and layer, {kv['bytes_per_token']:,} bytes "
               f"per token in bf16 ({human_bytes(kv['bytes_per_context'])} for one {kv['context_length']:,}-token "
               "context)")
    return out


def check_line(b: dict) -> str:
    ch = b["check"]
    if ch["agree"] is None:
        return f"Check: {ch['note']}"
    how = f" ({ch['note']})" if ch.get("note") else ""
    if ch["agree"]:
        return f"Check: meta-device count {ch['meta_total']:,} = closed-form formula {ch['formula_total']:,}{how}"
    lines = [f"!!! PARAMETER COUNT MISMATCH: meta-device count {ch['meta_total']:,} != formula "
             f"{ch['formula_total']:,}{how}"]
    lines += [f"!!!   {m['group']}.{m['part']}: meta {m['meta']:,} vs formula {m['formula']:,}" for m in ch["mismatches"]]
    return "\n".join(lines)


def side_by_side(budgets: list[dict], markdown: bool = False) -> str:
    header = ["model", "n_layers", "d_model", "n_heads", "d_head", "total", "active", "attention", "mlp", "embeddings",
              "attention share", "of active", "KV bytes/token", "train FLOPs/token"]
    rows = []
    for b in budgets:
        c, g = b["config"], b["groups"]
        emb = g["token_embedding"]["total"] + g["positions"]["total"] + g["unembedding"]["total"]
        rows.append([b["model"], str(c["n_layers"]), str(c["d_model"]), str(c["n_heads"]), str(c["d_head"]),
                     human(b["total_params"]), human(b["active_params"]["total"]), human(g["attention"]["total"]),
                     human(g["mlp"]["total"]), human(emb), f"{100 * b['attention_share']:.1f}%",
                     f"{100 * b['active_params']['attention_share']:.1f}%", f"{b['kv_cache']['bytes_per_token']:,}",
                     human(b["flops_per_token"]["training"], "FLOP")])
    return table(header, rows, markdown)


def draw_chart(budgets: list[dict], shares: list[dict], path: Path) -> None:
    """Top: each model's parameters by group (share of its total, biases hatched).
    Bottom: attention's share against model size for every preset, these models marked."""
    colors = {"token_embedding": "#4c72b0", "positions": "#8172b2", "attention": "#dd8452", "mlp": "#55a868",
              "norms": "#937860", "unembedding": "#c44e52", "other": "#999999"}
    names = [b["model"] or "model" for b in budgets]
    fig = Figure(figsize=(10, 4.6 + 0.45 * len(budgets)))
    ax, ax2 = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1.2 + 0.45 * len(budgets), 3]})
    left = [0.0] * len(budgets)
    inside = []  # (centre, row, width, text): each group's name and share, written in its bar where it fits
    for g in list(GROUPS) + ["other"]:
        # each group's share of all parameters, weights and biases together: the figure budget.md prints
        totals = [100 * b["groups"].get(g, {}).get("total", 0) / b["total_params"] for b in budgets]
        if not any(totals):
            continue
        label = g if len(budgets) > 1 else f"{g} {totals[0]:.2f}%"
        for part, hatch in (("weight", None), ("bias", "///")):
            vals = [100 * b["groups"].get(g, {}).get(part, 0) / b["total_params"] for b in budgets]
            if any(vals):
                ax.barh(names, vals, left=left, color=colors[g], hatch=hatch, edgecolor="white",
                        label=label if part == "weight" else None)
            left = [a + v for a, v in zip(left, vals)]
        inside += [(left[i] - v / 2, i, v, f"{g}\n{v:.2f}%") for i, v in enumerate(totals)]
    for i, b in enumerate(budgets):
        ax.text(101, i, human(b["total_params"]), va="center", fontsize=8)
    ax.set_xlim(0, 112)
    ax.set_xlabel("share of all parameters (%): weights and biases together, as budget.md (biases hatched)", fontsize=8)
    ax.invert_yaxis()
    title = "Where the parameters go" + (f": {names[0]}" if len(budgets) == 1 else "")
    if len(budgets) == 1 and budgets[0]["per_head"]:
        ph = budgets[0]["per_head"]
        title += (f"\nattention weights {ph['all_layers_weights']:,} = {ph['n_layers']} layers x {ph['n_heads']} heads"
                  f" x {ph['per_head_weights']:,} (W_q, W_k, W_v, W_o)")
    ax.set_title(title, fontsize=9)
    below = ax.transAxes + ScaledTranslation(0, -0.5, fig.dpi_scale_trans)  # half an inch under the axes
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncol=4, fontsize=7, frameon=False)

    xs = [r["total_params"] for r in shares]
    ys = [100 * r["attention_share"] for r in shares]
    ax2.plot(xs, ys, "o", color="#dd8452", ms=4)
    sparse = [r for r in shares if r.get("active_params", r["total_params"]) != r["total_params"]]
    for r in sparse:  # a mixture of experts: the share of what one token uses, joined to the share of all
        active = (r["active_params"], 100 * r["active_attention_share"])
        ax2.plot([r["total_params"], active[0]], [100 * r["attention_share"], active[1]], color="#55a868", lw=0.6)
        ax2.plot(*active, "s", color="#55a868", ms=4, label="active per token" if r is sparse[0] else None)
    if sparse:
        ax2.legend(loc="lower left", fontsize=7, frameon=False)
    for b in budgets:
        ax2.plot([b["total_params"]], [100 * b["attention_share"]], "o", ms=10, mfc="none", mec="black")
    ax2.axhline(100 / 3, color="grey", lw=0.8, ls="--")
    ax2.annotate("one third", (1, 100 / 3), xycoords=("axes fraction", "data"), xytext=(3, 0),
                 textcoords="offset points", va="center", fontsize=7, color="grey")  # beside the axes, not on a point
    ax2.set_xscale("log")
    ax2.set_xlim(min(xs) / 3, max(xs) * 3)
    every_y = ys + [100 * r["active_attention_share"] for r in sparse]
    ax2.set_ylim(min(every_y) - 3, max(max(every_y), 100 / 3) + 3)  # room for the lowest and highest points' labels
    ax2.set_xlabel("parameters (log scale)", fontsize=8)
    ax2.set_ylabel("attention share (%)", fontsize=8)
    ax2.set_title("Attention's share by preset (circled: this report)", fontsize=9)
    fig.tight_layout()
    per_percent = ax.transData.transform([(1, 0)])[0][0] - ax.transData.transform([(0, 0)])[0][0]
    for centre, row, width, text in inside:  # narrower groups are named in the legend only: no label is clipped
        label = ax.text(centre, row, text, ha="center", va="center", fontsize=7, color="white")
        if label.get_window_extent(renderer_for(fig)).width > width * per_percent - 4:
            label.remove()
    line = ax2.transData.transform([(min(xs), 100 / 3)])[0][1]
    x0, _, x1, _ = ax2.bbox.extents
    place_labels(ax2, list(zip(xs, ys)), [r["model"] for r in shares], fontsize=6, avoid=[(x0, line - 1, x1, line + 1)])
    save_png(fig, path, dpi=120)


def preset_shares() -> list[dict]:
    """Attention share of every preset (formulas only; cross-checked against meta counts in the tests)."""
    names = preset_names()
    presets = preset_configs(names)
    rows = []
    for name in names:
        f = formula_total(presets[name])
        rows.append({"model": name, **f["config"], "total_params": f["total_params"], "attention_share": f["attention_share"],
                     "active_params": f["active_params"], "active_attention_share": f["active_attention_share"]})
    return sorted(rows, key=lambda r: r["total_params"])


_SIZE = re.compile(r"(\d+x)?\d+[bm]\d*|a\d+b|small|medium|large|xl")


def preset_family(name: str) -> str:
    """A preset's family: its name without the size parts at its end (gpt_oss_20b -> gpt_oss, qwen3_30b_a3b ->
    qwen3, gpt3_1b3 -> gpt3, deepseek_v3 and tiny_moe as they are)."""
    parts = name.split("_")
    while len(parts) > 1 and _SIZE.fullmatch(parts[-1]):
        parts.pop()
    return "_".join(parts)


def shares_table(rows: list[dict], markdown: bool = False) -> str:
    """One row per preset: its family (its name less the size), width, depth, query/key-value heads, size, share."""
    return table(["preset", "family", "d_model", "n_layers", "heads q/kv", "total", "attention share", "active",
                  "of active"],
                  [[r["model"], preset_family(r["model"]), str(r["d_model"]), str(r["n_layers"]),
                    f"{r['n_heads']}/{r.get('n_kv_heads', r['n_heads'])}", human(r["total_params"]),
                    f"{100 * r['attention_share']:.1f}%", human(r.get("active_params", r["total_params"])),
                    f"{100 * r.get('active_attention_share', r['attention_share']):.1f}%"] for r in rows], markdown)


def write_budget_files(budgets: list[dict], out_dir: Path, shares: list[dict] | None = None) -> str:
    """budget.json, budget.md and budget.png for one budget or several side by side; returns the text report."""
    out_dir = Path(out_dir)
    shares = preset_shares() if shares is None else shares
    text = "\n\n".join(render(b) for b in budgets) if len(budgets) == 1 else side_by_side(budgets)
    text += ("\n\nAttention share by preset (grows with width: 4d² of the 12d² in each block, against fixed embeddings; "
             "shrinks when query heads share fewer key/value heads)\n")
    text += shares_table(shares)
    md = "# Parameter budget\n\n" + "\n\n".join(render(b, markdown=True) for b in budgets)
    if len(budgets) > 1:
        md += "\n\n## Side by side\n\n" + side_by_side(budgets, markdown=True)
    md += "\n\n## Attention share by preset\n\n" + shares_table(shares, markdown=True) + "\n"
    payload = budgets[0] if len(budgets) == 1 else {"models": budgets}
    atomic_write(out_dir / "budget.json", json.dumps({**payload, "preset_attention_shares": shares}, indent=2) + "\n")
    atomic_write(out_dir / "budget.md", md)
    draw_chart(budgets, shares, out_dir / "budget.png")
    return text
