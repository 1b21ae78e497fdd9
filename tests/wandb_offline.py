"""Read an offline wandb run (``run-<id>.wandb``) back from disk.

wandb (0.31) has no public Python reader for its transaction log, so tests use
this small one to check what a run actually recorded.

File format (as written by wandb-core):

* A 7-byte file header: ``b":W&B"``, a little-endian u16 magic ``0xBEE1`` and a
  u8 version (0).
* After that, a LevelDB-style record log.  The file is split into 32 KiB
  blocks *counted from the start of the file* (the file header occupies the
  first 7 bytes of block 0).  Every chunk has a 7-byte header:
  ``crc32 (u32 LE) | length (u16 LE) | type (u8)`` followed by ``length``
  bytes of payload.  Types: FULL=1, FIRST=2, MIDDLE=3, LAST=4.  A record that
  does not fit in the rest of a block is split into FIRST/MIDDLE.../LAST
  chunks; when fewer than 7 bytes remain in a block they are zero padding.
  The checksum is ``zlib.crc32(bytes([type]) + payload)`` (plain IEEE CRC-32,
  not LevelDB's masked CRC-32C).
* Each reassembled payload is a serialized
  ``wandb.proto.wandb_internal_pb2.Record``.

Public API: :func:`read_run`, :func:`find_runs`, :func:`iter_records`,
:func:`wait_for_exit`, :func:`load_table`, :func:`metric`; for tests
:func:`isolate_wandb` / :func:`teardown_wandb`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_HEADER_IDENT = b":W&B"
FILE_HEADER_MAGIC = 0xBEE1
FILE_HEADER_LEN = 7  # ident (4) + magic u16 (2) + version u8 (1)
BLOCK_LEN = 32 * 1024
CHUNK_HEADER_LEN = 7  # crc u32 + length u16 + type u8

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbLogError(ValueError):
    """The file is not a wandb transaction log or is corrupt."""


# --------------------------------------------------------------------------
# low level: payloads and records
# --------------------------------------------------------------------------


def iter_payloads(path: str | Path, *, check_crc: bool = True) -> Iterator[bytes]:
    """Yield the raw record payloads of a ``.wandb`` file in order.

    A truncated trailing record (run still in progress or killed) ends the
    iteration quietly; a corrupt one in the middle raises ``WandbLogError``.
    """
    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER_LEN or data[:4] != FILE_HEADER_IDENT:
        raise WandbLogError(f"{path}: not a wandb log (header {data[:7]!r})")
    (magic,) = struct.unpack_from("<H", data, 4)
    if magic != FILE_HEADER_MAGIC:
        raise WandbLogError(f"{path}: bad magic 0x{magic:04x}")

    pos = FILE_HEADER_LEN
    pending: bytearray | None = None
    size = len(data)
    while pos < size:
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < CHUNK_HEADER_LEN:
            pos += left_in_block  # trailer padding
            continue
        if pos + CHUNK_HEADER_LEN > size:
            return  # truncated header at the end of the file
        crc, length, ctype = struct.unpack_from("<IHB", data, pos)
        if ctype == 0 and length == 0 and crc == 0:
            # zero-filled space (pre-allocated / padded); skip to next block
            pos += left_in_block
            continue
        start = pos + CHUNK_HEADER_LEN
        end = start + length
        if end > size:
            return  # truncated payload at the end of the file
        payload = data[start:end]
        if check_crc and zlib.crc32(bytes([ctype]) + payload) != crc:
            raise WandbLogError(f"{path}: checksum mismatch at offset {pos}")
        pos = end

        if ctype == FULL:
            pending = None
            yield bytes(payload)
        elif ctype == FIRST:
            pending = bytearray(payload)
        elif ctype == MIDDLE:
            if pending is None:
                raise WandbLogError(f"{path}: MIDDLE chunk without FIRST at {pos}")
            pending += payload
        elif ctype == LAST:
            if pending is None:
                raise WandbLogError(f"{path}: LAST chunk without FIRST at {pos}")
            pending += payload
            yield bytes(pending)
            pending = None
        else:
            raise WandbLogError(f"{path}: unknown chunk type {ctype} at {pos}")


def iter_records(path: str | Path, *, check_crc: bool = True) -> Iterator[Any]:
    """Yield parsed ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in iter_payloads(path, check_crc=check_crc):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


# --------------------------------------------------------------------------
# high level: read_run
# --------------------------------------------------------------------------


def _keys(item: Any) -> list[str]:
    """Key path of a history/summary/config item (``key`` or ``nested_key``)."""
    if item.nested_key:
        return list(item.nested_key)
    return [item.key]


def _decode(value_json: str) -> Any:
    if value_json == "":
        return None
    try:
        return json.loads(value_json)
    except json.JSONDecodeError:
        # wandb writes NaN/Infinity as bare tokens, which json accepts; anything
        # else unparsable is returned raw rather than losing it.
        return value_json


def _set_path(target: dict, keys: list[str], value: Any) -> None:
    node = target
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def _del_path(target: dict, keys: list[str]) -> None:
    node = target
    for k in keys[:-1]:
        node = node.get(k)
        if not isinstance(node, dict):
            return
    node.pop(keys[-1], None)


def _apply_updates(target: dict, update_items: Any, remove_items: Any = ()) -> None:
    for item in update_items:
        _set_path(target, _keys(item), _decode(item.value_json))
    for item in remove_items:
        _del_path(target, _keys(item))


def _resolve_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("run-*.wandb"))
        if not found:
            found = find_runs(p)
        if len(found) != 1:
            raise FileNotFoundError(f"expected exactly one run-*.wandb under {p}, found {len(found)}: {[str(f) for f in found]}")
        return found[0]
    if not p.exists():
        raise FileNotFoundError(p)
    return p


def wait_for_exit(path: str | Path, timeout: float = 10.0, *, poll: float = 0.02) -> bool:
    """Wait until the run's ``exit`` record is on disk; True if it arrived in time.

    ``wandb.finish()`` (0.31, offline) can return before wandb-core has flushed
    the transaction log: right after it the file may hold only the 7-byte
    header.  The exit record is written last, so once it is readable the whole
    run is.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            last = None
            for rec in iter_records(path, check_crc=False):
                last = rec.WhichOneof("record_type")
            if last == "exit":
                return True
        except (WandbLogError, OSError):
            pass  # partially written; retry
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def read_run(run_dir_or_file: str | Path, *, wait: float = 10.0, check_crc: bool = True) -> dict[str, Any]:
    """Decode an offline wandb run.

    ``run_dir_or_file`` is a ``run-*.wandb`` file, its ``offline-run-*`` directory,
    or any directory containing exactly one run below it.  Up to ``wait``
    seconds are spent waiting for the run's exit record (see
    :func:`wait_for_exit`); a run that never finished is read as far as it goes.

    Returns a dict with:

    * ``path``: the ``.wandb`` file; ``run_dir``: its directory.
    * ``run``: ``id``, ``project``, ``entity``, ``group``, ``name``, ``job_type``,
      ``tags``, ``notes`` (empty strings/lists dropped).
    * ``config``: merged config (run record + later config updates), values
      JSON-decoded; wandb's internal ``_wandb`` entry removed.
    * ``history``: one dict per ``wandb.log`` step; nested keys become nested
      dicts (a logged ``wandb.Table`` appears as ``{"_type": "table-file", ...}``).
      Includes wandb's ``_step``, ``_runtime``, ``_timestamp``.
    * ``summary``: final summary (incremental updates applied), ``_wandb`` removed.
    * ``files``: file paths (relative to ``<run_dir>/files``) registered by the run.
    * ``records``: record type name of every record, in order.
    * ``exit_code``: from the exit record, or ``None`` if the run never finished.
    * ``output``: captured console output (stdout/stderr) as one string.
    * ``artifacts``: ``{"name", "type"}`` of artifacts the run logged.
    """
    path = _resolve_file(run_dir_or_file)
    if wait > 0:
        wait_for_exit(path, wait)
    out: dict[str, Any] = {
        "path": path,
        "run_dir": path.parent,
        "run": {},
        "config": {},
        "history": [],
        "summary": {},
        "files": [],
        "records": [],
        "exit_code": None,
        "output": "",
        "artifacts": [],
    }
    config: dict = {}
    summary: dict = {}
    files: list[str] = []
    output: list[str] = []

    for rec in iter_records(path, check_crc=check_crc):
        kind = rec.WhichOneof("record_type")
        out["records"].append(kind)
        if kind == "run":
            r = rec.run
            info = {
                "id": r.run_id,
                "project": r.project,
                "entity": r.entity,
                "group": r.run_group,
                "name": r.display_name,
                "job_type": r.job_type,
                "notes": r.notes,
                "tags": list(r.tags),
            }
            out["run"].update({k: v for k, v in info.items() if v})
            if r.HasField("config"):
                _apply_updates(config, r.config.update, r.config.remove)
            if r.HasField("summary"):
                _apply_updates(summary, r.summary.update, r.summary.remove)
        elif kind == "config":
            _apply_updates(config, rec.config.update, rec.config.remove)
        elif kind == "history":
            row: dict = {}
            _apply_updates(row, rec.history.item)
            out["history"].append(row)
        elif kind == "summary":
            _apply_updates(summary, rec.summary.update, rec.summary.remove)
        elif kind == "files":
            for f in rec.files.files:
                if f.path not in files:
                    files.append(f.path)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
        elif kind == "output_raw":
            output.append(rec.output_raw.line)
        elif kind == "output":
            output.append(rec.output.line)
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type})

    config.pop("_wandb", None)
    summary.pop("_wandb", None)
    out["config"] = config
    out["summary"] = summary
    out["files"] = files
    out["output"] = "".join(output)
    return out


def find_runs(root: str | Path) -> list[Path]:
    """All ``run-*.wandb`` files below ``root`` (recursive), sorted by path.

    Typical layout: ``<root>/wandb/offline-run-<date>-<id>/run-<id>.wandb``.
    The ``latest-run`` symlink is skipped so each run is listed once.
    """
    root = Path(root)
    if root.is_file():
        return [root] if root.name.startswith("run-") and root.suffix == ".wandb" else []
    return sorted(p for p in root.rglob("run-*.wandb") if p.is_file() and "latest-run" not in p.parts)


def metric(run: dict[str, Any], key: str) -> list[Any]:
    """Values of a history key, in order, skipping steps that did not log it."""
    return [row[key] for row in run["history"] if key in row]


def load_table(run: dict[str, Any], key: str, *, row: dict | None = None) -> dict[str, Any]:
    """Load a logged ``wandb.Table`` as ``{"columns": [...], "data": [[...], ...]}``.

    Uses the last history row containing ``key`` (or the summary if no history
    row has it) unless ``row`` is given; the table JSON lives under
    ``<run_dir>/files/<path>``.
    """
    ref = None
    if row is not None:
        ref = row.get(key)
    else:
        for r in reversed(run["history"]):
            if key in r:
                ref = r[key]
                break
        if ref is None:
            ref = run["summary"].get(key)
    if not isinstance(ref, dict) or "path" not in ref:
        raise KeyError(f"no table logged under {key!r}")
    table = json.loads((Path(run["run_dir"]) / "files" / ref["path"]).read_text())
    return {"columns": table["columns"], "data": table["data"]}


# --------------------------------------------------------------------------
# test helper
# --------------------------------------------------------------------------

WANDB_ENV_VARS = (
    "WANDB_API_KEY",
    "WANDB_IDENTITY_TOKEN_FILE",
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_RUN_GROUP",
    "WANDB_NAME",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_BASE_URL",
    "WANDB_DISABLED",
    "NETRC",
)


def isolate_wandb(monkeypatch: Any, home: Path, *, mode: str | None = "offline") -> None:
    """Point wandb at a throw-away HOME with no credentials (for tests).

    wandb reads its environment once per process (in its ``wandb.setup()``
    singleton) and keeps a service process alive, so the singleton is torn down
    here *and* should be torn down after the test (call ``teardown_wandb()``).
    """
    for var in WANDB_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    home = Path(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / ".cache" / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / ".local" / "share" / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    if mode is not None:
        monkeypatch.setenv("WANDB_MODE", mode)
    teardown_wandb()


def teardown_wandb() -> None:
    """Finish any active run and reset wandb's per-process singleton."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()
