"""The board's REPL, driven with the real mpremote (and pyserial for the console).

Every call is one ``mpremote connect PORT [resume] ...`` process, so what runs
is exactly what an installer could type. The first call of a session goes
without ``resume``: mpremote interrupts the running app (Ctrl-C) and soft
resets in the raw REPL, which skips main.py, so no gateway code touches the
flash while we write it. Later calls ``resume`` that state.

- ``probe``: platform, MicroPython version, ``sys.implementation._mpy``, the
  chip's unique id, and the SHA-256 of the files we manage, in one exec.
- ``sync``: make the board hold exactly the staged files: create folders,
  remove stale files in the folders we own (a stale ``gateway/x.py`` would be
  imported before a new ``gateway/x.mpy``), ``fs cp`` only what differs.
- ``reboot_and_watch``: soft reset from the friendly REPL (``machine.reset()``
  on an ESP32) and read the console until the gateway says it runs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys
import time

MARK = "MGPROBE "

# Runs on the board (ESP32 MicroPython and the unix port alike). NAMES is
# replaced by the list of top-level entries to hash (files, or folders walked).
_PROBE = r"""
import sys, os, json, binascii
try:
    import hashlib
except ImportError:
    hashlib = None
def _h(p):
    if hashlib is None:
        return None
    h = hashlib.sha256()
    b = bytearray(1024)
    m = memoryview(b)
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(m[:n])
    return binascii.hexlify(h.digest()).decode()
R = {'platform': sys.platform, 'mpy': getattr(sys.implementation, '_mpy', None),
     'version': '.'.join(str(x) for x in sys.implementation.version[:3]),
     'machine': getattr(sys.implementation, '_machine', '')}
try:
    import machine
    R['uid'] = binascii.hexlify(machine.unique_id()).decode()
except Exception:
    R['uid'] = None
_g = getattr(os, 'getenv', None)
R['vflash'] = _g('METERGATE_FLASH') if _g else None
F = {}
D = []
def _walk(d):
    D.append(d)
    for e in os.ilistdir(d):
        p = d + '/' + e[0]
        if e[1] == 0x4000:
            _walk(p)
        else:
            F[p] = _h(p)
for n in NAMES:
    try:
        st = os.stat(n)
    except OSError:
        continue
    if st[0] & 0x4000:
        _walk(n)
    else:
        F[n] = _h(n)
R['files'] = F
R['dirs'] = D
print('MGPROBE ' + json.dumps(R))
"""

_PREPARE = r"""
import os
for d in MKDIRS:
    try:
        os.mkdir(d)
    except OSError:
        pass
for p in REMOVE:
    os.remove(p)
for d in RMDIRS:
    try:
        os.rmdir(d)
    except OSError:
        pass
print('MGPREPARED')
"""


class ReplError(Exception):
    """The board's REPL did not do what we asked: names the port and what failed."""


@dataclasses.dataclass
class BoardInfo:
    platform: str            # 'esp32' on a chip, 'linux' on the virtual board
    mpy: int | None          # sys.implementation._mpy
    version: str             # MicroPython version, e.g. '1.28.0'
    machine: str
    uid: str | None          # machine.unique_id() in hex (the Wi-Fi MAC on an ESP32)
    vflash: str | None       # the virtual board's flash directory (METERGATE_FLASH)
    files: dict              # board path -> sha256 hex
    dirs: list

    @property
    def virtual(self) -> bool:
        return self.platform != "esp32" and self.vflash is not None

    @property
    def mpy_version(self) -> str | None:
        """'6.3' from _mpy: low byte the version, bits 8-9 the sub-version."""
        if self.mpy is None:
            return None
        return "%d.%d" % (self.mpy & 0xFF, (self.mpy >> 8) & 3)


def mpremote_command() -> list[str]:
    beside = pathlib.Path(sys.executable).parent / "mpremote"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mpremote")
    if not found:
        return [sys.executable, "-m", "mpremote"]
    return [found]


class Repl:
    """mpremote sessions on one port."""

    def __init__(self, port: str, timeout: float = 60.0):
        self.port = str(port)
        self.timeout = timeout
        self.started = False  # True after the first (non-resume) call
        self.calls = 0

    def argv(self, *args: str) -> list[str]:
        head = mpremote_command() + ["connect", self.port]
        if self.started:
            head.append("resume")
        return head + list(args)

    def run(self, *args: str, timeout: float | None = None) -> str:
        argv = self.argv(*args)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ReplError("%s: mpremote %s did not finish in %d s (is the board answering? / 板子无应答?)"
                            % (self.port, args[0], timeout or self.timeout))
        self.calls += 1
        if proc.returncode != 0:
            text = (proc.stderr or proc.stdout).strip().splitlines()
            raise ReplError("%s: mpremote %s failed: %s" % (self.port, args[0], text[-1] if text else proc.returncode))
        self.started = True
        return proc.stdout

    def exec(self, code: str, timeout: float | None = None) -> str:
        return self.run("exec", code, timeout=timeout)

    def probe(self, names=("main.py", "boot.py", "gateway", "config.json", "board.json"),
              timeout: float | None = None) -> BoardInfo:
        out = self.exec(_PROBE.replace("NAMES", json.dumps(list(names))), timeout=timeout)
        for line in out.splitlines():
            if line.startswith(MARK):
                data = json.loads(line[len(MARK):])
                return BoardInfo(**data)
        raise ReplError("%s: the board did not answer the probe; it printed: %s" % (self.port, out.strip()[-300:]))

    def sync(self, staged: dict, board_files: dict, board_dirs: list, owned_dirs=("gateway",)) -> dict:
        """Make the board hold `staged` ({board path: local path}). Returns
        {"copied": [...], "unchanged": [...], "removed": [...]}."""
        from metergate.provision.identity import sha256_file

        copy, same = [], []
        for dest, src in sorted(staged.items()):
            (same if board_files.get(dest) == sha256_file(src) else copy).append(dest)
        owned = tuple(d + "/" for d in owned_dirs)
        remove = sorted(p for p in board_files if p.startswith(owned) and p not in staged)
        needed = set()
        for dest in copy:
            parts = dest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                needed.add("/".join(parts[:i]))
        mkdirs = sorted(d for d in needed if d not in board_dirs)
        keep_dirs = {"/".join(p.split("/")[:i]) for p in staged for i in range(1, p.count("/") + 1)}
        rmdirs = sorted((d for d in board_dirs if d.startswith(owned) and d not in keep_dirs), reverse=True)
        if mkdirs or remove or rmdirs:
            code = (_PREPARE.replace("MKDIRS", json.dumps(mkdirs)).replace("REMOVE", json.dumps(remove))
                    .replace("RMDIRS", json.dumps(rmdirs)))
            out = self.exec(code)
            if "MGPREPARED" not in out:
                raise ReplError("%s: preparing folders failed: %s" % (self.port, out.strip()[-300:]))
        if copy:
            args = []
            for dest in copy:
                if args:
                    args.append("+")
                args += ["fs", "cp", str(staged[dest]), ":" + dest]
            self.run(*args, timeout=max(self.timeout, 10 * len(copy)))
        return {"copied": copy, "unchanged": same, "removed": remove}


# -- the console after a reboot ----------------------------------------------

_BOOT = re.compile(r"\[main\] boot device=(\S+)")
_SOURCE = re.compile(r"\[main\] config source: (\S+)")
_CONFIG_ERROR = re.compile(r"\[main\] config error: (.+)")
_POLLING = re.compile(r"\[app\] polling (\d+) meters")
_MQTT_UP = "[app] mqtt: connected to the broker"
_MQTT_DOWN = re.compile(r"\[app\] mqtt: (not started.*|disconnected.*)")


@dataclasses.dataclass
class ConsoleReport:
    device: str | None = None
    source: str | None = None
    config_errors: list = dataclasses.field(default_factory=list)
    meters: int | None = None
    mqtt: str | None = None        # 'connected', or the last reason it is not
    health: dict | None = None     # the first HEALTH line
    lines: list = dataclasses.field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.meters is not None and self.source == "config.json"

    def feed(self, line: str):
        self.lines.append(line)
        if (m := _BOOT.search(line)):
            self.device = m.group(1)
        elif (m := _SOURCE.search(line)):
            self.source = m.group(1)
        elif (m := _CONFIG_ERROR.search(line)):
            self.config_errors.append(m.group(1))
        elif (m := _POLLING.search(line)):
            self.meters = int(m.group(1))
        elif _MQTT_UP in line:
            self.mqtt = "connected"
        elif (m := _MQTT_DOWN.search(line)) and self.mqtt != "connected":
            self.mqtt = m.group(1)
        elif line.startswith("HEALTH ") and self.health is None:
            try:
                self.health = json.loads(line[7:])
            except ValueError:
                pass


def reboot_and_watch(port: str, platform: str, timeout: float = 30.0, mqtt_wait_s: float = 5.0,
                     want_mqtt: bool = False) -> ConsoleReport:
    """Reboot into main.py and read the console until the gateway polls with
    config.json (then up to `mqtt_wait_s` more for its broker connection)."""
    import serial

    report = ConsoleReport()
    try:
        ser = serial.Serial(port, 115200, timeout=0.1)
    except (OSError, serial.SerialException) as exc:
        raise ReplError("%s: cannot open the console: %s" % (port, exc))
    with ser:
        ser.write(b"\r\x03\x03")  # stop whatever runs
        time.sleep(0.1)
        ser.write(b"\x02")        # friendly REPL
        _read_until(ser, b">>> ", 3.0)
        if platform == "esp32":
            ser.write(b"import machine; machine.reset()\r")
        else:
            ser.write(b"\x04")    # soft reset at an empty prompt: boot.py, main.py
        deadline = time.monotonic() + timeout
        running_at = None
        buf = b""
        while time.monotonic() < deadline:
            try:
                chunk = ser.read(4096)
            except (OSError, serial.SerialException):
                # a chip with native USB drops off the bus while it resets: open the port again
                ser.close()
                time.sleep(0.5)
                try:
                    ser.open()
                except (OSError, serial.SerialException):
                    pass
                continue
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    report.feed(raw.decode("utf-8", "replace").rstrip("\r"))
            if report.config_errors and report.source and report.source != "config.json":
                break  # safe mode: it will not get better by waiting
            if report.running:
                if running_at is None:
                    running_at = time.monotonic()
                    deadline = max(deadline, running_at + mqtt_wait_s) if want_mqtt else deadline
                if report.mqtt == "connected" or not want_mqtt or time.monotonic() - running_at >= mqtt_wait_s:
                    break
    return report


def _read_until(ser, token: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and token not in got:
        got += ser.read(256)
    return got
