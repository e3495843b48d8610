"""Simulated meters: what each meter of a site answers on its bus.

A meter model turns a request it heard into the reply a real meter would put
on the wire, from the electrical state of the site at that instant
(``metergate.sim.electrical``): every value it reports (voltage, signed current
and power, power factor, angles, neutral current, status words, energy) comes
from the same phasors, so a miswired meter's registers agree with one another.

- ``Dlt645Meter`` (DL/T 645-2007, model ``generic-2007``): fn 11 reads of the
  DIs in PROTOCOLS.md, blocks (DI with FF) where ``options.block_read`` allows
  (default true), ERR "no such data" for what the model does not have
  (``options.dis`` narrows the list), fn 13 read address (wildcard and
  abbreviated AA addressing), fn 08 broadcast time sync (sets the meter clock,
  no reply), refusals (ERR "password / not authorised") for writes and
  control functions.
- ``Dlt645Meter1997`` (``generic-1997``): fn 01 reads of 9010/9020, B61x,
  B62x, B63x, B65x, C010, C011, C032 (blocks with F), fn 03 re-read, fn 08.
- ``ModbusMeter`` (``sdm120``, ``sdm630``, ``ddsu666``): fn 04 input
  registers from the register maps the gateway uses
  (``gateway.protocols.modbus_maps``), float32 values; exceptions 01/02/03 as
  a real server answers them.

Every model integrates its energy registers over time: on each request (the
bus asks ``powered(now)`` of every meter on every request), on every
``measurement(now)``, and, through ``settle(now)``, right before the control
interface changes a breaker or a fault, so a switch changes power from that
instant and not retroactively.

Meter clocks keep China Standard Time (UTC+8, ``METER_UTC_OFFSET_S``;
``options.utc_offset_s`` for another zone), whatever the host's zone:
``options.clock_offset_s`` (seconds the meter's clock is ahead of true time,
negative behind); a broadcast time sync sets the clock.
Replies carry ``options.preamble`` FE wake-up bytes (default 4, as many meters
do; the gateway must skip 0..4).

The frames are built with the firmware's own pure codecs
(``metergate.codecs``); the tests check them against the `dlt645` package,
pymodbus, and frames parsed by hand from PROTOCOLS.md.
"""

from __future__ import annotations

import calendar
import logging
import math
import time

from metergate.codecs import dlt645, dlt645_1997, dlt645_items, modbus, modbus_maps
from metergate.sim import electrical
from metergate.sim.electrical import EnergyRegisters, Measurement

log = logging.getLogger("metergate.sim.meters")

INTEGRATION_STEP_S = 5.0  # energy is integrated in steps of at most this long
MAX_STEPS = 2000  # ...and at most this many per update (a long idle gap uses longer steps)

# DL/T 645 ERR bits
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_AUTH = 0x04
ERR_BAUD = 0x08

# Defaults of values the electrical model does not produce (engineering choices,
# typical of a residential feeder; options.voltage_thd_pct / current_thd_pct override).
VOLTAGE_THD_PCT = 2.1
CURRENT_THD_PCT = 6.5
METER_UTC_OFFSET_S = 8 * 3600  # meters in China keep Beijing time
IR_BAUD = 1200  # 04000701/02: the infrared ports (unverified: port numbering of 040007zz)


class NoData(Exception):
    """The model has no such data item: answer ERR "no such data"."""


def _fit(value: float, size: int, decimals: int, signed: bool) -> float:
    """Clamp a value into what `size` BCD bytes with `decimals` hold (a real meter saturates)."""
    top = 10 ** (2 * size) - 1
    if signed:
        top = 8 * 10 ** (2 * size - 1) - 1
    limit = top / 10 ** decimals
    if not signed and value < 0:
        return 0.0
    return max(-limit, min(limit, value))


class MeterModel:
    """What every model shares: identity, link, energy integration, clock.

    The Bus reads ``meter``, ``link``, ``response_delay_s`` and calls
    ``powered(now)`` and ``handle(request, now) -> bytes | None``, which each
    protocol's model defines (the DL/T 645 ones through ``answer`` and ``value``).
    """

    def __init__(self, meter, site, state, clock=time.time):
        self.meter = meter
        self.site = site
        self.state = state
        self.clock = clock
        self.options = dict(meter.options)
        self.energy = EnergyRegisters.from_meter(meter)
        self.response_delay_s = meter.response_delay_ms / 1000.0
        self.clock_offset_s = float(self.options.get("clock_offset_s", 0.0))
        self.utc_offset_s = float(self.options.get("utc_offset_s", METER_UTC_OFFSET_S))
        self.preamble = int(self.options.get("preamble", 4))
        self._t = None  # energy is integrated up to here
        self._cache = None  # (now, state.version, Measurement)

    # -- what the bus asks -------------------------------------------------
    @property
    def link(self):
        return self.state.link(self.meter.id)

    def powered(self, now: float) -> bool:
        return self.measurement(now).powered

    # -- electrical state and energy ---------------------------------------
    def measurement(self, now: float | None = None) -> Measurement:
        """What the meter measures at `now`, after bringing its energy registers up to `now`."""
        now = self.clock() if now is None else now
        c = self._cache
        if c is not None and c[0] == now and c[1] == self.state.version:
            return c[2]
        self._integrate(now)
        m = electrical.measure(self.site, self.state, self.meter.id, now)
        self._cache = (now, self.state.version, m)
        return m

    def settle(self, now: float | None = None) -> None:
        """Integrate energy up to `now` under the present state (call before the state changes)."""
        self._integrate(self.clock() if now is None else now)

    def _integrate(self, now: float) -> None:
        if self._t is None or now <= self._t:
            if self._t is None:
                self._t = now
            return
        dt = now - self._t
        n = max(1, min(MAX_STEPS, math.ceil(dt / INTEGRATION_STEP_S)))
        step = dt / n
        for k in range(n):
            m = electrical.measure(self.site, self.state, self.meter.id, self._t + (k + 0.5) * step)
            self.energy.advance(m, step)
        self._t = now

    # -- clock -------------------------------------------------------------
    def meter_time(self, now: float) -> time.struct_time:
        """The meter's own clock (its local time), with its offset from true time."""
        return time.gmtime(now + self.utc_offset_s + self.clock_offset_s)

    def sync_clock(self, when: tuple, now: float) -> None:
        """Broadcast time sync: from now on the meter's clock reads `when` (its local time)."""
        y, mo, d, h, mi, s = when[:6]
        target = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - self.utc_offset_s
        self.clock_offset_s = target - now
        log.info("%s: clock set to %04d-%02d-%02d %02d:%02d:%02d", self.meter.id, y, mo, d, h, mi, s)

    def __repr__(self):
        return "<%s %s %s>" % (type(self).__name__, self.meter.id, self.meter.bus_address)


# ---------------------------------------------------------------------------
# DL/T 645


def _addressed(addr: bytes, own: bytes) -> bool:
    """The request's address is ours: equal, or AA (wildcard) in place of any byte."""
    return all(a == o or a == 0xAA for a, o in zip(addr, own))


class _Dlt645Base(MeterModel):
    version = 2007
    codec = dlt645

    def __init__(self, meter, site, state, clock=time.time):
        super().__init__(meter, site, state, clock)
        self.own = dlt645.address_to_wire(meter.address)
        dis = self.options.get("dis")
        self.supported = None if dis is None else {int(x, 16) for x in dis}
        self.block_read = bool(self.options.get("block_read", True))
        self.last_reply = None

    def slots(self) -> tuple[int, ...]:
        """Element slots (1 = A) this meter has: the rest answer "no such data"."""
        if self.meter.kind == "single-phase":
            return (1,)
        return (1, 2, 3)

    def handle(self, request, now):
        status, frame, _, _ = dlt645.parse(request)
        if status != dlt645.FRAME or frame.is_reply:
            return None
        addr = bytes(frame.address)
        fn = frame.function
        if addr == dlt645.BROADCAST:
            if fn == dlt645.FN_BROADCAST_TIME:
                try:
                    self.sync_clock(dlt645.decode_time_sync(bytes(frame.data)), now)
                except (ValueError, OverflowError) as exc:
                    log.info("%s: bad time sync ignored: %s", self.meter.id, exc)
            return None  # meters never answer a broadcast
        reply = self.answer(frame, addr, fn, now)
        if reply is not None:
            self.last_reply = reply
        return reply

    def _error(self, fn, err):
        return self.codec.build_error_reply(self.own, fn, err, preamble=self.preamble)

    def _answer_read(self, frame, fn, now):
        """The reply to a read: the item, or ERR "no such data" / "other" (no DI)."""
        di = frame.di()
        if di is None:
            return self._error(fn, ERR_OTHER)
        try:
            data = self._read(di, now)
        except NoData:
            return self._error(fn, ERR_NO_DATA)
        return self.codec.build_read_reply(self.own, di, data, preamble=self.preamble)

    def _read(self, di, now):
        """Item data for `di` (plain, before +0x33), or NoData."""
        if self.supported is not None and di not in self.supported:
            raise NoData
        try:
            row, block = dlt645_items.lookup(di, self.version)
        except dlt645_items.UnknownItem:
            raise NoData
        if block and not self.block_read:
            raise NoData
        m = self.measurement(now)
        value = self.value(di, m, now)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        info = dlt645_items.item_info(di, self.version)
        if info["kind"] == "number":
            fit = lambda v: _fit(v, info["bytes"], info["decimals"], info["signed"])  # noqa: E731
            value = tuple(fit(v) for v in value) if block else fit(value)
        return bytes(dlt645_items.encode_item(di, value, self.version))

    def _phase_values(self, sel, per_slot, total=None):
        """Value(s) of a per-phase item. sel: 1..3 a slot, 0 the total (when there is one), FF the block."""
        slots = self.slots()
        if sel == 0xFF or (self.version == 1997 and sel == 0xF):
            members = [] if total is None else [total]
            members += [per_slot(k) for k in range(1, max(slots) + 1)]
            return tuple(members)
        if sel == 0 and total is not None:
            return total
        if sel not in slots:
            raise NoData
        return per_slot(sel)


class Dlt645Meter(_Dlt645Base):
    """A DL/T 645-2007 meter (model ``generic-2007``), single- or three-phase."""

    version = 2007
    codec = dlt645

    def answer(self, frame, addr, fn, now):
        if fn == dlt645.FN_READ_ADDRESS:
            if _addressed(addr, self.own):
                return dlt645.build_reply(self.own, fn, self.own, preamble=self.preamble)
            return None
        if not _addressed(addr, self.own):
            return None
        if fn == dlt645.FN_READ:
            return self._answer_read(frame, fn, now)
        if fn == dlt645.FN_READ_NEXT:
            return self._error(fn, ERR_NO_DATA)  # no reply of ours ever has follow-up frames
        if fn == dlt645.FN_FREEZE:
            return dlt645.build_reply(self.own, fn, b"", preamble=self.preamble)
        if fn == dlt645.FN_CHANGE_BAUD:
            return self._error(fn, ERR_BAUD)
        if fn in (dlt645.FN_WRITE, dlt645.FN_CHANGE_PASSWORD, dlt645.FN_CLEAR_DEMAND, dlt645.FN_CLEAR_METER,
                  dlt645.FN_CLEAR_EVENTS, dlt645.FN_RELAY):
            return self._error(fn, ERR_AUTH)  # every write needs a password this bench does not have
        return None  # functions a 2007 meter does not know (e.g. 1997's 01): silence

    def value(self, di, m, now):
        d3, d2, d1, d0 = (di >> 24) & 0xFF, (di >> 16) & 0xFF, (di >> 8) & 0xFF, di & 0xFF
        ph = m.phases
        if d3 == 0x00:
            if d0 != 0:
                raise NoData  # previous billing days: this bench keeps no history
            total = (self.energy.combined_kwh(), self.energy.forward_kwh, self.energy.reverse_kwh)[d2]
            tariffs = (total, total, 0.0, 0.0, 0.0)  # single-tariff meter: all of it in tariff 1
            if d1 == 0xFF:
                return tariffs
            if d1 > 4:
                raise NoData
            return tariffs[d1]
        if d3 == 0x02:
            if d2 == 0x01:
                return self._phase_values(d1, lambda k: ph[k - 1].U)
            if d2 == 0x02:
                return self._phase_values(d1, lambda k: math.copysign(ph[k - 1].I, ph[k - 1].P or 1.0))
            if d2 == 0x03:
                return self._phase_values(d1, lambda k: ph[k - 1].P, m.P)
            if d2 == 0x04:
                return self._phase_values(d1, lambda k: ph[k - 1].Q, m.Q)
            if d2 == 0x05:
                return self._phase_values(d1, lambda k: ph[k - 1].S, m.S)
            if d2 == 0x06:
                # slot B of a three-wire meter has no element: 0, like its U, I, P (not the 1.0 of an idle one)
                empty = 2 if self.meter.kind == "three-phase-3w" else None
                return self._phase_values(d1, lambda k: 0.0 if k == empty else ph[k - 1].PF, m.PF)
            if d2 == 0x07:
                return self._phase_values(d1, lambda k: ph[k - 1].angle_deg % 360.0)
            if d2 in (0x08, 0x09):
                pct = float(self.options.get("voltage_thd_pct" if d2 == 0x08 else "current_thd_pct",
                                             VOLTAGE_THD_PCT if d2 == 0x08 else CURRENT_THD_PCT))
                return self._phase_values(d1, lambda k: pct if (ph[k - 1].U if d2 == 0x08 else ph[k - 1].I) else 0.0)
            if di == 0x02800001:
                if m.I_N is None:
                    raise NoData  # three-wire meters have no neutral
                return m.I_N
            if di == 0x02800002:
                return m.frequency
            raise NoData
        if d3 == 0x04 and d2 == 0x00:
            if di == 0x04000101:
                t = self.meter_time(now)
                return (t.tm_year, t.tm_mon, t.tm_mday, (t.tm_wday + 1) % 7)  # WW 0 = Sunday
            if di == 0x04000102:
                t = self.meter_time(now)
                return (t.tm_hour, t.tm_min, t.tm_sec)
            if di in (0x04000401, 0x04000402):
                return self.meter.address
            if di == 0x04000403:
                return self.meter.asset[:32]
            if d1 == 0x05:
                words = status_words(self.meter, m)
                if d0 == 0xFF:
                    return b"".join(w.to_bytes(2, "little") for w in words)
                return words[d0 - 1].to_bytes(2, "little")
            if di == 0x04000601:
                return bytes((self.energy.combination_word,))
            if d1 == 0x07:
                if d0 in (1, 2):
                    return IR_BAUD
                if d0 == 3:
                    return self.link.line.baud
                raise NoData
        raise NoData


class Dlt645Meter1997(_Dlt645Base):
    """A DL/T 645-1997 meter (model ``generic-1997``)."""

    version = 1997
    codec = dlt645_1997

    def answer(self, frame, addr, fn, now):
        if not _addressed(addr, self.own):
            return None
        if fn == dlt645_1997.FN_READ:
            return self._answer_read(frame, fn, now)  # ERR b1 is 1997's "bad data identifier"
        if fn == dlt645_1997.FN_REREAD:
            return self.last_reply
        if fn == dlt645_1997.FN_READ_NEXT:
            return self._error(fn, ERR_NO_DATA)
        if fn in (dlt645_1997.FN_WRITE, dlt645_1997.FN_WRITE_ADDRESS, dlt645_1997.FN_CHANGE_BAUD,
                  dlt645_1997.FN_CHANGE_PASSWORD, dlt645_1997.FN_CLEAR_DEMAND):
            return self._error(fn, ERR_AUTH)
        return None  # 2007 functions (11, 13, ...): a 1997 meter stays silent

    def value(self, di, m, now):
        ph = m.phases
        hi, sel = di >> 4, di & 0xF
        if hi in (0x901, 0x902):
            total = self.energy.forward_kwh if hi == 0x901 else self.energy.reverse_kwh
            tariffs = (total, total, 0.0, 0.0, 0.0)
            if sel == 0xF:
                return tariffs
            if sel > 4:
                raise NoData
            return tariffs[sel]
        if hi == 0xB61:
            return self._phase_values(sel, lambda k: ph[k - 1].U)
        if hi == 0xB62:
            return self._phase_values(sel, lambda k: ph[k - 1].I)  # 1997 current is unsigned
        if hi == 0xB63:
            return self._phase_values(sel, lambda k: ph[k - 1].P, m.P)
        if hi == 0xB65:
            return self._phase_values(sel, lambda k: ph[k - 1].PF, m.PF)
        if di == 0xC010:
            t = self.meter_time(now)
            return (t.tm_year, t.tm_mon, t.tm_mday, (t.tm_wday + 1) % 7)
        if di == 0xC011:
            t = self.meter_time(now)
            return (t.tm_hour, t.tm_min, t.tm_sec)
        if di == 0xC032:
            return self.meter.address
        raise NoData


def status_words(meter, m: Measurement) -> tuple[int, ...]:
    """DL/T 645-2007 status words 1..7 (04000501..07) from the electrical state.

    Bit assignments: PROTOCOLS.md "Status words". A dead meter answers nothing,
    so this is only asked of powered ones.
    """
    f = m.flags
    sw1 = (f.total_active_reverse << 4) | (f.total_reactive_reverse << 5)
    if meter.options.get("clock_battery_low"):
        sw1 |= 1 << 2
    if meter.options.get("reading_battery_low"):
        sw1 |= 1 << 3
    sw2 = 0
    for k in range(3):
        sw2 |= (f.active_reverse[k] << k) | (f.reactive_reverse[k] << (4 + k))
    sw3 = 0  # main supply, programming locked, relay closed
    phase_words = []
    for k in range(3):
        w = (f.loss_of_voltage[k] | (f.under_voltage[k] << 1) | (f.over_voltage[k] << 2)
             | (f.loss_of_current[k] << 3) | (f.reverse_power_flow[k] << 6) | (f.phase_break[k] << 7))
        if m.phases[k].I > meter.imax:
            w |= 1 << 4  # over-current
        phase_words.append(int(w))
    sw7 = f.voltage_reverse_sequence | (f.current_reverse_sequence << 1)
    return (int(sw1), int(sw2), sw3, phase_words[0], phase_words[1], phase_words[2], int(sw7))


# ---------------------------------------------------------------------------
# Modbus RTU

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3


class ModbusMeter(MeterModel):
    """A Modbus RTU meter answering fn 04 from the register map of its model."""

    def __init__(self, meter, site, state, clock=time.time):
        super().__init__(meter, site, state, clock)
        self.map = modbus_maps.model(meter.model)
        self.unit = meter.unit_id
        self.word_order = self.map["word_order"]
        self.points = self.map["points"]
        # The input-register space the meter answers: from its first to its last mapped register
        # (unmapped registers inside it read as 0.0, as on the real meters).
        self.first = min(p[1] for p in self.points)
        self.end = max(p[1] + modbus.SIZES[p[2]] // 2 for p in self.points)
        self.request = modbus.Request()

    def handle(self, request, now):
        req = self.request
        status = req.parse(request, 0, len(request))
        if status not in (modbus.OK, modbus.UNSUPPORTED):
            return None  # damaged or partial frames are ignored by RTU servers
        if req.unit != self.unit:
            return None  # another unit's request, or a broadcast (never answered)
        fn = req.function
        if status == modbus.UNSUPPORTED or fn not in (modbus.READ_INPUT, modbus.READ_HOLDING):
            return bytes(modbus.exception_reply(self.unit, fn & 0x7F, ILLEGAL_FUNCTION))
        if req.error_code:
            return bytes(modbus.exception_reply(self.unit, fn, req.error_code))
        if fn == modbus.READ_HOLDING:
            return bytes(modbus.exception_reply(self.unit, fn, ILLEGAL_ADDRESS))  # no settings modelled
        if self.map.get("even_count") and req.count % 2:
            return bytes(modbus.exception_reply(self.unit, fn, ILLEGAL_ADDRESS))
        if req.count > self.map["max_count"]:
            return bytes(modbus.exception_reply(self.unit, fn, ILLEGAL_VALUE))
        if req.address < self.first or req.address + req.count > self.end:
            return bytes(modbus.exception_reply(self.unit, fn, ILLEGAL_ADDRESS))
        image = self.registers(now)
        start = 2 * (req.address - self.first)
        return bytes(modbus.read_reply(self.unit, fn, image, start, start + 2 * req.count))

    def quantities(self, now) -> dict[str, float]:
        """Every quantity of the map in published units (V, A, kW, kvar, kWh, Hz, deg)."""
        m = self.measurement(now)
        out = {"frequency": m.frequency, "power_total": m.P, "reactive_power_total": m.Q,
               "energy_import": self.energy.forward_kwh, "energy_export": self.energy.reverse_kwh,
               "energy_total": self.energy.forward_kwh + self.energy.reverse_kwh}
        for k, slot in enumerate("abc"):
            r = m.phases[k]
            out["voltage_" + slot] = r.U
            out["current_" + slot] = r.I
            out["power_" + slot] = r.P
            out["reactive_power_" + slot] = r.Q
            out["pf_" + slot] = r.PF
            out["angle_" + slot] = r.angle_deg
        return out

    def registers(self, now) -> bytearray:
        """The register image from `first` to `end` (2 bytes per register, big-endian words)."""
        values = self.quantities(now)
        image = bytearray(2 * (self.end - self.first))
        for name, reg, typ, scale, _unit in self.points:
            raw = values[name] / scale
            at = 2 * (reg - self.first)
            if typ == "float32":
                modbus.encode_float32(raw, self.word_order, image, at)
            else:
                modbus.ENCODERS[typ](int(round(raw)), self.word_order, image, at)
        return image


MODEL_CLASSES = {"generic-2007": Dlt645Meter, "generic-1997": Dlt645Meter1997,
                 "sdm120": ModbusMeter, "sdm630": ModbusMeter, "ddsu666": ModbusMeter}


def build_meters(site, state, bus_name: str | None = None, clock=time.time) -> list[MeterModel]:
    """One model per meter on `bus_name` (every bus when None), in the site file's order."""
    out = []
    for meter in site.meters:
        if bus_name is not None and meter.bus != bus_name:
            continue
        cls = MODEL_CLASSES.get(meter.model)
        if cls is None:  # pragma: no cover - the site validator allows only these models
            raise ValueError("meter %s: no model %r" % (meter.id, meter.model))
        out.append(cls(meter, site, state, clock))
    return out

