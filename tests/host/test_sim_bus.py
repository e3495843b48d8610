"""The simulated RS-485 bus (metergate.sim.bus) in virtual time.

The UART expectations are worked out by hand from the character framing
(start bit 0, data LSB first, parity, stop bit 1, idle 1; a receiver syncs on
a falling edge and samples each bit in its middle), not taken from the code.
The meters here are small stand-ins with the MeterModel interface, so the bus
is tested on its own; test_sim_serve.py runs the real meter models.
"""

import pytest

from metergate.sim.bus import Bus, complete_frame, decode_bytes, encode, parity_bit
from metergate.sim.site import LineSettings, SiteState, load_site_text

L2400E = LineSettings(2400, "E")
L1200E = LineSettings(1200, "E")
L4800E = LineSettings(4800, "E")
L2400N = LineSettings(2400, "N")
L2400O = LineSettings(2400, "O")
CHAR = 11 / 2400

SITE = """
[site]
name = "bus test"
[[buses]]
name = "b"
baud = 2400
parity = "E"
[[boxes]]
id = "X"
positions = 4
[[meters]]
id = "m1"
position = 1
protocol = "dlt645-2007"
kind = "single-phase"
address = "000000000001"
response_delay_ms = 40
[[meters]]
id = "m2"
position = 2
protocol = "dlt645-2007"
kind = "single-phase"
address = "000000000002"
response_delay_ms = 40
[[meters]]
id = "m3"
position = 3
protocol = "dlt645-2007"
kind = "single-phase"
address = "000000000003"
response_delay_ms = 40
%s
"""

FAULTS = """
[[faults]]
id = "gw-swap"
type = "ab_swapped"
at = "gateway"
enabled = false
[[faults]]
id = "m1-swap"
type = "ab_swapped"
at = "m1"
enabled = false
[[faults]]
id = "m2-1200"
type = "wrong_line_settings"
meter = "m2"
baud = 1200
enabled = false
[[faults]]
id = "m1-loose"
type = "loose_contact"
meter = "m1"
drop_rate = 0.1
corrupt_rate = 0.2
enabled = false
"""


# -- a stand-in DL/T 645-2007 meter with the MeterModel interface -------------

def wire_addr(addr):
    return bytes.fromhex(addr)[::-1]


def frame(addr_wire, control, data=b""):
    body = b"\x68" + addr_wire + b"\x68" + bytes([control, len(data)]) + bytes((x + 0x33) & 0xFF for x in data)
    return body + bytes([sum(body) & 0xFF, 0x16])


def parse(buf):
    """(address, control, data) of a well-formed frame, else None."""
    buf = buf.lstrip(b"\xfe")
    if len(buf) < 12 or buf[0] != 0x68 or buf[7] != 0x68 or len(buf) != 12 + buf[9]:
        return None
    if buf[-1] != 0x16 or sum(buf[:-2]) & 0xFF != buf[-2]:
        return None
    return buf[1:7], buf[8], bytes((x - 0x33) & 0xFF for x in buf[10:-2])


class StubMeter:
    """Answers fn 13 to AAx6 with its address and fn 11 with a fixed 4-byte value."""

    def __init__(self, meter, state, delay=None, powered=True):
        self.meter = meter
        self.state = state
        self.response_delay_s = meter.response_delay_ms / 1000 if delay is None else delay
        self._powered = powered
        self.heard = []

    @property
    def link(self):
        return self.state.link(self.meter.id)

    def powered(self, now):
        return self._powered

    def handle(self, request, now):
        self.heard.append(request)
        f = parse(request)
        if f is None:
            return None
        addr, control, data = f
        own = wire_addr(self.meter.address)
        if control == 0x13 and addr == b"\xaa" * 6:
            return b"\xfe" * 4 + frame(own, 0x93, own)
        if control == 0x11 and addr == own:
            return b"\xfe" * 4 + frame(own, 0x91, data[:4] + b"\x78\x56\x34\x12")
        return None


def make_bus(faults=FAULTS, delays=None, seed=7, ids=("m1", "m2", "m3")):
    site = load_site_text(SITE % faults)
    state = SiteState(site)
    meters = [StubMeter(site.meter(i), state, delay=(delays or {}).get(i)) for i in ids]
    bus = Bus(site, state, meters, seed=seed, wall=lambda: 1000.0)
    bus.advance(0.0)
    return bus, state, meters


def transact(bus, request, t0=0.0):
    """Send `request` at t0; (all bytes the gateway received, time the last one ended)."""
    bus.write(request, t0)
    got = bus.run_until_idle(t0)
    data = b"".join(d for _, d in got)
    return data, (got[-1][0] if got else None)


READ_ADDR = b"\xfe" * 4 + frame(b"\xaa" * 6, 0x13)


def read(addr):
    return b"\xfe" * 4 + frame(wire_addr(addr), 0x11, bytes([0x00, 0x00, 0x00, 0x00]))


# -- the UART model, from first principles ------------------------------------

@pytest.mark.parametrize("line", [L2400E, L2400N, L2400O, LineSettings(9600, "E", 8, 2)])
def test_same_settings_receive_every_byte(line):
    data = bytes(range(256))
    chars = decode_bytes(data, line, line)
    assert bytes(c.value for c in chars) == data
    assert all(c.ok for c in chars)
    # each character ends one character time after the previous one
    assert chars[-1].t_end == pytest.approx(256 * line.bits_per_char / line.baud)


def test_parity_bit_counts_ones():
    assert parity_bit(0x68, "E") == 1  # 0110 1000: three ones -> even parity adds a one
    assert parity_bit(0x68, "O") == 0
    assert parity_bit(0x00, "E") == 0 and parity_bit(0x00, "O") == 1
    assert parity_bit(0x68, "N") is None


def test_inverted_8e1_byte_is_a_framing_error():
    # 0x68 at 8E1 on the wire (bit times 0..10): 0 | 0 0 0 1 0 1 1 0 | 1 | 1, idle 1.
    # A swapped receiver sees the inverse: idle 0, then 1 | 1 1 1 0 1 0 0 1 | 0 | 0, idle 0.
    # Its first falling edge is at bit time 4; from there it samples at 4.5 (start: 0),
    # data at 5.5..12.5 = 1 0 0 1 0 0 0 0 -> 0x09, parity at 13.5 = 0 (0x09 has two ones:
    # even parity 0, fine), stop at 14.5 = 0 -> framing error.
    chars = decode_bytes(b"\x68", L2400E, L2400E, inverted=True)
    assert len(chars) == 1
    assert chars[0].value == 0x09
    assert not chars[0].parity_error and chars[0].framing_error
    assert chars[0].t_start == pytest.approx(4 / 2400)


def test_inverted_idle_is_a_break_that_gives_no_bytes():
    # a swapped receiver on an idle line sees a constant low: no edge, no character
    assert decode_bytes(b"", L2400E, L2400E, inverted=True) == []


def test_slower_receiver_reads_zero_as_f0_with_parity_error():
    # 0x00 at 2400 8E1: low for bits 0..9 (start, 8 zeros, parity 0), stop and idle high.
    # A 1200 baud receiver's bit is two 2400 bits: it samples at 2400-bit times
    # 1 (start, low), 3 5 7 9 (low) 11 13 15 17 (high) -> data 0xF0, parity at 19 = 1
    # but 0xF0 has four ones (even parity 0) -> parity error; stop at 21 = 1.
    chars = decode_bytes(b"\x00", L2400E, L1200E)
    assert [(c.value, c.parity_error, c.framing_error) for c in chars] == [(0xF0, True, False)]


def test_faster_receiver_reads_ff_as_fe():
    # 0xFF at 2400 8E1: start bit low (bit 0), data high (1..8), parity low (eight ones:
    # even parity 0, bit 9), stop high (10). Samples of a 4800 receiver in 2400-bit units: start 0.25 (low), data 0.75 (low) 1.25..3.75 (high) -> 0xFE, parity 4.75
    # (high; 0xFE has seven ones: even parity 1, fine), stop 5.25 (high): a clean 0xFE.
    # Then bit 9 (the parity bit, low) is a new falling edge at 9/2400: a second
    # character from the sender's parity and stop: samples 9.25 low (start), 9.75 low
    # (d0), 10.25.. high -> 0xFE again, parity 1 ok, stop ok.
    chars = decode_bytes(b"\xff", L2400E, L4800E)
    assert [(c.value, c.ok) for c in chars] == [(0xFE, True), (0xFE, True)]


def test_8n1_sender_to_8e1_receiver():
    # A lone 0x01 at 8N1: the 8E1 receiver takes the stop bit (1) as parity (0x01 has one
    # one: even parity 1, fine) and the idle line as its stop bit: 0x01 arrives clean.
    assert [(c.value, c.ok) for c in decode_bytes(b"\x01", L2400N, L2400E)] == [(0x01, True)]
    # Back to back, the second start bit (bit time 10) is where the receiver expects its
    # stop bit: framing error on the first character.
    chars = decode_bytes(b"\x01\x01", L2400N, L2400E)
    assert chars[0].value == 0x01 and chars[0].framing_error


def test_encode_drives_idle_high_and_inverted_low():
    d = encode(b"\x55", L2400E, 0.0)
    assert d.levels[0] == 0  # the start bit
    assert d.level_at(d.t1 - 1e-6) == 1  # the stop bit
    inv = encode(b"\x55", L2400E, 0.0, inverted=True)
    assert inv.level_at(d.t1 - 1e-6) == 0


def test_complete_frame():
    assert complete_frame(READ_ADDR)
    assert not complete_frame(READ_ADDR[:-1])
    bad = bytearray(READ_ADDR)
    bad[-2] ^= 1
    assert not complete_frame(bytes(bad))
    assert complete_frame(bytes.fromhex("010300000002c40b"))  # Modbus fc 3, CRC 0x0BC4
    assert not complete_frame(bytes.fromhex("010300000002c4"))


# -- bus: timing, faults, collisions ------------------------------------------

def test_reply_timing_is_wire_time_plus_delay():
    bus, _, meters = make_bus()
    req = read("000000000001")
    data, t_last = transact(bus, req)
    expected = b"\xfe" * 4 + frame(wire_addr("000000000001"), 0x91, b"\x00\x00\x00\x00\x78\x56\x34\x12")
    assert data == expected
    assert meters[0].heard == [req]
    # every meter hears every request (the others ignore it)
    assert meters[1].heard == [req] and meters[2].heard == [req]
    assert t_last == pytest.approx((len(req) + len(data)) * CHAR + 0.040, abs=1e-6)
    st = bus.stats
    assert st["m1"].requests_heard == 1 and st["m1"].replies_sent == 1 and st["m2"].replies_sent == 0


def test_bytes_are_delivered_as_each_one_ends():
    bus, _, _ = make_bus()
    req = read("000000000002")
    bus.write(req, 0.0)
    got = bus.run_until_idle(0.0)
    reply_start = len(req) * CHAR + 0.040
    times = []
    for t, d in got:
        times += [t] * len(d)
    assert times == pytest.approx([reply_start + (i + 1) * CHAR for i in range(len(times))], abs=1e-6)


def test_incomplete_request_ends_after_a_silence():
    bus, _, meters = make_bus()
    bus.write(b"\x68\x01\x02", 0.0)
    assert bus.next_event() == pytest.approx(3 * CHAR + 3.5 * CHAR)
    bus.run_until_idle(0.0)
    assert meters[0].heard == [b"\x68\x01\x02"]


def test_gateway_ab_swapped_garbles_both_ways_and_invert_fixes_it():
    bus, state, meters = make_bus()
    state.set_fault("gw-swap", True)
    data, _ = transact(bus, read("000000000001"))
    assert data == b""  # the meter heard inverted bits, the checksum failed: silence
    assert meters[0].heard and meters[0].heard[-1] != read("000000000001")
    # the gateway's UART inverted (as ESP32 invert=INV_TX|INV_RX) undoes the swap
    bus.set_gateway_line(L2400E, invert=True, t=1.0)
    data, _ = transact(bus, read("000000000001"), 1.0)
    assert parse(data) is not None and parse(data)[1] == 0x91


def test_meter_side_swap_only_hits_that_meter():
    bus, state, meters = make_bus()
    state.set_fault("m1-swap", True)
    assert transact(bus, read("000000000001"))[0] == b""
    data, _ = transact(bus, read("000000000002"), 1.0)
    assert parse(data)[0] == wire_addr("000000000002")


def test_inverting_the_gateway_talks_to_a_swapped_meter():
    # Swap at m1 only, gateway UART inverted: gateway and m1 both see the pair inverted,
    # so they understand each other (PROTOCOLS.md: the inverted re-probe succeeds).
    bus, state, meters = make_bus()
    state.set_fault("m1-swap", True)
    bus.set_gateway_line(L2400E, invert=True, t=0.0)
    data, _ = transact(bus, read("000000000001"))
    good = frame(wire_addr("000000000001"), 0x91, b"\x00" * 4 + b"\x78\x56\x34\x12")
    # The inverted gateway sees the idle bus low (break). The meter's first FE starts with
    # start bit 0 and d0 = 0: still low, no falling edge, so the first FE is lost; the
    # line first rises at d1 and the next start edge is the second FE's. When m1 releases
    # the bus it returns to the bias, low again for the gateway: one break, read as 0x00.
    assert data == b"\xfe" * 3 + good + b"\x00"
    # the meters that are not swapped now hear inverted bits
    assert transact(bus, read("000000000002"), 1.0)[0] == b""
    # gateway swap + meter swap cancel: m1 answers a plain gateway
    state.set_fault("gw-swap", True)
    bus.set_gateway_line(L2400E, invert=False, t=2.0)
    data, _ = transact(bus, read("000000000001"), 2.0)
    assert data == b"\xfe" * 3 + good + b"\x00"  # the gateway's pair is swapped: it idles in break


def test_wrong_baud_meter_hears_garbage_until_the_gateway_matches():
    bus, state, meters = make_bus()
    state.set_fault("m2-1200", True)
    assert transact(bus, read("000000000002"))[0] == b""
    heard = meters[1].heard[-1]
    assert heard and heard != read("000000000002")
    bus.set_gateway_line(L1200E, t=1.0)
    data, t_last = transact(bus, read("000000000002"), 1.0)
    assert parse(data)[0] == wire_addr("000000000002")
    assert t_last - 1.0 == pytest.approx((len(read("000000000002")) + len(data)) * 11 / 1200 + 0.040, abs=1e-6)


def test_aa_read_with_equal_delays_is_the_wired_and_of_the_replies():
    # Three meters answer the wildcard read at the same instant with the same settings:
    # every bit on the wire is the AND of theirs, so each received character is the
    # AND of the three bytes (start 0, stop 1 agree), and its parity bit is the AND of
    # the three parity bits, which differs from the parity of the AND in general.
    bus, _, meters = make_bus(delays={"m1": 0.05, "m2": 0.05, "m3": 0.05})
    replies = [m.handle(READ_ADDR, 0) for m in meters]
    data, _ = transact(bus, READ_ADDR)
    anded = bytes(a & b & c for a, b, c in zip(*replies))
    assert data == anded
    assert parse(data) is None  # the garbled frame does not check out
    bad_parity = sum(1 for a, b, c in zip(*replies)
                     if (parity_bit(a, "E") & parity_bit(b, "E") & parity_bit(c, "E")) != parity_bit(a & b & c, "E"))
    assert bad_parity > 0 and bus.bus_stats["chars_damaged"] == bad_parity
    assert all(bus.stats[m].collisions == 2 for m in ("m1", "m2", "m3"))


def test_aa_read_with_staggered_delays_garbles_the_overlap():
    # m1 starts 40 ms after the request, m2 at 80 ms: m1's 22-byte reply lasts ~100 ms,
    # so m2 starts talking over the second half of it.
    bus, _, meters = make_bus(delays={"m1": 0.040, "m2": 0.080}, ids=("m1", "m2"))
    r1 = meters[0].handle(READ_ADDR, 0)
    data, _ = transact(bus, READ_ADDR)
    clean = int(0.040 // CHAR)  # characters of m1 that end before m2's first start bit
    assert data[:clean] == r1[:clean]
    assert parse(data) is None and data != r1
    assert bus.stats["m1"].collisions == 1 and bus.stats["m2"].collisions == 1


def test_single_meter_aa_read_is_clean():
    bus, _, _ = make_bus(ids=("m3",))
    data, _ = transact(bus, READ_ADDR)
    assert parse(data) == (wire_addr("000000000003"), 0x93, wire_addr("000000000003"))


def test_unpowered_meter_is_silent():
    site = load_site_text(SITE % "")
    state = SiteState(site)
    m = StubMeter(site.meter("m1"), state, powered=False)
    bus = Bus(site, state, [m], wall=lambda: 0.0)
    bus.advance(0.0)
    assert transact(bus, read("000000000001"))[0] == b""
    assert m.heard == [] and bus.stats["m1"].requests_heard == 0


def _loose_run(seed, n=1000):
    bus, state, meters = make_bus(seed=seed, ids=("m1",))
    state.set_fault("m1-loose", True)
    outcomes = []
    good = b"\xfe" * 4 + frame(wire_addr("000000000001"), 0x91, b"\x00" * 4 + b"\x78\x56\x34\x12")
    for k in range(n):
        data, _ = transact(bus, read("000000000001"), k * 1.0)
        outcomes.append("none" if not data else ("ok" if data == good else "bad"))
    return outcomes, bus.stats["m1"]


def test_loose_contact_rates_over_many_frames():
    n = 1000
    outcomes, st = _loose_run(3, n)
    none, bad = outcomes.count("none"), outcomes.count("bad")
    # drop 10 %: binomial sd = sqrt(1000*.1*.9) = 9.5 -> 100 +- 5 sd
    assert 52 <= none <= 148
    # damaged replies: 20 % of the answered ones (~900): mean 180, sd 12
    assert 120 <= bad <= 240
    assert st.dropped == none and st.corrupted == bad
    assert st.requests_heard == n and st.replies_sent == n - none
    # the same seed gives the same run
    assert _loose_run(3, 100)[0] == outcomes[:100]
    assert _loose_run(4, 100)[0] != outcomes[:100]


# -- the real meter models on the demo site ------------------------------------

def test_demo_site_aa_read_collides_and_single_meter_answers():
    from metergate.sim import DEMO_SITE
    from metergate.sim.meters import build_meters
    from metergate.sim.site import load_site

    site = load_site(DEMO_SITE)
    state = SiteState(site)
    meters = build_meters(site, state, "rs485-1", clock=lambda: 1000.0)
    bus = Bus(site, state, meters, seed=1, wall=lambda: 1000.0)
    bus.advance(0.0)
    data, _ = transact(bus, READ_ADDR)
    talkers = [m.meter.id for m in meters if bus.stats[m.meter.id].replies_sent]
    # every DL/T 645-2007 meter at the bus setting answers the wildcard (m1 m2 m3 m5);
    # the 1200-baud 1997 meter hears garbage, the Modbus meter ignores DL/T 645
    assert talkers == ["m1", "m2", "m3", "m5"]
    assert data and parse(data) is None
    assert all(bus.stats[m].collisions > 0 for m in talkers)
    # the same probe with only m3 on the bus: its address comes back intact
    alone = [m for m in build_meters(site, state, "rs485-1", clock=lambda: 1000.0) if m.meter.id == "m3"]
    bus = Bus(site, state, alone, seed=1, wall=lambda: 1000.0)
    bus.advance(0.0)
    data, _ = transact(bus, READ_ADDR)
    assert parse(data) == (wire_addr("202107072531"), 0x93, wire_addr("202107072531"))
