# The meters side of polling: for each protocol, what to send for an item and
# how to turn the reply into a value. The RS-485 transaction itself is
# gateway/link.py; the schedule is gateway/poller.py. Pure: no I/O here.
#
# Items are named the same for every protocol so consumers need not care
# which one a meter speaks (ITEM_ALIASES); a raw DL/T 645 DI ("02010100",
# "B611") or a Modbus map quantity ("voltage_a") works too. Config keys:
# docs/gateway-config.md.
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

# Line defaults per protocol (PROTOCOLS.md): 2007 meters 2400 8E1, 1997 start
# at 1200 8E1; Modbus: the model's factory setting.
_DLT_LINE = {"dlt645-2007": 2400, "dlt645-1997": 1200}
COLLECTOR_TIMEOUT_MS = 2000  # a collector relays the request to its meters first


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


class Meter:
    """One configured meter: its line settings, timeouts, counters and items.

    poll(link) -> (values, errors): values {name: (value, unit)}, errors
    {name: reason}. A failed read is an error, never a zero."""

    def __init__(self, cfg, defaults=None):
        defaults = defaults or {}
        if not isinstance(cfg, dict):
            raise ConfigError("a meter entry must be an object, got %r" % (cfg,))
        mid = cfg.get("id")
        if not isinstance(mid, str) or not mid:
            raise ConfigError("meter without a string 'id': %r" % (cfg,))
        self.id = mid
        self.protocol = cfg.get("protocol")
        if self.protocol not in PROTOCOLS:
            raise ConfigError("%s: protocol must be one of %s, got %r" % (mid, ", ".join(PROTOCOLS), self.protocol))
        items = cfg.get("items", DEFAULT_ITEMS)
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError("%s: items must be a non-empty list" % mid)
        for it in items:
            if not isinstance(it, str):
                raise ConfigError("%s: item %r is not a string" % (mid, it))
        self.items = tuple(items)
        base = COLLECTOR_TIMEOUT_MS if cfg.get("collector") else defaults.get(
            "response_timeout_ms", lk.RESPONSE_TIMEOUT_MS)
        self.timeout_ms = _int_opt(cfg, "response_timeout_ms", base, 20, lk.MAX_TIMEOUT_MS, mid)
        self.byte_timeout_ms = _int_opt(cfg, "byte_timeout_ms", defaults.get("byte_timeout_ms", lk.BYTE_TIMEOUT_MS),
                                        5, 1000, mid)
        self.retries = _int_opt(cfg, "retries", defaults.get("retries", 1), 0, 5, mid)
        self.counters = lk.Counters()
        self.last_error = None
        self.seq = 0

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
        self.line = (baud, parity, 8, stop)

    def select_line(self, link):
        link.configure(self.line[0], self.line[1], self.line[2], self.line[3])


class DltMeter(Meter):
    """DL/T 645-2007 or -1997: one read request per item."""

    def __init__(self, cfg, defaults=None):
        Meter.__init__(self, cfg, defaults)
        self.version = 2007 if self.protocol == "dlt645-2007" else 1997
        addr = cfg.get("address")
        if isinstance(addr, int) and not isinstance(addr, bool):
            addr = "%012d" % addr
        if not isinstance(addr, str):
            raise ConfigError("%s: address must be a string of 12 digits" % self.id)
        try:
            self.address = dlt645.address_to_wire(addr)
        except dlt645.DLT645Error as exc:
            raise ConfigError("%s: address %r: %s" % (self.id, addr, exc))
        self._line(cfg, _DLT_LINE[self.protocol], "E")
        # item -> (DI int, request frame) or the reason it cannot be read
        self.plan = []
        slot = 0 if self.version == 2007 else 1
        for name in self.items:
            di = name
            alias = ITEM_ALIASES.get(name)
            if alias is not None:
                di = alias[slot]
                if di is None:
                    self.plan.append((name, None, "not_in_dlt645_%d" % self.version))
                    continue
            try:
                info = dlt645_items.item_info(di, self.version)
                if info["kind"] != "number" or info["block"]:
                    raise dlt645_items.UnknownItem("not a single number")
                di_int = int(di, 16)
                if self.version == 2007:
                    req = dlt645.build_read(self.address, di_int)
                else:
                    req = dlt645_1997.build_read(self.address, di_int)
            except (ValueError, dlt645.DLT645Error):
                self.plan.append((name, None, "unknown_item"))
                continue
            self.plan.append((name, (di_int, req, info["unit"]), None))
        self._fn = dlt645.FN_READ if self.version == 2007 else dlt645_1997.FN_READ

    def poll(self, link):
        values = {}
        errors = {}
        self.select_line(link)
        for name, what, why in self.plan:
            if what is None:
                errors[name] = why
                continue
            di, req, unit = what
            res = link.dlt645(req, self.address, self._fn, di, self.counters,
                              self.timeout_ms, self.byte_timeout_ms, self.retries)
            if res != lk.OK:
                errors[name] = lk.result_name(res)
                continue
            f = link.frame
            if f.abnormal:
                names = (dlt645.error_names(f.error) if self.version == 2007
                         else dlt645_1997.error_names(f.error)) if f.error is not None else ()
                errors[name] = "meter_error:" + ("+".join(names) or "unknown")
                continue
            try:
                mag, dec = dlt645_items.decode_scaled(di, f.item_data(), self.version)
            except dlt645.DLT645Error as exc:
                errors[name] = "decode:" + type(exc).__name__
                continue
            values[name] = (Num(mag, dec), unit)
        return values, errors


class ModbusMeter(Meter):
    """Modbus RTU meter of a known model (modbus_maps): the items are
    covered by the fewest read requests."""

    def __init__(self, cfg, defaults=None):
        Meter.__init__(self, cfg, defaults)
        name = cfg.get("model")
        try:
            self.model = modbus_maps.model(name)
        except (ValueError, TypeError):
            raise ConfigError("%s: unknown Modbus model %r (known: %s)" % (
                self.id, name, ", ".join(sorted(modbus_maps.MODELS))))
        unit = cfg.get("unit_id", self.model["unit"])
        if isinstance(unit, bool) or not isinstance(unit, int) or not 1 <= unit <= 247:
            raise ConfigError("%s: unit_id must be 1..247, got %r" % (self.id, unit))
        self.unit = unit
        self._line(cfg, self.model["baud"], self.model["parity"])
        known = modbus_maps.quantities(self.model)
        self.bad = []  # (name, reason)
        self.names = {}  # quantity -> [published names]
        for item in self.items:
            q = item
            alias = ITEM_ALIASES.get(item)
            if alias is not None:
                q = alias[2]
            if q is None or q not in known:
                self.bad.append((item, "not_in_model" if alias is not None else "unknown_item"))
                continue
            self.names.setdefault(q, []).append(item)
        self.units = {}
        for p in self.model["points"]:
            self.units[p[0]] = p[4]
        self.reads = modbus_maps.plan(self.model, list(self.names)) if self.names else []
        self.requests = [r.request(self.unit) for r in self.reads]

    def poll(self, link):
        values = {}
        errors = {}
        for item, why in self.bad:
            errors[item] = why
        self.select_line(link)
        for k in range(len(self.reads)):
            rd = self.reads[k]
            res = link.modbus(self.requests[k], self.unit, rd.function, rd.count, self.counters,
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
