"""Our DL/T 645 codec against the `dlt645` package (3.2.0), an implementation
we did not write. Its own frame builder and stream parser
(dlt645.protocol.protocol.DLT645Protocol), its value codec
(dlt645.common.transform) and its meter and master logic
(MeterServerService.handle_request, MeterClientService.handle_response) are
driven with frames ours build, and ours parse what it builds.

Where the package knowingly differs from PROTOCOLS.md (time-sync field order,
baud codes above 2400, the byte order of addresses given as strings) the
tests stay on the common ground; docs/codecs/dlt645.md lists the differences."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlt645 import CtrlCode, DLT645Protocol, MeterClientService, MeterServerService
from dlt645.common.transform import bcd_to_float, float_to_bcd
from dlt645.model.data.define import DIMap

from gateway.protocols import dlt645 as d
from gateway.protocols import dlt645_items as it
from test_dlt645 import all_2007_dis

addresses = st.binary(min_size=6, max_size=6)
bcd_addresses = st.integers(0, 999999999999).map(lambda n: "%012d" % n)
controls = st.integers(0, 255)
preambles = st.integers(0, 4)
# junk that holds neither a 68 nor an FE, so both parsers skip all of it
junk = st.binary(max_size=12).map(lambda b: bytes(x for x in b if x not in (0x68, 0xFE)))

NUMERIC = [di for di in all_2007_dis() if it.item_info(di)["kind"] == "number" and di in DIMap]
assert len(NUMERIC) > 40  # energies, U, I, P, Q, S, PF, angle, THD, I_N, Hz


def their_parse(raw):
    frame = DLT645Protocol.deserialize(bytes(raw))
    assert frame is not None
    return frame


def our_parse(raw, max_data=255):
    status, frame, nxt, _ = d.parse(raw, 0, len(raw), max_data)
    assert status == d.FRAME, (d.status_name(status), frame)
    return frame, nxt


# ---- framing both ways -----------------------------------------------------------


@given(addresses, controls, st.binary(max_size=255), preambles)
def test_our_frames_parse_in_theirs_and_match_their_builder(addr, control, data, pre):
    ours = bytes(d.build_frame(addr, control, data, pre))
    assert ours == bytes(DLT645Protocol.build_frame(addr, control, data, pre))
    theirs = their_parse(ours)
    assert bytes(theirs.addr) == addr and theirs.ctrl_code == control
    assert bytes(theirs.data) == data and len(theirs.preamble) == pre


@given(addresses, controls, st.binary(max_size=255), preambles, junk, junk)
def test_their_frames_parse_in_ours(addr, control, data, pre, before, after):
    raw = before + bytes(DLT645Protocol.build_frame(addr, control, data, pre)) + after
    frame, nxt = our_parse(raw)
    assert frame.address == addr and frame.control == control and bytes(frame.data) == data
    assert nxt == len(raw) - len(after)
    assert frame.function == control & 0x1F and frame.is_reply == bool(control & 0x80)
    assert frame.abnormal == bool(control & 0x40) and frame.follows == bool(control & 0x20)


@given(st.binary(max_size=300))
def test_both_agree_on_which_buffers_hold_a_frame(raw):
    _, theirs = DLT645Protocol.deserialize_with_remaining(raw)
    status, ours, _, _ = d.parse(raw, 0, len(raw), 255)
    if theirs is None:
        # they also skip bad candidates; only our look-ahead past a stale 68
        # may find a frame they give up on
        assert status != d.FRAME or raw.find(b"\x68") < ours.start
    elif status == d.FRAME and ours.start == raw.find(b"\x68"):
        assert bytes(ours.data) == bytes(theirs.data) and ours.control == theirs.ctrl_code


@given(st.binary(max_size=400), st.integers(0, 400), st.integers(0, 400), st.integers(0, 300))
@settings(max_examples=500)
def test_parser_fuzz_never_raises(raw, start, end, max_data):
    start = min(start, len(raw))
    end = max(start, min(end, len(raw)))
    status, info, nxt, junk_count = d.parse(raw, start, end, max_data)
    assert status in (d.FRAME, d.NEED_MORE, d.BAD)
    assert start <= nxt <= end and 0 <= junk_count <= end - start
    if status == d.FRAME:
        s = info.start
        assert raw[s] == 0x68 and raw[s + info.size - 1] == 0x16 and s + info.size == nxt
        assert sum(raw[s : nxt - 2]) & 0xFF == raw[nxt - 2]
    elif status == d.BAD:
        assert nxt > start and raw[nxt - 1] == 0x68


@given(bcd_addresses, st.one_of(st.sampled_from(all_2007_dis()), st.integers(0, 0xFFFFFFFF)), preambles)
def test_read_requests_are_what_their_master_sends(addr, di, pre):
    wire = d.address_to_wire(addr)
    theirs = DLT645Protocol.build_frame(wire, CtrlCode.ReadData, struct.pack("<I", di), pre)
    assert bytes(d.build_read(addr, di, preamble=pre)) == bytes(theirs)
    assert bytes(d.build_read_address(pre)) == bytes(
        DLT645Protocol.build_frame(bytearray([0xAA] * 6), CtrlCode.ReadAddress, b"", pre))


# ---- values --------------------------------------------------------------------


def value_strategy(di):
    """Values both codecs accept for a numeric DI: their min/max and our
    digits, sign only where the item is signed. Their decoder takes bit 7 of
    the top byte as a sign on every item, so unsigned items stay below 8 in
    the top digit here (ours reads 80..99 there as digits)."""
    info = it.item_info(di)
    dec = info["decimals"]
    ours = 8 * 10 ** (2 * info["bytes"] - 1) - 1
    top = min(ours, round(DIMap[di].max_value * 10**dec))
    mags = st.integers(0, top)
    if info["signed"]:
        mags = st.integers(-top, top)
    return mags.map(lambda m: m / 10**dec)


numeric_cases = st.sampled_from(NUMERIC).flatmap(lambda di: st.tuples(st.just(di), value_strategy(di)))


@given(numeric_cases)
def test_number_encoding_matches_their_bcd(case):
    di, value = case
    fmt = DIMap[di].data_format
    theirs = bytes(float_to_bcd(value, fmt, "little"))
    if value == 0:
        theirs = bytes(b & 0x7F for b in theirs)  # they may keep a sign on -0.0
    assert it.encode_item(di, value) == theirs
    assert it.decode_item(di, theirs) == pytest.approx(bcd_to_float(theirs, fmt, "little"), abs=1e-9)
    assert it.decode_item(di, theirs) == pytest.approx(value, abs=1e-9)


METER = "202107072529"


_SHARED = {}


def their_meter():
    # Built once: each instance deep-copies their 20,000-item map (~1 s).
    # Every test sets the items it reads.
    if "meter" not in _SHARED:
        meter = MeterServerService(None)  # no transport: handle_request is pure
        meter.set_address(d.address_to_wire(METER))  # their str form is not reversed
        _SHARED["meter"] = meter
    return _SHARED["meter"]


def ask(meter, request, address=METER):
    """Our request through their stream parser and their meter; their reply
    through our parser."""
    reply = meter.handle_request(their_parse(request))
    if reply is None:
        return None
    frame, _ = our_parse(reply)
    assert frame.address == d.address_to_wire(address)
    return frame


@settings(deadline=None)
@given(numeric_cases, preambles)
def test_their_meter_answers_our_reads(case, pre):
    di, value = case
    meter = their_meter()
    setter = meter.set_00 if di >> 24 == 0 else meter.set_02
    assert setter(di, value)
    frame = ask(meter, d.build_read(METER, di, preamble=pre))
    assert frame.control == 0x91 and frame.di() == di
    assert it.decode_item(frame.di(), frame.item_data()) == pytest.approx(value, abs=1e-9)


@settings(deadline=None)
@given(st.integers(2000, 2099), st.integers(1, 12), st.integers(1, 31), st.integers(0, 6),
       st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), bcd_addresses,
       st.lists(st.integers(0, 9), min_size=4, max_size=4))
def test_their_meter_parameters(y, mo, day, wd, hh, mm, ss, number, nibbles):
    meter = their_meter()
    assert meter.set_04(0x04000101, "%02d%02d%02d%02d" % (y - 2000, mo, day, wd))
    assert meter.set_04(0x04000102, "%02d%02d%02d" % (hh, mm, ss))
    assert meter.set_04(0x04000402, number)
    word = "".join(str(n) for n in nibbles)  # their status words are digit strings
    assert meter.set_04(0x04000502, word)
    read = lambda di: it.decode_item(di, ask(meter, d.build_read(METER, di)).item_data())
    assert read(0x04000101) == (y, mo, day, wd)
    assert read(0x04000102) == (hh, mm, ss)
    assert read(0x04000402) == number
    assert read(0x04000502) == it.decode_item(0x04000502, bytes.fromhex(word)[::-1])


@settings(deadline=None)
@given(st.integers(2000, 2099), st.integers(1, 12), st.integers(1, 31), st.integers(0, 6))
def test_their_meter_takes_our_write(y, mo, day, wd):
    meter = their_meter()
    data = it.encode_item(0x04000101, (y, mo, day, wd))
    frame = ask(meter, d.build_write(METER, 0x04000101, data))  # default password 00000000
    assert frame.control == 0x94 and len(frame.data) == 0
    read = ask(meter, d.build_read(METER, 0x04000101))
    assert it.decode_item(0x04000101, read.item_data()) == (y, mo, day, wd)
    frame = ask(meter, d.build_write(METER, 0x04000101, data, password=b"\x04\x01\x02\x03"))
    assert frame.control == 0xD4 and frame.error_names() == ("unauthorised",)


def test_their_meter_errors_and_address():
    meter = their_meter()
    for di in (0x0201FF00, 0x02FF0000):  # blocks and nonsense: not in their map
        frame = ask(meter, d.build_read(METER, di))
        assert frame.control == 0xD1 and frame.abnormal and frame.error_names() == ("no_such_data",)
    frame = ask(meter, d.build_read_address())
    assert frame.control == 0x93 and d.wire_to_address(frame.data) == METER
    frame = ask(meter, d.build_read("000000000001", 0), "000000000001")  # not its address
    assert frame.abnormal and frame.error_names() == ("other",)
    # broadcast time sync: their meter stays silent, as meters must
    assert ask(meter, d.build_time_sync((2024, 3, 15, 13, 45, 30))) is None


def their_master():
    if "master" not in _SHARED:
        _SHARED["master"] = MeterClientService(None)  # no transport: handle_response is pure
    master = _SHARED["master"]
    master.address = bytearray(d.address_to_wire(METER))
    return master


@settings(deadline=None)
@given(numeric_cases, st.booleans(), preambles)
def test_their_master_reads_our_replies(case, follows, pre):
    di, value = case
    reply = d.build_read_reply(METER, di, it.encode_item(di, value), follows=follows, preamble=pre)
    frame = their_parse(reply)
    assert frame.ctrl_code == (0xB1 if follows else 0x91)
    if follows:
        frame.ctrl_code = 0x91  # their master handles only plain 91 replies
    item = their_master().handle_response(frame)
    assert item.value == pytest.approx(value, abs=1e-9)


@settings(deadline=None)
@given(st.integers(2000, 2099), st.integers(1, 12), st.integers(1, 31), st.integers(0, 6), bcd_addresses)
def test_their_master_reads_our_parameters(y, mo, day, wd, number):
    master = their_master()
    reply = d.build_read_reply(METER, 0x04000101, it.encode_item(0x04000101, (y, mo, day, wd)))
    assert master.handle_response(their_parse(reply)).value == "%02d%02d%02d%02d" % (y - 2000, mo, day, wd)
    reply = d.build_read_reply(METER, 0x04000401, it.encode_item(0x04000401, number))
    assert master.handle_response(their_parse(reply)).value == number
    reply = d.build_reply(METER, d.FN_READ_ADDRESS, d.address_to_wire(number))
    assert master.handle_response(their_parse(reply)) is not None
    assert bytes(master.address) == d.address_to_wire(number)


@settings(deadline=None)
@given(st.integers(1, 127))
def test_their_master_rejects_our_error_replies(err):
    frame = their_parse(d.build_error_reply(METER, d.FN_READ, err))
    assert frame.ctrl_code == 0xD1 and frame.data[0] == err
    assert their_master().handle_response(frame) is None


def test_baud_codes_agree_where_both_define_them():
    from dlt645.model.types.dlt645_type import BaudRateCode

    for baud in (1200, 2400):
        assert it.baud_code(baud) == BaudRateCode[baud]
