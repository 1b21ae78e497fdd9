"""The benchmark scripts run (tiny sizes): the README's performance figures come from them."""

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
