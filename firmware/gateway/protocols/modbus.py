# Modbus RTU codec: CRC-16/MODBUS, requests and replies for functions
# 03/04/06/16, exception replies, and register value encoding. Pure: no I/O.
#
# Parsers work on (buf, start, end) of any bytes/bytearray/memoryview and
# never copy the frame: a parsed frame records where its data lies in buf.
# They never raise on wire data; they return a status (OK, EXCEPTION,
# NEED_MORE or one of the BAD_* values). Builders raise ValueError on
# arguments no meter would accept.
import struct
from array import array

from gateway.compat import const

READ_HOLDING = const(0x03)
READ_INPUT = const(0x04)
WRITE_SINGLE = const(0x06)
WRITE_MULTIPLE = const(0x10)

MAX_READ = const(125)  # registers per 03/04 (a 256-byte ADU)
MAX_WRITE = const(123)  # registers per 16

# Parse results. OK and EXCEPTION are complete, well-formed frames.
OK = const(0)
EXCEPTION = const(1)  # a valid exception reply: see .exception_code
NEED_MORE = const(2)  # a prefix of a possible frame: read more bytes
BAD_CRC = const(3)
BAD_UNIT = const(4)  # good CRC, another unit id: a duplicate id or stale reply
BAD_FUNCTION = const(5)  # unexpected or unsupported function code
BAD_LENGTH = const(6)  # byte count wrong for the request (or impossible)
BAD_ECHO = const(7)  # 06/16 reply does not echo the request's address/value
UNSUPPORTED = const(8)  # server side: a CRC-valid request with another function

STATUS_NAMES = (
    "ok",
    "exception",
    "need_more",
    "bad_crc",
    "bad_unit",
    "bad_function",
    "bad_length",
    "bad_echo",
    "unsupported",
)

EXCEPTION_NAMES = {
    1: "illegal_function",
    2: "illegal_data_address",
    3: "illegal_data_value",
    4: "server_device_failure",
    5: "acknowledge",
    6: "server_device_busy",
    7: "negative_acknowledge",
    8: "memory_parity_error",
    0x0A: "gateway_path_unavailable",
    0x0B: "gateway_target_failed_to_respond",
}


def status_name(status):
    if 0 <= status < len(STATUS_NAMES):
        return STATUS_NAMES[status]
    return "status_%d" % status


def exception_name(code):
    return EXCEPTION_NAMES.get(code, "exception_%d" % code)


class ModbusError(Exception):
    """Base of the errors this codec raises (for callers that prefer raising
    over status codes, see Reply.check)."""


class FrameError(ModbusError):
    def __init__(self, status):
        super().__init__(status_name(status))
        self.status = status


class DeviceException(ModbusError):
    """The meter answered with an exception reply."""

    def __init__(self, function, code):
        super().__init__("%s (fn %d)" % (exception_name(code), function))
        self.function = function
        self.code = code
        self.name = exception_name(code)


# --- CRC-16/MODBUS: reflected poly 0xA001, init 0xFFFF, sent low byte first.


def _make_table():
    table = array("H", bytes(512))
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table[n] = crc
    return table


_CRC_TABLE = _make_table()  # built once, 512 bytes


def crc16(buf, start=0, end=None):
    """CRC-16/MODBUS of buf[start:end] as an int (wire order: low byte first)."""
    if end is None:
        end = len(buf)
    table = _CRC_TABLE
    crc = 0xFFFF
    for k in range(start, end):
        crc = (crc >> 8) ^ table[(crc ^ buf[k]) & 0xFF]
    return crc


def crc_ok(buf, start, end):
    """True when the last two bytes of buf[start:end] are the CRC of the rest."""
    if end - start < 4:
        return False
    crc = crc16(buf, start, end - 2)
    return buf[end - 2] == (crc & 0xFF) and buf[end - 1] == (crc >> 8)


# --- building frames. `out`: optional preallocated bytearray; the frame is
# written at its start and a memoryview of it returned (no allocation of the
# frame itself). Without `out` a new bytearray is returned.


def _frame(size, out):
    if out is None:
        return bytearray(size), None
    if len(out) < size:
        raise ValueError("out buffer too small")
    return out, memoryview(out)[:size]


def _finish(buf, n, view):
    crc = crc16(buf, 0, n)
    buf[n] = crc & 0xFF
    buf[n + 1] = crc >> 8
    return buf if view is None else view


def _check_unit(unit, broadcast_ok):
    if not (0 if broadcast_ok else 1) <= unit <= 247:
        raise ValueError("unit id out of range")


def _check_u16(value, what):
    if not 0 <= value <= 0xFFFF:
        raise ValueError(what + " out of range")


def _put_u16(buf, at, value):
    buf[at] = value >> 8
    buf[at + 1] = value & 0xFF


def _u16(buf, at):
    return (buf[at] << 8) | buf[at + 1]


def _head4(unit, function, a, b, out):
    buf, view = _frame(8, out)
    buf[0] = unit
    buf[1] = function
    _put_u16(buf, 2, a)
    _put_u16(buf, 4, b)
    return _finish(buf, 6, view)


def read_request(unit, function, address, count, out=None):
    """03 / 04 read holding / input registers."""
    if function != READ_HOLDING and function != READ_INPUT:
        raise ValueError("read function must be 3 or 4")
    _check_unit(unit, False)
    _check_u16(address, "address")
    if not 1 <= count <= MAX_READ or address + count > 0x10000:
        raise ValueError("register count out of range")
    return _head4(unit, function, address, count, out)


def write_single_request(unit, address, value, out=None):
    """06 write single register (unit 0 = broadcast, no reply comes)."""
    _check_unit(unit, True)
    _check_u16(address, "address")
    _check_u16(value, "value")
    return _head4(unit, WRITE_SINGLE, address, value, out)


def write_multiple_request(unit, address, values, out=None):
    """16 write multiple registers; values: a sequence of 0..65535 ints."""
    _check_unit(unit, True)
    _check_u16(address, "address")
    count = len(values)
    if not 1 <= count <= MAX_WRITE or address + count > 0x10000:
        raise ValueError("register count out of range")
    buf, view = _frame(9 + 2 * count, out)
    buf[0] = unit
    buf[1] = WRITE_MULTIPLE
    _put_u16(buf, 2, address)
    _put_u16(buf, 4, count)
    buf[6] = 2 * count
    at = 7
    for v in values:
        _check_u16(v, "value")
        _put_u16(buf, at, v)
        at += 2
    return _finish(buf, at, view)


# Server side (the meter simulator): replies.


def read_reply(unit, function, data, start=0, end=None, out=None):
    """03 / 04 reply carrying register bytes data[start:end] (even length)."""
    if end is None:
        end = len(data)
    n = end - start
    if function != READ_HOLDING and function != READ_INPUT:
        raise ValueError("read function must be 3 or 4")
    if n < 2 or n > 2 * MAX_READ or n & 1:
        raise ValueError("register data length out of range")
    _check_unit(unit, False)
    buf, view = _frame(5 + n, out)
    buf[0] = unit
    buf[1] = function
    buf[2] = n
    buf[3 : 3 + n] = memoryview(data)[start:end]
    return _finish(buf, 3 + n, view)


def write_single_reply(unit, address, value, out=None):
    _check_unit(unit, False)
    _check_u16(address, "address")
    _check_u16(value, "value")
    return _head4(unit, WRITE_SINGLE, address, value, out)


def write_multiple_reply(unit, address, count, out=None):
    _check_unit(unit, False)
    _check_u16(address, "address")
    _check_u16(count, "count")
    return _head4(unit, WRITE_MULTIPLE, address, count, out)


def exception_reply(unit, function, code, out=None):
    _check_unit(unit, False)
    if not 1 <= function <= 0x7F or not 1 <= code <= 0xFF:
        raise ValueError("function or exception code out of range")
    buf, view = _frame(5, out)
    buf[0] = unit
    buf[1] = function | 0x80
    buf[2] = code
    return _finish(buf, 3, view)


# --- parsing replies (master side)


class Reply:
    """A parsed reply. Reuse one instance per link: parse() overwrites it.

    After OK: for 03/04 the register bytes are buf[data_start:data_end];
    for 06 .address/.value, for 16 .address/.count are set.
    After EXCEPTION: .exception_code. .frame_end is the index just past the
    frame (valid for OK / EXCEPTION / BAD_CRC / BAD_UNIT / BAD_ECHO);
    .skipped counts junk bytes scan() stepped over."""

    def __init__(self):
        self.status = NEED_MORE
        self.unit = 0
        self.function = 0
        self.exception_code = 0
        self.data_start = 0
        self.data_end = 0
        self.frame_end = 0
        self.address = 0
        self.value = 0
        self.count = 0
        self.skipped = 0

    def parse(self, buf, start, end, unit, function, count=0, address=-1, value=-1):
        """Parse the reply to a request (unit, function) at buf[start:end].

        count: registers requested (03/04: byte count must be 2*count;
        16: echoed count); 0 accepts any. address / value (06, 16): expected
        echo, -1 accepts any. Returns and stores the status."""
        self.skipped = 0
        self.status = st = self._parse(buf, start, end, unit, function, count, address, value)
        return st

    def _parse(self, buf, i, end, unit, function, count, address, value):
        n = end - i
        if n < 2:
            return NEED_MORE
        fn = buf[i + 1]
        self.unit = buf[i]
        self.function = fn
        if fn == function | 0x80:
            size = 5
        elif fn != function:
            return BAD_FUNCTION
        elif fn == READ_HOLDING or fn == READ_INPUT:
            if n < 3:
                return NEED_MORE
            bc = buf[i + 2]
            if bc == 0 or bc & 1 or bc > 2 * MAX_READ or (count and bc != 2 * count):
                return BAD_LENGTH
            size = 5 + bc
        elif fn == WRITE_SINGLE or fn == WRITE_MULTIPLE:
            size = 8
        else:
            return BAD_FUNCTION
        if n < size:
            return NEED_MORE
        last = i + size
        self.frame_end = last
        if not crc_ok(buf, i, last):
            return BAD_CRC
        if buf[i] != unit:
            return BAD_UNIT
        if size == 5:
            self.exception_code = buf[i + 2]
            return EXCEPTION
        if fn == READ_HOLDING or fn == READ_INPUT:
            self.data_start = i + 3
            self.data_end = last - 2
            self.count = (size - 5) >> 1
            return OK
        self.address = a = _u16(buf, i + 2)
        v = _u16(buf, i + 4)
        if address >= 0 and a != address:
            return BAD_ECHO
        if fn == WRITE_SINGLE:
            self.value = v
            if value >= 0 and v != value:
                return BAD_ECHO
        else:
            self.count = v
            if count and v != count:
                return BAD_ECHO
        return OK

    def scan(self, buf, start, end, unit, function, count=0, address=-1, value=-1):
        """Like parse, but steps over leading junk (noise, our own echo on a
        half-duplex bus). OK / EXCEPTION if a frame starts anywhere; else
        NEED_MORE if some offset could still become one; else the status at
        start."""
        st = self._parse(buf, start, end, unit, function, count, address, value)
        if st == OK or st == EXCEPTION:
            self.skipped = 0
            self.status = st
            return st
        more = st == NEED_MORE
        for i in range(start + 1, end):
            if buf[i] != unit:
                continue  # a reply always starts with our unit id
            st = self._parse(buf, i, end, unit, function, count, address, value)
            if st == OK or st == EXCEPTION:
                self.skipped = i - start
                self.status = st
                return st
            if st == NEED_MORE:
                more = True
        # nothing complete: report NEED_MORE, or what is wrong at start
        # (parsed again so the stored fields describe that frame)
        st = NEED_MORE if more else self._parse(buf, start, end, unit, function, count, address, value)
        self.skipped = 0
        self.status = st
        return st

    def check(self):
        """Raise FrameError / DeviceException unless the status is OK."""
        if self.status == EXCEPTION:
            raise DeviceException(self.function & 0x7F, self.exception_code)
        if self.status != OK:
            raise FrameError(self.status)

    def registers(self, buf):
        """The 03/04 registers as a list of ints (convenience, allocates)."""
        return [_u16(buf, k) for k in range(self.data_start, self.data_end, 2)]


# --- parsing requests (server side, the simulator)


class Request:
    """A parsed request. After OK: .unit .function .address and
    03/04: .count; 06: .value; 16: .count and values in
    buf[data_start:data_end]. .error_code is the exception code a server
    must answer with (3 illegal data value for a bad count), else 0.
    Unit 0 is broadcast: a server acts on writes and never replies."""

    def __init__(self):
        self.status = NEED_MORE
        self.unit = 0
        self.function = 0
        self.address = 0
        self.count = 0
        self.value = 0
        self.data_start = 0
        self.data_end = 0
        self.frame_end = 0
        self.error_code = 0

    def parse(self, buf, start, end):
        """Parse buf[start:end]. RTU servers split frames on line silence, so
        for a function this codec does not know, the whole span is taken as
        one frame: UNSUPPORTED if its CRC holds (answer illegal function),
        else BAD_FUNCTION."""
        self.status = st = self._parse(buf, start, end)
        return st

    def _parse(self, buf, i, end):
        n = end - i
        self.error_code = 0
        if n < 2:
            return NEED_MORE
        self.unit = buf[i]
        self.function = fn = buf[i + 1]
        if fn == READ_HOLDING or fn == READ_INPUT or fn == WRITE_SINGLE:
            size = 8
        elif fn == WRITE_MULTIPLE:
            if n < 7:
                return NEED_MORE
            size = 9 + buf[i + 6]
        else:
            if n >= 4 and crc_ok(buf, i, end):
                self.frame_end = end
                return UNSUPPORTED
            return BAD_FUNCTION
        if n < size:
            return NEED_MORE
        last = i + size
        self.frame_end = last
        if not crc_ok(buf, i, last):
            return BAD_CRC
        self.address = a = _u16(buf, i + 2)
        v = _u16(buf, i + 4)
        if fn == WRITE_SINGLE:
            self.value = v
            return OK
        self.count = v
        if fn == WRITE_MULTIPLE:
            self.data_start = i + 7
            self.data_end = last - 2
            if not 1 <= v <= MAX_WRITE or buf[i + 6] != 2 * v:
                self.error_code = 3
        elif not 1 <= v <= MAX_READ:
            self.error_code = 3
        if not self.error_code and a + v > 0x10000:
            self.error_code = 2
        return OK

    def values(self, buf):
        """16: the register values as a list of ints (allocates)."""
        return [_u16(buf, k) for k in range(self.data_start, self.data_end - 1, 2)]


# --- register values. Word orders name the bytes of a 32-bit value, A most
# significant, as they appear on the wire: ABCD big-endian words (Eastron,
# CHINT), CDAB word-swapped; BADC and DCBA byte-swapped variants also work.

ABCD = "ABCD"
CDAB = "CDAB"
BADC = "BADC"
DCBA = "DCBA"
WORD_ORDERS = (ABCD, CDAB, BADC, DCBA)

_scratch = bytearray(4)  # decode is synchronous, so one shared buffer is safe


def _order(word_order):
    if word_order == ABCD:
        return 0
    if word_order == CDAB:
        return 1
    if word_order == BADC:
        return 2
    if word_order == DCBA:
        return 3
    raise ValueError("word order must be ABCD, CDAB, BADC or DCBA")


# _PERM[o][k]: wire byte that holds big-endian byte k (its own inverse)
_PERM = ((0, 1, 2, 3), (2, 3, 0, 1), (1, 0, 3, 2), (3, 2, 1, 0))


def _gather(buf, at, word_order):
    o = _order(word_order)
    if o == 0:
        return buf, at
    p = _PERM[o]
    s = _scratch
    s[0] = buf[at + p[0]]
    s[1] = buf[at + p[1]]
    s[2] = buf[at + p[2]]
    s[3] = buf[at + p[3]]
    return s, 0


def decode_float32(buf, at, word_order=ABCD):
    src, k = _gather(buf, at, word_order)
    return struct.unpack_from(">f", src, k)[0]


def decode_uint32(buf, at, word_order=ABCD):
    src, k = _gather(buf, at, word_order)
    return (src[k] << 24) | (src[k + 1] << 16) | (src[k + 2] << 8) | src[k + 3]


def decode_int32(buf, at, word_order=ABCD):
    v = decode_uint32(buf, at, word_order)
    return v - 0x100000000 if v & 0x80000000 else v


def decode_uint16(buf, at, word_order=ABCD):
    # 16-bit registers are always big-endian on the wire; word_order is
    # accepted so every decoder has the same signature
    return (buf[at] << 8) | buf[at + 1]


def decode_int16(buf, at, word_order=ABCD):
    v = (buf[at] << 8) | buf[at + 1]
    return v - 0x10000 if v & 0x8000 else v


DECODERS = {
    "float32": decode_float32,
    "uint32": decode_uint32,
    "int32": decode_int32,
    "uint16": decode_uint16,
    "int16": decode_int16,
}
SIZES = {"float32": 4, "uint32": 4, "int32": 4, "uint16": 2, "int16": 2}


def _scatter(big, word_order, out, at):
    if out is None:
        out = bytearray(len(big))
        at = 0
    if len(big) == 2:
        out[at] = big[0]
        out[at + 1] = big[1]
        return out
    p = _PERM[_order(word_order)]
    for k in range(4):
        out[at + p[k]] = big[k]
    return out


def encode_float32(value, word_order=ABCD, out=None, at=0):
    """4 wire bytes of value as IEEE 754 single (written into out[at:] when
    out is given; returns out or a new bytearray)."""
    return _scatter(struct.pack(">f", value), word_order, out, at)


def encode_uint32(value, word_order=ABCD, out=None, at=0):
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError("uint32 out of range")
    return _scatter(struct.pack(">I", value), word_order, out, at)


def encode_int32(value, word_order=ABCD, out=None, at=0):
    if not -0x80000000 <= value <= 0x7FFFFFFF:
        raise ValueError("int32 out of range")
    return _scatter(struct.pack(">I", value & 0xFFFFFFFF), word_order, out, at)


def encode_uint16(value, word_order=ABCD, out=None, at=0):
    if not 0 <= value <= 0xFFFF:
        raise ValueError("uint16 out of range")
    return _scatter(struct.pack(">H", value), word_order, out, at)


def encode_int16(value, word_order=ABCD, out=None, at=0):
    if not -0x8000 <= value <= 0x7FFF:
        raise ValueError("int16 out of range")
    return _scatter(struct.pack(">H", value & 0xFFFF), word_order, out, at)


ENCODERS = {
    "float32": encode_float32,
    "uint32": encode_uint32,
    "int32": encode_int32,
    "uint16": encode_uint16,
    "int16": encode_int16,
}
