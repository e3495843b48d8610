# Modbus RTU codec and meter maps. Runs under CPython (pytest) and the
# MicroPython unix port (mpy_runner.py). Float checks use a relative
# tolerance: registers hold IEEE single floats, and ESP32 MicroPython
# computes in single precision too.
from checks import approx, h, raises

from gateway.protocols import modbus as mb
from gateway.protocols import modbus_maps as maps

# (frame without CRC, CRC as sent). The first is the textbook example; the
# others were computed with pymodbus's FramerRTU.compute_CRC, and
# tests/host/test_modbus_oracle.py checks every row against it again.
CRC_VECTORS = (
    ("01 03 00 00 00 0A", "C5 CD"),
    ("01 04 00 00 00 02", "71 CB"),
    ("01 06 00 01 00 03", "98 0B"),
    ("11 10 00 01 00 02 04 00 0A 01 02", "C6 F0"),
    ("01 84 02", "C2 C1"),
    ("01 04 04 43 66 33 34", "1B 38"),
    ("02 04 20 00 00 02", "7A 38"),
)

FLOAT_TOL = 1e-6


def fapprox(a, b):
    return approx(a, b, FLOAT_TOL)


def crc_bytes(crc):
    return bytes((crc & 0xFF, crc >> 8))


# --- CRC


def test_crc_vectors():
    for body, crc in CRC_VECTORS:
        assert crc_bytes(mb.crc16(h(body))) == h(crc), body
    assert mb.crc16(b"") == 0xFFFF


def test_crc_on_a_window_of_a_memoryview_matches_the_copy():
    frame = h("AA BB 01 03 00 00 00 0A C5 CD EE")
    mv = memoryview(frame)
    assert mb.crc16(mv, 2, 8) == mb.crc16(h("01 03 00 00 00 0A")) == 0xCDC5
    assert mb.crc_ok(mv, 2, 10)
    assert not mb.crc_ok(mv, 2, 11)
    assert not mb.crc_ok(mv, 2, 5)  # shorter than any frame


def test_crc_table_is_built_once_and_compact():
    assert len(mb._CRC_TABLE) == 256
    assert mb._CRC_TABLE[1] == 0xC0C1  # CRC of one byte 01 from zero


# --- request builders


def test_read_requests_match_known_frames():
    assert bytes(mb.read_request(1, 3, 0, 10)) == h("01 03 00 00 00 0A C5 CD")
    assert bytes(mb.read_request(1, 4, 0, 2)) == h("01 04 00 00 00 02 71 CB")
    assert bytes(mb.read_request(2, mb.READ_INPUT, 0x2000, 2)) == h("02 04 20 00 00 02 7A 38")


def test_write_requests_match_known_frames():
    assert bytes(mb.write_single_request(1, 1, 3)) == h("01 06 00 01 00 03 98 0B")
    frame = mb.write_multiple_request(0x11, 1, [0x000A, 0x0102])
    assert bytes(frame) == h("11 10 00 01 00 02 04 00 0A 01 02 C6 F0")


def test_builders_write_into_a_preallocated_buffer():
    out = bytearray(300)
    view = mb.read_request(1, 3, 0, 10, out)
    assert isinstance(view, memoryview)
    assert bytes(view) == h("01 03 00 00 00 0A C5 CD")
    assert out[:8] == h("01 03 00 00 00 0A C5 CD")
    view = mb.write_multiple_request(0x11, 1, [10, 0x102], out)
    assert bytes(view) == h("11 10 00 01 00 02 04 00 0A 01 02 C6 F0")
    raises(ValueError, mb.read_request, 1, 3, 0, 10, bytearray(7))


def test_builders_reject_what_no_meter_accepts():
    raises(ValueError, mb.read_request, 1, 6, 0, 1)  # not a read function
    raises(ValueError, mb.read_request, 1, 3, 0, 0)
    raises(ValueError, mb.read_request, 1, 3, 0, 126)
    raises(ValueError, mb.read_request, 1, 3, 0xFFFF, 2)  # past the last register
    raises(ValueError, mb.read_request, 0, 3, 0, 1)  # broadcast read gets no reply
    raises(ValueError, mb.read_request, 248, 3, 0, 1)
    raises(ValueError, mb.read_request, 1, 3, -1, 1)
    raises(ValueError, mb.write_single_request, 1, 0, 0x10000)
    raises(ValueError, mb.write_multiple_request, 1, 0, [])
    raises(ValueError, mb.write_multiple_request, 1, 0, [0] * 124)
    raises(ValueError, mb.write_multiple_request, 1, 0, [1, -1])
    assert len(mb.write_multiple_request(1, 0, [0] * 123)) == 9 + 246
    assert bytes(mb.write_single_request(0, 1, 3))[:2] == h("00 06")  # broadcast write


# --- reply parsing (master side)


def test_read_reply_round_trip_and_fields():
    data = h("43 66 33 33 00 01")
    frame = mb.read_reply(1, 4, data)
    assert bytes(frame[:3]) == h("01 04 06")
    r = mb.Reply()
    assert r.parse(frame, 0, len(frame), 1, 4, 3) == mb.OK
    assert r.status == mb.OK and r.unit == 1 and r.function == 4 and r.count == 3
    assert frame[r.data_start : r.data_end] == data
    assert r.frame_end == len(frame)
    assert r.registers(frame) == [0x4366, 0x3333, 0x0001]
    assert fapprox(mb.decode_float32(frame, r.data_start), 230.2)
    r.check()  # OK: no raise
    # count 0 accepts any byte count
    assert r.parse(frame, 0, len(frame), 1, 4) == mb.OK


def test_reply_inside_a_larger_memoryview_is_parsed_in_place():
    frame = bytes(mb.read_reply(7, 3, h("12 34 56 78")))
    buf = bytearray(b"\x00\x00\x00" + frame + b"\x55\x55")
    mv = memoryview(buf)
    r = mb.Reply()
    assert r.parse(mv, 3, 3 + len(frame), 7, 3, 2) == mb.OK
    assert (r.data_start, r.data_end, r.frame_end) == (6, 10, 3 + len(frame))
    assert r.registers(mv) == [0x1234, 0x5678]
    # the trailing bytes are not part of the frame and do not disturb it
    assert r.parse(mv, 3, len(buf), 7, 3, 2) == mb.OK
    assert r.frame_end == 3 + len(frame)


def test_every_proper_prefix_needs_more():
    r = mb.Reply()
    frames = (
        (mb.read_reply(1, 4, bytes(8)), 4, 4),
        (mb.write_single_reply(1, 5, 6), 6, 0),
        (mb.write_multiple_reply(1, 5, 6), 16, 6),
        (mb.exception_reply(1, 4, 2), 4, 4),
    )
    for frame, fn, count in frames:
        for n in range(len(frame)):
            assert r.parse(frame, 0, n, 1, fn, count) == mb.NEED_MORE, (fn, n)
        assert r.parse(frame, 0, len(frame), 1, fn, count) in (mb.OK, mb.EXCEPTION)


def test_bad_frames_have_distinct_statuses():
    r = mb.Reply()
    good = bytes(mb.read_reply(1, 4, h("00 01 00 02")))
    bad = bytearray(good)
    bad[4] ^= 0x01
    assert r.parse(bad, 0, len(bad), 1, 4, 2) == mb.BAD_CRC
    other = bytes(mb.read_reply(2, 4, h("00 01 00 02")))
    assert r.parse(other, 0, len(other), 1, 4, 2) == mb.BAD_UNIT
    assert r.unit == 2
    assert r.parse(good, 0, len(good), 1, 3, 2) == mb.BAD_FUNCTION
    assert r.parse(good, 0, len(good), 1, 4, 3) == mb.BAD_LENGTH  # asked 3 registers
    odd = h("01 04 03 00 00 00")
    assert r.parse(odd, 0, len(odd), 1, 4) == mb.BAD_LENGTH
    zero = h("01 04 00 00 00")
    assert r.parse(zero, 0, len(zero), 1, 4) == mb.BAD_LENGTH
    e = raises(mb.FrameError, r.check)
    assert e.status == mb.BAD_LENGTH and isinstance(e, mb.ModbusError)
    assert mb.status_name(mb.BAD_CRC) == "bad_crc"


def test_write_replies_check_the_echo():
    r = mb.Reply()
    f = mb.write_single_reply(1, 0x0010, 0x1234)
    assert r.parse(f, 0, 8, 1, 6, 0, 0x0010, 0x1234) == mb.OK
    assert (r.address, r.value) == (0x0010, 0x1234)
    assert r.parse(f, 0, 8, 1, 6, 0, 0x0011) == mb.BAD_ECHO
    assert r.parse(f, 0, 8, 1, 6, 0, 0x0010, 0x1235) == mb.BAD_ECHO
    f = mb.write_multiple_reply(1, 0x0100, 4)
    assert r.parse(f, 0, 8, 1, 16, 4, 0x0100) == mb.OK
    assert (r.address, r.count) == (0x0100, 4)
    assert r.parse(f, 0, 8, 1, 16, 5) == mb.BAD_ECHO


def test_exception_replies_decode_to_names():
    names = {
        1: "illegal_function",
        2: "illegal_data_address",
        3: "illegal_data_value",
        4: "server_device_failure",
        5: "acknowledge",
        6: "server_device_busy",
        8: "memory_parity_error",
        0x0A: "gateway_path_unavailable",
        0x0B: "gateway_target_failed_to_respond",
    }
    r = mb.Reply()
    for code in names:
        f = mb.exception_reply(1, 4, code)
        assert bytes(f[:3]) == bytes((1, 0x84, code))
        assert r.parse(f, 0, 5, 1, 4, 10) == mb.EXCEPTION
        assert r.exception_code == code
        assert mb.exception_name(code) == names[code]
        e = raises(mb.DeviceException, r.check)
        assert (e.function, e.code, e.name) == (4, code, names[code])
    assert bytes(mb.exception_reply(1, 4, 2)) == h("01 84 02 C2 C1")
    assert mb.exception_name(0x42) == "exception_66"
    # an exception for another function is not the answer to ours
    f = mb.exception_reply(1, 3, 2)
    assert r.parse(f, 0, 5, 1, 4) == mb.BAD_FUNCTION


def test_scan_steps_over_our_echo_and_junk():
    req = bytes(mb.read_request(1, 4, 0, 2))
    rep = bytes(mb.read_reply(1, 4, h("43 66 33 33")))
    r = mb.Reply()
    buf = req + rep  # half-duplex bus: we hear our own request first
    assert r.parse(buf, 0, len(buf), 1, 4, 2) == mb.BAD_LENGTH
    assert r.scan(buf, 0, len(buf), 1, 4, 2) == mb.OK
    assert r.skipped == len(req) and r.data_start == len(req) + 3
    buf = h("00 FF 01 01") + rep
    assert r.scan(buf, 0, len(buf), 1, 4, 2) == mb.OK and r.skipped == 4
    assert r.scan(buf, 0, len(buf) - 1, 1, 4, 2) == mb.NEED_MORE
    # a trailing byte equal to our unit id may be the start of the reply
    assert r.scan(h("00 FF 01"), 0, 3, 1, 4, 2) == mb.NEED_MORE
    assert r.scan(h("00 FF 02"), 0, 3, 1, 4, 2) == mb.BAD_FUNCTION
    junk = h("01 04 04 00 00 00 00 00 00")
    assert r.scan(junk, 0, len(junk), 1, 4, 2) == mb.BAD_CRC
    assert r.skipped == 0 and r.unit == 1
    ex = h("55") + bytes(mb.exception_reply(1, 4, 6))
    assert r.scan(ex, 0, len(ex), 1, 4, 2) == mb.EXCEPTION and r.exception_code == 6


# --- request parsing (server side, the simulator)


def test_request_parse_all_functions():
    q = mb.Request()
    f = mb.read_request(9, 3, 0x0102, 10)
    assert q.parse(f, 0, 8) == mb.OK
    assert (q.unit, q.function, q.address, q.count, q.error_code) == (9, 3, 0x0102, 10, 0)
    f = mb.write_single_request(9, 7, 0xBEEF)
    assert q.parse(f, 0, 8) == mb.OK and (q.function, q.address, q.value) == (6, 7, 0xBEEF)
    f = mb.write_multiple_request(9, 0x40, [1, 2, 0xFFFF])
    assert q.parse(f, 0, len(f)) == mb.OK
    assert (q.function, q.address, q.count, q.values(f)) == (16, 0x40, 3, [1, 2, 0xFFFF])
    assert q.frame_end == len(f) and q.data_end - q.data_start == 6
    for n in range(len(f)):
        assert q.parse(f, 0, n) == mb.NEED_MORE
    bad = bytearray(f)
    bad[-1] ^= 0x80
    assert q.parse(bad, 0, len(bad)) == mb.BAD_CRC


def test_request_values_the_server_must_refuse():
    q = mb.Request()

    def framed(body):
        b = h(body)
        return b + crc_bytes(mb.crc16(b))

    for body, code in (
        ("01 04 00 00 00 00", 3),  # zero registers
        ("01 04 00 00 00 7E", 3),  # 126 registers
        ("01 03 FF FF 00 02", 2),  # runs past register 65535
        ("01 10 00 00 00 02 02 00 01", 3),  # byte count disagrees with count
    ):
        f = framed(body)
        assert q.parse(f, 0, len(f)) == mb.OK, body
        assert q.error_code == code, body
    # a function we do not implement, with a good CRC: answer illegal function
    f = framed("01 2B 0E 01 00")
    assert q.parse(f, 0, len(f)) == mb.UNSUPPORTED
    assert (q.unit, q.function) == (1, 0x2B)
    assert bytes(mb.exception_reply(q.unit, q.function, 1))[:3] == h("01 AB 01")
    assert q.parse(f[:-1], 0, len(f) - 1) == mb.BAD_FUNCTION


# --- register values


def test_float32_both_word_orders():
    abcd = h("43 66 33 33")
    cdab = h("33 33 43 66")
    assert fapprox(mb.decode_float32(abcd, 0), 230.2)
    assert fapprox(mb.decode_float32(abcd, 0, "ABCD"), 230.2)
    assert fapprox(mb.decode_float32(cdab, 0, "CDAB"), 230.2)
    assert fapprox(mb.decode_float32(h("66 43 33 33"), 0, "BADC"), 230.2)
    assert fapprox(mb.decode_float32(h("33 33 66 43"), 0, "DCBA"), 230.2)
    assert mb.decode_float32(h("C4 BB 90 00"), 0) == -1500.5  # exact in float32
    assert mb.decode_float32(h("90 00 C4 BB"), 0, mb.CDAB) == -1500.5
    mv = memoryview(h("00 00 90 00 C4 BB"))
    assert mb.decode_float32(mv, 2, mb.CDAB) == -1500.5
    raises(ValueError, mb.decode_float32, abcd, 0, "ABDC")


def test_integers_both_word_orders():
    assert mb.decode_uint32(h("12 34 56 78"), 0) == 0x12345678
    assert mb.decode_uint32(h("56 78 12 34"), 0, "CDAB") == 0x12345678
    assert mb.decode_int32(h("FF FF FF FE"), 0) == -2
    assert mb.decode_int32(h("FF FE FF FF"), 0, "CDAB") == -2
    assert mb.decode_int32(h("80 00 00 00"), 0) == -0x80000000
    assert mb.decode_uint32(h("00 00 80 00"), 0, "CDAB") == 0x80000000
    assert mb.decode_uint16(h("00 FF FE"), 1) == 0xFFFE
    assert mb.decode_int16(h("00 FF FE"), 1) == -2
    assert mb.decode_int16(h("7F FF"), 0) == 32767


def test_encoders_invert_decoders():
    for order in mb.WORD_ORDERS:
        for v in (0.0, 1.0, -1500.5, 49.9375, 3.0e38, -1.0e-30):
            b = mb.encode_float32(v, order)
            assert len(b) == 4
            assert fapprox(mb.decode_float32(b, 0, order), v), (order, v)
        for v in (0, 1, 0x12345678, 0xFFFFFFFF):
            assert mb.decode_uint32(mb.encode_uint32(v, order), 0, order) == v
        for v in (0, -1, -0x80000000, 0x7FFFFFFF):
            assert mb.decode_int32(mb.encode_int32(v, order), 0, order) == v
    assert bytes(mb.encode_float32(230.2)) == h("43 66 33 33")
    assert bytes(mb.encode_float32(230.2, "CDAB")) == h("33 33 43 66")
    assert bytes(mb.encode_int32(-2, "CDAB")) == h("FF FE FF FF")
    assert bytes(mb.encode_int16(-2)) == h("FF FE")
    assert bytes(mb.encode_uint16(0xABCD)) == h("AB CD")
    out = bytearray(6)
    mb.encode_uint32(0x01020304, "CDAB", out, 2)
    assert out == h("00 00 03 04 01 02")
    raises(ValueError, mb.encode_uint32, -1)
    raises(ValueError, mb.encode_int32, 0x80000000)
    raises(ValueError, mb.encode_uint16, 0x10000)
    raises(ValueError, mb.encode_int16, -0x8001)


# --- meter maps


def test_models_carry_the_documented_defaults():
    sdm120 = maps.model("sdm120")
    assert (sdm120["baud"], sdm120["parity"], sdm120["unit"]) == (2400, "N", 1)
    assert maps.model("sdm630")["baud"] == 9600 and maps.model("sdm630")["even_count"]
    assert maps.model("ddsu666")["baud"] == 9600
    for name in maps.MODELS:
        m = maps.model(name)
        assert m["function"] == 4 and m["word_order"] == "ABCD" and m["unit"] == 1
        for q, reg, typ, scale, unit in m["points"]:
            assert typ in mb.SIZES and 0 <= reg <= 0xFFFE
    assert "voltage_b" not in maps.quantities("sdm120")
    assert "voltage_c" in maps.quantities("sdm630")
    raises(ValueError, maps.model, "sdm999")


def _points(name):
    return dict((p[0], p) for p in maps.model(name)["points"])


def test_sdm630_registers_and_scales():
    p = _points("sdm630")
    assert [p["voltage_" + x][1] for x in "abc"] == [0x00, 0x02, 0x04]
    assert [p["current_" + x][1] for x in "abc"] == [0x06, 0x08, 0x0A]
    assert [p["power_" + x][1] for x in "abc"] == [0x0C, 0x0E, 0x10]
    assert [p["pf_" + x][1] for x in "abc"] == [0x1E, 0x20, 0x22]
    assert [p["angle_" + x][1] for x in "abc"] == [0x24, 0x26, 0x28]
    assert p["power_total"][1:] == (0x34, "float32", 0.001, "kW")  # W on the wire
    assert p["frequency"][1] == 0x46
    assert (p["energy_import"][1], p["energy_export"][1], p["energy_total"][1]) == (0x48, 0x4A, 0x156)
    d = _points("ddsu666")
    assert d["power_total"][1:] == (0x2004, "float32", 1, "kW")  # kW on the wire
    assert (d["voltage_a"][1], d["current_a"][1], d["pf_a"][1], d["frequency"][1]) == (
        0x2000,
        0x2002,
        0x200A,
        0x200E,
    )
    assert (d["energy_import"][1], d["energy_export"][1]) == (0x4000, 0x400A)


def test_plan_covers_everything_with_few_requests():
    reads = maps.plan("sdm630")
    assert [(r.address, r.count) for r in reads] == [(0x0000, 76), (0x0156, 2)]
    reads = maps.plan("ddsu666")
    assert [(r.address, r.count) for r in reads] == [(0x2000, 16), (0x4000, 2), (0x400A, 2)]
    reads = maps.plan("sdm120", ["energy_total", "voltage_a", "frequency"])
    assert [(r.address, r.count) for r in reads] == [(0x0000, 72), (0x0156, 2)]
    reads = maps.plan("sdm120", ["energy_total", "voltage_a", "frequency"], max_gap=0)
    assert [(r.address, r.count) for r in reads] == [(0, 2), (0x46, 2), (0x156, 2)]
    raises(ValueError, maps.plan, "sdm120", ["voltage_b"])


def test_plan_respects_limits_and_covers_each_quantity():
    for name in maps.MODELS:
        for max_count in (2, 4, 10, 20, 80, 125):
            for max_gap in (0, 2, 40):
                reads = maps.plan(name, None, max_count, max_gap)
                seen = []
                for r in reads:
                    assert 1 <= r.count <= max_count
                    if maps.model(name)["even_count"]:
                        assert r.count % 2 == 0
                    for q, off, typ, scale in r.items:
                        assert off + mb.SIZES[typ] <= 2 * r.count
                        seen.append(q)
                assert sorted(seen) == sorted(maps.quantities(name))


def test_even_count_rule_pads_odd_spans():
    m = {
        "name": "test",
        "function": 4,
        "word_order": "ABCD",
        "even_count": True,
        "max_count": 10,
        "max_gap": 0,
        "points": (("a", 10, "uint16", 1, ""), ("b", 11, "float32", 1, ""), ("c", 20, "int16", 1, "")),
    }
    assert [(r.address, r.count) for r in maps.plan(m)] == [(10, 4), (20, 2)]
    m["even_count"] = False
    assert [(r.address, r.count) for r in maps.plan(m)] == [(10, 3), (20, 1)]


def test_decode_end_to_end_through_frames():
    # gateway plans and asks, the simulator parses, answers from published
    # values, and the gateway decodes the same values back
    values = {
        "voltage_a": 231.5,
        "voltage_b": 229.25,
        "voltage_c": 0.0,
        "current_a": 5.125,
        "power_a": -1.1875,  # export
        "power_total": 2.5,
        "pf_a": -0.875,
        "frequency": 49.96875,
        "energy_import": 12345.5,
        "energy_export": 17.25,
        "energy_total": 12362.75,
    }
    q = mb.Request()
    r = mb.Reply()
    out_buf = bytearray(256)
    got = {}
    for read in maps.plan("sdm630", list(values)):
        req = read.request(1)
        assert q.parse(req, 0, len(req)) == mb.OK and q.error_code == 0
        data = maps.encode_registers("sdm630", values, q.address, q.count)
        rep = mb.read_reply(q.unit, q.function, data, out=out_buf)
        assert r.parse(rep, 0, len(rep), 1, read.function, read.count) == mb.OK
        maps.decode(read, rep, r.data_start, r.data_end, got)
    assert sorted(got) == sorted(values)
    for k in values:
        assert approx(got[k], values[k], 1e-6), k
    raises(ValueError, maps.decode, maps.plan("sdm630")[0], bytes(4), 0, 4)


def test_decode_word_swapped_meter_and_scale():
    m = {
        "name": "swapped",
        "function": 3,
        "word_order": "CDAB",
        "even_count": False,
        "max_count": 125,
        "max_gap": 0,
        "points": (("power_total", 0, "float32", 0.001, "kW"), ("energy_import", 2, "uint32", 0.01, "kWh")),
    }
    (read,) = maps.plan(m)
    data = h("90 00 C4 BB") + h("56 78 12 34")
    got = maps.decode(read, data, 0, 8)
    assert approx(got["power_total"], -1.5005, 1e-6)
    assert approx(got["energy_import"], 0x12345678 * 0.01, 1e-9)
    assert maps.encode_registers(m, {"power_total": -1.5005, "energy_import": 0x12345678 * 0.01}, 0, 4) == data
