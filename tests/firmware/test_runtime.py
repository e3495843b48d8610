# Meters (gateway/meters.py) and the runtime (gateway/runtime.py) against fake
# meters behind the fake UART, a flash directory in /tmp and a fake MQTT
# client at the edge (the real one is tested against mosquitto elsewhere).
# Runs under CPython and MicroPython.
import json
import os

from checks import raises

from fakeuart import AsyncFakeUart, Clock
from gateway import link as lk
from gateway import meters as mt
from gateway import runtime as rtm
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
        self.blocks = {}  # block DI -> member DIs this bus answers as a block
        self.synced = None

    def respond(self, request, uart):
        if self.mute:
            return None
        baud = uart.inits[-1]["baudrate"] if uart.inits else 2400
        st, f, _, _ = dlt645.parse(request, 0, len(request))
        if st == dlt645.FRAME and f.address == dlt645.BROADCAST:
            self.synced = dlt645.decode_time_sync(bytes(f.data))
            return None
        if st == dlt645.FRAME:
            m = self.dlt.get(f.address)
            if m is None or m[1] != baud:
                return None
            version, _, items = m
            if f.function == 0x08:
                self.synced = dlt645.decode_time_sync(bytes(f.data))
                return None
            di = f.di()
            if di in self.blocks and version == 2007:
                vals = [items[d] for d in self.blocks[di]]
                data = dlt645_items.encode_item(di, vals, version)
                body = dlt645.di_bytes(di, 4)
                body.extend(data)
                return [(40, dlt645.build_reply(f.address, 0x11, body))]
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


_N = [0]


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


class FakeHal:
    def __init__(self, config, bus):
        self.config = config
        self.clock = Clock()
        self._uart = AsyncFakeUart(self.clock, bus.respond)
        self.fed = 0
        _N[0] += 1
        self.root = "/tmp/mg-rt-%d-%d" % (os.getpid() if hasattr(os, "getpid") else 0, _N[0])
        _rmtree(self.root)
        os.mkdir(self.root)
        self.resets = 0

    def flash_path(self, name):
        return self.root + "/" + name

    def device_id(self):
        return "gw-test"

    def reset_cause(self):
        return "power-on"

    def reset(self):
        self.resets += 1

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


M5 = "202106150001"


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
    "meters": [
        {"id": "m1", "protocol": "dlt645-2007", "address": M1,
         "items": ["voltage", "current", "power", "energy_forward", "energy_reverse", "frequency"]},
        {"id": "m4", "protocol": "dlt645-1997", "address": M4, "items": ["voltage", "energy_forward", "power"]},
        {"id": "m6", "protocol": "modbus", "model": "sdm120", "unit_id": 3, "baud": 2400, "parity": "E",
         "items": ["voltage", "current", "power", "energy_forward", "neutral_current"]},
    ],
}


class FakeMqtt:
    """The MQTT client's interface as the runtime uses it (publish, subscribe,
    connected, stats); acks are given by the test."""

    def __init__(self):
        self.connected = False
        self.published = []
        self.subs = []
        self.pid = 0
        self.stats = {"connects": 0, "disconnects": 0}
        self.inflight = []  # pids the client could still resend: the fake never resends

    async def publish(self, topic, payload, qos=0, retain=False):
        if not self.connected:
            raise OSError("not connected")
        self.pid += 1
        if not isinstance(topic, str):  # the client takes str or bytes (the runtime's reading topic)
            topic = bytes(topic).decode()
        self.published.append((topic, bytes(payload), qos, retain, self.pid))
        return self.pid if qos else 0

    async def subscribe(self, topic, qos=1):
        self.subs.append(topic)

    async def run(self):
        while True:
            await rtm.sleep_ms(1000)

    def readings(self):
        return [json.loads(p) for t, p, q, r, pid in self.published if t.endswith("/reading")]


def _runtime(config, bus=None, mqtt=None):
    hal = FakeHal(config, bus or _bus())
    lines = []
    rt = rtm.Runtime(hal, config, out=lines.append, mqtt_factory=(lambda mq: mqtt) if mqtt else None)
    if mqtt is not None:
        rt.mqtt = mqtt
    return rt, hal, lines


def _arun(coro):
    import asyncio

    return asyncio.run(coro)


async def _poll_all(rt, cycles=1):
    for _ in range(cycles):
        for m in rt.meters:
            for g in range(len(m.groups)):
                await rt.poll_group(m, g)


def _readings(lines):
    out = {}
    for line in lines:
        if line.startswith("READING "):
            r = json.loads(line[8:])
            out[r["meter"]] = r
    return out


def test_readings_carry_unit_time_quality_and_exact_values():
    rt, hal, lines = _runtime(CONFIG)
    _arun(_poll_all(rt))
    r = _readings(lines)
    assert sorted(r) == ["m1", "m4", "m6"]
    m1 = r["m1"]
    assert m1["device"] == "gw-test" and m1["group"] == "main" and m1["ts"] >= 1700000000
    assert m1["values"]["voltage"] == {"v": 220.1, "unit": "V", "q": "good", "t": m1["ts"]}
    assert m1["values"]["current"]["v"] == -5.432 and m1["values"]["power"]["v"] == -1.1954
    assert '"energy_reverse":{"v":345678.90,' in [x for x in lines if '"m1"' in x][0]
    # the meter does not know 02800002: its error, never a zero
    assert m1["values"]["frequency"] == {"q": "comm_error", "error": "meter_error:no_such_data", "unit": "Hz",
                                         "t": m1["ts"]}
    m4 = r["m4"]
    assert m4["values"]["voltage"]["v"] == 221 and m4["values"]["energy_forward"]["v"] == 5021.33
    assert m4["values"]["power"]["error"] == "meter_error:bad_data_identifier"
    m6 = r["m6"]
    assert abs(m6["values"]["voltage"]["v"] - 229.5) < 1e-3 and m6["values"]["power"]["unit"] == "kW"
    assert m6["values"]["neutral_current"] == {"q": "comm_error", "error": "not_in_model", "t": m6["ts"]}


def test_every_reading_is_in_the_spool_with_its_seq_before_it_is_published():
    rt, hal, lines = _runtime(CONFIG)
    _arun(_poll_all(rt, 2))
    seqs = [json.loads(x[8:])["seq"] for x in lines if x.startswith("READING ")]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert rt.spool.depth == 6
    stored = rt.spool.peek(10)
    assert [s for s, _, _ in stored] == seqs
    assert json.loads(stored[0][2])["meter"] == "m1"


def test_silent_meter_reports_timeouts_never_zero():
    bus = _bus()
    bus.mute = True
    cfg = {"meters": [CONFIG["meters"][0]], "link": {"retries": 0, "response_timeout_ms": 200}}
    rt, hal, lines = _runtime(cfg, bus)
    _arun(_poll_all(rt))
    m1 = _readings(lines)["m1"]
    assert all(v["q"] == "comm_error" and v["error"] == "timeout" and "v" not in v for v in m1["values"].values())
    assert len(m1["values"]) == 6 and rt.meters[0].stats[lk.TIMEOUTS] == 6


def test_implausible_values_are_flagged_not_dropped():
    bus = _bus()
    items = bus.dlt[dlt645.address_to_wire(M1)][2]
    cfg = {"meters": [dict(CONFIG["meters"][0], items=["voltage", "energy_forward"])]}
    rt, hal, lines = _runtime(cfg, bus)
    _arun(_poll_all(rt))
    items[0x00010000] = 300.0  # the register went backwards
    items[0x02010100] = 999.0  # no meter on a 220 / 380 V supply reads this
    _arun(_poll_all(rt))
    last = [json.loads(x[8:]) for x in lines if x.startswith("READING ")][-1]
    assert last["values"]["energy_forward"] == {"v": 300.0, "unit": "kWh", "q": "implausible", "t": last["ts"]}
    assert last["values"]["voltage"]["q"] == "implausible" and last["values"]["voltage"]["v"] == 999.0


def test_block_read_when_supported_and_fallback_remembered_when_not():
    bus = _bus()
    bus.dlt[dlt645.address_to_wire(M5)] = (2007, 2400, {
        0x02010100: 220.1, 0x02010200: 219.8, 0x02010300: 221.4, 0x02030000: 9.0, 0x02030100: 3.0})
    bus.blocks[0x0201FF00] = (0x02010100, 0x02010200, 0x02010300)
    cfg = {"meters": [{"id": "m5", "protocol": "dlt645-2007", "address": M5, "kind": "three-phase-4w",
                       "items": ["voltage_a", "voltage_b", "voltage_c", "power", "power_a"]}]}
    rt, hal, lines = _runtime(cfg, bus)
    m5 = rt.meters[0]
    _arun(_poll_all(rt))
    r = _readings(lines)["m5"]["values"]
    assert [r[k]["v"] for k in ("voltage_a", "voltage_b", "voltage_c", "power", "power_a")] == [
        220.1, 219.8, 221.4, 9.0, 3.0]
    # voltage block answered: 1 request; power block refused (no 0203FF00): 1 + 2 single reads
    assert m5.stats[lk.SENT] == 4 and m5.no_block == (0x0203FF00,)
    _arun(_poll_all(rt))
    assert m5.stats[lk.SENT] == 4 + 3  # the refused block is not asked again
    assert rt.health()["meters"]["m5"]["no_block"] == ["0203FF00"]
    no = {"id": "m5", "protocol": "dlt645-2007", "address": M5, "block_read": False,
          "items": ["voltage_a", "voltage_b", "voltage_c"]}
    rt2, _, _ = _runtime({"meters": [no]}, bus)
    _arun(_poll_all(rt2))
    assert rt2.meters[0].stats[lk.SENT] == 3


def test_poll_groups_keep_their_own_items_and_intervals():
    cfg = {"meters": [{"id": "m1", "protocol": "dlt645-2007", "address": M1, "groups": [
        {"name": "fast", "items": ["voltage", "current"], "interval_s": 2},
        {"name": "energy", "items": ["energy_forward"], "interval_s": 900}]}]}
    rt, hal, lines = _runtime(cfg)
    m = rt.meters[0]
    assert [(g[0], g[1], g[2]) for g in m.groups] == [("fast", ("voltage", "current"), 2000),
                                                     ("energy", ("energy_forward",), 900000)]
    _arun(_poll_all(rt))
    got = [json.loads(x[8:]) for x in lines if x.startswith("READING ")]
    assert [(g["group"], sorted(g["values"])) for g in got] == [("fast", ["current", "voltage"]),
                                                                ("energy", ["energy_forward"])]
    sch = rt.schedule
    assert sorted(sch[j + 3] for j in range(0, len(sch), 4) if sch[j + 2] >= 0) == [2000, 900000]


def test_bus_task_runs_the_schedule_one_transaction_at_a_time():
    cfg = {"meters": [dict(CONFIG["meters"][0], items=["voltage"])], "poll_interval_s": 0.3}
    rt, hal, lines = _runtime(cfg)

    async def main():
        import asyncio

        task = asyncio.create_task(rt.bus_task())
        await rtm.sleep_ms(1000)
        rt.stop()
        await rtm.sleep_ms(50)
        task.cancel()

    _arun(main())
    n = len([x for x in lines if x.startswith("READING ")])
    assert 2 <= n <= 5, n  # every 0.3 s, each poll taking ~0.1 s of (awaited) wire time
    assert rt.healthy()  # the bus task went round: the main loop may feed the watchdog


def test_unacknowledged_readings_stay_and_are_replayed_oldest_first_paced():
    mq = FakeMqtt()
    cfg = dict(CONFIG, mqtt={"url": "mqtt://127.0.0.1:1", "replay_per_s": 2})
    rt, hal, lines = _runtime(cfg, mqtt=mq)
    _arun(_poll_all(rt, 2))  # broker away: 6 readings wait in the spool
    assert rt.spool.depth == 6 and mq.published == []

    async def one_round(pause_ms=0):
        import asyncio

        await rtm.sleep_ms(pause_ms)  # the pacing is per second
        mq.connected = True
        await rt.on_connect()
        task = asyncio.create_task(rt.publisher())
        await rtm.sleep_ms(50)
        rt.stop()
        await rtm.sleep_ms(20)
        task.cancel()
        rt.stopping = False

    _arun(one_round())
    topics = [p[0] for p in mq.published]
    assert topics[:2] == ["metergate/v1/gw-test/status", "metergate/v1/gw-test/config_error"]
    assert mq.subs == ["metergate/v1/gw-test/cmd/+"]
    assert [r["seq"] for r in mq.readings()] == [1, 2]  # paced: 2 a round, oldest first
    for _t, _p, qos, _r, pid in mq.published:
        if qos:
            rt.on_ack(pid)
    assert rt.spool.depth == 4
    _arun(one_round(1000))
    assert [r["seq"] for r in mq.readings()][2:] == [3, 4]  # reconnect: the replay goes on, oldest first


def test_live_readings_go_out_at_once_and_leave_the_spool_on_ack():
    mq = FakeMqtt()
    mq.connected = True
    cfg = dict(CONFIG, mqtt={"url": "mqtt://127.0.0.1:1"})
    rt, hal, lines = _runtime(cfg, mqtt=mq)

    async def main():
        import asyncio

        task = asyncio.create_task(rt.publisher())
        await _poll_all(rt)
        await rtm.sleep_ms(50)
        rt.stop()
        await rtm.sleep_ms(20)
        task.cancel()

    _arun(main())
    assert [r["seq"] for r in mq.readings()] == [1, 2, 3]
    assert all(p[2] == 1 and not p[3] for p in mq.published)
    assert rt.spool.depth == 3
    for p in mq.published:
        rt.on_ack(p[4])
    assert rt.spool.depth == 0 and rt.sent == {}


def test_config_errors_are_published_retained_on_connect():
    mq = FakeMqtt()
    mq.connected = True
    hal = FakeHal({}, _bus())
    rt = rtm.Runtime(hal, {"mqtt": {"url": "mqtt://h:1"}}, [("meters[2].address", "needs 12 digits")],
                     "config.good.json", mqtt_factory=lambda mq_cfg: mq, out=[].append)
    _arun(rt.on_connect())
    errs = [p for p in mq.published if p[0].endswith("/config_error")]
    assert errs[0][3] is True
    body = json.loads(errs[0][1])
    assert body["source"] == "config.good.json"
    assert body["errors"] == [{"path": "meters[2].address", "reason": "needs 12 digits"}]
    status = [json.loads(p[1]) for p in mq.published if p[0].endswith("/status")]
    assert status[0]["state"] == "online" and status[0]["boot_count"] == 1


def test_meter_clock_drift_triggers_a_broadcast_time_sync():
    bus = _bus()
    rt, hal, lines = _runtime({"meters": [CONFIG["meters"][0]]}, bus)
    m = rt.meters[0]
    items = bus.dlt[dlt645.address_to_wire(M1)][2]

    def set_meter_clock(offset_s):
        y, mo, d, h, mi, s, wd = mt.epoch_to_civil(hal.time() + rtm.TZ_OFFSET_S + offset_s)
        items[0x04000101] = (y, mo, d, wd)
        items[0x04000102] = (h, mi, s)

    set_meter_clock(20)
    drift = _arun(rt.check_clock(m))
    assert 19 <= drift <= 21 and bus.synced is None  # within the 60 s limit
    set_meter_clock(-600)
    drift = _arun(rt.check_clock(m))
    assert -601 <= drift <= -599
    y, mo, d, h, mi, s = bus.synced
    sent = mt.civil_to_epoch(y, mo, d, h, mi, s) - rtm.TZ_OFFSET_S
    assert abs(sent - hal.time()) <= 1  # the broadcast carried the gateway's time in meter local time
    assert rt.syncs == 1 and rt.health()["meters"]["m1"]["clock_drift_s"] == drift


def test_civil_time_round_trip():
    for t in (0, 951782400, 1700000000, 4102444799):
        y, mo, d, h, mi, s, wd = mt.epoch_to_civil(t)
        assert mt.civil_to_epoch(y, mo, d, h, mi, s) == t
    assert mt.epoch_to_civil(1795456800) == (2026, 11, 23, 18, 0, 0, 1)  # a Monday


def test_commands_poll_health_unknown_and_retained_ignored():
    mq = FakeMqtt()
    mq.connected = True
    cfg = dict(CONFIG, mqtt={"url": "mqtt://h:1"})
    rt, hal, lines = _runtime(cfg, mqtt=mq)
    base = "metergate/v1/gw-test"
    _arun(rt.on_message(base + "/cmd/poll", b'{"id":"r1","meter":"m4"}'))
    _arun(rt.on_message(base + "/cmd/explode", b'{"id":"r2"}'))
    _arun(rt.on_message(base + "/cmd/poll", b'not json'))
    _arun(rt.on_message(base + "/cmd/reboot", b'{"id":"r3"}', True))  # retained: ignored
    _arun(rt.on_message(base + "/cmd/poll", b'{"id":"r4","meter":"m9"}'))
    replies = [json.loads(p[1]) for p in mq.published if "/reply/" in p[0]]
    assert replies[0]["id"] == "r1" and replies[0]["ok"] and replies[0]["result"] == {"queued": 1}
    assert replies[1]["id"] == "r2" and not replies[1]["ok"] and "unknown command" in replies[1]["error"]
    assert not replies[2]["ok"] and "bad command payload" in replies[2]["error"]
    assert replies[3]["id"] == "r4" and "no meter" in replies[3]["error"]
    assert len(replies) == 4 and hal.resets == 0


def test_health_has_what_the_back_office_needs():
    rt, hal, lines = _runtime(CONFIG)
    _arun(_poll_all(rt))
    h = rt.health()
    for key in ("fw", "uptime_s", "boot_count", "reset_cause", "heap", "rssi", "spool", "meters", "bus"):
        assert key in h, key
    assert h["spool"]["depth"] == 3 and h["spool"]["dropped"] == 0
    m1 = h["meters"]["m1"]
    assert m1["sent"] == 6 and m1["valid"] == 6 and m1["success"] == 1.0 and m1["latency_ms"] == 40
    assert m1["last_error"] == "frequency: meter_error:no_such_data"
    rt2, _, _ = _runtime(CONFIG)
    assert rt2.boot_count == 1  # a fresh flash; the boot file counts from there


def test_health_is_written_into_its_own_buffer_and_never_rewritten_while_unacknowledged():
    # the health message is written into a buffer made at start-up (no block of
    # several KB at every health); the MQTT client keeps a reference to it until
    # the broker acknowledges, so while it may still be resent it is not rewritten
    mq = FakeMqtt()
    mq.connected = True
    rt, hal, lines = _runtime(CONFIG, mqtt=mq)
    _arun(_poll_all(rt))
    _arun(rt.publish_health())
    first = [p for p in mq.published if p[0].endswith("/health")]
    assert len(first) == 1 and first[0][2] == 1 and first[0][3] is True
    assert json.loads(first[0][1])["meters"]["m1"]["sent"] == 6
    assert json.loads(lines[-1][len("HEALTH "):]) == json.loads(first[0][1])
    mq.inflight.append(first[0][4])  # not acknowledged yet
    buf = bytes(rt._health_buf)
    _arun(_poll_all(rt))
    _arun(rt.publish_health())
    assert len([p for p in mq.published if p[0].endswith("/health")]) == 1  # held back, not rewritten
    assert bytes(rt._health_buf) == buf
    assert json.loads(lines[-1][len("HEALTH "):])["meters"]["m1"]["sent"] == 12  # the console still gets it
    mq.inflight.remove(first[0][4])  # acknowledged
    _arun(rt.publish_health())
    sent = [p for p in mq.published if p[0].endswith("/health")]
    assert len(sent) == 2 and json.loads(sent[1][1])["meters"]["m1"]["sent"] == 12


def test_health_outgrowing_its_buffer_gets_a_larger_one_and_says_the_same():
    # a meter's entry is reserved ~190 bytes; long error reasons make it larger: the buffer
    # is made again at the size the message needs, and the message is health() as JSON
    mq = FakeMqtt()
    mq.connected = True
    rt, hal, lines = _runtime(CONFIG, mqtt=mq)
    _arun(_poll_all(rt))
    small = len(rt._health_buf)
    for m in rt.meters:
        m.last_error = "x" * (small // len(rt.meters))
    _arun(rt.publish_health())
    sent = [p for p in mq.published if p[0].endswith("/health")]
    assert len(sent) == 1 and len(rt._health_buf) > small
    got = json.loads(sent[0][1])
    want = rt.health()
    for h in (got, want):
        del h["heap"], h["uptime_s"], h["ts"]
    assert got == want and got["meters"]["m1"]["last_error"] == "x" * (small // len(rt.meters))
    assert json.loads(lines[-1][len("HEALTH "):])["meters"] == got["meters"]


def test_meter_ids_that_would_need_escaping_are_refused():
    # ids are written into readings and topics as they are (no escaping on the hot path)
    for bad in ('m"1', "m 1", "m/1", "x" * 33):
        exc = raises(mt.ConfigError, mt.build, {"id": bad, "protocol": "dlt645-2007", "address": "202107070001"})
        assert "meter id" in str(exc)
    assert mt.build({"id": "M_1-a", "protocol": "dlt645-2007", "address": "202107070001"}).id == "M_1-a"


def test_bad_meter_entries_are_skipped_and_reported():
    cfg = {"meters": [
        "not an object",
        {"id": "x1", "protocol": "iec62056"},
        {"id": "x2", "protocol": "dlt645-2007", "address": "12345678901234"},
        {"id": "x5", "protocol": "dlt645-2007", "address": M1, "baud": 2401},
        CONFIG["meters"][0],
        dict(CONFIG["meters"][0]),  # duplicate id
        {"id": "x7", "protocol": "dlt645-2007", "address": M1, "items": ["voltage", "0299FF00", "bogus"]},
    ]}
    rt, hal, lines = _runtime(cfg)
    assert [m.id for m in rt.meters] == ["m1", "x7"]
    assert [p for p, _ in rt.config_errors] == ["meters[0]", "meters[1]", "meters[2]", "meters[3]", "meters[5]"]
    _arun(_poll_all(rt))
    r = _readings(lines)
    assert r["x7"]["values"]["0299FF00"]["error"] == "unknown_item"
    assert r["x7"]["values"]["voltage"]["v"] == 220.1


def test_a_crashing_meter_poll_is_reported_and_the_next_meter_still_read():
    rt, hal, lines = _runtime(CONFIG)

    async def boom(link, group=0):
        raise RuntimeError("boom")

    rt.meters[0].poll = boom
    _arun(_poll_all(rt))
    r = _readings(lines)
    assert r["m1"]["error"] == "internal:RuntimeError"
    assert r["m1"]["values"]["voltage"] == {"q": "comm_error", "error": "internal:RuntimeError", "unit": "V",
                                            "t": r["m1"]["ts"]}
    assert r["m4"]["values"]["voltage"]["v"] == 221


def test_config_errors_name_the_meter():
    exc = raises(mt.ConfigError, mt.build, {"id": "m9", "protocol": "dlt645-2007", "address": "1x"})
    assert "m9" in str(exc)


def test_num_text_is_exact():
    assert mt.Num(31776, 2).text() == "317.76"
    assert mt.Num(-5, 3).text() == "-0.005"
    assert mt.Num(1234567890, 2).text() == "12345678.90"
    assert mt.Num(221, 0).text() == "221"


def test_network_task_joins_wifi_then_sets_the_clock():
    rt, hal, lines = _runtime({"wifi": {"ssid": "site-3", "password": "pw"}})
    calls = []
    state = {"polls": 0}

    def network_up():
        state["polls"] += 1
        return state["polls"] > 2  # joined on the third look

    hal.network_up = network_up
    hal.network_connect = lambda wifi: calls.append(("connect", wifi["ssid"]))
    hal.sync_time = lambda: calls.append(("ntp",)) or True

    async def main():
        import asyncio

        task = asyncio.create_task(rt.network_task({"ssid": "site-3", "password": "pw"}))
        await rtm.sleep_ms(2600)
        rt.stop()
        task.cancel()

    _arun(main())
    assert calls == [("connect", "site-3"), ("ntp",)]


# -- config over MQTT, the command token, the watchdog -----------------------------

GOOD_CFG = {"device_id": "gw-test", "poll_interval_s": 30, "mqtt": {"url": "mqtt://h:1", "user": "gw-test", "password": "pw"},
            "meters": [{"id": "m1", "protocol": "dlt645-2007", "address": M1}]}


def _files(hal):
    return sorted(n for n in os.listdir(hal.root) if n.startswith("config"))


def _put_config(hal, cfg):
    with open(hal.flash_path("config.json"), "w") as f:
        f.write(json.dumps(cfg))


def test_config_get_redacts_secrets_and_put_refuses_an_invalid_config():
    mq = FakeMqtt()
    mq.connected = True
    cfg = dict(GOOD_CFG, wifi={"ssid": "s", "password": "wifi-secret"})
    rt, hal, _ = _runtime(cfg, mqtt=mq)
    got = rt.config_get()
    assert got["config"]["mqtt"]["password"] == "***" and got["config"]["wifi"]["password"] == "***"
    assert got["config"]["wifi"]["ssid"] == "s" and "wifi-secret" not in json.dumps(got)
    _put_config(hal, GOOD_CFG)
    bad = dict(GOOD_CFG, meters=[{"id": "m1", "protocol": "dlt645-2007", "address": "12x"}])
    _arun(rt.on_message(rt.base + "/cmd/config_put", json.dumps({"id": "p1", "config": bad}).encode()))
    reply = [json.loads(p[1]) for p in mq.published if p[0].endswith("/reply/config_put")][0]
    assert reply["ok"] is False and "invalid config" in reply["error"] and "meters[0].address" in reply["error"]
    assert _files(hal) == ["config.json"] and hal.resets == 0  # nothing changed


def test_config_put_is_confirmed_when_the_broker_is_reached():
    mq = FakeMqtt()
    mq.connected = True
    rt, hal, _ = _runtime(GOOD_CFG, mqtt=mq)
    _put_config(hal, GOOD_CFG)
    new = dict(GOOD_CFG, poll_interval_s=60)
    rt.config_put(new)
    assert _files(hal) == ["config.json", "config.prev.json", "config.trial"]
    # the board reboots into it: a new runtime on the same flash, on probation
    rt2 = rtm.Runtime(hal, new, mqtt_factory=lambda mq_cfg: mq, out=[].append)
    assert rt2.trial is not None
    _arun(rt2.trial_task())
    assert _files(hal) == ["config.json"] and hal.resets == 0
    with open(hal.flash_path("config.json")) as f:
        assert json.load(f)["poll_interval_s"] == 60


def test_config_put_rolls_back_when_the_broker_is_not_reached_in_time():
    mq = FakeMqtt()  # never connects
    rt, hal, _ = _runtime(GOOD_CFG, mqtt=mq)
    _put_config(hal, GOOD_CFG)
    rt.config_put(dict(GOOD_CFG, mqtt={"url": "mqtt://nowhere:1"}, config_confirm_s=10))
    rt2 = rtm.Runtime(hal, dict(GOOD_CFG, mqtt={"url": "mqtt://nowhere:1"}), mqtt_factory=lambda c: mq,
                      out=[].append)
    rt2.trial["confirm_s"] = 0.3  # not 10 s in a unit test
    _arun(rt2.trial_task())
    assert hal.resets == 1
    with open(hal.flash_path("config.json")) as f:
        assert json.load(f) == GOOD_CFG  # the old one is back...
    with open(hal.flash_path("config.good.json")) as f:
        assert json.load(f) == GOOD_CFG  # ...and is the good one again
    assert _files(hal) == ["config.good.json", "config.json"]


def test_config_put_rolls_back_after_two_boots_that_never_confirm():
    rt, hal, _ = _runtime(GOOD_CFG)
    _put_config(hal, GOOD_CFG)
    rt.config_put(dict(GOOD_CFG, poll_interval_s=45))
    with open(hal.flash_path("config.trial"), "w") as f:
        f.write(json.dumps({"boots": 2, "confirm_s": 120}))  # it crashed twice before confirming
    rt2 = rtm.Runtime(hal, GOOD_CFG, out=[].append)
    _arun(rt2.trial_task())
    assert hal.resets == 1 and _files(hal) == ["config.good.json", "config.json"]


def test_commands_need_the_token_when_one_is_configured():
    mq = FakeMqtt()
    mq.connected = True
    rt, hal, _ = _runtime(dict(GOOD_CFG, command_token="s3cret-token"), mqtt=mq)
    _arun(rt.on_message(rt.base + "/cmd/reboot", b'{"id": "x"}'))
    _arun(rt.on_message(rt.base + "/cmd/health", b'{"id": "y", "token": "s3cret-token"}'))
    replies = [json.loads(p[1]) for p in mq.published if "/reply/" in p[0]]
    assert replies[0]["ok"] is False and "unauthorised" in replies[0]["error"]
    assert replies[1]["ok"] is True and hal.resets == 0


def test_watchdog_is_fed_only_while_the_bus_task_makes_progress():
    rt, hal, _ = _runtime(GOOD_CFG)
    assert rt.healthy()
    rt.wdt_stale_ms = 200

    async def wait():
        await rtm.sleep_ms(300)

    _arun(wait())
    assert not rt.healthy()  # neither the bus loop nor the link did anything for 300 ms
    rt.bus_beat = rtm.ticks_ms()
    assert rt.healthy()
