# RS-485 link layer (gateway/link.py) against a fake UART with its own clock.
# Runs under CPython (pytest) and the MicroPython unix port (mpy_runner.py).
from checks import h

from fakeuart import Clock, FakeUart, chunks, script
from gateway import link as lk
from gateway.protocols import dlt645, modbus

ADDR = "202107072529"
WIRE = dlt645.address_to_wire(ADDR)
DI_V = 0x02010100
# voltage 220.1 V: data 01 22 (low byte first)
REPLY_V = bytes(dlt645.build_read_reply(ADDR, DI_V, b"\x01\x22", preamble=0))


def _link(responder, **kw):
    clock = Clock()
    uart = FakeUart(clock, responder)
    return lk.Link(uart, clock.ticks, clock.sleep, **kw), uart, clock


def _read(link, counters, retries=0, timeout_ms=500, byte_timeout_ms=100):
    req = dlt645.build_read(ADDR, DI_V)
    return link.dlt645(req, WIRE, dlt645.FN_READ, DI_V, counters, timeout_ms, byte_timeout_ms, retries)


def test_request_goes_out_with_four_fe_and_de_around_the_write():
    link, uart, _ = _link(script([(40, REPLY_V)]))
    c = lk.new_stats()
    assert _read(link, c) == lk.OK
    assert uart.written[0] == h("FE FE FE FE 68 29 25 07 07 21 20 68 11 04 33 34 34 35 52 16")
    kinds = [e[0] if e[0] != "de" else ("de", e[1]) for e in uart.events]
    assert kinds == [("de", True), "write", "flush", ("de", False)]
    assert uart.writes_with_de_off == 0


def test_reply_is_framed_by_its_length_field_without_waiting_for_silence():
    link, uart, clock = _link(script(chunks(REPLY_V, 5, 20, first_ms=40)))
    c = lk.new_stats()
    t0 = clock.now
    assert _read(link, c, byte_timeout_ms=400) == lk.OK
    # the last chunk arrived 40 + 3 * 20 ms after the flush: no inter-byte wait after it
    assert clock.now - t0 == 100
    f = link.frame
    assert f.is_reply and f.address == WIRE and f.di() == DI_V
    assert bytes(f.item_data()) == b"\x01\x22"
    assert lk.counters(c) == {"sent": 1, "valid": 1, "timeout": 0, "bad_checksum": 0, "bad_frame": 0,
                           "junk_bytes": 0}


def test_fe_preamble_and_junk_before_the_reply_are_skipped_and_junk_counted():
    reply = b"\x00\x7f\x11" + b"\xfe\xfe\xfe\xfe" + REPLY_V
    link, _, _ = _link(script([(30, reply)]))
    c = lk.new_stats()
    assert _read(link, c) == lk.OK
    assert c[lk.VALID] == 1 and c[lk.JUNK_BYTES] == 3  # FE wake-up bytes are not junk


def test_no_reply_is_a_timeout_after_the_response_timeout():
    link, _, clock = _link(script())
    c = lk.new_stats()
    t0 = clock.now
    assert _read(link, c, timeout_ms=300) == lk.TIMEOUT
    assert clock.now - t0 == 300
    assert (c[lk.SENT], c[lk.TIMEOUTS], c[lk.VALID]) == (1, 1, 0)


def test_reply_after_the_response_timeout_is_late_and_then_idle_junk():
    link, uart, _ = _link(script([(600, REPLY_V)]))
    c = lk.new_stats()
    assert _read(link, c, timeout_ms=500) == lk.TIMEOUT
    uart.clock.now += 1000  # the late reply arrives while the link is idle
    assert link.drain() == len(REPLY_V)
    assert link.idle_junk == len(REPLY_V)


def test_bad_checksum_is_counted_and_a_retry_recovers():
    bad = bytearray(REPLY_V)
    bad[-2] ^= 0x01
    link, uart, _ = _link(script([(40, bad)], [(40, REPLY_V)]))
    c = lk.new_stats()
    assert _read(link, c, retries=1) == lk.OK
    assert (c[lk.SENT], c[lk.VALID], c[lk.BAD_CHECKSUMS], c[lk.TIMEOUTS]) == (2, 1, 1, 0)
    assert len(uart.written) == 2


def test_retries_stop_after_the_configured_count():
    link, uart, _ = _link(script())
    c = lk.new_stats()
    assert _read(link, c, retries=2) == lk.TIMEOUT
    assert (c[lk.SENT], c[lk.TIMEOUTS]) == (3, 3)
    assert len(uart.written) == 3


def test_reply_cut_short_is_a_bad_frame_after_the_byte_timeout():
    link, _, clock = _link(script([(40, REPLY_V[:10])]))
    c = lk.new_stats()
    t0 = clock.now
    assert _read(link, c, byte_timeout_ms=100) == lk.BAD_FRAME
    assert clock.now - t0 == 140
    assert c[lk.BAD_FRAMES] == 1


def test_garbage_only_is_a_bad_frame_not_a_timeout():
    link, _, _ = _link(script([(40, b"\x09\xf0\x33\x00\x00")]))
    c = lk.new_stats()
    assert _read(link, c) == lk.BAD_FRAME
    assert c[lk.BAD_FRAMES] == 1 and c[lk.TIMEOUTS] == 0


def test_reply_from_another_address_or_for_another_di_is_a_bad_frame():
    other = bytes(dlt645.build_read_reply("202107072530", DI_V, b"\x01\x22", preamble=0))
    wrong_di = bytes(dlt645.build_read_reply(ADDR, 0x02020100, b"\x00\x10\x00", preamble=0))
    for reply in (other, wrong_di):
        link, _, _ = _link(script([(40, reply)]))
        c = lk.new_stats()
        assert _read(link, c) == lk.BAD_FRAME
        assert c[lk.BAD_FRAMES] == 1


def test_error_reply_is_a_valid_frame_with_the_err_byte():
    err = bytes(dlt645.build_error_reply(ADDR, dlt645.FN_READ, 0x02, preamble=0))
    link, _, _ = _link(script([(40, err)]))
    c = lk.new_stats()
    assert _read(link, c) == lk.OK
    assert link.frame.abnormal and link.frame.error_names() == ("no_such_data",)
    assert c[lk.VALID] == 1


def test_own_echo_is_dropped_when_the_receiver_hears_the_bus():
    def echo_then_reply(request, uart):
        return [(0, request), (60, REPLY_V)]

    link, _, _ = _link(echo_then_reply, echo=True)
    c = lk.new_stats()
    assert _read(link, c) == lk.OK
    assert c[lk.JUNK_BYTES] == 0 and c[lk.VALID] == 1


def test_idle_junk_is_drained_before_the_request_and_counted_apart():
    link, uart, _ = _link(script([(40, REPLY_V)]))
    uart.noise(b"\x00\x00\xff")
    c = lk.new_stats()
    assert _read(link, c) == lk.OK
    assert link.idle_junk == 3 and c[lk.JUNK_BYTES] == 0


def test_line_settings_are_sent_only_when_they_change():
    link, uart, _ = _link(None)
    assert link.configure(2400, "E")
    assert not link.configure(2400, "E")
    assert link.configure(1200, "E")
    assert link.configure(2400, "N")
    assert [(k["baudrate"], k["parity"]) for k in uart.inits] == [(2400, "E"), (1200, "E"), (2400, "N")]


def test_silence_of_three_and_a_half_characters_between_transactions():
    link, uart, clock = _link(script([(40, REPLY_V)], [(40, REPLY_V)]))
    link.configure(1200, "E")  # 9.2 ms a character: 33 ms gap
    c = lk.new_stats()
    assert _read(link, c) == lk.OK
    t_reply = clock.now
    assert _read(link, c) == lk.OK
    # the second request went out no sooner than the gap after the first reply
    assert clock.now - t_reply >= 33 + 40


def test_receive_buffer_is_preallocated_and_reused():
    link, _, _ = _link(script([(40, REPLY_V)], [(40, REPLY_V)]))
    buf = link.buf
    c = lk.new_stats()
    _read(link, c)
    _read(link, c)
    assert link.buf is buf and len(buf) == lk.RX_SIZE


# --- Modbus RTU


def _mb_reply(unit, fn, data):
    return bytes(modbus.read_reply(unit, fn, data))


def _mb(link, c, count=2, retries=0):
    req = modbus.read_request(3, modbus.READ_INPUT, 0, count)
    return link.modbus(req, 3, modbus.READ_INPUT, count, c, 500, 100, retries)


def test_modbus_reply_framed_by_the_expected_length():
    reply = _mb_reply(3, 4, modbus.encode_float32(230.5))
    link, uart, clock = _link(script(chunks(reply, 3, 15, first_ms=30)))
    c = lk.new_stats()
    t0 = clock.now
    assert _mb(link, c) == lk.OK
    assert clock.now - t0 == 30 + 2 * 15  # 9 bytes in 3 chunks, no wait after the last
    r = link.reply
    assert r.status == modbus.OK and r.data_end - r.data_start == 4
    assert modbus.decode_float32(link.buf, r.data_start) == 230.5
    assert uart.written[0] == bytes(modbus.read_request(3, 4, 0, 2))  # no FE for Modbus
    assert c[lk.VALID] == 1


def test_modbus_exception_reply_is_a_valid_frame():
    link, _, _ = _link(script([(30, bytes(modbus.exception_reply(3, 4, 2)))]))
    c = lk.new_stats()
    assert _mb(link, c) == lk.OK
    assert link.reply.status == modbus.EXCEPTION and link.reply.exception_code == 2


def test_modbus_bad_crc_then_retry():
    bad = bytearray(_mb_reply(3, 4, b"\x43\x66\x80\x00"))
    bad[-1] ^= 0x40
    good = _mb_reply(3, 4, b"\x43\x66\x80\x00")
    link, _, _ = _link(script([(30, bad)], [(30, good)]))
    c = lk.new_stats()
    assert _mb(link, c, retries=1) == lk.OK
    assert (c[lk.SENT], c[lk.BAD_CHECKSUMS], c[lk.VALID]) == (2, 1, 1)


def test_modbus_other_unit_and_wrong_length_are_bad_frames():
    other = _mb_reply(1, 4, b"\x43\x66\x80\x00")
    short = _mb_reply(3, 4, b"\x43\x66")  # 1 register where 2 were asked
    for reply in (other, short):
        link, _, _ = _link(script([(30, reply)]))
        c = lk.new_stats()
        assert _mb(link, c) == lk.BAD_FRAME
        assert c[lk.BAD_FRAMES] == 1


def test_modbus_junk_before_the_reply_is_skipped():
    link, _, _ = _link(script([(30, b"\x00\xff" + _mb_reply(3, 4, b"\x43\x66\x80\x00"))]))
    c = lk.new_stats()
    assert _mb(link, c) == lk.OK
    assert c[lk.JUNK_BYTES] == 2


# -- learned latency and the asyncio driver ------------------------------------

def test_latency_learns_and_bounds_the_first_wait():
    lat = lk.new_stats()
    assert lk.latency_timeout(lat, 500) == 500  # nothing learned yet: the configured timeout
    for _ in range(5):
        lk.latency_add(lat, 40)
    assert lk.latency_timeout(lat, 500) == 2 * 40 + 100
    lk.latency_add(lat, 10)
    assert lk.latency_timeout(lat, 500) >= 2 * 37 + 100  # one fast reply does not shrink it at once
    fast = lk.new_stats()
    lk.latency_add(fast, 2)
    assert lk.latency_timeout(fast, 500) == lk.LATENCY_FLOOR_MS
    slow = lk.new_stats()
    lk.latency_add(slow, 400)
    assert lk.latency_timeout(slow, 500) == 500  # never beyond the configured timeout


def test_a_silent_fast_meter_costs_its_learned_wait_not_the_full_timeout():
    replies = [[(40, REPLY_V)]] * 4
    link, uart, clock = _link(script(*replies))
    c = lk.new_stats()
    req = dlt645.build_read(ADDR, DI_V)
    for _ in range(4):
        assert link.dlt645(req, WIRE, dlt645.FN_READ, DI_V, c, 500, 100, 1) == lk.OK
    assert c[lk.LAT_SAMPLES] == 4 and c[lk.LAT_AVG_MS] == 40 and lk.latency_ms(c) == 40
    t0 = clock.now
    assert link.dlt645(req, WIRE, dlt645.FN_READ, DI_V, c, 500, 100, 1) == lk.TIMEOUT
    took = clock.now - t0
    # first attempt waits 2 x 40 + 100 = 180 ms, the retry the full 500 (plus the gaps between them)
    assert 680 <= took < 730, took
    assert c[lk.SENT] == 6 and c[lk.TIMEOUTS] == 2


def _run_async(coro):
    import asyncio

    return asyncio.run(coro)


def test_async_transaction_gives_what_the_blocking_one_gives():
    from fakeuart import AsyncFakeUart

    clock = Clock()
    uart = AsyncFakeUart(clock, script([(40, REPLY_V)], None, [(30, b"\xfe\xfe" + REPLY_V)]))
    link = lk.Link(uart, clock.ticks, clock.sleep)
    c = lk.new_stats()
    req = dlt645.build_read(ADDR, DI_V)

    async def main():
        r1 = await link.dlt645_async(req, WIRE, dlt645.FN_READ, DI_V, c, 500, 100, 1)
        data = bytes(link.frame.item_data())
        return r1, data

    assert _run_async(main()) == (lk.OK, b"\x01\x22")
    # a timeout, then the retry gets the reply
    r2 = _run_async(link.dlt645_async(req, WIRE, dlt645.FN_READ, DI_V, c, 500, 100, 1))
    assert r2 == lk.OK
    assert lk.counters(c)["sent"] == 3 and c[lk.VALID] == 2 and c[lk.TIMEOUTS] == 1
    kinds = [e[0] for e in uart.events if e[0] != "init"]
    # DE still frames every write: up, write, flush, down
    assert kinds[:4] == ["de", "write", "flush", "de"]
    assert uart.writes_with_de_off == 0


def test_async_modbus_transaction():
    from fakeuart import AsyncFakeUart

    clock = Clock()
    reply = _mb_reply(3, 4, b"\x43\x5c\x00\x00")
    uart = AsyncFakeUart(clock, script([(25, reply)]))
    link = lk.Link(uart, clock.ticks, clock.sleep)
    c = lk.new_stats()
    req = modbus.read_request(3, 4, 0, 2)
    assert _run_async(link.modbus_async(req, 3, 4, 2, c)) == lk.OK
    assert bytes(link.buf[link.reply.data_start:link.reply.data_end]) == b"\x43\x5c\x00\x00"
