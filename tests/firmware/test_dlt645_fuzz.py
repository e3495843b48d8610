# Seeded mutation fuzzing of the DL/T 645 parser and item decoder: whatever
# the bus delivers, parse returns a status (never raises, never stalls), every
# FRAME it reports is a real frame, and decode_item only raises its own
# errors. Our own PRNG, so CPython and MicroPython see the same bytes.
from gateway.protocols import dlt645 as d
from gateway.protocols import dlt645_1997 as v97
from gateway.protocols import dlt645_items as it

ROUNDS = 10000
STATUSES = (d.FRAME, d.NEED_MORE, d.BAD)


class Rng:
    """xorshift32: tiny, same sequence on every runtime."""

    def __init__(self, seed):
        self.s = seed & 0xFFFFFFFF or 1

    def next(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        return bytes(self.below(256) for _ in range(n))


DIS_2007 = (0x00000000, 0x00010000, 0x0001FF00, 0x00020101, 0x02010100, 0x0201FF00, 0x02020100,
            0x02030000, 0x0203FF00, 0x02060000, 0x02800001, 0x02800002, 0x04000101, 0x04000102,
            0x04000401, 0x04000403, 0x04000501, 0x040005FF, 0x04000601, 0x04000703)
DIS_1997 = (0x9010, 0x901F, 0xB611, 0xB621, 0xB630, 0xB650, 0xC010, 0xC011, 0xC032)


def seeds(rng):
    """Valid frames of every kind the gateway and the simulator exchange."""
    out = []
    for k in range(len(DIS_2007)):
        di = DIS_2007[k]
        addr = "%012d" % rng.below(1000000)
        pre = k % 5
        out.append(d.build_read(addr, di, preamble=pre))
        info = it.item_info(di)
        size = info["bytes"] * (3 if info["block"] else 1)
        out.append(d.build_read_reply(addr, di, rng.bytes(size), follows=bool(k & 1), preamble=pre))
        out.append(d.build_read_reply(addr, di, rng.bytes(size), seq=k, preamble=pre))
        out.append(d.build_error_reply(addr, d.FN_READ, 1 << (k % 7), preamble=pre))
    for di in DIS_1997:
        out.append(v97.build_read("3", di, preamble=0))
        out.append(v97.build_read_reply("3", di, rng.bytes(it.item_info(di, 1997)["bytes"])))
    out.append(d.build_read_address(preamble=0))
    out.append(d.build_time_sync((2024, 5, 6, 7, 8, 9)))
    out.append(d.build_write("1", 0x04000102, b"\x00\x00\x00"))
    out.append(d.build_frame("1", 0x91, rng.bytes(60), preamble=0))
    return [bytes(f) for f in out]


def mutate(rng, seed, pool):
    buf = bytearray(seed)
    for _ in range(1 + rng.below(3)):
        op = rng.below(10)
        n = len(buf)
        if op == 0 and n:
            buf[rng.below(n)] ^= 1 << rng.below(8)
        elif op == 1 and n:
            buf[rng.below(n)] = rng.below(256)
        elif op == 2:
            k = rng.below(n + 1)
            buf = buf[:k] + bytes((rng.below(256),)) + buf[k:]
        elif op == 3 and n:
            k = rng.below(n)
            buf = buf[:k] + buf[k + 1 :]
        elif op == 4 and n:
            buf = buf[: rng.below(n)]
        elif op == 5:
            buf = bytearray(rng.bytes(rng.below(8))) + buf
        elif op == 6:
            buf += pool[rng.below(len(pool))]
        elif op == 7 and n:
            buf[rng.below(n)] = (0x68, 0x16, 0xFE)[rng.below(3)]
        elif op == 8 and n > 12:
            buf[9 + rng.below(3)] = rng.below(256)  # around L
        elif op == 9:
            buf = bytearray(pool[rng.below(len(pool))][: rng.below(20)]) + buf
    return buf


def check_frame(buf, frame, i, nxt):
    """What parse calls a frame must be one, checked from scratch."""
    s = frame.start
    size = frame.size
    assert i <= s and s + size == nxt <= len(buf)
    assert buf[s] == 0x68 and buf[s + 7] == 0x68 and buf[s + size - 1] == 0x16
    length = buf[s + 9]
    assert size == 12 + length and len(frame.data) == length
    total = 0
    for k in range(s, s + 10 + length):
        total += buf[k]
    assert total & 0xFF == buf[s + 10 + length]
    for k in range(length):
        assert (frame.data[k] + 0x33) & 0xFF == buf[s + 10 + k]
    assert bytes(frame.address) == bytes(buf[s + 1 : s + 7]) and frame.control == buf[s + 8]


def drain(buf, start=0, max_data=d.MAX_DATA):
    """Parse everything in buf the way a streaming caller does; returns the
    frames found. Asserts progress and sane results on every step."""
    frames = []
    i = start
    steps = 0
    while True:
        steps += 1
        assert steps <= len(buf) + 2, "parser does not make progress"
        result = d.parse(buf, i, len(buf), max_data)
        status, info, nxt, junk = result
        assert status in STATUSES and 0 <= junk <= len(buf) - i
        if status == d.NEED_MORE:
            assert info is None and i <= nxt <= len(buf)
            return frames, nxt
        if status == d.BAD:
            assert 1 <= info <= 4 and i < nxt <= len(buf) and buf[nxt - 1] == 0x68
        else:
            check_frame(buf, info, i, nxt)
            frames.append(info)
            decode_safely(info)
        assert nxt > i
        i = nxt


def decode_safely(frame):
    di = frame.di()
    if di is None:
        frame.error_names()
        return
    version = 1997 if frame.di_size() == 2 else 2007
    try:
        it.decode_item(di, frame.item_data(), version)
    except d.DLT645Error:
        pass


def test_seeds_parse_back_exactly():
    rng = Rng(645)
    pool = seeds(rng)
    for f in pool:
        frames, rest = drain(f)
        assert len(frames) == 1 and rest == len(f)
    # all of them back to back, with junk between
    stream = bytearray()
    for f in pool:
        stream += b"\x00\xfe\x55" + f
    frames, rest = drain(stream)
    assert len(frames) == len(pool) and rest == len(stream)


def test_mutated_frames():
    rng = Rng(20070)
    pool = seeds(rng)
    sentinel = bytes(d.build_read_reply("1", 0x02800002, b"\x00\x50", preamble=2))
    found = lost = 0
    for r in range(ROUNDS):
        buf = mutate(rng, pool[r % len(pool)], pool)
        at = None
        if r & 2:  # a good frame after the damage must still be found
            at = len(buf) + 2
            buf += sentinel
        if r & 1:
            buf = memoryview(bytes(buf))
        frames, rest = drain(buf, 0, 255 if r % 7 == 0 else d.MAX_DATA)
        found += len(frames)
        if at is not None:
            assert rest == len(buf)
            hit = False
            for fr in frames:
                if fr.start <= at < fr.start + fr.size:
                    hit = True  # the sentinel, or a frame the damage made that covers it
            assert hit, r
            if frames[-1].start != at:
                lost += 1
    assert found > ROUNDS // 4  # the mutations leave plenty of real frames to find
    assert lost < ROUNDS // 1000


def test_chunked_stream_recovers_every_frame():
    # Bytes arrive in random chunks; the caller keeps buf[next:] on NEED_MORE.
    rng = Rng(1997)
    pool = seeds(rng)
    stream = bytearray()
    order = []
    for k in range(200):
        f = pool[rng.below(len(pool))]
        stream += bytes(rng.below(3) * (0xFE,)) + f
        order.append(f)
    got = []
    buf = bytearray()
    pos = 0
    while pos < len(stream):
        take = 1 + rng.below(24)
        buf += stream[pos : pos + take]
        pos += take
        frames, keep = drain(buf)
        for fr in frames:
            got.append(bytes(buf[fr.start : fr.start + fr.size]))
        buf = buf[keep:]
    want = []
    for f in order:
        k = 0
        while f[k] == 0xFE:
            k += 1
        want.append(f[k:])
    assert got == want


def test_random_item_data_only_raises_own_errors():
    rng = Rng(33)
    ok = bad = 0
    for r in range(3000):
        if r & 3 == 3:
            di = DIS_1997[rng.below(len(DIS_1997))]
            version = 1997
        else:
            di = DIS_2007[rng.below(len(DIS_2007))]
            version = 2007
        size = it.item_info(di, version)["bytes"]
        n = size * (1 + rng.below(3)) + (rng.below(3) == 0) * rng.below(3)
        if r & 1:  # mostly valid BCD, so the value paths run too
            data = bytes(rng.below(10) << 4 | rng.below(10) for _ in range(n))
        else:
            data = rng.bytes(n)
        try:
            it.decode_item(di, data, version)
            ok += 1
        except d.DLT645Error:
            bad += 1
    assert ok > 300 and bad > 300
    # random DIs: unknown ones raise UnknownItem, nothing else
    for r in range(2000):
        di = rng.next()
        try:
            it.decode_item(di, rng.bytes(rng.below(8)))
        except d.DLT645Error:
            pass
