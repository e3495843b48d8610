# DL/T 645-2007 framing, builders, parser and data items. Runs under CPython
# (pytest) and MicroPython (mpy_runner). Vectors: /work/shared/PROTOCOLS.md.
from checks import raises, approx, h

from gateway.protocols import dlt645 as d
from gateway.protocols import dlt645_items as it

METER = "202107072529"
# PROTOCOLS.md worked frames
READ_00000000 = h("FE FE FE FE 68 29 25 07 07 21 20 68 11 04 33 33 33 33 4E 16")
READ_ADDRESS = h("68 AA AA AA AA AA AA 68 13 00 DF 16")


def checksum_ok(frame_bytes):
    i = 0
    while frame_bytes[i] == 0xFE:
        i += 1
    return sum(frame_bytes[i:-2]) & 0xFF == frame_bytes[-2]


# ---- worked vectors ------------------------------------------------------------


def test_read_request_vector():
    assert bytes(d.build_read(METER, 0x00000000)) == READ_00000000
    assert bytes(d.build_read(METER, "00000000")) == READ_00000000


def test_read_address_vector():
    assert bytes(d.build_read_address(preamble=0)) == READ_ADDRESS
    assert bytes(d.build_read_address()) == b"\xfe\xfe\xfe\xfe" + READ_ADDRESS


def test_reply_data_vector_317_76_kwh():
    wire = h("A9 4A 36 33")
    plain = bytes((b - 0x33) & 0xFF for b in wire)
    assert plain == h("76 17 03 00")
    assert approx(it.decode_item(0x00000000, plain), 317.76)
    assert it.decode_scaled(0x00000000, plain) == (31776, 2)
    assert it.encode_item(0x00000000, 317.76) == plain
    # and through a whole reply frame
    reply = d.build_read_reply(METER, 0, plain, preamble=2)
    status, frame, nxt, junk = d.parse(reply)
    assert status == d.FRAME and nxt == len(reply) and junk == 0
    assert bytes(reply[12:16]) == h("33 33 33 33") and bytes(reply[16:20]) == wire
    assert frame.control == 0x91 and frame.di() == 0
    assert approx(it.decode_item(frame.di(), frame.item_data()), 317.76)


# ---- addresses -------------------------------------------------------------------


def test_address_helpers():
    assert d.address_to_wire(METER) == h("29 25 07 07 21 20")
    assert d.wire_to_address(h("29 25 07 07 21 20")) == METER
    assert d.address_to_wire("3") == h("03 00 00 00 00 00")
    assert d.address_to_wire(3) == h("03 00 00 00 00 00")
    assert d.address_to_wire("12345") == h("45 23 01 00 00 00")
    assert d.address_to_wire("AAAAAAAAAAAA") == d.WILDCARD
    assert d.address_to_wire("999999999999") == d.BROADCAST
    assert d.address_to_wire("aaaaaa002529") == h("29 25 00 AA AA AA")
    assert d.wire_to_address(d.WILDCARD) == "AAAAAAAAAAAA"
    assert d.address_to_wire(bytearray(h("01 02 03 04 05 06"))) == h("01 02 03 04 05 06")
    for bad in ("", "1234567890123", "12x4", b"\x01\x02", -1, 10**12):
        e = raises(d.AddressError, d.address_to_wire, bad)
        assert isinstance(e, ValueError)


def test_wire_to_address_at_offset():
    buf = b"\x00\x00" + h("29 25 07 07 21 20")
    assert d.wire_to_address(buf, 2) == METER


# ---- builders --------------------------------------------------------------------


def test_block_read_with_count():
    f = d.build_read(METER, 0x0201FF00, count=3, preamble=0)
    assert f[8] == 0x11 and f[9] == 5
    assert bytes(f[10:15]) == bytes((b + 0x33) & 0xFF for b in h("00 FF 01 02 03"))
    assert checksum_ok(f)
    status, frame, nxt, junk = d.parse(f)
    assert frame.di() == 0x0201FF00 and bytes(frame.item_data()) == b"\x03"


def test_read_next():
    f = d.build_read_next(METER, 0x00010000, 2)
    status, frame, nxt, junk = d.parse(f)
    assert status == d.FRAME and frame.function == d.FN_READ_NEXT
    assert frame.di() == 0x00010000 and frame.seq == 2 and not frame.is_reply
    assert len(frame.data) == 5


def test_time_sync_sends_seconds_first():
    f = d.build_time_sync((2024, 3, 15, 13, 45, 30, 4, 75), preamble=0)
    assert f[1:7] == d.BROADCAST and f[8] == 0x08 and f[9] == 6
    plain = bytes((b - 0x33) & 0xFF for b in f[10:16])
    assert plain == h("30 45 13 15 03 24")
    assert d.decode_time_sync(plain) == (2024, 3, 15, 13, 45, 30)
    assert bytes(d.build_time_sync((24, 3, 15, 13, 45, 30))) == bytes(
        d.build_time_sync((2024, 3, 15, 13, 45, 30))
    )
    # Field examples from a public concentrator firmware's comments (see
    # docs/codecs/dlt645.md): 2017-06-05 10:22:51 broadcast, 10:40:25 to one meter.
    assert bytes(d.build_time_sync((2017, 6, 5, 10, 22, 51), preamble=0)) == h(
        "68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16")
    f = h("68 11 11 11 11 11 11 68 08 06 58 73 43 38 39 4A 0D 16")
    assert bytes(d.build_frame("111111111111", 0x08, d.time_sync_data((2017, 6, 5, 10, 40, 25)), 0)) == f
    assert d.decode_time_sync(d.parse(f)[1].data) == (2017, 6, 5, 10, 40, 25)
    raises(d.BuildError, d.build_time_sync, (2024, 13, 1, 0, 0, 0))
    raises(d.BuildError, d.build_time_sync, (2024, 1, 1, 24, 0, 0))
    raises(d.DLT645Error, d.decode_time_sync, h("30 45 13 15 03"))
    raises(d.DLT645Error, d.decode_time_sync, h("3A 45 13 15 03 24"))


def test_write_layout():
    value = it.encode_item(0x04000102, (12, 34, 56))
    f = d.build_write(METER, 0x04000102, value, password=h("02 56 34 12"),
                      operator=h("01 02 03 04"), preamble=0)
    status, frame, nxt, junk = d.parse(f)
    assert frame.function == d.FN_WRITE and frame.di() == 0x04000102
    assert bytes(frame.data) == h("02 01 00 04") + h("02 56 34 12") + h("01 02 03 04") + h("56 34 12")
    raises(d.BuildError, d.build_write, METER, 0x04000102, value, password=b"\x00")


def test_replies_for_the_simulator():
    assert d.build_reply(METER, d.FN_READ, b"")[4 + 8] == 0x91
    assert d.build_reply(METER, d.FN_READ, b"", follows=True)[4 + 8] == 0xB1
    assert d.build_read_reply(METER, 1, b"", seq=1)[4 + 8] == 0x92
    assert d.build_read_reply(METER, 1, b"", seq=1, follows=True)[4 + 8] == 0xB2
    assert d.build_reply(METER, d.FN_READ_ADDRESS, d.address_to_wire(METER))[4 + 8] == 0x93
    assert d.build_reply(METER, d.FN_WRITE)[4 + 8] == 0x94
    e = d.build_error_reply(METER, d.FN_READ, 0x02)
    assert e[4 + 8] == 0xD1 and e[4 + 9] == 1 and e[4 + 10] == 0x35
    # any control code at all
    assert d.build_frame(METER, 0x1C, b"\x01", preamble=1)[1 + 8] == 0x1C


def test_builder_argument_errors():
    raises(d.BuildError, d.build_frame, METER, 0x11, bytes(256))
    raises(d.BuildError, d.build_frame, METER, 0x100, b"")
    raises(d.BuildError, d.build_frame, METER, 0x11, b"", 5)
    raises(d.BuildError, d.build_read, METER, 1 << 32)
    raises(d.BuildError, d.build_read, METER, "zz")
    raises(d.BuildError, d.build_read, METER, 0, count=256)
    raises(d.BuildError, d.build_read_next, METER, 0, 300)
    raises(d.BuildError, d.build_error_reply, METER, 0x11, 256)
    assert len(d.build_frame(METER, 0x91, bytes(255), preamble=0)) == 267


# ---- parser ----------------------------------------------------------------------


def test_control_bits_and_error_names():
    f = d.build_error_reply(METER, d.FN_READ, 0x02 | 0x04)
    status, frame, nxt, junk = d.parse(f)
    assert frame.is_reply and frame.abnormal and not frame.follows
    assert frame.function == d.FN_READ and frame.error == 0x06
    assert frame.error_names() == ("no_such_data", "unauthorised")
    assert frame.di() is None and frame.item_data() is None
    assert d.error_names(0x7F) == d.ERROR_NAMES
    assert d.error_names(0x80) == ("bit7",)
    assert d.error_names(0) == ()
    status, frame, nxt, junk = d.parse(d.build_reply(METER, d.FN_READ, h("00 00 01 00 00 00 00 00"), follows=True))
    assert frame.follows and not frame.abnormal and frame.error is None and frame.error_names() == ()


def test_follow_up_reply_item_data_drops_sequence():
    f = d.build_read_reply(METER, 0x00010000, h("00 01 00 00"), seq=3)
    status, frame, nxt, junk = d.parse(f)
    assert frame.seq == 3 and bytes(frame.item_data()) == h("00 01 00 00")
    assert approx(it.decode_item(frame.di(), frame.item_data()), 1.0)


def test_read_address_reply():
    f = d.build_reply(METER, d.FN_READ_ADDRESS, d.address_to_wire(METER))
    status, frame, nxt, junk = d.parse(f)
    assert frame.control == 0x93 and frame.address_str() == METER
    assert d.wire_to_address(frame.data) == METER and frame.di() is None


def test_every_prefix_needs_more_then_frame():
    f = bytes(d.build_read(METER, 0x02010100))
    for cut in range(len(f)):
        status, info, nxt, junk = d.parse(f, 0, cut)
        assert status == d.NEED_MORE, cut
        assert info is None and junk == 0
        assert nxt == (cut if cut <= 4 else 4)  # keep from the first 68
    status, frame, nxt, junk = d.parse(f)
    assert status == d.FRAME and nxt == len(f) and frame.start == 4 and frame.size == 16


def test_junk_is_skipped_and_counted():
    f = READ_ADDRESS
    buf = b"\x01\x02\xfe\x03\xfe\xfe" + f + b"\x55"
    status, frame, nxt, junk = d.parse(buf)
    assert status == d.FRAME and junk == 3 and frame.start == 6 and nxt == 6 + len(f)
    status, info, nxt2, junk = d.parse(buf, nxt)
    assert status == d.NEED_MORE and nxt2 == len(buf) and junk == 1
    status, info, nxt, junk = d.parse(b"\xfe" * 10)
    assert status == d.NEED_MORE and nxt == 10 and junk == 0


def test_bad_frames_and_their_reasons():
    f = bytearray(READ_00000000)
    bad = bytearray(f)
    bad[4 + 7] = 0x69
    assert d.parse(bad)[:3] == (d.BAD, d.BAD_START2, 5)
    bad = bytearray(f)
    bad[-2] ^= 1
    assert d.parse(bad)[:3] == (d.BAD, d.BAD_CHECKSUM, 5)
    # bad checksum known before the 16 arrives
    assert d.parse(bad, 0, len(bad) - 1)[:2] == (d.BAD, d.BAD_CHECKSUM)
    bad = bytearray(f)
    bad[-1] = 0x17
    assert d.parse(bad)[:3] == (d.BAD, d.BAD_END, 5)
    long_frame = d.build_frame(METER, 0x91, bytes(201), preamble=0)
    assert d.parse(long_frame)[:2] == (d.BAD, d.BAD_LENGTH)
    assert d.parse(long_frame, max_data=255)[0] == d.FRAME
    assert d.parse(long_frame, max_data=1000)[0] == d.FRAME
    assert d.reason_name(d.BAD_CHECKSUM) == "checksum" and d.status_name(d.NEED_MORE) == "need_more"
    assert d.reason_name(99) == "reason_99" and d.status_name(9) == "status_9"


def test_start_end_window_and_memoryview():
    f = READ_ADDRESS
    buf = bytearray(b"\x68\x68" + f + f + b"\x00")
    mv = memoryview(buf)
    # parse the second copy only, in place
    status, frame, nxt, junk = d.parse(mv, 2 + len(f), 2 + 2 * len(f))
    assert status == d.FRAME and frame.start == 2 + len(f) and nxt == 2 + 2 * len(f)
    assert frame.address == d.WILDCARD and frame.control == 0x13 and len(frame.data) == 0
    # end beyond the buffer is clamped
    assert d.parse(buf, 2 + len(f), 1000)[0] == d.FRAME


def test_stale_68_does_not_hide_a_later_frame():
    f = d.build_read_reply(METER, 0x02010100, h("00 22"), preamble=0)
    # a lone 68 then 6 bytes then 68 looks like a header with a huge L
    noise = h("68 01 02 03 04 05 06 68 91 C8")
    status, frame, nxt, junk = d.parse(noise + f)
    assert status == d.FRAME and frame.start == len(noise) and junk == len(noise)
    assert approx(it.decode_item(frame.di(), frame.item_data()), 220.0)
    # without the real frame the candidate waits for more bytes
    status, info, nxt, junk = d.parse(noise)
    assert status == d.NEED_MORE and nxt == 0


def test_stream_resync_after_bad_frames():
    good = [bytes(d.build_read_reply(METER, 0x02010000 + (k << 8), it.encode_item(0x02010000 + (k << 8), 220 + k), preamble=k))
            for k in range(1, 4)]
    broken = bytearray(good[0])
    broken[-2] ^= 0x40
    stream = bytearray(b"\x11" + good[0] + broken + b"\x68\x00" + good[1] + good[2][:-3])
    got = []
    bad = 0
    i = 0
    buf = stream
    while True:
        status, info, nxt, junk = d.parse(buf, i)
        if status == d.FRAME:
            got.append(it.decode_item(info.di(), info.item_data()))
        elif status == d.BAD:
            bad += 1
        else:
            break
        assert nxt > i
        i = nxt
    assert got == [221.0, 222.0] and bad >= 1
    # the tail arrives: the last frame completes from the kept index
    buf = bytearray(stream[i:]) + good[2][-3:]
    status, info, nxt, junk = d.parse(buf)
    assert status == d.FRAME and approx(it.decode_item(info.di(), info.item_data()), 223.0)


def test_scratch_buffer_is_used():
    scratch = bytearray(255)
    f = d.build_read_reply(METER, 0x00010000, h("76 17 03 00"))
    status, frame, nxt, junk = d.parse(f, scratch=scratch)
    assert bytes(scratch[:8]) == h("00 00 01 00 76 17 03 00")
    assert frame.di() == 0x00010000 and approx(it.decode_item(frame.di(), frame.item_data()), 317.76)
    # too small a scratch: a fresh buffer instead
    small = bytearray(2)
    status, frame, nxt, junk = d.parse(f, scratch=small)
    assert small == bytearray(2) and len(frame.data) == 8


# ---- data items ------------------------------------------------------------------


def test_energy_family():
    raw = h("76 17 03 00")
    for di in (0x00000000, 0x00010000, 0x00020000, 0x00010100, 0x00013F00, 0x0001000C, 0x00020401):
        assert approx(it.decode_item(di, raw), 317.76), hex(di)
    assert approx(it.decode_item(0x00000000, h("76 17 03 80")), -317.76)  # combined: signed
    assert approx(it.decode_item(0x00010000, h("76 17 03 80")), 800317.76)  # forward: not signed
    raises(it.BadBCD, it.decode_item, 0x00010000, h("76 17 03 A0"))
    block = it.decode_item(0x0001FF00, raw + h("00 01 00 00") + h("00 00 00 00"))
    assert len(block) == 3 and approx(block[0], 317.76) and approx(block[1], 1.0) and block[2] == 0.0
    for di in (0x0001000D, 0x00014000, 0x000100FF, 0x00030000):
        raises(it.UnknownItem, it.decode_item, di, raw)
    raises(it.BadLength, it.decode_item, 0x0001FF00, raw + b"\x00")


def test_instantaneous_values():
    assert approx(it.decode_item(0x02010100, h("05 22")), 220.5)
    assert it.decode_item(0x0201FF00, h("05 22 00 23 99 21")) == (220.5, 230.0, 219.9)
    assert approx(it.decode_item(0x02020100, h("40 23 81")), -12.34)  # XXX.XXX, sign bit
    assert approx(it.decode_item(0x02020300, h("56 34 12")), 123.456)
    assert approx(it.decode_item(0x02030000, h("56 34 92")), -12.3456)  # XX.XXXX kW
    assert approx(it.decode_item(0x02040200, h("00 00 81")), -1.0)
    assert approx(it.decode_item(0x02050300, h("00 00 01")), 1.0)
    assert approx(it.decode_item(0x02060000, h("00 90")), -1.0)  # X.XXX
    assert approx(it.decode_item(0x02060100, h("50 08")), 0.85)
    assert approx(it.decode_item(0x02070200, h("00 12")), 120.0)
    assert approx(it.decode_item(0x02080100, h("34 12")), 12.34)
    assert approx(it.decode_item(0x02090300, h("01 00")), 0.01)
    assert approx(it.decode_item(0x02800001, h("00 50 00")), 5.0)
    assert approx(it.decode_item(0x02800002, h("00 50")), 50.0)
    assert len(it.decode_item(0x0203FF00, bytes(12))) == 4
    raises(it.UnknownItem, it.decode_item, 0x02010000, h("00 22"))  # no total voltage
    raises(it.UnknownItem, it.decode_item, 0x02010400, h("00 22"))
    raises(it.BadLength, it.decode_item, 0x0201FF00, bytes(8))  # 4 voltages
    raises(it.BadLength, it.decode_item, 0x02010100, h("00 22 00"))


def test_parameters():
    assert it.decode_item(0x04000101, h("05 15 03 24")) == (2024, 3, 15, 5)
    assert it.decode_item(0x04000102, h("56 34 12")) == (12, 34, 56)
    assert it.decode_item(0x04000401, h("29 25 07 07 21 20")) == METER
    assert it.decode_item(0x04000402, h("01 00 00 00 00 00")) == "000000000001"
    raises(it.BadBCD, it.decode_item, 0x04000401, d.WILDCARD)
    text = it.encode_item(0x04000403, "GW-0001 asset")
    assert len(text) == 32 and text[31] == ord("G") and text[0] == 0
    assert it.decode_item(0x04000403, text) == "GW-0001 asset"
    assert it.decode_item(0x04000403, b"\xff" + bytes(30) + b"A") == "A?"
    assert it.decode_item(0x04000601, h("05")) == ("plus_forward", "plus_reverse")
    for code, baud in ((0x02, 600), (0x04, 1200), (0x08, 2400), (0x10, 4800), (0x20, 9600), (0x40, 19200)):
        assert it.decode_item(0x04000703, bytes((code,))) == baud
        assert it.encode_item(0x04000701, baud) == bytes((code,))
        assert it.baud_code(baud) == code
    for code in (0x00, 0x01, 0x0C, 0x80):
        raises(it.BadItemValue, it.decode_item, 0x04000705, bytes((code,)))
    raises(it.BadItemValue, it.baud_code, 300)
    raises(it.UnknownItem, it.decode_item, 0x04000706, b"\x08")


def test_status_words():
    assert it.decode_item(0x04000501, h("10 00")) == ("active_power_reverse",)
    assert it.decode_item(0x04000501, h("00 81")) == ("control_loop_fault", "clock_fault")
    assert it.decode_item(0x04000502, h("05 00")) == ("active_reverse_a", "active_reverse_c")
    assert it.decode_item(0x04000503, h("04 00")) == ("supply_battery",)
    for di in (0x04000504, 0x04000505, 0x04000506):
        assert it.decode_item(di, h("40 01")) == ("power_reverse", "current_cut")
    assert it.decode_item(0x04000507, h("03 00")) == ("voltage_reverse_sequence", "current_reverse_sequence")
    assert it.decode_item(0x04000507, h("80 00")) == ("bit7",)
    block = it.decode_item(0x040005FF, h("10 00 01 00 00 00 00 00 40 00 00 00 00 00"))
    assert block == (("active_power_reverse",), ("active_reverse_a",), (), (), ("power_reverse",), (), ())
    assert "clock_fault" in it.UNVERIFIED_FLAGS and "active_power_reverse" not in it.UNVERIFIED_FLAGS
    assert it.encode_item(0x04000504, ("over_voltage", "bit15")) == h("04 80")
    raises(it.BadItemValue, it.encode_item, 0x04000501, ("power_reverse",))  # a SW4..6 name
    raises(it.BadItemValue, it.encode_item, 0x04000501, ("bit16",))


def test_invalid_bcd_and_unknown_di_are_specific_errors():
    for di, data in ((0x00010000, h("7A 17 03 00")), (0x02010100, h("F0 22")),
                     (0x04000101, h("05 15 13 2F")), (0x04000102, h("60 3A 12"))):
        e = raises(it.BadBCD, it.decode_item, di, data)
        assert isinstance(e, ValueError) and isinstance(e, d.DLT645Error)
    e = raises(it.UnknownItem, it.decode_item, 0x05060100, b"")
    assert isinstance(e, ValueError)
    raises(it.UnknownItem, it.decode_item, "nothex", b"")
    raises(it.UnknownItem, it.encode_item, 0x7FFFFFFF, 1)
    raises(it.BadItemValue, it.decode_scaled, 0x04000101, h("05 15 03 24"))


def test_encode_ranges():
    assert it.encode_item(0x02020100, -12.34) == h("40 23 81")
    assert it.encode_item(0x02020100, -0.0001) == h("00 00 00")  # rounds to zero, no sign
    assert it.encode_item(0x00000000, (-31776, 2)) == h("76 17 03 80")
    assert it.encode_item(0x00010000, 999999.99) == h("99 99 99 99")
    raises(it.BadItemValue, it.encode_item, 0x00010000, 1000000.0)
    raises(it.BadItemValue, it.encode_item, 0x00010000, -1.0)
    raises(it.BadItemValue, it.encode_item, 0x00000000, 800000.0)  # sign bit would clash
    assert it.encode_item(0x00000000, -799999.99) == h("99 99 99 F9")
    raises(it.BadItemValue, it.encode_item, 0x02010100, "220")
    raises(it.BadItemValue, it.encode_item, 0x00000000, (1, 3))
    raises(it.BadItemValue, it.encode_item, 0x04000101, (2024, 13, 1, 1))
    raises(it.BadItemValue, it.encode_item, 0x04000101, (2024, 1, 1, 7))
    raises(it.BadItemValue, it.encode_item, 0x04000102, (24, 0, 0))
    raises(it.BadItemValue, it.encode_item, 0x04000401, "1234567890123")
    raises(it.BadItemValue, it.encode_item, 0x04000401, "12345678901A")
    raises(it.BadItemValue, it.encode_item, 0x04000403, "x" * 33)
    raises(it.BadItemValue, it.encode_item, 0x04000403, "caf\u00e9")
    raises(it.BadItemValue, it.encode_item, 0x0201FF00, (1, 2, 3, 4))
    raises(it.BadItemValue, it.encode_item, 0x0201FF00, ())
    assert it.encode_item(0x04000402, 42) == h("42 00 00 00 00 00")


# One sample value per row kind, to round-trip every DI of the table.
def _sample(info, k):
    kind = info["kind"]
    if kind == "number":
        dec = info["decimals"]
        mag = (12345678 + 7 * k) % (10 ** (2 * info["bytes"]) // 10)
        v = mag / 10 ** dec if dec else mag
        return -v if info["signed"] and k % 2 else v
    if kind == "date":
        return (2000 + k % 100, 1 + k % 12, 1 + k % 28, k % 7)
    if kind == "time":
        return (k % 24, k % 60, (k * 7) % 60)
    if kind == "digits":
        return "%012d" % (k * 1234567 % 10**12)
    if kind == "ascii":
        return "asset %d" % k
    if kind == "flags":
        return ()
    if kind == "baud":
        return (600, 1200, 2400, 4800, 9600, 19200)[k % 6]
    raise AssertionError(kind)


def all_2007_dis():
    dis = []
    for a in (0x00, 0x01, 0x02):
        for t in (0x00, 0x01, 0x04, 0x3F):
            for n in (0x00, 0x01, 0x0C):
                dis.append((a << 16) | (t << 8) | n)
    for fam in (0x0201, 0x0202, 0x0207, 0x0208, 0x0209):
        for p in (1, 2, 3):
            dis.append((fam << 16) | (p << 8))
    for fam in (0x0203, 0x0204, 0x0205, 0x0206):
        for p in (0, 1, 2, 3):
            dis.append((fam << 16) | (p << 8))
    dis += [0x02800001, 0x02800002, 0x04000101, 0x04000102, 0x04000401, 0x04000402, 0x04000403, 0x04000601]
    dis += [0x04000500 + s for s in range(1, 8)] + [0x04000700 + z for z in range(1, 6)]
    return dis


def test_round_trip_every_item():
    for k, di in enumerate(all_2007_dis()):
        info = it.item_info(di)
        assert not info["block"]
        value = _sample(info, k)
        raw = it.encode_item(di, value)
        assert len(raw) == info["bytes"], hex(di)
        back = it.decode_item(di, raw)
        if info["kind"] == "number" and info["decimals"]:
            assert approx(back, value), (hex(di), value, back)
        else:
            assert back == value, (hex(di), value, back)
        # and through a reply frame
        status, frame, nxt, junk = d.parse(d.build_read_reply(METER, di, raw))
        assert status == d.FRAME and frame.di() == di
        assert it.decode_item(frame.di(), frame.item_data()) == back


def test_round_trip_blocks():
    for di, values in ((0x0201FF00, (220.1, 221.2, 222.3)), (0x0202FF00, (1.5, -2.25, 0.0)),
                       (0x0203FF00, (3.3, 1.1, -1.1, 3.3)), (0x0000FF00, (10.5, 1.0, 2.0, 3.0, 4.5)),
                       (0x0206FF00, (0.9, -0.5))):
        raw = it.encode_item(di, values)
        back = it.decode_item(di, raw)
        assert len(back) == len(values) and all(approx(a, b) for a, b in zip(back, values))
    words = (("active_power_reverse",), (), ("supply_auxiliary",), (), ("overload",), (), ("power_down",))
    raw = it.encode_item(0x040005FF, words)
    assert len(raw) == 14 and it.decode_item(0x040005FF, raw) == words


def test_item_info_and_lookup_by_hex_string():
    info = it.item_info("0203FF00")
    assert info == {"name": "active_power", "unit": "kW", "kind": "number", "bytes": 3,
                    "decimals": 4, "signed": True, "block": True}
    assert it.known(0x02800002) and not it.known(0x02800003)
    assert it.item_info(0x00010102)["name"] == "forward_active_energy"
