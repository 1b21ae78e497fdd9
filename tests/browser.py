"""Drive a real headless Chromium from tests, with the standard library only.

    with Browser() as b:
        b.open(path.as_uri())
        b.wait_for("document.body.dataset.ready === '1'")
        b.mouse_move(120, 80)              # real mouse events (Input.dispatchMouseEvent)
        b.eval("document.title")           # Runtime.evaluate, value returned by value
        b.screenshot(tmp_path / "page.png")
        assert not b.errors                # uncaught exceptions and console errors

Chromium speaks the DevTools protocol over ``--remote-debugging-pipe``: JSON messages ending in
a NUL byte, read from file descriptor 3 and written to 4. No port is opened and no websocket
library is needed. The browser is Debian's ``chromium`` package (``/usr/bin/chromium``, or
``$HF_CHROMIUM``); it runs in its own session (process group), which is always killed on close.
Every wait is bounded by a timeout.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
import weakref
from pathlib import Path

CHROMIUM = os.environ.get("HF_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = "apt-get update && apt-get install -y chromium"

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
    "--disable-extensions", "--disable-default-apps", "--disable-breakpad", "--disable-crash-reporter",
    "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars", "--metrics-recording-only",
    "--password-store=basic", "--use-mock-keychain", "--force-color-profile=srgb", "--force-device-scale-factor=1",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--remote-debugging-pipe",
]


class BrowserError(RuntimeError):
    """Chromium is missing, died, or answered a command with an error."""


class JSError(BrowserError):
    """The evaluated JavaScript threw."""


def find_chromium(path: str | None = None) -> str:
    exe = path or CHROMIUM
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise BrowserError(f"Chromium is not installed at {exe}; the browser tests need Debian's chromium package: "
                           f"run `{INSTALL_HINT}` (or set HF_CHROMIUM to a Chromium binary)")
    return exe


def _high_fd(fd: int) -> int:
    """A close-on-exec copy of ``fd`` numbered >= 10 (so dup2 onto 3 and 4 never aliases); closes ``fd``."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class Browser:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 30.0, executable: str | None = None):
        self.width, self.height, self.timeout = width, height, timeout
        self.exe = find_chromium(executable)
        self.events: list[dict] = []
        self.pid: int | None = None
        self.session_id: str | None = None
        self._id = 0
        self._buf = b""
        self._rfd = self._wfd = -1
        self._tmp = Path(tempfile.mkdtemp(prefix="hf-chromium-"))
        self._finalizer = None

    # ---- process ------------------------------------------------------------------------
    def start(self) -> Browser:
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        evt_r, evt_w = os.pipe()  # Chromium writes fd 4, we read
        cmd_r, evt_w = _high_fd(cmd_r), _high_fd(evt_w)
        log = _high_fd(os.open(self._tmp / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        args = [self.exe, *FLAGS, f"--user-data-dir={self._tmp / 'profile'}", f"--window-size={self.width},{self.height}",
                "about:blank"]
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                   (os.POSIX_SPAWN_DUP2, log, 2), (os.POSIX_SPAWN_DUP2, cmd_r, 3), (os.POSIX_SPAWN_DUP2, evt_w, 4)]
        try:
            self.pid = os.posix_spawn(self.exe, args, dict(os.environ), file_actions=actions, setsid=True)
        finally:
            for fd in (cmd_r, evt_w, log):
                os.close(fd)
        self._rfd, self._wfd = evt_r, cmd_w
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._finalizer = weakref.finalize(self, _kill_group, self.pid)
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session_id = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                        session=False)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Ask Chromium to quit, then kill its whole process group whatever happened; remove the profile."""
        if self.pid is not None:
            try:
                if self._wfd >= 0:
                    self._write({"id": self._next_id(), "method": "Browser.close"}, deadline=time.monotonic() + 1)
                    end = time.monotonic() + 3
                    while time.monotonic() < end and os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                        time.sleep(0.05)
            except (OSError, BrowserError, ChildProcessError):
                pass
            if self._finalizer is not None:
                self._finalizer()  # SIGKILL to the group (children too) and reap
            self.pid = None
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = -1
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self._tmp / "chromium.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ---- protocol -----------------------------------------------------------------------
    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def _write(self, msg: dict, deadline: float) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"timed out sending {msg.get('method')} to Chromium")
            _, w, _ = select.select([], [self._wfd], [], left)
            if w:
                try:
                    data = data[os.write(self._wfd, data):]
                except BlockingIOError:
                    continue
                except BrokenPipeError as err:
                    raise BrowserError(f"Chromium is gone (sending {msg.get('method')}); its log:\n{self.log_tail()}") from err

    def _read_one(self, deadline: float, what: str) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"timed out waiting for {what}")
            r, _, _ = select.select([self._rfd], [], [], left)
            if r:
                try:
                    chunk = os.read(self._rfd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise BrowserError(f"Chromium exited while waiting for {what}; its log:\n{self.log_tail()}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float | None = None) -> dict:
        """One DevTools command; returns its result, raises BrowserError on an error reply or a timeout."""
        if self.pid is None:
            raise BrowserError("the browser is not running (use `with Browser() as b:` or call start())")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        msg = {"id": self._next_id(), "method": method, "params": params or {}}
        if session and self.session_id:
            msg["sessionId"] = self.session_id
        self._write(msg, deadline)
        while True:
            reply = self._read_one(deadline, f"the reply to {method}")
            if reply.get("id") == msg["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, since: int = 0, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        i = since
        while True:
            for ev in self.events[i:]:
                if ev.get("method") == method:
                    return ev
            i = len(self.events)
            reply = self._read_one(deadline, f"event {method}")
            if "method" in reply:
                self.events.append(reply)

    # ---- page ---------------------------------------------------------------------------
    def open(self, url: str, timeout: float | None = None) -> None:
        """Navigate and wait for the load event."""
        mark = len(self.events)
        res = self.send("Page.navigate", {"url": str(url)}, timeout=timeout)
        if res.get("errorText"):
            raise BrowserError(f"could not open {url}: {res['errorText']}")
        self.wait_event("Page.loadEventFired", since=mark, timeout=timeout)

    def eval(self, js: str, timeout: float | None = None):
        """Evaluate ``js`` in the page (promises awaited); returns the value (JSON-like), raises JSError if it throws."""
        res = self.send("Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True,
                                             "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text", "exception")
            raise JSError(f"JavaScript threw: {text}\n--- in:\n{js}")
        return res.get("result", {}).get("value")

    def wait_for(self, js: str, timeout: float = 10.0, interval: float = 0.05):
        """Poll ``js`` until it returns something truthy; returns that value."""
        end = time.monotonic() + timeout
        value = None
        while True:
            value = self.eval(js, timeout=max(1.0, end - time.monotonic()))
            if value:
                return value
            if time.monotonic() >= end:
                raise BrowserError(f"timed out after {timeout}s waiting for `{js}` (last value {value!r}); "
                                   f"page errors: {self.errors}")
            time.sleep(interval)

    def mouse_move(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": float(x), "y": float(y), "button": "none"})

    hover = mouse_move

    def click(self, x: float, y: float) -> None:
        self.mouse_move(x, y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": float(x), "y": float(y), "button": "left",
                                                   "buttons": 1 if kind == "mousePressed" else 0, "clickCount": 1})

    def center_of(self, element_js: str) -> tuple[float, float]:
        """Scroll the element that ``element_js`` evaluates to into view; return its centre (viewport px)."""
        r = self.eval(f"(() => {{ const e = ({element_js}); if (!e) return null; e.scrollIntoView({{block: 'center'}});"
                      f" const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }})()")
        if r is None:
            raise BrowserError(f"no element for {element_js}")
        return float(r[0]), float(r[1])

    def screenshot(self, path, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        path = Path(path)
        path.write_bytes(data)
        return path

    @property
    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and error log entries seen so far."""
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                     for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append(f"log: {e.get('text', '')} {e.get('url', '')}".strip())
        return out
