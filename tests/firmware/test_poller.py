# Meters (gateway/meters.py) and the poller (gateway/poller.py) against fake
# meters behind the fake UART. Runs under CPython and MicroPython.
import json

from checks import raises

from fakeuart import Clock, FakeUart
from gateway import meters as mt
from gateway import poller as pl
from gateway.protocols import dlt645, dlt645_items, modbus, modbus_maps

M1 = "202107072529"
M4 = "000012345678"


class FakeBus:
    """Meters answering like the simulator: DL/T 645-2007 / -1997 by
    address, Modbus by unit id; only at their own baud."""

    def __init__(self):
        self.dlt = {}  # wire address -> (version, baud, {di: value})
        self.mb = {}  # unit -> (model, baud, {quantity: value})
        self.line = None
        self.mute = False

    def respond(self, request, uart):
        if self.mute:
            return None
        baud = uart.inits[-1]["baudrate"] if uart.inits else 2400
        st, f, _, _ = dlt645.parse(request, 0, len(request))
        if st == dlt645.FRAME:
            m = self.dlt.get(f.address)
            if m is None or m[1] != baud:
                return None
            version, _, items = m
            di = f.di()
            if di not in items:
                fn = 0x11 if version == 2007 else 0x01
                return [(40, dlt645.build_error_reply(f.address, fn, 0x02))]
            data = dlt645_items.encode_item(di, items[di], version)
            body = dlt645.di_bytes(di, 4 if version == 2007 else 2)
            body.extend(data)
            fn = 0x11 if version == 2007 else 0x01
            return [(40, dlt645.build_reply(f.address, fn, body))]
        req = modbus.Request()
        if req.parse(request, 0, len(request)) == modbus.OK:
            m = self.mb.get(req.unit)
            if m is None or m[1] != baud:
                return None
            regs = modbus_maps.encode_registers(m[0], m[2], req.address, req.count)
            return [(30, modbus.read_reply(req.unit, req.function, regs))]
        return None


class FakeHal:
    def __init__(self, config, bus):
        self.config = config
        self.clock = Clock()
        self._uart = FakeUart(self.clock, bus.respond)
        self.fed = 0

    def uart(self, **kw):
        if kw:
            self._uart.init(**kw)
        return self._uart

    def ticks_ms(self):
        return self.clock.ticks()

    def sleep_ms(self, ms):
        self.clock.sleep(ms)

    def time(self):
        return 1700000000 + self.clock.now // 1000

    def wdt_feed(self):
        self.fed += 1


def _bus():
    bus = FakeBus()
    bus.dlt[dlt645.address_to_wire(M1)] = (2007, 2400, {
        0x02010100: 220.1, 0x02020100: -5.432, 0x02030000: -1.1954,
        0x00010000: 317.76, 0x00020000: 345678.9})
    bus.dlt[dlt645.address_to_wire(M4)] = (1997, 1200, {0xB611: 221, 0x9010: 5021.33})
    bus.mb[3] = ("sdm120", 2400, {"voltage_a": 229.5, "current_a": 14.25, "power_total": 3.27,
                                  "energy_import": 640.0})
    return bus


CONFIG = {
    "poll_interval_s": 5,
    "health_every": 2,
    "meters": [
        {"id": "m1", "protocol": "dlt645-2007", "address": M1,
         "items": ["voltage", "current", "power", "energy_forward", "energy_reverse", "frequency"]},
        {"id": "m4", "protocol": "dlt645-1997", "address": M4, "items": ["voltage", "energy_forward", "power"]},
        {"id": "m6", "protocol": "modbus", "model": "sdm120", "unit_id": 3, "baud": 2400, "parity": "E",
         "items": ["voltage", "current", "power", "energy_forward", "neutral_current"]},
    ],
}


def _run(config, bus, cycles=1):
    hal = FakeHal(config, bus)
    lines = []
    p = pl.Poller(hal, config, out=lines.append)
    p.run(cycles)
    return p, hal, lines


def _readings(lines):
    out = {}
    for line in lines:
        if line.startswith("READING "):
            r = json.loads(line[8:])
            out[r["meter"]] = r
    return out


def test_one_cycle_reads_every_meter_with_units_and_exact_values():
    p, hal, lines = _run(CONFIG, _bus())
    r = _readings(lines)
    assert sorted(r) == ["m1", "m4", "m6"]
    m1 = r["m1"]
    assert m1["seq"] == 1 and m1["t"] >= 1700000000
    assert m1["values"]["voltage"] == {"v": 220.1, "unit": "V"}
    assert m1["values"]["current"] == {"v": -5.432, "unit": "A"}
    assert m1["values"]["power"] == {"v": -1.1954, "unit": "kW"}
    assert m1["values"]["energy_reverse"]["v"] == 345678.9
    assert '"energy_reverse":{"v":345678.90,' in [x for x in lines if '"m1"' in x][0]
    # the meter does not know 02800002: its error reply, not a zero
    assert "frequency" not in m1["values"]
    assert m1["errors"] == {"frequency": "meter_error:no_such_data"}
    m4 = r["m4"]
    assert m4["values"]["voltage"] == {"v": 221, "unit": "V"}
    assert m4["values"]["energy_forward"]["v"] == 5021.33
    assert m4["errors"] == {"power": "meter_error:bad_data_identifier"}
    m6 = r["m6"]
    assert abs(m6["values"]["voltage"]["v"] - 229.5) < 1e-3
    assert abs(m6["values"]["power"]["v"] - 3.27) < 1e-5 and m6["values"]["power"]["unit"] == "kW"
    assert m6["values"]["energy_forward"] == {"v": 640, "unit": "kWh"}
    assert m6["errors"] == {"neutral_current": "not_in_model"}


def test_line_settings_follow_each_meter():
    p, hal, _ = _run(CONFIG, _bus())
    bauds = [(k["baudrate"], k["parity"]) for k in hal._uart.inits]
    assert bauds == [(2400, "E"), (1200, "E"), (2400, "E")]


def test_modbus_items_share_one_request():
    p, hal, _ = _run(CONFIG, _bus())
    m6 = p.meters[2]
    assert len(m6.reads) == 1 and m6.counters.sent == 1


def test_health_line_every_n_cycles_with_counters():
    bus = _bus()
    p, hal, lines = _run(CONFIG, bus, cycles=2)
    health = [json.loads(x[7:]) for x in lines if x.startswith("HEALTH ")]
    assert len(health) == 1
    c = health[0]["meters"]["m1"]
    assert c["sent"] == 12 and c["valid"] == 12 and c["timeout"] == 0
    assert c["last_error"] == "frequency: meter_error:no_such_data"
    assert health[0]["cycle"] == 2
    seqs = [json.loads(x[8:])["seq"] for x in lines if x.startswith("READING ") and '"m4"' in x]
    assert seqs == [1, 2]


def test_silent_meter_reports_timeouts_never_zero():
    bus = _bus()
    bus.mute = True
    cfg = {"meters": [CONFIG["meters"][0]], "link": {"retries": 0, "response_timeout_ms": 200}}
    p, hal, lines = _run(cfg, bus)
    m1 = _readings(lines)["m1"]
    assert m1["values"] == {}
    assert m1["errors"]["voltage"] == "timeout" and len(m1["errors"]) == 6
    assert p.meters[0].counters.timeout == 6


def test_cycles_keep_the_poll_interval():
    p, hal, _ = _run(CONFIG, _bus(), cycles=3)
    # the third cycle starts 2 intervals after the first
    assert hal.clock.now >= 1000 + 2 * 5000


def test_bad_meter_entries_are_skipped_and_the_rest_polled():
    cfg = {"meters": [
        "not an object",
        {"id": "x1", "protocol": "iec62056"},
        {"id": "x2", "protocol": "dlt645-2007", "address": "12345678901234"},
        {"id": "x3", "protocol": "modbus", "model": "nope"},
        {"id": "x4", "protocol": "modbus", "model": "sdm120", "unit_id": 0},
        {"id": "x5", "protocol": "dlt645-2007", "address": M1, "baud": 2401},
        {"id": "x6", "protocol": "dlt645-2007", "address": M1, "items": "voltage"},
        {"protocol": "dlt645-2007", "address": M1},
        CONFIG["meters"][0],
        dict(CONFIG["meters"][0]),  # duplicate id
        {"id": "x7", "protocol": "dlt645-2007", "address": M1, "items": ["voltage", "0299FF00", "bogus"]},
    ], "poll_interval_s": "soon"}
    p, hal, lines = _run(cfg, _bus())
    assert [m.id for m in p.meters] == ["m1", "x7"]
    r = _readings(lines)
    assert r["x7"]["errors"] == {"0299FF00": "unknown_item", "bogus": "unknown_item"}
    assert r["x7"]["values"]["voltage"]["v"] == 220.1
    assert p.interval_ms == pl.DEFAULT_INTERVAL_S * 1000


def test_config_errors_name_the_meter():
    exc = raises(mt.ConfigError, mt.build, {"id": "m9", "protocol": "dlt645-2007", "address": "1x"})
    assert "m9" in str(exc)


def test_raw_di_items_and_collector_timeout():
    m = mt.build({"id": "c1", "protocol": "dlt645-2007", "address": M1, "collector": True,
                  "items": ["02010100"]})
    assert m.timeout_ms == mt.COLLECTOR_TIMEOUT_MS
    assert m.plan[0][1][0] == 0x02010100


def test_a_crashing_meter_poll_is_reported_and_the_next_meter_still_read():
    bus = _bus()
    p = pl.Poller(FakeHal(CONFIG, bus), CONFIG, out=[].append)
    lines = []
    p.out = lines.append

    def boom(link):
        raise RuntimeError("boom")

    p.meters[0].poll = boom
    p.run_cycle()
    r = _readings(lines)
    assert r["m1"]["errors"] == {"*": "internal:RuntimeError"}
    assert r["m4"]["values"]["voltage"]["v"] == 221


def test_num_text_is_exact():
    assert mt.Num(31776, 2).text() == "317.76"
    assert mt.Num(-5, 3).text() == "-0.005"
    assert mt.Num(1234567890, 2).text() == "12345678.90"
    assert mt.Num(221, 0).text() == "221"
