# DL/T 645 framing (2007 and 1997 share it), 2007 request/reply builders and
# the one stream parser. Pure: no I/O.
#
#   [FE x 0..4] 68 A0..A5 68 C L DATA(+0x33 each) CS 16
#
# parse(buf, start, end) never raises on wire data and never loops forever:
# it returns (status, frame_or_reason, next_index, junk), status FRAME,
# NEED_MORE or BAD. Builders raise DLT645Error subclasses (ValueError) on
# arguments no meter would accept.
from gateway.compat import const

# Parse statuses.
FRAME = const(0)
NEED_MORE = const(1)
BAD = const(2)

# Reasons that come with BAD.
BAD_START2 = const(1)  # no second 68 seven bytes after the first
BAD_LENGTH = const(2)  # L above the caller's limit
BAD_CHECKSUM = const(3)
BAD_END = const(4)  # checksum right, but no 16 after it

STATUS_NAMES = ("frame", "need_more", "bad")
REASON_NAMES = ("", "no_second_start", "length", "checksum", "no_end")

# Function codes (control bits 4..0). 2007 unless marked.
FN_BROADCAST_TIME = const(0x08)
FN_READ = const(0x11)
FN_READ_NEXT = const(0x12)
FN_READ_ADDRESS = const(0x13)
FN_WRITE = const(0x14)
FN_WRITE_ADDRESS = const(0x15)
FN_FREEZE = const(0x16)
FN_CHANGE_BAUD = const(0x17)
FN_CHANGE_PASSWORD = const(0x18)
FN_CLEAR_DEMAND = const(0x19)
FN_CLEAR_METER = const(0x1A)
FN_CLEAR_EVENTS = const(0x1B)
FN_RELAY = const(0x1C)

# Control byte bits.
C_REPLY = const(0x80)
C_ABNORMAL = const(0x40)
C_FOLLOWS = const(0x20)
C_FUNCTION = const(0x1F)

PREAMBLE = const(4)  # FE wake-up bytes before a request
MAX_DATA = const(200)  # read replies carry at most 200 data bytes
OVERHEAD = const(12)  # 68 + 6 address + 68 + C + L + CS + 16

BROADCAST = b"\x99\x99\x99\x99\x99\x99"  # time sync, freeze: nobody answers
WILDCARD = b"\xaa\xaa\xaa\xaa\xaa\xaa"  # fn 13: the only meter on the bus answers

# ERR byte of an abnormal reply, bit by bit.
ERROR_NAMES = (
    "other",
    "no_such_data",
    "unauthorised",
    "baud_fixed",
    "too_many_year_zones",
    "too_many_day_periods",
    "too_many_tariffs",
)


class DLT645Error(ValueError):
    """Base of every error the DL/T 645 codecs raise."""


class AddressError(DLT645Error):
    pass


class BuildError(DLT645Error):
    pass


def status_name(status):
    if 0 <= status < len(STATUS_NAMES):
        return STATUS_NAMES[status]
    return "status_%d" % status


def reason_name(reason):
    if 0 < reason < len(REASON_NAMES):
        return REASON_NAMES[reason]
    return "reason_%d" % reason


def error_names(err, names=ERROR_NAMES):
    """Names of the bits set in an ERR byte (unknown bits as 'bitN')."""
    out = []
    for bit in range(8):
        if err & (1 << bit):
            out.append(names[bit] if bit < len(names) else "bit%d" % bit)
    return tuple(out)


# ---- addresses: 12 BCD digits, low byte first on the wire -------------------


def _nibble(ch):
    c = ord(ch)
    if 48 <= c <= 57:
        return c - 48
    if c == 65 or c == 97:  # 'A' / 'a': the wildcard nibble
        return 10
    raise AddressError("address digit %r" % ch)


def address_to_wire(address):
    """'202107072529' -> b'\\x29\\x25\\x07\\x07\\x21\\x20'. Short numbers get
    leading zeros; 'A' digits stand for the AA wildcard. 6 bytes pass as is."""
    if isinstance(address, (bytes, bytearray, memoryview)):
        if len(address) != 6:
            raise AddressError("address needs 6 bytes, got %d" % len(address))
        return bytes(address)
    if isinstance(address, int):
        if address < 0 or address > 999999999999:
            raise AddressError("address %r" % address)
        address = "%012d" % address
    n = len(address)
    if n == 0 or n > 12:
        raise AddressError("address needs 1..12 digits, got %r" % address)
    out = bytearray(6)
    pos = 12 - n  # leading zeros
    for k in range(n):
        v = _nibble(address[k])
        p = pos + k  # digit position, 0 = most significant
        i = 5 - (p >> 1)
        if p & 1:
            out[i] |= v
        else:
            out[i] |= v << 4
    return bytes(out)


_HEX = "0123456789ABCDEF"


def wire_to_address(buf, start=0):
    """6 wire bytes -> 12-character string, most significant digit first.
    Non-decimal nibbles show as hex ('AAAAAAAAAAAA' for the wildcard)."""
    chars = []
    for i in range(start + 5, start - 1, -1):
        b = buf[i]
        chars.append(_HEX[b >> 4])
        chars.append(_HEX[b & 15])
    return "".join(chars)


# ---- builders ----------------------------------------------------------------


def build_frame(address, control, data=b"", preamble=PREAMBLE):
    """Any frame: address (see address_to_wire), control byte, plain data
    (the +0x33 is added here), preamble FE bytes. Returns a bytearray."""
    wire = address_to_wire(address)
    n = len(data)
    if n > 255:
        raise BuildError("data longer than 255 bytes")
    if control < 0 or control > 255:
        raise BuildError("control byte %r" % control)
    if preamble < 0 or preamble > 4:
        raise BuildError("preamble must be 0..4 FE bytes")
    out = bytearray(preamble + OVERHEAD + n)
    for i in range(preamble):
        out[i] = 0xFE
    p = preamble
    out[p] = 0x68
    out[p + 1 : p + 7] = wire
    out[p + 7] = 0x68
    out[p + 8] = control
    out[p + 9] = n
    for i in range(n):
        out[p + 10 + i] = (data[i] + 0x33) & 0xFF
    cs = 0
    for i in range(p, p + 10 + n):
        cs += out[i]
    out[p + 10 + n] = cs & 0xFF
    out[p + 11 + n] = 0x16
    return out


def di_bytes(di, size=4):
    """DI (int, or hex str like '02010100') -> its wire bytes, low byte first."""
    if isinstance(di, str):
        try:
            di = int(di, 16)
        except ValueError:
            raise BuildError("data identifier %r" % di)
    if di < 0 or di >> (8 * size):
        raise BuildError("data identifier %r does not fit %d bytes" % (di, size))
    out = bytearray(size)
    for i in range(size):
        out[i] = (di >> (8 * i)) & 0xFF
    return out


def build_read(address, di, count=None, preamble=PREAMBLE):
    """fn 11: read one item or block (e.g. 0201FF00); count is the optional
    block count byte."""
    data = di_bytes(di)
    if count is not None:
        if count < 0 or count > 255:
            raise BuildError("block count %r" % count)
        data.append(count)
    return build_frame(address, FN_READ, data, preamble)


def build_read_next(address, di, seq, preamble=PREAMBLE):
    """fn 12: the follow-up frame number seq of a read that answered B1/B2."""
    if seq < 0 or seq > 255:
        raise BuildError("sequence %r" % seq)
    data = di_bytes(di)
    data.append(seq)
    return build_frame(address, FN_READ_NEXT, data, preamble)


def build_read_address(preamble=PREAMBLE):
    """fn 13 to AA x6, L=0: the only meter on the bus answers its address."""
    return build_frame(WILDCARD, FN_READ_ADDRESS, b"", preamble)


def _bcd2(v, lo, hi, what):
    if not isinstance(v, int) or v < lo or v > hi:
        raise BuildError("%s %r out of %d..%d" % (what, v, lo, hi))
    return ((v // 10) << 4) | (v % 10)


def time_sync_data(when):
    """(year, month, day, hour, minute, second[, ...]) -> the 6 data bytes of
    fn 08, YYMMDDhhmmss sent low byte first (seconds first on the wire)."""
    y = when[0]
    if y >= 2000:
        y -= 2000
    return bytes(
        (
            _bcd2(when[5], 0, 59, "second"),
            _bcd2(when[4], 0, 59, "minute"),
            _bcd2(when[3], 0, 23, "hour"),
            _bcd2(when[2], 1, 31, "day"),
            _bcd2(when[1], 1, 12, "month"),
            _bcd2(y, 0, 99, "year"),
        )
    )


def decode_time_sync(data):
    """Inverse of time_sync_data: (year, month, day, hour, minute, second).
    Raises DLT645Error on a wrong length or a non-BCD byte."""
    if len(data) != 6:
        raise DLT645Error("time sync data needs 6 bytes")
    v = []
    for i in range(5, -1, -1):
        b = data[i]
        if (b >> 4) > 9 or (b & 15) > 9:
            raise DLT645Error("time sync byte %02X is not BCD" % b)
        v.append((b >> 4) * 10 + (b & 15))
    return (2000 + v[0], v[1], v[2], v[3], v[4], v[5])


def build_time_sync(when, preamble=PREAMBLE):
    """fn 08 broadcast to 99 x6 (meters never answer). when: like
    time.localtime(): (year, month, day, hour, minute, second, ...)."""
    return build_frame(BROADCAST, FN_BROADCAST_TIME, time_sync_data(when), preamble)


def build_write(address, di, data, password=b"\x00\x00\x00\x00", operator=b"\x00\x00\x00\x00", preamble=PREAMBLE):
    """fn 14: DI + password (4 bytes: level then P0..P2, as the meter wants
    them on the wire) + operator code (4) + item data (see encode_item)."""
    if len(password) != 4 or len(operator) != 4:
        raise BuildError("password and operator code need 4 bytes each")
    body = di_bytes(di)
    body.extend(password)
    body.extend(operator)
    body.extend(data)
    return build_frame(address, FN_WRITE, body, preamble)


def build_reply(address, function, data=b"", follows=False, preamble=PREAMBLE):
    """A normal reply (the simulator's side): control 80|fn, +20 when more
    frames follow (B1, B2)."""
    control = C_REPLY | (function & C_FUNCTION)
    if follows:
        control |= C_FOLLOWS
    return build_frame(address, control, data, preamble)


def build_read_reply(address, di, item_data, follows=False, seq=None, preamble=PREAMBLE):
    """91/B1 (seq None) or 92/B2 (seq = the follow-up number) with DI + data."""
    body = di_bytes(di)
    body.extend(item_data)
    function = FN_READ
    if seq is not None:
        body.append(seq & 0xFF)
        function = FN_READ_NEXT
    return build_reply(address, function, body, follows, preamble)


def build_error_reply(address, function, err, preamble=PREAMBLE):
    """Abnormal reply C0|fn (D1 for a read) carrying one ERR byte."""
    if err < 0 or err > 255:
        raise BuildError("ERR byte %r" % err)
    control = C_REPLY | C_ABNORMAL | (function & C_FUNCTION)
    return build_frame(address, control, bytes((err,)), preamble)


# ---- parser ------------------------------------------------------------------

# Functions whose data starts with a DI, and its size: 2007 4 bytes, 1997 2.
_DI_SIZE = {0x11: 4, 0x12: 4, 0x14: 4, 0x01: 2, 0x02: 2, 0x03: 2, 0x04: 2}


class Frame:
    """One parsed frame. data holds the decoded (-0x33) data bytes: a fresh
    bytearray, or a memoryview of the caller's scratch buffer."""

    def __init__(self, address, control, data, start, size):
        self.address = address  # 6 wire bytes (see wire_to_address)
        self.control = control
        self.function = control & C_FUNCTION
        self.is_reply = bool(control & C_REPLY)
        self.abnormal = bool(control & C_ABNORMAL)
        self.follows = bool(control & C_FOLLOWS)
        self.data = data
        self.start = start  # index of the first 68 in the parsed buffer
        self.size = size  # bytes from that 68 through the 16

    def address_str(self):
        return wire_to_address(self.address)

    @property
    def error(self):
        """The ERR byte of an abnormal reply, else None."""
        if self.abnormal and self.is_reply and len(self.data) >= 1:
            return self.data[0]
        return None

    def error_names(self):
        err = self.error
        return () if err is None else error_names(err)

    def di_size(self):
        """4 for 2007 read/write functions, 2 for 1997 ones, 0 otherwise."""
        if self.abnormal:
            return 0
        return _DI_SIZE.get(self.function, 0)

    def di(self):
        """The data identifier at the front of the data, or None."""
        n = self.di_size()
        d = self.data
        if n == 0 or len(d) < n:
            return None
        v = 0
        for i in range(n - 1, -1, -1):
            v = (v << 8) | d[i]
        return v

    def item_data(self):
        """The item bytes after the DI (for 92/B2 also without the trailing
        sequence byte): what decode_item wants. None when there is no DI."""
        n = self.di_size()
        d = self.data
        if n == 0 or len(d) < n:
            return None
        end = len(d)
        if self.function == FN_READ_NEXT and self.is_reply and end > n:
            end -= 1
        return memoryview(d)[n:end]

    @property
    def seq(self):
        """Sequence byte of a fn 12 request or its 92/B2 reply, else None."""
        d = self.data
        if self.function == FN_READ_NEXT and not self.abnormal and len(d) >= 5:
            return d[4] if not self.is_reply else d[len(d) - 1]
        return None

    def __repr__(self):
        return "Frame(%s C=%02X L=%d)" % (self.address_str(), self.control, len(self.data))


def _check_at(buf, i, n, max_data):
    """Frame candidate at buf[i] == 0x68: (FRAME, size), (NEED_MORE, 0) or
    (BAD, reason)."""
    if i + 7 < n and buf[i + 7] != 0x68:
        return BAD, BAD_START2
    if i + 10 > n:
        return NEED_MORE, 0
    length = buf[i + 9]
    if length > max_data:
        return BAD, BAD_LENGTH
    cs_at = i + 10 + length
    if cs_at >= n:
        return NEED_MORE, 0
    cs = 0
    for k in range(i, cs_at):
        cs += buf[k]
    if (cs & 0xFF) != buf[cs_at]:
        return BAD, BAD_CHECKSUM
    if cs_at + 1 >= n:
        return NEED_MORE, 0
    if buf[cs_at + 1] != 0x16:
        return BAD, BAD_END
    return FRAME, OVERHEAD + length


def parse(buf, start=0, end=None, max_data=MAX_DATA, scratch=None):
    """Find the next frame in buf[start:end] (bytes, bytearray, memoryview).

    Returns (status, info, next_index, junk):
      FRAME:     info is a Frame, next_index is just past its 16.
      NEED_MORE: info None; keep buf[next_index:end] and read more bytes
                 (next_index == end when nothing worth keeping was seen).
      BAD:       info is the reason (BAD_*); resume at next_index, one past
                 the rejected 68, so a real frame inside it is still found.
    junk counts the non-FE bytes skipped before the frame or candidate (FE
    wake-up bytes are not junk). After a BAD the rest of the rejected frame is
    scanned again and may count as junk then.
    scratch: optional bytearray (>= L bytes) to decode the data into instead
    of allocating; the frame's data then views it and is valid until reuse.
    """
    n = len(buf) if end is None else end
    if n > len(buf):
        n = len(buf)
    if max_data > 255:
        max_data = 255
    i = start
    junk = 0
    while i < n:
        b = buf[i]
        if b == 0x68:
            break
        if b != 0xFE:
            junk += 1
        i += 1
    if i >= n:
        return NEED_MORE, None, n if n > start else start, junk
    status, val = _check_at(buf, i, n, max_data)
    if status == BAD:
        return BAD, val, i + 1, junk
    first = i
    if status == NEED_MORE:
        # A stale or false 68 must not hide a complete frame further on
        # (noise before a reply): look for one, else wait at this candidate.
        j = i + 1
        extra = 0
        found = False
        while j + OVERHEAD <= n:
            b = buf[j]
            if b == 0x68:
                status, val = _check_at(buf, j, n, max_data)
                if status == FRAME:
                    found = True
                    break
            if b != 0xFE:
                extra += 1
            j += 1
        if not found:
            return NEED_MORE, None, first, junk
        i = j
        junk += extra + 1  # the stale 68 and everything after it
    size = val
    length = size - OVERHEAD
    if scratch is not None and len(scratch) >= length:
        data = memoryview(scratch)[:length]
    else:
        data = bytearray(length)
    d = i + 10
    for k in range(length):
        data[k] = (buf[d + k] - 0x33) & 0xFF
    frame = Frame(bytes(buf[i + 1 : i + 7]), buf[i + 8], data, i, size)
    return FRAME, frame, i + size, junk
