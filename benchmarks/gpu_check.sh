#!/usr/bin/env bash
# The GPU checks: one script for a lent GPU machine (H100 / H200), at most ~8 minutes.
#
#   here, once:  bash benchmarks/gpu_wheels.sh        # wheels of what the device image lacks -> .whl/
#   device:      bash benchmarks/gpu_check.sh         # with .whl carried; the table lands in $OUT/gpu_check.md
#   CPU smoke:   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # the same steps, tiny, on this machine
#
# Steps: the gpu-marked tests (bf16-mixed run.py training with trainer=gpu, torch.compile, FSDP on one GPU,
# capture and sampling on cuda), then benchmarks/train_throughput.py for gpt2_small (bf16, with and without
# compile: tokens/s and MFU against the data sheet's dense bf16 peak) and the Llama-shaped tinyllama_1b, and beside
# them task=plan's prediction for the same shapes on one of this GPU (at its default MFU, 0.4); and run.py's own
# training of tiny_moe (the mixture of experts, issue 26): its tokens/s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
SMOKE="${GPU_CHECK_SMOKE:-0}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hf_site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="/tmp/hf_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export WANDB_MODE=offline PYTHONUNBUFFERED=1 HYDRAFORMER_CACHE="${TMPDIR:-/tmp}/hydraformer_gpu_cache"
TABLE="$OUT/gpu_check.md"
python3 - > "$TABLE" <<'PY'
import datetime, platform, torch
where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
print(f"# GPU check, {datetime.date.today()}: {where}, torch {torch.__version__}\n")
print("| check | result |\n|---|---|")
PY

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu; GPT2="--preset tiny --batch 2 --rounds 2"; LLAMA="--arch llama --batch 2 --rounds 1 --context 32"
  MODES="fp32"; PLAN_GPT2="model=tiny data.batch_size=2"; PLAN_LLAMA="model=tiny data.batch_size=2 data.context_length=32"
else
  DEVICE=cuda; GPT2="--preset gpt2_small --batch 16 --rounds 10"; LLAMA="--arch llama --preset tinyllama_1b --batch 4 --rounds 6"
  MODES="bf16,bf16+compile"; PLAN_GPT2="model=gpt2_small data.batch_size=16"
  PLAN_LLAMA="model=tinyllama_1b data.batch_size=4"
fi

timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
echo "| pytest -m gpu (tests/test_gpu.py) | $(tail -n 1 "$OUT/gpu_tests.log" | tr -d '=|') |" >> "$TABLE"

for name in gpt2 llama; do
  if [ "$name" = gpt2 ]; then args="$GPT2"; else args="$LLAMA"; fi
  # shellcheck disable=SC2086
  timeout 150 python3 benchmarks/train_throughput.py --device "$DEVICE" --modes "$MODES" $args 2>&1 \
    | tee "$OUT/throughput_$name.log"
  grep -E "^(fp32|bf16)" "$OUT/throughput_$name.log" | while read -r line; do
    echo "| train_throughput $name $args | $line |" >> "$TABLE"
  done
  grep -qE "^(fp32|bf16)" "$OUT/throughput_$name.log" || echo "| train_throughput $name $args | failed: see throughput_$name.log |" >> "$TABLE"
done
# tiny_moe (issue 26): the mixture of experts trained by run.py itself, tokens/s from its summary.json
if [ "$SMOKE" = 1 ]; then MOE="trainer=cpu trainer.max_steps=6 callbacks.throughput.window=2"; else
  MOE="trainer=gpu trainer.max_steps=200 data.batch_size=32"; fi
# shellcheck disable=SC2086
timeout 150 python3 run.py model=tiny_moe $MOE trainer.val_check_interval=1000 trainer.enable_progress_bar=false \
  logger=csv hydra.run.dir="$OUT/tiny_moe" > "$OUT/tiny_moe.log" 2>&1
python3 - "$OUT/tiny_moe/summary.json" "$MOE" >> "$TABLE" <<'PY' || echo "| run.py model=tiny_moe | failed: see tiny_moe.log |" >> "$TABLE"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"| run.py model=tiny_moe {sys.argv[2]} | {s['tokens_per_s']:,.0f} tokens/s over its last window, "
      f"{s['steps']} steps, val/loss {s['val_loss']:.3f} |")
PY
GPU_KEY=$(python3 -c "import torch; n = torch.cuda.get_device_name() if torch.cuda.is_available() else ''; \
print(next((k for w, k in (('H200', 'h200_141gb'), ('B200', 'b200'), ('A100', 'a100_80gb')) if w in n), 'h100_80gb'))")
for name in gpt2 llama; do
  if [ "$name" = gpt2 ]; then args="$PLAN_GPT2"; else args="$PLAN_LLAMA"; fi
  # shellcheck disable=SC2086
  timeout 120 python3 run.py task=plan $args plan.gpu="$GPU_KEY" plan.gpus=1 plan.tokens=1e9 \
    hydra.run.dir="$OUT/plan_$name" > "$OUT/plan_$name.log" 2>&1
  python3 - "$OUT/plan_$name/plan.json" "$name $args" >> "$TABLE" <<'PY' || echo "| task=plan $name | failed: see plan_$name.log |" >> "$TABLE"
import json, sys
p = json.load(open(sys.argv[1]))
v = p["layouts"][p["chosen"]]
print(f"| task=plan {sys.argv[2]} on 1 x {p['gpu']}, MFU {p['mfu']} | predicted {v['tokens_per_s_per_gpu']:,.0f} "
      f"tok/s ({v['layout']}, {v['memory']['total'] / 2**30:.1f} GiB a GPU) |")
PY
done
echo
cat "$TABLE"
