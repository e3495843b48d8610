# DL/T 645-1997: builders, the shared parser, 2-byte DIs from the one item
# table, version detection. Vector: PROTOCOLS.md "DL/T 645-1997 in brief".
from checks import raises, approx, h

from gateway.protocols import dlt645 as d
from gateway.protocols import dlt645_1997 as v97
from gateway.protocols import dlt645_items as it

WORKED = h("68 03 00 00 00 00 00 68 01 02 44 E9 03 16")


def test_worked_request_exactly():
    assert bytes(v97.build_read("3", 0xB611, preamble=0)) == WORKED
    assert bytes(v97.build_read("000000000003", "B611", preamble=0)) == WORKED
    assert bytes(v97.build_read(3, 0xB611)) == b"\xfe" * 4 + WORKED


def test_shared_parser_reads_1997_frames():
    status, frame, nxt, junk = d.parse(b"\xfe\xfe" + WORKED)
    assert status == d.FRAME and nxt == 2 + len(WORKED) and junk == 0
    assert frame.function == v97.FN_READ and frame.di_size() == 2 and frame.di() == 0xB611
    assert frame.address_str() == "000000000003" and bytes(frame.item_data()) == b""


def test_read_reply_and_values():
    data = it.encode_item(0xB611, 221, version=1997)
    assert data == h("21 02")
    f = v97.build_read_reply("3", 0xB611, data)
    status, frame, nxt, junk = d.parse(f)
    assert frame.control == 0x81 and frame.di() == 0xB611
    assert it.decode_item(frame.di(), frame.item_data(), 1997) == 221
    assert v97.build_read_reply("3", 0x901F, bytes(20), follows=True)[4 + 8] == 0xA1


def test_items_1997():
    assert approx(it.decode_item(0x9010, h("76 17 03 00"), 1997), 317.76)
    assert approx(it.decode_item(0x9020, h("00 01 00 00"), 1997), 1.0)
    assert approx(it.decode_item(0x9013, h("00 01 00 00"), 1997), 1.0)
    block = it.decode_item(0x901F, h("00 02 00 00 00 01 00 00 00 01 00 00"), 1997)
    assert block == (2.0, 1.0, 1.0)
    assert it.decode_item(0xB613, h("30 02"), 1997) == 230
    assert approx(it.decode_item(0xB621, h("34 12"), 1997), 12.34)
    assert approx(it.decode_item(0xB630, h("56 34 12"), 1997), 12.3456)
    assert approx(it.decode_item(0xB633, h("00 00 81"), 1997), -1.0)  # sign: unverified
    assert approx(it.decode_item(0xB650, h("50 09"), 1997), 0.95)
    assert it.decode_item(0xC010, h("01 31 12 23"), 1997) == (2023, 12, 31, 1)
    assert it.decode_item(0xC011, h("59 59 23"), 1997) == (23, 59, 59)
    assert it.decode_item(0xC032, h("29 25 07 07 21 20"), 1997) == "202107072529"
    assert it.decode_item(0xB61F, h("20 02 21 02 22 02"), 1997) == (220, 221, 222)
    assert it.item_info(0xB621, 1997)["unit"] == "A"


def test_1997_and_2007_tables_stay_apart():
    raises(it.UnknownItem, it.decode_item, 0xB611, h("20 02"))  # not a 2007 DI
    raises(it.UnknownItem, it.decode_item, 0x02010100, h("20 02"), 1997)
    for di in (0x9015, 0xB610, 0xB614, 0xB634, 0xC012, 0x9030):
        raises(it.UnknownItem, it.decode_item, di, b"", 1997)
    raises(it.BadLength, it.decode_item, 0xB611, h("20 02 00"), 1997)


def test_round_trip_1997():
    cases = ((0x9010, 123456.78), (0x9024, 0.01), (0xB612, 999), (0xB623, 99.99),
             (0xB630, -79.9999), (0xB652, -0.5), (0xC010, (2099, 1, 1, 0)), (0xC011, (0, 0, 0)),
             (0xC032, "000000000042"), (0x902F, (5.0, 1.0, 1.5, 1.25, 1.25)))
    for di, value in cases:
        raw = it.encode_item(di, value, 1997)
        back = it.decode_item(di, raw, 1997)
        if isinstance(value, float):
            assert approx(back, value), (hex(di), back)
        elif isinstance(value, tuple) and isinstance(value[0], float):
            assert all(approx(a, b) for a, b in zip(back, value))
        else:
            assert back == value, (hex(di), back)
    raises(it.BadItemValue, it.encode_item, 0xB611, 10000, 1997)
    raises(it.BadItemValue, it.encode_item, 0xB621, -1.0, 1997)
    raises(it.BadItemValue, it.encode_item, 0x901F, (1.0,) * 6, 1997)


def test_write_and_follow_up_and_time():
    f = v97.build_write("3", 0xC011, it.encode_item(0xC011, (8, 30, 0), 1997),
                        password=h("00 11 22 33"), preamble=0)
    status, frame, nxt, junk = d.parse(f)
    assert frame.function == v97.FN_WRITE and frame.di() == 0xC011
    assert bytes(frame.data) == h("11 C0 00 11 22 33 00 30 08")
    raises(d.BuildError, v97.build_write, "3", 0xC011, b"", password=b"\x00")
    f = v97.build_read_next("3", 0x901F)
    status, frame, nxt, junk = d.parse(f)
    assert frame.function == v97.FN_READ_NEXT and frame.di() == 0x901F and frame.seq is None
    assert bytes(v97.build_time_sync((2024, 1, 2, 3, 4, 5))) == bytes(d.build_time_sync((2024, 1, 2, 3, 4, 5)))
    raises(d.BuildError, v97.build_read, "3", 0x10000)


def test_error_reply_1997():
    f = v97.build_error_reply("3", v97.FN_READ, 0x02)
    status, frame, nxt, junk = d.parse(f)
    assert frame.control == 0xC1 and frame.error == 2 and frame.di() is None
    assert v97.error_names(frame.error) == ("bad_data_identifier",)


def test_detect_version():
    def parsed(frame_bytes):
        return d.parse(frame_bytes)[1]

    assert v97.detect_version(parsed(d.build_reply("1", d.FN_READ, h("00 00 01 02 00 22")))) == 2007
    assert v97.detect_version(parsed(d.build_error_reply("1", d.FN_READ, 2))) == 2007
    assert v97.detect_version(parsed(d.build_reply("1", d.FN_READ_ADDRESS, d.address_to_wire("1")))) == 2007
    assert v97.detect_version(parsed(v97.build_read_reply("1", 0xB611, h("20 02")))) == 1997
    assert v97.detect_version(parsed(v97.build_error_reply("1", v97.FN_READ, 1))) == 1997
    # requests and the shared broadcast say nothing
    assert v97.detect_version(parsed(d.build_read("1", 0))) is None
    assert v97.detect_version(parsed(WORKED)) is None
    assert v97.detect_version(parsed(d.build_reply("1", 0x08))) is None
