"""Site description for the meter-bus simulator: load, validate, and hold run-time state.

A *site* is what an installer finds on the ground: RS-485 buses, meter boxes with
numbered positions, meters in those positions, breakers on the meters' outgoing
lines, customers fed by the breakers, the work order the crew was given, and a
list of faults (the ground truth a self-check should discover). The file format
is TOML and is documented field by field in docs/site-format.md.

Public API
----------
- ``load_site(path) -> Site`` and ``load_site_text(text, name="<site>") -> Site``
- ``SiteError``: the only exception raised for a bad site. Its message names the
  file, the field path (0-based indexes, e.g. ``meters[3].address``), the reason
  and, when it can be found in the source, the line.
- ``Site``: frozen dataclass; look-ups ``meter(id)``, ``bus(name)``,
  ``customer(id)``, ``breaker(id)``, ``fault(id)``, ``meters_on_bus(name)``,
  ``meter_at(box, position)``, ``work_order_for(box, position)``; ``to_dict()``.
- ``SiteState(site)``: mutable run-time state (breakers open/closed, faults on/off)
  that the electrical model and the bus read; ``link(meter_id)`` summarises the
  communication-level faults for one meter.

Physics lives in ``metergate.sim.electrical``; this module never computes currents.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import threading
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

PROTOCOLS = ("dlt645-2007", "dlt645-1997", "modbus")
KINDS = ("single-phase", "three-phase-4w", "three-phase-3w")
PHASES = ("a", "b", "c")
PARITIES = ("E", "N", "O")
BAUDS = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)

# Which models exist per protocol and which meter kinds each can be.
MODELS = {
    "dlt645-2007": {"generic-2007": KINDS},
    "dlt645-1997": {"generic-1997": KINDS},
    "modbus": {
        "sdm120": ("single-phase",),
        "ddsu666": ("single-phase",),
        "sdm630": ("three-phase-4w", "three-phase-3w"),
    },
}
DEFAULT_MODEL = {"dlt645-2007": "generic-2007", "dlt645-1997": "generic-1997"}

# Default current ratings (Ib, Imax) in A: direct-connected meters, no CT modelled.
DEFAULT_RATING = {"single-phase": (5.0, 60.0), "three-phase-4w": (10.0, 100.0), "three-phase-3w": (10.0, 100.0)}

# Active combination word (DI 04000601): b0 +fwd, b1 -fwd, b2 +rev, b3 -rev.
# Forward + reverse is the common factory default (PROTOCOLS.md "Gotcha").
DEFAULT_COMBINATION_WORD = 0x05

FAULT_TYPES = (
    "ab_swapped", "loose_contact", "wrong_line_settings", "unpowered", "wrong_meter",
    "duplicate_address", "reversed", "phase_neutral_swapped", "shared_neutral", "wiring",
    "lost_phase", "breaker_mixup", "voltage_deviation", "earth_leakage",
)


class SiteError(ValueError):
    """A site file that cannot be used. ``path`` is the field path, ``line`` the 1-based line or None."""

    def __init__(self, source: str, path: str, reason: str, line: int | None = None):
        self.source, self.path, self.reason, self.line = source, path, reason, line
        msg = "%s: %s: %s" % (source, path, reason) if path else "%s: %s" % (source, reason)
        if line:
            msg += " (line %d)" % line
        super().__init__(msg)


# ---------------------------------------------------------------------------
# Data classes (all frozen: the site is the ground truth; run-time changes go to SiteState)


@dataclass(frozen=True)
class LineSettings:
    """Serial character format. ``parity`` is "E", "N" or "O"."""

    baud: int
    parity: str = "E"
    data_bits: int = 8
    stop_bits: int = 1

    @property
    def bits_per_char(self) -> int:
        """Start + data + parity + stop bits: 11 for 8E1, 10 for 8N1."""
        return 1 + self.data_bits + (0 if self.parity == "N" else 1) + self.stop_bits

    @property
    def char_time_s(self) -> float:
        """Wire time of one character in seconds."""
        return self.bits_per_char / self.baud

    def __str__(self) -> str:
        return "%d %d%s%d" % (self.baud, self.data_bits, self.parity, self.stop_bits)


@dataclass(frozen=True)
class Bus:
    """One RS-485 bus. ``line`` is the gateway-side default line setting for it."""

    name: str
    line: LineSettings


@dataclass(frozen=True)
class Box:
    """A meter box with positions numbered 1..positions."""

    id: str
    name: str
    positions: int


@dataclass(frozen=True)
class EnergyInit:
    """Initial energy registers of a meter (kWh / kvarh)."""

    forward_kwh: float = 0.0
    reverse_kwh: float = 0.0
    reactive_pos_kvarh: float = 0.0
    reactive_neg_kvarh: float = 0.0


@dataclass(frozen=True)
class Meter:
    """A meter as installed.

    ``address`` is the 12-digit DL/T 645 address (None for Modbus), ``unit_id`` the
    Modbus unit id (None for DL/T 645). ``phase`` is the supply phase a single-phase
    meter is connected to. ``line`` is the meter's own configured line setting
    (defaults to its bus's); a ``wrong_line_settings`` fault overrides it at run
    time (see ``SiteState.link``). ``options`` is passed untouched to the meter
    model (documented keys: ``block_read`` bool, ``dis`` list of hex DI strings).
    """

    id: str
    name: str
    box: str
    position: int
    bus: str
    protocol: str
    model: str
    kind: str
    address: str | None
    unit_id: int | None
    phase: str
    line: LineSettings
    response_delay_ms: float
    ib: float
    imax: float
    asset: str
    combination_word: int
    neutral_abnormal_pct: float
    energy: EnergyInit
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def bus_address(self) -> str:
        """The address the meter answers to on its bus: 12 digits, or the unit id as text."""
        return self.address if self.address is not None else str(self.unit_id)


@dataclass(frozen=True)
class Breaker:
    """A breaker, by design on the outgoing line of the meter at (box, position), feeding ``customer``."""

    id: str
    box: str
    position: int
    customer: str
    closed: bool = True


@dataclass(frozen=True)
class Customer:
    """A customer's load. Power is net consumption in kW at nominal voltage; negative is export.

    ``pattern`` is "constant" (``kw``), "profile" (24 hourly kW values, step-wise,
    by time of day ``t % 86400``) or "steps" (``(second, kW)`` pairs from t=0, each
    held until the next; repeating every ``period_s`` when that is set).
    ``pf_kind`` "lagging" means inductive (Q > 0 when consuming). ``phase_weights``
    splits a three-phase customer's power over phases a, b, c.
    """

    id: str
    name: str
    pattern: str
    kw: float
    pf: float
    pf_kind: str
    profile: tuple[float, ...] = ()
    steps: tuple[tuple[float, float], ...] = ()
    period_s: float | None = None
    exporting: bool = False
    phase_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def power_kw(self, t: float) -> float:
        """Net active power in kW at simulation time ``t`` seconds (t=0 is midnight of day 0)."""
        if self.pattern == "constant":
            return self.kw
        if self.pattern == "profile":
            return self.profile[int((t % 86400) // 3600)]
        tt = t % self.period_s if self.period_s else t
        value = self.steps[0][1] if tt >= self.steps[0][0] else 0.0
        for start, kw in self.steps:
            if tt >= start:
                value = kw
            else:
                break
        return value

    @property
    def tan_phi(self) -> float:
        """Q/P ratio with sign: positive for lagging (inductive), negative for leading."""
        tan = math.tan(math.acos(self.pf))
        return tan if self.pf_kind == "lagging" else -tan


@dataclass(frozen=True)
class WorkOrderEntry:
    """What the work order says should be at (box, position)."""

    box: str
    position: int
    asset: str
    customer: str | None = None
    breaker: str | None = None


@dataclass(frozen=True)
class CurrentTerm:
    """A current terminal connection: ``sign`` * I(``phase``) (e.g. "-Ib" is (-1, "b"))."""

    sign: int
    phase: str

    def __str__(self) -> str:
        return ("-" if self.sign < 0 else "") + "I" + self.phase


@dataclass(frozen=True)
class Fault:
    """One fault. ``params`` holds validated, normalised parameters (see docs/faults.md).

    Normalised parameter types: meter/bus/breaker ids are str; ``meters`` a tuple of
    ids; ``voltages`` a tuple of phase letters; ``currents`` a tuple of CurrentTerm;
    rates and fractions float; ``phases`` a tuple of phase letters.
    """

    id: str
    type: str
    enabled: bool
    params: Mapping[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclass(frozen=True)
class Site:
    """A validated site. Lists keep the file's order."""

    name: str
    source: str
    nominal_voltage: float
    nominal_line_voltage: float
    frequency: float
    buses: tuple[Bus, ...]
    boxes: tuple[Box, ...]
    meters: tuple[Meter, ...]
    breakers: tuple[Breaker, ...]
    customers: tuple[Customer, ...]
    work_order: tuple[WorkOrderEntry, ...]
    faults: tuple[Fault, ...]

    def _find(self, items, attr, key, what):
        for item in items:
            if getattr(item, attr) == key:
                return item
        raise KeyError("%s %r not in site %s" % (what, key, self.name))

    def meter(self, meter_id: str) -> Meter:
        return self._find(self.meters, "id", meter_id, "meter")

    def bus(self, name: str) -> Bus:
        return self._find(self.buses, "name", name, "bus")

    def box(self, box_id: str) -> Box:
        return self._find(self.boxes, "id", box_id, "box")

    def customer(self, customer_id: str) -> Customer:
        return self._find(self.customers, "id", customer_id, "customer")

    def breaker(self, breaker_id: str) -> Breaker:
        return self._find(self.breakers, "id", breaker_id, "breaker")

    def fault(self, fault_id: str) -> Fault:
        return self._find(self.faults, "id", fault_id, "fault")

    def meters_on_bus(self, name: str) -> list[Meter]:
        return [m for m in self.meters if m.bus == name]

    def meter_at(self, box: str, position: int) -> Meter | None:
        for m in self.meters:
            if m.box == box and m.position == position:
                return m
        return None

    def work_order_for(self, box: str, position: int) -> WorkOrderEntry | None:
        for w in self.work_order:
            if w.box == box and w.position == position:
                return w
        return None

    def breakers_at(self, box: str, position: int) -> list[Breaker]:
        """Breakers the design puts on the outgoing line of (box, position)."""
        return [b for b in self.breakers if b.box == box and b.position == position]

    def to_dict(self) -> dict:
        """Plain dict (tuples become lists, CurrentTerm becomes "-Ib" text), e.g. for JSON."""

        def conv(obj):
            if isinstance(obj, CurrentTerm):
                return str(obj)
            if dataclasses.is_dataclass(obj):
                return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            if isinstance(obj, Mapping):
                return {k: conv(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [conv(v) for v in obj]
            return obj

        return conv(self)


# ---------------------------------------------------------------------------
# Run-time state


@dataclass(frozen=True)
class Link:
    """Communication-level view of one meter, for the bus/transport layer.

    ``line`` is the meter's actual line setting (after ``wrong_line_settings``);
    ``inverted`` means the A/B pair is swapped between gateway and this meter
    (``ab_swapped`` at the gateway or at the meter; two swaps cancel);
    ``corrupt_rate`` / ``drop_rate`` are per-frame probabilities (loose contact on the
    meter or its bus; combined as independent events). Whether the meter is powered
    is an electrical question: use ``electrical.measure(...).powered``.
    """

    line: LineSettings
    inverted: bool
    corrupt_rate: float
    drop_rate: float


class SiteState:
    """Mutable run-time state of a site: breaker positions and fault switches.

    Attributes ``breakers`` (breaker id -> closed) and ``faults`` (fault id -> enabled)
    start from the file. Change them with ``set_breaker`` / ``set_fault`` (thread-safe;
    each change bumps ``version`` so readers can cache). ``frequency`` may also be
    changed to simulate a grid frequency deviation.
    """

    def __init__(self, site: Site):
        self.site = site
        self._lock = threading.RLock()
        self.breakers: dict[str, bool] = {b.id: b.closed for b in site.breakers}
        self.faults: dict[str, bool] = {f.id: f.enabled for f in site.faults}
        self.frequency: float = site.frequency
        self.version = 0

    def set_breaker(self, breaker_id: str, closed: bool) -> None:
        with self._lock:
            if breaker_id not in self.breakers:
                raise KeyError("no breaker %r" % breaker_id)
            self.breakers[breaker_id] = bool(closed)
            self.version += 1

    def set_fault(self, fault_id: str, enabled: bool) -> None:
        with self._lock:
            if fault_id not in self.faults:
                raise KeyError("no fault %r" % fault_id)
            self.faults[fault_id] = bool(enabled)
            self.version += 1

    def active_faults(self, type: str | None = None) -> list[Fault]:
        """Enabled faults, in file order, optionally of one type."""
        with self._lock:
            return [f for f in self.site.faults if self.faults.get(f.id) and (type is None or f.type == type)]

    def meter_faults(self, meter_id: str, type: str | None = None) -> list[Fault]:
        """Enabled faults whose ``meter`` parameter (or ``meters`` list) names this meter."""
        return [f for f in self.active_faults(type)
                if f.get("meter") == meter_id or meter_id in (f.get("meters") or ())]

    def link(self, meter_id: str) -> Link:
        meter = self.site.meter(meter_id)
        line = meter.line
        inverted = False
        keep = 1.0
        intact = 1.0
        for f in self.active_faults():
            if f.type == "wrong_line_settings" and f.get("meter") == meter_id:
                line = LineSettings(f.get("baud", line.baud), f.get("parity", line.parity),
                                    line.data_bits, line.stop_bits)
            elif f.type == "ab_swapped" and f.get("at") in ("gateway", meter_id):
                inverted = not inverted
            elif f.type == "loose_contact" and (f.get("meter") == meter_id or f.get("bus") == meter.bus):
                keep *= 1.0 - f.get("drop_rate", 0.0)
                intact *= 1.0 - f.get("corrupt_rate", 0.0)
        return Link(line=line, inverted=inverted, corrupt_rate=1.0 - intact, drop_rate=1.0 - keep)

    def breaker_meter(self, breaker_id: str) -> str | None:
        """Id of the meter whose outgoing line the breaker is physically on (after ``breaker_mixup``)."""
        for f in self.active_faults("breaker_mixup"):
            if f.get("breaker") == breaker_id:
                return f.get("meter")
        b = self.site.breaker(breaker_id)
        m = self.site.meter_at(b.box, b.position)
        return m.id if m else None


# ---------------------------------------------------------------------------
# Loading and validation


def load_site(path) -> Site:
    """Read and validate a site file. Raises SiteError (also for unreadable files)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteError(path.name, "", "cannot read: %s" % exc.strerror) from None
    return load_site_text(text, path.name)


def load_site_text(text: str, name: str = "<site>") -> Site:
    """Parse and validate site TOML text; ``name`` is used in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(name, "", "invalid TOML: %s" % exc) from None
    return _Validator(text, name).site(data)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _locate(text: str, path: tuple) -> int | None:
    """Best-effort 1-based line of a field path like ("meters", 3, "address")."""
    lines = text.splitlines()
    headers = []
    for n, line in enumerate(lines):
        m = _HEADER.match(line)
        if m:
            headers.append((n, m.group(1) == "[[", m.group(2).replace(" ", "")))
    if not path:
        return None
    head = path[0]
    rest = list(path[1:])
    found = None
    if rest and isinstance(rest[0], int):
        idx = rest.pop(0)
        matches = [n for n, arr, nm in headers if arr and nm == head]
        if idx >= len(matches):
            return None
        start = matches[idx]
    else:
        matches = [n for n, arr, nm in headers if not arr and nm == head]
        if matches:
            start = matches[0]
        else:
            # a top-level key (before the first header)
            stop = headers[0][0] if headers else len(lines)
            for n in range(stop):
                if re.match(r"^\s*%s\s*=" % re.escape(str(head)), lines[n]):
                    return n + 1
            return None
    found = start + 1
    end = next((n for n, _, nm in headers if n > start and not nm.startswith(head + ".")), len(lines))
    prefix = head
    for comp in rest:
        if isinstance(comp, int):
            continue
        prefix = prefix + "." + comp
        hit = None
        for n in range(start, end):
            line = lines[n]
            if re.match(r"^\s*%s\s*=" % re.escape(comp), line) or re.match(r"^\s*\[\[?\s*%s\s*\]" % re.escape(prefix), line):
                hit = n
                break
            if n > start and re.search(r"[{,]\s*%s\s*=" % re.escape(comp), line):
                hit = n
                break
        if hit is None:
            break
        found, start = hit + 1, hit
    return found


def _path_text(path: tuple) -> str:
    out = ""
    for comp in path:
        if isinstance(comp, int):
            out += "[%d]" % comp
        else:
            out += ("." if out else "") + comp
    return out


_CURRENT = re.compile(r"^([+-]?)\s*I?([abc])$", re.IGNORECASE)
_VOLTAGE = re.compile(r"^U?([abc])$", re.IGNORECASE)
_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


class _Validator:
    def __init__(self, text: str, name: str):
        self.text, self.name = text, name

    # -- error helpers
    def fail(self, path: tuple, reason: str):
        raise SiteError(self.name, _path_text(path), reason, _locate(self.text, path))

    def table(self, data, path, allowed, required=()):
        if not isinstance(data, dict):
            self.fail(path, "must be a table")
        for key in data:
            if key not in allowed:
                self.fail(path + (key,), "unknown key (expected one of: %s)" % ", ".join(allowed))
        for key in required:
            if key not in data:
                self.fail(path, "missing required key %r" % key)
        return data

    def array(self, data, key, path=()):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(path + (key,), "must be an array of tables ([[%s]])" % key)
        return value

    def str_(self, d, key, path, default=None, required=False, choices=None, ident=False):
        if key not in d:
            if required:
                self.fail(path, "missing required key %r" % key)
            return default
        v = d[key]
        if not isinstance(v, str) or not v:
            self.fail(path + (key,), "%r must be a non-empty string" % (v,))
        if choices and v not in choices:
            self.fail(path + (key,), "%r is not one of: %s" % (v, ", ".join(choices)))
        if ident and not _ID.match(v):
            self.fail(path + (key,), "%r may only hold letters, digits, '_', '-', '.'" % v)
        return v

    def num(self, d, key, path, default=None, required=False, lo=None, hi=None, integer=False):
        if key not in d:
            if required:
                self.fail(path, "missing required key %r" % key)
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.fail(path + (key,), "%r must be %s" % (v, "an integer" if integer else "a number"))
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(path + (key,), "%r must be finite" % v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(path + (key,), "%r must be between %s and %s" % (v, lo, hi))
        return v if integer else float(v)

    def bool_(self, d, key, path, default):
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.fail(path + (key,), "%r must be true or false" % (v,))
        return v

    # -- sections
    def site(self, data) -> Site:
        self.table(data, (), ("site", "buses", "boxes", "meters", "breakers", "customers", "work_order", "faults"),
                   required=("site",))
        head = self.table(data["site"], ("site",), ("name", "nominal_voltage", "nominal_line_voltage", "frequency"),
                          required=("name",))
        p = ("site",)
        name = self.str_(head, "name", p, required=True)
        un = self.num(head, "nominal_voltage", p, 220.0, lo=50, hi=1000)
        ul = self.num(head, "nominal_line_voltage", p, 380.0 if un == 220.0 else round(un * math.sqrt(3), 1),
                      lo=50, hi=2000)
        freq = self.num(head, "frequency", p, 50.0, lo=40, hi=70)

        buses = self.buses(data)
        boxes = self.boxes(data)
        customers = self.customers(data)
        meters = self.meters(data, buses, boxes)
        breakers = self.breakers(data, boxes, customers)
        work = self.work_order(data, boxes, meters, breakers, customers)
        faults = self.faults(data, buses, boxes, meters, breakers)
        site = Site(name, self.name, un, ul, freq, tuple(buses.values()), tuple(boxes.values()), tuple(meters),
                    tuple(breakers), tuple(customers.values()), tuple(work), tuple(faults))
        self.cross_checks(site)
        return site

    def line(self, d, path, default: LineSettings | None):
        baud = self.num(d, "baud", path, default.baud if default else None, required=default is None, integer=True)
        if baud not in BAUDS:
            self.fail(path + ("baud",), "%r is not a standard baud rate (%s)" % (baud, ", ".join(map(str, BAUDS))))
        parity = self.str_(d, "parity", path, default.parity if default else "E")
        if parity.upper() not in PARITIES:
            self.fail(path + ("parity",), "%r must be E, N or O" % parity)
        data_bits = self.num(d, "data_bits", path, default.data_bits if default else 8, integer=True)
        if data_bits not in (7, 8):
            self.fail(path + ("data_bits",), "%r must be 7 or 8" % data_bits)
        stop_bits = self.num(d, "stop_bits", path, default.stop_bits if default else 1, integer=True)
        if stop_bits not in (1, 2):
            self.fail(path + ("stop_bits",), "%r must be 1 or 2" % stop_bits)
        return LineSettings(baud, parity.upper(), data_bits, stop_bits)

    def buses(self, data):
        out = {}
        items = self.array(data, "buses")
        if not items:
            self.fail(("buses",), "at least one bus is needed ([[buses]])")
        for i, d in enumerate(items):
            p = ("buses", i)
            self.table(d, p, ("name", "baud", "parity", "data_bits", "stop_bits"), required=("name", "baud"))
            name = self.str_(d, "name", p, required=True, ident=True)
            if name in out:
                self.fail(p + ("name",), "duplicate bus name %r" % name)
            out[name] = Bus(name, self.line(d, p, None))
        return out

    def boxes(self, data):
        out = {}
        items = self.array(data, "boxes")
        if not items:
            self.fail(("boxes",), "at least one meter box is needed ([[boxes]])")
        for i, d in enumerate(items):
            p = ("boxes", i)
            self.table(d, p, ("id", "name", "positions"), required=("id", "positions"))
            bid = self.str_(d, "id", p, required=True, ident=True)
            if bid in out:
                self.fail(p + ("id",), "duplicate box id %r" % bid)
            out[bid] = Box(bid, self.str_(d, "name", p, bid), self.num(d, "positions", p, required=True, lo=1, hi=200,
                                                                         integer=True))
        return out

    def position(self, d, path, boxes):
        """(box, position) of an entry; ``box`` may be left out when the site has one box."""
        if "box" in d:
            box = self.str_(d, "box", path)
            if box not in boxes:
                self.fail(path + ("box",), "no box %r (boxes: %s)" % (box, ", ".join(boxes)))
        elif len(boxes) == 1:
            box = next(iter(boxes))
        else:
            self.fail(path, "missing key 'box' (the site has several boxes)")
        pos = self.num(d, "position", path, required=True, integer=True)
        if not 1 <= pos <= boxes[box].positions:
            self.fail(path + ("position",), "%d is outside box %s (positions 1..%d)" % (pos, box, boxes[box].positions))
        return box, pos

    def customers(self, data):
        out = {}
        keys = ("id", "name", "kw", "pf", "pf_kind", "pattern", "profile", "steps", "period_s", "exporting",
                "phase_weights")
        for i, d in enumerate(self.array(data, "customers")):
            p = ("customers", i)
            self.table(d, p, keys, required=("id",))
            cid = self.str_(d, "id", p, required=True, ident=True)
            if cid in out:
                self.fail(p + ("id",), "duplicate customer id %r" % cid)
            given = [k for k in ("profile", "steps") if k in d]
            if len(given) > 1:
                self.fail(p + ("steps",), "give either 'profile' or 'steps', not both")
            pattern = self.str_(d, "pattern", p, given[0] if given else "constant",
                                choices=("constant", "profile", "steps"))
            exporting = self.bool_(d, "exporting", p, False)
            pf = self.num(d, "pf", p, 1.0, lo=0.05, hi=1.0)
            pf_kind = self.str_(d, "pf_kind", p, "lagging", choices=("lagging", "leading"))
            kw = self.num(d, "kw", p, 0.0, required=pattern == "constant", lo=-1000, hi=1000)
            profile, steps, values = (), (), [kw]
            if pattern == "profile":
                prof = d.get("profile")
                if not isinstance(prof, list) or len(prof) != 24 or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in prof):
                    self.fail(p + ("profile",), "must be a list of 24 numbers (kW for each hour of the day)")
                profile = tuple(float(v) for v in prof)
                values = list(profile)
            elif pattern == "steps":
                st = d.get("steps")
                ok = isinstance(st, list) and st and all(
                    isinstance(s, list) and len(s) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                for v in s) for s in st)
                if not ok:
                    self.fail(p + ("steps",), "must be a non-empty list of [seconds, kW] pairs")
                times = [s[0] for s in st]
                if times != sorted(times) or len(set(times)) != len(times) or times[0] < 0:
                    self.fail(p + ("steps",), "step times must be >= 0 and strictly increasing")
                steps = tuple((float(a), float(b)) for a, b in st)
                values = [b for _, b in steps]
            elif "profile" in d or "steps" in d:
                self.fail(p + ("pattern",), "pattern %r does not use 'profile' / 'steps'" % pattern)
            period = self.num(d, "period_s", p, None, lo=1)
            if period is not None and pattern != "steps":
                self.fail(p + ("period_s",), "only used with pattern 'steps'")
            if period is not None and steps[-1][0] >= period:
                self.fail(p + ("period_s",), "must be longer than the last step time %g" % steps[-1][0])
            if not exporting and any(v < 0 for v in values):
                self.fail(p + (pattern if pattern != "constant" else "kw",),
                          "negative power (export) needs exporting = true")
            weights = d.get("phase_weights", [1.0, 1.0, 1.0])
            if not (isinstance(weights, list) and len(weights) == 3 and all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
                    and sum(weights) > 0):
                self.fail(p + ("phase_weights",), "must be three non-negative numbers, not all zero")
            out[cid] = Customer(cid, self.str_(d, "name", p, cid), pattern, kw, pf, pf_kind, profile, steps, period,
                                exporting, tuple(float(w) for w in weights))
        return out

    def meters(self, data, buses, boxes):
        out = []
        seen_ids = set()
        seen_pos = {}
        keys = ("id", "name", "box", "position", "bus", "protocol", "model", "address", "unit_id", "kind", "phase",
                "baud", "parity", "data_bits", "stop_bits", "response_delay_ms", "ib", "imax", "asset",
                "combination_word", "neutral_abnormal_pct", "energy", "options")
        for i, d in enumerate(self.array(data, "meters")):
            p = ("meters", i)
            self.table(d, p, keys, required=("id", "position", "protocol"))
            mid = self.str_(d, "id", p, required=True, ident=True)
            if mid in seen_ids:
                self.fail(p + ("id",), "duplicate meter id %r" % mid)
            seen_ids.add(mid)
            box, pos = self.position(d, p, boxes)
            if (box, pos) in seen_pos:
                self.fail(p + ("position",), "position %s:%d already holds meter %s" % (box, pos, seen_pos[box, pos]))
            seen_pos[box, pos] = mid
            if "bus" in d:
                bus = self.str_(d, "bus", p)
                if bus not in buses:
                    self.fail(p + ("bus",), "no bus %r (buses: %s)" % (bus, ", ".join(buses)))
            elif len(buses) == 1:
                bus = next(iter(buses))
            else:
                self.fail(p, "missing key 'bus' (the site has several buses)")
            protocol = self.str_(d, "protocol", p, required=True, choices=PROTOCOLS)
            kind = self.str_(d, "kind", p, "single-phase", choices=KINDS)
            model = self.str_(d, "model", p, DEFAULT_MODEL.get(protocol))
            if model is None:
                self.fail(p, "missing key 'model' (needed for protocol %s: %s)" % (protocol, ", ".join(MODELS[protocol])))
            if model not in MODELS[protocol]:
                self.fail(p + ("model",), "%r is not a %s model (%s)" % (model, protocol, ", ".join(MODELS[protocol])))
            if kind not in MODELS[protocol][model]:
                self.fail(p + ("kind",), "model %s cannot be %s (it is %s)" % (model, kind,
                                                                                 " or ".join(MODELS[protocol][model])))
            address = unit_id = None
            if protocol == "modbus":
                if "address" in d:
                    self.fail(p + ("address",), "Modbus meters have a unit_id, not a 12-digit address")
                unit_id = self.num(d, "unit_id", p, required=True, lo=1, hi=247, integer=True)
            else:
                if "unit_id" in d:
                    self.fail(p + ("unit_id",), "DL/T 645 meters have a 12-digit address, not a unit_id")
                if "address" not in d:
                    self.fail(p, "missing required key 'address'")
                address = d["address"]
                if not isinstance(address, str):
                    self.fail(p + ("address",), "%r must be a quoted string of 12 digits" % (address,))
                if not re.fullmatch(r"[0-9]{12}", address):
                    self.fail(p + ("address",), '"%s" must be 12 digits' % address)
                if address == "999999999999":
                    self.fail(p + ("address",), "999999999999 is the broadcast address")
            phase = self.str_(d, "phase", p, "a", choices=PHASES)
            if "phase" in d and kind != "single-phase":
                self.fail(p + ("phase",), "only single-phase meters sit on one phase")
            line = self.line(d, p, buses[bus].line)
            delay = self.num(d, "response_delay_ms", p, 50.0, lo=20, hi=500)
            ib0, imax0 = DEFAULT_RATING[kind]
            ib = self.num(d, "ib", p, ib0, lo=0.01, hi=1000)
            imax = self.num(d, "imax", p, imax0, lo=0.01, hi=2000)
            if imax < ib:
                self.fail(p + ("imax",), "%g must not be below ib %g" % (imax, ib))
            asset = d.get("asset", address if address is not None else mid)
            if not isinstance(asset, str) or not asset:
                self.fail(p + ("asset",), "%r must be a non-empty string" % (asset,))
            word = self.num(d, "combination_word", p, DEFAULT_COMBINATION_WORD, lo=0, hi=0x0F, integer=True)
            nab = self.num(d, "neutral_abnormal_pct", p, 50.0, lo=10, hi=98)
            edata = d.get("energy", {})
            self.table(edata, p + ("energy",), ("forward_kwh", "reverse_kwh", "reactive_pos_kvarh",
                                                 "reactive_neg_kvarh"))
            energy = EnergyInit(*(self.num(edata, k, p + ("energy",), 0.0, lo=0, hi=999999.99)
                                  for k in ("forward_kwh", "reverse_kwh", "reactive_pos_kvarh", "reactive_neg_kvarh")))
            options = d.get("options", {})
            if not isinstance(options, dict):
                self.fail(p + ("options",), "must be a table")
            if "block_read" in options and not isinstance(options["block_read"], bool):
                self.fail(p + ("options", "block_read"), "must be true or false")
            if options.get("metering", "larger") not in ("larger", "phase"):
                self.fail(p + ("options", "metering"), "must be \"larger\" (dual-channel, default) or \"phase\"")
            if "dis" in options:
                width = 4 if protocol == "dlt645-1997" else 8
                dis = options["dis"]
                if protocol == "modbus" or not isinstance(dis, list) or not all(
                        isinstance(x, str) and re.fullmatch(r"[0-9A-Fa-f]{%d}" % width, x) for x in dis):
                    self.fail(p + ("options", "dis"), "must be a list of %d-hex-digit DL/T 645 data identifiers"
                              % width)
            out.append(Meter(mid, self.str_(d, "name", p, mid), box, pos, bus, protocol, model, kind, address,
                             unit_id, phase, line, delay, ib, imax, asset, word, nab, energy, dict(options)))
        return out

    def breakers(self, data, boxes, customers):
        out = []
        seen = set()
        fed = {}
        for i, d in enumerate(self.array(data, "breakers")):
            p = ("breakers", i)
            self.table(d, p, ("id", "box", "position", "customer", "closed"), required=("id", "position", "customer"))
            bid = self.str_(d, "id", p, required=True, ident=True)
            if bid in seen:
                self.fail(p + ("id",), "duplicate breaker id %r" % bid)
            seen.add(bid)
            box, pos = self.position(d, p, boxes)
            cust = self.str_(d, "customer", p, required=True)
            if cust not in customers:
                self.fail(p + ("customer",), "no customer %r" % cust)
            if cust in fed:
                self.fail(p + ("customer",), "customer %r is already fed by breaker %s" % (cust, fed[cust]))
            fed[cust] = bid
            out.append(Breaker(bid, box, pos, cust, self.bool_(d, "closed", p, True)))
        return out

    def work_order(self, data, boxes, meters, breakers, customers):
        out = []
        seen = set()
        bmap = {b.id: b for b in breakers}
        for i, d in enumerate(self.array(data, "work_order")):
            p = ("work_order", i)
            self.table(d, p, ("box", "position", "asset", "customer", "breaker"), required=("position", "asset"))
            box, pos = self.position(d, p, boxes)
            if (box, pos) in seen:
                self.fail(p + ("position",), "position %s:%d appears twice in the work order" % (box, pos))
            seen.add((box, pos))
            asset = d["asset"]
            if not isinstance(asset, str) or not asset:
                self.fail(p + ("asset",), "%r must be a quoted, non-empty string" % (asset,))
            cust = self.str_(d, "customer", p)
            if cust is not None and cust not in customers:
                self.fail(p + ("customer",), "no customer %r" % cust)
            brk = self.str_(d, "breaker", p)
            if brk is not None:
                if brk not in bmap:
                    self.fail(p + ("breaker",), "no breaker %r" % brk)
                b = bmap[brk]
                # The breakers table is the design; a physical mix-up is a breaker_mixup fault.
                if (b.box, b.position) != (box, pos):
                    self.fail(p + ("breaker",), "breaker %s is at %s:%d in [[breakers]], not here (express a "
                              "physical mix-up as a breaker_mixup fault)" % (brk, b.box, b.position))
                if cust is not None and b.customer != cust:
                    self.fail(p + ("customer",), "breaker %s feeds %s, not %s" % (brk, b.customer, cust))
            out.append(WorkOrderEntry(box, pos, asset, cust, brk))
        return out

    def faults(self, data, buses, boxes, meters, breakers):
        out = []
        mmap = {m.id: m for m in meters}
        bmap = {b.id: b for b in breakers}
        ids = set()
        for i, d in enumerate(self.array(data, "faults")):
            p = ("faults", i)
            if not isinstance(d, dict) or "type" not in d:
                self.fail(p, "missing required key 'type'")
            ftype = self.str_(d, "type", p, choices=FAULT_TYPES)
            fid = self.str_(d, "id", p, "%s#%d" % (ftype, i))
            if fid in ids:
                self.fail(p + ("id",), "duplicate fault id %r" % fid)
            ids.add(fid)
            enabled = self.bool_(d, "enabled", p, True)
            params = getattr(self, "fault_" + ftype)(d, p, buses, boxes, mmap, bmap)
            out.append(Fault(fid, ftype, enabled, params))
        return out

    # -- one method per fault type: returns normalised params
    def _keys(self, d, p, keys, required=()):
        self.table(d, p, ("type", "id", "enabled") + keys, required=required)

    def _meter(self, d, p, mmap, key="meter", kinds=None, required=True):
        mid = self.str_(d, key, p, required=required)
        if mid is None:
            return None
        if mid not in mmap:
            self.fail(p + (key,), "no meter %r" % mid)
        if kinds and mmap[mid].kind not in kinds:
            self.fail(p + (key,), "meter %s is %s; this fault needs %s" % (mid, mmap[mid].kind, " or ".join(kinds)))
        return mid

    def _meter_list(self, d, p, mmap, kinds=None):
        ms = d.get("meters")
        if not isinstance(ms, list) or len(ms) < 2 or not all(isinstance(m, str) for m in ms):
            self.fail(p + ("meters",), "must be a list of at least two meter ids")
        if len(set(ms)) != len(ms):
            self.fail(p + ("meters",), "lists a meter twice")
        for m in ms:
            if m not in mmap:
                self.fail(p + ("meters",), "no meter %r" % m)
            if kinds and mmap[m].kind not in kinds:
                self.fail(p + ("meters",), "meter %s is %s; this fault needs %s" % (m, mmap[m].kind, " or ".join(kinds)))
        return tuple(ms)

    def _rate(self, d, key, p, default):
        return self.num(d, key, p, default, lo=0.0, hi=1.0)

    def fault_ab_swapped(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("at",), required=("at",))
        at = self.str_(d, "at", p, required=True)
        if at != "gateway" and at not in mmap:
            self.fail(p + ("at",), "%r must be \"gateway\" or a meter id" % at)
        return {"at": at}

    def fault_loose_contact(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter", "bus", "corrupt_rate", "drop_rate"))
        if ("meter" in d) == ("bus" in d):
            self.fail(p, "give exactly one of 'meter' or 'bus'")
        out = {"corrupt_rate": self._rate(d, "corrupt_rate", p, 0.05), "drop_rate": self._rate(d, "drop_rate", p, 0.02)}
        if "meter" in d:
            out["meter"] = self._meter(d, p, mmap)
        else:
            bus = self.str_(d, "bus", p)
            if bus not in buses:
                self.fail(p + ("bus",), "no bus %r" % bus)
            out["bus"] = bus
        return out

    def fault_wrong_line_settings(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter", "baud", "parity"), required=("meter",))
        out = {"meter": self._meter(d, p, mmap)}
        if "baud" not in d and "parity" not in d:
            self.fail(p, "give 'baud' and/or 'parity' (the meter's actual setting)")
        if "baud" in d:
            out["baud"] = self.num(d, "baud", p, integer=True)
            if out["baud"] not in BAUDS:
                self.fail(p + ("baud",), "%r is not a standard baud rate" % out["baud"])
        if "parity" in d:
            par = self.str_(d, "parity", p)
            if par.upper() not in PARITIES:
                self.fail(p + ("parity",), "%r must be E, N or O" % par)
            out["parity"] = par.upper()
        m = mmap[out["meter"]]
        if out.get("baud", m.line.baud) == m.line.baud and out.get("parity", m.line.parity) == m.line.parity:
            self.fail(p, "the settings equal meter %s's configured %s: nothing would be wrong" % (m.id, m.line))
        return out

    def fault_unpowered(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter",), required=("meter",))
        return {"meter": self._meter(d, p, mmap)}

    def fault_reversed(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter",), required=("meter",))
        return {"meter": self._meter(d, p, mmap)}

    def fault_wrong_meter(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("box", "position"), required=("position",))
        box, pos = self.position(d, p, boxes)
        return {"box": box, "position": pos}

    def fault_duplicate_address(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meters",), required=("meters",))
        ms = self._meter_list(d, p, mmap)
        first = mmap[ms[0]]
        for m in ms[1:]:
            if mmap[m].bus != first.bus or mmap[m].protocol.startswith("dlt") != first.protocol.startswith("dlt") \
                    or mmap[m].bus_address != first.bus_address:
                self.fail(p + ("meters",), "meters %s and %s do not share an address on one bus (give them the "
                          "same address in [[meters]])" % (first.id, m))
        return {"meters": ms}

    def fault_phase_neutral_swapped(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter", "earth_fraction"), required=("meter",))
        return {"meter": self._meter(d, p, mmap, kinds=("single-phase",)),
                "earth_fraction": self.num(d, "earth_fraction", p, 0.3, lo=0.0, hi=1.0)}

    def fault_earth_leakage(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter", "fraction"), required=("meter",))
        return {"meter": self._meter(d, p, mmap, kinds=("single-phase",)),
                "fraction": self.num(d, "fraction", p, 0.3, lo=0.0, hi=1.0)}

    def fault_shared_neutral(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meters", "split"), required=("meters",))
        ms = self._meter_list(d, p, mmap, kinds=("single-phase",))
        split = d.get("split", [1.0] * len(ms))
        if not (isinstance(split, list) and len(split) == len(ms) and all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in split) and sum(split) > 0):
            self.fail(p + ("split",), "must be %d non-negative weights, not all zero" % len(ms))
        total = float(sum(split))
        return {"meters": ms, "split": tuple(w / total for w in split)}

    def fault_wiring(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter", "voltages", "currents"), required=("meter",))
        mid = self._meter(d, p, mmap, kinds=("three-phase-4w", "three-phase-3w"))
        kind = mmap[mid].kind
        volts = d.get("voltages", ["a", "b", "c"])
        if not isinstance(volts, list) or len(volts) != 3 or not all(isinstance(v, str) and _VOLTAGE.match(v)
                                                                      for v in volts):
            self.fail(p + ("voltages",), "must list the phases on voltage terminals 1..3, e.g. [\"a\", \"c\", \"b\"]")
        volts = tuple(_VOLTAGE.match(v).group(1).lower() for v in volts)
        if sorted(volts) != list(PHASES):
            self.fail(p + ("voltages",), "%s must use each of a, b, c once" % list(volts))
        default = ["Ia", "Ib", "Ic"] if kind == "three-phase-4w" else ["Ia", "Ic"]
        cur = d.get("currents", default)
        want = 3 if kind == "three-phase-4w" else 2
        if not isinstance(cur, list) or len(cur) != want or not all(isinstance(c, str) and _CURRENT.match(c.strip())
                                                                     for c in cur):
            self.fail(p + ("currents",), "must list %d current terminals like \"Ia\" or \"-Ic\"" % want)
        terms = []
        for c in cur:
            m = _CURRENT.match(c.strip())
            terms.append(CurrentTerm(-1 if m.group(1) == "-" else 1, m.group(2).lower()))
        phases = sorted(t.phase for t in terms)
        if kind == "three-phase-4w" and phases != ["a", "b", "c"]:
            self.fail(p + ("currents",), "%s must use each of Ia, Ib, Ic once" % cur)
        if kind == "three-phase-3w" and phases != ["a", "c"]:
            self.fail(p + ("currents",), "%s: a three-wire meter's two elements carry Ia and Ic, once each" % cur)
        if volts == ("a", "b", "c") and tuple(terms) == tuple(CurrentTerm(1, x) for x in
                                                              (("a", "b", "c") if want == 3 else ("a", "c"))):
            self.fail(p, "this is the correct wiring: nothing would be wrong")
        return {"meter": mid, "voltages": volts, "currents": tuple(terms)}

    def fault_lost_phase(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("meter", "phase", "mode"), required=("phase",))
        mode = self.str_(d, "mode", p, "supply", choices=("supply", "terminal"))
        mid = self._meter(d, p, mmap, required=mode == "terminal")
        return {"meter": mid, "phase": self.str_(d, "phase", p, required=True, choices=PHASES), "mode": mode}

    def fault_breaker_mixup(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("breaker", "meter"), required=("breaker", "meter"))
        brk = self.str_(d, "breaker", p, required=True)
        if brk not in bmap:
            self.fail(p + ("breaker",), "no breaker %r" % brk)
        mid = self._meter(d, p, mmap)
        b = bmap[brk]
        if (mmap[mid].box, mmap[mid].position) == (b.box, b.position):
            self.fail(p + ("meter",), "breaker %s is already designed onto meter %s: no mix-up" % (brk, mid))
        return {"breaker": brk, "meter": mid}

    def fault_voltage_deviation(self, d, p, buses, boxes, mmap, bmap):
        self._keys(d, p, ("phases", "factor"), required=("factor",))
        phases = d.get("phases", list(PHASES))
        if not isinstance(phases, list) or not phases or not all(x in PHASES for x in phases):
            self.fail(p + ("phases",), "must be a list of phases from a, b, c")
        return {"phases": tuple(phases), "factor": self.num(d, "factor", p, required=True, lo=0.0, hi=2.0)}

    # -- consistency across sections
    def cross_checks(self, site: Site):
        faults = site.faults
        # Work order vs installed meter: a disagreement must be declared (it is ground truth for scoring).
        declared = {(f.params["box"], f.params["position"]): i for i, f in enumerate(faults) if f.type == "wrong_meter"}
        for i, w in enumerate(site.work_order):
            m = site.meter_at(w.box, w.position)
            if m is not None and m.asset != w.asset and (w.box, w.position) not in declared:
                self.fail(("work_order", i, "asset"), '"%s" differs from the asset "%s" of meter %s installed there; '
                          "declare a wrong_meter fault if that is intended" % (w.asset, m.asset, m.id))
        for (box, pos), i in declared.items():
            w = site.work_order_for(box, pos)
            m = site.meter_at(box, pos)
            if w is None or m is None or m.asset == w.asset:
                self.fail(("faults", i), "wrong_meter at %s:%d needs a work order entry and an installed meter "
                          "with a different asset number" % (box, pos))
        # Two meters answering to one address on one bus must be declared too.
        dup_declared = {frozenset(f.params["meters"]) for f in faults if f.type == "duplicate_address"}
        for i, m in enumerate(site.meters):
            for n in site.meters[:i]:
                if n.bus == m.bus and n.bus_address == m.bus_address and \
                        (n.protocol == "modbus") == (m.protocol == "modbus"):
                    if not any({m.id, n.id} <= s for s in dup_declared):
                        self.fail(("meters", i, "address" if m.address else "unit_id"),
                                  "meter %s has the same bus address as %s on bus %s; declare a duplicate_address "
                                  "fault if that is intended" % (m.id, n.id, m.bus))
        # At most one wiring fault per meter, so the wiring is unambiguous.
        wired = {}
        for i, f in enumerate(faults):
            if f.type == "wiring":
                if f.params["meter"] in wired:
                    self.fail(("faults", i, "meter"), "meter %s already has wiring fault %s"
                              % (f.params["meter"], wired[f.params["meter"]]))
                wired[f.params["meter"]] = f.id


def iter_positions(site: Site) -> Iterable[tuple[str, int]]:
    """Every (box, position) of the site, in box order."""
    for box in site.boxes:
        for n in range(1, box.positions + 1):
            yield box.id, n
