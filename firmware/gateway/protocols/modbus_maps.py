# Register maps of the Modbus meters we support, as data, plus a planner that
# covers a set of quantities with the fewest read requests and a decoder
# that turns the replies into {quantity: value}. Pure: no I/O.
#
# Published units (the same as our DL/T 645 readings, so consumers need not
# care which protocol a meter speaks): V, A, kW, kvar, kWh, Hz, degrees;
# power factor has no unit. Signs: negative active power is export / reverse.
# Provenance of every value: docs/codecs/modbus.md.
from gateway.protocols import modbus

# A point: (quantity, register (0-based), type, scale, unit).
# published value = raw * scale. Several quantities may share a register
# (on a single-phase meter power_total is the phase A power).

_W = 0.001  # W -> kW, var -> kvar

_SDM120_POINTS = (
    ("voltage_a", 0x0000, "float32", 1, "V"),
    ("current_a", 0x0006, "float32", 1, "A"),
    ("power_a", 0x000C, "float32", _W, "kW"),
    ("power_total", 0x000C, "float32", _W, "kW"),
    ("reactive_power_a", 0x0018, "float32", _W, "kvar"),
    ("reactive_power_total", 0x0018, "float32", _W, "kvar"),
    ("pf_a", 0x001E, "float32", 1, ""),
    ("angle_a", 0x0024, "float32", 1, "deg"),
    ("frequency", 0x0046, "float32", 1, "Hz"),
    ("energy_import", 0x0048, "float32", 1, "kWh"),
    ("energy_export", 0x004A, "float32", 1, "kWh"),
    ("energy_total", 0x0156, "float32", 1, "kWh"),
)

_SDM630_POINTS = (
    ("voltage_a", 0x0000, "float32", 1, "V"),
    ("voltage_b", 0x0002, "float32", 1, "V"),
    ("voltage_c", 0x0004, "float32", 1, "V"),
    ("current_a", 0x0006, "float32", 1, "A"),
    ("current_b", 0x0008, "float32", 1, "A"),
    ("current_c", 0x000A, "float32", 1, "A"),
    ("power_a", 0x000C, "float32", _W, "kW"),
    ("power_b", 0x000E, "float32", _W, "kW"),
    ("power_c", 0x0010, "float32", _W, "kW"),
    ("reactive_power_a", 0x0018, "float32", _W, "kvar"),
    ("reactive_power_b", 0x001A, "float32", _W, "kvar"),
    ("reactive_power_c", 0x001C, "float32", _W, "kvar"),
    ("pf_a", 0x001E, "float32", 1, ""),
    ("pf_b", 0x0020, "float32", 1, ""),
    ("pf_c", 0x0022, "float32", 1, ""),
    ("angle_a", 0x0024, "float32", 1, "deg"),
    ("angle_b", 0x0026, "float32", 1, "deg"),
    ("angle_c", 0x0028, "float32", 1, "deg"),
    ("power_total", 0x0034, "float32", _W, "kW"),
    ("reactive_power_total", 0x003C, "float32", _W, "kvar"),
    ("frequency", 0x0046, "float32", 1, "Hz"),
    ("energy_import", 0x0048, "float32", 1, "kWh"),
    ("energy_export", 0x004A, "float32", 1, "kWh"),
    ("energy_total", 0x0156, "float32", 1, "kWh"),
)

_DDSU666_POINTS = (
    ("voltage_a", 0x2000, "float32", 1, "V"),
    ("current_a", 0x2002, "float32", 1, "A"),
    ("power_a", 0x2004, "float32", 1, "kW"),
    ("power_total", 0x2004, "float32", 1, "kW"),
    ("reactive_power_a", 0x2006, "float32", 1, "kvar"),
    ("reactive_power_total", 0x2006, "float32", 1, "kvar"),
    ("pf_a", 0x200A, "float32", 1, ""),
    ("frequency", 0x200E, "float32", 1, "Hz"),
    ("energy_import", 0x4000, "float32", 1, "kWh"),
    ("energy_export", 0x400A, "float32", 1, "kWh"),
)

# Per-model defaults. max_count: registers per request; max_gap: unused
# registers a request may span between two wanted points (read and thrown
# away, cheaper than another request); even_count: the meter rejects odd
# register counts.
MODELS = {
    "sdm120": {
        "name": "Eastron SDM120",
        "phases": 1,
        "function": modbus.READ_INPUT,
        "baud": 2400,
        "parity": "N",
        "stop_bits": 1,
        "unit": 1,
        "word_order": modbus.ABCD,
        "even_count": True,  # assumed as for the SDM630; all points are floats
        "max_count": 80,
        "max_gap": 78,  # anything within max_count: gaps read fine
        "points": _SDM120_POINTS,
    },
    "sdm630": {
        "name": "Eastron SDM630",
        "phases": 3,
        "function": modbus.READ_INPUT,
        "baud": 9600,
        "parity": "N",  # (unverified: some sources say E)
        "stop_bits": 1,
        "unit": 1,
        "word_order": modbus.ABCD,
        "even_count": True,
        "max_count": 80,
        "max_gap": 78,  # anything within max_count: gaps read fine
        "points": _SDM630_POINTS,
    },
    "ddsu666": {
        "name": "CHINT DDSU666",
        "phases": 1,
        "function": modbus.READ_INPUT,
        "baud": 9600,
        "parity": "N",  # (unverified)
        "stop_bits": 1,
        "unit": 1,
        "word_order": modbus.ABCD,
        "even_count": False,
        "max_count": 40,  # (unverified, kept small)
        "max_gap": 2,  # only the two undocumented floats 0x2008 / 0x200C
        "points": _DDSU666_POINTS,
    },
}


def model(name_or_model):
    """The model dict for a name ("sdm630"), or the dict itself."""
    if isinstance(name_or_model, dict):
        return name_or_model
    m = MODELS.get(name_or_model)
    if m is None:
        raise ValueError("unknown Modbus meter model: %s" % name_or_model)
    return m


def quantities(name_or_model):
    return [p[0] for p in model(name_or_model)["points"]]


class Read:
    """One planned read request and where its quantities lie in the reply:
    items are (quantity, byte offset in the register data, type, scale)."""

    def __init__(self, function, address, word_order):
        self.function = function
        self.address = address
        self.count = 0
        self.word_order = word_order
        self.items = []

    def request(self, unit, out=None):
        return modbus.read_request(unit, self.function, self.address, self.count, out)

    def __repr__(self):
        return "Read(fn=%d, address=0x%04X, count=%d, %s)" % (
            self.function,
            self.address,
            self.count,
            [i[0] for i in self.items],
        )


def plan(name_or_model, wanted=None, max_count=None, max_gap=None):
    """The fewest read requests that cover the wanted quantities (all the
    model's when None). Points are taken in register order and a request is
    extended while the span stays within max_count and the hole before the
    next point within max_gap: on a line this greedy cover is minimal."""
    m = model(name_or_model)
    if max_count is None:
        max_count = m["max_count"]
    if max_gap is None:
        max_gap = m["max_gap"]
    even = m["even_count"]
    if not 2 <= max_count <= modbus.MAX_READ:
        raise ValueError("max_count out of range")
    points = m["points"]
    if wanted is None:
        chosen = list(points)
    else:
        chosen = []
        for q in wanted:
            for p in points:
                if p[0] == q:
                    chosen.append(p)
                    break
            else:
                raise ValueError("%s has no quantity %s" % (m["name"], q))
    chosen.sort(key=lambda p: p[1])
    reads = []
    cur = None
    end = 0
    for q, reg, typ, scale, _unit in chosen:
        size = modbus.SIZES[typ] >> 1
        if cur is not None:
            new_end = reg + size if reg + size > end else end
            span = new_end - cur.address
            if even and span & 1:
                span += 1
            if reg - end <= max_gap and span <= max_count:
                end = new_end
                cur.items.append((q, 2 * (reg - cur.address), typ, scale))
                continue
        cur = Read(m["function"], reg, m["word_order"])
        cur.items.append((q, 0, typ, scale))
        end = reg + size
        reads.append(cur)
    for r in reads:
        _close(r, even)
    return reads


def _close(read, even):
    last = 0
    for _q, off, typ, _s in read.items:
        e = off + modbus.SIZES[typ]
        if e > last:
            last = e
    count = last >> 1
    if even and count & 1:
        count += 1
    if read.address + count > 0x10000:
        count -= 1  # cannot pad past the end of the register space
    read.count = count


def decode(read, buf, start, end, out=None):
    """{quantity: value} from the register bytes buf[start:end] of the reply
    to `read` (Reply.data_start / data_end), added to out if given."""
    if end - start != 2 * read.count:
        raise ValueError("reply has %d bytes, read wants %d" % (end - start, 2 * read.count))
    if out is None:
        out = {}
    order = read.word_order
    dec = modbus.DECODERS
    for q, off, typ, scale in read.items:
        v = dec[typ](buf, start + off, order)
        out[q] = v * scale if scale != 1 else v
    return out


def encode_registers(name_or_model, values, address, count, out=None):
    """Server side (the simulator): the register bytes a meter of this model
    answers for `count` registers from `address`, given published values
    {quantity: value} (scaled back to the meter's units). Registers with no
    value read as zero; a point cut by the window edge contributes the part
    inside it."""
    m = model(name_or_model)
    n = 2 * count
    if out is None:
        out = bytearray(n)
    else:
        for k in range(n):
            out[k] = 0
    tmp = bytearray(4)
    enc = modbus.ENCODERS
    for q, reg, typ, scale, _unit in m["points"]:
        if q not in values:
            continue
        size = modbus.SIZES[typ]
        off = 2 * (reg - address)
        if off + size <= 0 or off >= n:
            continue
        raw = values[q] / scale if scale != 1 else values[q]
        if typ != "float32":
            raw = int(round(raw))
        enc[typ](raw, m["word_order"], tmp, 0)
        for k in range(size):
            if 0 <= off + k < n:
                out[off + k] = tmp[k]
    return out
