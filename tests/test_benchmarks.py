"""The benchmark scripts run (tiny sizes): the README's performance figures come from them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_train_throughput_compares_equal_models():
    pytest.importorskip("transformers")
    proc = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--preset", "tiny", "--batch", "2",
                           "--rounds", "2", "--modes", "fp32,bf16"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^(fp32|bf16) +builder +(\d+) tok/s +transformers +(\d+) tok/s +ratio ([\d.]+)x.*"
                      r"params ([\d,]+) vs ([\d,]+)$", proc.stdout, re.M)
    assert [r[0] for r in rows] == ["fp32", "bf16"], proc.stdout
    for _, ours, theirs, ratio, n_ours, n_theirs in rows:
        assert int(ours) > 0 and int(theirs) > 0 and float(ratio) > 0
        assert n_ours == n_theirs == "826,112"  # the same model, counted by each library
    assert "bf16 builder vs transformers fp32" in proc.stdout


def test_train_throughput_refuses_a_model_that_does_not_fit():
    proc = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--preset", "gpt3_175b", "--modes", "fp32"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "GiB" in proc.stderr and "gpt3_175b" in proc.stderr


def test_train_throughput_against_handwritten_and_llama():
    for args in (["--against", "handwritten", "--preset", "tiny"], ["--arch", "llama", "--context", "32", "--breakdown"]):
        proc = subprocess.run([sys.executable, "benchmarks/train_throughput.py", *args, "--batch", "2", "--rounds", "1",
                               "--modes", "fp32"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = re.findall(r"^fp32 +builder +(\d+) tok/s +(handwritten|transformers) +(\d+) tok/s +ratio ([\d.]+)x"
                          r".*params ([\d,]+) vs ([\d,]+)$", proc.stdout, re.M)
        assert len(rows) == 1 and rows[0][4] == rows[0][5], proc.stdout  # the same parameter count
    # --breakdown: each model's step split into matmul, attention and the rest, which add up to the step
    for name in ("builder", "transformers"):
        total, *parts = re.search(rf"{name} +([\d.]+) ms/step under the profiler: matmul ([\d.]+) ms \(\d+%\), "
                                  r"attention ([\d.]+) ms \(\d+%\), rest ([\d.]+) ms", proc.stdout).groups()
        assert float(parts[0]) > 0 and abs(sum(map(float, parts)) - float(total)) < 0.5, proc.stdout
    assert re.search(r"with the builder's 'rest' at zero: [\d.]+x", proc.stdout), proc.stdout


def test_generate_speed_compares_equal_llama_models():
    proc = subprocess.run([sys.executable, "benchmarks/generate_speed.py", "--tiny", "--rounds", "1", "--new", "8",
                           "--prompt", "4"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^builder +[\d.]+ tok/s +transformers +[\d.]+ tok/s +ratio [\d.]+x$", proc.stdout, re.M), proc.stdout
    # each model's ceiling: its matrix-vector products alone, above what decoding reaches
    for name in ("builder", "transformers"):
        ceiling, share, compiled = re.search(rf"^{name} +ceiling +([\d.]+) tok/s .* reaches (\d+)% of it, compiled (\d+)%$",
                                             proc.stdout, re.M).groups()
        assert float(ceiling) > 0 and 0 <= int(share) <= 100 and int(compiled) >= 0, proc.stdout
    # the compiled decoders: the builder's generate(compile=True) and transformers' static cache + compiled forward
    assert re.search(r"^compiled: builder +[\d.]+ tok/s +transformers +[\d.]+ tok/s +ratio [\d.]+x +\(compiling took \d+ s "
                     r"and \d+ s\)$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^builder compiled over transformers' eager generate: [\d.]+x$", proc.stdout, re.M), proc.stdout


def test_gpu_check_runs_its_steps_on_cpu(tmp_path):
    """The GPU check's CPU smoke mode: the same steps, tiny; the table names each one."""
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "GPU_CHECK_SMOKE": "1", "OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| pytest -m gpu (tests/test_gpu.py) | 4 skipped" in table
    assert re.search(r"train_throughput gpt2 .*builder +\d+ tok/s", table)
    assert re.search(r"train_throughput llama .*builder +\d+ tok/s", table)
    assert re.search(r"task=plan gpt2 model=tiny .* on 1 x h100_80gb, MFU 0.4 \| predicted [\d,]+ tok/s", table), table


def test_capture_memory_reports_each_mode():
    proc = subprocess.run([sys.executable, "benchmarks/capture_memory.py", "--preset", "tiny", "--tokens", "32",
                           "--layers", "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("model built", "capture, pattern only", "capture, every field", "task=attend pictures"):
        assert re.search(rf"^{label}.* +[\d,]+ MB", proc.stdout, re.M), proc.stdout


def test_startup_times_the_report_the_refusals_and_lightnings_import():
    """One round, against this same checkout (``--against``: the two trees alternated, the ratio of medians)."""
    proc = subprocess.run([sys.executable, "benchmarks/startup.py", "--runs", "1", "--against", str(REPO)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^import builder: [\d.]+ s; heavy modules imported: \[\]$", proc.stdout, re.M), proc.stdout
    names = re.findall(r"^(.+) \[(this|against)\]: median [\d.]+ s over 1 runs \(min [\d.]+, max [\d.]+\)"
                       r"(?:; this/against [\d.]+x)?$", proc.stdout, re.M)
    commands = ["task=report model=gpt2_small", "task=train model.n_heads=5 (refused)",
                "task=train data.tokenizer=bpe (refused)", "task=train train.lr=0 (refused)",
                "task=train model.nlayers=3 (refused)"]
    assert names == [(c, t) for c in commands for t in ("this", "against")] + [("import pytorch_lightning", "this")], \
        proc.stdout
    assert proc.stdout.count("this/against") == len(commands)


def test_checkpoint_check_times_the_finite_check_against_a_save(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/checkpoint_check.py", "--model", "tiny", "--repeats", "1",
                           "--dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^finite check of the weights and AdamW.s moments .*: \d+ ms; of the weights alone \d+ ms", proc.stdout,
                     re.M), proc.stdout
    assert re.search(r"^the check costs [\d.]+% of a save$", proc.stdout, re.M), proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_moe_dispatch_compares_sparse_and_dense_on_equal_outputs():
    proc = subprocess.run([sys.executable, "benchmarks/moe_dispatch.py", "--d-model", "16", "--hidden", "8",
                           "--experts", "4", "--top-k", "2", "--tokens", "64", "--rounds", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # non-zero when the two outputs differ
    rows = re.findall(r"^(forward|forward\+backward) +sparse +([\d.]+) ms +dense +([\d.]+) ms +dense/sparse "
                      r"([\d.]+)x", proc.stdout, re.M)
    assert [r[0] for r in rows] == ["forward", "forward+backward"], proc.stdout
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
