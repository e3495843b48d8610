"""The virtual board against the real tools: socat ptys, mpremote, the unix-port
micropython, and real TCP sockets for the virtual UART link."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import serial

from metergate.vboard import board as vb

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
BIN = pathlib.Path(sys.executable).parent
MPREMOTE = str(BIN / "mpremote")
METERGATE = str(BIN / "metergate")
MICROPYTHON = vb.micropython_command()

pytestmark = [
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed"),
    pytest.mark.timeout(120),
]


def mpremote(link, *args, timeout=30):
    return subprocess.run([MPREMOTE, "connect", str(link), "resume", *args],
                          capture_output=True, text=True, timeout=timeout)


def _alive(pid):
    return vb._alive(pid)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`metergate vboard serve-repl` on a fresh flash, main.py running (as on a board)."""
    base = tmp_path_factory.mktemp("vboard")
    flash, link = base / "flash", base / "board.pty"
    flash.mkdir()
    (flash / "config.json").write_text(json.dumps({"device_id": "gw-test-1"}))
    log = open(base / "serve.log", "w+")
    proc = subprocess.Popen([METERGATE, "vboard", "serve-repl", "--flash", str(flash), "--link", str(link)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while not link.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, (base / "serve.log").read_text()
        time.sleep(0.05)
    assert link.exists(), (base / "serve.log").read_text()
    time.sleep(0.3)  # let the board boot main.py
    socat_kids = vb._children(proc.pid)
    assert len(socat_kids) == 1
    board_pids = vb._children(socat_kids[0])
    assert len(board_pids) == 1
    yield {"flash": flash, "link": link, "proc": proc, "socat": socat_kids[0], "board": board_pids[0]}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    for pid in socat_kids + board_pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    log.close()


def test_exec_prints_through_mpremote(served):
    r = mpremote(served["link"], "exec", "print(1+1)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"


def test_main_py_was_running_and_booted_with_config(served):
    # mpremote's Ctrl-C stopped main.py; its globals stay, as on a board
    r = mpremote(served["link"], "exec", "print(CONFIG, load_config()['device_id'])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["config.json", "gw-test-1"]


def test_fs_cp_cat_ls_and_hash(served, tmp_path):
    local = tmp_path / "notes.txt"
    body = "".join("line %d of the meter list\n" % i for i in range(200))  # several 256-byte chunks
    local.write_text(body)
    r = mpremote(served["link"], "fs", "cp", str(local), ":notes.txt")
    assert r.returncode == 0, r.stderr
    assert (served["flash"] / "notes.txt").read_text() == body

    r = mpremote(served["link"], "fs", "cat", ":notes.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r\n", "\n") == body

    r = mpremote(served["link"], "fs", "ls", ":/")
    assert r.returncode == 0, r.stderr
    sizes = {line.split()[1]: int(line.split()[0]) for line in r.stdout.splitlines()[1:]}
    assert sizes["notes.txt"] == len(body)
    assert "main.py" in sizes and "gateway/" in sizes

    r = mpremote(served["link"], "fs", "sha256sum", ":notes.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == hashlib.sha256(body.encode()).hexdigest()

    back = tmp_path / "back.txt"
    r = mpremote(served["link"], "fs", "cp", ":notes.txt", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_text() == body


def test_fs_mkdir_rm_and_missing_file(served):
    link = served["link"]
    assert mpremote(link, "fs", "mkdir", ":notes").returncode == 0
    assert mpremote(link, "fs", "touch", ":notes/a").returncode == 0
    assert (served["flash"] / "notes" / "a").is_file()
    assert mpremote(link, "fs", "rm", ":notes/a").returncode == 0
    assert mpremote(link, "fs", "rmdir", ":notes").returncode == 0
    assert not (served["flash"] / "notes").exists()
    r = mpremote(link, "fs", "cat", ":nope.txt")
    assert r.returncode != 0
    assert "No such file" in r.stderr


def test_root_is_the_flash_directory(served):
    (served["flash"] / "marker.txt").write_text("in flash")
    r = mpremote(served["link"], "exec",
                 "import os\nprint(open('/marker.txt').read(), os.getcwd(), 'etc' in os.listdir('/'))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["in", "flash", "/", "False"]


def test_rename_between_absolute_paths_works_as_on_littlefs(served):
    # the spool and the boot record replace files with tmp + rename by absolute path
    r = mpremote(served["link"], "exec",
                 "import os\nopen('/r.tmp','w').write('new')\nos.rename('/r.tmp','/r.txt')\n"
                 "print(open('/r.txt').read(), 'r.tmp' in os.listdir('/'))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["new", "False"]
    assert (served["flash"] / "r.txt").read_text() == "new"


def test_exception_comes_back_as_error(served):
    r = mpremote(served["link"], "exec", "raise ValueError('bad meter address')")
    assert r.returncode != 0
    assert "ValueError: bad meter address" in r.stdout + r.stderr
    assert "repl_server" not in r.stdout + r.stderr
    # and the board still answers
    assert mpremote(served["link"], "exec", "print('alive')").stdout.strip() == "alive"


def test_globals_persist_between_execs_with_resume(served):
    assert mpremote(served["link"], "exec", "kept = 41").returncode == 0
    assert mpremote(served["link"], "exec", "print(kept + 1)").stdout.strip() == "42"


def _read_until(port, ending, timeout=5.0):
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(ending) and time.monotonic() < deadline:
        data += port.read(1)
    return data


def test_ctrl_c_interrupts_running_code_and_raw_paste(served):
    with serial.Serial(str(served["link"]), timeout=0.2) as port:
        port.write(b"\r\x03")
        time.sleep(0.2)
        port.reset_input_buffer()
        port.write(b"\r\x01")
        assert _read_until(port, b"raw REPL; CTRL-B to exit\r\n>").endswith(b">")
        port.write(b"while True:\n pass\n\x04")
        assert _read_until(port, b"OK").endswith(b"OK")
        time.sleep(0.3)
        port.write(b"\x03")
        out = _read_until(port, b"\x04>")
        assert out.endswith(b"\x04\x04>") or b"KeyboardInterrupt" in out
        assert b"KeyboardInterrupt" in out
        # raw-paste: window advertised, code bigger than one window accepted
        port.write(b"\x05A\x01")
        head = port.read(4)
        assert head[:2] == b"R\x01"
        window = struct.unpack("<H", head[2:])[0]
        code = b"x = 0\n" + b"x += 1\n" * (window // 7 + 50) + b"print('n', x)\n"
        sent, room = 0, window
        while sent < len(code):
            while room == 0:
                assert port.read(1) == b"\x01"
                room += window
            chunk = code[sent:sent + room]
            port.write(chunk)
            sent += len(chunk)
            room -= len(chunk)
        port.write(b"\x04")
        out = _read_until(port, b"\x04>")
        assert b"n %d" % (window // 7 + 50) in out
        port.write(b"\r\x02")


def test_serve_repl_stops_cleanly(tmp_path):
    flash, link = tmp_path / "flash", tmp_path / "b.pty"
    proc = subprocess.Popen([METERGATE, "vboard", "serve-repl", "--flash", str(flash), "--link", str(link),
                             "--no-main"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()
    assert str(link) in first
    socat = vb._children(proc.pid)
    board_pids = [p for s in socat for p in vb._children(s)]
    assert socat and board_pids
    r = mpremote(link, "exec", "print(7*6)")
    assert r.stdout.strip() == "42"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    time.sleep(0.2)
    assert not any(_alive(p) for p in socat + board_pids)
    assert not link.exists() and not link.is_symlink()


# -- HAL: the virtual UART link against a real TCP peer -----------------------

class BusPeer:
    """The simulator's end of the virtual UART link, enough to check our side."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.records = []
        self.magic = None
        self.conn = None
        self.got = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.conn, _ = self.sock.accept()
        f = self.conn.makefile("rb")
        self.magic = f.read(8)
        while True:
            hdr = f.read(3)
            if len(hdr) < 3:
                return
            kind, n = hdr[:1], struct.unpack(">H", hdr[1:])[0]
            payload = f.read(n)
            self.records.append((kind, payload))
            if kind == b"D":
                self.got.set()
                self.conn.sendall(b"\x68REPLY" + payload)


HAL_SCRIPT = r"""
import sys, time
sys.path.insert(0, FIRMWARE)
from gateway.hal.unix import UnixHAL
hal = UnixHAL({"device_id": "gw-7"}, flash_root=FLASH, bus=BUS)
u = hal.uart(baudrate=9600, parity=None)
u.init(2400, 8, "E", 1, True)
t0 = time.ticks_ms()
u.write(b"\xfe\xfe\x68" + bytes(21))
u.flush()
dt = time.ticks_diff(time.ticks_ms(), t0)
n = u.wait(2000)
got = b""
while len(got) < 30 and u.wait(500):
    got += u.read()
import asyncio
async def later():
    u.write(b"AB")
    return await u.wait_async(2000)
na = asyncio.run(later())
buf = bytearray(16)
k = u.readinto(buf)
print("RESULT", dt, len(got), got[:6], bytes(buf[:k]), hal.device_id(), hal.reset_cause(),
      hal.supply_voltage(), sorted(hal.capabilities), hal.flash_path("config.json") == FLASH + "/config.json")
"""


def run_mpy(script, **consts):
    head = "".join("%s = %r\n" % kv for kv in consts.items())
    return subprocess.run([MICROPYTHON, "-c", head + script], capture_output=True, text=True, timeout=30)


def test_unix_hal_uart_link_protocol(tmp_path):
    peer = BusPeer()
    r = run_mpy(HAL_SCRIPT, FIRMWARE=str(FIRMWARE), FLASH=str(tmp_path), BUS=peer.url)
    assert r.returncode == 0, r.stdout + r.stderr
    result = [line for line in r.stdout.splitlines() if line.startswith("RESULT")][0].split(" ", 1)[1]
    assert peer.magic == b"MGUART1\n"
    kinds = [k for k, _ in peer.records]
    assert kinds[:3] == [b"L", b"L", b"L"]  # on connect, hal.uart(...) init, explicit init
    assert json.loads(peer.records[0][1]) == {"baud": 2400, "bits": 8, "parity": "E", "stop": 1, "invert": False}
    assert json.loads(peer.records[1][1])["baud"] == 9600
    assert json.loads(peer.records[1][1])["parity"] == "N"
    assert json.loads(peer.records[2][1]) == {"baud": 2400, "bits": 8, "parity": "E", "stop": 1, "invert": True}
    assert peer.records[3] == (b"D", b"\xfe\xfe\x68" + bytes(21))
    assert peer.records[4] == (b"D", b"AB")
    dt, ngot = (int(x) for x in result.split()[:2])
    assert 105 <= dt < 400  # 24 chars * 11 bits at 2400 baud = 110 ms on the wire
    assert ngot == 30
    assert "b'hREPLY'" in result and "b'hREPLYAB'" in result
    assert "gw-7 power-on None ['uart-invert'] True" in result


def test_unix_hal_without_bus_still_has_a_uart(tmp_path):
    script = r"""
import sys
sys.path.insert(0, FIRMWARE)
from gateway.hal.unix import UnixHAL
hal = UnixHAL({}, flash_root=FLASH, bus="tcp://127.0.0.1:1")
u = hal.uart()
print("R", u.write(b"abc"), u.any(), u.read(), u.wait(50), u.connected, hal.reset_cause(), hal.device_id()[:3])
hal2 = UnixHAL({}, flash_root=FLASH, bus=None)
print("R2", hal2.reset_cause(), hal2.device_id() == hal.device_id())
"""
    r = run_mpy(script, FIRMWARE=str(FIRMWARE), FLASH=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "R 3 0 None 0 False power-on vb-" in r.stdout
    assert "R2 hard True" in r.stdout


# -- main.py: a board that does not die ---------------------------------------

def _run_board(flash, seconds=2.0, *extra):
    proc = subprocess.Popen([METERGATE, "vboard", "run", "--flash", str(flash), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(seconds)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return alive, out


def test_main_survives_a_bad_config_and_a_crashing_app(tmp_path):
    flash = tmp_path / "flash"
    vb.install_firmware(flash)
    (flash / "config.json").write_text("{not json")
    (flash / "gateway" / "app.py").write_text("def run(hal):\n    raise RuntimeError('poller broke')\n")
    alive, out = _run_board(flash, 1.5, "--no-install")
    assert alive, out
    assert "bad config.json" in out
    assert "reset=power-on" in out
    assert "app crashed" in out and "poller broke" in out


def test_run_boots_the_installed_firmware_and_idles(tmp_path):
    flash = tmp_path / "flash"
    alive, out = _run_board(flash, 1.0, "--device-id", "gw-idle")
    assert alive, out
    assert "boot device=gw-idle reset=power-on hal=unix" in out
    assert "[app] polling 0 meters" in out  # no config.json: the app runs and idles
    assert (flash / "main.py").read_text() == (FIRMWARE / "main.py").read_text()
