# The self-check's link classification and idle-junk listening
# (gateway/selfcheck/run.py) against the fake UART: the numbers behind each
# verdict. Runs under CPython (pytest) and the MicroPython unix port.
# End to end against the simulator: tests/host/test_selfcheck_link_faults.py.
import asyncio

from fakeuart import AsyncFakeUart, Clock
from gateway import link as lk
from gateway import meters as mt
from gateway.protocols import dlt645
from gateway.selfcheck import run as sc

ADDR = "202107072529"
WIRE = dlt645.address_to_wire(ADDR)
DI_ADDR = 0x04000401
# 04000401 answers the address itself: 6 BCD bytes, low byte first
REPLY = bytes(dlt645.build_read_reply(ADDR, DI_ADDR, bytes(WIRE), preamble=0))


class Hal:
    def time(self):
        return 1795467000

    def supply_voltage(self):
        return None


def _ctx(responder, **settings):
    clock = Clock()
    uart = AsyncFakeUart(clock, responder)
    link = lk.Link(uart, clock.ticks, clock.sleep)
    # 115200 baud: the asyncio driver's wire-time sleeps are real, keep them short
    m = mt.build({"id": "m1", "protocol": "dlt645-2007", "address": ADDR, "baud": 115200,
                  "position": {"position": 4}})
    mt.forget_profiles()
    cfg = {"selfcheck": dict({"sample": 20, "probe_timeout_ms": 100}, **settings)}
    ctx = sc.Context(Hal(), link, [m], cfg, "gw-t", beat=lambda: clock.sleep(1000))
    return ctx, m, uart


def _every(n_bad, of, bad):
    """A responder giving `bad` (bytes or None: silence) for n_bad of every `of` requests
    at the meter's own line setting (115200, not inverted), silence at any other."""
    count = [0]

    def respond(request, uart):
        kw = uart.inits[-1] if uart.inits else {}
        if kw.get("baudrate") != 115200 or kw.get("invert"):
            return None
        k = count[0]
        count[0] += 1
        if k % of < n_bad:
            return None if bad is None else [(20, bad)]
        return [(20, REPLY)]

    return respond


def _link_check(ctx, m):
    out = []
    answers, c, inv = asyncio.run(sc.check_link(ctx, m, out))
    return answers, c, inv, [f["code"] for f in out], out


def test_a_healthy_meter_gives_a_clean_sample_and_no_finding():
    ctx, m, _ = _ctx(_every(0, 1, None))
    answers, c, inv, codes, _ = _link_check(ctx, m)
    assert answers and not inv and codes == []
    assert c == {"sent": 20, "valid": 20, "timeout": 0, "bad_checksum": 0, "bad_frame": 0}


def test_one_error_in_ten_is_intermittent_with_the_rate_as_evidence():
    ctx, m, _ = _ctx(_every(1, 10, None))  # the first of every ten unanswered
    answers, c, inv, codes, out = _link_check(ctx, m)
    assert answers and codes == ["LINK-INTERMITTENT"]
    assert c["sent"] == 20 and c["valid"] == 18 and c["timeout"] == 2
    assert out[0]["position"] == 4 and "2 of 20 polls failed (10%)" in out[0]["message"]["en"]


def test_mostly_garbled_replies_are_two_meters_on_one_address():
    bad = bytearray(REPLY)
    bad[-2] ^= 0xFF  # checksum wrong: what a collision leaves
    ctx, m, _ = _ctx(_every(3, 4, bytes(bad)))
    answers, c, inv, codes, _ = _link_check(ctx, m)
    assert codes == ["LINK-DUPLICATE-ADDRESS"] and not answers
    assert c["sent"] == 20 and c["bad_checksum"] == 15 and c["valid"] == 5  # searched, then the whole sample


def test_a_silent_meter_is_searched_then_reported_with_the_full_sample():
    ctx, m, uart = _ctx(lambda request, u: None)
    answers, c, inv, codes, out = _link_check(ctx, m)
    assert codes == ["LINK-NO-RESPONSE"] and not answers
    assert c["sent"] == 20 and c["timeout"] == 20
    inits = [kw for kw in uart.inits]
    assert any(kw.get("invert") for kw in inits)  # the inverted probe
    assert {kw["baudrate"] for kw in inits} >= {2400, 1200, 4800, 9600, 19200}  # the baud search
    assert out[0]["evidence"]["timeout"] == 20


def test_a_meter_answering_only_inverted_is_flagged_for_the_swap():
    def respond(request, uart):
        return [(20, REPLY)] if uart.inits and uart.inits[-1].get("invert") else None

    ctx, m, _ = _ctx(respond)
    answers, c, inv, codes, _ = _link_check(ctx, m)
    assert answers and inv and codes == []  # judged with the other meters by check()
    assert c["sent"] == sc.DEAD_AFTER  # the sample gave up early; the search found why


def test_junk_on_the_idle_line_is_reported_with_its_byte_count():
    ctx, m, uart = _ctx(None, idle_listen_ms=300)
    clock = uart.clock
    uart.pending.append((clock.now + 100, b"\x00\xff\x13"))  # arrives while the gateway listens
    out = []
    asyncio.run(sc.idle_junk(ctx, out))
    assert [f["code"] for f in out] == ["LINK-IDLE-JUNK"] and out[0]["evidence"]["bytes"] == 3


def test_a_quiet_idle_line_gives_nothing():
    ctx, m, uart = _ctx(None, idle_listen_ms=300)
    out = []
    asyncio.run(sc.idle_junk(ctx, out))
    assert out == []


# -- the guided breaker test: a meter that does not answer is read again, then named -------

DI_CURRENT = 0x02020100


def _current_reply(amps_milli):
    # 000.000 A format (DL/T 645 02020100): three BCD bytes, low byte first
    digits = "%06d" % amps_milli
    data = bytes(int(digits[k:k + 2], 16) for k in (4, 2, 0))
    return bytes(dlt645.build_read_reply(ADDR, DI_CURRENT, data, preamble=0))


def _breaker_ctx(script):
    """m1 at position 4 answering its current read by read from script: milliamps, or None (silence)."""
    reads = []

    def respond(request, uart):
        k = len(reads)
        reads.append(k)
        amps = script[k] if k < len(script) else script[-1]
        return None if amps is None else [(20, _current_reply(amps))]

    ctx, m, _ = _ctx(respond)
    return ctx, reads


def test_breaker_step_reads_a_silent_meter_again_before_judging():
    # baseline 5 A; after the breaker: one lost reply, then 0.1 A: m1 dropped, its own position
    ctx, reads = _breaker_ctx([5000, None, 100])
    corr = sc.Correspondence()
    assert asyncio.run(corr.baseline_step(ctx))["currents"] == {"m1": 5.0}
    got = asyncio.run(corr.off_step(ctx, 4))
    assert got["dropped"] == ["m1"] and got["finding"] is None and len(reads) == 3


def test_breaker_step_with_a_meter_that_never_answers_names_it_instead_of_no_drop():
    ctx, reads = _breaker_ctx([5000, None])
    corr = sc.Correspondence()
    asyncio.run(corr.baseline_step(ctx))
    got = asyncio.run(corr.off_step(ctx, 4))
    f = got["finding"]
    assert f["code"] == "CORR-CURRENT-UNREAD" and f["severity"] == "warning" and "m1" in f["message"]["en"]
    assert got["dropped"] == [] and len(reads) == 1 + sc.Correspondence.TRIES
