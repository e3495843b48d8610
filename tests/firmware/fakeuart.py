# A stand-in for the HAL UART with its own millisecond clock, for link and
# poller tests under CPython and MicroPython (the way micropython-lib tests
# hand a fake socket to the code under test). Nothing here really waits:
# wait() and sleep() move the clock.


class Clock:
    def __init__(self, start=1000):
        self.now = start

    def ticks(self):
        return self.now

    def sleep(self, ms):
        self.now += ms


class FakeUart:
    """responder(request bytes, uart) -> list of (delay_ms, bytes) chunks,
    each arriving delay_ms after the request's flush (or None: silence).
    Bytes given to .noise() arrive at once, outside any reply window."""

    def __init__(self, clock, responder=None):
        self.clock = clock
        self.responder = responder
        self.rx = bytearray()
        self.pending = []  # (arrival ms, bytes), sorted
        self.written = []
        self.events = []  # ("de", on) / ("write", n) / ("flush",) / ("init", kw)
        self.inits = []
        self.de_on = False
        self.writes_with_de_off = 0

    # -- test helpers
    def noise(self, data):
        self.rx.extend(data)

    def _move(self):
        now = self.clock.now
        while self.pending and self.pending[0][0] <= now:
            self.rx.extend(self.pending.pop(0)[1])

    # -- the UART interface
    def init(self, **kw):
        self.inits.append(kw)
        self.events.append(("init", kw))

    def de(self, on):
        self.de_on = bool(on)
        self.events.append(("de", bool(on)))

    def write(self, buf):
        if not self.de_on:
            self.writes_with_de_off += 1
        self.written.append(bytes(buf))
        self.events.append(("write", len(buf)))
        return len(buf)

    def flush(self):
        self.events.append(("flush",))
        if self.responder is None:
            return
        chunks = self.responder(self.written[-1], self)
        if not chunks:
            return
        for delay, data in chunks:
            self.pending.append((self.clock.now + delay, bytes(data)))
        self.pending.sort(key=lambda p: p[0])

    def any(self):
        self._move()
        return len(self.rx)

    def readinto(self, buf, nbytes=-1):
        self._move()
        if not self.rx:
            return None
        n = len(buf) if nbytes is None or nbytes < 0 else min(nbytes, len(buf))
        if n > len(self.rx):
            n = len(self.rx)
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def wait(self, timeout_ms):
        self._move()
        if self.rx:
            return len(self.rx)
        end = self.clock.now + timeout_ms
        if self.pending and self.pending[0][0] <= end:
            self.clock.now = self.pending[0][0]
            self._move()
            return len(self.rx)
        self.clock.now = end
        return 0


def script(*replies):
    """A responder answering the n-th request with replies[n] (then silence)."""
    queue = list(replies)

    def respond(request, uart):
        if not queue:
            return None
        return queue.pop(0)

    return respond


def chunks(data, size, gap_ms, first_ms=40):
    """data split into pieces of `size` bytes, gap_ms apart, the first at first_ms."""
    out = []
    t = first_ms
    for i in range(0, len(data), size):
        out.append((t, data[i:i + size]))
        t += gap_ms
    return out


class AsyncFakeUart(FakeUart):
    """FakeUart with the HAL's wait_async (the fake clock still does the waiting)."""

    async def wait_async(self, timeout_ms):
        return self.wait(timeout_ms)
