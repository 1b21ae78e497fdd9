"""Redraw the README's pictures (docs/images/*.png) from the lecture's model, through the tasks a person runs.

    python run.py experiment=lecture logger=csv hydra.run.dir=outputs/lecture    # the model (once)
    python docs/images/regenerate.py [outputs/lecture/checkpoints/last.ckpt]

Each picture passes builder.figures' text check as it is saved: a CrowdedText warning stops this script.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "docs" / "images"
PHRASE = "near the garden , the small mole dug again ."
CONTEXTS = "['near the garden , the mole dug again .','in the lab , the small mole reacted today .'," \
           "'by the clinic , the mole itched there .']"
GROUPS = "{adjectives:[fluffy,blue,shiny,verdant,small,loud],nouns:[creature,forest,cat,otter,cave,river]," \
         "verbs:[roamed,swam,glowed,waited,dug,flew]}"

# (task and its settings, {file the task writes (a glob): name in docs/images})
RUNS = [
    (["task=attend", f"text='{PHRASE}'"], {"patterns.png": "patterns.png", "steps_L*_H*.png": "steps.png"}),
    (["task=embed", "words=[fluffy,creature]", f"groups={GROUPS}"],
     {"nearest.png": "embed_nearest.png", "map.png": "embed_map.png"}),
    (["task=context", "word=mole", f"contexts={CONTEXTS}"], {"context.png": "context_mole.png"}),
    (["task=lens", f"text='{PHRASE}'"], {"lens.png": "lens.png", "attribution.png": "attribution.png"}),
]


def main(checkpoint: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for n, (args, files) in enumerate(RUNS):
            out = Path(tmp) / str(n)
            command = [sys.executable, "-W", "error::builder.figures.CrowdedText", str(REPO / "run.py"), *args,
                       f"checkpoint={checkpoint}", f"hydra.run.dir={out}"]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                print(" ".join(args), "failed:\n", done.stdout[-2000:], done.stderr[-3000:], file=sys.stderr)
                return 1
            for pattern, name in files.items():
                (found,) = sorted(out.glob(pattern))
                shutil.copy(found, IMAGES / name)
                print(f"{IMAGES / name} <- {' '.join(args[:1])}: {found.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "outputs" / "lecture" / "checkpoints" / "last.ckpt")))
