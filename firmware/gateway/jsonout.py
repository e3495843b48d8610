# Reading messages written into one preallocated buffer: the poll loop builds
# no strings. Everything constant (device, meter, group, item names, units)
# is encoded once when the config is loaded; per reading only digits, the
# quality word and, on failures, the error reason are written.
# The output is the reading message of docs/mqtt.md, byte for byte what
# runtime.reading_json() gives (a test checks both agree).
import json

from gateway.compat import const, str_bytes

SIZE = const(2048)

_DIGITS = b"0123456789"
Q_GOOD = b"good"
Q_IMPLAUSIBLE = b"implausible"


def _lit(text):
    return json.dumps(text).encode()


class ItemOut:
    """The constant bytes around one item of one poll group."""

    def __init__(self, name, unit):
        n = _lit(name)
        self.value_head = n + b':{"v":'
        self.value_tail = (b',"unit":' + _lit(unit) if unit is not None else b"") + b',"q":"'
        self.error_head = n + b':{"q":"comm_error","error":'
        self.error_tail = (b',"unit":' + _lit(unit) if unit is not None else b"") + b',"t":'


_ITEMS = {}  # (name, unit) -> ItemOut: meters reading the same items share their bytes
_GROUPS = {}  # group name -> its bytes
_SHAPES = {}  # (group, item names, their units) -> GroupOut, shared by meters configured alike


def item_out(name, unit):
    key = (name, unit)
    it = _ITEMS.get(key)
    if it is None:
        it = _ITEMS[key] = ItemOut(name, unit)
    return it


def device_head(device):
    """The bytes every reading of this gateway starts with, up to its meter id
    (written as it is: meter ids need no escaping, gateway/meters.py)."""
    return b'{"device":' + _lit(device) + b',"meter":"'


class GroupOut:
    """The constant bytes of one poll group: its name and its items' pieces.
    Meters configured alike share one (group_out()); a meter adds only its id."""

    def __init__(self, group, items, units):
        mid = _GROUPS.get(group)
        if mid is None:
            mid = _GROUPS[group] = b',"group":' + _lit(group) + b',"values":{'
        self.mid = mid
        self.items = tuple(item_out(name, units.get(name)) for name in items)
        self.names = items


def group_out(group, items, units):
    """The shared GroupOut of (group, items, their units)."""
    key = (group, items, tuple(units.get(name) for name in items))
    g = _SHAPES.get(key)
    if g is None:
        g = _SHAPES[key] = GroupOut(group, items, units)
    return g


class Writer:
    def __init__(self, size=SIZE):
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.n = 0
        self._tmp = bytearray(24)  # digits of one number, written backwards

    def put(self, b):
        n = self.n
        k = len(b)
        if n + k > len(self.buf):
            raise ValueError("reading larger than %d bytes" % len(self.buf))
        self.buf[n:n + k] = b
        self.n = n + k

    def put_int(self, v):
        if v < 0:
            self.put(b"-")
            v = -v
        tmp = self._tmp
        i = len(tmp)
        while True:
            i -= 1
            tmp[i] = _DIGITS[v % 10]
            v //= 10
            if v == 0:
                break
        self.put(memoryview(tmp)[i:])

    def put_decimal(self, mag, decimals):
        """mag / 10**decimals, exactly, with all its decimals (317.76, -0.005)."""
        if decimals == 0:
            self.put_int(mag)
            return
        if mag < 0:
            self.put(b"-")
            mag = -mag
        tmp = self._tmp
        i = len(tmp)
        k = 0
        while True:
            i -= 1
            tmp[i] = _DIGITS[mag % 10]
            mag //= 10
            k += 1
            if k == decimals:
                i -= 1
                tmp[i] = 46  # "."
            if mag == 0 and k > decimals:
                break
        self.put(memoryview(tmp)[i:])

    def put_str(self, s):
        self.put(_lit(s))  # error reasons only: the rare path may allocate

    def reading(self, head, meter, g, seq, ts, judged, errors, num_text):
        """Write one reading (head: device_head(); meter: its id; g: a GroupOut);
        returns a memoryview of it (valid until the next)."""
        self.n = 0
        self.put(head)
        self.put(str_bytes(meter))
        self.put(b'","seq":')
        self.put_int(seq)
        self.put(b',"ts":')
        self.put_int(ts)
        self.put(g.mid)
        first = True
        star = errors.get("*")
        for k in range(len(g.names)):
            name = g.names[k]
            it = g.items[k]
            if not first:
                self.put(b",")
            first = False
            got = judged.get(name)
            if got is not None:
                self.put(it.value_head)
                v = got[0]
                if hasattr(v, "mag"):
                    self.put_decimal(v.mag, v.decimals)
                else:
                    self.put(num_text(v).encode())  # Modbus floats
                self.put(it.value_tail)
                self.put(Q_GOOD if got[2] == "good" else Q_IMPLAUSIBLE)
                self.put(b'","t":')
            else:
                self.put(it.error_head)
                self.put_str(errors.get(name) or star or "not_read")
                self.put(it.error_tail)
            self.put_int(ts)
            self.put(b"}")
        self.put(b"}")
        if star is not None:
            self.put(b',"error":')
            self.put_str(star)
        self.put(b"}")
        return self.mv[:self.n]
