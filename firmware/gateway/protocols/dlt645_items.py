# The DL/T 645 data items (2007 and 1997) as ONE table, and the generic
# decode/encode it drives. Pure: no I/O.
#
# A row's pattern spells the DI in hex, most significant first; lowercase
# letters (never hex digits) are wildcard nibbles:
#   t tariff (00 total, 01..3F; 1997: 0..4), n billing day (00 now, 01..0C
#   back), p phase A..C (1..3), q total or phase (0..3), s status word (1..7),
#   z baud-rate channel (1..5).
# An all-F wildcard (FF, or F in a 1-nibble one) is the block read of
# t/p/q/s: its data is the members back to back, and decodes to a tuple.
#
# Item data is what follows the DI in a reply, already -0x33, low byte first.
from gateway.compat import const
from gateway.protocols.dlt645 import DLT645Error

NUM = const(0)  # BCD number; signed: top bit of the most significant byte
DATE = const(1)  # YYMMDDWW -> (year, month, day, weekday), WW 0 = Sunday
TIME = const(2)  # hhmmss -> (hour, minute, second)
DIGITS = const(3)  # BCD digit string (addresses, meter numbers)
ASCII = const(4)  # text, low byte first like every field (unverified)
FLAGS = const(5)  # bit field -> tuple of flag names
BAUD = const(6)  # baud-rate code Z: one bit set -> baud

KIND_NAMES = ("number", "date", "time", "digits", "ascii", "flags", "baud")

V = True  # bit name seen in more than one source
U = False  # unverified: grid-company extension or one source only


class UnknownItem(DLT645Error):
    """The DI is not in the table."""


class BadLength(DLT645Error):
    """Item data of the wrong size for its DI."""


class BadBCD(DLT645Error):
    """A nibble above 9 where BCD is expected (meters send EE/FF for
    'not available')."""


class BadItemValue(DLT645Error):
    """A value that cannot be encoded, or a code with no meaning."""


# Status-word bit names (PROTOCOLS.md, status words). (bit, name, verified)
_SW1 = (
    (2, "clock_battery_low", V),
    (3, "reading_battery_low", V),
    (4, "active_power_reverse", V),
    (5, "reactive_power_reverse", V),
    (8, "control_loop_fault", U),
    (9, "security_chip_fault", U),
    (12, "program_error", U),
    (13, "memory_fault", U),
    (15, "clock_fault", U),
)
_SW2 = (
    (0, "active_reverse_a", V),
    (1, "active_reverse_b", V),
    (2, "active_reverse_c", V),
    (4, "reactive_reverse_a", V),
    (5, "reactive_reverse_b", V),
    (6, "reactive_reverse_c", V),
)
# b2 b1: 00 main supply, 01 auxiliary, 10 battery.
_SW3 = (
    (1, "supply_auxiliary", V),
    (2, "supply_battery", V),
    (3, "programming_allowed", V),
    (4, "relay_open", V),
)
_SW_PHASE = (
    (0, "voltage_loss", V),
    (1, "under_voltage", V),
    (2, "over_voltage", V),
    (3, "current_loss", V),
    (4, "over_current", V),
    (5, "overload", V),
    (6, "power_reverse", V),
    (7, "phase_break", V),
    (8, "current_cut", V),
)
_SW7 = (
    (0, "voltage_reverse_sequence", V),
    (1, "current_reverse_sequence", V),
    (2, "voltage_unbalance", V),
    (3, "current_unbalance", V),
    (4, "auxiliary_supply_lost", V),
    (5, "power_down", V),
)
_STATUS_WORDS = (_SW1, _SW2, _SW3, _SW_PHASE, _SW_PHASE, _SW_PHASE, _SW7)
_COMBINATION = (
    (0, "plus_forward", V),
    (1, "minus_forward", V),
    (2, "plus_reverse", V),
    (3, "minus_reverse", V),
)

# (version, pattern, kind, bytes, decimals, signed, unit, name, extra)
# extra: FLAGS rows: bit-name tables, one per wildcard value (or one).
ITEMS = (
    # -- 2007 energies: XXXXXX.XX kWh; DI1 tariff, DI0 billing day
    (2007, "0000ttnn", NUM, 4, 2, True, "kWh", "combined_active_energy", None),
    (2007, "0001ttnn", NUM, 4, 2, False, "kWh", "forward_active_energy", None),
    (2007, "0002ttnn", NUM, 4, 2, False, "kWh", "reverse_active_energy", None),
    # -- 2007 instantaneous values
    (2007, "0201pp00", NUM, 2, 1, False, "V", "voltage", None),
    (2007, "0202pp00", NUM, 3, 3, True, "A", "current", None),
    (2007, "0203qq00", NUM, 3, 4, True, "kW", "active_power", None),
    (2007, "0204qq00", NUM, 3, 4, True, "kvar", "reactive_power", None),
    (2007, "0205qq00", NUM, 3, 4, True, "kVA", "apparent_power", None),  # sign: unverified
    (2007, "0206qq00", NUM, 2, 3, True, "", "power_factor", None),
    (2007, "0207pp00", NUM, 2, 1, False, "deg", "phase_angle", None),
    (2007, "0208pp00", NUM, 2, 2, False, "%", "voltage_distortion", None),
    (2007, "0209pp00", NUM, 2, 2, False, "%", "current_distortion", None),
    (2007, "02800001", NUM, 3, 3, False, "A", "neutral_current", None),
    (2007, "02800002", NUM, 2, 2, False, "Hz", "frequency", None),
    # -- 2007 parameters
    (2007, "04000101", DATE, 4, 0, False, "", "date", None),
    (2007, "04000102", TIME, 3, 0, False, "", "time", None),
    (2007, "04000401", DIGITS, 6, 0, False, "", "comm_address", None),
    (2007, "04000402", DIGITS, 6, 0, False, "", "meter_number", None),
    (2007, "04000403", ASCII, 32, 0, False, "", "asset_code", None),
    (2007, "040005ss", FLAGS, 2, 0, False, "", "status_word", _STATUS_WORDS),
    (2007, "04000601", FLAGS, 1, 0, False, "", "active_combination", (_COMBINATION,)),
    (2007, "040007zz", BAUD, 1, 0, False, "baud", "baud_rate", None),
    # -- 1997: 2-byte DIs, nibble wildcards
    (1997, "901t", NUM, 4, 2, False, "kWh", "forward_active_energy", None),
    (1997, "902t", NUM, 4, 2, False, "kWh", "reverse_active_energy", None),
    (1997, "B61p", NUM, 2, 0, False, "V", "voltage", None),
    (1997, "B62p", NUM, 2, 2, False, "A", "current", None),
    (1997, "B63q", NUM, 3, 4, True, "kW", "active_power", None),  # sign: unverified
    (1997, "B65q", NUM, 2, 3, True, "", "power_factor", None),  # sign: unverified
    (1997, "C010", DATE, 4, 0, False, "", "date", None),
    (1997, "C011", TIME, 3, 0, False, "", "time", None),
    (1997, "C032", DIGITS, 6, 0, False, "", "meter_number", None),
)

# Wildcard letter -> ((lo, hi) for 2 nibbles, (lo, hi) for 1 nibble, block ok)
_WILD = {
    "t": ((0x00, 0x3F), (0, 4), True),
    "n": ((0x00, 0x0C), None, False),
    "p": ((0x01, 0x03), (1, 3), True),
    "q": ((0x00, 0x03), (0, 3), True),
    "s": ((0x01, 0x07), None, True),
    "z": ((0x01, 0x05), None, False),
}

UNVERIFIED_FLAGS = tuple(
    name for table in _STATUS_WORDS + (_COMBINATION,) for _, name, ok in table if not ok
)


class Row:
    """One compiled table row. Wildcards: list of (shift, width_mask, lo, hi,
    block_ok)."""

    def __init__(self, spec):
        (self.version, pattern, self.kind, self.size, self.decimals, self.signed,
         self.unit, self.name, self.extra) = spec
        digits = len(pattern)
        self.pattern = pattern
        wild = []
        k = 0
        while k < digits:
            ch = pattern[k]
            if ch in _WILD:
                w = 1
                while k + w < digits and pattern[k + w] == ch:
                    w += 1
                shift = 4 * (digits - k - w)
                rng = _WILD[ch][0] if w == 2 else _WILD[ch][1]
                wild.append((shift, (1 << (4 * w)) - 1, rng[0], rng[1], _WILD[ch][2]))
                k += w
            else:
                k += 1
        value = mask = 0
        for k in range(digits):
            ch = pattern[k]
            value <<= 4
            mask <<= 4
            if ch not in _WILD:
                value |= int(ch, 16)
                mask |= 15
        self.value = value
        self.mask = mask
        self.wild = tuple(wild)

    def match(self, di):
        """None if di is not this row's, else the block wildcard (or ())."""
        if (di & self.mask) != self.value:
            return None
        block = ()
        for w in self.wild:
            v = (di >> w[0]) & w[1]
            if w[2] <= v <= w[3]:
                continue
            if w[4] and v == w[1] and not block:
                block = w
                continue
            return None
        return block


_ROWS = tuple(Row(spec) for spec in ITEMS)
_ROWS_2007 = tuple(r for r in _ROWS if r.version == 2007)
_ROWS_1997 = tuple(r for r in _ROWS if r.version == 1997)


def _di_int(di):
    if isinstance(di, str):
        try:
            return int(di, 16)
        except ValueError:
            raise UnknownItem("data identifier %r" % di)
    return di


def lookup(di, version=2007):
    """(row, block) for a DI: block is () for a single item, else the block
    wildcard. Raises UnknownItem."""
    di = _di_int(di)
    for row in _ROWS_2007 if version == 2007 else _ROWS_1997:
        block = row.match(di)
        if block is not None:
            return row, block
    raise UnknownItem("unknown data identifier %X (DL/T 645-%d)" % (di, version))


def item_info(di, version=2007):
    """A dict describing the item: name, unit, kind, bytes (of one member),
    decimals, signed, block."""
    row, block = lookup(di, version)
    return {
        "name": row.name,
        "unit": row.unit,
        "kind": KIND_NAMES[row.kind],
        "bytes": row.size,
        "decimals": row.decimals,
        "signed": row.signed,
        "block": bool(block),
    }


def known(di, version=2007):
    try:
        lookup(di, version)
        return True
    except UnknownItem:
        return False


# ---- decode ------------------------------------------------------------------

_POW10 = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000)


def _bcd_byte(b):
    hi = b >> 4
    lo = b & 15
    if hi > 9 or lo > 9:
        raise BadBCD("byte %02X is not BCD" % b)
    return hi * 10 + lo


def _magnitude(row, data, off):
    """(signed integer, as on the wire) of one NUM member at data[off:]."""
    size = row.size
    top = data[off + size - 1]
    negative = False
    if row.signed and top & 0x80:
        negative = True
        top &= 0x7F
    mag = _bcd_byte(top)
    for i in range(off + size - 2, off - 1, -1):
        mag = mag * 100 + _bcd_byte(data[i])
    return -mag if negative else mag


def _flag_table(row, var):
    tables = row.extra
    if len(tables) == 1:
        return tables[0]
    return tables[var - row.wild[0][2]]


def _decode_one(row, data, off, var):
    kind = row.kind
    if kind == NUM:
        mag = _magnitude(row, data, off)
        if row.decimals == 0:
            return mag
        return mag / _POW10[row.decimals]
    if kind == DATE:  # wire: WW DD MM YY
        return (
            2000 + _bcd_byte(data[off + 3]),
            _bcd_byte(data[off + 2]),
            _bcd_byte(data[off + 1]),
            _bcd_byte(data[off]),
        )
    if kind == TIME:  # wire: ss mm hh
        return (_bcd_byte(data[off + 2]), _bcd_byte(data[off + 1]), _bcd_byte(data[off]))
    if kind == DIGITS:
        chars = []
        for i in range(off + row.size - 1, off - 1, -1):
            v = _bcd_byte(data[i])
            chars.append(chr(48 + v // 10))
            chars.append(chr(48 + v % 10))
        return "".join(chars)
    if kind == ASCII:
        chars = []
        for i in range(off + row.size - 1, off - 1, -1):
            b = data[i]
            chars.append(chr(b) if 32 <= b < 127 else ("" if b == 0 else "?"))
        return "".join(chars).strip()
    if kind == FLAGS:
        word = 0
        for i in range(off + row.size - 1, off - 1, -1):
            word = (word << 8) | data[i]
        names = []
        table = _flag_table(row, var)
        for bit in range(8 * row.size):
            if word & (1 << bit):
                name = None
                for entry in table:
                    if entry[0] == bit:
                        name = entry[1]
                        break
                names.append(name or "bit%d" % bit)
        return tuple(names)
    if kind == BAUD:
        code = data[off]
        for bit in range(1, 7):
            if code == 1 << bit:
                return _BAUDS[bit - 1]
        raise BadItemValue("baud-rate code %02X has not exactly one known bit" % code)
    raise BadItemValue("kind %r" % kind)


_BAUDS = (600, 1200, 2400, 4800, 9600, 19200)  # bits 1..6 of code Z


def baud_code(baud):
    """Baud -> code Z (one bit set), for fn 17 and 04000701..05."""
    for i in range(len(_BAUDS)):
        if _BAUDS[i] == baud:
            return 2 << i
    raise BadItemValue("no code for %r baud" % baud)


def _members(row, block, n):
    """Number of members in n bytes of block data."""
    size = row.size
    if n % size:
        raise BadLength("%s block: %d bytes is not a multiple of %d" % (row.name, n, size))
    count = n // size
    if count == 0 or count > block[3] - block[2] + 1:
        raise BadLength("%s block: %d members" % (row.name, count))
    return count


def decode_item(di, data, version=2007):
    """Item data (after the DI, already -0x33) -> value: float (int when the
    item has no decimals) for numbers, (y, m, d, weekday) for dates,
    (h, m, s) for times, str for digits and text, tuple of names for flags,
    int baud for baud codes; a tuple of those for a block read.
    Raises UnknownItem, BadLength, BadBCD, BadItemValue (all ValueError)."""
    row, block = lookup(di, version)
    n = len(data)
    if not block:
        if n != row.size:
            raise BadLength("%s needs %d bytes, got %d" % (row.name, row.size, n))
        var = 0
        if row.wild:
            var = (_di_int(di) >> row.wild[0][0]) & row.wild[0][1]
        return _decode_one(row, data, 0, var)
    count = _members(row, block, n)
    lo = block[2]
    out = []
    for k in range(count):
        out.append(_decode_one(row, data, k * row.size, lo + k))
    return tuple(out)


def decode_scaled(di, data, version=2007):
    """A single number item as (integer, decimals), exact where floats are
    not (ESP32 floats are 32-bit: 8-digit energies do not fit them)."""
    row, block = lookup(di, version)
    if row.kind != NUM or block:
        raise BadItemValue("%s is not a single number" % row.name)
    if len(data) != row.size:
        raise BadLength("%s needs %d bytes, got %d" % (row.name, row.size, len(data)))
    return _magnitude(row, data, 0), row.decimals


# ---- encode ------------------------------------------------------------------


def _put_bcd(out, off, v):
    out[off] = ((v // 10) << 4) | (v % 10)


def _check_range(v, lo, hi, what):
    if not isinstance(v, int) or v < lo or v > hi:
        raise BadItemValue("%s %r out of %d..%d" % (what, v, lo, hi))
    return v


def _encode_one(row, value, out, off, var):
    kind = row.kind
    size = row.size
    if kind == NUM:
        if isinstance(value, tuple):  # (integer, decimals) as decode_scaled gives
            mag, dec = value
            if dec != row.decimals:
                raise BadItemValue("%s has %d decimals" % (row.name, row.decimals))
        else:
            if not isinstance(value, (int, float)):
                raise BadItemValue("%s needs a number, got %r" % (row.name, value))
            x = -value if value < 0 else value
            mag = int(x * _POW10[row.decimals] + 0.5)
            if value < 0:
                mag = -mag
        negative = mag < 0
        if negative:
            mag = -mag
            if not row.signed:
                raise BadItemValue("%s cannot be negative" % row.name)
        limit = _POW10[2 * size] if 2 * size < len(_POW10) else 10 ** (2 * size)
        if row.signed:
            limit = limit // 10 * 8  # the top digit keeps clear of the sign bit
        if mag >= limit:
            raise BadItemValue("%r does not fit %s" % (value, row.name))
        for i in range(size):
            _put_bcd(out, off + i, mag % 100)
            mag //= 100
        if negative:
            out[off + size - 1] |= 0x80
        return
    if kind == DATE:
        y, m, d, w = value
        if y >= 2000:
            y -= 2000
        _put_bcd(out, off + 3, _check_range(y, 0, 99, "year"))
        _put_bcd(out, off + 2, _check_range(m, 1, 12, "month"))
        _put_bcd(out, off + 1, _check_range(d, 1, 31, "day"))
        _put_bcd(out, off, _check_range(w, 0, 6, "weekday"))
        return
    if kind == TIME:
        h, m, s = value
        _put_bcd(out, off + 2, _check_range(h, 0, 23, "hour"))
        _put_bcd(out, off + 1, _check_range(m, 0, 59, "minute"))
        _put_bcd(out, off, _check_range(s, 0, 59, "second"))
        return
    if kind == DIGITS:
        if isinstance(value, int):
            value = "%d" % value
        n = len(value)
        if n > 2 * size:
            raise BadItemValue("%s takes at most %d digits" % (row.name, 2 * size))
        value = "0" * (2 * size - n) + value
        for k in range(size):
            hi = ord(value[2 * k]) - 48
            lo = ord(value[2 * k + 1]) - 48
            if not (0 <= hi <= 9 and 0 <= lo <= 9):
                raise BadItemValue("%s takes decimal digits, got %r" % (row.name, value))
            out[off + size - 1 - k] = (hi << 4) | lo
        return
    if kind == ASCII:
        n = len(value)
        if n > size:
            raise BadItemValue("%s takes at most %d characters" % (row.name, size))
        for k in range(n):
            c = ord(value[k])
            if c < 32 or c > 126:
                raise BadItemValue("%s takes printable ASCII" % row.name)
            out[off + size - 1 - k] = c  # left-aligned text, NUL padded
        return
    if kind == FLAGS:
        table = _flag_table(row, var)
        word = 0
        for name in value:
            bit = None
            for entry in table:
                if entry[1] == name:
                    bit = entry[0]
                    break
            if bit is None and name[:3] == "bit":
                try:
                    bit = int(name[3:])
                except ValueError:
                    bit = None
            if bit is None or bit < 0 or bit >= 8 * size:
                raise BadItemValue("%s has no flag %r" % (row.name, name))
            word |= 1 << bit
        for i in range(size):
            out[off + i] = (word >> (8 * i)) & 0xFF
        return
    if kind == BAUD:
        out[off] = baud_code(value)
        return
    raise BadItemValue("kind %r" % kind)


def encode_item(di, value, version=2007):
    """Inverse of decode_item: value -> item data (before +0x33). A block
    takes a sequence of member values (total/first member first)."""
    row, block = lookup(di, version)
    if not block:
        out = bytearray(row.size)
        var = 0
        if row.wild:
            var = (_di_int(di) >> row.wild[0][0]) & row.wild[0][1]
        _encode_one(row, value, out, 0, var)
        return bytes(out)
    count = len(value)
    if count == 0 or count > block[3] - block[2] + 1:
        raise BadItemValue("%s block takes 1..%d values" % (row.name, block[3] - block[2] + 1))
    out = bytearray(row.size * count)
    for k in range(count):
        _encode_one(row, value[k], out, k * row.size, block[2] + k)
    return bytes(out)
