from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import locale
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# The warnings filters modules add as they are imported (torch's, Lightning's, ours: ``warnings.filterwarnings`` at
# module level), recorded from here on: pytest imports the test modules, and they the libraries, inside its own
# ``catch_warnings``, which drops those filters again. A new interpreter running run.py has them; so does run_cli's
# call in this process (_ProcessState._warnings). The tests' own module-level filters are not recorded.
_IMPORT_TIME_FILTERS: list[tuple] = []  # (the warnings function, args, kwargs), in the order they were added


def _recorded(add_filter):
    def add_and_record(*args, **kwargs):
        caller = sys._getframe(1)
        if caller.f_code.co_name == "<module>" and not caller.f_code.co_filename.startswith(str(REPO / "tests")):
            _IMPORT_TIME_FILTERS.append((add_filter, args, kwargs))
        return add_filter(*args, **kwargs)

    add_and_record.__wrapped__ = add_filter
    return add_and_record


warnings.filterwarnings, warnings.simplefilter = _recorded(warnings.filterwarnings), _recorded(warnings.simplefilter)

import pytest  # noqa: E402 - (after the recording starts: it imports libraries)
import torch  # noqa: E402

# Under pytest-xdist (the README's test command: -n auto) the cores are shared out among the workers, each torch
# and each run.py it starts (OMP_NUM_THREADS) taking its part: two workers each spinning two threads on two cores
# wait a scheduler tick at every parallel region. Alone, up to 2 threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


# Variables read when the interpreter or a library starts (the locale and stream encoding, threads, torch's and
# Hugging Face's settings, where matplotlib and the caches live): this pytest process has read them already, so a
# run_cli whose environment changes one of them gets a new interpreter.
STARTUP_VARIABLES = re.compile(r"^(PYTHON|LC_|LANG|OMP_|MKL_|KMP_|GOMP_|TORCH|PYTORCH|CUDA|NVIDIA|LD_|MPL|HF_|"
                               r"TRANSFORMERS|TOKENIZERS|XDG_|MATPLOTLIB|SCIPY|NUMPY)")

# What a new interpreter starts with (taken before any test ran): torch's default generator's seed, and the
# warnings filters of a plain ``python`` (no -W, no PYTHONWARNINGS, not a debug build).
_FRESH_TORCH_SEED = torch.initial_seed()
_DEFAULT_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                            ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                            ("ignore", ResourceWarning, "")]
# hydraformer's own code: its atexit handlers run when its call ends (as at the end of its process)
_OUR_PACKAGES = ("builder", "components")


def _cli_env() -> dict:
    """This process's environment as run_cli passes it on: unbuffered output, no HYDRA_FULL_ERROR."""
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONUNBUFFERED": "1"}


def _text(path: Path) -> str:
    """A file the command wrote, read as ``subprocess.run(text=True)`` reads a pipe (universal newlines)."""
    return path.read_bytes().decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def _exit_code(code) -> int:
    """What the interpreter makes of ``SystemExit(code)``: None 0, an int its low byte, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def needs_new_interpreter(env: dict, address_space: int | None = None, file_size: int | None = None) -> str | None:
    """Why ``run_cli`` with this full environment must start a new interpreter; None if it runs in this process."""
    if address_space:
        return "address_space caps the whole process (RLIMIT_AS)"
    if file_size:
        return "file_size caps every file the process writes (RLIMIT_FSIZE)"
    if os.environ.get("HYDRAFORMER_TEST_FRESH") == "1":
        return "HYDRAFORMER_TEST_FRESH=1"
    if threading.current_thread() is not threading.main_thread():
        return "called from another thread (sys.argv, the folder and fds 1 and 2 are the process's)"
    here = _cli_env()
    changed = sorted(k for k in set(env) | set(here) if env.get(k) != here.get(k) and STARTUP_VARIABLES.match(k))
    return f"a variable read at start-up changes: {', '.join(changed)}" if changed else None


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300,
            address_space: int | None = None, file_size: int | None = None,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` (the ``hydraformer`` command) with ``env`` on top of this process's environment (a
    value None unsets that variable), in ``cwd``; returns ``subprocess.CompletedProcess(argv, returncode, stdout,
    stderr)`` with text output.

    It runs in this process (``builder.tasks.main()``; see ``_run_in_process``) unless a new interpreter is needed:
    ``fresh=True`` (a test about what only a new process shows), ``address_space`` (a cap on the process's address
    space, RLIMIT_AS, in bytes), ``file_size`` (a cap on the size of each file it writes, RLIMIT_FSIZE, in bytes: a
    write past it fails with EFBIG, SIGXFSZ ignored), ``HYDRAFORMER_TEST_FRESH=1``, a call from a thread other than
    the main one, or an ``env`` changing a variable read at start-up (STARTUP_VARIABLES). ``timeout`` bounds a new
    interpreter only (``subprocess.TimeoutExpired``, as subprocess.run raises it); in this process a hang is ended by
    pytest-timeout (``timeout`` in pyproject.toml, per test)."""
    full_env = {k: v for k, v in (_cli_env() | (env or {})).items() if v is not None}  # None: unset that variable
    argv = [sys.executable, str(REPO / "run.py"), *args]
    if not fresh and needs_new_interpreter(full_env, address_space, file_size) is None:
        return _run_in_process(argv, Path(cwd), full_env)

    def cap():
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if file_size:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=cap if address_space or file_size else None)


def _run_in_process(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``argv`` (``python run.py ARGS``) as ``builder.tasks.main()`` in this process, with what a new interpreter
    running it would have and give: ``sys.argv`` (argv[0] the real run.py: Lightning's DDP launcher starts it again
    in its child processes), ``env`` as ``os.environ``, ``cwd`` as the folder, stdin /dev/null, stdout and stderr
    captured at the file descriptors (Lightning, torch and child processes write to fds 1 and 2 directly), Hydra
    and logging as a new interpreter has them, the exit status as the interpreter makes it (SystemExit's code, an
    unhandled exception's traceback and 1, an unhandled KeyboardInterrupt's traceback and -SIGINT). What the run
    changes in this process is put back afterwards (_ProcessState)."""
    from builder.tasks import main  # (reason: conftest is imported before the tests' own imports)

    with tempfile.TemporaryDirectory(prefix="hydraformer-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with _ProcessState(argv, cwd, env, out, err) as state:
            try:
                code = _exit_code(main())
            except SystemExit as stop:
                code = _exit_code(stop.code)
            except KeyboardInterrupt:  # as a process ends on an unhandled Ctrl-C: its traceback, killed by SIGINT
                traceback.print_exc()
                code = -signal.SIGINT
            except Exception:  # noqa: BLE001 - unhandled: its traceback and status 1, as the interpreter
                traceback.print_exc()
                code = 1
            # (any other BaseException, such as pytest-timeout's failure, is the test's: it goes on up)
        done = subprocess.CompletedProcess(argv, code, _text(out), _text(err))
    if state.started_processes:  # Lightning watches them from a thread that outlives the call and, if one fails,
        # SIGKILLs the process that started them: this one, pytest. A multi-process run is a test about processes.
        raise AssertionError(f"run_cli{tuple(argv[2:])} started the other processes of a multi-process run from the "
                             f"pytest process: pass fresh=True (exit status {code}; stderr:\n{done.stderr[-2000:]})")
    return done


class _ProcessState:
    """The process-wide state a ``python run.py`` call reads or changes, set up as a new interpreter has it on
    entry and put back exactly on exit: fds 0-2 and sys.stdin/stdout/stderr (output to the files ``out`` and
    ``err``), sys.argv, sys.path, the working folder, os.environ, Hydra's global state, the logging configuration
    (Hydra's handlers closed), warnings filters, torch's global settings and generator, signal handlers. On exit it
    also ends what the process's exit would: non-daemon threads the call started are joined, the atexit handlers
    our code registered run, an open wandb run is finished and wandb's per-process setup torn down, a
    torch.distributed process group the call made is destroyed."""

    def __init__(self, argv: list[str], cwd: Path, env: dict, out: Path, err: Path) -> None:
        self.argv, self.cwd, self.env, self.out, self.err = [str(REPO / "run.py"), *argv[2:]], cwd, env, out, err
        self.started_processes = False  # Lightning started the other processes of a DDP/FSDP run

    # --- entry -------------------------------------------------------------------------------------------------

    def __enter__(self) -> _ProcessState:
        self._stack = contextlib.ExitStack()
        try:
            self._enter()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _enter(self) -> None:
        stack = self._stack
        stack.callback(_clear_hydra)  # (callbacks run last first: this one runs last)
        _clear_hydra()
        self._streams(stack)
        saved_argv, saved_path, saved_cwd = sys.argv, list(sys.path), os.getcwd()
        self._main_module(stack)
        stack.callback(lambda: (setattr(sys, "argv", saved_argv), sys.path.__setitem__(slice(None), saved_path),
                                os.chdir(saved_cwd)))
        saved_env = dict(os.environ)
        stack.callback(_set_environ, saved_env)
        stack.callback(self._signals())
        stack.callback(self._torch())
        stack.callback(self._logging())
        self._warnings(stack)
        threads = set(threading.enumerate())
        stack.callback(self._exit_like_a_process, threads)
        self._atexit(stack)
        _set_environ(self.env)
        os.chdir(self.cwd)
        sys.argv = list(self.argv)

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # --- the parts -----------------------------------------------------------------------------------------------

    def _streams(self, stack: contextlib.ExitStack) -> None:
        """fd 0 from /dev/null, fds 1 and 2 to the files, and sys.stdin/stdout/stderr on those fds (_fd_streams).
        Logging handlers holding this process's stdout or stderr (made at a library's import) write to them too."""
        old = {"stdin": sys.stdin, "stdout": sys.stdout, "stderr": sys.stderr}
        _flush(old["stdout"], old["stderr"])
        saved = {fd: os.dup(fd) for fd in (0, 1, 2)}
        swapped = []

        def restore() -> None:
            _flush(sys.stdout, sys.stderr)
            _flush_c_streams()
            for handler, stream in swapped:
                handler.setStream(stream)
            for name, stream in old.items():
                setattr(sys, name, stream)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)

        stack.callback(restore)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, self.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, self.err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            target = os.open(path, flags, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin, sys.stdout, sys.stderr = _fd_streams()
        outs = {id(s): sys.stdout for s in (old["stdout"], sys.__stdout__)}
        outs |= {id(s): sys.stderr for s in (old["stderr"], sys.__stderr__)}
        for handler in _all_handlers():
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and id(stream) in outs:
                swapped.append((handler, stream))
                handler.setStream(outs[id(stream)])

    def _main_module(self, stack: contextlib.ExitStack) -> None:
        """``__main__`` as for ``python run.py``: no ``__spec__`` (pytest's, under ``python -m pytest``, would make
        Lightning's launcher start ``python -m pytest ARGS`` as the other DDP processes) and run.py as its file."""
        main = sys.modules["__main__"]
        saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}

        def restore() -> None:
            for name in ("__spec__", "__file__"):
                if name in saved:
                    setattr(main, name, saved[name])
                elif hasattr(main, name):
                    delattr(main, name)

        stack.callback(restore)
        main.__spec__, main.__file__ = None, self.argv[0]

    def _signals(self):
        saved = {}
        for sig in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError):
                saved[sig] = signal.getsignal(sig)

        def restore() -> None:
            for sig, handler in saved.items():
                if handler is not None and signal.getsignal(sig) is not handler:
                    with contextlib.suppress(OSError, ValueError, TypeError):
                        signal.signal(sig, handler)

        return restore

    def _torch(self):
        """torch's global settings (threads, default dtype, deterministic algorithms, matmul precision, grad mode,
        cuDNN's flags) and its default generator; the call starts from the generator a new interpreter has, and a
        process group it made (a one-process FSDP run) is destroyed."""
        saved = (torch.get_num_threads(), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_float32_matmul_precision(),
                 torch.is_grad_enabled(), torch.get_rng_state(), torch.distributed.is_available()
                 and torch.distributed.is_initialized(), torch.backends.cudnn.benchmark,
                 torch.backends.cudnn.deterministic)
        torch.manual_seed(_FRESH_TORCH_SEED)

        def restore() -> None:
            threads, dtype, deterministic, warn_only, precision, grad, rng, dist, benchmark, cudnn_deterministic = saved
            if torch.distributed.is_available() and torch.distributed.is_initialized() and not dist:
                torch.distributed.destroy_process_group()
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            torch.set_default_dtype(dtype)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.set_float32_matmul_precision(precision)
            torch.set_grad_enabled(grad)
            torch.set_rng_state(rng)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_deterministic

        return restore

    def _logging(self):
        """The root logger as a new interpreter has it (no handlers, WARNING), for Hydra to configure; afterwards
        every logger that existed before as it was (handlers, level, propagation, filters, disabled), the handlers
        the call gave them (Hydra's console and job log file) closed. Loggers the call's imports made are left as
        their libraries set them up (once per process)."""
        manager = logging.Logger.manager
        loggers = [logging.root, *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger))]
        saved = [(lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled, list(lg.filters)) for lg in loggers]
        disable = manager.disable
        logging.root.handlers = []
        logging.root.setLevel(logging.WARNING)

        def restore() -> None:
            for lg, handlers, level, propagate, disabled, filters in saved:
                for handler in lg.handlers:
                    if handler not in handlers:
                        with contextlib.suppress(Exception):
                            handler.flush()
                            handler.close()
                lg.handlers, lg.filters, lg.propagate, lg.disabled = handlers, filters, propagate, disabled
                lg.setLevel(level)
            logging.disable(disable)

        return restore

    def _warnings(self, stack: contextlib.ExitStack) -> None:
        """The filters of a new interpreter that has imported what this process has: a plain interpreter's, then
        those modules added at their import (_IMPORT_TIME_FILTERS); a warning is printed to stderr, not recorded by
        pytest."""
        stack.enter_context(warnings.catch_warnings())  # (entering it resets the once-per-location registries)
        warnings.resetwarnings()
        for action, category, module in reversed(_DEFAULT_WARNING_FILTERS):
            warnings.filterwarnings.__wrapped__(action, category=category, module=module)
        for add_filter, args, kwargs in list(_IMPORT_TIME_FILTERS):
            add_filter(*args, **kwargs)

        def show(message, category, filename, lineno, file=None, line=None):
            with contextlib.suppress(OSError):
                (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show

    def _atexit(self, stack: contextlib.ExitStack) -> None:
        """atexit handlers our code registers (a sweep's comparison, written as its process exits) are kept to run
        when the call ends; a library's are registered as usual (they run when pytest exits)."""
        register = atexit.register
        ours = self._at_exit = []

        def register_ours(func, *args, **kwargs):
            if str(getattr(func, "__module__", "")).split(".")[0] in _OUR_PACKAGES:
                ours.append((func, args, kwargs))
                return func
            return register(func, *args, **kwargs)

        atexit.register = register_ours
        stack.callback(setattr, atexit, "register", register)

    def _exit_like_a_process(self, threads: set) -> None:
        """What the interpreter does as a process ends, for what the call started."""
        for thread in set(threading.enumerate()) - threads:
            if _process_observer(thread):  # (it would SIGKILL this process if one of them failed)
                self.started_processes = True
                thread.join()  # it ends once they all have
            elif not thread.daemon and not _pool_worker(thread):
                thread.join()
        for func, args, kwargs in reversed(self._at_exit):
            try:
                func(*args, **kwargs)
            except Exception:  # noqa: BLE001 - as atexit: reported, the next one runs
                print(f"Exception ignored in atexit callback {func!r}:", file=sys.stderr)
                traceback.print_exc()
        wandb = sys.modules.get("wandb")  # (never imported here if the call did not)
        if wandb is not None:
            if getattr(wandb, "run", None) is not None:
                wandb.finish()
            wandb.teardown()  # its settings were read from this call's environment, once per process


def _process_observer(thread: threading.Thread) -> bool:
    """Lightning's watcher of the DDP/FSDP processes its script launcher started."""
    return any(cls.__name__ == "_ChildProcessObserver" for cls in type(thread).__mro__)


def _pool_worker(thread: threading.Thread) -> bool:
    """A thread of a concurrent.futures pool: at the interpreter's exit the pool is told to stop before threads are
    joined; a library keeps its pool for its next use in this process, so it is not waited on."""
    return type(thread).__module__.startswith("concurrent.futures") or thread.name.startswith("ThreadPoolExecutor-")


_FD_STREAMS: list = []


def _fd_streams() -> tuple:
    """sys.stdin, sys.stdout and sys.stderr for the calls in this process: text streams on fds 0, 1 and 2,
    unbuffered as under PYTHONUNBUFFERED=1, stderr with backslashreplace as the interpreter's. The same three for
    every call: what a library keeps of them (a logging handler made during a call, its bound ``flush``) goes on
    writing to the fds, which the next call points at its own files."""
    if not _FD_STREAMS:
        encoding = locale.getpreferredencoding(False)
        _FD_STREAMS[:] = [open(0, encoding=encoding, closefd=False),  # noqa: SIM115 - never closed (the fds stay)
                          io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=encoding, write_through=True),
                          io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=encoding,
                                           errors="backslashreplace", write_through=True)]
    return tuple(_FD_STREAMS)


def _set_environ(env: dict) -> None:
    """``os.environ`` (and the process's environment, which child processes inherit) becomes exactly ``env``."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    return list({id(h): h for lg in loggers for h in lg.handlers}.values())


def _flush(*streams) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.flush()


def _flush_c_streams() -> None:
    """C's stdio buffers (what native code printed with printf), written out before fds 1 and 2 go back."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def refused(proc, out: Path, *words: str) -> str:
    """The one paragraph of a refused run (``run_cli``'s): exit status 2, one line starting "Error: " naming each of
    ``words``, no traceback, no run directory ``out`` left behind, no config shown. Returns the paragraph."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert not out.exists(), "a refused run leaves no run directory"
    assert "├──" not in text, "the config is shown only once the inputs are checked"
    return errors[0]


class Touch:
    """Unpickling it creates the folder ``path`` (``os.makedirs``): the proof that a file was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def home_env(tmp_path_factory, name: str, **extra_env: str) -> dict:
    """``train_env`` in a fresh folder that is also HOME, with no wandb key: nothing of this machine's user leaks in."""
    root = tmp_path_factory.mktemp(name)
    return train_env(root, HOME=str(root), WANDB_API_KEY="", **extra_env)


def train_run(env: dict, name: str, *overrides: str, timeout: float = 300, fresh: bool = False):
    """``run.py`` training on ``train_env``'s corpus into ``env["root"] / name``; asserts it succeeded and returns
    (run directory, completed process). ``fresh``: in a new interpreter (run_cli)."""
    out = env["root"] / name
    proc = run_cli("data=text", f"data.path={env['corpus']}", *overrides, f"hydra.run.dir={out}", env=env["env"],
                   timeout=timeout, fresh=fresh)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def jittered_model(overrides: list[str], seed: int = 0, std: float = 0.3):
    """The model ``overrides`` compose, every parameter redrawn from N(0, std): away from the init, so norms' gains,
    biases and the rest all take part (a check at the init could miss a term that is zero or one there)."""
    import builder  # (reason: conftest is imported before the tests' own imports)

    torch.manual_seed(seed)
    model = builder.build_model(builder.compose(overrides).model).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, std)
    return model


def random_gpt2_dir(path: Path, texts: list[str], n_layer: int = 3) -> Path:
    """A small random GPT-2 (d_model 32, 4 heads) saved in Hugging Face format into ``path``, with a BPE
    vocab.json + merges.txt of 300 tokens trained on ``texts``."""
    import transformers  # (reason: only the tests that make a Hugging Face folder need it)
    from tokenizers import ByteLevelBPETokenizer

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 30, vocab_size=300, min_frequency=2, show_progress=False)
    bpe.save_model(str(path))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=n_layer, n_head=4, n_positions=64, vocab_size=300,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def tiny_checkpoint(root: Path, phrase: str) -> tuple[Path, dict]:
    """A 2-layer, 2-head char-level model trained 5 steps on ``phrase`` repeated, in ``root / "train"``: its
    last.ckpt and the environment it was trained in (token cache and wandb kept under ``root``)."""
    corpus = root / "corpus.txt"
    corpus.write_text((phrase + ". ") * 300, encoding="utf-8")
    env = {"HYDRAFORMER_CACHE": str(root / "cache"), "WANDB_MODE": "offline"}
    run = root / "train"
    proc = run_cli("data=text", f"data.path={corpus}", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                   "model.context_length=64", "logger=csv", "trainer.max_steps=5", "trainer.val_check_interval=5",
                   "callbacks.text_samples.prompt=a ", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}",
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run / "checkpoints" / "last.ckpt", env


CORPUS = "the cat sat on the mat. the dog sat on the log. " * 400


def train_env(root: Path, **extra_env: str) -> dict:
    """A folder with a small learnable corpus, and an environment keeping the token cache and wandb offline."""
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return {"root": root, "tmp": root, "corpus": corpus,
            "env": {"HYDRAFORMER_CACHE": str(root / "cache"), "WANDB_MODE": "offline", **extra_env}}


@pytest.fixture(autouse=True)
def _loggers_left_as_found():
    """A test that configures logging (import-linter's ``lint_imports`` calls ``logging.config.dictConfig``, which
    disables every logger that exists) leaves the loggers as it found them: later tests see Lightning's messages."""
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.disabled, lg.propagate, lg.level) for lg in loggers]
    yield
    for lg, disabled, propagate, level in saved:
        lg.disabled, lg.propagate = disabled, propagate
        lg.setLevel(level)


@pytest.fixture
def cli():
    return run_cli
