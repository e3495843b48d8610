# HAL for the MicroPython unix port (the virtual board); also imports under
# CPython for host tests. Interface: see gateway/hal/__init__.py.
#
# The UART is a TCP connection to the meter-bus simulator ("virtual UART
# link", docs/virtual-board.md): we send b"MGUART1\n", then records
# type(1) + length(2, big-endian) + payload: b"D" bytes we transmit, b"L" line
# settings as JSON. The simulator sends back a plain byte stream, already paced
# at wire speed: what our UART receives.
import json
import os
import select
import socket
import time

from gateway.compat import ticks_ms, ticks_diff, ticks_add
from gateway.hal import char_bits, parity_letter

try:
    from time import sleep_ms
except ImportError:  # CPython

    def sleep_ms(ms):
        time.sleep(ms / 1000)


MAGIC = b"MGUART1\n"
RECONNECT_MS = 1000  # at most one connection attempt a second
RX_MAX = 4096  # bytes kept before new ones are dropped (a UART's rx buffer overflows)
STATE_FILE = ".vboard_reset"  # pending reset cause; its absence means first power-on
_RESET_EXIT = 0xB0  # SystemExit code the virtual board runner treats as "reboot"


def parse_bus_url(url):
    """'tcp://host:port' -> (host, port)."""
    if not url.startswith("tcp://"):
        raise ValueError("bus URL must be tcp://host:port, got %r" % url)
    host, _, port = url[6:].rpartition(":")
    if not host or not port:
        raise ValueError("bus URL must be tcp://host:port, got %r" % url)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class UnixUart:
    """The RS-485 UART as a client of the simulator's virtual UART link.

    Without a reachable bus the UART still works: writes go nowhere and nothing
    arrives; each write (at most once a second) tries to connect again.
    """

    def __init__(self, bus_url=None):
        self._addr = parse_bus_url(bus_url) if bus_url else None
        self._sock = None
        self._poll = None
        self._stream = None
        self._last_try = None
        self._rx = bytearray()
        self._hdr = bytearray(3)
        self._tx_done = ticks_ms()
        self.baudrate = 2400
        self.bits = 8
        self.parity = "E"
        self.stop = 1
        self.invert = False
        self.connect()

    # -- link ------------------------------------------------------------
    @property
    def connected(self):
        return self._sock is not None

    def connect(self):
        """Try to reach the simulator now; True when connected."""
        if self._sock is not None:
            return True
        if self._addr is None:
            return False
        self._last_try = ticks_ms()
        s = None
        try:
            ai = socket.getaddrinfo(self._addr[0], self._addr[1], 0, socket.SOCK_STREAM)[0]
            s = socket.socket(ai[0], socket.SOCK_STREAM)
            s.connect(ai[-1])
            s.setblocking(False)
        except OSError:
            if s is not None:
                s.close()
            return False
        self._sock = s
        self._poll = select.poll()
        self._poll.register(s, select.POLLIN)
        self._stream = None
        if not self._send(MAGIC) or not self._record(b"L", self._settings_json()):
            return False
        return True

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._poll = None
        self._stream = None

    def _send(self, data):
        mv = memoryview(data)
        while len(mv):
            try:
                n = self._sock.send(mv)
            except OSError as exc:
                if exc.args and exc.args[0] == 11:  # EAGAIN: the socket buffer is full
                    p = select.poll()
                    p.register(self._sock, select.POLLOUT)
                    if not p.poll(1000):
                        self.close()
                        return False
                    continue
                self.close()
                return False
            if n is None:
                n = 0
            mv = mv[n:]
        return True

    def _record(self, kind, payload):
        if self._sock is None:
            return False
        hdr = self._hdr
        hdr[0] = kind[0]
        hdr[1] = len(payload) >> 8
        hdr[2] = len(payload) & 0xFF
        return self._send(hdr) and self._send(payload)

    def _settings_json(self):
        return json.dumps({"baud": self.baudrate, "bits": self.bits, "parity": self.parity,
                           "stop": self.stop, "invert": self.invert}).encode()

    def _pump(self, timeout_ms=0):
        """Move what the socket holds into the rx buffer; waits up to timeout_ms for it."""
        if self._sock is None:
            if timeout_ms > 0:
                sleep_ms(timeout_ms)
            return
        wait = timeout_ms
        for _ in range(8):  # drain what is there, bounded
            if not self._poll.poll(wait):
                return
            wait = 0
            try:
                data = self._sock.recv(512)
            except OSError:
                return
            if not data:  # the simulator went away
                self.close()
                return
            self._take(data)

    def _take(self, data):
        room = RX_MAX - len(self._rx)
        if room > 0:
            self._rx.extend(data[:room] if len(data) > room else data)

    # -- machine.UART-like API -------------------------------------------
    def init(self, baudrate=2400, bits=8, parity="E", stop=1, invert=False):
        self.baudrate = int(baudrate)
        self.bits = int(bits)
        self.parity = parity_letter(parity)
        self.stop = int(stop)
        self.invert = bool(invert)
        if self._sock is None:
            self.connect()
        else:
            self._record(b"L", self._settings_json())

    def write(self, buf):
        n = len(buf)
        now = ticks_ms()
        start = self._tx_done if ticks_diff(self._tx_done, now) > 0 else now
        self._tx_done = ticks_add(start, self.wire_ms(n))
        if self._sock is None and (self._last_try is None or ticks_diff(now, self._last_try) >= RECONNECT_MS):
            self.connect()
        if self._sock is not None:
            mv = memoryview(buf)
            for i in range(0, n, 0xFFFF):
                if not self._record(b"D", mv[i:i + 0xFFFF]):
                    break
        return n

    def wire_ms(self, n):
        """Milliseconds `n` characters take on the wire at the current settings (rounded up)."""
        bits = n * char_bits(self.bits, self.parity, self.stop)
        return (bits * 1000 + self.baudrate - 1) // self.baudrate

    def flush(self):
        left = ticks_diff(self._tx_done, ticks_ms())
        if left > 0:
            sleep_ms(left)

    def any(self):
        self._pump(0)
        return len(self._rx)

    def read(self, n=-1):
        self._pump(0)
        if not self._rx:
            return None
        if n is None or n < 0 or n >= len(self._rx):
            out = bytes(self._rx)
            self._rx = bytearray()
        else:
            out = bytes(self._rx[:n])
            self._rx = self._rx[n:]
        return out

    def readinto(self, buf, nbytes=-1):
        self._pump(0)
        if not self._rx:
            return None
        n = len(buf) if nbytes is None or nbytes < 0 else min(nbytes, len(buf))
        n = min(n, len(self._rx))
        buf[:n] = self._rx[:n]
        self._rx = self._rx[n:]
        return n

    def wait(self, timeout_ms):
        """Block until a byte is waiting or timeout_ms passed; returns any()."""
        if self._rx:
            return self.any()
        self._pump(timeout_ms)
        return self.any()

    async def wait_async(self, timeout_ms):
        """Like wait() without blocking the asyncio loop; returns any()."""
        import asyncio

        if not self._rx:
            try:
                await asyncio.wait_for_ms(self._arrival(), timeout_ms)
            except asyncio.TimeoutError:
                pass
        return self.any()

    async def _arrival(self):
        import asyncio

        while not self._rx:
            if self._sock is None:
                await asyncio.sleep_ms(20)
                continue
            if self._stream is None:
                self._stream = asyncio.StreamReader(self._sock)
            data = await self._stream.read(512)
            if data is None:
                continue
            if not data:
                self.close()
                continue
            self._take(data)

    def de(self, on):
        pass  # the virtual link is full duplex: no direction to switch


class UnixHAL:
    name = "unix"

    def __init__(self, config=None, flash_root=None, bus=None, env=None):
        self.config = config or {}
        getenv = env.get if env is not None else os.getenv
        self._getenv = getenv
        root = flash_root if flash_root is not None else (getenv("METERGATE_FLASH_ROOT") or "/")
        self._root = root.rstrip("/")
        self.bus_url = bus or getenv("METERGATE_BUS") or self.config.get("bus") or None
        self.capabilities = {"uart-invert"}
        self._uart = None
        self._reset_cause = self._boot_reset_cause()

    # -- flash -----------------------------------------------------------
    def flash_path(self, name):
        return self._root + "/" + name.lstrip("/")

    # -- uart ------------------------------------------------------------
    def uart(self, **settings):
        if self._uart is None:
            self._uart = UnixUart(self.bus_url)
        if settings:
            self._uart.init(**settings)
        return self._uart

    # -- system ----------------------------------------------------------
    def device_id(self):
        given = self._getenv("METERGATE_DEVICE_ID") or self.config.get("device_id")
        if given:
            return given
        # Stable per flash directory (its host path, set by the vboard runner).
        import hashlib
        import binascii

        seed = (self._getenv("METERGATE_FLASH") or self._root or "/").encode()
        return "vb-" + binascii.hexlify(hashlib.sha256(seed).digest()[:6]).decode()

    def _boot_reset_cause(self):
        forced = self._getenv("METERGATE_RESET_CAUSE")
        path = self.flash_path(STATE_FILE)
        try:
            with open(path) as f:
                pending = f.read().strip()
        except OSError:
            pending = None
        try:
            with open(path, "w") as f:
                f.write("hard")  # unless reset() says otherwise, the next boot is a restart
        except OSError:
            pass
        if forced:
            return forced
        if pending is None:
            return "power-on"
        return pending or "hard"

    def reset_cause(self):
        return self._reset_cause

    def release(self):
        """Let go of the bus (the simulator serves one gateway at a time): after a
        check run from the console, before the app starts again."""
        if self._uart is not None:
            try:
                self._uart.close()
            except Exception:  # noqa: BLE001
                pass
            self._uart = None

    def reset(self):
        # a real reset drops every connection; here the process lives on, so close the
        # bus link now (the simulator serves one gateway at a time)
        if self._uart is not None:
            try:
                self._uart.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            with open(self.flash_path(STATE_FILE), "w") as f:
                f.write("soft")
        except OSError:
            pass
        raise SystemExit(_RESET_EXIT)

    def time(self):
        return int(time.time())

    def ticks_ms(self):
        return ticks_ms()

    def sleep_ms(self, ms):
        sleep_ms(ms)

    def wdt_start(self, timeout_ms=None):
        pass  # no hardware watchdog; the vboard runner restarts a dead process

    def wdt_feed(self):
        pass

    def led(self, on):
        pass

    def supply_voltage(self):
        return None  # no ADC on the unix port

    def network_up(self):
        return True
