"""Managed child processes for the test bench.

A bench run starts several long-lived programs (mosquitto, the meter-bus
simulator, the virtual board, socat in front of micropython). Each one is a
``ManagedProcess``: its output goes to a log file that outlives the run, it is
"ready" when a condition holds (a TCP port accepts, a path exists, a log line
matches), and stopping it always ends its whole process group and reaps it, so a
failed test never leaves a socat or micropython behind.

Linux only (process groups, /proc), like the bench itself.
"""

import atexit
import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time
import weakref

__all__ = [
    "ManagedProcess",
    "ProcessError",
    "ReadyTimeout",
    "free_tcp_port",
    "port_accepting",
    "tail_file",
]

LOOPBACK = "127.0.0.1"
_POLL = 0.02


class ProcessError(RuntimeError):
    """A managed process could not be started or exited before it was ready."""


class ReadyTimeout(ProcessError):
    """A managed process did not become ready in time."""


def free_tcp_port(host=LOOPBACK):
    """A TCP port on `host` that nothing listens on right now.

    The kernel picks it; another process may still take it before ours binds,
    so callers that can retry (the broker) do.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_accepting(host, port, timeout=0.2):
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail_file(path, lines=20, max_bytes=64 * 1024):
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid):
    """True while a live (non-zombie) process is in process group `pgid`.

    Zombies count as gone: an orphan reparented to a PID 1 that does not reap
    (some containers) stays a zombie forever but holds nothing open.
    """
    proc = pathlib.Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


_live = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _stop_leftovers():
    # a crashed test run must not leave brokers and simulators listening
    with _live_lock:
        leftovers = list(_live)
    for proc in leftovers:
        try:
            proc.stop(grace=1.0)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class ManagedProcess:
    """One child process with a log file, a readiness check and a clean stop.

    ``argv``: the command. ``log_path``: its stdout and stderr (appended; the
    directory is created). ``ready_port`` / ``ready_path`` / ``ready_line`` (a
    regex searched in what the process logs after it starts): what "ready"
    means; any combination, all must hold (``ready_port`` may be a list). ``grace``: seconds between SIGTERM and
    SIGKILL when stopping.

    As a context manager it starts, waits until ready and stops on exit; if it
    is not ready in time it is stopped before the error propagates.
    """

    def __init__(self, argv, log_path, *, name=None, cwd=None, env=None,
                 ready_port=None, ready_host=LOOPBACK, ready_path=None,
                 ready_line=None, ready_timeout=10.0, grace=5.0):
        self.argv = [str(a) for a in argv]
        self.log_path = pathlib.Path(log_path)
        self.name = name or pathlib.Path(self.argv[0]).name
        self.cwd = cwd
        self.env = env
        if ready_port is None:
            self.ready_ports = ()
        elif isinstance(ready_port, int):
            self.ready_ports = (ready_port,)
        else:
            self.ready_ports = tuple(ready_port)
        self.ready_host = ready_host
        self.ready_path = None if ready_path is None else pathlib.Path(ready_path)
        self.ready_line = None if ready_line is None else re.compile(ready_line)
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.ready_match = None  # the re.Match of ready_line, once seen
        self._popen = None
        self._log_start = 0
        self._scan_pos = 0
        self._scan_buf = b""

    # -- state -----------------------------------------------------------
    @property
    def pid(self):
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self):
        """None while running (or never started); negative for a signal, like Popen."""
        return None if self._popen is None else self._popen.poll()

    @property
    def running(self):
        return self._popen is not None and self._popen.poll() is None

    def log_text(self):
        """What the process logged since it was started (the file may hold older runs)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_start)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines=20):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self):
        state = "not started" if self._popen is None else (
            "running" if self.running else "exited %s" % self.returncode)
        return "<ManagedProcess %s pid=%s %s>" % (self.name, self.pid, state)

    # -- lifecycle -------------------------------------------------------
    def start(self):
        if self._popen is not None:
            raise ProcessError("%s was already started" % self.name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ %s\n" % subprocess.list2cmdline(self.argv)).encode())
            log.flush()
            self._log_start = self._scan_pos = log.tell()
            try:
                # own session = own process group, so stop() can signal the
                # children (socat -> micropython) with the parent
                self._popen = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.cwd, env=self.env, start_new_session=True)
            except OSError as exc:
                raise ProcessError("cannot start %s (%s): %s" % (
                    self.name, subprocess.list2cmdline(self.argv), exc)) from exc
        with _live_lock:
            _live.add(self)
        return self

    def _line_seen(self):
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._scan_pos)
                chunk = fh.read()
        except FileNotFoundError:
            return False
        self._scan_pos += len(chunk)
        data = self._scan_buf + chunk
        lines = data.split(b"\n")
        self._scan_buf = lines.pop()  # an unfinished line waits for its end
        for raw in lines:
            match = self.ready_line.search(raw.decode("utf-8", "replace").rstrip("\r"))
            if match:
                self.ready_match = match
                return True
        return False

    def _conditions(self):
        """Pending readiness conditions, as words for the error message."""
        pending = []
        if self.ready_line is not None and self.ready_match is None and not self._line_seen():
            pending.append("a log line matching %r" % self.ready_line.pattern)
        if self.ready_path is not None and not self.ready_path.exists():
            pending.append("path %s to exist" % self.ready_path)
        for port in self.ready_ports:
            if not port_accepting(self.ready_host, port):
                pending.append("TCP %s:%s to accept connections" % (self.ready_host, port))
        return pending

    def wait_ready(self, timeout=None):
        """Block until every readiness condition holds; returns self.

        Raises ProcessError at once if the process exits first, ReadyTimeout
        after `timeout` seconds; both quote the last log lines.
        """
        if self._popen is None:
            raise ProcessError("%s was not started" % self.name)
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            pending = self._conditions()
            if not pending:
                return self
            code = self._popen.poll()
            if code is not None:
                raise ProcessError("%s exited with %s before it was ready (waiting for %s)%s"
                                   % (self.name, _describe_exit(code), ", ".join(pending),
                                      self._log_excerpt()))
            if time.monotonic() >= deadline:
                raise ReadyTimeout("%s not ready after %.1f s (waiting for %s)%s"
                                   % (self.name, timeout, ", ".join(pending), self._log_excerpt()))
            time.sleep(_POLL)

    def _log_excerpt(self, lines=20):
        text = self.tail(lines)
        body = "\n".join("    " + line for line in text.splitlines()) if text else "    (empty)"
        return "\n  last lines of %s:\n%s" % (self.log_path, body)

    def wait(self, timeout=None):
        """Wait up to `timeout` s for the process to exit; its exit code, or None if still running."""
        if self._popen is None:
            raise ProcessError("%s was not started" % self.name)
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace=None):
        """SIGTERM the process group, SIGKILL what is left after `grace` s; reap.

        Safe to call twice and on a process that already exited (its orphaned
        children are still ended). Returns the exit code (negative: signal).
        """
        if self._popen is None:
            return None
        grace = self.grace if grace is None else grace
        pgid = self._popen.pid  # start_new_session: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        try:
            self._popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            self._popen.wait()
        # children that outlive the leader get the rest of the grace period
        deadline = time.monotonic() + grace
        while _group_alive(pgid):
            if time.monotonic() >= deadline:
                _signal_group(pgid, signal.SIGKILL)
                kill_deadline = time.monotonic() + 2.0
                while _group_alive(pgid) and time.monotonic() < kill_deadline:
                    time.sleep(_POLL)
                break
            time.sleep(_POLL)
        with _live_lock:
            _live.discard(self)
        return self._popen.returncode

    def kill(self):
        """SIGKILL the whole group at once (a power cut: nothing gets to clean up); reap."""
        if self._popen is None:
            return None
        _signal_group(self._popen.pid, signal.SIGKILL)
        return self.stop(grace=2.0)

    def __enter__(self):
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop(grace=1.0)
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe_exit(code):
    if code < 0:
        try:
            return "signal %s" % signal.Signals(-code).name
        except ValueError:
            return "signal %d" % -code
    return "code %d" % code
