"""How responsive the attention page is on a long input of a Llama-shaped model, in headless Chromium.

    python benchmarks/attention_page.py [--tokens 1024] [--layers 2] [--heads 8] [--kv-heads 2] [--repeats 5]

Builds a random-weight Llama-shaped model (rotary, RMSNorm, SwiGLU, grouped-query attention, no biases, untied),
records every head on ``--tokens`` random tokens, writes the page with every layer and head, and opens it in
Debian's Chromium (tests/browser.py). Prints the page's size and the median of ``--repeats`` runs of: load (from
navigation to the first render), selecting another head, selecting another layer, hovering a token (script
only, and with a real mouse event round trip), and switching to the grid of all heads. Random weights spread
attention evenly, so their pages compress worst: trained models give smaller pages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser  # noqa: E402

import builder  # noqa: E402
from builder.interp.capture import head_layout, record  # noqa: E402
from builder.interp.page import write_attention_html  # noqa: E402

READY = "document.body.dataset.ready === '1' || document.body.dataset.ready === 'error'"


def ms(b: Browser, js: str) -> float:
    return b.eval(f"(() => {{ const t0 = performance.now(); {js}; return performance.now() - t0; }})()")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    T, L, H = args.tokens, args.layers, args.heads
    cfg = {"d_model": 8 * H, "n_layers": L, "n_heads": H, "d_head": None, "vocab_size": 256, "context_length": T,
           "bias": False, "tie_embeddings": False, "dropout": 0.0, "embedding": {"name": "rotary"},
           "attention": {"name": "grouped_query", "n_kv_heads": args.kv_heads}, "mask": {"name": "causal"},
           "mlp": {"name": "swiglu"}, "norm": {"name": "rmsnorm"}}
    torch.manual_seed(0)
    model = builder.build_model(cfg).eval()
    rec = record(model, torch.randint(256, (1, T)))
    patterns = torch.stack([rec.pattern(i)[0] for i in range(L)])
    masks = torch.stack([rec.mask(i)[0, 0] for i in range(L)])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_attention_html(Path(tmp) / "page.html", [f" t{i}" for i in range(T)], patterns, masks,
                                    kv_heads=head_layout(model), layer_notes=[rec.mask_note(i) for i in range(L)])
        write_s = time.perf_counter() - start
        size = path.stat().st_size
        runs: dict[str, list[float]] = {}
        with Browser() as b:
            for _ in range(args.repeats):
                start = time.perf_counter()
                b.open(path.as_uri(), timeout=120)
                state = b.wait_for(READY + " ? document.body.dataset.ready : ''", timeout=120, interval=0.01)
                load = (time.perf_counter() - start) * 1000
                if state != "1":
                    print(f"the page failed: {b.eval('__hf && __hf.info ? __hf.info() : document.body.innerText')}")
                    return 1
                runs.setdefault("load (navigation to first render)", []).append(load)
                runs.setdefault("select another head", []).append(ms(b, f"__hf.select(0, {H - 1})"))
                runs.setdefault("select another layer", []).append(ms(b, f"__hf.select({L - 1}, 1)"))
                runs.setdefault("hover a token (script)", []).append(ms(b, f"__hf.hover({T - 100})"))
                x, y = b.center_of(f"document.querySelectorAll('#tokens .tok')[{T // 2}]")
                start = time.perf_counter()
                b.mouse_move(x, y)
                b.eval("__hf.info()")
                runs.setdefault("hover a token (mouse event round trip)", []).append((time.perf_counter() - start) * 1000)
                runs.setdefault("all heads of a layer (grid)", []).append(ms(b, "__hf.view('grid')"))
                runs.setdefault("back to one head", []).append(ms(b, "__hf.view('single')"))
            errors = b.errors
    print(f"{T} tokens, {L} layers x {H} heads ({args.kv_heads} K/V heads): page {size:,} bytes, written in {write_s:.2f} s")
    for name, values in runs.items():
        print(f"  {name:<40} {statistics.median(values):8.1f} ms  (median of {len(values)}; max {max(values):.1f})")
    if errors:
        print(f"page errors: {errors}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
