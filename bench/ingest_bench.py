# Back-office ingest throughput and memory (issue 6).
#
# Peer: mosquitto_sub (C, does nothing with what it gets), measured in the same
# run on the same broker and the same stream of N contract-valid readings from
# 10 gateways. Two ways:
#
# 1. Live: mosquitto_sub and `metergate backoffice ingest` (SQLite) are both
#    connected while a paho publisher sends the stream as fast as the broker
#    takes it. Can the ingest keep pace with the stream?
# 2. Backlog (capacity): the stream is queued on the broker for each
#    consumer's persistent session, then each drains it alone: mosquitto_sub;
#    a paho-mqtt consumer that only acknowledges (the Python MQTT client's own
#    ceiling: why the ingest no longer uses it); the ingest's own consumer
#    session (backoffice/consumer.py) that only acknowledges, a batch at a
#    time (its ceiling); the ingest into SQLite (WAL, synchronous=FULL); into
#    PostgreSQL (fsync on, a server started for the run); two ingest processes
#    sharing the load through `--group` into SQLite.
#
# Rates are first to last message (mosquitto_sub's receive timestamps, the
# ingest's committed rows polled), so start-up is left out of both sides.
# Target: ingest into SQLite >= 0.5 x mosquitto_sub.
# Memory: the ingest process's RSS idle (subscribed, nothing queued) and its
# peak (VmHWM) while draining the backlog.
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

N = 50000
DEVICES = ["bench-gw-%02d" % i for i in range(10)]
TOPIC = "metergate/v1/+/reading"
METERGATE = str(pathlib.Path(sys.executable).with_name("metergate"))


def _kb(pid, field):
    for line in pathlib.Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _ingest(broker, db_url, client_id, logdir, group=None):
    from metergate.bench.procs import ManagedProcess

    proc = ManagedProcess([METERGATE, "backoffice", "ingest", "--broker", broker.url, "--db", db_url,
                           "--client-id", client_id, "-v"] + (["--group", group] if group else []),
                          logdir / ("%s.log" % client_id), name=client_id,
                          ready_line="subscribed to", ready_timeout=30, grace=10)
    proc.start()
    proc.wait_ready()
    return proc


def _count(db_url):
    from metergate.backoffice.store import Store

    try:
        with Store(db_url).connect(migrate=False) as s:
            return s.query("SELECT COUNT(*) FROM readings")[0][0]
    except Exception:  # noqa: BLE001 - the ingest may be creating the schema
        return 0


def _watch(db_url, procs, base=0, timeout=600):
    """Readings/s from the first new committed row to the N-th; peak RSS (kB) of each process."""
    first = None
    deadline = time.monotonic() + timeout
    while True:
        n = _count(db_url) - base
        now = time.monotonic()
        if n > 0 and first is None:
            first = (now, n)
        if n >= N:
            break
        for p in procs:
            if not p.running:
                raise RuntimeError("ingest exited:\n%s" % p.tail(20))
        if now > deadline:
            raise RuntimeError("ingest stored %d of %d" % (n, N))
        time.sleep(0.02)
    peaks = [_kb(p.pid, "VmHWM") for p in procs]
    return (N - first[1]) / max(1e-9, now - first[0]), peaks


def _drain(broker, db_url, client_ids, logdir, group=None):
    procs = [_ingest(broker, db_url, cid, logdir, group) for cid in client_ids]
    try:
        return _watch(db_url, procs)
    finally:
        for p in procs:
            p.stop()


def _idle(broker, db_url, client_id, logdir, group=None):
    """Creates the persistent session; the RSS (kB) of an idle, subscribed ingest."""
    proc = _ingest(broker, db_url, client_id, logdir, group)
    try:
        time.sleep(1.0)
        return _kb(proc.pid, "VmRSS")
    finally:
        proc.stop()


def _mosquitto_sub(broker, client_id, count=None):
    argv = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-c", "-i", client_id,
            "-t", TOPIC, "-F", "%U"]
    return argv + (["-E"] if count is None else ["-C", str(count)])


def _raw_rate(path):
    stamps = [float(line) for line in pathlib.Path(path).read_text().split()]
    if len(stamps) != N:
        raise RuntimeError("mosquitto_sub received %d of %d" % (len(stamps), N))
    return (N - 1) / max(1e-9, stamps[-1] - stamps[0])


def _paho_drain(broker, count=None):
    """paho-mqtt with manual acks, acknowledging in the callback and storing
    nothing. Without `count`: create the session and leave. Returns readings/s."""
    import paho.mqtt.client as mqtt

    got, done, subscribed = [], threading.Event(), threading.Event()

    def on_message(client, userdata, msg):
        got.append(time.monotonic())
        client.ack(msg.mid, msg.qos)
        if len(got) == count:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho", clean_session=False,
                         protocol=mqtt.MQTTv311, manual_ack=True)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if count is None:
            client.subscribe(TOPIC, 1)
            subscribed.wait(10)
            return None
        if not done.wait(600):
            raise RuntimeError("paho peer received %d of %d" % (len(got), count))
        return (count - 1) / max(1e-9, got[-1] - got[0])
    finally:
        client.disconnect()
        client.loop_stop()


def _lean_drain(broker, count=None, batch=1000):
    """The ingest's consumer session, acknowledging each batch at once and
    storing nothing. Without `count`: create the session and leave. Returns readings/s."""
    from metergate.backoffice.consumer import Session

    s = Session(broker.host, broker.port, "bench-lean")
    s.connect()
    try:
        s.subscribe([TOPIC])
        if count is None:
            return None
        got, first, last = 0, None, None
        deadline = time.monotonic() + 600
        while got < count:
            messages = s.receive(batch, 0.02, 0.2)
            if messages:
                last = time.monotonic()
                if first is None:
                    first, got_first = last, len(messages)
                s.ack([m.packet_id for m in messages])
                got += len(messages)
            elif time.monotonic() > deadline:
                raise RuntimeError("lean consumer received %d of %d" % (got, count))
        return (count - got_first) / max(1e-9, last - first)
    finally:
        s.close()


def _live(broker, work, messages):
    """Both consumers connected while the stream is published: (raw rate, ingest rate, publish rate)."""
    from metergate.backoffice import traffic

    db = "sqlite:///%s" % (work / "live.db")
    proc = _ingest(broker, db, "bench-live", work)
    out = work / "live-raw.txt"
    with open(out, "wb") as fh:
        sub = subprocess.Popen(_mosquitto_sub(broker, "bench-live-raw", N), stdout=fh)
    try:
        time.sleep(1.0)  # mosquitto_sub connected and subscribed
        result = {}
        watcher = threading.Thread(target=lambda: result.update(rate=_watch(db, [proc])[0]), daemon=True)
        watcher.start()
        t = time.monotonic()
        traffic.publish(broker.url, messages, timeout=600)
        publish_rate = N / (time.monotonic() - t)
        sub.wait(600)
        watcher.join(600)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        proc.stop()
    return _raw_rate(out), result["rate"], publish_rate


def run():
    from metergate.backoffice import traffic
    from metergate.backoffice.ingest import BROKER_SETTINGS
    from metergate.backoffice.pgserver import PostgresServer, PostgresUnavailable
    from metergate.bench.broker import Broker

    work = pathlib.Path(tempfile.mkdtemp(prefix="metergate-ingest-bench-"))
    messages = traffic.readings_stream(DEVICES, 16, N)
    sqlite_url = "sqlite:///%s" % (work / "bench.db")
    group_url = "sqlite:///%s" % (work / "group.db")
    pg = None
    try:
        pg = PostgresServer(fsync=True).start()
    except PostgresUnavailable as exc:
        print("   PostgreSQL: not measured (%s)" % exc)
    try:
        with Broker(extra_config=BROKER_SETTINGS) as broker:
            live_raw, live_ingest, live_publish = _live(broker, work, messages)
            # backlog: every session exists before the stream is queued for it
            subprocess.run(_mosquitto_sub(broker, "bench-raw"), check=True, timeout=60)
            _paho_drain(broker)
            _lean_drain(broker)
            idle = _idle(broker, sqlite_url, "bench-sqlite", work)
            if pg is not None:
                _idle(broker, pg.url, "bench-pg", work)
            group = ["bench-group-1", "bench-group-2"]
            for cid in group:
                _idle(broker, group_url, cid, work, group="bench")
            traffic.publish(broker.url, messages, timeout=600)
            out = work / "raw.txt"
            with open(out, "wb") as fh:
                subprocess.run(_mosquitto_sub(broker, "bench-raw", N), stdout=fh, check=True, timeout=600)
            raw = _raw_rate(out)
            paho = _paho_drain(broker, N)
            lean = _lean_drain(broker, N)
            sqlite_rate, (sqlite_peak,) = _drain(broker, sqlite_url, ["bench-sqlite"], work)
            pg_rate = pg_peak = None
            if pg is not None:
                pg_rate, (pg_peak,) = _drain(broker, pg.url, ["bench-pg"], work)
            group_rate, _ = _drain(broker, group_url, group, work, group="bench")
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("   stream: %d readings from %d gateways" % (N, len(DEVICES)))
    print("   live (both connected while one paho client publishes at %.0f/s):" % live_publish)
    print("     mosquitto_sub (peer)            %8.0f readings/s" % live_raw)
    print("     ingest -> SQLite                %8.0f readings/s  ratio %.2f  (target >= 0.5: %s)"
          % (live_ingest, live_ingest / live_raw, "met" if live_ingest >= 0.5 * live_raw else "NOT met"))
    print("   backlog of %d queued per session, each drained alone (capacity):" % N)
    print("     mosquitto_sub (peer)            %8.0f readings/s" % raw)
    print("     paho consumer, acking only      %8.0f readings/s  ratio %.2f  (the Python client's ceiling)"
          % (paho, paho / raw))
    print("     own consumer session, acking    %8.0f readings/s  ratio %.2f  (the ingest's MQTT side alone)"
          % (lean, lean / raw))
    print("     ingest -> SQLite (FULL sync)    %8.0f readings/s  ratio %.2f  (target >= 0.5: %s; / paho %.2f)"
          % (sqlite_rate, sqlite_rate / raw, "met" if sqlite_rate >= 0.5 * raw else "NOT met", sqlite_rate / paho))
    if pg_rate is not None:
        print("     ingest -> PostgreSQL (fsync on) %8.0f readings/s  ratio %.2f  (/ paho %.2f)"
              % (pg_rate, pg_rate / raw, pg_rate / paho))
    print("     2 ingests, --group -> SQLite    %8.0f readings/s  ratio %.2f  (x%.2f one process)"
          % (group_rate, group_rate / raw, group_rate / sqlite_rate))
    print("   ingest memory: idle %.1f MB RSS; peak draining %d readings: SQLite %.1f MB%s"
          % (idle / 1024, N, sqlite_peak / 1024, "" if pg_peak is None else ", PostgreSQL %.1f MB" % (pg_peak / 1024)))


if __name__ == "__main__":
    run()
