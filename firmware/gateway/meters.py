# The meters side of polling: for each protocol, what to send for an item and
# how to turn the reply into a value. The RS-485 transaction itself is
# gateway/link.py; the schedule is gateway/runtime.py. Pure: no I/O here.
#
# Items are named the same for every protocol so consumers need not care
# which one a meter speaks (ITEM_ALIASES); a raw DL/T 645 DI ("02010100",
# "B611") or a Modbus map quantity ("voltage_a") works too. Config keys:
# docs/gateway-config.md.
#
# Poll groups: a meter's items are read in groups, each with its own interval
# (`groups`, or one group of `items` every `poll_interval_s`).
# Block reads (DL/T 645): two or more items of one family (voltage A/B/C,
# 0201FF00; power total/A/B/C, 0203FF00; ...) are read with one block request
# when `block_read` allows ("auto" by default); a meter that answers the
# block with an error or a wrong length gets the single reads in the same poll
# and the family is remembered as "no block" for that meter.
# poll() is a coroutine: the caller owns the bus (one task at a time).
from gateway import link as lk
from gateway.protocols import dlt645, dlt645_1997, dlt645_items, modbus, modbus_maps

PROTOCOLS = ("dlt645-2007", "dlt645-1997", "modbus")

# Published name -> (2007 DI, 1997 DI, Modbus quantity); None: not available.
ITEM_ALIASES = {
    "voltage": ("02010100", "B611", "voltage_a"),
    "voltage_a": ("02010100", "B611", "voltage_a"),
    "voltage_b": ("02010200", "B612", "voltage_b"),
    "voltage_c": ("02010300", "B613", "voltage_c"),
    "current": ("02020100", "B621", "current_a"),
    "current_a": ("02020100", "B621", "current_a"),
    "current_b": ("02020200", "B622", "current_b"),
    "current_c": ("02020300", "B623", "current_c"),
    "power": ("02030000", "B630", "power_total"),
    "power_a": ("02030100", "B631", "power_a"),
    "power_b": ("02030200", "B632", "power_b"),
    "power_c": ("02030300", "B633", "power_c"),
    "reactive_power": ("02040000", None, "reactive_power_total"),
    "power_factor": ("02060000", "B650", "pf_a"),
    "frequency": ("02800002", None, "frequency"),
    "neutral_current": ("02800001", None, None),
    "energy": ("00000000", "9010", "energy_total"),
    "energy_forward": ("00010000", "9010", "energy_import"),
    "energy_reverse": ("00020000", "9020", "energy_export"),
}

DEFAULT_ITEMS = ("voltage", "current", "power", "energy_forward", "energy_reverse")
KINDS = ("single-phase", "three-phase-4w", "three-phase-3w")

# Line defaults per protocol (PROTOCOLS.md): 2007 meters 2400 8E1, 1997 start
# at 1200 8E1; Modbus: the model's factory setting.
_DLT_LINE = {"dlt645-2007": 2400, "dlt645-1997": 1200}
COLLECTOR_TIMEOUT_MS = 2000  # a collector relays the request to its meters first
DEFAULT_INTERVAL_S = 10

# Plausibility limits by unit (a value outside is published as "implausible").
_LIMITS = {"V": (0, 600), "A": (-10000, 10000), "kW": (-100000, 100000), "kvar": (-100000, 100000),
           "Hz": (40, 70), "": (-1.0, 1.0), "kWh": (-1000000, 1000000)}
_MONOTONIC = ("energy_forward", "energy_reverse", "00010000", "00020000", "9010", "9020")
_ROLLOVER = 99999999  # hundredths of a kWh: 999999.99, where an 8-digit register wraps


def hundredths(v):
    """A cumulative value in hundredths as an int: kept per meter without a float or
    Num object (a small int costs no heap) and compared exactly on every port."""
    if isinstance(v, Num):
        d = v.decimals
        return v.mag * 10 ** (2 - d) if d <= 2 else v.mag // 10 ** (d - 2)
    v = float(v)
    return int(v * 100 + (0.5 if v >= 0 else -0.5))


def quality(name, unit, value, previous=None):
    """"good" or "implausible" for a value read without a link error.
    previous: the last good value of a cumulative register in hundredths
    (hundredths()), or None."""
    v = float(value)
    lim = _LIMITS.get(unit)
    if lim is not None and not lim[0] <= v <= lim[1]:
        return "implausible"
    if name in _MONOTONIC:
        if v < 0:
            return "implausible"
        if previous is not None:
            h = hundredths(value)
            # a register going back is a fault, unless it rolled over at 999999.99
            if h < previous and not (previous > _ROLLOVER - 100000 and h < 100000):
                return "implausible"
    return "good"


class ConfigError(ValueError):
    pass


class Num:
    """An exact decimal: integer and count of decimals (what decode_scaled
    gives). Printed without going through a float, so an 8-digit energy is
    not rounded by the ESP32's 32-bit floats."""

    def __init__(self, mag, decimals):
        self.mag = mag
        self.decimals = decimals

    def text(self):
        d = self.decimals
        mag = self.mag
        if d == 0:
            return str(mag)
        sign = "-" if mag < 0 else ""
        if mag < 0:
            mag = -mag
        s = str(mag)
        if len(s) <= d:
            s = "0" * (d - len(s) + 1) + s
        return sign + s[:-d] + "." + s[-d:]

    def __float__(self):
        return self.mag / (10 ** self.decimals)

    def __repr__(self):
        return self.text()


def _int_opt(cfg, key, default, lo, hi, mid):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or v > hi:
        raise ConfigError("%s: %s must be an integer %d..%d, got %r" % (mid, key, lo, hi, v))
    return v


class Profile:
    """What meters configured alike share: line settings, timeouts, poll groups,
    the read plan and the units. Thirty-two identical meters on a bus hold one
    Profile, not 32 copies (about 1 KB a meter of heap on the unix port).
    Built by the meter classes; read-only once built (but for `out`, the
    runtime's reading pieces, set once by the first meter of the profile)."""

    out = None


_PROFILES = {}  # key -> Profile while a config is being built (forget_profiles())


def forget_profiles():
    """Let go of the build-time index (the meters keep their profiles)."""
    _PROFILES.clear()


def _shared(name):
    return property(lambda self: getattr(self.profile, name))


class Meter:
    """One configured meter: its id, address and stats (link.new_stats(): the
    link's counters and learned latency, then the last good value of each
    cumulative item, in hundredths + 1, 0 before the first); what it shares
    with meters configured alike is in self.profile (a Profile) and reads
    through the properties below.

    poll(link) -> (values, errors): values {name: (value, unit)}, errors
    {name: reason}. A failed read is an error, never a zero."""

    # per-meter state that most meters never change: class defaults until they do
    last_error = None
    clock_drift_s = None  # meter clock - true time, from the last clock check
    clock_error = None
    invert = False  # the UART inverted for this meter (the self-check found its A/B swapped)
    position = None  # its position in the meter box (config "position"), for findings
    asset = None  # the asset number the work order expects at that position

    protocol = _shared("protocol")
    items = _shared("items")
    groups = _shared("groups")
    timeout_ms = _shared("timeout_ms")
    byte_timeout_ms = _shared("byte_timeout_ms")
    retries = _shared("retries")
    line = _shared("line")
    collector = _shared("collector")
    exporting = _shared("exporting")
    kind = _shared("kind")
    plans = _shared("plans")
    item_units = _shared("units")
    out = _shared("out")  # the reading pieces per group (gateway/jsonout.py), set by the runtime

    def __init__(self, cfg, defaults=None):
        if not isinstance(cfg, dict):
            raise ConfigError("a meter entry must be an object, got %r" % (cfg,))
        mid = cfg.get("id")
        if not isinstance(mid, str) or not mid:
            raise ConfigError("meter without a string 'id': %r" % (cfg,))
        self.id = mid
        if cfg.get("protocol") not in PROTOCOLS:
            raise ConfigError("%s: protocol must be one of %s, got %r" % (mid, ", ".join(PROTOCOLS),
                                                                           cfg.get("protocol")))
        for ch in mid:  # written into readings and topics as it is: nothing to escape
            if not ("a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9" or ch == "_" or ch == "-"):
                raise ConfigError("meter id %r: only letters, digits, '_' and '-' are allowed" % mid)
        if len(mid) > 32:
            raise ConfigError("meter id %r: longer than 32 characters" % mid)
        pos = cfg.get("position")
        if isinstance(pos, dict) and isinstance(pos.get("position"), int):
            self.position = pos["position"]
        if isinstance(cfg.get("asset"), str):
            self.asset = cfg["asset"]

    def _common(self, cfg, defaults, line, extra):
        """The settings every protocol has, as a tuple (the profile key) ending in
        line and extra (the protocol's own)."""
        defaults = defaults or {}
        mid = self.id
        protocol = cfg.get("protocol")
        items = cfg.get("items", DEFAULT_ITEMS)
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError("%s: items must be a non-empty list" % mid)
        for it in items:
            if not isinstance(it, str):
                raise ConfigError("%s: item %r is not a string" % (mid, it))
        items = tuple(items)
        base = COLLECTOR_TIMEOUT_MS if cfg.get("collector") else defaults.get(
            "response_timeout_ms", lk.RESPONSE_TIMEOUT_MS)
        timeout_ms = _int_opt(cfg, "response_timeout_ms", base, 20, lk.MAX_TIMEOUT_MS, mid)
        byte_timeout_ms = _int_opt(cfg, "byte_timeout_ms", defaults.get("byte_timeout_ms", lk.BYTE_TIMEOUT_MS),
                                   5, 1000, mid)
        retries = _int_opt(cfg, "retries", defaults.get("retries", 1), 0, 5, mid)
        col = cfg.get("collector")
        collector = col if isinstance(col, str) else ("collector" if col is True else None)
        exporting = bool(cfg.get("exporting", False))
        kind = cfg.get("kind", "single-phase")
        if kind not in KINDS:
            raise ConfigError("%s: kind must be one of %s, got %r" % (mid, ", ".join(KINDS), kind))
        interval = defaults.get("poll_interval_s", DEFAULT_INTERVAL_S)
        groups = cfg.get("groups")
        out = []
        if groups is None:
            out.append(("main", items, int(interval * 1000)))
        else:
            if not isinstance(groups, (list, tuple)) or not groups:
                raise ConfigError("%s: groups must be a non-empty list" % mid)
            names = []
            for k in range(len(groups)):
                g = groups[k]
                if not isinstance(g, dict):
                    raise ConfigError("%s: groups[%d] must be an object" % (mid, k))
                its = g.get("items")
                if not isinstance(its, (list, tuple)) or not its:
                    raise ConfigError("%s: groups[%d].items must be a non-empty list" % (mid, k))
                for it in its:
                    if not isinstance(it, str):
                        raise ConfigError("%s: groups[%d] item %r is not a string" % (mid, k, it))
                    if it not in names:
                        names.append(it)
                iv = g.get("interval_s", interval)
                if isinstance(iv, bool) or not isinstance(iv, (int, float)) or not 0.1 <= iv <= 86400:
                    raise ConfigError("%s: groups[%d].interval_s must be 0.1..86400" % (mid, k))
                out.append((g.get("name") or "g%d" % k, tuple(its), int(iv * 1000)))
            items = tuple(names)
        return (protocol, items, tuple(out), timeout_ms, byte_timeout_ms, retries, collector, exporting,
                line, kind) + extra

    def _profile(self, key, plan):
        """The Profile for key (shared with meters built before it), plan(p) filling in
        what only a new one needs."""
        p = _PROFILES.get(key)
        if p is None:
            p = Profile()
            (p.protocol, p.items, p.groups, p.timeout_ms, p.byte_timeout_ms, p.retries, p.collector,
             p.exporting, p.line, p.kind) = key[:10]
            p.mono = tuple(name for name in p.items if name in _MONOTONIC)
            plan(p, key[10:])
            _PROFILES[key] = p
        self.profile = p
        self.stats = lk.new_stats(len(p.mono))

    def judge(self, values):
        """{name: (value, unit)} -> {name: (value, unit, quality)}; remembers cumulative values."""
        out = {}
        st = self.stats
        for name in values:
            v, unit = values[name]
            slot = self._slot(name)
            q = quality(name, unit, v, st[slot] - 1 if slot >= 0 and st[slot] else None)
            if q == "good" and slot >= 0:
                h = hundredths(v)
                if 0 <= h < 0x7FFFFFFF:  # always, within the plausible range
                    st[slot] = h + 1
            out[name] = (v, unit, q)
        return out

    def _slot(self, name):
        """Where in self.stats the last good value of cumulative item `name` is kept; -1: not cumulative."""
        mono = self.profile.mono
        for k in range(len(mono)):
            if mono[k] == name:
                return lk.STATS + k
        return -1

    def _line(self, cfg, baud, parity):
        mid = self.id
        baud = cfg.get("baud", baud)
        if baud not in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
            raise ConfigError("%s: baud %r is not a standard rate" % (mid, baud))
        parity = cfg.get("parity", parity)
        if parity not in ("N", "E", "O"):
            raise ConfigError("%s: parity must be N, E or O, got %r" % (mid, parity))
        stop = cfg.get("stop_bits", 1)
        if stop not in (1, 2):
            raise ConfigError("%s: stop_bits must be 1 or 2" % mid)
        return (baud, parity, 8, stop)

    def select_line(self, link):
        link.configure(self.line[0], self.line[1], self.line[2], self.line[3], self.invert)


def _dlt_plan(p, extra):
    """Fill a new DL/T 645 Profile: the item entries, the block plan per group, the units."""
    p.block_read = extra[0]
    p.version = 2007 if p.protocol == "dlt645-2007" else 1997
    p.fn = dlt645.FN_READ if p.version == 2007 else dlt645_1997.FN_READ
    # item -> (DI int, None, unit) or the reason it cannot be read (requests are built when sent)
    p.entries = {}
    p.units = {}
    slot = 0 if p.version == 2007 else 1
    for name in p.items:
        di = name
        alias = ITEM_ALIASES.get(name)
        if alias is not None:
            di = alias[slot]
            if di is None:
                p.entries[name] = "not_in_dlt645_%d" % p.version
                continue
        try:
            info = dlt645_items.item_info(di, p.version)
            if info["kind"] != "number" or info["block"]:
                raise dlt645_items.UnknownItem("not a single number")
            di_int = int(di, 16)
        except (ValueError, dlt645.DLT645Error):
            p.entries[name] = "unknown_item"
            continue
        p.entries[name] = (di_int, None, info["unit"])
        p.units[name] = info["unit"]
    # per group: [(block DI, None, [names])] for families of >= 2 items, and the other names
    p.plans = []
    for _gname, items, _iv in p.groups:
        families = {}
        order = []
        for name in items:
            e = p.entries.get(name)
            if isinstance(e, tuple) and p.block_read is not False:
                bdi = block_di(e[0], p.version)
                if bdi is not None:
                    if bdi not in families:
                        families[bdi] = []
                        order.append(bdi)
                    families[bdi].append(name)
        blocks = []
        in_block = []
        for bdi in order:
            if len(families[bdi]) >= 2:
                blocks.append((bdi, None, families[bdi]))
                in_block.extend(families[bdi])
        singles = [n for n in items if n not in in_block]
        p.plans.append((blocks, singles))


def block_di(di, version):
    """The block DI of di's family (0201FF00 for 02010100; B61F for B611), or None."""
    bdi = di | 0xFF00 if version == 2007 else di | 0xF
    if bdi == di:
        return None
    try:
        _row, block = dlt645_items.lookup(bdi, version)
    except dlt645.DLT645Error:
        return None
    return bdi if block else None


class DltMeter(Meter):
    """DL/T 645-2007 or -1997: one read per item, or one per block family."""

    version = _shared("version")
    block_read = _shared("block_read")
    entries = _shared("entries")
    _fn = _shared("fn")
    no_block = ()  # block DIs this meter refused (read singly from now on): a tuple once there is one

    def __init__(self, cfg, defaults=None):
        Meter.__init__(self, cfg, defaults)
        protocol = cfg["protocol"]
        addr = cfg.get("address")
        if isinstance(addr, int) and not isinstance(addr, bool):
            addr = "%012d" % addr
        if not isinstance(addr, str):
            raise ConfigError("%s: address must be a string of 12 digits" % self.id)
        try:
            self.address = dlt645.address_to_wire(addr)
        except dlt645.DLT645Error as exc:
            raise ConfigError("%s: address %r: %s" % (self.id, addr, exc))
        block = cfg.get("block_read", "auto")
        if block not in (True, False, "auto"):
            raise ConfigError("%s: block_read must be true, false or \"auto\"" % self.id)
        line = self._line(cfg, _DLT_LINE.get(protocol, 2400), "E")
        self._profile(self._common(cfg, defaults, line, (block,)), _dlt_plan)

    def _request(self, di):
        if self.version == 2007:
            return dlt645.build_read(self.address, di)
        return dlt645_1997.build_read(self.address, di)

    def _error_reason(self, f):
        names = (dlt645.error_names(f.error) if self.version == 2007
                 else dlt645_1997.error_names(f.error)) if f.error is not None else ()
        return "meter_error:" + ("+".join(names) or "unknown")

    async def _read(self, link, di, req=None):
        """One read: (OK, frame) or (link result, None). The request frame is built
        here (20 bytes of garbage) rather than kept per item (live heap per meter)."""
        if req is None:
            req = self._request(di)
        res = await link.dlt645_async(req, self.address, self._fn, di, self.stats, self.timeout_ms,
                                      self.byte_timeout_ms, self.retries)
        return res, (link.frame if res == lk.OK else None)

    async def poll(self, link, group=0):
        """Read one group's items: (values {name: (Num, unit)}, errors {name: reason})."""
        values = {}
        errors = {}
        link.configure(self.line[0], self.line[1], self.line[2], self.line[3], self.invert)
        blocks, singles = self.plans[group]
        todo = list(singles)
        for bdi, req, names in blocks:
            if bdi in self.no_block:
                todo.extend(names)
                continue
            res, f = await self._read(link, bdi, req)
            if res != lk.OK:
                for name in names:
                    errors[name] = lk.result_name(res)
                continue
            if f.abnormal:  # the meter has no such block: single reads, now and from now on
                self.no_block = self.no_block + (bdi,)
                todo.extend(names)
                continue
            if not self._split_block(bdi, f.item_data(), names, values, errors):
                self.no_block = self.no_block + (bdi,)
                for name in names:
                    errors.pop(name, None)
                todo.extend(names)
        for name in todo:
            e = self.entries.get(name)
            if not isinstance(e, tuple):
                errors[name] = e or "unknown_item"
                continue
            di, req, unit = e
            res, f = await self._read(link, di, req)
            if res != lk.OK:
                errors[name] = lk.result_name(res)
                continue
            if f.abnormal:
                errors[name] = self._error_reason(f)
                continue
            try:
                mag, dec = dlt645_items.decode_scaled(di, f.item_data(), self.version)
            except dlt645.DLT645Error as exc:
                errors[name] = "decode:" + type(exc).__name__
                continue
            values[name] = (Num(mag, dec), unit)
        return values, errors

    def _split_block(self, bdi, data, names, values, errors):
        """Members of a block reply -> values; False when the reply does not fit the block."""
        row, block = dlt645_items.lookup(bdi, self.version)
        size = row.size
        n = len(data)
        if n == 0 or n % size:
            return False
        count = n // size
        shift, mask, lo = block[0], block[1], block[2]
        for name in names:
            di, _req, unit = self.entries[name]
            k = ((di >> shift) & mask) - lo
            if k < 0 or k >= count:
                errors[name] = "meter_error:no_such_data"  # the meter's block stops short of it
                continue
            try:
                mag, dec = dlt645_items.decode_scaled(di, data[k * size:(k + 1) * size], self.version)
            except dlt645.DLT645Error as exc:
                errors[name] = "decode:" + type(exc).__name__
                continue
            values[name] = (Num(mag, dec), unit)
        return True

    def requests_per_poll(self, group=0):
        """How many requests a poll of this group sends (for the poll budget)."""
        blocks, singles = self.plans[group]
        return len(blocks) + len(singles)

    async def read_clock(self, link, tz_offset_s):
        """The meter's clock as Unix seconds (UTC), or (None, reason).
        Meters keep local time: tz_offset_s is local - UTC (Beijing: 28800)."""
        link.configure(self.line[0], self.line[1], self.line[2], self.line[3], self.invert)
        dis = (0x04000101, 0x04000102) if self.version == 2007 else (0xC010, 0xC011)
        got = []
        for di in dis:
            res, f = await self._read(link, di)
            if res != lk.OK:
                return None, lk.result_name(res)
            if f.abnormal:
                return None, self._error_reason(f)
            try:
                got.append(dlt645_items.decode_item(di, f.item_data(), self.version))
            except dlt645.DLT645Error as exc:
                return None, "decode:" + type(exc).__name__
        (y, mo, d, _w), (h, mi, sec) = got
        return civil_to_epoch(y, mo, d, h, mi, sec) - tz_offset_s, None


def civil_to_epoch(y, mo, d, h=0, mi=0, s=0):
    """Seconds since 1970-01-01 00:00 of a calendar date and time (proleptic
    Gregorian, no time zone): the same on every port (time.mktime is not)."""
    y -= mo <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + h * 3600 + mi * 60 + s


def epoch_to_civil(t):
    """Inverse of civil_to_epoch: (year, month, day, hour, minute, second, weekday 0=Sunday)."""
    days = t // 86400
    rem = t - days * 86400
    weekday = (days + 4) % 7  # 1970-01-01 was a Thursday
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    mo = mp + (3 if mp < 10 else -9)
    if mo <= 2:
        y += 1
    return (y, mo, d, rem // 3600, (rem // 60) % 60, rem % 60, weekday)


def _modbus_plan(p, extra):
    """Fill a new Modbus Profile: the fewest reads covering each group, their requests, the units."""
    p.model_key = extra[0]
    p.model = modbus_maps.model(extra[0])
    p.unit = extra[1]
    known = modbus_maps.quantities(p.model)
    p.quantity_units = {}
    for pt in p.model["points"]:
        p.quantity_units[pt[0]] = pt[4]
    p.names = {}  # quantity -> [published names]
    p.units = {}  # published name -> unit
    p.plans = []  # per group: (planned reads, their requests, [(item, reason)])
    for _gname, items, _iv in p.groups:
        bad = []
        qs = []
        for item in items:
            q = item
            alias = ITEM_ALIASES.get(item)
            if alias is not None:
                q = alias[2]
            if q is None or q not in known:
                bad.append((item, "not_in_model" if alias is not None else "unknown_item"))
                continue
            names = p.names.setdefault(q, [])
            if item not in names:
                names.append(item)
            p.units[item] = p.quantity_units[q]
            if q not in qs:
                qs.append(q)
        reads = modbus_maps.plan(p.model, qs) if qs else []
        p.plans.append((reads, [r.request(p.unit) for r in reads], bad))


class ModbusMeter(Meter):
    """Modbus RTU meter of a known model (modbus_maps): the items are
    covered by the fewest read requests."""

    model = _shared("model")
    model_key = _shared("model_key")  # the name the config gave ("sdm120")
    unit = _shared("unit")
    names = _shared("names")
    units = _shared("quantity_units")

    def __init__(self, cfg, defaults=None):
        Meter.__init__(self, cfg, defaults)
        name = cfg.get("model")
        try:
            model = modbus_maps.model(name)
        except (ValueError, TypeError):
            raise ConfigError("%s: unknown Modbus model %r (known: %s)" % (
                self.id, name, ", ".join(sorted(modbus_maps.MODELS))))
        unit = cfg.get("unit_id", model["unit"])
        if isinstance(unit, bool) or not isinstance(unit, int) or not 1 <= unit <= 247:
            raise ConfigError("%s: unit_id must be 1..247, got %r" % (self.id, unit))
        line = self._line(cfg, model["baud"], model["parity"])
        # the unit id is in the requests: meters share a profile only with the same unit id
        self._profile(self._common(cfg, defaults, line, (name, unit)), _modbus_plan)

    def requests_per_poll(self, group=0):
        return len(self.plans[group][0])

    async def read_clock(self, link, tz_offset_s):
        return None, "no_clock"  # the Modbus maps we support have no clock registers

    async def poll(self, link, group=0):
        values = {}
        errors = {}
        reads, requests, bad = self.plans[group]
        wanted = self.groups[group][1]
        for item, why in bad:
            errors[item] = why
        self.select_line(link)
        for k in range(len(reads)):
            rd = reads[k]
            res = await link.modbus_async(requests[k], self.unit, rd.function, rd.count, self.stats,
                                          self.timeout_ms, self.byte_timeout_ms, self.retries)
            reason = None
            if res != lk.OK:
                reason = lk.result_name(res)
            elif link.reply.status == modbus.EXCEPTION:
                reason = "meter_error:" + modbus.exception_name(link.reply.exception_code)
            else:
                try:
                    got = modbus_maps.decode(rd, link.buf, link.reply.data_start, link.reply.data_end)
                except ValueError:
                    reason = "bad_frame"
                    got = None
            for q, _off, _typ, _scale in rd.items:
                for name in self.names[q]:
                    if name not in wanted:
                        continue
                    if reason is not None:
                        errors[name] = reason
                        continue
                    v = got[q]
                    if v - v != 0:  # NaN or infinite (a meter's "no value")
                        errors[name] = "not_a_number"
                    else:
                        values[name] = (v, self.units[q])
        return values, errors


def build(cfg, defaults=None):
    """A Meter for one config entry; raises ConfigError naming the meter."""
    proto = cfg.get("protocol") if isinstance(cfg, dict) else None
    if proto == "modbus":
        return ModbusMeter(cfg, defaults)
    return DltMeter(cfg, defaults)
