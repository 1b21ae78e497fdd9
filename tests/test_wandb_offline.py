"""Round-trip: a real offline wandb run, read back with tests/wandb_offline.py."""

from __future__ import annotations

import math
import struct

import pytest
from wandb_offline import (
    BLOCK_LEN,
    FILE_HEADER_IDENT,
    WandbLogError,
    find_runs,
    isolate_wandb,
    iter_payloads,
    load_table,
    metric,
    read_run,
    teardown_wandb,
    wait_for_exit,
)

wandb = pytest.importorskip("wandb")


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    isolate_wandb(monkeypatch, tmp_path / "home", mode="offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield tmp_path
    teardown_wandb()


LOSSES = [2.5, 1.75, 1.125, 0.5625, 0.3]
CONFIG = {"lr": 0.001, "model": {"d_model": 64, "n_layers": 2}, "tags": ["a", "b"], "name": "tiny"}


def _make_run(tmp_path):
    run = wandb.init(project="hydraformer-test", group="grp", name="reader-check", config=CONFIG)
    run_id = run.id
    for i, loss in enumerate(LOSSES):
        wandb.log({"train/loss": loss, "step": i})
    table = wandb.Table(columns=["name", "params"], data=[["embed", 4096], ["blocks", 12345]])
    wandb.log({"budget": table})
    wandb.finish()
    return run_id


def test_round_trip(wandb_env):
    tmp_path = wandb_env
    run_id = _make_run(tmp_path)

    runs = find_runs(tmp_path)
    assert len(runs) == 1
    path = runs[0]
    # wandb.finish() may return before wandb-core flushed the file
    assert wait_for_exit(path)
    assert path.name == f"run-{run_id}.wandb"
    assert path.parent.name.startswith("offline-run-")
    assert path.read_bytes()[:4] == FILE_HEADER_IDENT

    # directory, file and root all resolve to the same run
    for target in (path, path.parent):
        assert read_run(target)["path"] == path
    run = read_run(tmp_path)

    assert run["run"]["id"] == run_id
    assert run["run"]["project"] == "hydraformer-test"
    assert run["run"]["group"] == "grp"
    assert run["run"]["name"] == "reader-check"
    assert run["config"] == CONFIG

    loss_rows = [r for r in run["history"] if "train/loss" in r]
    assert [r["train/loss"] for r in loss_rows] == LOSSES
    assert [r["step"] for r in loss_rows] == list(range(len(LOSSES)))
    assert metric(run, "train/loss") == LOSSES
    assert [r["_step"] for r in run["history"]] == list(range(len(LOSSES) + 1))

    # the table: a reference in history/summary, data in files/
    ref = run["history"][-1]["budget"]
    assert ref["_type"] == "table-file"
    assert ref["path"] in run["files"]
    assert run["summary"]["budget"]["_type"] == "table-file"
    assert load_table(run, "budget") == {
        "columns": ["name", "params"],
        "data": [["embed", 4096], ["blocks", 12345]],
    }

    assert run["summary"]["train/loss"] == LOSSES[-1]
    assert run["summary"]["step"] == len(LOSSES) - 1
    assert "_wandb" not in run["summary"]
    assert run["exit_code"] == 0
    for kind in ("header", "run", "history", "summary", "files", "exit"):
        assert kind in run["records"]
    assert run["records"][0] == "header"
    assert run["records"][-1] == "exit"


def test_records_spanning_blocks(wandb_env):
    """Big records are split FIRST/MIDDLE/LAST across 32 KiB blocks."""
    big = "x" * (3 * BLOCK_LEN + 123)  # forces MIDDLE chunks
    wandb.init(project="p", config={"big": big})
    values = [i * 0.5 for i in range(400)]
    for v in values:
        wandb.log({"v": v, "note": f"row-{v}"})
    wandb.finish()

    (path,) = find_runs(wandb_env)
    assert wait_for_exit(path)
    assert path.stat().st_size > 5 * BLOCK_LEN
    chunk_types = _chunk_types(path.read_bytes())
    assert {1, 2, 3, 4} <= chunk_types

    run = read_run(path)
    assert run["config"]["big"] == big
    assert metric(run, "v") == values
    assert metric(run, "note") == [f"row-{v}" for v in values]


def test_special_floats_and_nested(wandb_env):
    wandb.init(project="p")
    wandb.log({"nan": float("nan"), "inf": float("inf"), "d": {"x": 1, "y": {"z": 2}}})
    wandb.finish()
    run = read_run(wandb_env)
    row = run["history"][0]
    assert math.isnan(row["nan"])
    assert row["inf"] == math.inf
    assert row["d"] == {"x": 1, "y": {"z": 2}}


def test_truncated_and_corrupt(wandb_env, tmp_path_factory):
    wandb.init(project="p")
    for i in range(5):
        wandb.log({"i": i})
    wandb.finish()
    (path,) = find_runs(wandb_env)
    assert wait_for_exit(path)
    data = path.read_bytes()
    out = tmp_path_factory.mktemp("broken")

    # cut in the middle of the last record: reader stops quietly
    cut = out / "run-cut.wandb"
    cut.write_bytes(data[: len(data) - 3])
    n_full = len(list(iter_payloads(path)))
    assert len(list(iter_payloads(cut))) == n_full - 1
    cut_run = read_run(cut, wait=0.1)
    assert metric(cut_run, "i") == list(range(5))
    assert cut_run["exit_code"] is None

    # flip a payload byte of the first record: checksum error
    bad = out / "run-bad.wandb"
    b = bytearray(data)
    b[7 + 7] ^= 0xFF
    bad.write_bytes(bytes(b))
    with pytest.raises(WandbLogError, match="checksum"):
        list(iter_payloads(bad))

    notwandb = out / "run-x.wandb"
    notwandb.write_bytes(b"hello world")
    with pytest.raises(WandbLogError):
        read_run(notwandb, wait=0)


def test_find_runs_empty_and_ambiguous(wandb_env):
    assert find_runs(wandb_env) == []
    with pytest.raises(FileNotFoundError):
        read_run(wandb_env)
    for _ in range(2):
        wandb.init(project="p")
        wandb.finish()
    assert len(find_runs(wandb_env)) == 2
    with pytest.raises(FileNotFoundError, match="exactly one"):
        read_run(wandb_env)


def _chunk_types(data: bytes) -> set[int]:
    types = set()
    pos = 7
    while pos + 7 <= len(data):
        left = BLOCK_LEN - pos % BLOCK_LEN
        if left < 7:
            pos += left
            continue
        _crc, length, ctype = struct.unpack_from("<IHB", data, pos)
        if ctype == 0:
            pos += left
            continue
        types.add(ctype)
        pos += 7 + length
    return types
