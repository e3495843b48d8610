# Spool speed under the MicroPython unix port: committed appends a second
# against the peer of the same run, a raw append + flush of the same bytes to a
# plain file (what any durable log must pay at least); replay rate of a
# 10,000-record backlog after a reopen against a raw sequential read; and the
# steady-state cycle (append, read back for publishing, ack) rate.
# Then through MQTT (mqtt_rates, bench/mpy/spool_mqtt.py): the runtime, its
# spool and the gateway's MQTT client under MicroPython publishing to a real
# mosquitto, counted by a paho-mqtt subscriber; peer in the same run: paho-mqtt
# (CPython) publishing the same payloads QoS 1 to the same broker. The replay
# machinery's capacity, the runtime's publisher at replay_per_s 1000, live
# readings in steady state, and what the default pacing (20/s) gives.
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

MPY_SCRIPT = """
import sys, time, os
sys.path.insert(0, %(fw)r)
from gateway.spool import Spool
tmp = %(tmp)r
payload = b'{"meter":"202107072529","di":"0201FF00","v":[220.1,220.2,220.0],"u":"V","q":"good","ts":1700000000}'
N = 2000
BACKLOG = 10000

def us():
    return time.ticks_us()

# raw: header-sized write + payload + flush, no checksum, no bookkeeping
hdr = bytearray(20)
f = open(tmp + "/raw.bin", "ab")
t = us()
for i in range(N):
    f.write(hdr)
    f.write(payload)
    f.flush()
raw = time.ticks_diff(us(), t)
f.close()
# raw read-back of the same file: the peer for replay
buf = bytearray(len(payload))
f = open(tmp + "/raw.bin", "rb")
t = us()
for i in range(N):
    f.readinto(hdr)
    f.readinto(buf)
rawread = time.ticks_diff(us(), t)
f.close()

s = Spool(tmp + "/a", max_bytes=4194304, segments=16, max_record=512)
t = us()
for i in range(N):
    s.append(payload, 1700000000 + i)
app = time.ticks_diff(us(), t)
s.close()

s = Spool(tmp + "/b", max_bytes=4194304, segments=16, max_record=512)
for i in range(BACKLOG):
    s.append(payload, 1700000000 + i)
s.close()
t = us()
s = Spool(tmp + "/b", max_bytes=4194304, segments=16, max_record=512)
opened = time.ticks_diff(us(), t)
assert s.depth == BACKLOG
t = us()
n = 0
last = 0
while True:
    got = s.peek(8, last)
    if not got:
        break
    for seq, ts, data in got:
        s.ack(seq)
        n += 1
    last = got[-1][0]
replay = time.ticks_diff(us(), t)
assert n == BACKLOG and s.depth == 0
s.close()

s = Spool(tmp + "/c", max_bytes=262144, segments=8, max_record=512)
t = us()
for i in range(N):
    q = s.append(payload, 1700000000 + i)
    for seq, ts, mv in s.records(q - 1):
        break
    s.ack(q)
steady = time.ticks_diff(us(), t)
s.close()
print(raw, rawread, app, opened, replay, steady, N, BACKLOG, len(payload))
"""


BACKLOG_MQTT = 10000
REPLAY2_MQTT = 3000
LIVE_MQTT = 5000
PACED_MQTT = 80


class _Counter:
    """paho-mqtt subscriber that stamps every message on the reading topics."""

    def __init__(self, url):
        import paho.mqtt.client as mqtt
        from metergate.bench.broker import parse_mqtt_url

        _, host, port = parse_mqtt_url(url)
        self.got = []  # (monotonic s, topic, payload)
        self.ready = __import__("threading").Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=True,
                        protocol=mqtt.MQTTv311)
        c.on_connect = lambda *a: c.subscribe([("metergate/v1/+/reading", 1), ("peer/reading", 1)])
        c.on_subscribe = lambda *a: self.ready.set()
        c.on_message = lambda cl, ud, msg: self.got.append((time.monotonic(), msg.topic, msg.payload))
        c.connect(host, port, keepalive=60)
        c.loop_start()
        if not self.ready.wait(10):
            raise RuntimeError("subscriber: no SUBACK")
        self.client = c

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def _rate(stamps):
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0


def _paho_peer(url, payloads):
    """CPython paho-mqtt publishing the same payloads QoS 1 (16 in flight, as the gateway's client)."""
    import paho.mqtt.client as mqtt
    from metergate.bench.broker import parse_mqtt_url

    _, host, port = parse_mqtt_url(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-peer", clean_session=True,
                    protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(16)
    c.max_queued_messages_set(0)
    c.connect(host, port, keepalive=60)
    c.loop_start()
    t0 = time.monotonic()
    last = None
    for p in payloads:
        last = c.publish("peer/reading", p, qos=1)
    last.wait_for_publish(60)
    took = time.monotonic() - t0
    c.disconnect()
    c.loop_stop()
    return took


def mqtt_rates():
    """Spool + publisher + MQTT client (MicroPython) -> mosquitto -> paho subscriber."""
    import json

    from metergate.bench.broker import Broker

    bindir = pathlib.Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="mg-spoolmq-") as tmp:
        build = pathlib.Path(tmp) / "fw"
        subprocess.run([str(bindir / "metergate"), "firmware", "build", "--out", str(build)], check=True,
                       capture_output=True)
        # unlimited queue per subscriber: mosquitto drops QoS 1 messages above 1000 queued by default
        with Broker(workdir=pathlib.Path(tmp) / "broker", extra_config=["max_queued_messages 0"]) as broker:
            sub = _Counter(broker.url)
            try:
                out = subprocess.run([str(bindir / "micropython"), str(ROOT / "bench" / "mpy" / "spool_mqtt.py"),
                                      str(build), str(ROOT / "tests" / "firmware"), str(broker.port),
                                      str(BACKLOG_MQTT), str(REPLAY2_MQTT), str(LIVE_MQTT), str(PACED_MQTT)],
                                     capture_output=True, text=True, timeout=300)
                if out.returncode:
                    raise RuntimeError("spool_mqtt.py failed:\n" + out.stdout + out.stderr)
                time.sleep(0.5)
                gw = [g for g in sub.got if g[1] != "peer/reading"]
                payloads = [g[2] for g in gw]
                n_gw = len(sub.got)
                peer_s = _paho_peer(broker.url, payloads[:BACKLOG_MQTT])
                time.sleep(0.5)
                peer = [g[0] for g in sub.got[n_gw:] if g[1] == "peer/reading"]
            finally:
                sub.stop()
    phases = {}
    for line in out.stdout.splitlines():
        f = line.split()
        if f and f[0] == "phase":
            phases[f[1]] = (int(f[2]), int(f[3]) / 1e6)
    # the subscriber's view, phase by phase: readings carry their seq
    seqs = [(t, json.loads(p)["seq"]) for t, _, p in gw]
    order = [s for _, s in seqs]
    uniq = sorted(set(order))
    cuts = {}
    k = 0
    for name, n in (("capacity", phases["capacity"][0]), ("replay1000", REPLAY2_MQTT), ("live", LIVE_MQTT),
                    ("paced", PACED_MQTT)):
        cuts[name] = set(uniq[k:k + n])
        k += n
    at = {name: [t for t, s in seqs if s in cuts[name]] for name in cuts}
    size = statistics.mean(len(p) for p in payloads) if payloads else 0
    peer_rate = _rate(peer)
    n_back = phases["capacity"][0]
    print("spool -> MQTT (MicroPython: runtime + spool + gateway MQTT client -> mosquitto -> paho subscriber, "
          "QoS 1, %.0f-byte readings, 16 in flight; %d seen, %d duplicates, %d missing):"
          % (size, len(order), len(order) - len(uniq), sum(phases[p][0] for p in cuts) - len(uniq)))
    print("   peer, same run: paho-mqtt (CPython) publishing the same %d payloads QoS 1, 16 in flight: %.0f/s at the "
          "subscriber (%.0f/s publisher side, to its last PUBACK)" % (len(peer), peer_rate, len(peer) / peer_s))
    print("   replay capacity, %d-reading backlog, no pacing (spool.peek + publish + ack at PUBACK): %.0f readings/s "
          "at the subscriber = %.2f x paho; %.0f/s on the gateway, connect to last PUBACK"
          % (n_back, _rate(at["capacity"]), _rate(at["capacity"]) / peer_rate, n_back / phases["capacity"][1]))
    r1000 = (REPLAY2_MQTT - 1000) / phases["replay1000"][1]  # 1000 at once, then 1000 a new one-second window
    print("   the runtime's publisher task at replay_per_s 1000 (the schema's maximum), %d-reading backlog in %.2f s: "
          "%.0f readings/s after the first window's 1000 (%.2f x the setting, %.2f x paho)"
          % (REPLAY2_MQTT, phases["replay1000"][1], r1000, r1000 / 1000, r1000 / peer_rate))
    print("   steady state, %d live readings (runtime.record: spool append, live hand-over, publish, ack): "
          "%.0f readings/s at the subscriber = %.2f x paho; %.0f/s on the gateway"
          % (LIVE_MQTT, _rate(at["live"]), _rate(at["live"]) / peer_rate, LIVE_MQTT / phases["live"][1]))
    took = phases["paced"][1]
    paced = (PACED_MQTT - 20) / took  # 20 go at once, then 20 at each new one-second window
    print("   configured pacing, mqtt.replay_per_s = 20 (default): %d backlog readings in %.2f s: %.1f/s after the "
          "first window's 20 (%.2f x the setting); a %d-reading backlog then takes %.1f min, against %.1f s at "
          "the machinery's capacity (%.0f x)"
          % (PACED_MQTT, took, paced, paced / 20, BACKLOG_MQTT, BACKLOG_MQTT / paced / 60,
             BACKLOG_MQTT / _rate(at["capacity"]), _rate(at["capacity"]) / paced))


def run():
    mqtt_rates()
    with tempfile.TemporaryDirectory() as tmp:
        script = pathlib.Path(tmp) / "spool_bench_mpy.py"
        script.write_text(MPY_SCRIPT % {"fw": str(ROOT / "firmware"), "tmp": tmp})
        out = subprocess.run([str(ROOT / ".venv/bin/micropython"), str(script)], check=True,
                             capture_output=True, text=True, timeout=300).stdout
    raw, rawread, app, opened, replay, steady, n, backlog, size = (int(x) for x in out.split())
    raw_rate = n / (raw / 1e6)
    app_rate = n / (app / 1e6)
    print("spool append (MicroPython unix, %d-byte reading, flushed each): %.0f records/s;"
          " raw file append+flush of the same bytes %.0f records/s; ratio %.2f (spool/raw)"
          % (size, app_rate, raw_rate, app_rate / raw_rate))
    print("spool reopen with a %d-record backlog (verify pass): %.0f ms" % (backlog, opened / 1e3))
    replay_rate = backlog / (replay / 1e6)
    read_rate = n / (rawread / 1e6)
    print("spool replay of the %d-record backlog (read + CRC + ack, oldest first): %.0f records/s;"
          " raw sequential read %.0f records/s, ratio %.2f (replay/raw read); %.2fx the raw append rate"
          % (backlog, replay_rate, read_rate, replay_rate / read_rate, replay_rate / raw_rate))
    print("spool steady state (append + read back + ack): %.0f records/s" % (n / (steady / 1e6)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    run()
