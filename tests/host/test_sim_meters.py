"""The simulated meters as a gateway sees them: bytes on the simulated RS-485 bus.

Requests are built and replies parsed by hand from /work/shared/PROTOCOLS.md
(+0x33, checksum, BCD low byte first with the sign in the top bit, CRC-16/MODBUS,
float32 big-endian); nothing here imports metergate.codecs / gateway.protocols,
which the meter models themselves use, so this is an independent check of the
frames. The reference values are electrical.measure(...) (tested on its own in
test_sim_electrical.py). The bus runs in virtual time (no threads): `Rig.now` is
the meters' wall clock, `Rig.t` the bus timeline.
"""

import datetime
import math
import struct

import pytest

from metergate.sim import electrical

from by_hand import (BusRig, bcd, frame, mb_check, mb_req, parse, read_req, read_req_1997, site_toml,
                     to_bcd, wire_addr)

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: a whole second, so clock reads are exact
PF = 0.9
PHI = math.degrees(math.acos(PF))


# PROTOCOLS.md DI table: DI3 DI2 -> (bytes, decimals, signed). Reactive power is read as
# signed too (a leading load has Q < 0; the table does not say it explicitly).
FMT = {
    0x0201: (2, 1, False),  # voltage XXX.X V
    0x0202: (3, 3, True),  # current XXX.XXX A
    0x0203: (3, 4, True),  # active power XX.XXXX kW
    0x0204: (3, 4, True),  # reactive power XX.XXXX kvar
    0x0205: (3, 4, False),  # apparent power XX.XXXX kVA
    0x0206: (2, 3, True),  # power factor X.XXX
    0x0207: (2, 1, False),  # phase angle XXX.X deg
    0x0208: (2, 2, False),  # voltage distortion XX.XX %
    0x0209: (2, 2, False),  # current distortion XX.XX %
}
ENERGY = (4, 2)  # XXXXXX.XX kWh


class ErrReply(Exception):
    def __init__(self, control, err):
        super().__init__("control %02X ERR %02X" % (control, err))
        self.control, self.err = control, err


def dlt(kind="single-phase", address="202107072529", more=""):
    return 'protocol = "dlt645-2007"\nkind = "%s"\naddress = "%s"\n%s' % (kind, address, more)


class Rig(BusRig):
    """One bus of a site: gateway side in virtual time."""

    def __init__(self, text, bus=None, seed=1, now=T0):
        BusRig.__init__(self, text, bus, seed, now)

    def model(self, mid):
        return next(m for m in self.models if m.meter.id == mid)

    def truth(self, mid):
        return electrical.measure(self.site, self.state, mid, self.now)

    # DL/T 645-2007 read: item data after the DI, or ErrReply
    def read(self, addr, di):
        f = parse(self.transact(read_req(addr, di)))
        assert f is not None, "no valid frame for %08X" % di
        a, c, data = f
        assert a == wire_addr(addr)
        if c == 0xD1:
            assert len(data) == 1
            raise ErrReply(c, data[0])
        assert c == 0x91, "control %02X" % c
        assert data[:4] == di.to_bytes(4, "little"), "DI not echoed"
        return data[4:]

    def value(self, addr, di):
        size, dec, signed = FMT[di >> 16]
        data = self.read(addr, di)
        assert len(data) == size
        return bcd(data, dec, signed)

    def energy(self, addr, di):
        data = self.read(addr, di)
        assert len(data) == 4
        return bcd(data, 2, signed=(di >> 16) == 0x0000)

    def status(self, addr, n):
        data = self.read(addr, 0x04000500 + n)
        assert len(data) == 2
        return data[0] | data[1] << 8

    def modbus(self, unit, fn, reg, count):
        return self.transact(mb_req(unit, fn, reg, count))


def floats(data: bytes):
    return struct.unpack(">%df" % (len(data) // 4), data)


def ang_diff(a, b):
    return (a - b + 180.0) % 360.0 - 180.0


ADDR = "202107072529"
LOAD_1P = ("c1", "kw = 2.2\npf = %s" % PF, 1)


# ---------------------------------------------------------------------------
# Worked frames of PROTOCOLS.md


def test_worked_frame_vectors():
    assert read_req(ADDR, 0x00000000) == bytes.fromhex("FEFEFEFE 68 292507072120 68 11 04 33333333 4E 16")
    assert frame(b"\xaa" * 6, 0x13, preamble=0) == bytes.fromhex("68 AAAAAAAAAAAA 68 13 00 DF 16")
    assert bytes((x - 0x33) & 0xFF for x in bytes.fromhex("A94A3633")) == bytes.fromhex("76170300")
    assert bcd(bytes.fromhex("76170300"), 2) == pytest.approx(317.76)
    assert read_req_1997("000000000003", 0xB611)[4:] == bytes.fromhex("68 030000000000 68 01 02 44 E9 03 16")


def test_meter_answers_the_worked_frames():
    # forward 317.76 kWh, nothing reverse: the combined total is the worked example's value
    rig = Rig(site_toml([("m", dlt(more="[meters.energy]\nforward_kwh = 317.76\n"))], [LOAD_1P]))
    reply = rig.transact(bytes.fromhex("FEFEFEFE 68 292507072120 68 11 04 33333333 4E 16"))
    body = bytes.fromhex("68 292507072120 68 91 08 33333333 A94A3633")
    assert reply == b"\xfe" * 4 + body + bytes([sum(body) & 0xFF, 0x16])
    # the single meter on the bus answers the wildcard address read with its address
    reply = rig.transact(bytes.fromhex("68 AAAAAAAAAAAA 68 13 00 DF 16"))
    assert parse(reply) == (wire_addr(ADDR), 0x93, wire_addr(ADDR))
    # abbreviated addressing: AA in the high bytes, the meter answers with its real address
    f = parse(rig.transact(frame(wire_addr(ADDR)[:2] + b"\xaa" * 4, 0x11, (0x02010100).to_bytes(4, "little"))))
    assert f[0] == wire_addr(ADDR) and f[1] == 0x91
    # another address: silence
    assert rig.transact(read_req("202107072530", 0x02010100)) == b""


# ---------------------------------------------------------------------------
# Every 2007 DI of the table, three kinds of meter

KINDS = {
    "single-phase": ("kw = 2.2\npf = %s" % PF),
    "three-phase-4w": ("kw = 9.0\npf = %s\nphase_weights = [1.0, 2.0, 3.0]" % PF),
    "three-phase-3w": ("kw = 9.0\npf = %s" % PF),
}


def per_slot_dis(d2):
    return [(0x02000000 | d2 << 16 | k << 8) for k in (1, 2, 3)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_instantaneous_dis_match_the_measurement(kind):
    text = site_toml([("m", dlt(kind, more="[meters.options]\nvoltage_thd_pct = 3.5\ncurrent_thd_pct = 12.25\n"))],
                     [("c1", KINDS[kind], 1)])
    rig = Rig(text)
    rig.state.frequency = 49.87
    m = rig.truth("m")
    assert m.powered and m.P > 1.0
    slots = (1,) if kind == "single-phase" else (1, 2, 3)

    def expect(d2, k):
        r = m.phases[k - 1]
        if kind == "three-phase-3w" and k == 2:
            return 0.0  # slot B of a three-wire meter is 0 (PROTOCOLS.md), PF included
        return {0x01: r.U, 0x02: math.copysign(r.I, r.P or 1.0), 0x03: r.P, 0x04: r.Q, 0x05: r.S, 0x06: r.PF,
                0x07: r.angle_deg, 0x08: 3.5 if r.U else 0.0, 0x09: 12.25 if r.I else 0.0}[d2]

    for d2 in range(0x01, 0x0A):
        for k, di in enumerate(per_slot_dis(d2), 1):
            if k not in slots:
                with pytest.raises(ErrReply) as exc:
                    rig.value(ADDR, di)
                assert exc.value.control == 0xD1 and exc.value.err == 0x02  # ERR b1: no such data
                continue
            got = rig.value(ADDR, di)
            res = 10 ** -FMT[0x0200 | d2][1]
            if d2 == 0x07:
                assert abs(ang_diff(got, expect(d2, k))) <= res, hex(di)
            else:
                assert got == pytest.approx(expect(d2, k), abs=res), hex(di)
            if kind == "three-phase-3w" and k == 2:
                assert got == 0  # slot B of a three-wire meter is empty
    # totals (DI1 = 00) of P, Q, S, PF
    for d2, want in ((0x03, m.P), (0x04, m.Q), (0x05, m.S), (0x06, m.PF)):
        assert rig.value(ADDR, 0x02000000 | d2 << 16) == pytest.approx(want, abs=10 ** -FMT[0x0200 | d2][1])
    # signs: a lagging importing load, P > 0 and Q > 0 on the total
    assert rig.value(ADDR, 0x02030000) > 0 and rig.value(ADDR, 0x02040000) > 0
    # frequency XX.XX Hz
    data = rig.read(ADDR, 0x02800002)
    assert len(data) == 2 and bcd(data, 2) == pytest.approx(49.87)
    # neutral current XXX.XXX A: none on a three-wire meter
    if kind == "three-phase-3w":
        with pytest.raises(ErrReply) as exc:
            rig.read(ADDR, 0x02800001)
        assert exc.value.err == 0x02
    else:
        data = rig.read(ADDR, 0x02800001)
        assert len(data) == 3 and bcd(data, 3) == pytest.approx(m.I_N, abs=0.001)
        if kind == "single-phase":
            assert bcd(data, 3) == pytest.approx(m.I, abs=0.001)  # healthy: I_N = I_L
    # three-wire: slot A is Uab (line voltage), angles phi +/- 30 (PROTOCOLS.md)
    if kind == "three-phase-3w":
        assert rig.value(ADDR, 0x02010100) == pytest.approx(220 * math.sqrt(3), abs=0.1)
        assert ang_diff(rig.value(ADDR, 0x02070100), PHI + 30) == pytest.approx(0, abs=0.1)
        assert ang_diff(rig.value(ADDR, 0x02070300), PHI - 30) == pytest.approx(0, abs=0.1)
    else:
        assert rig.value(ADDR, 0x02070100) == pytest.approx(PHI, abs=0.1)


def test_single_phase_refuses_unknown_dis_and_nothing_else_answers():
    rig = Rig(site_toml([("m", dlt())], [LOAD_1P]))
    for di in (0x12345678, 0x02800003, 0x0201FE00, 0x00010001):  # unknown, unknown, bad slot, billing day 1
        with pytest.raises(ErrReply) as exc:
            rig.read(ADDR, di)
        assert (exc.value.control, exc.value.err) == (0xD1, 0x02)


def test_identity_items():
    rig = Rig(site_toml([("m", dlt(more='asset = "ZJ-2021-000123"'))], [LOAD_1P]))
    assert rig.read(ADDR, 0x04000401) == wire_addr(ADDR)  # 12 BCD digits, low byte first
    assert rig.read(ADDR, 0x04000402) == wire_addr(ADDR)
    data = rig.read(ADDR, 0x04000403)
    assert len(data) == 32  # 32 ASCII, low byte first like every field (PROTOCOLS: unverified order)
    assert bytes(reversed(data)).rstrip(b"\x00").decode() == "ZJ-2021-000123"


def test_options_dis_narrows_support():
    rig = Rig(site_toml([("m", dlt(more='[meters.options]\ndis = ["02010100", "00010000"]\n'))], [LOAD_1P]))
    assert rig.value(ADDR, 0x02010100) == pytest.approx(220.0, abs=0.1)
    assert rig.energy(ADDR, 0x00010000) == 0.0
    for di in (0x02020100, 0x00000000, 0x04000501, 0x0201FF00):
        with pytest.raises(ErrReply) as exc:
            rig.read(ADDR, di)
        assert exc.value.err == 0x02


BLOCKS = [(0x0201FF00, 0x0201, False), (0x0202FF00, 0x0202, False), (0x0203FF00, 0x0203, True)]


def test_blocks_agree_with_single_reads_and_can_be_refused():
    text = site_toml([("m", dlt("three-phase-4w")), ("n", dlt("three-phase-4w", "202107072530",
                                                                "[meters.options]\nblock_read = false\n"))],
                     [("c1", KINDS["three-phase-4w"], 1), ("c2", KINDS["three-phase-4w"], 2)])
    rig = Rig(text)
    for block, d32, with_total in BLOCKS:
        size, dec, signed = FMT[d32]
        data = rig.read(ADDR, block)
        members = ([0] if with_total else []) + [1, 2, 3]
        assert len(data) == size * len(members)
        for j, k in enumerate(members):
            single = rig.value(ADDR, d32 << 16 | k << 8)
            assert bcd(data[j * size:(j + 1) * size], dec, signed) == single
        with pytest.raises(ErrReply) as exc:
            rig.read("202107072530", block)
        assert exc.value.err == 0x02
        rig.value("202107072530", d32 << 16 | 0x0100)  # its single reads work
    words = rig.read(ADDR, 0x040005FF)
    assert len(words) == 14
    for n in range(1, 8):
        assert words[2 * n - 2:2 * n] == rig.read(ADDR, 0x04000500 + n)
    with pytest.raises(ErrReply):
        rig.read("202107072530", 0x040005FF)
    # energy: DI1 = FF is the block of total + tariffs 1..4 (single-tariff: all in tariff 1)
    data = rig.read(ADDR, 0x0001FF00)
    assert len(data) == 20
    total = rig.energy(ADDR, 0x00010000)
    assert [bcd(data[i:i + 4], 2) for i in range(0, 20, 4)] == [total, total, 0, 0, 0]


# ---------------------------------------------------------------------------
# Energy


def test_combined_energy_follows_the_combination_word():
    def meter(n, word):
        return ("m%d" % n, dlt(address="%012d" % n, more="combination_word = %d\n[meters.energy]\n"
                                                            "forward_kwh = 100.25\nreverse_kwh = 40.5\n" % word))
    words = {1: 0x05, 2: 0x01, 3: 0x09, 4: 0x06}  # fwd+rev, fwd, fwd-rev, -fwd+rev
    rig = Rig(site_toml([meter(n, w) for n, w in words.items()]))
    want = {1: 140.75, 2: 100.25, 3: 59.75, 4: -59.75}
    for n, w in words.items():
        addr = "%012d" % n
        assert rig.read(addr, 0x04000601) == bytes([w])
        assert rig.energy(addr, 0x00000000) == pytest.approx(want[n])
        assert rig.energy(addr, 0x00010000) == pytest.approx(100.25)
        assert rig.energy(addr, 0x00020000) == pytest.approx(40.5)
    raw = rig.read("000000000004", 0x00000000)
    assert raw[3] & 0x80 and raw == to_bcd(5975, 4)[:3] + bytes([to_bcd(5975, 4)[3] | 0x80])  # sign bit


def test_energy_integrates_power_over_virtual_time():
    text = site_toml([("m", dlt(more="[meters.energy]\nforward_kwh = 10.0\n")),
                      ("r", dlt(address="000000000002", more="[meters.energy]\nforward_kwh = 10.0\n"))],
                     [LOAD_1P, ("c2", "kw = 1.5\npf = 0.95", 2)],
                     faults='[[faults]]\ntype = "reversed"\nmeter = "r"\n')
    rig = Rig(text)
    e0 = {(a, di): rig.energy(a, di) for a in (ADDR, "000000000002") for di in (0, 0x00010000, 0x00020000)}
    p = rig.value(ADDR, 0x02030000)
    pr = rig.value("000000000002", 0x02030000)
    assert p == pytest.approx(2.2, abs=1e-4) and pr == pytest.approx(-1.5, abs=1e-4)
    rig.advance(3600.0)
    assert rig.energy(ADDR, 0x00010000) - e0[ADDR, 0x00010000] == pytest.approx(2.2, abs=0.01)
    assert rig.energy(ADDR, 0x00020000) == e0[ADDR, 0x00020000]
    # the reversed meter: reverse energy grows, forward does not, and with the default word
    # 0x05 the combined total still counts up (PROTOCOLS.md gotcha)
    r = "000000000002"
    assert rig.energy(r, 0x00010000) == e0[r, 0x00010000]
    assert rig.energy(r, 0x00020000) - e0[r, 0x00020000] == pytest.approx(1.5, abs=0.01)
    assert rig.energy(r, 0x00000000) - e0[r, 0] == pytest.approx(1.5, abs=0.01)


# ---------------------------------------------------------------------------
# Status words


def test_status_words_of_a_healthy_meter_are_clear_and_options_set_battery_bits():
    text = site_toml([("m", dlt("three-phase-4w")),
                      ("n", dlt(address="000000000002", more="[meters.options]\nclock_battery_low = true\n"
                                                           "reading_battery_low = true\n"))],
                     [("c1", KINDS["three-phase-4w"], 1), ("c2", "kw = 2.2\npf = 0.9", 2)])
    rig = Rig(text)
    assert [rig.status(ADDR, n) for n in range(1, 8)] == [0] * 7
    sw1 = rig.status("000000000002", 1)
    assert sw1 == (1 << 2) | (1 << 3)


def test_status_words_leading_load_and_over_current():
    # leading load: total reactive reverse (SW1 b5), phase A reactive reverse (SW2 b4), P fine
    text = site_toml([("m", dlt()),
                      ("n", dlt(address="000000000002", more="ib = 5.0\nimax = 10.0\n"))],
                     [("c1", 'kw = 1.0\npf = 0.8\npf_kind = "leading"', 1), ("c2", "kw = 3.0\npf = 1.0", 2)])
    rig = Rig(text)
    assert rig.status(ADDR, 1) == 1 << 5
    assert rig.status(ADDR, 2) == 1 << 4
    assert rig.value(ADDR, 0x02040000) < 0 < rig.value(ADDR, 0x02030000)
    # 3 kW at 220 V = 13.6 A > Imax 10 A: SW4 b4 over-current
    assert rig.value("000000000002", 0x02020100) > 10.0
    assert rig.status("000000000002", 4) == 1 << 4


# ---------------------------------------------------------------------------
# Clock


def _bcd_date_time(rig, addr):
    d = rig.read(addr, 0x04000101)
    t = rig.read(addr, 0x04000102)
    assert len(d) == 4 and len(t) == 3
    ww, dd, mm, yy = (int(bcd(d[i:i + 1])) for i in range(4))  # low byte first: WW DD MM YY
    ss, mi, hh = (int(bcd(t[i:i + 1])) for i in range(3))
    return (2000 + yy, mm, dd, hh, mi, ss), ww


CST = datetime.timezone(datetime.timedelta(hours=8))  # meters keep Beijing time, whatever the host's zone


def _local(ts):
    dt = datetime.datetime.fromtimestamp(ts, tz=CST)
    return (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second), dt.isoweekday() % 7  # Sunday = 0


def test_date_time_and_broadcast_time_sync():
    text = site_toml([("m", dlt()), ("n", dlt(address="000000000002",
                                              more="[meters.options]\nclock_offset_s = -93784.0\n"))])
    rig = Rig(text)
    assert _bcd_date_time(rig, ADDR) == _local(T0)
    assert _bcd_date_time(rig, "000000000002") == _local(T0 - 93784)  # 1 day 2 h 3 min 4 s behind
    # 2023-11-19 is a Sunday: WW must be 0
    sunday = datetime.datetime(2023, 11, 19, 12, 0, 0, tzinfo=CST).timestamp()
    rig.now = sunday
    assert _bcd_date_time(rig, ADDR) == (_local(sunday)[0], 0)
    # broadcast time sync: fn 08 to 99x6, data YYMMDDhhmmss low byte first; nobody answers
    rig.now = T0 + 7200
    (y, mo, d, h, mi, s), _ = _local(rig.now)
    data = bytes.fromhex("%02d%02d%02d%02d%02d%02d" % (y - 2000, mo, d, h, mi, s))[::-1]
    assert rig.transact(frame(wire_addr("999999999999"), 0x08, data)) == b""
    assert _bcd_date_time(rig, "000000000002") == _local(rig.now)  # the offset is gone
    assert _bcd_date_time(rig, ADDR) == _local(rig.now)
    rig.advance(61)
    assert _bcd_date_time(rig, "000000000002") == _local(T0 + 7261)  # and the clock runs on


# ---------------------------------------------------------------------------
# DL/T 645-1997 and telling the versions apart

M97 = "000000000003"


def rig_1997():
    text = site_toml([("old", 'protocol = "dlt645-1997"\naddress = "%s"\n[meters.energy]\nforward_kwh = 5021.33\n'
                       % M97), ("new", dlt())],
                     [("c1", "kw = 0.9\npf = 0.9", 1), ("c2", "kw = 1.0", 2)], buses=(("b", 1200, "E"),))
    return Rig(text)


def read97(rig, di):
    f = parse(rig.transact(read_req_1997(M97, di)))
    assert f is not None
    a, c, data = f
    assert a == wire_addr(M97)
    if c == 0xC1:
        assert len(data) == 1
        raise ErrReply(c, data[0])
    assert c == 0x81 and data[:2] == di.to_bytes(2, "little")
    return data[2:]


def test_1997_reads():
    rig = rig_1997()
    m = rig.truth("old")
    # the worked request of PROTOCOLS.md, as is
    f = parse(rig.transact(bytes.fromhex("68 030000000000 68 01 02 44 E9 03 16")))
    assert f[1] == 0x81 and f[2][:2] == b"\x11\xb6"
    assert bcd(f[2][2:], 0) == pytest.approx(m.U, abs=1)  # XXX V
    e = read97(rig, 0x9010)
    assert len(e) == 4 and bcd(e, 2) == pytest.approx(5021.33)
    v = read97(rig, 0xB611)
    assert len(v) == 2 and bcd(v, 0) == pytest.approx(m.U, abs=1)
    i = read97(rig, 0xB621)
    assert len(i) == 2 and bcd(i, 2) == pytest.approx(m.I, abs=0.01)  # XX.XX A
    p = read97(rig, 0xB630)
    assert len(p) == 3 and bcd(p, 4, signed=True) == pytest.approx(m.P, abs=1e-4)  # XX.XXXX kW
    assert read97(rig, 0xC032) == wire_addr(M97)
    with pytest.raises(ErrReply) as exc:
        read97(rig, 0xB612)  # phase B of a single-phase meter
    assert exc.value.control == 0xC1  # ERR bits of 1997: one secondary source (b1 bad DI)
    with pytest.raises(ErrReply) as exc:
        read97(rig, 0x1234)
    assert exc.value.control == 0xC1 and exc.value.err & 0x02


def test_telling_the_versions_apart():
    rig = rig_1997()
    # 1997 meter: silent to 2007's fn 11 and fn 13; answers fn 01 with 0x81
    assert rig.transact(read_req(M97, 0x00010000)) == b""
    assert rig.transact(frame(wire_addr(M97), 0x13)) == b""
    assert parse(rig.transact(read_req_1997(M97, 0x9010)))[1] == 0x81
    # 2007 meter: silent to fn 01; answers fn 11 with 0x91
    assert rig.transact(read_req_1997(ADDR, 0x9010)) == b""
    assert parse(rig.transact(read_req(ADDR, 0x00010000)))[1] == 0x91


# ---------------------------------------------------------------------------
# Modbus RTU


def rig_modbus(model, kind="single-phase", load="kw = 2.0\npf = 0.9", faults="", more=""):
    baud = 2400 if model == "sdm120" else 9600
    text = site_toml([("mb", 'protocol = "modbus"\nmodel = "%s"\nkind = "%s"\nunit_id = 1\n%s' % (model, kind, more))],
                     [("c1", load, 1)], faults=faults, buses=(("b", baud, "N"),))
    return Rig(text)


def test_crc_by_hand_matches_a_known_frame():
    assert mb_req(1, 3, 0, 2) == bytes.fromhex("010300000002c40b")


MAPS = {
    # model: [(register, quantity in the meter's unit from a Measurement)]
    "sdm120": [(0x0000, lambda m: m.U), (0x0006, lambda m: m.I), (0x000C, lambda m: m.P * 1000),
               (0x001E, lambda m: m.PF), (0x0046, lambda m: m.frequency)],
    "ddsu666": [(0x2000, lambda m: m.U), (0x2002, lambda m: m.I), (0x2004, lambda m: m.P),
                (0x2006, lambda m: m.Q), (0x200A, lambda m: m.PF), (0x200E, lambda m: m.frequency)],
    "sdm630": [(0x0000, lambda m: m.phases[0].U), (0x0002, lambda m: m.phases[1].U),
               (0x0004, lambda m: m.phases[2].U), (0x0006, lambda m: m.phases[0].I),
               (0x0008, lambda m: m.phases[1].I), (0x000A, lambda m: m.phases[2].I),
               (0x000C, lambda m: m.phases[0].P * 1000), (0x000E, lambda m: m.phases[1].P * 1000),
               (0x0010, lambda m: m.phases[2].P * 1000), (0x0034, lambda m: m.P * 1000),
               (0x0046, lambda m: m.frequency)],
}


@pytest.mark.parametrize("model", list(MAPS))
def test_modbus_fn04_floats_match_the_measurement(model):
    kind = "three-phase-4w" if model == "sdm630" else "single-phase"
    load = "kw = 6.0\npf = 0.9\nphase_weights = [1.0, 2.0, 3.0]" if kind != "single-phase" else "kw = 2.0\npf = 0.9"
    rig = rig_modbus(model, kind, load)
    m = rig.truth("mb")
    for reg, want in MAPS[model]:
        reply = mb_check(rig.modbus(1, 4, reg, 2))
        assert reply[:3] == bytes([1, 4, 4])
        (got,) = floats(reply[3:])
        assert got == pytest.approx(want(m), rel=1e-6, abs=1e-6), hex(reg)
    # one longer read: byte count and the values in place
    first = MAPS[model][0][0]
    reply = mb_check(rig.modbus(1, 4, first, 8))
    assert reply[2] == 16 and floats(reply[3:])[0] == pytest.approx(MAPS[model][0][1](m), rel=1e-6)


@pytest.mark.parametrize("model", ["sdm120", "sdm630", "ddsu666"])
def test_modbus_exceptions_and_silence(model):
    rig = rig_modbus(model, "three-phase-4w" if model == "sdm630" else "single-phase")
    # illegal function (fn 01 read coils): 0x81, code 01
    assert mb_check(rig.modbus(1, 1, 0, 1)) == bytes([1, 0x81, 0x01])
    # illegal data address: far outside the map
    assert mb_check(rig.modbus(1, 4, 0x9000, 2)) == bytes([1, 0x84, 0x02])
    if model == "sdm630":
        assert mb_check(rig.modbus(1, 4, 0x0000, 1)) == bytes([1, 0x84, 0x02])  # odd count refused
    # another unit id, and the broadcast unit 0: never an answer
    assert rig.modbus(2, 4, 0x0000, 2) == b""
    assert rig.modbus(0, 4, 0x0000, 2) == b""


@pytest.mark.parametrize("model", ["sdm120", "ddsu666"])
def test_modbus_import_and_export_energy(model):
    imp, exp = (0x0048, 0x004A) if model == "sdm120" else (0x4000, 0x400A)
    more = "[meters.energy]\nforward_kwh = 640.0\nreverse_kwh = 12.5\n"
    rig = rig_modbus(model, load="kw = -3.0\npf = 1.0\nexporting = true", more=more)  # PV: exporting

    def energy(reg):
        return floats(mb_check(rig.modbus(1, 4, reg, 2))[3:])[0]

    i0, e0 = energy(imp), energy(exp)
    assert (i0, e0) == pytest.approx((640.0, 12.5))
    p_reg = 0x000C if model == "sdm120" else 0x2004
    p = floats(mb_check(rig.modbus(1, 4, p_reg, 2))[3:])[0]
    assert p < 0  # export is negative (W on the SDM120, kW on the DDSU666)
    rig.advance(3600.0)
    assert energy(imp) == pytest.approx(i0, abs=1e-3)
    assert energy(exp) - e0 == pytest.approx(3.0, abs=0.01)
    if model == "sdm120":
        assert energy(0x0156) == pytest.approx(energy(imp) + energy(exp), abs=1e-3)  # total kWh
