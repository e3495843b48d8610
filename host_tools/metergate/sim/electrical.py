"""Electrical model of a site: what every meter measures, computed from phasors.

Physics first: the grid has true phase voltages Va, Vb, Vc (positive sequence,
phase a at 0 degrees); each customer draws a current set by its load; each meter
then sees those voltages and currents through its own (possibly wrong) connection.
Every value a meter reports (U, I, P, Q, PF, angle, neutral current, status flags,
energy) is derived from the same phasors, so the registers always agree with one
another, as they would on a real meter.

Conventions
-----------
- Voltages in V, currents in A, P in kW, Q in kvar, S in kVA, angles in degrees.
- ``angle_deg`` of an element is theta = atan2(Q, P), 0..360: how far the current
  the element sees lags the voltage it sees. With correct wiring it equals the load
  angle phi (positive lagging) on every element (PROTOCOLS.md "Finding wiring faults").
- PF = P / S, so its sign is the sign of P (DL/T 645 signed PF); 1.0 at no load.
- I values are magnitudes; a meter model that reports signed current takes the sign
  of the element's P.
- Loads are constant impedance sized so a customer draws its nominal kW at nominal
  voltage (so a lost phase on a three-wire load redistributes naturally).
- Time ``t`` is seconds of simulation; ``t % 86400`` is the time of day for
  daily profiles.

Public API
----------
- ``measure(site, state, meter_id, t) -> Measurement``
- ``measure_all(site, state, t) -> dict[str, Measurement]`` (one pass; use this for
  many meters at the same instant)
- ``Measurement``, ``PhaseReading``, ``Flags`` (frozen dataclasses)
- ``EnergyRegisters.from_meter(meter)`` then ``advance(measurement, dt_s)``;
  ``combined_kwh(word)`` applies the DL/T 645 active combination word.
- ``current_gate(ib)``: the current below which direction is not judged.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

from metergate.sim.site import Meter, Site, SiteState

A = cmath.rect(1.0, 2 * math.pi / 3)  # the 120-degree operator
PHASE_ANGLE = {"a": 0.0, "b": -120.0, "c": 120.0}  # positive sequence: b lags a, c leads a
SLOTS = ("a", "b", "c")

# Thresholds from PROTOCOLS.md (fractions of the nominal voltage of the element).
LOSS_OF_VOLTAGE = 0.78
PHASE_BREAK = 0.60
UNDER_VOLTAGE = 0.85
OVER_VOLTAGE = 1.15
LOSS_OF_CURRENT_VOLTAGE = 0.70
# Below this fraction of nominal on every voltage circuit the meter's own supply drops
# out (engineering assumption: switch-mode supplies run down to about half voltage).
POWER_MIN = 0.40


def current_gate(ib: float) -> float:
    """Only judge direction under load: I >= max(0.05 A, 1% of Ib) (PROTOCOLS.md)."""
    return max(0.05, 0.01 * ib)


@dataclass(frozen=True)
class PhaseReading:
    """One measuring element (slot a/b/c). Zero for unused slots (B of a 3-wire meter)."""

    U: float = 0.0
    I: float = 0.0
    P: float = 0.0
    Q: float = 0.0
    S: float = 0.0
    PF: float = 1.0
    angle_deg: float = 0.0

    @staticmethod
    def from_phasors(u: complex, i: complex) -> "PhaseReading":
        s = u * i.conjugate() / 1000.0
        p, q, mag = s.real, s.imag, abs(s)
        if mag < 1e-9:
            return PhaseReading(abs(u), abs(i), 0.0, 0.0, 0.0, 1.0, 0.0)
        return PhaseReading(abs(u), abs(i), p, q, mag, p / mag, math.degrees(math.atan2(q, p)) % 360.0)


@dataclass(frozen=True)
class Flags:
    """Status conditions derived from the electrical state, as named booleans.

    Per-phase tuples are indexed a, b, c (slot order; for a three-wire meter slot a is
    element Uab/Ia and slot c is Ucb/Ic, slot b always False). Suggested mapping to
    DL/T 645-2007 status words (PROTOCOLS.md): SW1 b4 ``total_active_reverse``, b5
    ``total_reactive_reverse``; SW2 b0..b2 ``active_reverse``, b4..b6
    ``reactive_reverse``; SW4/5/6 b0 ``loss_of_voltage``, b1 ``under_voltage``, b2
    ``over_voltage``, b3 ``loss_of_current``, b6 ``reverse_power_flow`` (same
    condition as ``active_reverse``), b7 ``phase_break``; SW7 b0
    ``voltage_reverse_sequence``, b1 ``current_reverse_sequence``.
    ``neutral_current_abnormal`` has no standard SW bit (vendor event).
    """

    total_active_reverse: bool = False
    total_reactive_reverse: bool = False
    active_reverse: tuple[bool, bool, bool] = (False, False, False)
    reactive_reverse: tuple[bool, bool, bool] = (False, False, False)
    loss_of_voltage: tuple[bool, bool, bool] = (False, False, False)
    under_voltage: tuple[bool, bool, bool] = (False, False, False)
    over_voltage: tuple[bool, bool, bool] = (False, False, False)
    loss_of_current: tuple[bool, bool, bool] = (False, False, False)
    phase_break: tuple[bool, bool, bool] = (False, False, False)
    voltage_reverse_sequence: bool = False
    current_reverse_sequence: bool = False
    neutral_current_abnormal: bool = False

    @property
    def reverse_power_flow(self) -> tuple[bool, bool, bool]:
        return self.active_reverse

    def as_dict(self) -> dict[str, bool]:
        """Flat names: per-phase flags become e.g. ``active_reverse_a``."""
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, tuple):
                for slot, v in zip(SLOTS, value):
                    out["%s_%s" % (name, slot)] = v
            else:
                out[name] = value
        for slot, v in zip(SLOTS, self.reverse_power_flow):
            out["reverse_power_flow_%s" % slot] = v
        return out

    def any(self) -> bool:
        return any(self.as_dict().values())


@dataclass(frozen=True)
class Measurement:
    """What one meter measures at one instant.

    ``powered`` False means the meter is dead (no supply on its voltage circuit, or an
    ``unpowered`` fault): it answers nothing and registers nothing; every other field
    is then zero. ``phases`` has three slots (a, b, c). ``I_N`` is the neutral current
    the meter reports (single-phase: its neutral channel; four-wire: magnitude of the
    vector sum of its three element currents; three-wire: None). ``I_L`` is the
    single-phase meter's phase channel (same as ``phases[0].I``). ``true_P`` is the
    active power really flowing to the load side of this meter, whatever the wiring
    (kW, for scoring and tests). ``u_phasors`` / ``i_phasors`` are the phasors each
    element sees.
    """

    meter_id: str
    kind: str
    t: float
    powered: bool
    phases: tuple[PhaseReading, PhaseReading, PhaseReading]
    P: float
    Q: float
    S: float
    PF: float
    I_N: float | None
    I_L: float | None
    frequency: float
    flags: Flags
    true_P: float
    u_phasors: tuple[complex, ...] = ()
    i_phasors: tuple[complex, ...] = ()

    @property
    def U(self) -> float:
        return self.phases[0].U

    @property
    def I(self) -> float:
        return self.phases[0].I

    @property
    def angles(self) -> tuple[float, float, float]:
        return tuple(p.angle_deg for p in self.phases)


@dataclass
class EnergyRegisters:
    """Accumulating energy registers of one meter, as the meter itself counts them.

    Forward active counts when the meter's total P > 0, reverse when P < 0 (the
    meter's view: an in/out-reversed meter registers reverse energy). Reactive
    positive counts Q > 0 (quadrants I+II), reactive negative Q < 0. Registers roll
    over at 1,000,000 like a 6+2 digit display.
    """

    forward_kwh: float = 0.0
    reverse_kwh: float = 0.0
    reactive_pos_kvarh: float = 0.0
    reactive_neg_kvarh: float = 0.0
    combination_word: int = 0x05

    ROLLOVER = 1_000_000.0

    @classmethod
    def from_meter(cls, meter: Meter) -> "EnergyRegisters":
        e = meter.energy
        return cls(e.forward_kwh, e.reverse_kwh, e.reactive_pos_kvarh, e.reactive_neg_kvarh, meter.combination_word)

    def advance(self, m: Measurement, dt_s: float) -> None:
        """Integrate ``m`` held for ``dt_s`` seconds (call often: P is taken as constant)."""
        if not m.powered or dt_s <= 0:
            return
        hours = dt_s / 3600.0
        if m.P > 0:
            self.forward_kwh = (self.forward_kwh + m.P * hours) % self.ROLLOVER
        elif m.P < 0:
            self.reverse_kwh = (self.reverse_kwh - m.P * hours) % self.ROLLOVER
        if m.Q > 0:
            self.reactive_pos_kvarh = (self.reactive_pos_kvarh + m.Q * hours) % self.ROLLOVER
        elif m.Q < 0:
            self.reactive_neg_kvarh = (self.reactive_neg_kvarh - m.Q * hours) % self.ROLLOVER

    def combined_kwh(self, word: int | None = None) -> float:
        """Combined active energy (DI 00000000) per the combination word (DI 04000601):
        b0 adds forward, b1 subtracts forward, b2 adds reverse, b3 subtracts reverse.
        The default 0x05 (forward + reverse) makes a reversed meter still count up."""
        w = self.combination_word if word is None else word
        total = 0.0
        if w & 1:
            total += self.forward_kwh
        if w & 2:
            total -= self.forward_kwh
        if w & 4:
            total += self.reverse_kwh
        if w & 8:
            total -= self.reverse_kwh
        return total


# ---------------------------------------------------------------------------


def measure(site: Site, state: SiteState, meter_id: str, t: float) -> Measurement:
    """What meter ``meter_id`` measures at time ``t`` (seconds) in the state ``state``."""
    return _Snapshot(site, state, t).measure(site.meter(meter_id))


def measure_all(site: Site, state: SiteState, t: float) -> dict[str, Measurement]:
    """Measurements of every meter at time ``t``, computed from one snapshot."""
    snap = _Snapshot(site, state, t)
    return {m.id: snap.measure(m) for m in site.meters}


def _phasor(mag: float, phase: str) -> complex:
    return cmath.rect(mag, math.radians(PHASE_ANGLE[phase]))


def _sequence(x: tuple[complex, complex, complex]) -> tuple[float, float]:
    """Magnitudes of the positive and negative sequence components of three phasors."""
    a, b, c = x
    pos = (a + A * b + A * A * c) / 3
    neg = (a + A * A * b + A * c) / 3
    return abs(pos), abs(neg)


class _Snapshot:
    """All true voltages and currents of the site at one instant."""

    def __init__(self, site: Site, state: SiteState, t: float):
        self.site, self.state, self.t = site, state, t
        self.un = site.nominal_voltage
        self.faults = state.active_faults()
        factor = {p: 1.0 for p in SLOTS}
        for f in self.faults:
            if f.type == "voltage_deviation":
                for p in f.params["phases"]:
                    factor[p] *= f.params["factor"]
        feeder_lost = {f.params["phase"] for f in self.faults
                       if f.type == "lost_phase" and f.params["mode"] == "supply" and f.params["meter"] is None}
        self.grid = {p: 0j if p in feeder_lost else _phasor(self.un * factor[p], p) for p in SLOTS}

        # Supply at each meter's incoming terminals (a blown fuse upstream of one meter).
        self.supply: dict[str, dict[str, complex]] = {}
        for m in site.meters:
            v = dict(self.grid)
            for f in self.faults:
                if f.type == "lost_phase" and f.params["mode"] == "supply" and f.params["meter"] == m.id:
                    v[f.params["phase"]] = 0j
            self.supply[m.id] = v

        # Which customers each meter physically feeds (closed breakers, after mix-ups).
        self.loads: dict[str, list] = {m.id: [] for m in site.meters}
        for b in site.breakers:
            if not state.breakers.get(b.id, True):
                continue
            mid = state.breaker_meter(b.id)
            if mid is not None:
                self.loads[mid].append(site.customer(b.customer))

        # True currents (supply -> load direction) per meter and phase.
        self.current: dict[str, dict[str, complex]] = {m.id: self._currents(m) for m in site.meters}

        # Neutral return current through each single-phase meter.
        self.neutral: dict[str, complex] = {}
        leak = {m.id: 0.0 for m in site.meters}
        for f in self.faults:
            if f.type == "earth_leakage":
                leak[f.params["meter"]] = 1 - (1 - leak[f.params["meter"]]) * (1 - f.params["fraction"])
            elif f.type == "phase_neutral_swapped":
                # Under the swap the real neutral runs through the meter's L path; the
                # customer's earthed "live" conductor (really neutral) takes part of it.
                leak[f.params["meter"]] = 1 - (1 - leak[f.params["meter"]]) * (1 - f.params["earth_fraction"])
        ret = {}
        for m in site.meters:
            if m.kind == "single-phase":
                ret[m.id] = self.current[m.id][m.phase] * (1 - leak[m.id])
        self.neutral.update(ret)
        for f in self.faults:
            if f.type == "shared_neutral":
                total = sum(ret[mid] for mid in f.params["meters"])
                for mid, w in zip(f.params["meters"], f.params["split"]):
                    self.neutral[mid] = total * w

    def _currents(self, m: Meter) -> dict[str, complex]:
        v = self.supply[m.id]
        out = {p: 0j for p in SLOTS}
        un2 = self.un * self.un
        for c in self.loads[m.id]:
            p_w = c.power_kw(self.t) * 1000.0
            if p_w == 0:
                continue
            s = complex(p_w, p_w * c.tan_phi)  # export keeps the same Q ratio as the file says
            w = c.phase_weights
            if m.kind == "single-phase":
                out[m.phase] += v[m.phase] * s.conjugate() / un2
            elif m.kind == "three-phase-4w":
                for p, wp in zip(SLOTS, w):
                    out[p] += v[p] * (s * wp / sum(w)).conjugate() / un2
            else:
                # Three-wire load: star of admittances with a floating star point; an
                # open (lost) line simply drops out.
                y = {p: (s * wp / sum(w)).conjugate() / un2 for p, wp in zip(SLOTS, w) if v[p] != 0}
                ysum = sum(y.values())
                if len(y) < 2 or abs(ysum) < 1e-12:
                    continue
                vstar = sum(y[p] * v[p] for p in y) / ysum
                for p in y:
                    out[p] += y[p] * (v[p] - vstar)
        return out

    def _has(self, type_: str, meter_id: str) -> bool:
        return any(f.type == type_ and f.params.get("meter") == meter_id for f in self.faults)

    def _terminal_open(self, meter_id: str) -> set[str]:
        return {f.params["phase"] for f in self.faults
                if f.type == "lost_phase" and f.params["mode"] == "terminal" and f.params["meter"] == meter_id}

    def _wiring(self, m: Meter):
        for f in self.faults:
            if f.type == "wiring" and f.params["meter"] == m.id:
                return f.params["voltages"], [(c.sign, c.phase) for c in f.params["currents"]]
        if m.kind == "three-phase-4w":
            return ("a", "b", "c"), [(1, "a"), (1, "b"), (1, "c")]
        return ("a", "b", "c"), [(1, "a"), (1, "c")]

    def _dead(self, m: Meter, true_p: float) -> Measurement:
        zero = PhaseReading()
        return Measurement(m.id, m.kind, self.t, False, (zero, zero, zero), 0.0, 0.0, 0.0, 1.0,
                           None if m.kind == "three-phase-3w" else 0.0,
                           0.0 if m.kind == "single-phase" else None, 0.0, Flags(), true_p)

    def measure(self, m: Meter) -> Measurement:
        v, i = self.supply[m.id], self.current[m.id]
        true_p = sum((v[p] * i[p].conjugate()).real for p in SLOTS) / 1000.0
        if self._has("unpowered", m.id):
            return self._dead(m, true_p)
        reversed_ = self._has("reversed", m.id)
        gate = current_gate(m.ib)
        if m.kind == "single-phase":
            return self._single(m, v, i, reversed_, gate, true_p)
        volts, currents = self._wiring(m)
        sign = -1 if reversed_ else 1
        elem_i = [sign * s * i[p] for s, p in currents]
        term = [v[p] for p in volts]
        opened = self._terminal_open(m.id)
        if m.kind == "three-phase-4w":
            # An open voltage terminal floats to neutral through its own voltage circuit.
            u = [0j if slot in opened else term[k] for k, slot in enumerate(SLOTS)]
            if max(abs(x) for x in u) < POWER_MIN * self.un:
                return self._dead(m, true_p)
            readings = [PhaseReading.from_phasors(u[k], elem_i[k]) for k in range(3)]
            i_n = abs(sum(elem_i))
            return self._finish(m, readings, (0, 1, 2), self.un, gate, i_n, None, tuple(u), tuple(elem_i), true_p,
                                seq_u=tuple(u), seq_i=tuple(elem_i))
        # three-phase-3w: elements U12/I1 (slot a) and U32/I2 (slot c); terminal 2 is common.
        live = [x for x in term if x != 0]
        if len(live) == 2:
            # No neutral: a lost line floats to the star point of the load / voltage circuits.
            term = [x if x != 0 else sum(live) / 2 for x in term]
        t1, t2, t3 = term
        if "b" in opened:  # both voltage circuits in series across 1-3: terminal 2 floats mid-way
            t2 = (t1 + t3) / 2
        u1 = 0j if "a" in opened else t1 - t2
        u3 = 0j if "c" in opened else t3 - t2
        ul = self.site.nominal_line_voltage
        if max(abs(u1), abs(u3)) < POWER_MIN * ul:
            return self._dead(m, true_p)
        readings = [PhaseReading.from_phasors(u1, elem_i[0]), PhaseReading(), PhaseReading.from_phasors(u3, elem_i[1])]
        return self._finish(m, readings, (0, 2), ul, gate, None, None, (u1, 0j, u3), (elem_i[0], 0j, elem_i[1]),
                            true_p, pair_u=(u1, u3), pair_i=(elem_i[0], elem_i[1]))

    def _single(self, m, v, i, reversed_, gate, true_p):
        vp, ip, inr = v[m.phase], i[m.phase], self.neutral[m.id]
        if self._terminal_open(m.id) or abs(vp) < POWER_MIN * self.un:
            return self._dead(m, true_p)  # a single-phase meter lives on its own voltage
        # Terminal currents, reference direction meter-in -> meter-out on each path;
        # the neutral channel is read in its normal return direction.
        if self._has("phase_neutral_swapped", m.id):
            u, ch_l, ch_n = -vp, -inr, -ip
        else:
            u, ch_l, ch_n = vp, ip, inr
        if reversed_:
            ch_l, ch_n = -ch_l, -ch_n
        # Dual-channel meters meter on the larger of the two currents (anti-tamper).
        metering = m.options.get("metering", "larger")
        ch = ch_n if metering == "larger" and abs(ch_n) > abs(ch_l) else ch_l
        r = PhaseReading.from_phasors(u, ch)
        r = PhaseReading(abs(u), abs(ch_l), r.P, r.Q, r.S, r.PF, r.angle_deg)
        return self._finish(m, [r, PhaseReading(), PhaseReading()], (0,), self.un, gate, abs(ch_n), abs(ch_l),
                            (u, 0j, 0j), (ch_l, 0j, 0j), true_p, neutral=(abs(ch_l), abs(ch_n)))

    def _finish(self, m, readings, slots, un, gate, i_n, i_l, u_ph, i_ph, true_p, seq_u=None, seq_i=None,
                pair_u=None, pair_i=None, neutral=None):
        p = sum(r.P for r in readings)
        q = sum(r.Q for r in readings)
        s = math.hypot(p, q)  # vector apparent power
        pf = p / s if s > 1e-9 else 1.0
        loaded = any(readings[k].I >= gate for k in slots)

        def per(fn):
            return tuple(fn(readings[k]) if k in slots else False for k in range(3))

        def loss_of_current(k):
            r = readings[k]
            others = [readings[j].I for j in slots if j != k]
            return (len(slots) > 1 and r.U >= LOSS_OF_CURRENT_VOLTAGE * un and r.I < gate and others
                    and max(others) > max(gate, 0.05 * m.ib))

        v_rev = i_rev = False
        if seq_u is not None:
            if all(abs(x) >= PHASE_BREAK * un for x in seq_u):
                pos, neg = _sequence(seq_u)
                v_rev = neg > pos
            if all(abs(x) >= gate for x in seq_i):
                pos, neg = _sequence(seq_i)
                i_rev = neg > pos
        if pair_u is not None:
            # Correct three-wire wiring: Ucb leads Uab by 60 degrees, Ic leads Ia by 120.
            if all(abs(x) >= PHASE_BREAK * un for x in pair_u):
                v_rev = (pair_u[1] / pair_u[0]).imag < 0
            if all(abs(x) >= gate for x in pair_i):
                i_rev = (pair_i[1] / pair_i[0]).imag < 0
        nca = False
        if neutral is not None:
            big = max(neutral)
            nca = big >= gate and abs(neutral[0] - neutral[1]) / big > m.neutral_abnormal_pct / 100.0

        flags = Flags(
            total_active_reverse=loaded and p < 0,
            total_reactive_reverse=loaded and q < 0,
            active_reverse=per(lambda r: r.I >= gate and r.P < 0),
            reactive_reverse=per(lambda r: r.I >= gate and r.Q < 0),
            loss_of_voltage=per(lambda r: r.U < LOSS_OF_VOLTAGE * un and r.I >= gate),
            under_voltage=per(lambda r: PHASE_BREAK * un <= r.U < UNDER_VOLTAGE * un or
                              (r.U < UNDER_VOLTAGE * un and r.I >= gate)),
            over_voltage=per(lambda r: r.U > OVER_VOLTAGE * un),
            loss_of_current=tuple(bool(loss_of_current(k)) if k in slots else False for k in range(3)),
            phase_break=per(lambda r: r.U < PHASE_BREAK * un and r.I < gate),
            voltage_reverse_sequence=v_rev,
            current_reverse_sequence=i_rev,
            neutral_current_abnormal=nca,
        )
        return Measurement(m.id, m.kind, self.t, True, tuple(readings), p, q, s, pf, i_n, i_l,
                           self.state.frequency, flags, true_p, tuple(u_ph), tuple(i_ph))
