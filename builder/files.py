"""Files written atomically: a temporary file beside the target, then a rename.

One mechanism for every file the project writes (checkpoints, token caches, pictures, pages, JSON):
the finished file gets the permissions the umask gives an ordinary file (``mkstemp`` alone would
leave it 0600, which breaks a cache shared by several users), and a crash mid-write never leaves a
truncated file under the real name.

And the one check for every path the project reads: ``special_file`` names a FIFO, device or socket, which is
refused before it is opened (reading a FIFO blocks until a writer comes; /dev/zero never ends).
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_file(path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (links followed): ``"a named pipe (FIFO)"``,
    ``"a character device"``, ... — reading one blocks forever or never ends. None for a file, a folder, or a path
    that does not exist (the caller's own check names that). The caller raises its ConfigError naming its key."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# the temporary file of ``NAME`` (atomic_path's): ``.NAME.XXXXXXXX.tmp``, mkstemp's 8 characters between prefix and suffix
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def temp_files(folder) -> list[Path]:
    """The temporary files :func:`atomic_path` makes (``.NAME.XXXXXXXX.tmp``) in ``folder`` itself (not below it):
    what a write killed mid-way (SIGKILL, a power cut) leaves there. Files only; nothing else matches."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink())


@contextmanager
def named_errors(path) -> Iterator[None]:
    """An OSError raised in the block without a file name (a ``write`` or ``flush`` of an open file: Python names
    the file only when opening it) is raised again naming ``path``, so a full disk names what was being written
    rather than nothing (and is never taken for standard output)."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err


def file_being_written(tb) -> str | None:
    """The path of the file a write that failed without naming one was writing: the innermost open-for-writing file
    object (``open(path, "w")``, ``"a"``, ``"+"``) among the locals of the traceback's frames. A write by another
    library (Lightning's metrics.csv, a log file) names no file — Python names one only when opening — and would
    otherwise be taken for standard output's. None when no frame holds one (a ``print`` to stdout)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            name = getattr(value, "name", None)
            if (isinstance(value, io.IOBase) and isinstance(name, str) and value not in (sys.stdout, sys.stderr)
                    and any(m in getattr(value, "mode", "") for m in "wa+")):
                return os.path.abspath(name)
    return None


@contextmanager
def atomic_path(path, *, replace: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; published onto ``path`` when the block ends without error.
    An OSError in the block that names no file (a write on a full disk) is raised naming ``path``; the temporary
    file is removed whatever happens.

    ``replace=False`` keeps a file already at ``path`` (the first writer wins), so processes that build
    the same cache file at once all end up reading one file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with named_errors(path):
            yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails when path exists
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links
                if not path.exists():
                    os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path, data: str | bytes, *, replace: bool = True) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path, replace=replace) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> Path:
    """Write ``tensors`` as a safetensors file at ``path``, atomically: the one writer of the format. safetensors'
    Rust writer reports a refused write as ``SafetensorError("... I/O error: ... (os error 28)")``; it is raised as
    the OSError it was, naming ``path`` (so a full disk is one paragraph, as for every other file)."""
    from safetensors.torch import save_file  # (reason: start-up: files is imported by every task, few write safetensors)

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as err:
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from err
    return path


def quiet_log_files(logger: logging.Logger | None = None) -> None:
    """A log file of ``logger`` (the root's: Hydra's ``hydraformer.log``) that cannot be written — a full disk —
    says so once on stderr, naming the file and the reason, and is dropped; the lines go on to the console. Not
    logging's "--- Logging error ---" traceback after every line. The run's own writes meet the same disk and are
    refused by name (``named_errors``)."""
    logger = logger or logging.getLogger()
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            def failed(record, handler=handler):
                err = sys.exc_info()[1]
                logger.removeHandler(handler)
                reason = (err.strerror or str(err)).lower() if isinstance(err, OSError) else repr(err)
                sys.stderr.write(f"cannot write the log file {handler.baseFilename} ({reason}): its lines go to the "
                                 "console only from here\n")
            handler.handleError = failed
