"""task=attend: every picture of the lecture for one phrase, from a checkpoint, an export or a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from ..interp.pictures import encode_text, token_strings, write_attention_pictures
from ..interp.routing import capture_routing_on, moe_layers, write_routing
from .reading import read_model


def run(cfg, out_dir: Path) -> int:
    model, tokenizer, _ = read_model(cfg, "text='...'", texts={"text": cfg.text})
    files = write_attention_pictures(model, tokenizer, cfg.text, out_dir, cfg.layers, cfg.heads,
                                     title=Path(str(cfg.checkpoint)).name)
    print(f"attention of {len(model.blocks)} layers x {model.blocks[0].attention.n_heads} heads on {cfg.text!r}:")
    for line in files["summary"]:
        print(f"  {line}")
    print(f"  {files['patterns']}\n  {files['steps']}\n  {files['html']}")
    for p in files["heads"]:
        print(f"  {p}")
    if moe_layers(model):  # a mixture of experts: which experts each token goes to, per layer
        ids = encode_text(tokenizer, cfg.text, model)
        routes = capture_routing_on(model, ids)
        written = write_routing(routes, token_strings(tokenizer, ids[0].tolist()), out_dir,
                                title=f"{Path(str(cfg.checkpoint)).name}: experts per token on {cfg.text!r}")
        print(f"routing of {len(routes)} mixture-of-experts layers (tokens x experts, and the load per expert):\n"
              f"  {written['png']}\n  {written['json']}")
    return 0
