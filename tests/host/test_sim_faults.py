"""Every fault of docs/faults.md, seen over the simulated RS-485 bus, checked against
the decision rules of /work/shared/PROTOCOLS.md ("Finding wiring faults from
readings", "RS-485 faults a gateway can see in software").

Frames are built and parsed here by hand (no metergate.codecs / gateway.protocols,
which the meter models use). Expected angles are worked out in the test from
phasors written here, not from metergate.sim.electrical. The bus runs in virtual
time: `Rig.now` is the meters' wall clock, `Rig.t` the bus timeline.
"""

import cmath
import itertools
import math

import pytest

from by_hand import BusRig, READ_ADDRESS, bcd, frame, mb_req, mb_valid, parse, read_req, site_toml, wire_addr

T0 = 1_700_000_000.0
UN = 220.0
PF = 0.9
PHI = math.degrees(math.acos(PF))  # load angle, lagging
GATE = 0.05  # max(0.05 A, 1 % of Ib) with Ib = 5 or 10 A

FMT = {0x0201: (1, False), 0x0202: (3, True), 0x0203: (4, True), 0x0204: (4, True), 0x0206: (3, True),
       0x0000: (2, True), 0x0001: (2, False), 0x0002: (2, False), 0x0280: (3, False)}


# ---------------------------------------------------------------------------
# Sites and the bus


def dlt(address, kind="single-phase", more=""):
    return 'protocol = "dlt645-2007"\nkind = "%s"\naddress = "%s"\n%s' % (kind, address, more)


def addr(n):
    return "%012d" % n


class Rig(BusRig):
    def __init__(self, text, seed=1, now=T0):
        BusRig.__init__(self, text, "b", seed, now)

    def read(self, address, di):
        """Item data of a 0x91 reply (DI checked), or None for anything else."""
        f = parse(self.transact(read_req(address, di)))
        if f is None or f[1] != 0x91 or f[0] != wire_addr(address) or f[2][:4] != di.to_bytes(4, "little"):
            return None
        return f[2][4:]

    def value(self, address, di):
        dec, signed = FMT[di >> 16]
        data = self.read(address, di)
        assert data is not None, "%s %08X: no valid reply" % (address, di)
        return bcd(data, dec, signed)

    def status(self, address, n):
        data = self.read(address, 0x04000500 + n)
        assert data is not None and len(data) == 2
        return data[0] | data[1] << 8


def ang_diff(a, b):
    return (a - b + 180.0) % 360.0 - 180.0


def theta(p, q):
    """theta = atan2(Q, P) in 0..360 (how far the element's current lags its voltage)."""
    return math.degrees(math.atan2(q, p)) % 360.0


LOAD = 'kw = 2.2\npf = %s' % PF
M1, M2, M3 = addr(1), addr(2), addr(3)


# ---------------------------------------------------------------------------
# Communication faults

def classify(outcomes):
    """PROTOCOLS.md rough classification over >= 50 polls; outcomes: 'ok' / 'bad' / 'none'."""
    n = len(outcomes)
    ok, bad, none = (outcomes.count(k) / n for k in ("ok", "bad", "none"))
    if ok >= 0.99:
        return "healthy"
    if 0.01 <= 1 - ok <= 0.10:
        return "intermittent"
    if none >= 0.99:
        return "no bytes"
    if ok < 0.01:
        return "bytes, all bad"
    return "unclassified"


def poll(rig, address, di=0x02010100):
    data = rig.transact(read_req(address, di))
    if not data:
        return "none"
    f = parse(data)
    ok = f is not None and f[0] == wire_addr(address) and f[1] == 0x91 and f[2][:4] == di.to_bytes(4, "little")
    return "ok" if ok else "bad"


AB_SITE = site_toml(
    [("m1", dlt(M1)), ("m2", dlt(M2))], [("c1", LOAD, 1), ("c2", LOAD, 2)],
    faults='[[faults]]\nid = "gw"\ntype = "ab_swapped"\nat = "gateway"\nenabled = false\n'
           '[[faults]]\nid = "at-m1"\ntype = "ab_swapped"\nat = "m1"\nenabled = false\n')


def test_ab_swapped_at_a_meter():
    rig = Rig(AB_SITE)
    assert poll(rig, M1) == "ok" and poll(rig, M2) == "ok"  # not without the fault
    rig.fault("at-m1", True)
    assert parse(rig.transact(read_req(M1, 0x02010100))) is None  # garbage or nothing
    assert poll(rig, M2) == "ok"  # only that meter
    # the same probe with the gateway's UART inverted: a frame with a good checksum
    rig.line(2400, invert=True)
    f = parse(rig.transact(read_req(M1, 0x02010100)))
    assert f is not None and f[0] == wire_addr(M1) and f[1] == 0x91
    assert poll(rig, M2) != "ok"  # ... and now the good meter is the one that fails


def test_ab_swapped_at_the_gateway_and_two_swaps_cancel():
    rig = Rig(AB_SITE)
    rig.fault("gw", True)
    outcomes = [poll(rig, a) for a in (M1, M2) for _ in range(3)]
    assert "ok" not in outcomes  # every probe: garbage or nothing
    rig.line(2400, invert=True)
    assert poll(rig, M1) == "ok" and poll(rig, M2) == "ok"  # inverted re-probe: proves the swap
    # swap at the gateway + swap at m1: m1 answers a plain UART, m2 does not
    rig.fault("at-m1", True)
    rig.line(2400, invert=False)
    f = parse(rig.transact(read_req(M1, 0x02010100)))
    assert f is not None and f[0] == wire_addr(M1) and f[1] == 0x91
    assert poll(rig, M2) != "ok"


def test_loose_contact_is_intermittent():
    text = site_toml([("m1", dlt(M1)), ("m2", dlt(M2))], [("c1", LOAD, 1), ("c2", LOAD, 2)],
                     faults='[[faults]]\ntype = "loose_contact"\nmeter = "m1"\ncorrupt_rate = 0.03\n'
                            'drop_rate = 0.02\n')
    rig = Rig(text, seed=11)
    n = 250
    outcomes = [poll(rig, M1) for _ in range(n)]
    errors = n - outcomes.count("ok")
    # expected 1 - 0.97 * 0.98 = 4.94 %: 12.4 of 250, sd 3.4
    assert 4 <= errors <= 22
    assert outcomes.count("none") >= 1 and outcomes.count("bad") >= 1  # both kinds show
    assert classify(outcomes) == "intermittent"
    st = rig.bus.stats["m1"]
    assert st.dropped == outcomes.count("none")
    # a damaged reply whose flipped bits all fall in the FE wake-up bytes still parses: harmless
    assert outcomes.count("bad") <= st.corrupted <= outcomes.count("bad") + 3
    # the meter next to it on the same bus stays healthy
    assert classify([poll(rig, M2) for _ in range(60)]) == "healthy"


def _search_dlt645(rig):
    """PROTOCOLS.md baud / parity search: 2400, 1200, 4800, 9600, 19200 at 8E1, plain and
    inverted, probe fn 13 to AAx6; the first setting that gives a valid 0x93 frame."""
    for baud in (2400, 1200, 4800, 9600, 19200):
        for invert in (False, True):
            rig.line(baud, "E", invert)
            f = parse(rig.transact(READ_ADDRESS))
            if f is not None and f[1] == 0x93:
                return baud, invert, f[2]
    return None


@pytest.mark.parametrize("actual", [1200, 4800, 9600])
def test_wrong_line_settings_dlt645_found_by_the_search(actual):
    text = site_toml([("m1", dlt(M1))], [("c1", LOAD, 1)],
                     faults='[[faults]]\ntype = "wrong_line_settings"\nmeter = "m1"\nbaud = %d\n' % actual)
    rig = Rig(text)
    outcomes = [poll(rig, M1) for _ in range(3)]
    assert "ok" not in outcomes  # at the expected setting: nothing or garbage
    assert _search_dlt645(rig) == (actual, False, wire_addr(M1))
    assert poll(rig, M1) == "ok"  # and it reads at the setting found


def test_wrong_line_settings_modbus_parity_found_by_the_search():
    text = site_toml([("mb", 'protocol = "modbus"\nmodel = "sdm120"\nunit_id = 1\n')], [("c1", LOAD, 1)],
                     buses=(("b", 2400, "N"),), faults='[[faults]]\ntype = "wrong_line_settings"\nmeter = "mb"\nparity = "E"\n')
    rig = Rig(text)
    assert not mb_valid(rig.transact(mb_req(1, 4, 0, 2)))
    found = None
    for baud, parity in itertools.product((9600, 2400), ("N", "E")):  # PROTOCOLS.md: Modbus search
        rig.line(baud, parity)
        if mb_valid(rig.transact(mb_req(1, 4, 0, 2))):
            found = (baud, parity)
            break
    assert found == (2400, "E")


def test_unpowered_meter_gives_no_bytes_and_does_not_count():
    text = site_toml([("m1", dlt(M1, more="[meters.energy]\nforward_kwh = 50.0\n")), ("m2", dlt(M2))],
                     [("c1", LOAD, 1), ("c2", LOAD, 2)],
                     faults='[[faults]]\nid = "dead"\ntype = "unpowered"\nmeter = "m1"\n')
    rig = Rig(text)
    assert rig.transact(read_req(M1, 0x02010100)) == b""
    assert rig.transact(frame(wire_addr(M1), 0x13)) == b""
    assert classify([poll(rig, M1) for _ in range(50)]) == "no bytes"
    assert poll(rig, M2) == "ok"  # the bus itself is fine
    # only m1 is alive to the wildcard probe... m2 answers it alone: clean
    assert parse(rig.transact(READ_ADDRESS)) == (wire_addr(M2), 0x93, wire_addr(M2))
    rig.advance(3600)
    rig.fault("dead", False)  # powered again: the hour without supply was not registered
    assert rig.value(M1, 0x00010000) == pytest.approx(50.0)
    rig.advance(3600)
    assert rig.value(M1, 0x00010000) == pytest.approx(52.2, abs=0.01)


def test_wrong_meter_shows_in_the_address_and_asset_read_from_the_position():
    work = ('[[work_order]]\nposition = 1\nasset = "202107079999"\n'
            '[[work_order]]\nposition = 2\nasset = "202107072530"\n')
    text = site_toml([("m1", dlt("202107072529")), ("m2", dlt("202107072530"))], work_order=work,
                     faults='[[faults]]\ntype = "wrong_meter"\nposition = 1\n')
    rig = Rig(text)
    found = {}
    for w in rig.site.work_order:
        installed = rig.site.meter_at(w.box, w.position)  # the meter physically there
        asset = bytes(reversed(rig.read(installed.address, 0x04000403))).rstrip(b"\x00").decode()
        address = bytes(reversed(rig.read(installed.address, 0x04000401))).hex()
        found[w.position] = (address, asset, w.asset)
    assert found[1] == ("202107072529", "202107072529", "202107079999")  # differs from the order
    assert found[2] == ("202107072530", "202107072530", "202107072530")
    assert rig.transact(read_req("202107079999", 0x04000401)) == b""  # the ordered meter is not there
    mismatched = {p for p, (a, s, w) in found.items() if s != w}
    assert mismatched == {f.params["position"] for f in rig.site.faults if f.type == "wrong_meter"}


def test_duplicate_address_replies_collide():
    text = site_toml([("m1", dlt(M1, more="response_delay_ms = 40")), ("m2", dlt(M1, more="response_delay_ms = 90")),
                      ("m3", dlt(M3))],
                     [("c1", LOAD, 1), ("c2", "kw = 1.1", 2), ("c3", LOAD, 3)],
                     faults='[[faults]]\ntype = "duplicate_address"\nmeters = ["m1", "m2"]\n')
    rig = Rig(text)
    for di in (0x02020100, 0x04000401):
        data = rig.transact(read_req(M1, di))
        assert data and parse(data) is None  # bytes, but no valid frame
    assert rig.bus.stats["m1"].collisions > 0 and rig.bus.stats["m2"].collisions > 0
    assert poll(rig, M3) == "ok"  # not without the fault: the other address reads clean
    data = rig.transact(READ_ADDRESS)  # the AA probe collides too
    assert data and parse(data) is None


def test_duplicate_modbus_ids_collide():
    mb = 'protocol = "modbus"\nmodel = "sdm120"\nunit_id = 1\n'
    text = site_toml([("a", mb), ("b", mb)], [("c1", LOAD, 1), ("c2", "kw = 0.7", 2)], buses=(("b", 2400, "N"),),
                     faults='[[faults]]\ntype = "duplicate_address"\nmeters = ["a", "b"]\n')
    rig = Rig(text)
    data = rig.transact(mb_req(1, 4, 0x0006, 2))  # the currents differ: the replies differ
    assert data and not mb_valid(data)


# ---------------------------------------------------------------------------
# Reversed (in/out lines swapped) vs an exporting PV customer


def reversed_rule(p, i, sw1, d_fwd, d_rev, exporting):
    """PROTOCOLS.md single-phase rule: under load (I >= gate), P < 0 or SW1 b4 or reverse energy
    rising while forward does not, over >= 60 s, unless the site exports."""
    if abs(i) < GATE or exporting:
        return False
    return p < 0 or bool(sw1 & 1 << 4) or (d_rev > 0 and d_fwd == 0)


def test_reversed_meter_versus_exporting_customer():
    text = site_toml(
        [("rev", dlt(M1)), ("pv", dlt(M2)), ("ok", dlt(M3))],
        [("c1", LOAD, 1), ("c2", "kw = -1.8\npf = 1.0\nexporting = true", 2), ("c3", LOAD, 3)],
        faults='[[faults]]\ntype = "reversed"\nmeter = "rev"\n')
    rig = Rig(text)
    e0 = {a: [rig.value(a, di) for di in (0x00000000, 0x00010000, 0x00020000)] for a in (M1, M2, M3)}
    rig.advance(120.0)  # >= 60 s
    rig.advance(3480.0)
    got = {}
    for a, cust in ((M1, "c1"), (M2, "c2"), (M3, "c3")):
        p, i = rig.value(a, 0x02030000), rig.value(a, 0x02020100)
        pf, sw1 = rig.value(a, 0x02060000), rig.status(a, 1)
        comb, fwd, rev = (rig.value(a, di) for di in (0x00000000, 0x00010000, 0x00020000))
        d_fwd, d_rev = fwd - e0[a][1], rev - e0[a][2]
        got[a] = dict(p=p, i=i, pf=pf, sw1=sw1, sw2=rig.status(a, 2), sw4=rig.status(a, 4), d_fwd=d_fwd, d_rev=d_rev,
                      d_comb=comb - e0[a][0],
                      fires=reversed_rule(p, i, sw1, d_fwd, d_rev, rig.site.customer(cust).exporting))
    r = got[M1]
    assert r["p"] == pytest.approx(-2.2, abs=1e-3) and r["i"] < 0 and r["pf"] == pytest.approx(-PF, abs=1e-3)
    assert r["sw1"] & 1 << 4 and r["sw2"] & 1 and r["sw4"] & 1 << 6
    assert r["d_fwd"] == 0 and r["d_rev"] == pytest.approx(2.2, abs=0.01)
    assert r["d_comb"] == pytest.approx(2.2, abs=0.01)  # word 0x05: the combined total still counts up
    assert r["fires"]
    # the exporting PV customer on a correctly wired meter: the meter shows the same signs...
    pv = got[M2]
    assert pv["p"] < 0 and pv["sw1"] & 1 << 4 and pv["d_rev"] == pytest.approx(1.8, abs=0.01) and pv["d_fwd"] == 0
    assert not pv["fires"]  # ...only the site's `exporting` flag tells them apart
    ok = got[M3]
    assert ok["p"] > 0 and ok["sw1"] == 0 and ok["sw2"] == 0 and ok["d_rev"] == 0 and not ok["fires"]


def test_reversed_three_phase_meter_every_element_plus_180():
    text = site_toml([("m", dlt(M1, "three-phase-4w"))], [("c1", "kw = 9.0\npf = %s" % PF, 1)],
                     faults='[[faults]]\ntype = "reversed"\nmeter = "m"\n')
    rig = Rig(text)
    for x in (1, 2, 3):
        th = theta(rig.value(M1, 0x02030000 | x << 8), rig.value(M1, 0x02040000 | x << 8))
        assert ang_diff(th, PHI + 180) == pytest.approx(0, abs=0.2)
    assert rig.status(M1, 1) & 1 << 4 and rig.status(M1, 2) & 0b111 == 0b111


# ---------------------------------------------------------------------------
# Line vs neutral current: phase/neutral swapped, shared neutral, earth leakage


def neutral_rule(i_l, i_n):
    """Commissioning threshold: |I_L - I_N| / max > 10 % at I > 1 A."""
    big = max(i_l, i_n)
    return big > 1.0 and abs(i_l - i_n) / big > 0.10


def _currents(rig, a):
    return abs(rig.value(a, 0x02020100)), rig.value(a, 0x02800001)


@pytest.mark.parametrize("fault", [
    'type = "phase_neutral_swapped"\nmeter = "m1"\nearth_fraction = 0.3',
    'type = "earth_leakage"\nmeter = "m1"\nfraction = 0.3',
])
def test_line_and_neutral_current_differ(fault):
    text = site_toml([("m1", dlt(M1)), ("m2", dlt(M2))], [("c1", LOAD, 1), ("c2", LOAD, 2)],
                     faults='[[faults]]\nid = "f"\n%s\n' % fault)
    rig = Rig(text)
    faulty = [rig.value(M1, di) for di in (0x02010100, 0x02030000, 0x02060000)]
    healthy = [rig.value(M2, di) for di in (0x02010100, 0x02030000, 0x02060000)]
    assert faulty == pytest.approx(healthy, abs=1e-3)  # U, P, PF cannot show it
    i_l, i_n = _currents(rig, M1)
    assert neutral_rule(i_l, i_n)
    assert max(i_l, i_n) == pytest.approx(2200 / (UN * PF), rel=1e-3)
    assert abs(i_l - i_n) / max(i_l, i_n) == pytest.approx(0.3, abs=1e-3)
    assert rig.status(M1, 1) & 1 << 4 == 0  # not a direction problem
    assert not neutral_rule(*_currents(rig, M2))  # the healthy meter: I_L = I_N
    # switched off at run time, the evidence goes away
    rig.fault("f", False)
    assert not neutral_rule(*_currents(rig, M1))


def test_phase_neutral_swap_without_an_earth_path_is_invisible():
    text = site_toml([("m1", dlt(M1))], [("c1", LOAD, 1)],
                     faults='[[faults]]\ntype = "phase_neutral_swapped"\nmeter = "m1"\nearth_fraction = 0.0\n')
    rig = Rig(text)
    assert not neutral_rule(*_currents(rig, M1))
    assert rig.value(M1, 0x02030000) == pytest.approx(2.2, abs=1e-3)


def test_shared_neutral():
    text = site_toml([("m1", dlt(M1)), ("m2", dlt(M2)), ("m3", dlt(M3))],
                     [("c1", "kw = 3.0\npf = 1.0", 1), ("c2", "kw = 1.0\npf = 1.0", 2), ("c3", LOAD, 3)],
                     faults='[[faults]]\ntype = "shared_neutral"\nmeters = ["m1", "m2"]\n')
    rig = Rig(text)
    i1, i2 = 3000 / UN, 1000 / UN
    (l1, n1), (l2, n2) = _currents(rig, M1), _currents(rig, M2)
    assert (l1, l2) == pytest.approx((i1, i2), abs=1e-3)  # each meter's own phase current
    assert n1 == pytest.approx((i1 + i2) / 2, abs=1e-3) and n2 == pytest.approx((i1 + i2) / 2, abs=1e-3)
    assert neutral_rule(l1, n1) and neutral_rule(l2, n2)
    assert l1 + l2 == pytest.approx(n1 + n2, abs=2e-3)  # Kirchhoff over the group
    assert rig.value(M1, 0x02030000) == pytest.approx(3.0, abs=1e-3)
    # the dual-channel meter whose neutral carries more meters on it: over-registers
    assert rig.value(M2, 0x02030000) > 1.5
    assert not neutral_rule(*_currents(rig, M3))


# ---------------------------------------------------------------------------
# Three-phase four-wire wiring: the angle rule

ANG = {"a": 0.0, "b": -120.0, "c": 120.0}
LAGGING = {"a": "b", "b": "c", "c": "a"}  # the phase that lags a given one by 120 degrees


def rule_theta(volt, sign, cur):
    """PROTOCOLS.md: theta = phi; +120 for the lagging phase's current, +240 for the leading
    one's, +180 when reversed."""
    shift = 0.0 if cur == volt else (120.0 if cur == LAGGING[volt] else 240.0)
    return (PHI + shift + (180.0 if sign < 0 else 0.0)) % 360.0


A3 = cmath.rect(1, math.radians(120))


def negative_sequence(x):
    pos = abs(x[0] + A3 * x[1] + A3 * A3 * x[2])
    neg = abs(x[0] + A3 * A3 * x[1] + A3 * x[2])
    return neg > pos


def _four_wire_cases():
    out = []
    all_ = itertools.product(itertools.permutations("abc"), itertools.permutations("abc"),
                             itertools.product((1, -1), repeat=3))
    for k, (v, c, s) in enumerate(all_):
        if v == tuple("abc") and c == tuple("abc") and s == (1, 1, 1):
            continue
        if k % 23 == 5:
            out.append((v, c, s))
    out += [(tuple("abc"), tuple("abc"), (-1, 1, 1)), (tuple("abc"), tuple("bac"), (1, 1, 1)),
            (tuple("acb"), tuple("abc"), (1, 1, 1))]
    return out


def _terms(c, s):
    return ["%sI%s" % ("-" if sg < 0 else "", ph) for ph, sg in zip(c, s)]


@pytest.mark.parametrize("volts,curs,signs", _four_wire_cases(),
                         ids=lambda x: "".join(map(str, x)) if isinstance(x, tuple) else str(x))
def test_four_wire_miswiring_follows_the_angle_rule(volts, curs, signs):
    text = site_toml([("m", dlt(M1, "three-phase-4w"))], [("c1", "kw = 9.0\npf = %s" % PF, 1)],
                     faults='[[faults]]\ntype = "wiring"\nmeter = "m"\nvoltages = %s\ncurrents = %s\n'
                            % (list(volts), _terms(curs, signs)))
    rig = Rig(text)
    p_block, q_block = rig.read(M1, 0x0203FF00), rig.read(M1, 0x0204FF00)
    sw2, sw7 = rig.status(M1, 2), rig.status(M1, 7)
    i_line = 3000 / (UN * PF)
    for x in (1, 2, 3):
        p = bcd(p_block[3 * x:3 * x + 3], 4, True)
        q = bcd(q_block[3 * x:3 * x + 3], 4, True)
        want = rule_theta(volts[x - 1], signs[x - 1], curs[x - 1])
        assert ang_diff(theta(p, q), want) == pytest.approx(0, abs=0.2), "element %d" % x
        # reversed phase current: P_x < 0 <=> SW2 bit x <=> SW4..6 b6
        assert bool(sw2 & 1 << (x - 1)) == (p < 0)
        assert bool(rig.status(M1, 3 + x) & 1 << 6) == (p < 0)
        assert abs(rig.value(M1, 0x02020000 | x << 8)) == pytest.approx(i_line, abs=2e-3)
    # SW7: reverse phase sequence of the element voltages / currents, from phasors written here
    u = [cmath.rect(UN, math.radians(ANG[v])) for v in volts]
    i = [sg * cmath.rect(i_line, math.radians(ANG[c] - PHI)) for c, sg in zip(curs, signs)]
    assert bool(sw7 & 1) == negative_sequence(u)
    assert bool(sw7 & 2) == negative_sequence(i)
    # the neutral current the meter reports is the vector sum of its element currents
    assert rig.value(M1, 0x02800001) == pytest.approx(abs(sum(i)), abs=5e-3)


def test_four_wire_one_reversed_current_registers_a_third():
    text = site_toml([("m", dlt(M1, "three-phase-4w"))], [("c1", "kw = 9.0\npf = %s" % PF, 1)],
                     faults='[[faults]]\ntype = "wiring"\nmeter = "m"\ncurrents = ["-Ia", "Ib", "Ic"]\n')
    rig = Rig(text)
    i_avg = 3000 / (UN * PF)
    assert rig.value(M1, 0x02030000) == pytest.approx(9.0 / 3, abs=1e-3)
    assert rig.value(M1, 0x02800001) == pytest.approx(2 * i_avg, abs=5e-3)
    assert rig.value(M1, 0x02020100) < 0 and rig.status(M1, 4) & 1 << 6
    assert rig.status(M1, 2) == 0b1_0001  # active (b0) and reactive (b4) reverse on A: theta = phi + 180


# ---------------------------------------------------------------------------
# Three-phase three-wire wiring: angles from first principles

def _three_wire_expected(volts, terms):
    """theta of elements 1 (U12, first current) and 3 (U32, second current) from phasors:
    grid Va = Un/0, Vb = Un/-120, Vc = Un/120; balanced load lagging by phi."""
    v = {p: cmath.rect(UN, math.radians(ANG[p])) for p in "abc"}
    i = {p: cmath.rect(1.0, math.radians(ANG[p] - PHI)) for p in "ac"}
    u1, u3 = v[volts[0]] - v[volts[1]], v[volts[2]] - v[volts[1]]
    i1, i3 = (sg * i[ph] for sg, ph in terms)
    th = lambda u, c: math.degrees(cmath.phase(u) - cmath.phase(c)) % 360  # noqa: E731
    return th(u1, i1), th(u3, i3), u1, u3, i1, i3


def _three_wire_cases():
    arrangements = [((s1, p1), (s2, p2)) for p1, p2 in (("a", "c"), ("c", "a")) for s1 in (1, -1) for s2 in (1, -1)]
    all_ = list(itertools.product(itertools.permutations("abc"), arrangements))
    assert len(all_) == 48
    sample = [all_[k] for k in range(0, 48, 5)]  # 10 of the 48, the correct one (index 0) among them
    return sample + [(tuple("cba"), ((-1, "a"), (-1, "c"))), (tuple("abc"), ((1, "c"), (1, "a")))]


@pytest.mark.parametrize("volts,terms", _three_wire_cases(), ids=str)
def test_three_wire_wiring_angles(volts, terms):
    correct = volts == tuple("abc") and terms == ((1, "a"), (1, "c"))
    faults = "" if correct else '[[faults]]\ntype = "wiring"\nmeter = "m"\nvoltages = %s\ncurrents = %s\n' % (
        list(volts), ["%sI%s" % ("-" if s < 0 else "", p) for s, p in terms])
    rig = Rig(site_toml([("m", dlt(M1, "three-phase-3w"))], [("c1", "kw = 9.0\npf = %s" % PF, 1)], faults=faults))
    th1 = theta(rig.value(M1, 0x02030100), rig.value(M1, 0x02040100))
    th3 = theta(rig.value(M1, 0x02030300), rig.value(M1, 0x02040300))
    w1, w3, u1, u3, i1, i3 = _three_wire_expected(volts, terms)
    if correct:  # PROTOCOLS.md: theta1 = phi + 30, theta3 = phi - 30 (and the phasors here agree)
        assert ang_diff(w1, PHI + 30) == pytest.approx(0, abs=1e-9)
        assert ang_diff(w3, PHI - 30) == pytest.approx(0, abs=1e-9)
    assert ang_diff(th1, w1) == pytest.approx(0, abs=0.2)
    assert ang_diff(th3, w3) == pytest.approx(0, abs=0.2)
    assert rig.value(M1, 0x02010200) == 0 and rig.value(M1, 0x02020200) == 0  # slot B empty
    sw7 = rig.status(M1, 7)
    # correct: U32 leads U12 by 60 degrees, Ic leads Ia by 120 degrees
    leads = lambda x, y: 0 < math.degrees(cmath.phase(x / y)) < 180  # noqa: E731
    assert bool(sw7 & 1) == (not leads(u3, u1))
    assert bool(sw7 & 2) == (not leads(i3, i1))
    if correct:
        assert rig.value(M1, 0x02030000) == pytest.approx(9.0, abs=1e-3) and sw7 == 0


# ---------------------------------------------------------------------------
# Lost phase, voltage deviation

LOST_SITE = site_toml(
    [("m4", dlt(M1, "three-phase-4w")), ("sb", dlt(M2, more='phase = "b"'))],
    [("c1", "kw = 9.0\npf = %s" % PF, 1), ("c2", LOAD, 2)],
    faults='[[faults]]\nid = "feeder"\ntype = "lost_phase"\nphase = "b"\nenabled = false\n'
           '[[faults]]\nid = "term"\ntype = "lost_phase"\nphase = "b"\nmeter = "m4"\nmode = "terminal"\n'
           'enabled = false\n')


def test_lost_phase_supply_is_a_phase_break():
    rig = Rig(LOST_SITE)
    assert rig.status(M1, 5) == 0 and poll(rig, M2) == "ok"  # not without the fault
    rig.fault("feeder", True)
    u, i = rig.value(M1, 0x02010200), rig.value(M1, 0x02020200)
    assert u < 0.6 * UN and abs(i) < GATE  # U < 0.6 Un without current: phase break
    sw5 = rig.status(M1, 5)
    assert sw5 & 1 << 7 and not sw5 & 1
    assert rig.status(M1, 4) == 0 and rig.status(M1, 6) == 0  # A and C are fine
    assert rig.transact(read_req(M2, 0x02010100)) == b""  # the single-phase meter on b is dead


def test_lost_phase_terminal_is_loss_of_voltage_with_current():
    rig = Rig(LOST_SITE)
    rig.fault("term", True)
    u, i = rig.value(M1, 0x02010200), rig.value(M1, 0x02020200)
    assert u < 0.78 * UN and i >= GATE  # < 0.78 Un with current: loss of voltage
    sw5 = rig.status(M1, 5)
    assert sw5 & 1 and not sw5 & 1 << 7
    assert rig.value(M1, 0x02030000) == pytest.approx(6.0, abs=1e-3)  # under-registers that phase
    assert poll(rig, M2) == "ok"  # the supply is fine for everyone else


@pytest.mark.parametrize("factor", [0.70, 0.82, 0.90, 1.10, 1.20])
def test_voltage_deviation_flags(factor):
    text = site_toml([("m1", dlt(M1))], [("c1", LOAD, 1)],
                     faults='[[faults]]\ntype = "voltage_deviation"\nfactor = %s\n' % factor)
    rig = Rig(text)
    u, i, p = rig.value(M1, 0x02010100), rig.value(M1, 0x02020100), rig.value(M1, 0x02030000)
    assert u == pytest.approx(UN * factor, abs=0.1)
    assert p == pytest.approx(2.2 * factor ** 2, abs=1e-3)  # constant impedance
    sw4 = rig.status(M1, 4)
    # PROTOCOLS.md supply rule: 0.85 Un <= U <= 1.15 Un; below 0.78 Un (with current) loss of voltage
    assert bool(sw4 & 1 << 1) == (u < 0.85 * UN)
    assert bool(sw4 & 1 << 2) == (u > 1.15 * UN)
    assert bool(sw4 & 1) == (u < 0.78 * UN and i >= GATE)
    assert sw4 & ~0b111 == 0


# ---------------------------------------------------------------------------
# Breaker mix-up and switching at run time


def test_breaker_mixup_opening_a_breaker_drops_another_meter():
    work = ('[[work_order]]\nposition = 1\nasset = "%s"\nbreaker = "QF1"\n'
            '[[work_order]]\nposition = 2\nasset = "%s"\nbreaker = "QF2"\n' % (M1, M2))
    customers = [("c1", "kw = 2.0\npf = 1.0", 1), ("c2", "kw = 1.0\npf = 1.0", 2), ("c3", "kw = 0.5\npf = 1.0", 1)]
    text = site_toml([("m1", dlt(M1)), ("m2", dlt(M2))], customers, work_order=work,
                     faults='[[faults]]\nid = "mix"\ntype = "breaker_mixup"\nbreaker = "QF1"\nmeter = "m2"\n'
                            'enabled = false\n')
    rig = Rig(text)

    def which_meter_drops(breaker):
        before = {a: abs(rig.value(a, 0x02020100)) for a in (M1, M2)}
        rig.breaker(breaker, False)
        after = {a: abs(rig.value(a, 0x02020100)) for a in (M1, M2)}
        rig.breaker(breaker, True)
        return {a for a in (M1, M2) if before[a] - after[a] > 1.0}

    # correct installation: each breaker drops the meter the work order says
    assert which_meter_drops("QF1") == {M1} and which_meter_drops("QF2") == {M2}
    rig.fault("mix", True)
    assert which_meter_drops("QF1") == {M2}  # the work order puts QF1 on position 1
    assert which_meter_drops("QF2") == {M2}
    assert abs(rig.value(M2, 0x02020100)) == pytest.approx(3000 / UN, abs=2e-3)  # its own + the moved load


def test_switching_faults_at_run_time_changes_the_registers():
    text = site_toml([("m1", dlt(M1))], [("c1", LOAD, 1)],
                     faults='[[faults]]\nid = "rev"\ntype = "reversed"\nmeter = "m1"\nenabled = false\n'
                            '[[faults]]\nid = "dead"\ntype = "unpowered"\nmeter = "m1"\nenabled = false\n')
    rig = Rig(text)
    assert rig.value(M1, 0x02030000) == pytest.approx(2.2, abs=1e-3) and rig.status(M1, 1) == 0
    rig.fault("rev", True)
    assert rig.value(M1, 0x02030000) == pytest.approx(-2.2, abs=1e-3) and rig.status(M1, 1) & 1 << 4
    rig.advance(1800)
    rig.fault("rev", False)
    rig.advance(1800)
    # half an hour reversed, half an hour right: both registers got their half
    assert rig.value(M1, 0x00020000) == pytest.approx(1.1, abs=0.01)
    assert rig.value(M1, 0x00010000) == pytest.approx(1.1, abs=0.01)
    rig.fault("dead", True)
    assert rig.transact(read_req(M1, 0x02010100)) == b""
    rig.fault("dead", False)
    assert poll(rig, M1) == "ok"
