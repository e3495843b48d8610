# Back-office ingest throughput and memory (issue 6).
#
# The same stream, N contract-valid readings from 10 gateways, is queued on one
# mosquitto for three persistent sessions: mosquitto_sub (the raw rate a
# consumer that does nothing can take, the peer), `metergate backoffice ingest`
# into SQLite (synchronous=FULL, WAL) and into PostgreSQL (fsync on, a server
# started for the run). Each then drains its backlog; the rate is taken from
# its first to its last message (mosquitto_sub's own receive timestamps; the
# ingest's committed row count polled), so start-up costs are left out of both.
# Target: ingest into SQLite >= 0.5 x mosquitto_sub. A second peer, a paho
# consumer that only acknowledges, shows what the Python MQTT client alone takes.
# Memory: the ingest process's resident set idle (subscribed, nothing queued)
# and its peak (VmHWM) while draining the backlog.
import pathlib
import subprocess
import sys
import tempfile
import time

N = 20000
DEVICES = ["bench-gw-%02d" % i for i in range(10)]
TOPIC = "metergate/v1/+/reading"
METERGATE = str(pathlib.Path(sys.executable).with_name("metergate"))


def _kb(pid, field):
    for line in pathlib.Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _ingest(broker, db_url, client_id, logdir):
    from metergate.bench.procs import ManagedProcess

    proc = ManagedProcess([METERGATE, "backoffice", "ingest", "--broker", broker.url, "--db", db_url,
                           "--client-id", client_id, "-v"], logdir / ("%s.log" % client_id), name=client_id,
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


def _drain_ingest(broker, db_url, client_id, logdir, timeout=600):
    """(readings per second first -> last, peak RSS kB) for one ingest draining its backlog."""
    proc = _ingest(broker, db_url, client_id, logdir)
    first = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            n = _count(db_url)
            now = time.monotonic()
            if n and first is None:
                first = (now, n)
            if n >= N:
                break
            if now > deadline or not proc.running:
                raise RuntimeError("ingest stored %d of %d:\n%s" % (n, N, proc.tail(20)))
            time.sleep(0.02)
        peak = _kb(proc.pid, "VmHWM")
    finally:
        proc.stop()
    return (N - first[1]) / max(1e-9, now - first[0]), peak


def _idle_rss(broker, db_url, client_id, logdir):
    """Creates the persistent session; the RSS of an idle, subscribed ingest."""
    proc = _ingest(broker, db_url, client_id, logdir)
    try:
        time.sleep(1.0)
        return _kb(proc.pid, "VmRSS")
    finally:
        proc.stop()


def _mosquitto_sub(broker, out, count=None):
    argv = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-c", "-i", "bench-raw",
            "-t", TOPIC, "-F", "%U"]
    if count is None:
        argv.append("-E")  # subscribe (creating the session) and leave
    else:
        argv += ["-C", str(count)]
    with open(out, "wb") as fh:
        subprocess.run(argv, stdout=fh, check=True, timeout=600)


def _paho_drain(broker, count=None):
    """The Python MQTT client alone (paho, manual acks, acknowledging in the
    callback, storing nothing): a second peer, the ceiling of a paho consumer.
    Without `count`: create the session and leave. Returns readings/s."""
    import threading

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


def run():
    from metergate.backoffice import traffic
    from metergate.backoffice.ingest import BROKER_SETTINGS
    from metergate.backoffice.pgserver import PostgresServer, PostgresUnavailable
    from metergate.bench.broker import Broker

    work = pathlib.Path(tempfile.mkdtemp(prefix="metergate-ingest-bench-"))
    sqlite_url = "sqlite:///%s" % (work / "bench.db")
    pg = None
    try:
        pg = PostgresServer(fsync=True).start()
    except PostgresUnavailable as exc:
        print("   PostgreSQL: not measured (%s)" % exc)
    with Broker(extra_config=BROKER_SETTINGS) as broker:
        try:
            # the three persistent sessions exist before the stream is published
            _mosquitto_sub(broker, work / "raw.txt")
            _paho_drain(broker)
            idle = _idle_rss(broker, sqlite_url, "bench-sqlite", work)
            if pg is not None:
                _idle_rss(broker, pg.url, "bench-pg", work)
            messages = traffic.readings_stream(DEVICES, 16, N)
            t = time.monotonic()
            traffic.publish(broker.url, messages, timeout=600)
            publish_rate = N / (time.monotonic() - t)
            raw_file = work / "raw.txt"
            _mosquitto_sub(broker, raw_file, count=N)
            stamps = [float(line) for line in raw_file.read_text().split()]
            assert len(stamps) == N, "mosquitto_sub received %d of %d" % (len(stamps), N)
            raw_rate = (N - 1) / max(1e-9, stamps[-1] - stamps[0])
            paho_rate = _paho_drain(broker, N)
            sqlite_rate, sqlite_peak = _drain_ingest(broker, sqlite_url, "bench-sqlite", work)
            pg_rate = pg_peak = None
            if pg is not None:
                pg_rate, pg_peak = _drain_ingest(broker, pg.url, "bench-pg", work)
        finally:
            if pg is not None:
                pg.stop()
    print("   stream: %d readings from %d gateways, published at %.0f/s (paho, QoS 1)"
          % (N, len(DEVICES), publish_rate))
    print("   mosquitto_sub (peer, same backlog): %8.0f readings/s" % raw_rate)
    print("   paho consumer, acking only (peer):  %8.0f readings/s  ratio %.2f (the Python MQTT client's ceiling)"
          % (paho_rate, paho_rate / raw_rate))
    ratio = sqlite_rate / raw_rate
    print("   ingest -> SQLite (FULL sync):       %8.0f readings/s  ratio %.2f  (target >= 0.5: %s)"
          % (sqlite_rate, ratio, "met" if ratio >= 0.5 else "NOT met"))
    print("   ingest -> SQLite / paho peer: %.2f" % (sqlite_rate / paho_rate))
    if pg_rate is not None:
        print("   ingest -> PostgreSQL (fsync on):    %8.0f readings/s  ratio %.2f  (/ paho peer %.2f)"
              % (pg_rate, pg_rate / raw_rate, pg_rate / paho_rate))
    print("   ingest memory: idle %.1f MB RSS; peak while draining %d readings: SQLite %.1f MB%s"
          % (idle / 1024, N, sqlite_peak / 1024,
             "" if pg_peak is None else ", PostgreSQL %.1f MB" % (pg_peak / 1024)))
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run()
