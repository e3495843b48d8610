# The gateway's main job, as asyncio tasks (docs/runtime.md, docs/mqtt.md):
#
#   bus task    the only task that touches the RS-485 bus: poll groups when
#               they are due, meter clock checks and broadcast time sync, and
#               jobs that commands queue. One transaction at a time by design.
#   publisher   readings leave the spool oldest-unsent-first: records written
#               since the last round go out at once (live), the backlog after
#               an outage is replayed at a paced rate so live data keeps flowing.
#               A record leaves the spool only when the broker acknowledged it.
#   health      a retained health message every health_interval_s.
#   mqtt        the client's own loop (connect, keepalive, reconnect, resend).
#
# Every reading is written to the spool (with its per-gateway seq) before it
# is published. No value is ever published that was not read: a failed read is
# published as its error with quality "comm_error".
import gc
import io
import json
from array import array

from gateway import VERSION
from gateway import jsonout
from gateway import link as lk
from gateway import meters as mt
from gateway.compat import const, sleep_ms, ticks_add, ticks_diff, ticks_ms, wait_for_ms
from gateway.protocols import dlt645
from gateway.spool import Spool

try:
    import asyncio
except ImportError:  # pragma: no cover - every port we run on has it
    import uasyncio as asyncio

HEALTH_INTERVAL_S = 60
HEALTH_BASE_BYTES = 1024
HEALTH_METER_BYTES = 192  # a meter's entry is about 170 bytes; a longer message grows the buffer once
CLOCK_CHECK_S = 3600
CLOCK_FIRST_S = 15  # first clock check this long after boot
MAX_DRIFT_S = 60
TZ_OFFSET_S = 28800  # meters keep Beijing time (UTC+8)
SYNC_LIMIT_S = 300  # many meters refuse a broadcast correction above 5 min (unverified)
REPLAY_PER_S = 20
REPLAY_BATCH = const(4)  # backlog records read from the spool at a time
RESET_HISTORY = 16
BOOT_FILE = "boot.json"
CONFIG_FILE = "config.json"
CONFIG_PREV = "config.prev.json"  # what config_put replaced, until the new one is confirmed
CONFIG_TRIAL = "config.trial"  # a config_put on probation: {"boots": n, "confirm_s": s}
CONFIG_GOOD = "config.good.json"
WDT_STALE_MS = 25000  # the bus has done nothing this long: stop feeding the watchdog
SECRET_KEYS = ("password", "key", "command_token")


class Unauthorised(Exception):
    pass


def log(msg):
    print("[app] " + msg)


def _q(text):
    return json.dumps(text)


def _num(v):
    if isinstance(v, mt.Num):
        return v.text()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = "%.7g" % v  # Modbus float32: 7 significant digits
    return "null" if s in ("nan", "inf", "-inf") else s


def _console_writer():
    """A bytes writer for the console (no str copy of each reading), or None."""
    import sys

    buf = getattr(sys.stdout, "buffer", None)
    return buf.write if buf is not None and hasattr(buf, "write") else None


_UNUSED = const(-2)  # a schedule entry no meter uses


def _schedule_room(cfg, clock_check_ms):
    """Schedule entries the config's meters can need (a bad entry is skipped later)."""
    entries = cfg.get("meters")
    n = 0
    for e in entries if isinstance(entries, list) else ():
        if isinstance(e, dict):
            g = e.get("groups")
            n += len(g) if isinstance(g, list) and g else 1
            if e.get("protocol") != "modbus" and clock_check_ms > 0:
                n += 1
    return n


class _BufferSink(io.IOBase):
    """A stream json.dump writes into: a preallocated bytearray (ValueError when full).
    An io.IOBase: MicroPython's json.dump takes only objects with the stream protocol."""

    def __init__(self, buf):
        self.buf = buf
        self.n = 0

    def write(self, s):
        b = s.encode() if isinstance(s, str) else s
        n = self.n
        k = len(b)
        if n + k > len(self.buf):
            raise ValueError("health larger than its buffer")
        self.buf[n:n + k] = b
        self.n = n + k
        return k


class _CountSink(io.IOBase):
    """A stream that only counts what would be written."""

    def __init__(self):
        self.n = 0

    def write(self, s):
        k = len(s.encode()) if isinstance(s, str) else len(s)
        self.n += k
        return k


class _ConsoleSink(io.IOBase):
    """A stream json.dump writes to the console through, piece by piece."""

    def __init__(self, console):
        self.console = console

    def write(self, s):
        b = s.encode() if isinstance(s, str) else s
        self.console(b)
        return len(b)


def _section(cfg, key):
    v = cfg.get(key)
    return v if isinstance(v, dict) else {}


class Runtime:
    """Wires the HAL, the meters, the spool and MQTT together (see the top)."""

    def __init__(self, hal, config, config_errors=(), config_source="config.json", mqtt_factory=None, out=None,
                 own_config=False):
        self.hal = hal
        self.out = out or print
        self._console = None if out is not None else _console_writer()
        cfg = config if isinstance(config, dict) else {}
        self.cfg = cfg
        self.config_errors = list(config_errors or ())
        self.config_source = config_source
        self.device = hal.device_id()
        mq = _section(cfg, "mqtt")
        self.base = (mq.get("topic_prefix") or "metergate") + "/v1/" + self.device
        self.reading_topic = (self.base + "/reading").encode()  # made once: no string built per publish
        self.reading_head = jsonout.device_head(self.device)
        self.qos = 1 if mq.get("qos", 1) else 0
        self.replay_per_s = int(mq.get("replay_per_s", REPLAY_PER_S))
        self.health_interval_ms = int(cfg.get("health_interval_s", HEALTH_INTERVAL_S) * 1000)
        clock = _section(cfg, "clock")
        self.clock_check_ms = int(clock.get("check_interval_s", CLOCK_CHECK_S) * 1000)
        self.max_drift_s = clock.get("max_drift_s", MAX_DRIFT_S)
        self.clock_sync = clock.get("sync", True)
        self.tz_offset_s = clock.get("tz_offset_s", TZ_OFFSET_S)
        # the long-lived buffers first (reading writer, link, spool, MQTT client), before the
        # meters' many small objects can fragment the heap (a 4 KB block must still be free)
        self.writer = jsonout.Writer()
        link_cfg = _section(cfg, "link")
        self.link = lk.Link(hal.uart(), hal.ticks_ms, hal.sleep_ms, echo=bool(link_cfg.get("echo", False)))
        sp = _section(cfg, "spool")
        self.spool = Spool(hal.flash_path("spool"), max_bytes=sp.get("max_bytes", 131072),
                           segments=sp.get("segments", 8), max_record=sp.get("max_record", 2048))
        self.boot_count, self.resets = self._count_boot()
        # schedule: four ints an entry (due tick, meter index, group index (-1: clock
        # check), interval ms) in one array (64 entries are 1 KB, not 6 KB of small
        # lists), made now for as many entries as the config can need: a block of
        # this size may be gone once the meters are built
        self.schedule = array("i", bytes(16 * _schedule_room(cfg, self.clock_check_ms)))
        # a health message is ~170 bytes a meter: written into a buffer made now, not a
        # fresh string of several KB each time (that needs a free block that large)
        n_meters = len(cfg.get("meters") or ()) if isinstance(cfg.get("meters"), list) else 0
        self._health_buf = bytearray(HEALTH_BASE_BYTES + HEALTH_METER_BYTES * n_meters)
        self._health_pid = None
        self.mqtt = None
        if mq.get("url"):
            try:
                self.mqtt = (mqtt_factory or self._make_mqtt)(mq)
            except Exception as exc:  # noqa: BLE001 - a bad broker setting must not stop the polling
                log("mqtt: not started: %r" % (exc,))
                self.config_errors.append(("mqtt", "cannot start the client: %s" % exc))
        self.meters = self._build_meters(cfg)
        # the parsed meter list is the largest part of a config (about 1 KB a meter on
        # an ESP32): the meters are built, let it go (config_get reads the file).
        # own_config (the board's own dict, app.run): trimmed in place, so no caller's
        # frame keeps the list alive
        if not own_config:
            cfg = dict(cfg)
        cfg.pop("meters", None)
        gc.collect()
        self.cfg = cfg
        if getattr(hal, "config", None) is not None:
            hal.config = cfg
        self.started = ticks_ms()
        sch = self.schedule
        now = ticks_ms()
        j = 0
        for k in range(len(self.meters)):
            m = self.meters[k]
            for g in range(len(m.groups)):
                sch[j], sch[j + 1], sch[j + 2], sch[j + 3] = now, k, g, m.groups[g][2]
                j += 4
            if isinstance(m, mt.DltMeter) and self.clock_check_ms > 0:
                sch[j], sch[j + 1], sch[j + 2], sch[j + 3] = ticks_add(now, CLOCK_FIRST_S * 1000), k, -1, \
                    self.clock_check_ms
                j += 4
        while j < len(sch):  # room for entries a skipped (bad) meter would have had
            sch[j + 2] = _UNUSED
            j += 4
        self.jobs = []  # coroutine functions queued by commands, run by the bus task
        self.bus_wake = asyncio.Event()
        self.pub_wake = asyncio.Event()
        self.live = []  # seqs written since the publisher last ran
        self.sent = {}  # seq -> pid: published, not yet acknowledged
        self.pid_seq = {}
        self.cursor = 0  # the backlog replay has looked at every seq up to here
        self._window = ticks_ms()  # replay pacing: records replayed in the current second
        self._window_n = 0
        self.overruns = 0  # polls that started later than one interval after their due time
        self.busy_ms = 0  # time the bus task spent in transactions
        self.syncs = 0
        self.stopping = False
        self.bus_beat = ticks_ms()
        self.wdt_stale_ms = WDT_STALE_MS
        self.token = cfg.get("command_token")
        self.trial = self._read_trial()
        self.selfcheck_runs = 0
        self.correspondence = None  # the guided breaker test under way (selfcheck.run.Correspondence)
        self.confirm_ms = int(cfg.get("config_confirm_s", 120) * 1000)

    # -- setup ---------------------------------------------------------------
    def _build_meters(self, cfg):
        defaults = dict(_section(cfg, "link"))
        defaults["poll_interval_s"] = cfg.get("poll_interval_s", mt.DEFAULT_INTERVAL_S)
        out = []
        entries = cfg.get("meters", [])
        if not isinstance(entries, list):
            entries = []
        seen = []
        for k in range(len(entries)):
            entry = entries[k]
            mid = entry.get("id") if isinstance(entry, dict) else None
            try:
                if mid in seen:
                    raise mt.ConfigError("%s: duplicate meter id" % mid)
                m = mt.build(entry, defaults)
            except MemoryError:
                raise  # not the entry's fault: main.py reports it and restarts
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the others
                log("meter %s: bad config, skipped: %s" % (mid if mid else "#%d" % k, exc))
                self.config_errors.append(("meters[%d]" % k, str(exc)))
                continue
            seen.append(m.id)
            if m.out is None:  # the first meter of its profile
                m.profile.out = [jsonout.group_out(g[0], g[1], m.item_units) for g in m.groups]
            out.append(m)
        mt.forget_profiles()
        return out

    def _make_mqtt(self, mq):
        from gateway import mqtt

        url = mqtt.parse_url(mq["url"])
        ssl = None
        if url["ssl"]:
            ssl = {"server_hostname": url["host"], "verify": mq.get("verify", True)}
            for key in ("ca", "cert", "key"):
                if mq.get(key):
                    with open(self.hal.flash_path(mq[key]), "rb") as f:
                        ssl[key] = f.read()
        will = (self.base + "/status", self._status_json("offline"), 1, True)
        return mqtt.MQTTClient(mq.get("client_id") or self.device, url["host"], url["port"],
                               user=mq.get("user") or url["user"], password=mq.get("password") or url["password"],
                               keepalive=mq.get("keepalive_s", 60), clean_session=False, will=will, ssl=ssl,
                               on_message=self.on_message, on_ack=self.on_ack, on_connect=self.on_connect,
                               on_disconnect=self.on_disconnect)

    def _count_boot(self):
        path = self.hal.flash_path(BOOT_FILE)
        boots, resets = 0, []
        try:
            with open(path) as f:
                d = json.load(f)
            boots = int(d.get("boots", 0))
            resets = list(d.get("resets", []))[-(RESET_HISTORY - 1):]
        except Exception:  # noqa: BLE001 - missing or damaged: start counting again
            pass
        boots += 1
        resets.append(self.hal.reset_cause())
        try:
            import os

            with open(path + ".tmp", "w") as f:
                json.dump({"boots": boots, "resets": resets}, f)
            os.rename(path + ".tmp", path)
        except OSError as exc:
            log("cannot record the boot: %r" % (exc,))
        return boots, resets

    # -- the bus task ----------------------------------------------------------
    def _next_due(self):
        """Index in self.schedule of the entry due first, or -1."""
        sch = self.schedule
        best = -1
        now = ticks_ms()
        for j in range(0, len(sch), 4):
            if sch[j + 2] == _UNUSED:
                continue
            if best < 0 or ticks_diff(sch[j], now) < ticks_diff(sch[best], now):
                best = j
        return best

    async def bus_task(self):
        sch = self.schedule
        while not self.stopping:
            self.bus_beat = ticks_ms()
            if self.jobs:
                job = self.jobs.pop(0)
                try:
                    await job()
                except Exception as exc:  # noqa: BLE001
                    log("bus job failed: %r" % (exc,))
                continue
            j = self._next_due()
            if j < 0:
                await self._idle(1000)
                continue
            wait = ticks_diff(sch[j], ticks_ms())
            if wait > 0:
                await self._idle(wait if wait < 1000 else 1000)
                continue
            late = -wait
            interval = sch[j + 3]
            if late > interval:
                self.overruns += 1
                sch[j] = ticks_add(ticks_ms(), interval)  # the schedule slipped: restart from now
            else:
                sch[j] = ticks_add(sch[j], interval)
            m = self.meters[sch[j + 1]]
            g = sch[j + 2]
            t0 = ticks_ms()
            try:
                if g < 0:
                    await self.check_clock(m)
                else:
                    await self.poll_group(m, g)
            except Exception as exc:  # noqa: BLE001 - the bus task must outlive anything one job does
                log("meter %s: %s failed: %r" % (m.id, "clock check" if g < 0 else "poll", exc))
            self.busy_ms += ticks_diff(ticks_ms(), t0)

    async def _idle(self, ms):
        self.bus_wake.clear()
        try:
            await wait_for_ms(self.bus_wake.wait(), ms)
        except asyncio.TimeoutError:
            pass

    def queue_job(self, job):
        self.jobs.append(job)
        self.bus_wake.set()

    async def poll_group(self, m, g):
        try:
            values, errors = await m.poll(self.link, g)
        except Exception as exc:  # noqa: BLE001 - a meter's failure must not stop the others
            log("meter %s: poll failed: %r" % (m.id, exc))
            values, errors = {}, {"*": "internal:" + type(exc).__name__}
        ts = self.hal.time()
        judged = m.judge(values)
        name, items, _iv = m.groups[g]
        for item in items:
            if item in errors:
                m.last_error = item + ": " + errors[item]
                break
        if "*" in errors:
            m.last_error = errors["*"]
        self.record(m, g, ts, judged, errors)
        return judged, errors

    def record(self, m, g, ts, judged, errors):
        """Spool first, then hand to the publisher; the console gets a copy."""
        seq = self.spool.next_seq
        try:
            payload = self.writer.reading(self.reading_head, m.id, m.out[g], seq, ts, judged, errors, _num)
        except ValueError as exc:  # more than the buffer holds: too many items in one group
            log("meter %s: reading not written: %s" % (m.id, exc))
            return
        try:
            got = self.spool.append(payload, ts)
        except Exception as exc:  # noqa: BLE001 - a full or failing flash must not stop the polling
            log("spool: reading of %s not stored: %r" % (m.id, exc))
            got = None
        self.out_reading(payload)
        if got is not None and self.mqtt is not None and self.mqtt.connected:
            self.live.append(got)  # otherwise it waits for the backlog replay
            self.pub_wake.set()

    def out_reading(self, payload):
        if self._console is not None:
            self._console(b"READING ")
            self._console(payload)
            self._console(b"\n")
        else:
            self.out("READING " + bytes(payload).decode())

    async def check_clock(self, m):
        """Read the meter's clock; broadcast a time sync when it drifted too far."""
        before = self.hal.time()
        meter_t, reason = await m.read_clock(self.link, self.tz_offset_s)
        if meter_t is None:
            m.clock_error = reason
            return None
        m.clock_error = None
        drift = meter_t - (before + self.hal.time()) // 2
        m.clock_drift_s = drift
        if abs(drift) > self.max_drift_s and self.clock_sync:
            if abs(drift) > SYNC_LIMIT_S:
                log("meter %s: clock off by %d s; broadcast sync may be refused above %d s" % (
                    m.id, drift, SYNC_LIMIT_S))
            await self.time_sync(m)
        return drift

    async def time_sync(self, m=None):
        """Broadcast the gateway's time (meters' local time) on the line of `m`
        (every DL/T 645 line in use when None). Meters never answer it."""
        lines = []
        for x in self.meters if m is None else [m]:
            if isinstance(x, mt.DltMeter) and x.line not in lines:
                lines.append(x.line)
        for line in lines:
            self.link.configure(line[0], line[1], line[2], line[3])
            when = mt.epoch_to_civil(self.hal.time() + self.tz_offset_s)
            await self.link.send_async(dlt645.build_time_sync(when))
            self.syncs += 1
        log("time sync broadcast on %d line(s)" % len(lines))

    # -- publishing ------------------------------------------------------------
    async def publisher(self):
        while not self.stopping:
            try:
                await wait_for_ms(self.pub_wake.wait(), 1000)
            except asyncio.TimeoutError:
                pass
            self.pub_wake.clear()
            client = self.mqtt
            if client is None or not client.connected:
                self.live = []  # they wait in the spool; the backlog replay takes them
                continue
            try:
                while self.live:
                    seq = self.live.pop(0)
                    if seq not in self.sent:
                        await self._publish_seq(seq)
                now = ticks_ms()
                if ticks_diff(now, self._window) >= 1000:
                    self._window = now
                    self._window_n = 0
                budget = self.replay_per_s - self._window_n  # the backlog's share of each second
                while budget > 0 and client.connected:
                    # a few at a time: each is a copy held until the broker acknowledges it,
                    # and a second's worth at once is several KB of heap
                    recs = self.spool.peek(budget if budget < REPLAY_BATCH else REPLAY_BATCH, after=self.cursor)
                    if not recs:
                        break
                    for seq, _ts, payload in recs:
                        self.cursor = seq
                        if seq in self.sent:
                            continue
                        await self._publish(seq, payload)
                        budget -= 1
                        self._window_n += 1
            except Exception as exc:  # noqa: BLE001 - the connection broke mid-way: the spool keeps them
                log("publish: %r" % (exc,))

    async def _publish_seq(self, seq):
        recs = self.spool.peek(1, after=seq - 1)
        if recs and recs[0][0] == seq:
            await self._publish(seq, recs[0][2])

    async def _publish(self, seq, payload):
        pid = await self.mqtt.publish(self.reading_topic, payload, qos=self.qos)
        if self.qos == 0 or not pid:
            self.spool.ack(seq)  # QoS 0: handed over is all we will ever know
            return
        self.sent[seq] = pid
        self.pid_seq[pid] = seq

    def on_ack(self, pid):
        seq = self.pid_seq.pop(pid, None)
        if seq is not None:
            self.sent.pop(seq, None)
            self.spool.ack(seq)

    async def on_connect(self, session_present=False):
        log("mqtt: connected to the broker")
        self.sent = {}
        self.pid_seq = {}
        self.cursor = 0  # replay every unacknowledged record (duplicates carry their seq)
        client = self.mqtt
        await client.subscribe(self.base + "/cmd/+", 1)
        await client.publish(self.base + "/status", self._status_json("online"), qos=1, retain=True)
        if self.config_errors:
            await client.publish(self.base + "/config_error", self._config_error_json(), qos=1, retain=True)
        else:
            await client.publish(self.base + "/config_error", b"", qos=1, retain=True)  # clears an old one
        await self.publish_health()
        self.pub_wake.set()

    def on_disconnect(self, reason=None):
        log("mqtt: disconnected (%s)" % (reason,))

    def _status_json(self, state):
        return json.dumps({"device": self.device, "state": state, "fw": VERSION,
                           "boot_count": self.boot_count}).encode()

    def _config_error_json(self):
        return json.dumps({"device": self.device, "source": self.config_source,
                           "errors": [{"path": p, "reason": r} for p, r in self.config_errors]}).encode()

    # -- health ----------------------------------------------------------------
    def _meter_health(self, m):
        c = m.stats
        d = lk.counters(c)
        done = lk.finished(c)
        d["success"] = round(c[lk.VALID] / done, 4) if done else None
        d["latency_ms"] = lk.latency_ms(c)
        d["clock_drift_s"] = m.clock_drift_s
        d["last_error"] = m.last_error
        if isinstance(m, mt.DltMeter) and m.no_block:
            d["no_block"] = ["%08X" % b if m.version == 2007 else "%04X" % b for b in m.no_block]
        return d

    def _collectors(self):
        collectors = {}
        for m in self.meters:
            col = getattr(m, "collector", None)
            if col:
                c = m.stats
                s = collectors.setdefault(col, {"meters": 0, "sent": 0, "valid": 0, "done": 0})
                s["meters"] += 1
                s["sent"] += c[lk.SENT]
                s["valid"] += c[lk.VALID]
                s["done"] += lk.finished(c)
        for col in collectors:
            s = collectors[col]
            s["success"] = round(s["valid"] / s["done"], 4) if s["done"] else None
            del s["done"]
        return collectors

    def _health_top(self):
        """The health message but its meters and collectors."""
        up_ms = ticks_diff(ticks_ms(), self.started)
        heap = {"free": None, "alloc": None}
        try:
            gc.collect()  # live objects, not garbage waiting for the next collection
            heap = {"free": gc.mem_free(), "alloc": gc.mem_alloc()}
        except AttributeError:  # CPython
            pass
        rssi = None
        get_rssi = getattr(self.hal, "wifi_rssi", None)
        if get_rssi is not None:
            try:
                rssi = get_rssi()
            except Exception:  # noqa: BLE001
                rssi = None
        mq = None
        if self.mqtt is not None:
            st = self.mqtt.stats
            mq = {"connected": self.mqtt.connected, "connects": st.get("connects", 0),
                  "disconnects": st.get("disconnects", 0)}
        return {"device": self.device, "fw": VERSION, "ts": self.hal.time(), "uptime_s": up_ms // 1000,
                "boot_count": self.boot_count, "reset_cause": self.resets[-1] if self.resets else None,
                "resets": self.resets, "heap": heap, "rssi": rssi,
                "config": {"source": self.config_source, "errors": len(self.config_errors)},
                "spool": {"depth": self.spool.depth, "dropped": self.spool.dropped,
                          "bytes": self.spool.used_bytes(), "next_seq": self.spool.next_seq,
                          "unacked_sent": len(self.sent)},
                "mqtt": mq,
                "bus": {"idle_junk": self.link.idle_junk, "overruns": self.overruns,
                        "busy": round(self.busy_ms / up_ms, 3) if up_ms > 0 else None, "time_syncs": self.syncs}}

    def health(self):
        """The health message as a dict (docs/mqtt.md)."""
        h = self._health_top()
        h["meters"] = {m.id: self._meter_health(m) for m in self.meters}
        h["collectors"] = self._collectors()
        return h

    def write_health(self, sink):
        """health() as JSON into sink, one meter at a time: the message is never a
        whole dict in the heap (about 300 bytes a meter on the unix port)."""
        sink.write('{"meters":{')
        first = True
        for m in self.meters:
            if not first:
                sink.write(",")
            first = False
            json.dump(m.id, sink)
            sink.write(":")
            json.dump(self._meter_health(m), sink)
        sink.write('},"collectors":')
        json.dump(self._collectors(), sink)
        top = self._health_top()
        for k in top:
            sink.write(",")
            json.dump(k, sink)
            sink.write(":")
            json.dump(top[k], sink)
        top = None
        sink.write("}")

    async def publish_health(self):
        client = self.mqtt
        # the health buffer is reused: never while the client may still resend the last one
        busy = client is not None and self._health_pid is not None and self._health_pid in client.inflight
        text = None
        if not busy:
            text = self._health_into_buffer()
        if text is not None or self._console is None:
            if text is None:
                text = json.dumps(self.health()).encode()
            self._print_health(text)
        else:  # the console only, streamed: no block of several KB needed
            self._console(b"HEALTH ")
            self.write_health(_ConsoleSink(self._console))
            self._console(b"\n")
        if client is not None and client.connected:
            if busy or text is None:
                log("health: the last one is not acknowledged yet, not sent again")
                return
            try:
                self._health_pid = await client.publish(self.base + "/health", text, qos=1, retain=True)
            except ValueError as exc:  # too large for the client: say so, keep the connection
                log("health not published: %s" % exc)

    def _health_into_buffer(self):
        """The health message written into the preallocated buffer (a memoryview of it);
        a larger buffer is made once when it has outgrown it (long error reasons, big
        counters); None when that cannot be had."""
        sink = _BufferSink(self._health_buf)
        try:
            self.write_health(sink)
            return memoryview(self._health_buf)[:sink.n]
        except ValueError:
            pass
        count = _CountSink()
        self.write_health(count)
        try:
            self._health_buf = None
            self._health_buf = bytearray(count.n + count.n // 8)
        except MemoryError:
            self._health_buf = bytearray(0)  # tried again at the next health
            log("health: no room for a buffer of %d bytes" % count.n)
            return None
        sink = _BufferSink(self._health_buf)
        try:
            self.write_health(sink)
        except ValueError:
            return None
        return memoryview(self._health_buf)[:sink.n]

    def _print_health(self, text):
        if self._console is not None:
            self._console(b"HEALTH ")
            self._console(text)
            self._console(b"\n")
        else:
            self.out("HEALTH " + bytes(text).decode())

    async def health_task(self):
        while not self.stopping:
            await sleep_ms(self.health_interval_ms)
            try:
                await self.publish_health()
            except Exception as exc:  # noqa: BLE001
                log("health: %r" % (exc,))

    # -- commands --------------------------------------------------------------
    async def on_message(self, topic, payload, retained=False):
        if retained:
            return  # a command is an event: an old retained one must not run again at every connect
        name = topic.rsplit("/", 1)[-1]
        try:
            req = json.loads(payload) if payload else {}
            if not isinstance(req, dict):
                raise ValueError("a command is a JSON object")
        except ValueError as exc:
            await self._reply(name, None, False, "bad command payload: %s" % exc)
            return
        rid = req.get("id")
        try:
            result = await self.command(name, req)
        except Exception as exc:  # noqa: BLE001 - a bad command gets an error reply, never a crash
            await self._reply(name, rid, False, "%s: %s" % (type(exc).__name__, exc))
            return
        await self._reply(name, rid, True, None, result)

    async def command(self, name, req):
        if self.token is not None and req.get("token") != self.token:
            raise Unauthorised("unauthorised: this gateway needs the command token")
        if name == "config_get":
            return self.config_get()
        if name == "config_put":
            self.config_put(req.get("config"))

            async def later():
                await sleep_ms(500)  # let the reply leave first
                self.hal.reset()

            asyncio.create_task(later())
            return {"rebooting": True, "confirm_s": req["config"].get("config_confirm_s", 120)}
        if name == "poll":
            wanted = req.get("meter")
            n = 0
            sch = self.schedule
            for j in range(0, len(sch), 4):
                if sch[j + 2] >= 0 and (wanted is None or self.meters[sch[j + 1]].id == wanted):
                    sch[j] = ticks_ms()
                    n += 1
            if wanted is not None and n == 0:
                raise ValueError("no meter %r" % (wanted,))
            self.bus_wake.set()
            return {"queued": n}
        if name == "time_sync":
            self.queue_job(self.time_sync)
            return {"queued": 1}
        if name == "health":
            await self.publish_health()
            return None
        if name == "reboot":
            async def later():
                await sleep_ms(500)
                self.hal.reset()

            asyncio.create_task(later())
            return None
        if name == "selfcheck":
            mode = req.get("mode", "full")
            if mode not in ("full", "commissioning"):
                raise ValueError("mode must be full or commissioning, got %r" % (mode,))
            wanted = req.get("meter")
            if wanted is not None and wanted not in [m.id for m in self.meters]:
                raise ValueError("no meter %r" % (wanted,))
            return {"run": self.start_selfcheck(mode, wanted), "started": True}
        if name == "breaker":
            return await self.breaker(req)
        raise ValueError("unknown command %r (poll, time_sync, health, reboot, config_get, config_put, selfcheck, "
                         "breaker)" % name)

    # -- self-check (gateway/selfcheck/run.py; docs/selfcheck.md) ---------------------
    def start_selfcheck(self, mode, meter=None):
        """Queue a self-check on the bus; returns its run number (the report's `run`)."""
        run = self._next_run()

        async def job():
            await self._selfcheck(mode, meter, run)

        self.queue_job(job)
        return run

    def _next_run(self):
        """A run number unique across reboots: boot count x 1000 + the runs of this boot."""
        self.selfcheck_runs += 1
        return self.boot_count * 1000 + self.selfcheck_runs

    def _selfcheck_context(self, run):
        from gateway.selfcheck import run as sc

        def beat():
            self.bus_beat = ticks_ms()

        ctx = sc.Context(self.hal, self.link, self.meters, self.cfg, self.device, self.resets,
                         self._progress, beat)
        ctx.run = run
        return sc, ctx

    async def _selfcheck(self, mode, meter, run):
        sc, ctx = self._selfcheck_context(run)
        try:
            rep = await sc.check(ctx, mode, meter)
        finally:
            gc.collect()
        await self._publish_selfcheck(sc, rep)
        self.hal.wdt_feed()

    async def _publish_selfcheck(self, sc, rep):
        try:
            sc.store(self.hal, rep)
        except OSError as exc:
            log("selfcheck: report not stored: %r" % (exc,))
        text = json.dumps(rep)
        rep = None
        self.out("SELFCHECK " + text)
        await sleep_ms(50)  # the last progress messages (tasks of their own) leave before the report
        if self.mqtt is not None and self.mqtt.connected:
            await self.mqtt.publish(self.base + "/selfcheck", text.encode(), qos=1, retain=True)

    def _progress(self, p):
        text = json.dumps(p)
        self.out("PROGRESS " + text)
        client = self.mqtt
        if client is not None and client.connected:
            async def send():
                try:
                    await client.publish(self.base + "/progress", text.encode(), qos=0)
                except Exception:  # noqa: BLE001 - progress is best effort
                    pass

            asyncio.create_task(send())

    async def on_bus(self, fn):
        """Run the coroutine function fn as a bus job and return its result (or raise its error)."""
        done = asyncio.Event()
        box = [None, None]

        async def job():
            try:
                box[0] = await fn()
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                box[1] = exc
            done.set()

        self.queue_job(job)
        await done.wait()
        if box[1] is not None:
            raise box[1]
        return box[0]

    async def breaker(self, req):
        """The guided breaker test, one step a command (docs/selfcheck.md)."""
        step = req.get("step")
        if step not in ("baseline", "off", "done"):
            raise ValueError("step must be baseline, off or done, got %r" % (step,))
        sc, ctx = self._selfcheck_context(self.selfcheck_runs)
        if self.correspondence is None or step == "baseline":
            self.correspondence = sc.Correspondence()
        corr = self.correspondence
        if step == "baseline":
            return await self.on_bus(lambda: corr.baseline_step(ctx))
        if step == "off":
            pos = req.get("position")
            if isinstance(pos, bool) or not isinstance(pos, int):
                raise ValueError("position must be an integer")
            return await self.on_bus(lambda: corr.off_step(ctx, pos))
        ctx.run = self._next_run()
        rep = sc.report(ctx, "correspondence", self.hal.time(), 0, self.meters, {}, corr.findings)
        rep["steps"] = corr.steps
        self.correspondence = None
        await self._publish_selfcheck(sc, rep)
        return {"run": ctx.run, "findings": len(rep["findings"])}

    async def _reply(self, name, rid, ok, error, result=None):
        msg = {"device": self.device, "command": name, "id": rid, "ok": ok, "ts": self.hal.time()}
        if error is not None:
            msg["error"] = error
        if result is not None:
            msg["result"] = result
        if self.mqtt is not None and self.mqtt.connected:
            await self.mqtt.publish(self.base + "/reply/" + name, json.dumps(msg).encode(), qos=1)

    # -- run -------------------------------------------------------------------
    async def main(self):
        for path, reason in self.config_errors:
            log("config error: %s: %s" % (path, reason))
        ids = " ".join(m.id for m in self.meters)
        log("polling %d meters: %s (device %s, config %s)" % (len(self.meters), ids or "(none)", self.device,
                                                                self.config_source))
        tasks = [asyncio.create_task(self.bus_task()), asyncio.create_task(self.publisher()),
                 asyncio.create_task(self.health_task())]
        if self.mqtt is not None:
            tasks.append(asyncio.create_task(self.mqtt.run()))
        wifi = self.cfg.get("wifi")
        if isinstance(wifi, dict) and getattr(self.hal, "network_connect", None) is not None:
            tasks.append(asyncio.create_task(self.network_task(wifi)))
        if self.trial is not None:
            tasks.append(asyncio.create_task(self.trial_task()))
        if self.commissioning_due():
            log("selfcheck: first boot after provisioning: commissioning check queued")
            self.start_selfcheck("commissioning")
        if self.cfg.get("watchdog", True):
            start = getattr(self.hal, "wdt_start", None)
            if start is not None:
                start()
        try:
            while not self.stopping:
                await sleep_ms(1000)
                if self.healthy():
                    self.hal.wdt_feed()
                else:
                    log("watchdog: the bus task is stuck; not feeding the watchdog")
        finally:
            for t in tasks:
                t.cancel()

    def commissioning_due(self):
        """The config asks for a check at the first boot (provisioning sets it) and
        there is no report on the flash yet."""
        sec = self.cfg.get("selfcheck")
        if not isinstance(sec, dict) or not sec.get("on_first_boot"):
            return False
        try:
            with open(self.hal.flash_path("selfcheck.json")):
                return False
        except OSError:
            return True

    def healthy(self):
        """The loop runs (we are in it) and the bus task made progress lately: it
        went round its loop, or the link sent or heard something (a long poll)."""
        now = ticks_ms()
        age = ticks_diff(now, self.bus_beat)
        last = self.link._last
        if last is not None:
            bus = ticks_diff(now, last)
            if bus < age:
                age = bus
        return age < self.wdt_stale_ms

    # -- config over MQTT ----------------------------------------------------------
    def _read_trial(self):
        try:
            with open(self.hal.flash_path(CONFIG_TRIAL)) as f:
                t = json.load(f)
            return t if isinstance(t, dict) else {"boots": 1}
        except Exception:  # noqa: BLE001 - no trial running
            return None

    def _write(self, name, text):
        import os

        path = self.hal.flash_path(name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        try:
            os.rename(path + ".tmp", path)
        except OSError:  # file systems whose rename does not replace
            try:
                os.remove(path)
            except OSError:
                pass
            os.rename(path + ".tmp", path)

    def _remove(self, name):
        import os

        try:
            os.remove(self.hal.flash_path(name))
        except OSError:
            pass

    def _read(self, name):
        with open(self.hal.flash_path(name)) as f:
            return f.read()

    def config_get(self):
        """The running config with every secret replaced by "***"."""
        def redact(v):
            if isinstance(v, dict):
                return {k: ("***" if k in SECRET_KEYS and v[k] else redact(v[k])) for k in v}
            if isinstance(v, list):
                return [redact(x) for x in v]
            return v

        try:
            running = json.loads(self._read(self.config_source))
        except Exception:  # noqa: BLE001 - defaults (no file), or the file changed under us
            running = self.cfg
        return {"source": self.config_source, "config": redact(running)}

    def config_put(self, new):
        """Validate, store atomically with the old config kept, reboot into it on
        probation; nothing changes when it is invalid."""
        from gateway import config as cf

        if not isinstance(new, dict):
            raise ValueError("'config' must be a JSON object")
        errors = cf.validate(new)
        if errors:
            raise ValueError("invalid config: " + "; ".join("%s: %s" % e for e in errors[:10]))
        try:
            old = self._read(CONFIG_FILE)
        except OSError:
            old = None
        if old is not None:
            self._write(CONFIG_PREV, old)
        # the new config's own confirmation time applies to it
        self._write(CONFIG_TRIAL, json.dumps({"boots": 0, "confirm_s": new.get("config_confirm_s", 120)}))
        self._write(CONFIG_FILE, json.dumps(new))
        log("config: new config stored; rebooting into it on probation")

    def rollback(self, why):
        """Back to the config config_put replaced (and make it the good one again)."""
        log("config: rolling back (%s)" % why)
        try:
            prev = self._read(CONFIG_PREV)
        except OSError:
            prev = None
        if prev is not None:
            self._write(CONFIG_FILE, prev)
            self._write(CONFIG_GOOD, prev)
        self._remove(CONFIG_TRIAL)
        self._remove(CONFIG_PREV)
        self.hal.reset()

    async def trial_task(self):
        """A config_put on probation: confirmed when the broker is reached in time,
        rolled back otherwise (or when it keeps the board from booting twice)."""
        boots = int(self.trial.get("boots", 0)) + 1
        if boots > 2:
            self.rollback("the new config did not get the board to the broker in %d boots" % (boots - 1))
            return
        self._write(CONFIG_TRIAL, json.dumps({"boots": boots, "confirm_s": self.trial.get("confirm_s")}))
        if self.config_source != CONFIG_FILE:
            self.rollback("the new config was not usable (%s)" % self.config_source)
            return
        limit = int(self.trial.get("confirm_s") or self.confirm_ms // 1000) * 1000
        start = ticks_ms()
        while ticks_diff(ticks_ms(), start) < limit:
            if self.mqtt is not None and self.mqtt.connected:
                self._remove(CONFIG_TRIAL)
                self._remove(CONFIG_PREV)
                self.trial = None
                log("config: new config confirmed (broker reached)")
                return
            await sleep_ms(500)
        self.rollback("the broker was not reached within %d s" % (limit // 1000))

    async def network_task(self, wifi):
        """Keep the Wi-Fi joined (the MQTT client retries on its own meanwhile) and
        the clock set from NTP once the network is there, then every 6 h."""
        hal = self.hal
        backoff = 2000
        synced_at = None
        while not self.stopping:
            if not hal.network_up():
                try:
                    hal.network_connect(wifi)
                except Exception as exc:  # noqa: BLE001 - bad radio state: retry later
                    log("wifi: %r" % (exc,))
                for _ in range(20):  # up to 20 s for the association and DHCP
                    await sleep_ms(1000)
                    if hal.network_up():
                        break
                if not hal.network_up():
                    log("wifi: %s not joined; again in %d s" % (wifi.get("ssid"), backoff // 1000))
                    await sleep_ms(backoff)
                    backoff = backoff * 2 if backoff < 60000 else 60000
                    continue
                log("wifi: joined %s" % wifi.get("ssid"))
                backoff = 2000
            sync = getattr(hal, "sync_time", None)
            if sync is not None and (synced_at is None or ticks_diff(ticks_ms(), synced_at) > 6 * 3600000):
                if sync():
                    synced_at = ticks_ms()
                    log("clock set from NTP")
            await sleep_ms(5000)

    def stop(self):
        self.stopping = True
        self.bus_wake.set()
        self.pub_wake.set()
