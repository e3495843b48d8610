# The self-check's findings catalogue and electrical diagnosis. Runs under
# CPython (pytest) and the MicroPython unix port (mpy_runner.py). The worked
# cases are computed by hand from PROTOCOLS.md "Finding wiring faults from
# readings": theta_x = atan2(Q_x, P_x) is phi (the load angle) on a right
# element, +120 for the lagging phase's current, +240 for the leading one's,
# +180 for a reversed one; three-wire: theta1 = phi + 30, theta3 = phi - 30.
import math

from checks import raises

from gateway.selfcheck import electrical as el
from gateway.selfcheck import findings as fd

PHI = math.acos(0.9) * 180 / math.pi  # 25.84 degrees: PF 0.9 lagging


def codes(found):
    return [f["code"] for f in found]


def element(u, i, theta_deg):
    """P, Q (kW, kvar) of an element seeing U and I with I lagging U by theta."""
    s = u * i / 1000.0
    t = theta_deg * math.pi / 180
    return round(s * math.cos(t), 4), round(s * math.sin(t), 4)


def single(u=220.0, i=10.0, theta=PHI, i_n=None, sw1=0):
    p, q = element(u, i, theta)
    return {"voltage": u, "current": -i if p < 0 else i, "power": p, "reactive_power": q,
            "neutral_current": i if i_n is None else i_n, "04000501": sw1}


def four_wire(thetas, u=(220.0, 220.0, 220.0), i=(10.0, 10.0, 10.0), sw7=0):
    r = {"04000507": sw7}
    for k in range(3):
        s = "abc"[k]
        p, q = element(u[k], i[k], thetas[k])
        r["voltage_" + s] = u[k]
        r["current_" + s] = -i[k] if p < 0 else i[k]
        r["power_" + s] = p
        r[el._Q_DI[k]] = q
    return r


def three_wire(theta1, theta3, u=380.0, i=10.0, sw7=0):
    p1, q1 = element(u, i, theta1)
    p3, q3 = element(u, i, theta3)
    return {"voltage_a": u, "voltage_c": u, "current_a": i, "current_c": i, "power_a": p1, "power_c": p3,
            "02040100": q1, "02040300": q3, "power": p1 + p3, "04000507": sw7}


# --- the catalogue


def test_every_code_has_a_severity_and_both_languages_with_the_same_parameters():
    seen = []
    for code, sev, mzh, men, fzh, fen in fd.CATALOGUE:
        assert code not in seen, code
        seen.append(code)
        assert sev in fd.SEVERITIES, code
        for text in (mzh, men, fzh, fen):
            assert text.strip(), code
        assert sorted(fd.template_params(mzh)) == sorted(fd.template_params(men)), code
        for name in fd.template_params(fzh) + fd.template_params(fen):
            assert name in fd.params_of(code) or name in ("meter", "position"), (code, name)
    # the codes issue 5 names, one per kind of fault
    for code in ("LINK-NO-RESPONSE", "LINK-AB-SWAPPED", "LINK-AB-SWAPPED-GATEWAY", "LINK-LINE-SETTINGS",
                 "LINK-INTERMITTENT", "LINK-IDLE-JUNK", "LINK-DUPLICATE-ADDRESS", "LINK-PROTOCOL-VERSION",
                 "ID-WRONG-METER", "ID-MISSING-METER", "ID-UNEXPECTED-METER", "ID-ADDRESS-DISCOVERED",
                 "ELEC-VOLTAGE-LOW", "ELEC-VOLTAGE-HIGH", "ELEC-IN-OUT-REVERSED", "ELEC-NEUTRAL-MISMATCH",
                 "ELEC-PHASE-LOSS", "ELEC-VOLTAGE-LOSS", "ELEC-PHASE-SEQUENCE", "ELEC-CURRENT-REVERSED",
                 "ELEC-WIRING", "ELEC-WIRING-AMBIGUOUS", "ELEC-WIRING-UNCERTAIN", "ELEC-NO-LOAD",
                 "CORR-BREAKER-MISMATCH", "CORR-NO-CURRENT-DROP", "CORR-CURRENT-UNREAD", "GW-SUPPLY-LOW", "GW-BROWNOUT-RESETS",
                 "CHECK-SKIPPED"):
        assert code in seen, code


def test_finding_is_a_plain_dict_with_the_message_filled_in_both_languages():
    f = fd.finding("LINK-INTERMITTENT", meter="m07", position=7, evidence={"polls": 50, "errors": 3},
                   polls=50, errors=3, rate_pct=6.0)
    assert sorted(f) == ["code", "evidence", "fix", "message", "meter", "position", "severity"]
    assert f["code"] == "LINK-INTERMITTENT" and f["severity"] == "fault"
    assert f["meter"] == "m07" and f["position"] == 7
    assert f["message"]["en"] == "Meter m07: 3 of 50 polls failed (6%): the link is intermittent."
    assert f["message"]["zh"] == "表 m07：50 次轮询中 3 次失败（6%），通信时断时续。"
    assert "485" in f["fix"]["zh"] and "RS-485" in f["fix"]["en"]
    assert f["evidence"] == {"polls": 50, "errors": 3}
    g = fd.finding("ID-ADDRESS-DISCOVERED", bus="rs485-1", address="202107072529")
    assert g["severity"] == "info" and g["meter"] is None and g["evidence"] == {}


def test_finding_refuses_unknown_codes_and_wrong_parameters():
    exc = raises(ValueError, fd.finding, "LINK-AB-SWAP")
    assert "LINK-AB-SWAP" in str(exc)
    exc = raises(ValueError, fd.finding, "LINK-LINE-SETTINGS", meter="m1", found="9600 8E1")
    assert "expected" in str(exc) and "LINK-LINE-SETTINGS" in str(exc)
    exc = raises(ValueError, fd.finding, "ELEC-NO-LOAD", gate=0.05, gates=1)
    assert "gates" in str(exc)
    raises(ValueError, fd.finding, "ELEC-NO-LOAD", evidence=[1, 2], gate=0.05)
    assert fd.severity("CHECK-SKIPPED") == "info"
    assert fd.params_of("CHECK-SKIPPED") == ["check", "reason"]


# --- what the poller must read


def test_needed_items_name_what_the_gateway_reads():
    s = el.needed_items("single-phase")
    for name in ("voltage", "current", "power", "neutral_current", "energy_forward", "energy_reverse", "04000501"):
        assert name in s, name
    w3 = el.needed_items("three-phase-3w")
    assert "04000507" in w3 and "voltage_b" not in w3 and "neutral_current" not in w3
    assert "02040100" in w3 and "02040300" in w3 and "04000505" not in w3
    w4 = el.needed_items("three-phase-4w")
    for name in ("voltage_b", "02040200", "04000502", "04000505", "04000507", "neutral_current"):
        assert name in w4, name
    assert "reactive_power_b" in el.needed_items("three-phase-4w", "modbus")
    assert "04000501" not in el.needed_items("single-phase", "dlt645-1997")
    raises(ValueError, el.needed_items, "two-phase")
    raises(ValueError, el.needed_items, "single-phase", "iec62056")


# --- single-phase


def test_a_right_single_phase_meter_under_load_gives_no_finding():
    assert el.diagnose("single-phase", single()) == []


def test_negative_power_under_load_is_in_out_reversed_unless_the_site_exports():
    r = single(theta=PHI + 180)
    assert r["power"] == -1.98 and r["current"] == -10.0  # 220 V x 10 A x 0.9, backwards
    found = el.diagnose("single-phase", r, meter="m1", position=3)
    assert codes(found) == ["ELEC-IN-OUT-REVERSED"]
    f = found[0]
    assert f["severity"] == "fault" and f["meter"] == "m1" and f["position"] == 3
    assert f["evidence"]["P"] == -1.98 and f["evidence"]["reasons"] == ["negative_power"]
    assert "进线" in f["fix"]["zh"] and "incoming" in f["message"]["en"]
    assert el.diagnose("single-phase", r, {"exporting": True}) == []


def test_below_the_current_gate_direction_is_not_judged():
    # Ib 5 A: gate max(0.05, 1 % of 5) = 0.05 A; 0.04 A flowing backwards is no proof
    r = single(i=0.04, theta=PHI + 180)
    found = el.diagnose("single-phase", r)
    assert codes(found) == ["ELEC-NO-LOAD"]
    assert found[0]["severity"] == "info" and "0.05 A" in found[0]["message"]["en"]
    # Ib 20 A: gate 0.2 A, so 0.15 A is still no load
    assert codes(el.diagnose("single-phase", single(i=0.15, theta=PHI + 180), {"ib": 20})) == ["ELEC-NO-LOAD"]
    assert codes(el.diagnose("single-phase", single(i=0.15, theta=PHI + 180))) == ["ELEC-IN-OUT-REVERSED"]


def test_status_word_1_bit_4_is_read_as_an_int_or_as_flag_names():
    r = single(i=0.0)
    r["04000501"] = 0x0010
    assert codes(el.diagnose("single-phase", r)) == ["ELEC-IN-OUT-REVERSED"]
    r["04000501"] = ("clock_battery_low", "active_power_reverse")
    assert codes(el.diagnose("single-phase", r)) == ["ELEC-IN-OUT-REVERSED"]
    r["04000501"] = ("clock_battery_low",)
    assert codes(el.diagnose("single-phase", r)) == ["ELEC-NO-LOAD"]


def test_reverse_energy_rising_over_a_minute_is_proof_even_without_load_now():
    r = single(i=0.0)
    r["energy_forward"] = 1200.00
    r["energy_reverse"] = 35.05
    earlier = {"energy_forward": 1200.00, "energy_reverse": 35.00, "elapsed_s": 90}
    found = el.diagnose("single-phase", r, earlier=earlier)
    assert codes(found) == ["ELEC-IN-OUT-REVERSED"]
    assert found[0]["evidence"]["reverse_kwh_delta"] == 0.05
    assert found[0]["evidence"]["reasons"] == ["reverse_energy_rising"]
    earlier["elapsed_s"] = 30  # meters use 60 s for their own events: too short to judge
    assert codes(el.diagnose("single-phase", r, earlier=earlier)) == ["ELEC-NO-LOAD"]
    earlier.update(elapsed_s=90, energy_forward=1199.90)  # forward rose too: an exporting hour, not a reversal
    assert codes(el.diagnose("single-phase", r, earlier=earlier)) == ["ELEC-NO-LOAD"]


def test_phase_and_neutral_current_apart_give_both_explanations():
    # 10 A on the phase, 7 A back on the neutral: 30 % apart, above the 10 % commissioning threshold
    found = el.diagnose("single-phase", single(i=10.0, i_n=7.0))
    assert codes(found) == ["ELEC-NEUTRAL-MISMATCH"]
    en = found[0]["message"]["en"]
    assert "swapped" in en and "shared" in en and "earth" in en and "30%" in en
    assert "零线" in found[0]["message"]["zh"] and "共用" in found[0]["message"]["zh"]
    assert found[0]["evidence"] == {"I_L": 10.0, "I_N": 7.0, "diff_pct": 30.0, "threshold_pct": 10.0}
    assert el.diagnose("single-phase", single(i=10.0, i_n=9.2)) == []  # 8 %
    assert el.diagnose("single-phase", single(i=0.9, i_n=0.5)) == []  # below 1 A: not judged
    assert codes(el.diagnose("single-phase", single(i=10.0, i_n=9.2), {"neutral_mismatch_pct": 5})) == [
        "ELEC-NEUTRAL-MISMATCH"]


def test_supply_voltage_window():
    # 0.85 x 220 = 187, 1.15 x 220 = 253
    found = el.diagnose("single-phase", single(u=180.0))
    assert codes(found) == ["ELEC-VOLTAGE-LOW"]
    assert "180 V" in found[0]["message"]["en"] and "187–253 V" in found[0]["message"]["en"]
    assert codes(el.diagnose("single-phase", single(u=260.0))) == ["ELEC-VOLTAGE-HIGH"]
    assert el.diagnose("single-phase", single(u=188.0)) == []
    assert codes(el.diagnose("single-phase", single(u=230.0), {"nominal_voltage": 230.0})) == []
    assert codes(el.diagnose("single-phase", single(u=200.0), {"voltage_low": 0.95})) == ["ELEC-VOLTAGE-LOW"]


def test_a_missing_item_skips_the_check_with_its_name():
    r = single()
    del r["neutral_current"]
    found = el.diagnose("single-phase", r)
    assert codes(found) == ["CHECK-SKIPPED"]
    assert found[0]["message"]["en"] == "Check neutral was skipped: item_missing:neutral_current."
    r = single()
    r["voltage"] = (220.0, "V", "implausible")  # a poll's quality says it is not a reading
    found = el.diagnose("single-phase", r)
    assert codes(found) == ["CHECK-SKIPPED"] and "item_missing:voltage" in found[0]["message"]["en"]
    r["voltage"] = (220.0, "V", "good")
    assert el.diagnose("single-phase", r) == []


def test_bad_input_is_refused_with_its_name():
    exc = raises(ValueError, el.diagnose, "single-phase", single(), {"exportng": True})
    assert "exportng" in str(exc)
    exc = raises(ValueError, el.diagnose, "single-phase", single(), {"nominal_voltage": -1})
    assert "nominal_voltage" in str(exc)
    r = single()
    r["power"] = "lots"
    exc = raises(ValueError, el.diagnose, "single-phase", r)
    assert "power" in str(exc)
    r = single()
    r["04000501"] = 1.5
    assert "04000501" in str(raises(ValueError, el.diagnose, "single-phase", r))
    raises(ValueError, el.diagnose, "two-phase", {})


# --- three-phase four-wire


def test_four_wire_right_wiring_has_theta_phi_everywhere_and_no_finding():
    assert el.diagnose("three-phase-4w", four_wire((PHI, PHI, PHI))) == []


def test_four_wire_one_reversed_current_is_named_by_phase():
    found = el.diagnose("three-phase-4w", four_wire((PHI, PHI + 180, PHI)))
    assert codes(found) == ["ELEC-CURRENT-REVERSED"]
    assert found[0]["message"]["en"].startswith("Phase B:")
    assert found[0]["evidence"]["wiring"] == {"voltages": "abc", "currents": ["Ia", "-Ib", "Ic"]}


def test_four_wire_all_reversed_is_in_out_reversed_unless_exporting():
    r = four_wire((PHI + 180, PHI + 180, PHI + 180))
    assert codes(el.diagnose("three-phase-4w", r)) == ["ELEC-IN-OUT-REVERSED"]
    assert el.diagnose("three-phase-4w", r, {"exporting": True}) == []
    # on an exporting site one reversed element still cannot be export
    found = el.diagnose("three-phase-4w", four_wire((PHI, PHI + 180, PHI)), {"exporting": True})
    assert codes(found) == ["ELEC-CURRENT-REVERSED"]


def test_four_wire_swapped_currents_are_named_from_the_angles():
    # element A carries Ib (the phase lagging Ua: +120), element B carries Ia (leading Ub: +240)
    found = el.diagnose("three-phase-4w", four_wire((PHI + 120, PHI + 240, PHI)))
    assert codes(found) == ["ELEC-WIRING"]
    f = found[0]
    assert f["evidence"]["wiring"] == {"voltages": "abc", "currents": ["Ib", "Ia", "Ic"]}
    assert f["evidence"]["confidence"] > 0.95
    assert "a-b-c" in f["message"]["en"] and "Ib, Ia, Ic" in f["message"]["en"]
    assert "Ia, Ib, Ic" in f["fix"]["en"]


def test_four_wire_reversed_currents_of_other_phases_on_element_a_give_180_300_60():
    # PROTOCOLS.md: -Ia, -Ib, -Ic on element A give phi + 180, 300, 60
    for theta_a, cur in ((PHI + 300, "-Ib"), (PHI + 60, "-Ic")):
        rest = {"-Ib": ("-Ia", "Ic"), "-Ic": ("Ib", "-Ia")}[cur]
        # keep the other two elements consistent with a permutation of the currents
        thetas = [theta_a]
        for k, c in ((1, rest[0]), (2, rest[1])):
            v = (0.0, -120.0, 120.0)[k]
            ph = {"a": 0.0, "b": -120.0, "c": 120.0}[c[-1]]
            thetas.append(PHI + v - ph + (180.0 if c[0] == "-" else 0.0))
        found = el.diagnose("three-phase-4w", four_wire(thetas))
        assert codes(found) == ["ELEC-WIRING"], (cur, found)
        assert found[0]["evidence"]["wiring"]["currents"] == [cur, rest[0], rest[1]]


def test_four_wire_reverse_voltage_sequence_with_matching_currents_measures_right():
    # terminals a-c-b with currents Ia, Ic, Ib: every element right, only SW7 b0 shows it
    r = four_wire((PHI, PHI, PHI), sw7=1)
    found = el.diagnose("three-phase-4w", r)
    assert codes(found) == ["ELEC-PHASE-SEQUENCE"] and found[0]["severity"] == "warning"


def test_four_wire_missing_phase_and_open_voltage_link():
    r = four_wire((PHI, PHI, PHI), u=(220.0, 0.0, 220.0), i=(10.0, 0.0, 10.0))
    found = el.diagnose("three-phase-4w", r)
    assert codes(found) == ["ELEC-PHASE-LOSS", "CHECK-SKIPPED"]
    assert found[0]["message"]["en"].startswith("Phase B: only 0 V and no current")
    assert "no_current_on:B" in found[1]["message"]["en"]
    r = four_wire((PHI, PHI, PHI), u=(0.0, 220.0, 220.0))
    r["power_a"] = r["02040100"] = 0.0
    found = el.diagnose("three-phase-4w", r)
    assert codes(found) == ["ELEC-VOLTAGE-LOSS", "CHECK-SKIPPED"]
    assert "10 A flows" in found[0]["message"]["en"]


def test_four_wire_without_any_current_cannot_judge_yet():
    found = el.diagnose("three-phase-4w", four_wire((0, 0, 0), i=(0.0, 0.0, 0.0)))
    assert codes(found) == ["ELEC-NO-LOAD"]


def test_four_wire_partial_load_falls_back_to_the_meters_own_flags():
    r = four_wire((PHI, PHI, PHI), i=(10.0, 10.0, 0.0))
    r["04000502"] = ("active_reverse_b",)
    found = el.diagnose("three-phase-4w", r)
    assert codes(found) == ["CHECK-SKIPPED", "ELEC-CURRENT-REVERSED"]
    assert found[1]["evidence"]["reasons"] == ["sw2_b1"]


# --- three-phase three-wire


def test_three_wire_right_wiring_theta1_phi_plus_30_theta3_phi_minus_30():
    assert el.diagnose("three-phase-3w", three_wire(PHI + 30, PHI - 30)) == []


def test_three_wire_low_power_factor_one_negative_element_is_normal():
    phi = math.acos(0.45) * 180 / math.pi  # 63.3: element 1 at 93.3 degrees has P < 0
    r = three_wire(phi + 30, phi - 30)
    assert r["power_a"] < 0 < r["power"]
    # a site with such loads (idle motors) says so in its expected load window
    expect = {"pf_lagging_min": 0.4, "pf_plausible_lagging_min": 0.3}
    assert el.diagnose("three-phase-3w", r, expect) == []


def test_three_wire_pair_with_equal_angles_needs_sw7():
    # abc with currents (Ic, Ia): theta1 = 30 - 120 + phi = phi + 270, theta3 = 90 - 0 + phi = phi + 90.
    # cba with (-Ia, -Ic) gives the same angles; only the voltage sequence differs (docs/faults.md).
    r = three_wire(PHI + 270, PHI + 90, sw7=0)
    found = el.diagnose("three-phase-3w", r)
    assert codes(found) == ["ELEC-WIRING"]
    assert found[0]["evidence"]["wiring"] == {"voltages": "abc", "currents": ["Ic", "Ia"]}
    r["04000507"] = ("voltage_reverse_sequence",)
    found = el.diagnose("three-phase-3w", r)
    assert found[0]["evidence"]["wiring"] == {"voltages": "cba", "currents": ["-Ia", "-Ic"]}
    del r["04000507"]
    found = el.diagnose("three-phase-3w", r)
    assert codes(found) == ["ELEC-WIRING-AMBIGUOUS"]
    cands = found[0]["evidence"]["candidates"]
    assert {"voltages": "abc", "currents": ["Ic", "Ia"]} in [{"voltages": c["voltages"], "currents": c["currents"]}
                                                             for c in cands]
    assert "2" in found[0]["message"]["en"]


def test_three_wire_in_out_reversed_and_one_reversed_element():
    assert codes(el.diagnose("three-phase-3w", three_wire(PHI + 210, PHI + 150))) == ["ELEC-IN-OUT-REVERSED"]
    found = el.diagnose("three-phase-3w", three_wire(PHI + 30, PHI + 150))
    assert codes(found) == ["ELEC-CURRENT-REVERSED"] and found[0]["message"]["en"].startswith("Phase C:")


def test_hypotheses_are_the_48_three_wire_wirings_and_96_four_wire_ones():
    w3 = list(el._hypotheses("three-phase-3w", None))
    assert len(w3) == 48
    assert len(set((v, c) for v, c, _ in w3)) == 48
    assert len(list(el._hypotheses("three-phase-3w", False))) == 24
    assert len(list(el._hypotheses("three-phase-4w", None))) == 96
    assert len(list(el._hypotheses("three-phase-4w", True))) == 48


def test_four_wire_without_sw7_still_names_what_every_fitting_wiring_agrees_on():
    # a Modbus meter has no SW7: a-b-c with Ia, -Ib, Ic and a-c-b with Ia, -Ic, Ib give the
    # same angles, and both say "phase B reversed"
    r = four_wire((PHI, PHI + 180, PHI))
    del r["04000507"]
    found = el.diagnose("three-phase-4w", r)
    assert codes(found) == ["ELEC-CURRENT-REVERSED"] and found[0]["message"]["en"].startswith("Phase B:")
    r = four_wire((PHI, PHI, PHI))
    del r["04000507"]
    assert el.diagnose("three-phase-4w", r) == []  # the sequence is unknown: no phase-sequence claim


def test_a_dlt645_1997_meter_is_judged_with_what_it_has():
    # 1997: unsigned current, signed power, no reactive power, no status words, no neutral
    items = el.needed_items("single-phase", "dlt645-1997")
    assert items == ("voltage", "current", "power", "energy_forward", "energy_reverse")
    found = el.diagnose("single-phase", {"voltage": 221.0, "current": 9.1, "power": -1.8})
    assert codes(found) == ["ELEC-IN-OUT-REVERSED", "CHECK-SKIPPED"]
    assert "item_missing:neutral_current" in found[1]["message"]["en"]
    # three-phase: without Q the wiring is not identified; the sign of power per element still is
    r = four_wire((PHI, PHI + 180, PHI))
    for k in (0, 1, 2):
        del r[el._Q_DI[k]]
    del r["04000507"]
    found = el.diagnose("three-phase-4w", r)
    assert codes(found) == ["CHECK-SKIPPED", "ELEC-CURRENT-REVERSED"]
    assert "item_missing:02040100" in found[0]["message"]["en"]
    assert found[1]["evidence"]["reasons"] == ["negative_power"]


def test_findings_go_to_json_as_they_are():
    import json

    cases = (("single-phase", single(theta=PHI + 180, i_n=6.0)),
             ("three-phase-4w", four_wire((PHI + 120, PHI + 240, PHI))),
             ("three-phase-3w", {"voltage_a": 380.0, "voltage_c": 380.0, "current_a": 10.0, "current_c": 10.0,
                                 "power_a": 3.0, "power_c": 3.0, "02040100": 0.0, "02040300": 0.0}))
    for kind, r in cases:
        found = el.diagnose(kind, r, meter="m9", position=9)
        assert found
        back = json.loads(json.dumps(found))
        assert [f["code"] for f in back] == codes(found)
        assert back[0]["message"]["zh"] == found[0]["message"]["zh"]
