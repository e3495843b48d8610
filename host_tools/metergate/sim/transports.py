"""How a gateway reaches the simulated bus: TCP, a pty, or a real serial port.

- ``TcpTransport``: like an RS-485-to-Ethernet converter. One client at a
  time (a second one is refused: accepted and closed at once); bytes pass
  as-is and the gateway-side line settings are the CLI's. A client whose first
  bytes are ``MGUART1\\n`` speaks the virtual UART link instead
  (docs/virtual-board.md): ``D`` records carry data, ``L`` records set the
  gateway's line settings (baud, bits, parity, stop, invert).
- ``PtyTransport``: a pseudo-terminal in raw mode; ``PATH`` becomes a symlink
  to its slave side, which pyserial, mpremote or socat can open.
- ``SerialTransport``: a real serial port (a USB RS-485 adapter wired to a real
  gateway) through pyserial; the port's own UART does the wire timing.

All of them hand the gateway's bytes to a ``BusRunner`` and write back what the
bus delivers.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import time
import tty

from metergate.sim.site import LineSettings

log = logging.getLogger("metergate.sim.transport")

MAGIC = b"MGUART1\n"
MAGIC_WAIT_S = 0.5  # how long a client that sent a prefix of the magic has to finish it
SEND_TIMEOUT_S = 2.0
BUSY_WAIT_S = 1.0  # a second client waits this long for the first to leave, then is refused


def parse_tcp_url(url: str) -> tuple[str, int]:
    """'tcp://host:port' -> (host, port); ValueError otherwise."""
    if not url.startswith("tcp://"):
        raise ValueError("expected tcp://HOST:PORT, got %r" % url)
    host, _, port = url[6:].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit():
        raise ValueError("expected tcp://HOST:PORT, got %r" % url)
    return host, int(port)


def line_from_json(payload: bytes, current: LineSettings) -> tuple[LineSettings, bool]:
    """An L record's JSON -> (LineSettings, invert)."""
    d = json.loads(payload.decode())
    parity = str(d.get("parity", current.parity)).upper()
    if parity not in ("N", "E", "O"):
        raise ValueError("parity %r" % parity)
    line = LineSettings(int(d.get("baud", current.baud)), parity, int(d.get("bits", current.data_bits)),
                        int(d.get("stop", current.stop_bits)))
    if line.baud <= 0 or line.data_bits not in (5, 6, 7, 8) or line.stop_bits not in (1, 2):
        raise ValueError("unusable line settings %s" % d)
    return line, bool(d.get("invert", False))


class _Listener:
    """A listening TCP socket with an accept thread; subclasses handle connections."""

    name = "listener"

    def __init__(self, host: str, port: int):
        self.host = host
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        family = infos[0][0]
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(infos[0][4])
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=self.name, daemon=True)

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "tcp://%s:%d" % (host, self.port)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(2.0)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted(conn, addr)

    def accepted(self, conn, addr):  # pragma: no cover - overridden
        conn.close()


class TcpTransport(_Listener):
    """Raw bytes or the MGUART1 virtual UART link on one TCP port, one client at a time."""

    name = "sim-tcp"

    def __init__(self, runner, host: str, port: int, line: LineSettings):
        super().__init__(host, port)
        self.runner = runner
        self.line = line
        self._busy = threading.Lock()
        self.client = None  # (addr, mode) of the connected client

    @property
    def description(self):
        return self.url

    def accepted(self, conn, addr):
        threading.Thread(target=self._session, args=(conn, addr), name="sim-tcp-client", daemon=True).start()

    def _session(self, conn, addr):
        # a client that just went away (a port probe) may still hold the bus for a moment
        if not self._busy.acquire(timeout=BUSY_WAIT_S):
            log.warning("refusing %s: a gateway is already connected (%s)", addr, self.client)
            conn.close()
            return
        sink = None
        try:
            conn.settimeout(0.2)
            first = self._first_bytes(conn)
            if first is None:
                return
            mguart = first.startswith(MAGIC)
            self.client = (addr, "mguart" if mguart else "raw")
            log.info("gateway connected from %s:%s (%s)", addr[0], addr[1], self.client[1])

            def send(data, conn=conn):
                conn.settimeout(SEND_TIMEOUT_S)
                conn.sendall(data)

            sink = send
            self.runner.attach(sink, self.line)
            if mguart:
                self._mguart(conn, first[len(MAGIC):])
            else:
                self.runner.write(first)
                self._raw(conn)
        except OSError as exc:
            log.info("gateway connection ended: %s", exc)
        finally:
            if sink is not None:
                self.runner.detach(sink)
            try:
                conn.close()
            except OSError:
                pass
            log.info("gateway %s disconnected", addr[0] if addr else "?")
            self.client = None
            self._busy.release()

    def _recv(self, conn, n=4096):
        """bytes, b'' at EOF, None on timeout (or when stopping)."""
        conn.settimeout(0.2)
        try:
            return conn.recv(n)
        except socket.timeout:
            return None

    def _first_bytes(self, conn):
        """The client's first bytes, waiting while they are a proper prefix of the magic."""
        buf = b""
        deadline = None
        while not self._stop.is_set():
            data = self._recv(conn)
            if data == b"":
                return None
            if data:
                buf += data
            if buf:
                if len(buf) >= len(MAGIC) or not MAGIC.startswith(buf):
                    return buf
                deadline = deadline or time.monotonic() + MAGIC_WAIT_S
                if time.monotonic() >= deadline:
                    return buf
        return None

    def _raw(self, conn):
        while not self._stop.is_set():
            data = self._recv(conn)
            if data == b"":
                return
            if data:
                self.runner.write(data)

    def _mguart(self, conn, buf):
        buf = bytearray(buf)
        while not self._stop.is_set():
            while len(buf) >= 3:
                n = (buf[1] << 8) | buf[2]
                if len(buf) < 3 + n:
                    break
                kind, payload = bytes(buf[0:1]), bytes(buf[3:3 + n])
                del buf[:3 + n]
                if kind == b"D":
                    self.runner.write(payload)
                elif kind == b"L":
                    try:
                        line, invert = line_from_json(payload, self.line)
                    except (ValueError, TypeError) as exc:
                        log.warning("bad L record %r: %s", payload, exc)
                        continue
                    log.info("gateway line settings: %s%s", line, " inverted" if invert else "")
                    self.runner.set_line(line, invert)
                else:
                    log.warning("unknown virtual UART record type %r (%d bytes) ignored", kind, n)
            data = self._recv(conn)
            if data == b"":
                return
            if data:
                buf += data


class PtyTransport:
    """A raw pty; `link` is a symlink to its slave, the gateway side opens it."""

    def __init__(self, runner, link: str, line: LineSettings):
        self.runner = runner
        self.link = os.path.abspath(link)
        self.line = line
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation: bytes as they are
        self.slave_name = os.ttyname(self.slave)
        if os.path.islink(self.link):
            os.unlink(self.link)
        elif os.path.exists(self.link):
            os.close(self.master)
            os.close(self.slave)
            raise FileExistsError("%s exists and is not a symlink; not replacing it" % self.link)
        os.symlink(self.slave_name, self.link)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sim-pty", daemon=True)

    @property
    def description(self):
        return "%s -> %s" % (self.link, self.slave_name)

    def start(self):
        self.runner.attach(self._sink, self.line)
        self._thread.start()
        return self

    def _sink(self, data):
        os.write(self.master, data)

    def _loop(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.2)
            if not r:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:  # the slave side has no opener right now
                time.sleep(0.05)
                continue
            if data:
                self.runner.write(data)

    def stop(self):
        self._stop.set()
        self._thread.join(2.0)
        self.runner.detach(self._sink)
        try:
            if os.path.islink(self.link) and os.readlink(self.link) == self.slave_name:
                os.unlink(self.link)
        except OSError:
            pass
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class SerialTransport:
    """A real serial port (USB RS-485 adapter): the physical wire to a real gateway."""

    def __init__(self, runner, device: str, line: LineSettings):
        import serial

        self.runner = runner
        self.device = device
        self.line = line
        parity = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}[line.parity]
        self.port = serial.Serial(device, line.baud, bytesize=line.data_bits, parity=parity,
                                  stopbits=line.stop_bits, timeout=0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sim-serial", daemon=True)

    @property
    def description(self):
        return "%s at %s" % (self.device, self.line)

    def start(self):
        # bytes are handed to the port one character early: its UART then spends
        # that character time sending them, so they end on the wire on time
        self.runner.attach(self._sink, self.line, lead=self.line.char_time_s)
        self._thread.start()
        return self

    def _sink(self, data):
        self.port.write(data)

    def _loop(self):
        while not self._stop.is_set():
            try:
                data = self.port.read(max(1, self.port.in_waiting))
            except Exception as exc:  # noqa: BLE001 - serial.SerialException: adapter unplugged
                log.error("serial port %s: %s", self.device, exc)
                time.sleep(0.5)
                continue
            if data:
                self.runner.write(data, on_wire=True)  # they already took their wire time

    def stop(self):
        self._stop.set()
        self._thread.join(2.0)
        self.runner.detach(self._sink)
        try:
            self.port.close()
        except Exception:  # noqa: BLE001
            pass
