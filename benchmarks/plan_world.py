"""task=plan's figures beside published training runs (the README's "checked against the world" table).

    python benchmarks/plan_world.py            # the Markdown table
    python benchmarks/plan_world.py --json     # the rows as JSON

Each run is planned as task=plan would plan it (builder.plan.make_plan on the composed preset and its overrides),
at the default MFU (plan.mfu=0.4), on the GPUs the publication names. "Implied MFU": the plan's training FLOPs over
the published GPU-hours (or tokens/s) at the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import builder  # noqa: E402
from builder.budget import parameter_budget  # noqa: E402
from builder.config.checks import check_job  # noqa: E402
from builder.config.plain import to_plain  # noqa: E402
from builder.errors import ConfigError  # noqa: E402
from builder.plan import make_plan, training_flops  # noqa: E402
from builder.tables import table  # noqa: E402

LLAMA2_13B = ["model=llama2_7b", "model.d_model=5120", "model.n_layers=40", "model.n_heads=40",
              "model.attention.n_kv_heads=40", "model.mlp.hidden=13824"]
LLAMA2_70B = ["model=llama2_7b", "model.d_model=8192", "model.n_layers=80", "model.n_heads=64",
              "model.attention.n_kv_heads=8", "model.mlp.hidden=28672"]
LLAMA31_405B = ["model=llama3_70b", "model.d_model=16384", "model.n_layers=126", "model.n_heads=128",
                "model.mlp.hidden=53248"]
# the published global batches: Llama 2 4M tokens (1024 windows of 4096), Llama 3 405B 16M tokens (2048 of 8192), one
# window per data-parallel GPU (the 8B and 70B GPU counts are not published: 2048, one window each)
LLAMA2 = ["plan.tokens=2e12", "plan.gpu=a100_80gb", "data.batch_size=1", "plan.global_batch=1024", "plan.gpus=1024"]
LLAMA31 = ["plan.tokens=15e12", "plan.gpu=h100_80gb", "data.batch_size=1", "data.context_length=8192",
           "plan.global_batch=2048"]
SOURCES = {
    "gpt3": "[GPT-3 paper](https://arxiv.org/abs/2005.14165), Table D.1",
    "llama2": "[Llama 2 model card](https://github.com/meta-llama/llama/blob/main/MODEL_CARD.md)",
    "llama31": "[Llama 3.1 model card](https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/"
               "MODEL_CARD.md)",
    "torchtitan": "[torchtitan performance](https://github.com/pytorch/torchtitan/blob/main/docs/performance.md)",
    "chinchilla": "[Chinchilla paper](https://arxiv.org/abs/2203.15556), Table 3",
}
# (name, overrides, what was published, its value, source)
RUNS = [
    ("GPT-3 175B, 300B tokens", ["model=gpt3_175b", "plan.tokens=300e9", "plan.gpu=a100_40gb", "data.batch_size=1",
                                 "plan.global_batch=1536"], "flops_total", 3.14e23, "gpt3"),
    ("Llama 2 7B, 2T tokens", ["model=llama2_7b", *LLAMA2], "gpu_hours", 184_320, "llama2"),
    ("Llama 2 13B, 2T tokens", [*LLAMA2_13B, *LLAMA2], "gpu_hours", 368_640, "llama2"),
    ("Llama 2 70B, 2T tokens", [*LLAMA2_70B, *LLAMA2], "gpu_hours", 1_720_320, "llama2"),
    ("Llama 3.1 8B, 15T tokens", ["model=llama3_8b", *LLAMA31, "plan.gpus=2048"], "gpu_hours", 1.46e6, "llama31"),
    ("Llama 3.1 70B, 15T tokens", ["model=llama3_70b", *LLAMA31, "plan.gpus=2048"], "gpu_hours", 7.0e6, "llama31"),
    ("Llama 3.1 405B, 15T tokens", [*LLAMA31_405B, *LLAMA31, "plan.gpus=16384"], "gpu_hours", 30.84e6, "llama31"),
    ("torchtitan Llama 3.1 8B, 8 H100, FSDP", ["model=llama3_8b", "plan.gpu=h100_80gb", "plan.gpus=8",
                                                "data.batch_size=1", "data.context_length=8192", "plan.tokens=1e9"],
     "tokens_per_s_per_gpu", 5_762, "torchtitan"),
    ("Chinchilla: 1B parameters", None, "chinchilla_tokens", 20.2e9, "chinchilla"),
    ("Chinchilla: 10B parameters", None, "chinchilla_tokens", 205.1e9, "chinchilla"),
    ("Chinchilla: 67B parameters", None, "chinchilla_tokens", 1.5e12, "chinchilla"),
]
CHINCHILLA_PARAMS = {"Chinchilla: 1B parameters": 1e9, "Chinchilla: 10B parameters": 10e9,
                     "Chinchilla: 67B parameters": 67e9}


def plan_of(overrides: list[str]) -> dict:
    cfg = builder.compose(["task=plan", *overrides])
    settings = check_job(cfg)
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), None)
    model_cfg = to_plain(cfg.model)
    budget = parameter_budget(model_cfg, name)
    try:
        return make_plan(budget, settings.plan, settings.data.batch_size, settings.data.context_length, model_cfg)
    except ConfigError:  # no layout hydraformer trains fits (it has no pipeline, sequence or vocabulary parallelism)
        flops = training_flops(budget, settings.data.context_length, settings.plan.tokens)
        return {"params": budget["total_params"], **flops, "fits_nowhere": True,
                "accelerator": asdict(settings.plan.accelerators[settings.plan.gpu])}


def rows() -> list[dict]:
    out = []
    for name, overrides, key, published, source in RUNS:
        if overrides is None:  # Chinchilla's rule: 20 tokens a parameter
            out.append({"run": name, "key": key, "published": published, "plan": 20 * CHINCHILLA_PARAMS[name],
                        "implied_mfu": None, "source": source, "layout": "", "params": CHINCHILLA_PARAMS[name]})
            continue
        p = plan_of(overrides)
        chosen = p["layouts"][p["chosen"]] if "layouts" in p else None
        peak = p["accelerator"]["bf16_tflops"] * 1e12
        value = p[key] if key in p else chosen[key] if chosen else None
        implied = None
        if key == "gpu_hours":
            implied = p["flops_total"] / (published * 3600 * peak)
        elif key == "tokens_per_s_per_gpu":
            implied = published * p["flops_per_token"] / peak
        out.append({"run": name, "key": key, "published": published, "plan": value, "implied_mfu": implied,
                    "source": source, "layout": f"{p['gpus']} x {p['gpu']}, {chosen['layout']}" if chosen else
                    "fits none of task=plan's layouts (no pipeline or vocabulary parallelism)",
                    "params": p["params"], "flops_total": p["flops_total"]})
    return out


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key == "flops_total":
        return f"{v:.3g} FLOPs"
    if key == "gpu_hours":
        return f"{v:,.0f} GPU-h"
    if key == "tokens_per_s_per_gpu":
        return f"{v:,.0f} tokens/s/GPU"
    return f"{v / 1e9:,.1f}B tokens"


def markdown(found: list[dict]) -> str:
    body = [[r["run"], _fmt(r["key"], r["published"]), _fmt(r["key"], r["plan"]),
             "-" if r["plan"] is None else f"{r['plan'] / r['published']:.2f}",
             "" if r["implied_mfu"] is None else f"{r['implied_mfu']:.2f}", r["layout"] or "20 x parameters",
             SOURCES[r["source"]]] for r in found]
    return table(["published run", "published", "task=plan (MFU 0.4)", "plan / published", "implied MFU",
                  "planned on", "source"], body, markdown=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    found = rows()
    print(json.dumps(found, indent=2) if parser.parse_args().json else markdown(found))
