"""Electrical model of the simulator, checked against the decision rules in PROTOCOLS.md
("Finding wiring faults from readings"), not against the code's own paths."""

import itertools
import math

import pytest

from metergate.sim import SiteState, load_site_text
from metergate.sim.electrical import EnergyRegisters, current_gate, measure, measure_all

PF = 0.9
PHI = math.degrees(math.acos(PF))  # load angle, lagging


def build(meters, customers, faults="", extra=""):
    """A one-box site: ``meters`` is a list of (id, kind, extra toml), customer i on meter i."""
    parts = ['[site]\nname = "t"\n', '[[buses]]\nname = "b"\nbaud = 2400\n', '[[boxes]]\nid = "X"\npositions = 12\n']
    for n, (mid, kind, more) in enumerate(meters, 1):
        parts.append('[[meters]]\nid = "%s"\nposition = %d\nprotocol = "dlt645-2007"\nkind = "%s"\n'
                     'address = "%012d"\n%s\n' % (mid, n, kind, n, more))
    for n, cust in enumerate(customers, 1):
        parts.append('[[customers]]\nid = "c%d"\n%s\n' % (n, cust))
        parts.append('[[breakers]]\nid = "QF%d"\nposition = %d\ncustomer = "c%d"\n' % (n, n, n))
    parts.append(faults)
    parts.append(extra)
    site = load_site_text("\n".join(parts), "t.toml")
    return site, SiteState(site)


def one(kind, cust="kw = 3.0\npf = 0.9", faults="", more=""):
    site, state = build([("m", kind, more)], [cust], faults)
    return site, state, measure(site, state, "m", 0.0)


def wiring_fault(meter, voltages, currents):
    return '[[faults]]\ntype = "wiring"\nmeter = "%s"\nvoltages = %s\ncurrents = %s\n' % (
        meter, list(voltages), list(currents))


def ang_diff(a, b):
    """Signed smallest difference a - b in degrees."""
    return (a - b + 180.0) % 360.0 - 180.0


# --- single-phase -------------------------------------------------------------


def test_single_phase_correct_measures_the_load():
    _, _, m = one("single-phase", "kw = 2.2\npf = 0.95\npf_kind = \"lagging\"")
    assert m.powered
    assert m.U == pytest.approx(220.0)
    assert m.P == pytest.approx(2.2)
    assert m.PF == pytest.approx(0.95)
    assert m.I == pytest.approx(2200 / (220 * 0.95))
    assert m.angles[0] == pytest.approx(math.degrees(math.acos(0.95)))
    assert m.Q > 0
    assert m.I_N == pytest.approx(m.I)
    assert not m.flags.any()
    assert m.frequency == 50.0


def test_single_phase_leading_load_has_negative_q_but_positive_p():
    _, _, m = one("single-phase", "kw = 1.0\npf = 0.8\npf_kind = \"leading\"")
    assert m.P == pytest.approx(1.0)
    assert m.Q == pytest.approx(-0.75)
    assert m.angles[0] == pytest.approx(360 - math.degrees(math.acos(0.8)))
    assert not m.flags.total_active_reverse
    assert m.flags.total_reactive_reverse


def test_single_phase_on_phase_b_sees_its_own_voltage_angle():
    _, _, m = one("single-phase", more='phase = "b"')
    assert m.angles[0] == pytest.approx(PHI)
    assert m.u_phasors[0] == pytest.approx(220 * complex(math.cos(math.radians(-120)), math.sin(math.radians(-120))))


def test_reversed_single_phase_shows_negative_power_and_counts_reverse_energy():
    site, state, m = one("single-phase", faults='[[faults]]\ntype = "reversed"\nmeter = "m"\n')
    assert m.P == pytest.approx(-3.0)
    assert m.true_P == pytest.approx(3.0)
    assert m.PF == pytest.approx(-0.9)
    assert m.I >= current_gate(site.meter("m").ib)
    assert m.flags.total_active_reverse
    assert m.flags.active_reverse[0] and m.flags.reverse_power_flow[0]
    regs = EnergyRegisters.from_meter(site.meter("m"))
    fwd0, rev0, comb0 = regs.forward_kwh, regs.reverse_kwh, regs.combined_kwh()
    for _ in range(60):  # 60 s: the meters' own event time
        regs.advance(measure(site, state, "m", 0), 1.0)
    assert regs.forward_kwh == fwd0
    assert regs.reverse_kwh == pytest.approx(rev0 + 3.0 / 60)
    # The gotcha: with the default combination word (fwd + rev) the combined total still rises.
    assert regs.combined_kwh() > comb0
    assert regs.combined_kwh(0x09) < comb0  # fwd - rev


def test_switching_a_fault_off_at_run_time_restores_the_reading():
    site, state, m = one("single-phase", faults='[[faults]]\nid = "r"\ntype = "reversed"\nmeter = "m"\n')
    assert m.P < 0
    state.set_fault("r", False)
    assert measure(site, state, "m", 0).P == pytest.approx(3.0)


def test_phase_neutral_swap_keeps_u_and_p_but_splits_line_and_neutral_current():
    _, _, ok = one("single-phase")
    _, _, sw = one("single-phase", faults='[[faults]]\ntype = "phase_neutral_swapped"\nmeter = "m"\n'
                                          'earth_fraction = 0.3\n')
    assert sw.U == pytest.approx(ok.U)
    assert sw.P == pytest.approx(ok.P)
    assert sw.Q == pytest.approx(ok.Q)
    assert sw.PF == pytest.approx(ok.PF)
    assert sw.I_N == pytest.approx(ok.I)  # the real phase current now runs in the neutral channel
    big = max(sw.I_L, sw.I_N)
    assert abs(sw.I_L - sw.I_N) / big == pytest.approx(0.3)
    assert abs(sw.I_L - sw.I_N) / big > 0.10  # commissioning threshold
    assert not sw.flags.neutral_current_abnormal  # the meter's default 50% is not reached
    assert not sw.flags.total_active_reverse


def test_phase_neutral_swap_with_a_strong_earth_path_raises_the_meter_flag():
    _, _, sw = one("single-phase", faults='[[faults]]\ntype = "phase_neutral_swapped"\nmeter = "m"\n'
                                          'earth_fraction = 0.6\n')
    assert sw.flags.neutral_current_abnormal
    assert sw.P == pytest.approx(3.0)


def test_phase_neutral_swap_without_any_other_path_is_invisible():
    _, _, ok = one("single-phase")
    _, _, sw = one("single-phase", faults='[[faults]]\ntype = "phase_neutral_swapped"\nmeter = "m"\n'
                                          'earth_fraction = 0.0\n')
    assert (sw.U, sw.I, sw.I_N) == pytest.approx((ok.U, ok.I, ok.I_N))
    assert sw.P == pytest.approx(ok.P)


def test_phase_only_metering_under_reads_a_swapped_meter_with_an_earth_path():
    # The theft case dual-channel meters guard against.
    _, _, sw = one("single-phase", faults='[[faults]]\ntype = "phase_neutral_swapped"\nmeter = "m"\n'
                                          'earth_fraction = 0.5\n', more='[meters.options]\nmetering = "phase"\n')
    assert sw.P == pytest.approx(1.5)


def test_shared_neutral_between_households_keeps_kirchhoff():
    site, state = build([("m1", "single-phase", ""), ("m2", "single-phase", "")], ["kw = 1.0", "kw = 5.0"],
                        '[[faults]]\ntype = "shared_neutral"\nmeters = ["m1", "m2"]\n')
    r = measure_all(site, state, 0)
    assert r["m1"].I_N == pytest.approx(r["m2"].I_N)
    assert r["m1"].I_N + r["m2"].I_N == pytest.approx(r["m1"].I_L + r["m2"].I_L)
    assert r["m1"].I_L != pytest.approx(r["m1"].I_N)
    # each neutral carries 3 kW worth: m1 is 67% off (flagged at 50%), m2 40% off (not flagged)
    assert r["m1"].flags.neutral_current_abnormal
    assert not r["m2"].flags.neutral_current_abnormal
    # A dual-channel meter meters the larger current: m1 over-registers its neighbour's return.
    assert r["m1"].P == pytest.approx(3.0) and r["m2"].P == pytest.approx(5.0)
    assert r["m1"].true_P == pytest.approx(1.0)


def test_shared_neutral_with_phase_only_metering_registers_true_power():
    opt = '[meters.options]\nmetering = "phase"\n'
    site, state = build([("m1", "single-phase", opt), ("m2", "single-phase", opt)], ["kw = 1.0", "kw = 5.0"],
                        '[[faults]]\ntype = "shared_neutral"\nmeters = ["m1", "m2"]\n')
    r = measure_all(site, state, 0)
    assert r["m1"].P == pytest.approx(1.0) and r["m2"].P == pytest.approx(5.0)
    assert r["m1"].flags.neutral_current_abnormal


def test_earth_leakage_gives_the_same_evidence_as_a_swap():
    _, _, m = one("single-phase", faults='[[faults]]\ntype = "earth_leakage"\nmeter = "m"\nfraction = 0.2\n')
    assert m.I_N == pytest.approx(0.8 * m.I_L)


def test_unpowered_meter_measures_and_registers_nothing():
    site, state, m = one("single-phase", faults='[[faults]]\ntype = "unpowered"\nmeter = "m"\n')
    assert not m.powered
    assert m.P == 0 and m.U == 0
    assert m.true_P == pytest.approx(3.0)  # the customer still draws power
    regs = EnergyRegisters.from_meter(site.meter("m"))
    regs.advance(m, 3600)
    assert regs.forward_kwh == 0


def test_open_breaker_means_no_current():
    site, state, _ = one("single-phase")
    state.set_breaker("QF1", False)
    m = measure(site, state, "m", 0)
    assert m.powered and m.I == 0 and m.P == 0
    assert not m.flags.any()


def test_breaker_mixup_moves_the_customer_to_another_meter():
    site, state = build([("m1", "single-phase", ""), ("m2", "single-phase", "")], ["kw = 1.0", "kw = 2.0"],
                        '[[faults]]\ntype = "breaker_mixup"\nbreaker = "QF1"\nmeter = "m2"\n')
    r = measure_all(site, state, 0)
    assert r["m1"].P == 0
    assert r["m2"].P == pytest.approx(3.0)


def test_voltage_deviation_raises_under_and_over_voltage():
    _, _, low = one("single-phase", faults='[[faults]]\ntype = "voltage_deviation"\nfactor = 0.8\n')
    assert low.U == pytest.approx(176.0)
    assert low.flags.under_voltage[0] and not low.flags.loss_of_voltage[0]
    _, _, lower = one("single-phase", faults='[[faults]]\ntype = "voltage_deviation"\nfactor = 0.7\n')
    assert lower.flags.loss_of_voltage[0]  # < 0.78 Un with current
    _, _, high = one("single-phase", faults='[[faults]]\ntype = "voltage_deviation"\nfactor = 1.2\n')
    assert high.flags.over_voltage[0] and not high.flags.under_voltage[0]
    # constant-impedance load: power follows V squared
    assert high.P == pytest.approx(3.0 * 1.2 ** 2)


def test_time_patterns_drive_the_current():
    site, state = build([("m", "single-phase", "")], ["steps = [[0, 1.0], [10, 0.0], [20, 2.0]]\nperiod_s = 30"])
    assert [round(measure(site, state, "m", t).P, 6) for t in (0, 9, 10, 25, 31)] == [1.0, 1.0, 0.0, 2.0, 1.0]


# --- three-phase four-wire ------------------------------------------------------


def test_3p4w_correct_wiring_every_theta_is_the_load_angle():
    _, _, m = one("three-phase-4w", "kw = 9.0\npf = 0.9")
    assert [p.U for p in m.phases] == pytest.approx([220.0] * 3)
    for theta in m.angles:
        assert theta == pytest.approx(PHI)
    assert m.P == pytest.approx(9.0) and m.true_P == pytest.approx(9.0)
    assert m.I_N == pytest.approx(0.0, abs=1e-9)
    assert not m.flags.any()


@pytest.mark.parametrize("phase", [0, 1, 2])
def test_3p4w_one_reversed_current_registers_a_third_and_doubles_neutral(phase):
    currents = ["Ia", "Ib", "Ic"]
    currents[phase] = "-" + currents[phase]
    _, _, m = one("three-phase-4w", "kw = 9.0\npf = 0.9", wiring_fault("m", "abc", currents))
    assert m.P == pytest.approx(m.true_P / 3)
    i_avg = sum(p.I for p in m.phases) / 3
    assert m.I_N == pytest.approx(2 * i_avg)
    assert m.flags.active_reverse == tuple(k == phase for k in range(3))
    assert not m.flags.total_active_reverse


def test_3p4w_reversed_currents_on_element_a_give_180_300_60():
    # PROTOCOLS.md: -Ia, -Ib, -Ic on element A give 180, 300, 60 (added to phi).
    for term, offset in (("-Ia", 180), ("-Ib", 300), ("-Ic", 60)):
        rest = [c for c in ("Ia", "Ib", "Ic") if c != term[1:]]
        _, _, m = one("three-phase-4w", "kw = 9.0\npf = 0.9", wiring_fault("m", "abc", [term] + rest))
        assert ang_diff(m.angles[0], PHI + offset) == pytest.approx(0, abs=1e-6)


LAGGING = {"a": "b", "b": "c", "c": "a"}  # the phase 120 degrees behind


WRONG_4W = [(p, s) for p in itertools.permutations("abc") for s in itertools.product((1, -1), repeat=3)
            if (p, s) != (("a", "b", "c"), (1, 1, 1))]  # the correct one is covered above


@pytest.mark.parametrize("perm,signs", WRONG_4W)
def test_3p4w_all_47_wrong_current_hypotheses_follow_the_angle_rule(perm, signs):
    currents = [("-" if s < 0 else "") + "I" + p for s, p in zip(signs, perm)]
    _, _, m = one("three-phase-4w", "kw = 9.0\npf = 0.9", wiring_fault("m", "abc", currents))
    for slot, (s, p), theta in zip("abc", zip(signs, perm), m.angles):
        offset = 0 if p == slot else 120 if p == LAGGING[slot] else 240
        offset += 180 if s < 0 else 0
        assert ang_diff(theta, PHI + offset) == pytest.approx(0, abs=1e-6), (currents, slot)


def test_3p4w_phase_sequence_flags():
    _, _, m = one("three-phase-4w", "kw = 9.0", wiring_fault("m", "abc", ["Ia", "Ic", "Ib"]))
    assert m.flags.current_reverse_sequence and not m.flags.voltage_reverse_sequence
    _, _, m = one("three-phase-4w", "kw = 9.0", wiring_fault("m", "acb", ["Ia", "Ib", "Ic"]))
    assert m.flags.voltage_reverse_sequence and not m.flags.current_reverse_sequence
    _, _, m = one("three-phase-4w", "kw = 9.0", wiring_fault("m", "bca", ["Ib", "Ic", "Ia"]))
    # a cyclic rotation of both keeps positive sequence and measures right
    assert not m.flags.voltage_reverse_sequence and not m.flags.current_reverse_sequence
    assert m.P == pytest.approx(9.0)


def test_3p4w_lost_supply_phase_is_a_phase_break():
    _, _, m = one("three-phase-4w", "kw = 9.0",
                  '[[faults]]\ntype = "lost_phase"\nmeter = "m"\nphase = "b"\n')
    assert m.powered
    assert m.phases[1].U == 0 and m.phases[1].I == 0
    assert m.flags.phase_break == (False, True, False)
    assert m.flags.loss_of_voltage == (False, False, False)
    assert m.flags.loss_of_current == (False, False, False)
    assert m.P == pytest.approx(6.0)


def test_3p4w_open_voltage_terminal_is_loss_of_voltage_with_current():
    _, _, m = one("three-phase-4w", "kw = 9.0",
                  '[[faults]]\ntype = "lost_phase"\nmeter = "m"\nphase = "c"\nmode = "terminal"\n')
    assert m.phases[2].U == 0 and m.phases[2].I > 1
    assert m.flags.loss_of_voltage == (False, False, True)
    assert not any(m.flags.phase_break)
    assert m.P == pytest.approx(6.0) and m.true_P == pytest.approx(9.0)


def test_3p4w_loss_of_current_when_one_phase_carries_nothing():
    _, _, m = one("three-phase-4w", "kw = 6.0\nphase_weights = [1, 1, 0]")
    assert m.flags.loss_of_current == (False, False, True)


def test_feeder_lost_phase_kills_single_phase_meters_on_it_only():
    site, state = build([("ma", "single-phase", 'phase = "a"'), ("mb", "single-phase", 'phase = "b"')],
                        ["kw = 1.0", "kw = 1.0"], '[[faults]]\ntype = "lost_phase"\nphase = "a"\n')
    r = measure_all(site, state, 0)
    assert not r["ma"].powered and r["ma"].true_P == 0
    assert r["mb"].powered and r["mb"].P == pytest.approx(1.0)


# --- three-phase three-wire -----------------------------------------------------


def test_3p3w_correct_wiring_theta1_phi_plus_30_theta3_phi_minus_30():
    _, _, m = one("three-phase-3w", "kw = 30.0\npf = 0.9")
    assert m.phases[0].U == pytest.approx(220 * math.sqrt(3))
    assert m.phases[2].U == pytest.approx(220 * math.sqrt(3))
    assert m.phases[1] == type(m.phases[1])()  # slot B is empty
    assert ang_diff(m.angles[0], PHI + 30) == pytest.approx(0, abs=1e-9)
    assert ang_diff(m.angles[2], PHI - 30) == pytest.approx(0, abs=1e-9)
    assert m.P == pytest.approx(30.0) and m.true_P == pytest.approx(30.0)
    assert m.I_N is None
    # theta3 = phi - 30 < 0 at PF 0.9: element C's reactive power is negative, which is
    # physics, not a fault; nothing else may be flagged.
    assert m.flags.reactive_reverse == (False, False, True)
    assert not any(v for k, v in m.flags.as_dict().items() if not k.startswith("reactive_reverse"))


def test_3p3w_low_pf_one_element_negative_is_normal():
    _, _, m = one("three-phase-3w", "kw = 30.0\npf = 0.4")
    assert m.phases[0].P < 0 < m.phases[2].P
    assert m.P == pytest.approx(30.0)
    assert not m.flags.total_active_reverse


def _3w_signatures():
    rows = []
    for volts in itertools.permutations("abc"):
        for pair in (("a", "c"), ("c", "a")):
            for signs in itertools.product((1, -1), repeat=2):
                currents = [("-" if s < 0 else "") + "I" + p for s, p in zip(signs, pair)]
                correct = volts == ("a", "b", "c") and currents == ["Ia", "Ic"]
                site, state = build([("m", "three-phase-3w", "")], ["kw = 30.0\npf = 0.9"],
                                    "" if correct else wiring_fault("m", volts, currents))
                m = measure(site, state, "m", 0)
                rows.append(("".join(volts), tuple(currents), round(m.angles[0], 3), round(m.angles[2], 3),
                             (m.P > 1e-6) - (m.P < -1e-6), m.flags.voltage_reverse_sequence))
    return rows


def test_3p3w_48_wirings_angles_alone_leave_12_pairs_the_voltage_sequence_splits_them():
    rows = _3w_signatures()
    assert len(rows) == 48
    by_angles = {}
    for r in rows:
        by_angles.setdefault(r[2:5], []).append(r)
    # (theta1, theta3, sign of P) gives 36 signatures: 12 pairs of wirings look the same ...
    assert len(by_angles) == 36
    pairs = [v for v in by_angles.values() if len(v) > 1]
    assert len(pairs) == 12 and all(len(v) == 2 for v in pairs)
    # ... and in every pair one voltage order is positive, the other negative sequence.
    for a, b in pairs:
        assert a[5] != b[5]
    assert len({r[2:6] for r in rows}) == 48
    correct = [r for r in rows if r[0] == "abc" and r[1] == ("Ia", "Ic")]
    assert correct[0][2:4] == (round(PHI + 30, 3), round((PHI - 30) % 360, 3))
    # the correct wiring is alone even on angles only
    assert len(by_angles[correct[0][2:5]]) == 1


def test_3p3w_open_middle_voltage_terminal_halves_both_elements():
    _, _, m = one("three-phase-3w", "kw = 30.0",
                  '[[faults]]\ntype = "lost_phase"\nmeter = "m"\nphase = "b"\nmode = "terminal"\n')
    half = 220 * math.sqrt(3) / 2
    assert m.phases[0].U == pytest.approx(half)
    assert m.phases[2].U == pytest.approx(half)
    assert m.flags.loss_of_voltage == (True, False, True)


def test_3p3w_lost_supply_line_turns_the_load_single_phase():
    _, _, m = one("three-phase-3w", "kw = 30.0\npf = 1.0",
                  '[[faults]]\ntype = "lost_phase"\nmeter = "m"\nphase = "b"\n')
    # the three-wire load then sits across lines a-c only: Ia = -Ic, and I_b is gone
    assert m.phases[0].I == pytest.approx(m.phases[2].I)
    assert m.i_phasors[0] == pytest.approx(-m.i_phasors[2])
    assert m.P == pytest.approx(m.true_P)
    assert m.true_P == pytest.approx(30.0 / 2)  # two star branches in series across Uac


# --- demo site ------------------------------------------------------------------


def test_demo_site_the_reversed_meter_is_the_only_one_reading_backwards_while_importing():
    from metergate.sim import DEMO_SITE, load_site

    site = load_site(DEMO_SITE)
    state = SiteState(site)
    r = measure_all(site, state, 8 * 3600)  # t=28800: the PV house imports in that step
    backwards = sorted(k for k, m in r.items() if m.P < 0 and m.true_P > 0)
    assert backwards == ["m2"]
    for k, m in r.items():
        assert m.powered
        assert m.P == pytest.approx(m.true_P if k != "m2" else -m.true_P)
