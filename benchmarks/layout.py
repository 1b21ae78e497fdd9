"""The house in figures: lines and modules per folder of builder/, function-level imports (each should
carry a reason), ``import builder`` time, and which heavy libraries loading a model pulls in.

    python benchmarks/layout.py            # a table; --json for the raw numbers

Start-up figures are medians of fresh interpreters (--runs, default 5): the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pytorch_lightning", "lightning", "lightning_fabric", "wandb", "matplotlib", "transformers", "hydra",
         "torch._dynamo", "tokenizers", "rich")

PROBE = """
import json, sys, time
start = time.perf_counter()
import builder
took = time.perf_counter() - start
model = builder.build_model(builder.compose(["model=tiny"]).model)
import tempfile, torch, pathlib
from safetensors.torch import save_file
d = pathlib.Path(tempfile.mkdtemp())
before = set(sys.modules)
builder.load_model(sys.argv[1])
with builder.capture_attention(model) as rec:
    model(torch.zeros(1, 4, dtype=torch.long))
print(json.dumps({"import_s": took, "modules": sorted(sys.modules)}))
"""


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement inside a function or method."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, a.name) for a in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, "." * inner.level + (inner.module or "")))
    return sorted(set(found))


def static_figures() -> dict:
    files = sorted((ROOT / "builder").rglob("*.py"))
    per_folder = Counter(str(f.parent.relative_to(ROOT)) for f in files)
    imports = {str(f.relative_to(ROOT)): function_level_imports(f) for f in files}
    return {"lines": sum(len(f.read_text().splitlines()) for f in files), "modules": len(files),
            "modules_per_folder": dict(sorted(per_folder.items())),
            "function_level_imports": sum(len(v) for v in imports.values()),
            "function_level_by_file": {k: len(v) for k, v in imports.items() if v}}


def startup_figures(checkpoint: str, runs: int) -> dict:
    times, modules = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PROBE, checkpoint], capture_output=True, text=True, cwd=ROOT,
                             check=True)
        data = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(data["import_s"])
        modules = data["modules"]
    heavy = {h: any(m == h or m.startswith(h + ".") for m in modules) for h in HEAVY}
    return {"import_builder_s_median": statistics.median(times), "import_builder_s_min": min(times),
            "modules_after_load_model_and_capture": len(modules), "heavy_imported": heavy}


def tiny_export(tmp: Path) -> str:
    """A tiny model's export directory to load (written with the project's own export)."""
    code = f"""
import builder, json, pathlib
from safetensors.torch import save_file
m = builder.build_model(builder.compose(["model=tiny"]).model)
d = pathlib.Path({str(tmp)!r}); d.mkdir(parents=True, exist_ok=True)
state = {{k: v.contiguous() for k, v in m.state_dict().items() if k != "unembedding.weight"}}
save_file(state, str(d / "model.safetensors"))
from omegaconf import OmegaConf
cfg = OmegaConf.to_container(builder.compose(["model=tiny"]).model, resolve=True)
(d / "hydraformer.json").write_text(json.dumps({{"format": "hydraformer-export-v1", "model": cfg, "tokenizer": None}}))
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return str(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        figures = {**static_figures(), **startup_figures(tiny_export(Path(tmp) / "export"), args.runs)}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"builder/: {figures['lines']:,} lines in {figures['modules']} modules")
    for folder, n in figures["modules_per_folder"].items():
        print(f"  {folder:<20} {n} modules")
    print(f"function-level imports: {figures['function_level_imports']}")
    for f, n in figures["function_level_by_file"].items():
        print(f"  {f:<36} {n}")
    print(f"import builder: {figures['import_builder_s_median']:.2f} s median of {args.runs} "
          f"(min {figures['import_builder_s_min']:.2f} s)")
    print(f"after load_model + capture_attention: {figures['modules_after_load_model_and_capture']} modules; heavy: "
          + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in figures["heavy_imported"].items()))


if __name__ == "__main__":
    main()
