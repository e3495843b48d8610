# DL/T 645-1997 on top of the shared framing in dlt645.py: the same parser
# reads both versions; only the functions, the 2-byte DIs and the write
# layout differ. Also: which version a meter speaks, from its reply.
from gateway.compat import const
from gateway.protocols import dlt645 as _f
from gateway.protocols.dlt645 import BuildError, PREAMBLE

FN_READ = const(0x01)
FN_READ_NEXT = const(0x02)
FN_REREAD = const(0x03)
FN_WRITE = const(0x04)
FN_BROADCAST_TIME = const(0x08)
FN_WRITE_ADDRESS = const(0x0A)
FN_CHANGE_BAUD = const(0x0C)
FN_CHANGE_PASSWORD = const(0x0F)
FN_CLEAR_DEMAND = const(0x10)

# 1997 ERR bits: from one secondary source only (unverified).
ERROR_NAMES = (
    "illegal_data",
    "bad_data_identifier",
    "bad_password",
    "bit3",
    "too_many_year_zones",
    "too_many_day_periods",
    "too_many_tariffs",
)

_FUNCTIONS_1997 = (FN_READ, FN_READ_NEXT, FN_REREAD, FN_WRITE, FN_WRITE_ADDRESS,
                   FN_CHANGE_BAUD, FN_CHANGE_PASSWORD, FN_CLEAR_DEMAND)


def build_read(address, di, preamble=PREAMBLE):
    """fn 01 with a 2-byte DI, e.g. B611 (A-phase voltage)."""
    return _f.build_frame(address, FN_READ, _f.di_bytes(di, 2), preamble)


def build_read_next(address, di, preamble=PREAMBLE):
    """fn 02: the next frame of a read answered with A1."""
    return _f.build_frame(address, FN_READ_NEXT, _f.di_bytes(di, 2), preamble)


def build_write(address, di, data, password=b"\x00\x00\x00\x00", preamble=PREAMBLE):
    """fn 04: DI + password (4 bytes, as on the wire) + item data; 1997 has
    no operator code."""
    if len(password) != 4:
        raise BuildError("password needs 4 bytes")
    body = _f.di_bytes(di, 2)
    body.extend(password)
    body.extend(data)
    return _f.build_frame(address, FN_WRITE, body, preamble)


def build_time_sync(when, preamble=PREAMBLE):
    """fn 08 to 99 x6: the same frame as 2007's."""
    return _f.build_time_sync(when, preamble)


def build_read_reply(address, di, item_data, follows=False, preamble=PREAMBLE):
    """81 (or A1 when more frames follow) with DI + item data."""
    body = _f.di_bytes(di, 2)
    body.extend(item_data)
    return _f.build_reply(address, FN_READ, body, follows, preamble)


def build_error_reply(address, function, err, preamble=PREAMBLE):
    """C0|fn (C1 for a read) with one ERR byte."""
    return _f.build_error_reply(address, function, err, preamble)


def error_names(err):
    return _f.error_names(err, ERROR_NAMES)


def detect_version(frame):
    """2007 or 1997 from a meter's reply (normal or abnormal), or None when
    the frame does not tell (a request, or a function both share)."""
    if not frame.is_reply:
        return None
    fn = frame.function
    if 0x11 <= fn <= 0x1C:
        return 2007
    if fn in _FUNCTIONS_1997:
        return 1997
    return None
