# RS-485 link layer: one request/reply transaction at a time on the HAL UART.
#
#   line settings (per meter) -> drain idle junk -> DE up, write, flush, DE down
#   -> collect the reply into one preallocated buffer until a whole frame is
#   there (DL/T 645 by its length field, Modbus RTU by the length its request
#   implies), the response timeout passes without a first byte, or the line
#   goes quiet for the inter-byte timeout -> retry if asked.
#
# Statistics are per meter (the caller passes the meter's stats, an
# array("i") made by new_stats()): sent, valid, timeout, bad_checksum,
# bad_frame, junk_bytes, then the learned latency. They are frame-level: the
# ESP32 UART reports no parity or framing errors (PROTOCOLS.md, RS-485 faults).
# One small array a meter, not two objects with their attribute tables: about
# 200 bytes a meter less on the unix port.
#
# No allocation per poll where it can be avoided: the receive buffer, its
# memoryview and the DL/T 645 data scratch are made once; modbus.Reply is
# reused. Pure apart from the UART object handed in (constructor injection).
#
# One transaction is a generator (_run) that yields what it has to wait for:
# an int > 0 waits up to that many ms for bytes, < 0 sleeps, _FLUSH waits for
# the request to leave the wire. Two drivers run it: blocking (dlt645(),
# modbus(): uart.wait, uart.flush) and asyncio (dlt645_async(),
# modbus_async(): uart.wait_async, asyncio sleeps for the wire time so the
# loop keeps serving MQTT while the bus works). The logic exists once.
#
# Learned latency: each meter's stats keep the time from the end of the
# request to the first reply byte. The first attempt of a transaction waits
# only twice that plus a margin (never less than LATENCY_FLOOR_MS, never more than
# the configured timeout), retries wait the full timeout, so a dead or
# silent fast meter does not cost 500 ms per item.
from array import array

from gateway.compat import const, sleep_ms, ticks_ms, ticks_diff
from gateway.protocols import dlt645, modbus

# Transaction results.
OK = const(0)  # a whole, well-formed reply (a meter's error reply is OK too)
TIMEOUT = const(1)  # nothing (or only junk) arrived
BAD_CHECKSUM = const(2)  # a frame of the right shape with a wrong CS / CRC
BAD_FRAME = const(3)  # bytes arrived but no acceptable frame (no 16, wrong L,
# wrong address / unit / function / DI, cut short)

RESULT_NAMES = ("ok", "timeout", "bad_checksum", "bad_frame")

RX_SIZE = const(272)  # a DL/T 645 reply of 200 data bytes + FE + slack; Modbus 256
RESPONSE_TIMEOUT_MS = const(500)  # DL/T 645: Td <= 500 ms
BYTE_TIMEOUT_MS = const(100)  # line quiet this long after a byte: the reply is over
MAX_TIMEOUT_MS = const(10000)

_DLT = const(0)
_MODBUS = const(1)
_FLUSH = const(0)  # yielded: wait until the request has left the wire

LATENCY_FLOOR_MS = const(150)  # an adaptive first wait is never shorter
LATENCY_FACTOR = const(2)  # ...and is twice the slowest recent reply plus a margin:
LATENCY_MARGIN_MS = const(100)  # host or meter jitter must not turn into false timeouts


# A meter's statistics (new_stats()): the counters, indexed by a result + VALID...
SENT = const(0)
VALID = const(1)  # VALID + result: OK, TIMEOUT, BAD_CHECKSUM, BAD_FRAME
TIMEOUTS = const(2)
BAD_CHECKSUMS = const(3)
BAD_FRAMES = const(4)
JUNK_BYTES = const(5)
# ...then the learned latency: samples, exponential average, slowly decaying maximum (ms)
LAT_SAMPLES = const(6)
LAT_AVG_MS = const(7)
LAT_MAX_MS = const(8)
STATS = const(9)  # the link's slots; new_stats(extra) adds slots after them for the caller

COUNTER_NAMES = ("sent", "valid", "timeout", "bad_checksum", "bad_frame", "junk_bytes")


def new_stats(extra=0):
    """A meter's statistics, all zero: STATS ints, then `extra` for the caller."""
    return array("i", bytes(4 * (STATS + extra)))


def counters(stats):
    """The counters as {name: count} (health messages, tests)."""
    return {COUNTER_NAMES[k]: stats[k] for k in range(len(COUNTER_NAMES))}


def finished(stats):
    """Attempts that have ended (the one on the wire now is not one yet)."""
    return stats[VALID] + stats[TIMEOUTS] + stats[BAD_CHECKSUMS] + stats[BAD_FRAMES]


def count(stats, result):
    """One finished attempt."""
    stats[VALID + result if 0 <= result <= BAD_FRAME else BAD_FRAMES] += 1


def latency_add(stats, ms):
    """One reply's latency (end of request -> first byte)."""
    if ms < 0:
        ms = 0
    if stats[LAT_SAMPLES] == 0:
        stats[LAT_AVG_MS] = ms
        stats[LAT_MAX_MS] = ms
    else:
        stats[LAT_AVG_MS] += (ms - stats[LAT_AVG_MS]) // 4
        # the maximum decays by 1/16 a sample, so one slow reply is not forgotten at once
        stats[LAT_MAX_MS] -= stats[LAT_MAX_MS] // 16
        if ms > stats[LAT_MAX_MS]:
            stats[LAT_MAX_MS] = ms
    if stats[LAT_SAMPLES] < 0x7FFFFFFF:
        stats[LAT_SAMPLES] += 1


def latency_timeout(stats, configured):
    """What a first attempt waits: the configured timeout until there is a sample."""
    if stats[LAT_SAMPLES] == 0:
        return configured
    t = stats[LAT_MAX_MS] * LATENCY_FACTOR + LATENCY_MARGIN_MS
    if t < LATENCY_FLOOR_MS:
        t = LATENCY_FLOOR_MS
    return t if t < configured else configured


def latency_ms(stats):
    """The average reply latency, None before the first reply."""
    return stats[LAT_AVG_MS] if stats[LAT_SAMPLES] else None


def result_name(result):
    if 0 <= result < len(RESULT_NAMES):
        return RESULT_NAMES[result]
    return "result_%d" % result


def char_ms(baud, bits=8, parity="E", stop=1):
    """Milliseconds one character takes on the wire (float)."""
    return (1 + bits + (0 if parity == "N" else 1) + stop) * 1000 / baud


class Link:
    """Transactions on one UART.

    uart: the HAL UART (init/write/flush/any/readinto/wait/de).
    ticks: ms tick function (compat.ticks_ms); sleep: ms sleep function.
    echo: the receiver hears our own request (RE tied on): drop it first.
    After dlt645(): .frame is the reply (its data views a scratch buffer,
    valid until the next transaction). After modbus(): .reply holds the
    parse result and its register bytes are .buf[reply.data_start:data_end].
    """

    def __init__(self, uart, ticks=ticks_ms, sleep=None, echo=False, rx_size=RX_SIZE):
        self.uart = uart
        self.ticks = ticks
        self.sleep = sleep
        self.echo = echo
        self.buf = bytearray(rx_size)
        self.mv = memoryview(self.buf)
        self.scratch = bytearray(dlt645.MAX_DATA + 55)
        self.reply = modbus.Reply()
        self.frame = None
        self.got = 0
        self.first_ms = -1  # latency of the first reply byte of the last attempt
        self.idle_junk = 0  # bytes heard outside any reply window
        self.line = None
        self._gap_ms = 2
        self._last = None  # tick of the last bus activity
        self._mode = _DLT
        self._address = None
        self._function = 0
        self._di = None
        self._unit = 0
        self._count = 0

    # -- line settings ------------------------------------------------------

    def configure(self, baud=2400, parity="E", bits=8, stop=1, invert=False):
        """Switch the UART's line settings (only when they change)."""
        line = (baud, parity, bits, stop, invert)
        if line == self.line:
            return False
        self.uart.init(baudrate=baud, bits=bits, parity=parity, stop=stop, invert=invert)
        self.line = line
        # 3.5 character times of silence between frames (1.75 ms above 19200)
        gap = 3.5 * char_ms(baud, bits, parity, stop)
        self._gap_ms = int(gap + 0.999) if baud <= 19200 else 2
        return True

    # -- the pieces of a transaction -----------------------------------------

    def drain(self):
        """Throw away what arrived outside a reply window; returns the count."""
        n = 0
        uart = self.uart
        while uart.any():
            k = uart.readinto(self.mv)
            if not k:
                break
            n += k
        self.idle_junk += n
        return n

    def _send(self, request):
        """Generator: quiet gap, drain, DE up, write, wait for the wire, DE down."""
        uart = self.uart
        if self._last is not None:
            left = self._gap_ms - ticks_diff(self.ticks(), self._last)
            if left > 0:
                yield -left
        self.drain()
        uart.de(True)
        uart.write(request)
        yield _FLUSH  # the last stop bit is out: only now may DE drop
        uart.de(False)
        self._last = self.ticks()

    def _collect(self, request, timeout_ms, byte_timeout_ms):
        """Generator: read bytes until _scan() has a frame or the line times
        out. Returns (result, junk); .first_ms is the latency of the first
        byte (-1: none came)."""
        uart = self.uart
        ticks = self.ticks
        buf = self.buf
        mv = self.mv
        size = len(buf)
        got = 0
        start = ticks()
        last = None
        junk = 0
        self.first_ms = -1
        echo = len(request) if self.echo else 0
        skip = 0  # bytes of our own echo at the front
        while True:
            now = ticks()
            if last is None:
                left = timeout_ms - ticks_diff(now, start)
            else:
                left = byte_timeout_ms - ticks_diff(now, last)
            if left <= 0:
                break
            waiting = yield left
            if not waiting:
                continue
            if got >= size:  # more than any reply holds: drop it as junk
                junk += got - skip
                got = skip = 0
            k = uart.readinto(mv[got:])
            if not k:
                continue
            got += k
            last = ticks()
            if echo:
                m = got if got < echo else echo
                same = True
                for i in range(m):
                    if buf[i] != request[i]:
                        same = False
                        break
                if not same:
                    echo = 0
                elif got < echo:
                    continue
                else:
                    skip = echo
                    echo = 0
                    last = None  # the reply's response window starts now
                    start = ticks()
            if got > skip:
                if self.first_ms < 0:
                    self.first_ms = ticks_diff(ticks(), start)
                result, j = self._scan(skip, got)
                if result == OK:
                    self.got = got
                    self._last = last
                    return OK, junk + j
        self.got = got
        if last is not None:
            self._last = last
        if got > skip:
            result, j = self._scan(skip, got)
            if result == TIMEOUT:  # bytes came, none of them usable
                result = BAD_FRAME
            return result, junk + j
        return TIMEOUT, junk

    def _scan(self, start, end):
        """(OK or the worst problem so far, junk bytes before the frame)."""
        if self._mode == _DLT:
            return self._scan_dlt(start, end)
        return self._scan_modbus(start, end)

    def _run(self, request, stats, timeout_ms, byte_timeout_ms, retries):
        """Generator: the whole transaction with its retries; returns the result.
        stats (new_stats(), or None): counted and the latency learned."""
        if timeout_ms > MAX_TIMEOUT_MS:
            timeout_ms = MAX_TIMEOUT_MS
        result = TIMEOUT
        for attempt in range(retries + 1):
            self.frame = None
            yield from self._send(request)
            wait = timeout_ms
            if stats is not None:
                stats[SENT] += 1
                if attempt == 0 and retries > 0:
                    wait = latency_timeout(stats, timeout_ms)  # a retry still gets the full timeout
            result, junk = yield from self._collect(request, wait, byte_timeout_ms)
            if stats is not None:
                count(stats, result)
                stats[JUNK_BYTES] += junk
                if self.first_ms >= 0 and result != TIMEOUT:
                    latency_add(stats, self.first_ms)
            if result == OK:
                return OK
        return result

    def _wire_ms(self, n):
        line = self.line or (2400, "E", 8, 1, False)
        return int(n * char_ms(line[0], line[2], line[1], line[3]) + 0.999)

    def _drive(self, gen):
        """Run a transaction blocking: uart.wait / uart.flush / sleep."""
        uart = self.uart
        try:
            op = next(gen)
            while True:
                if op > 0:
                    op = gen.send(uart.wait(op))
                elif op == _FLUSH:
                    uart.flush()
                    op = gen.send(0)
                else:
                    if self.sleep is not None:
                        self.sleep(-op)
                    op = gen.send(0)
        except StopIteration as stop:
            return stop.value

    async def _drive_async(self, gen, n_request):
        """Run a transaction from asyncio: the loop serves other tasks while
        the request is on the wire and while the meter thinks."""
        uart = self.uart
        try:
            op = next(gen)
            while True:
                if op > 0:
                    op = gen.send(await uart.wait_async(op))
                elif op == _FLUSH:
                    await sleep_ms(self._wire_ms(n_request))
                    uart.flush()  # returns at once: the bytes are out by now
                    op = gen.send(0)
                else:
                    await sleep_ms(-op)
                    op = gen.send(0)
        except StopIteration as stop:
            return stop.value

    def send(self, request):
        """Send a request without waiting for a reply (broadcasts)."""
        self._drive(self._send(request))

    def send_async(self, request):
        return self._drive_async(self._send(request), len(request))

    # -- DL/T 645 ---------------------------------------------------------

    def _dlt645(self, request, address, function, di, stats, timeout_ms, byte_timeout_ms, retries):
        self._mode = _DLT
        self._address = address
        self._function = function
        self._di = di
        return self._run(request, stats, timeout_ms, byte_timeout_ms, retries)

    def dlt645(self, request, address, function, di=None, stats=None,
               timeout_ms=RESPONSE_TIMEOUT_MS, byte_timeout_ms=BYTE_TIMEOUT_MS, retries=0):
        """Send a DL/T 645 request (FE preamble included by the builder) and
        wait for the reply from `address` (6 wire bytes; None accepts any)
        to `function`, echoing `di` (int) when the reply is normal.
        Returns OK / TIMEOUT / BAD_CHECKSUM / BAD_FRAME; .frame on OK."""
        return self._drive(self._dlt645(request, address, function, di, stats, timeout_ms, byte_timeout_ms,
                                        retries))

    def dlt645_async(self, request, address, function, di=None, stats=None,
                     timeout_ms=RESPONSE_TIMEOUT_MS, byte_timeout_ms=BYTE_TIMEOUT_MS, retries=0):
        """dlt645() for asyncio callers (hold the bus lock around it; await it at once).
        Not a coroutine itself: it hands back the driver's, one coroutine frame less a read."""
        return self._drive_async(self._dlt645(request, address, function, di, stats, timeout_ms,
                                              byte_timeout_ms, retries), len(request))

    def _scan_dlt(self, start, end):
        buf = self.buf
        i = start
        junk = 0
        worst = TIMEOUT
        while i < end:
            st, info, nxt, j = dlt645.parse(buf, i, end, dlt645.MAX_DATA, self.scratch)
            junk += j
            if st == dlt645.NEED_MORE:
                if nxt < end and worst == TIMEOUT:  # a frame has begun
                    worst = BAD_FRAME
                return worst, junk
            i = nxt
            if st == dlt645.BAD:
                if info == dlt645.BAD_CHECKSUM:
                    worst = BAD_CHECKSUM
                elif worst == TIMEOUT:
                    worst = BAD_FRAME
                continue
            f = info
            if not f.is_reply:
                continue  # our own request heard back
            address = self._address
            if (f.function != self._function
                    or (address is not None and address != dlt645.WILDCARD and f.address != address)
                    or (self._di is not None and not f.abnormal and f.di() != self._di)):
                if worst != BAD_CHECKSUM:
                    worst = BAD_FRAME  # someone else's reply, or a stale one
                continue
            self.frame = f
            return OK, junk
        return worst, junk

    # -- Modbus RTU --------------------------------------------------------

    def _modbus(self, request, unit, function, count, stats, timeout_ms, byte_timeout_ms, retries):
        self._mode = _MODBUS
        self._unit = unit
        self._function = function
        self._count = count
        return self._run(request, stats, timeout_ms, byte_timeout_ms, retries)

    def modbus(self, request, unit, function, count=0, stats=None,
               timeout_ms=RESPONSE_TIMEOUT_MS, byte_timeout_ms=BYTE_TIMEOUT_MS, retries=0):
        """Send a Modbus RTU request and wait for the reply of `unit` to
        `function` (count: registers asked for, 0 = any). Returns OK (a
        normal or an exception reply: see .reply.status) / TIMEOUT /
        BAD_CHECKSUM / BAD_FRAME."""
        return self._drive(self._modbus(request, unit, function, count, stats, timeout_ms, byte_timeout_ms,
                                        retries))

    def modbus_async(self, request, unit, function, count=0, stats=None,
                     timeout_ms=RESPONSE_TIMEOUT_MS, byte_timeout_ms=BYTE_TIMEOUT_MS, retries=0):
        """modbus() for asyncio callers (hold the bus lock around it; await it at once)."""
        return self._drive_async(self._modbus(request, unit, function, count, stats, timeout_ms,
                                              byte_timeout_ms, retries), len(request))

    def _scan_modbus(self, start, end):
        reply = self.reply
        st = reply.scan(self.buf, start, end, self._unit, self._function, self._count)
        if st == modbus.OK or st == modbus.EXCEPTION:
            return OK, reply.skipped
        if st == modbus.BAD_CRC:
            return BAD_CHECKSUM, 0
        return BAD_FRAME, 0
