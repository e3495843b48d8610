"""Our Modbus RTU codec against pymodbus, an implementation we did not write:
frames we build must decode in pymodbus's RTU framer, frames pymodbus builds
must parse in ours, for 03/04/06/16 requests and replies and exceptions."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from gateway.protocols import modbus as mb
from gateway.protocols import modbus_maps as maps
from test_modbus import CRC_VECTORS

SERVER = FramerRTU(DecodePDU(is_server=True))  # decodes requests
CLIENT = FramerRTU(DecodePDU(is_server=False))  # decodes replies

units = st.integers(1, 247)
addresses = st.integers(0, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
read_fns = st.sampled_from([3, 4])
exc_codes = st.sampled_from([1, 2, 3, 4, 5, 6, 8, 0x0A, 0x0B])
REQ = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}
RESP = {3: ReadHoldingRegistersResponse, 4: ReadInputRegistersResponse}


def their_decode(framer, frame):
    used, pdu = framer.handleFrame(bytes(frame), 0, 0)
    assert used == len(frame) and pdu is not None, bytes(frame).hex(" ")
    return pdu


def their_crc_bytes(body):
    return FramerRTU.compute_CRC(body).to_bytes(2, "big")  # wire order


def test_crc_vectors_in_the_dual_runtime_tests_agree_with_pymodbus():
    for body, crc in CRC_VECTORS:
        assert their_crc_bytes(bytes.fromhex(body)) == bytes.fromhex(crc)


@given(st.binary(max_size=300))
def test_crc_matches(body):
    ours = mb.crc16(body)
    assert bytes((ours & 0xFF, ours >> 8)) == their_crc_bytes(body)


# --- requests


@given(units, read_fns, st.integers(1, 125), st.data())
def test_read_request_ours_to_theirs(unit, fn, count, data):
    address = data.draw(st.integers(0, 0x10000 - count))
    pdu = their_decode(SERVER, mb.read_request(unit, fn, address, count))
    assert isinstance(pdu, REQ[fn])
    assert (pdu.dev_id, pdu.address, pdu.count) == (unit, address, count)


@given(units, read_fns, addresses, st.integers(1, 125))
def test_read_request_theirs_to_ours(unit, fn, address, count):
    frame = CLIENT.buildFrame(REQ[fn](address=address, count=count, dev_id=unit))
    q = mb.Request()
    assert q.parse(frame, 0, len(frame)) == mb.OK
    assert (q.unit, q.function, q.address, q.count) == (unit, fn, address, count)
    assert q.error_code == (2 if address + count > 0x10000 else 0)
    if not q.error_code:
        assert bytes(mb.read_request(unit, fn, address, count)) == frame


@given(st.integers(0, 247), addresses, u16)
def test_write_single_request_both_ways(unit, address, value):
    ours = bytes(mb.write_single_request(unit, address, value))
    theirs = CLIENT.buildFrame(WriteSingleRegisterRequest(address=address, registers=[value], dev_id=unit))
    assert ours == theirs
    pdu = their_decode(SERVER, ours)
    assert (pdu.function_code, pdu.dev_id, pdu.address, pdu.registers) == (6, unit, address, [value])
    q = mb.Request()
    assert q.parse(theirs, 0, len(theirs)) == mb.OK
    assert (q.unit, q.function, q.address, q.value) == (unit, 6, address, value)


@given(st.integers(0, 247), st.lists(u16, min_size=1, max_size=123), st.data())
def test_write_multiple_request_both_ways(unit, values, data):
    address = data.draw(st.integers(0, 0x10000 - len(values)))
    ours = bytes(mb.write_multiple_request(unit, address, values))
    pdu = their_decode(SERVER, ours)
    assert isinstance(pdu, WriteMultipleRegistersRequest)
    assert (pdu.dev_id, pdu.address, pdu.count, list(pdu.registers)) == (unit, address, len(values), values)
    theirs = CLIENT.buildFrame(WriteMultipleRegistersRequest(address=address, registers=values, dev_id=unit))
    assert theirs == ours
    q = mb.Request()
    assert q.parse(theirs, 0, len(theirs)) == mb.OK
    assert (q.unit, q.address, q.count, q.values(theirs), q.error_code) == (unit, address, len(values), values, 0)


# --- replies


@given(units, read_fns, st.lists(u16, min_size=1, max_size=125))
def test_read_reply_both_ways(unit, fn, registers):
    data = b"".join(struct.pack(">H", v) for v in registers)
    ours = bytes(mb.read_reply(unit, fn, data))
    pdu = their_decode(CLIENT, ours)
    assert isinstance(pdu, RESP[fn])
    assert (pdu.dev_id, list(pdu.registers)) == (unit, registers)
    theirs = SERVER.buildFrame(RESP[fn](registers=registers, dev_id=unit))
    assert theirs == ours
    r = mb.Reply()
    assert r.parse(theirs, 0, len(theirs), unit, fn, len(registers)) == mb.OK
    assert r.registers(theirs) == registers


@given(units, addresses, u16)
def test_write_single_reply_both_ways(unit, address, value):
    ours = bytes(mb.write_single_reply(unit, address, value))
    pdu = their_decode(CLIENT, ours)
    assert isinstance(pdu, WriteSingleRegisterResponse)
    assert (pdu.dev_id, pdu.address, pdu.registers) == (unit, address, [value])
    theirs = SERVER.buildFrame(WriteSingleRegisterResponse(address=address, registers=[value], dev_id=unit))
    r = mb.Reply()
    assert r.parse(theirs, 0, len(theirs), unit, 6, 0, address, value) == mb.OK


@given(units, addresses, st.integers(1, 123))
def test_write_multiple_reply_both_ways(unit, address, count):
    ours = bytes(mb.write_multiple_reply(unit, address, count))
    pdu = their_decode(CLIENT, ours)
    assert isinstance(pdu, WriteMultipleRegistersResponse)
    assert (pdu.dev_id, pdu.address, pdu.count) == (unit, address, count)
    theirs = SERVER.buildFrame(WriteMultipleRegistersResponse(address=address, count=count, dev_id=unit))
    r = mb.Reply()
    assert r.parse(theirs, 0, len(theirs), unit, 16, count, address) == mb.OK


@given(units, st.sampled_from([3, 4, 6, 16]), exc_codes)
def test_exception_reply_both_ways(unit, fn, code):
    ours = bytes(mb.exception_reply(unit, fn, code))
    pdu = their_decode(CLIENT, ours)
    assert isinstance(pdu, ExceptionResponse)
    assert (pdu.dev_id, pdu.function_code, pdu.exception_code) == (unit, fn | 0x80, code)
    exc = ExceptionResponse(fn, code)
    exc.dev_id = unit
    theirs = SERVER.buildFrame(exc)
    assert theirs == ours
    r = mb.Reply()
    assert r.parse(theirs, 0, len(theirs), unit, fn) == mb.EXCEPTION
    assert r.exception_code == code
    with pytest.raises(mb.DeviceException) as info:
        r.check()
    assert info.value.name == mb.EXCEPTION_NAMES[code]


# --- register values

finite32 = st.floats(width=32, allow_nan=False)
ORDER = {"ABCD": "big", "CDAB": "little"}  # pymodbus's word_order


@given(finite32, st.sampled_from(["ABCD", "CDAB"]))
def test_float32_matches_struct_and_pymodbus(value, order):
    big = struct.pack(">f", value)
    wire = big if order == "ABCD" else big[2:] + big[:2]
    assert mb.decode_float32(wire, 0, order) == value  # exact: CPython is double
    assert bytes(mb.encode_float32(value, order)) == wire
    regs = [int.from_bytes(wire[0:2], "big"), int.from_bytes(wire[2:4], "big")]
    theirs = ModbusClientMixin.convert_from_registers(regs, ModbusClientMixin.DATATYPE.FLOAT32, ORDER[order])
    assert theirs == value
    assert ModbusClientMixin.convert_to_registers(value, ModbusClientMixin.DATATYPE.FLOAT32, ORDER[order]) == regs


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**32 - 1), st.sampled_from(["ABCD", "CDAB"]))
def test_int32_matches_pymodbus(signed, unsigned, order):
    dt = ModbusClientMixin.DATATYPE
    for value, kind, dec, enc in (
        (signed, dt.INT32, mb.decode_int32, mb.encode_int32),
        (unsigned, dt.UINT32, mb.decode_uint32, mb.encode_uint32),
    ):
        regs = ModbusClientMixin.convert_to_registers(value, kind, ORDER[order])
        wire = b"".join(struct.pack(">H", v) for v in regs)
        assert dec(wire, 0, order) == value
        assert bytes(enc(value, order)) == wire


@given(st.integers(-0x8000, 0x7FFF))
def test_int16_matches_struct(value):
    wire = struct.pack(">h", value)
    assert mb.decode_int16(wire, 0) == value
    assert mb.decode_uint16(wire, 0) == struct.unpack(">H", wire)[0]


# --- maps through pymodbus: a reply built by pymodbus decodes to the values

@settings(max_examples=50)
@given(st.dictionaries(st.sampled_from(maps.quantities("sdm630")), finite32.filter(lambda v: abs(v) < 1e30), min_size=1))
def test_sdm630_plan_decodes_pymodbus_replies(values):
    scale = {p[0]: p[3] for p in maps.model("sdm630")["points"]}
    regs_by_address = {}
    for q, reg, _typ, _s, _u in maps.model("sdm630")["points"]:
        if q in values:
            raw = struct.pack(">f", values[q])
            regs_by_address[reg] = int.from_bytes(raw[:2], "big")
            regs_by_address[reg + 1] = int.from_bytes(raw[2:], "big")
    got = {}
    for read in maps.plan("sdm630", list(values)):
        request = bytes(read.request(1))
        pdu = their_decode(SERVER, request)
        registers = [regs_by_address.get(pdu.address + k, 0) for k in range(pdu.count)]
        reply = SERVER.buildFrame(ReadInputRegistersResponse(registers=registers, dev_id=1))
        r = mb.Reply()
        assert r.parse(reply, 0, len(reply), 1, 4, read.count) == mb.OK
        maps.decode(read, reply, r.data_start, r.data_end, got)
    assert set(got) == set(values)
    for q, v in values.items():
        assert got[q] == pytest.approx(v * scale[q], rel=1e-12)
