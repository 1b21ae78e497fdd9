"""The house's rules, checked: one direction of imports (import-linter contracts in pyproject.toml), the
inference path without Lightning, and a reason beside every import made inside a function."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

import builder
from builder.config.plain import to_plain

REPO = Path(__file__).resolve().parents[1]
# what loading a model and looking inside it must never import (torch, numpy, matplotlib, safetensors are fine)
NOT_FOR_INFERENCE = ("pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "wandb", "hydra", "omegaconf",
                     "transformers", "rich", "tensorboard")


def test_import_contracts_hold(monkeypatch):
    """builder's layers (tasks > training > interp > checkpoint|report > hf > budget|generate > model|data > config >
    errors|files|tables), components free of builder/Hydra/Lightning, and the inference modules free of Lightning."""
    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_the_contracts_name_every_module_of_builder():
    """A new module or sub-package of builder/ must be placed in a layer (import-linter ignores what it is not told of)."""
    import tomllib

    layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    present = {p.stem if p.is_file() else p.name for p in (REPO / "builder").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert present == placed


def test_loading_and_looking_inside_import_no_lightning(tmp_path):
    """load_model, capture_attention, the pictures and the page run with only torch, the project and matplotlib."""
    model_cfg = to_plain(builder.compose(["model=tiny", "model.vocab_size=30", "model.n_layers=2"]).model)
    code = f"""
import json, sys, pathlib
import builder
from builder.data.tokenizers import CharTokenizer
from builder.files import atomic_write
from builder.interp.heads import score_heads
from builder.interp.pictures import write_attention_pictures
from safetensors.torch import save_file

cfg = json.loads({json.dumps(json.dumps(model_cfg))})
tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,")
model = builder.build_model(cfg)
export = pathlib.Path({str(tmp_path / "export")!r})
state = {{k: v.contiguous() for k, v in model.state_dict().items() if k != "unembedding.weight"}}
export.mkdir()
save_file(state, str(export / "model.safetensors"))
atomic_write(export / "hydraformer.json", json.dumps({{"model": cfg, "tokenizer": tok.to_dict()}}))
loaded, tokenizer, _ = builder.load_model(export)
with builder.capture_attention(loaded) as rec:
    loaded(builder.interp.capture.torch.tensor([tokenizer.encode("a fluffy blue creature")]))
files = write_attention_pictures(loaded, tokenizer, "a fluffy blue creature", {str(tmp_path / "pictures")!r})
score_heads(loaded, tokenizer)
print(json.dumps({{"modules": sorted(sys.modules), "files": [str(files["patterns"]), str(files["html"])],
                  "pattern": list(rec.pattern(0).shape)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pattern"] == [1, 4, 22, 22] and all(Path(f).stat().st_size > 0 for f in out["files"])
    imported = {m.split(".")[0] for m in out["modules"]}
    assert not imported & set(NOT_FOR_INFERENCE), sorted(imported & set(NOT_FOR_INFERENCE))
    assert "matplotlib" in imported and "torch" in imported  # the pictures were really drawn


def _function_level_imports(path: Path) -> list[ast.stmt]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def test_every_function_level_import_says_why():
    """Imports sit at the top of their file; one inside a function (start-up time, a heavy optional library)
    carries its reason in a comment on the same line or the line above."""
    missing = []
    for path in sorted((REPO / "builder").rglob("*.py")) + sorted((REPO / "components").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in _function_level_imports(path):
            here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
            if "#" not in here and not above.strip().startswith("#") and "#" not in above:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {here.strip()}")
    assert not missing, "function-level imports without a reason:\n" + "\n".join(missing)
