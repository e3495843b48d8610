# Seeded mutation fuzzing of the Modbus parsers: whatever arrives on the wire,
# they return a status and never raise; whatever they accept is a real frame.
# Our own PRNG, so CPython and MicroPython see the same frames.
from gateway.protocols import modbus as mb

ROUNDS = 10000
STATUSES = (
    mb.OK,
    mb.EXCEPTION,
    mb.NEED_MORE,
    mb.BAD_CRC,
    mb.BAD_UNIT,
    mb.BAD_FUNCTION,
    mb.BAD_LENGTH,
    mb.BAD_ECHO,
    mb.UNSUPPORTED,
)


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


def seeds(rng):
    """Valid frames of every kind, with (unit, function, count) of the
    request each reply answers (None for requests)."""
    unit = 1 + rng.below(247)
    regs = 1 + rng.below(20)
    data = bytes(rng.below(256) for _ in range(2 * regs))
    fn = 3 + rng.below(2)
    return (
        (bytes(mb.read_reply(unit, fn, data)), (unit, fn, regs)),
        (bytes(mb.write_single_reply(unit, rng.below(65536), rng.below(65536))), (unit, 6, 0)),
        (bytes(mb.write_multiple_reply(unit, rng.below(1000), regs)), (unit, 16, regs)),
        (bytes(mb.exception_reply(unit, fn, 1 + rng.below(11))), (unit, fn, regs)),
        (bytes(mb.read_request(unit, fn, rng.below(60000), regs)), None),
        (bytes(mb.write_single_request(unit, rng.below(65536), rng.below(65536))), None),
        (bytes(mb.write_multiple_request(unit, rng.below(1000), [rng.below(65536) for _ in range(regs)])), None),
    )


def mutate(rng, frame):
    """Returns (mutated buffer, True when exactly one bit was flipped)."""
    b = bytearray(frame)
    kind = rng.below(7)
    if kind == 0:
        k = rng.below(len(b))
        b[k] ^= 1 << rng.below(8)
        return b, True
    if kind == 1:
        b[rng.below(len(b))] = rng.below(256)
    elif kind == 2:
        b = b[: rng.below(len(b))]
    elif kind == 3:
        b = b + bytes(rng.below(256) for _ in range(1 + rng.below(6)))
    elif kind == 4:
        b = bytearray(bytes(rng.below(256) for _ in range(1 + rng.below(6)))) + b
    elif kind == 5:
        k = rng.below(len(b))
        b = b[:k] + b[k + 1 :]
    else:
        for _ in range(1 + rng.below(4)):
            b[rng.below(len(b))] = rng.below(256)
    return b, False


def check_reply(r, buf, start, end, st):
    assert st in STATUSES
    assert st != mb.UNSUPPORTED
    if st == mb.OK or st == mb.EXCEPTION:
        begin = start + r.skipped
        assert begin < r.frame_end <= end
        assert mb.crc_ok(buf, begin, r.frame_end)
        if st == mb.OK and (r.function == 3 or r.function == 4):
            assert begin + 3 == r.data_start <= r.data_end == r.frame_end - 2
            assert (r.data_end - r.data_start) % 2 == 0
            for k in range(r.data_start, r.data_end - 3, 4):
                mb.decode_float32(buf, k, mb.CDAB)


def test_fuzz_parsers_never_raise():
    rng = Rng(0x6D6F6462)
    reply = mb.Reply()
    request = mb.Request()
    work = bytearray(300)
    counts = [0] * len(STATUSES)
    frames = ()
    for n in range(ROUNDS):
        if n % 7 == 0:
            frames = seeds(rng)
        frame, expect = frames[n % 7]
        buf, one_bit = mutate(rng, frame)
        # place it at an offset inside a larger buffer, seen through a memoryview
        off = rng.below(8)
        end = off + len(buf)
        work[off:end] = buf
        mv = memoryview(work)
        if expect is not None:
            unit, fn, count = expect
        else:
            unit, fn, count = 1 + rng.below(247), 3 + rng.below(2), rng.below(4)
        st = reply.parse(mv, off, end, unit, fn, count)
        check_reply(reply, mv, off, end, st)
        assert reply.skipped == 0
        counts[st] += 1
        if one_bit and expect is not None and count:
            # the expected length is fixed, so CRC-16 catches every 1-bit error
            assert st != mb.OK and st != mb.EXCEPTION, bytes(buf)
        st = reply.scan(mv, off, end, unit, fn, count)
        check_reply(reply, mv, off, end, st)
        st = request.parse(mv, off, end)
        assert st in STATUSES
        if st == mb.OK:
            assert off < request.frame_end <= end
            assert mb.crc_ok(mv, off, request.frame_end)
            assert request.error_code in (0, 2, 3)
            if request.function == 16:
                request.values(mv)
        elif st == mb.UNSUPPORTED:
            assert mb.crc_ok(mv, off, end)
    # the mutations reach every kind of verdict, not just one
    for st in (mb.OK, mb.EXCEPTION, mb.NEED_MORE, mb.BAD_CRC, mb.BAD_FUNCTION, mb.BAD_LENGTH):
        assert counts[st] > 0, mb.status_name(st)


def test_random_bytes_never_raise():
    rng = Rng(12345)
    reply = mb.Reply()
    request = mb.Request()
    buf = bytearray(64)
    for _ in range(1000):
        n = rng.below(64)
        for k in range(n):
            buf[k] = rng.below(256)
        unit = buf[0] if n and rng.below(2) else 1 + rng.below(247)
        fn = (3, 4, 6, 16)[rng.below(4)]
        st = reply.scan(buf, 0, n, unit, fn, rng.below(3))
        check_reply(reply, buf, 0, n, st)
        assert request.parse(buf, 0, n) in STATUSES
