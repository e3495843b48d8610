"""One simulated RS-485 bus: a shared half-duplex wire, modelled at bit level.

Everything that talks on the bus (the gateway, every meter) is a *driver*: while
it transmits it drives the pair to a level for every bit of every character
(start bit, data bits LSB first, parity, stop bits) at its own baud rate. The
bus level is the wired-AND of the enabled drivers (0 is dominant, a fine model
of two RS-485 transmitters fighting) and idles high (bias) when nobody drives.
Every listener is a UART with its own line settings that re-samples the bus:
it waits for a falling edge, checks the start bit at mid-bit, samples each bit
at mid-bit, and checks parity and the stop bit. So a baud or parity mismatch, an
A/B swap (the listener or the talker sees / drives the inverse of the pair: a
swapped receiver idles low, i.e. in break) and two talkers at once produce the
bytes a real UART would produce, not a made-up garbage pattern.

Polarity: the gateway's pair is swapped when an ``ab_swapped`` fault is active
``at = "gateway"``; its UART may invert TX and RX itself (``invert`` in the
virtual UART's L record), which cancels the swap. A meter's own swap is
``link.inverted`` XOR the gateway swap (``SiteState.link`` combines both).

A request is the gateway's burst of characters; it ends when it forms a
complete DL/T 645 or Modbus RTU frame (as the gateway sent it), or after a
silence of ``GAP_CHARS`` character times. Every powered meter then decodes the
burst window with its own UART (meters discard characters with parity or
framing errors, as meter firmware does), loose contact drops the request
(``drop_rate``) or damages the reply (``corrupt_rate``, random bit flips), and
each reply is put on the wire ``response_delay_s`` after the end of the request.
The gateway's UART decodes the bus continuously (not its own transmission: a
converter or a half-duplex gateway does not hear itself) and keeps damaged
characters, as the ESP32's FIFO does; each character is handed to the
transport at the instant its last bit ends.

``Bus`` has no thread: ``write(data, t)``, ``advance(t)`` -> delivered bytes.
``BusRunner`` drives it in real time for the transports.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from dataclasses import dataclass, field

from metergate.sim.site import LineSettings

log = logging.getLogger("metergate.sim.bus")

GAP_CHARS = 3.5  # silence that ends a request (the Modbus RTU inter-frame gap)
MIN_GAP_S = 0.00175  # Modbus RTU: fixed 1.75 ms above 19200 baud
PRUNE_S = 5.0  # drives older than this are forgotten
GATEWAY = "gateway"


# ---------------------------------------------------------------------------
# Characters on the wire


def parity_bit(value: int, parity: str, data_bits: int = 8) -> int | None:
    """The parity bit for `value` (None for no parity): even makes the count of ones even."""
    if parity == "N":
        return None
    ones = bin(value & ((1 << data_bits) - 1)).count("1") & 1
    return ones if parity == "E" else ones ^ 1


def char_bits(value: int, line: LineSettings) -> list[int]:
    """The logical bit levels of one character: start, data LSB first, parity, stop."""
    bits = [0]
    bits += [(value >> k) & 1 for k in range(line.data_bits)]
    p = parity_bit(value, line.parity, line.data_bits)
    if p is not None:
        bits.append(p)
    bits += [1] * line.stop_bits
    return bits


class Drive:
    """A driver enabled on the bus from t0 to t1; levels are bus levels (after its polarity).

    ``times``/``levels``: change points, level ``levels[i]`` from ``times[i]`` on;
    ``times[0] == t0``.
    """

    __slots__ = ("owner", "t0", "t1", "times", "levels", "data")

    def __init__(self, owner, t0, t1, times, levels, data=b""):
        self.owner, self.t0, self.t1, self.times, self.levels, self.data = owner, t0, t1, times, levels, data

    def level_at(self, t: float) -> int:
        return self.levels[bisect.bisect_right(self.times, t) - 1]

    def overlaps(self, other: "Drive") -> bool:
        return self.t0 < other.t1 and other.t0 < self.t1


def encode(data: bytes, line: LineSettings, t0: float, owner=None, inverted: bool = False) -> Drive:
    """Characters back to back from t0; `inverted` drives the inverse of each level (and of idle)."""
    bit = 1.0 / line.baud
    times, levels = [], []
    t = t0
    prev = None
    for value in data:
        for b in char_bits(value, line):
            lvl = b ^ inverted
            if lvl != prev:
                times.append(t)
                levels.append(lvl)
                prev = lvl
            t += bit
    if not times:
        times, levels = [t0], [1 ^ inverted]
    # exact char boundaries: t accumulates rounding; the end is what the UART's clock says
    t1 = t0 + len(data) * line.bits_per_char * bit
    return Drive(owner, t0, t1, times, levels, bytes(data))


@dataclass
class Char:
    """One character as a receiving UART saw it."""

    t_start: float  # the falling edge that started it
    t_end: float  # end of its last stop bit at the receiver's baud
    value: int  # data bits as sampled
    parity_error: bool = False
    framing_error: bool = False

    @property
    def ok(self) -> bool:
        return not (self.parity_error or self.framing_error)

    @property
    def is_break(self) -> bool:
        return self.value == 0 and self.framing_error


class Levels:
    """The level a listener sees over time: piecewise constant, from a list of change points."""

    def __init__(self, start: float, first: int, times: list[float], levels: list[int]):
        self.start = start
        self.times = [start] + times
        self.levels = [first] + levels

    def at(self, t: float) -> int:
        i = bisect.bisect_right(self.times, t) - 1
        return self.levels[max(i, 0)]

    def next_falling(self, after: float, prev: int) -> float | None:
        """First time > after where the level goes from 1 to 0, given the level `prev` at `after`."""
        i = bisect.bisect_right(self.times, after)
        lvl = prev
        for j in range(i, len(self.times)):
            new = self.levels[j]
            if lvl == 1 and new == 0:
                return self.times[j]
            lvl = new
        return None


class Uart:
    """A receiving UART: start-bit edge detection and mid-bit sampling (see module doc).

    Stateful so it can decode a bus continuously: ``pos`` is where it is,
    ``level`` the level it last saw there.
    """

    def __init__(self, line: LineSettings, pos: float = 0.0, level: int = 1):
        self.line = line
        self.pos = pos
        self.level = level

    def next_char(self, levels: Levels) -> Char | None:
        """The next character after pos (without consuming it), or None if no start edge is known."""
        pos, lvl = self.pos, self.level
        bit = 1.0 / self.line.baud
        while True:
            edge = levels.next_falling(pos, lvl)
            if edge is None:
                return None
            if levels.at(edge + 0.5 * bit) != 0:  # a glitch, not a start bit
                pos, lvl = edge + 0.5 * bit, 1
                continue
            value = 0
            for k in range(self.line.data_bits):
                value |= levels.at(edge + (1.5 + k) * bit) << k
            n = 1 + self.line.data_bits
            perr = False
            want = parity_bit(value, self.line.parity, self.line.data_bits)
            if want is not None:
                perr = levels.at(edge + (n + 0.5) * bit) != want
                n += 1
            ferr = False
            for s in range(self.line.stop_bits):
                if levels.at(edge + (n + s + 0.5) * bit) != 1:
                    ferr = True
            return Char(edge, edge + self.line.bits_per_char * bit, value, perr, ferr)

    def consume(self, ch: Char, levels: Levels) -> None:
        """Move past `ch`: the UART looks for the next edge from its last stop-bit sample."""
        bit = 1.0 / self.line.baud
        self.pos = ch.t_start + (self.line.bits_per_char - 0.5) * bit
        self.level = levels.at(self.pos)

    def idle_until(self, t: float, levels: Levels) -> None:
        """Nothing started before t: jump there (only when no start edge lies before t)."""
        if t > self.pos:
            self.pos = t
            self.level = levels.at(t)

    def decode(self, levels: Levels, until: float) -> list[Char]:
        """Every character whose start edge is before `until` (their bits may lie after it)."""
        out = []
        while True:
            ch = self.next_char(levels)
            if ch is None or ch.t_start >= until:
                return out
            out.append(ch)
            self.consume(ch, levels)


def listen(drives, start: float, polarity: bool, level: int | None = None) -> Levels:
    """What a listener of that polarity sees from `start` on: the wired-AND of the
    enabled drivers, the bias (high) when none drives; `level` overrides the level at start."""
    drives = [d for d in drives if d.t1 > start]
    points = set()
    for d in drives:
        points.update(x for x in d.times if x > start)
        points.add(d.t1)

    def bus_at(x):
        for d in drives:
            if d.t0 <= x < d.t1 and d.level_at(x) == 0:
                return 0
        return 1

    first = bus_at(start) ^ polarity if level is None else level
    times, levels = [], []
    prev = first
    for x in sorted(points):
        lvl = bus_at(x) ^ polarity
        if lvl != prev:
            times.append(x)
            levels.append(lvl)
            prev = lvl
    return Levels(start, first, times, levels)


def decode_bytes(data: bytes, tx: LineSettings, rx: LineSettings, inverted: bool = False) -> list[Char]:
    """What a UART set to `rx` receives when `data` is sent at `tx` on an idle line.

    `inverted`: the receiver sees the inverse of the line (A/B swapped between
    them), including the idle level, so it sits in break before and after.
    """
    d = encode(data, tx, 0.0)
    lv = listen([d], -1.0, inverted)
    return Uart(rx, -1.0, lv.at(-1.0)).decode(lv, d.t1 + 1.0)


# ---------------------------------------------------------------------------
# Request framing


def _crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


# Modbus RTU request lengths by function code (None: depends on a byte count at index 6)
_MODBUS_REQ_LEN = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8, 15: None, 16: None}


def complete_frame(data: bytes) -> bool:
    """True when `data` is exactly one whole DL/T 645 frame (FE wake-up allowed) or Modbus RTU request."""
    i = 0
    while i < len(data) and data[i] == 0xFE:
        i += 1
    f = data[i:]
    if len(f) >= 12 and f[0] == 0x68 and f[7] == 0x68 and len(f) == 12 + f[9]:
        return f[-1] == 0x16 and sum(f[:-2]) & 0xFF == f[-2]
    if len(data) >= 4 and _crc16(data) == 0:
        fc = data[1]
        if fc in _MODBUS_REQ_LEN:
            want = _MODBUS_REQ_LEN[fc]
            if want is None:
                want = 9 + data[6] if len(data) > 6 else -1
            return len(data) == want
        return True
    return False


# ---------------------------------------------------------------------------
# The bus


@dataclass
class MeterStats:
    requests_heard: int = 0
    replies_sent: int = 0
    collisions: int = 0
    corrupted: int = 0
    dropped: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Burst:
    start: float
    end: float
    data: bytearray = field(default_factory=bytearray)
    deadline: float = 0.0


class Bus:
    """The wire, its talkers and listeners; no thread, no wall clock of its own.

    ``meters``: MeterModel-like objects (``meter``, ``link``, ``response_delay_s``,
    ``powered(now)``, ``handle(request, now)``). ``gateway_line``: the
    gateway's line settings (default: the first meter's bus). ``wall``: the clock
    passed to the meters (``now`` of powered/handle). Times given to ``write``
    and ``advance`` are on the bus's own timeline (monotonic seconds).
    """

    def __init__(self, site, state, meters, gateway_line: LineSettings | None = None, seed: int | None = None,
                 wall=time.time):
        self.site = site
        self.state = state
        self.meters = list(meters)
        if gateway_line is None:
            bus_name = self.meters[0].meter.bus if self.meters else site.buses[0].name
            gateway_line = site.bus(bus_name).line
        self.default_line = gateway_line
        self.gateway_line = gateway_line
        self.gateway_invert = False
        self.rng = random.Random(seed)
        self.wall = wall
        self.stats = {m.meter.id: MeterStats() for m in self.meters}
        self.bus_stats = {"requests": 0, "bytes_from_gateway": 0, "bytes_to_gateway": 0, "chars_damaged": 0}
        self.drives: list[Drive] = []
        self.burst: _Burst | None = None
        self._tx_end = 0.0
        self._rx = None  # the gateway's UART, created on first use
        self._version = 0  # bumped when the drives change
        self._rx_cache = None  # (version, polarity, Levels) the gateway's UART last used
        self.transactions = []  # (t, request, [(meter_id, reply)]) of the last few, for -v logs
        self.on_transaction = None  # callback(dict) after each request is handled

    # -- polarity ----------------------------------------------------------
    def gateway_swapped(self) -> bool:
        return any(f.get("at") == "gateway" for f in self.state.active_faults("ab_swapped"))

    def _gw_polarity(self) -> bool:
        return self.gateway_swapped() ^ self.gateway_invert

    def _meter_polarity(self, link) -> bool:
        return bool(link.inverted) ^ self.gateway_swapped()

    # -- gateway side ------------------------------------------------------
    def set_gateway_line(self, line: LineSettings, invert: bool = False, t: float | None = None) -> None:
        """New gateway UART settings (e.g. from an L record); the receiver restarts."""
        self.gateway_line = line
        self.gateway_invert = bool(invert)
        self._rx = None
        if t is not None:
            self._rx_start(t)

    def reset_gateway(self, t: float) -> None:
        """A new gateway connection: default line settings, nothing pending."""
        self.gateway_line = self.default_line
        self.gateway_invert = False
        self.burst = None
        self._rx = None
        self._rx_start(t)

    def _rx_start(self, t: float) -> None:
        pol = self._gw_polarity()
        lv = self._levels(t, pol, exclude=GATEWAY)
        self._rx = Uart(self.gateway_line, t, lv.at(t))

    def gap_s(self) -> float:
        return max(GAP_CHARS * self.gateway_line.char_time_s, MIN_GAP_S)

    def write(self, data: bytes, t: float, on_wire: bool = False) -> None:
        """The gateway transmits `data`, handed over at time t.

        The characters go out back to back from t (or after what is still being
        sent); ``on_wire``: they already crossed a real wire and ended at t.
        """
        if not data:
            return
        line = self.gateway_line
        n = len(data)
        start = t - n * line.char_time_s if on_wire else t
        start = max(start, self._tx_end)
        drive = encode(data, line, start, owner=GATEWAY, inverted=self._gw_polarity())
        self._add_drive(drive)
        self._tx_end = drive.t1
        self.bus_stats["bytes_from_gateway"] += n
        if self.burst is None:
            self.burst = _Burst(start, drive.t1)
        self.burst.data += data
        self.burst.end = drive.t1
        self.burst.deadline = drive.t1 if complete_frame(bytes(self.burst.data)) else drive.t1 + self.gap_s()

    # -- time --------------------------------------------------------------
    def next_event(self) -> float | None:
        """When `advance` next has something to do (None: nothing until new input)."""
        times = []
        if self.burst is not None:
            times.append(self.burst.deadline)
        if self._rx is not None:
            ch = self._rx.next_char(self._rx_levels())
            if ch is not None:
                times.append(ch.t_end)
        return min(times) if times else None

    def advance(self, t: float) -> bytes:
        """Run the bus up to time t; returns the bytes the gateway's UART completed by then."""
        if self._rx is None:
            self._rx_start(t)
        out = bytearray()
        while True:
            # the gateway receives what ended before the request completes, then the request is handled
            limit = t
            if self.burst is not None and self.burst.deadline <= t:
                limit = self.burst.deadline
            out += self._receive(limit)
            if self.burst is not None and self.burst.deadline <= t:
                burst, self.burst = self.burst, None
                self._handle(burst)
                continue
            break
        self._prune(t)
        return bytes(out)

    def run_until_idle(self, t: float, horizon: float = 5.0) -> list[tuple[float, bytes]]:
        """Advance event by event (virtual time) until nothing is pending; [(time, bytes)]."""
        got = []
        stop = t + horizon
        while True:
            nxt = self.next_event()
            if nxt is None or nxt > stop:
                return got
            data = self.advance(max(nxt, t))
            t = max(nxt, t)
            if data:
                got.append((t, data))

    # -- internals ---------------------------------------------------------
    def _add_drive(self, drive: Drive) -> None:
        for other in self.drives:
            if other.overlaps(drive):
                for owner in {other.owner, drive.owner}:
                    if owner in self.stats:
                        self.stats[owner].collisions += 1
                log.info("collision: %s and %s on the wire at the same time", other.owner, drive.owner)
        self.drives.append(drive)
        self._version += 1

    def _prune(self, t: float) -> None:
        keep_after = t - PRUNE_S
        if self._rx is not None:
            keep_after = min(keep_after, self._rx.pos - 1.0)
        kept = [d for d in self.drives if d.t1 >= keep_after]
        if len(kept) != len(self.drives):
            self.drives = kept
            self._version += 1

    def _levels(self, start: float, polarity: bool, exclude=None, level: int | None = None) -> Levels:
        return listen([d for d in self.drives if d.owner != exclude], start, polarity, level)

    def _rx_levels(self) -> Levels:
        """What the gateway's UART sees from where it is (cached until the drives change)."""
        rx = self._rx
        pol = self._gw_polarity()
        c = self._rx_cache
        if c is not None and c[0] == self._version and c[1] == pol and c[2].start <= rx.pos:
            return c[2]
        lv = self._levels(rx.pos, pol, exclude=GATEWAY, level=rx.level)
        self._rx_cache = (self._version, pol, lv)
        return lv

    def _receive(self, t: float) -> bytes:
        """Characters the gateway's UART completes up to t."""
        rx = self._rx
        out = bytearray()
        lv = self._rx_levels()
        while True:
            ch = rx.next_char(lv)
            if ch is None or ch.t_end > t:
                if ch is None or ch.t_start > t:
                    rx.idle_until(t if ch is None else min(t, ch.t_start - 1e-9), lv)
                return bytes(out)
            rx.consume(ch, lv)
            out.append(ch.value)  # the ESP32 keeps damaged characters in its FIFO
            if not ch.ok:
                self.bus_stats["chars_damaged"] += 1
            self.bus_stats["bytes_to_gateway"] += 1

    def _corrupt(self, data: bytes) -> bytes:
        """Flip 1..3 distinct random bits (a loose contact's spikes), so the frame is always damaged."""
        buf = bytearray(data)
        for pos in self.rng.sample(range(len(buf) * 8), min(len(buf) * 8, 1 + self.rng.randrange(3))):
            buf[pos >> 3] ^= 1 << (pos & 7)
        return bytes(buf)

    def _handle(self, burst: _Burst) -> None:
        """The request is complete: every meter hears it through its link and may answer."""
        self.bus_stats["requests"] += 1
        now = self.wall()
        replies = []
        for model in self.meters:
            mid = model.meter.id
            if not model.powered(now):
                continue
            link = model.link
            pol = self._meter_polarity(link)
            lv = self._levels(burst.start - 1e-6, pol, exclude=mid)
            uart = Uart(link.line, burst.start - 1e-6, lv.at(burst.start - 1e-6))
            heard = bytes(c.value for c in uart.decode(lv, burst.end) if c.ok)  # meters drop bad chars
            if not heard:
                continue
            st = self.stats[mid]
            st.requests_heard += 1
            if link.drop_rate and self.rng.random() < link.drop_rate:
                st.dropped += 1
                log.info("%s: request lost (loose contact)", mid)
                continue
            try:
                reply = model.handle(heard, now)
            except Exception:  # noqa: BLE001 - one broken meter model must not silence the bus
                log.exception("%s: meter model failed on %s", mid, heard.hex(" "))
                continue
            if not reply:
                continue
            st.replies_sent += 1
            if link.corrupt_rate and self.rng.random() < link.corrupt_rate:
                reply = self._corrupt(reply)
                st.corrupted += 1
                log.info("%s: reply damaged (loose contact)", mid)
            replies.append((model, link, pol, heard, reply))
        done = [(m.meter.id, r) for m, _, _, _, r in replies]
        for model, link, pol, heard, reply in replies:
            # a meter knows the request ended when it is complete, or after the silence
            start = burst.deadline + float(model.response_delay_s)
            self._add_drive(encode(reply, link.line, start, owner=model.meter.id, inverted=pol))
        record = {"t": burst.end, "request": bytes(burst.data), "replies": done}
        self.transactions = (self.transactions + [record])[-20:]
        if self.on_transaction is not None:
            self.on_transaction(record)


class BusRunner:
    """Drives a Bus in real time on its own thread and hands received bytes to a sink.

    ``sink(data)`` is called from the runner's thread at the instant the last
    byte's last bit ends minus ``lead`` seconds (a real serial port needs the
    byte a character time early: its own UART then takes that long to send it).
    """

    def __init__(self, bus: Bus, clock=time.monotonic):
        self.bus = bus
        self.clock = clock
        self.cond = threading.Condition()
        self.sink = None
        self.lead = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sim-bus", daemon=True)

    def start(self):
        with self.cond:
            self.bus.reset_gateway(self.clock())
        self._thread.start()
        return self

    def stop(self):
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def attach(self, sink, line: LineSettings | None = None, lead: float = 0.0):
        """A gateway connected: its sink, and its line settings (default: the bus's)."""
        with self.cond:
            self.bus.reset_gateway(self.clock())
            if line is not None:
                self.bus.set_gateway_line(line, False, self.clock())
            self.sink = sink
            self.lead = lead
            self.cond.notify_all()

    def detach(self, sink=None):
        with self.cond:
            if sink is None or self.sink is sink:
                self.sink = None

    def set_line(self, line: LineSettings, invert: bool = False):
        with self.cond:
            self.bus.set_gateway_line(line, invert, self.clock())
            self.cond.notify_all()

    def write(self, data: bytes, on_wire: bool = False):
        with self.cond:
            self.bus.write(data, self.clock(), on_wire=on_wire)
            self.cond.notify_all()

    def locked(self):
        """The runner's lock, for reading the bus's stats consistently."""
        return self.cond

    def _run(self):
        while True:
            with self.cond:
                if self._stop:
                    return
                now = self.clock()
                try:
                    data = self.bus.advance(now + self.lead)
                except Exception:  # noqa: BLE001 - a broken meter model must not stop the bus
                    log.exception("bus error")
                    data = b""
                sink = self.sink
                nxt = self.bus.next_event()
            if data and sink is not None:
                try:
                    sink(data)
                except OSError as exc:
                    log.info("gateway sink failed: %s", exc)
            with self.cond:
                if self._stop:
                    return
                if nxt is None:
                    self.cond.wait(1.0)
                else:
                    wait = nxt - self.lead - self.clock()
                    if wait > 0:
                        self.cond.wait(wait)
