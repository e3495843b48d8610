"""The back-office ingest against a real mosquitto, and real SQLite / PostgreSQL:
every message kind stored once, contract breakers quarantined with reason and
bytes, kill -9 at any moment loses nothing and doubles nothing, a database
outage holds the acknowledgements until the data is committed, and four
processes on a shared subscription store every reading exactly once."""

import pathlib
import re
import sqlite3
import sys
import threading
import time
import uuid

import pytest

from metergate.backoffice import traffic
from metergate.backoffice.ingest import BROKER_SETTINGS, Ingest
from metergate.backoffice.store import Store
from metergate.bench.broker import Broker
from metergate.bench.procs import ManagedProcess

METERGATE = str(pathlib.Path(sys.executable).with_name("metergate"))
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker():
    with Broker(extra_config=BROKER_SETTINGS) as b:
        yield b


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite:///%s" % (tmp_path / "backoffice.db")
    pg = request.getfixturevalue("postgres")
    name = "t_" + uuid.uuid4().hex[:10]
    import psycopg

    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute('CREATE DATABASE "%s"' % name)
    return pg.url.rsplit("/", 1)[0] + "/" + name


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:6])


def start_ingest(broker, db_url, client_id, logdir, group=None, extra=()):
    argv = [METERGATE, "backoffice", "ingest", "--broker", broker.url, "--db", db_url,
            "--client-id", client_id, "-v", "--tz", "UTC"] + (["--group", group] if group else []) + list(extra)
    proc = ManagedProcess(argv, pathlib.Path(logdir) / ("%s.log" % client_id), name=client_id,
                          ready_line="subscribed to", ready_timeout=30, grace=10)
    proc.start()
    try:
        proc.wait_ready()
    except Exception:
        proc.stop(grace=1)
        raise
    return proc


def stored(db_url, devices):
    with Store(db_url).connect() as s:
        marks = ",".join("?" * len(devices))
        return s.query("SELECT device, seq FROM readings WHERE device IN (%s)" % marks, tuple(devices))


def count(db_url, devices):
    with Store(db_url).connect() as s:
        marks = ",".join("?" * len(devices))
        return s.query("SELECT COUNT(*) FROM readings WHERE device IN (%s)" % marks, tuple(devices))[0][0]


def wait_count(db_url, devices, at_least, timeout=60.0, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        try:
            n = count(db_url, devices)
        except Exception:  # noqa: BLE001 - the database may be mid-outage on purpose
            n = -1
        if n >= at_least:
            return n
        for p in procs:
            assert p.running, "%s exited:\n%s" % (p.name, p.tail(40))
        if time.monotonic() > deadline:
            raise AssertionError("only %d of %d readings stored after %.0f s" % (n, at_least, timeout))
        time.sleep(0.05)


def assert_exactly_once(db_url, messages):
    """Every published reading stored, none twice (the key would refuse it: count rows per device too)."""
    import json

    want = {(json.loads(p)["device"], json.loads(p)["seq"]) for _, p in messages}
    rows = stored(db_url, sorted({d for d, _ in want}))
    assert len(rows) == len(want), "%d rows for %d readings" % (len(rows), len(want))
    assert set(rows) == want


class Publisher(threading.Thread):
    """Publishes the messages in chunks while the test kills and restarts consumers."""

    def __init__(self, url, messages, chunk=200, pause=0.02):
        super().__init__(daemon=True)
        self.url, self.messages, self.chunk, self.pause = url, messages, chunk, pause
        self.error = None

    def run(self):
        try:
            for i in range(0, len(self.messages), self.chunk):
                traffic.publish(self.url, self.messages[i:i + self.chunk])
                time.sleep(self.pause)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def finish(self, timeout=60):
        self.join(timeout)
        assert not self.is_alive(), "publisher did not finish"
        assert self.error is None, self.error


def test_every_kind_stored_once_and_contract_breakers_quarantined(broker, tmp_path):
    db = "sqlite:///%s" % (tmp_path / "bo.db")
    dev = unique("gw")
    ingest = Ingest(broker.url, db, client_id=unique("ingest"), linger_s=0.01)
    runner = threading.Thread(target=ingest.run, daemon=True)
    runner.start()
    try:
        assert ingest.subscribed.wait(10)
        r1 = traffic.message(dev, "reading", traffic.reading(dev, "m1", 1, ts=1795456800))
        r2 = traffic.message(dev, "reading", traffic.reading(dev, "m2", 2, ts=1795456800, quality="comm_error"))
        online = traffic.message(dev, "status", traffic.status(dev, "online", boot_count=3))
        offline = traffic.message(dev, "status", traffic.status(dev, "offline", boot_count=3))
        health = traffic.message(dev, "health", {
            "device": dev, "fw": "0.4.0", "ts": 1795456800, "uptime_s": 61, "boot_count": 3,
            "reset_cause": "power-on", "resets": [], "heap": {"free": 1, "alloc": 2}, "rssi": None,
            "config": {"source": "config.json", "errors": 0},
            "spool": {"depth": 0, "dropped": 0, "bytes": 0, "next_seq": 3}, "mqtt": None,
            "bus": {"idle_junk": 0, "overruns": 0}, "meters": {}, "collectors": {}})
        selfcheck = traffic.message(dev, "selfcheck", {
            "device": dev, "run": 3001, "mode": "full", "fw": "0.5.0", "started": 1795456860, "ts": 1795456900,
            "duration_s": 40, "summary": {"fault": 0, "warning": 0, "info": 0},
            "meters": {"m1": {"position": 1, "protocol": "dlt645-2007", "status": "ok"}}, "findings": []})
        no_seq = ("metergate/v1/%s/reading" % dev,
                  b'{"device": "%s", "meter": "m1", "ts": 1, "group": "g", "values": {}}' % dev.encode())
        not_json = ("metergate/v1/%s/reading" % dev, b"\xff not json")
        other_device = traffic.message("someone-else", "reading", traffic.reading("someone-else", "m1", 9))
        other_device = ("metergate/v1/%s/reading" % dev, other_device[1])
        # duplicates: the same reading, health, status and quarantined bytes twice (QoS 1 redelivery)
        traffic.publish(broker.url, [r1, r1, r2, online, online, health, health, selfcheck, selfcheck,
                                     no_seq, no_seq, not_json, other_device, offline])
        deadline = time.monotonic() + 10
        while sum(ingest.writer.counts.values()) < 14 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(ingest.writer.counts.values()) == 14, ingest.writer.counts
    finally:
        ingest.stop()
        runner.join(10)
    with Store(db).connect() as s:
        assert s.query("SELECT seq, meter, ts FROM readings ORDER BY seq") == [(1, "m1", 1795456800),
                                                                               (2, "m2", 1795456800)]
        assert s.query("SELECT boot_count, uptime_s FROM health") == [(3, 61)]
        assert s.query("SELECT device, time, validated FROM selfchecks") == [(dev, 1795456900, 1)]
        assert s.query("SELECT state, boot_count FROM gateways WHERE device = ?", (dev,)) == [("offline", 3)]
        assert s.query("SELECT state FROM gateway_events WHERE device = ? ORDER BY id", (dev,)) == [
            ("online",), ("offline",)]
        q = {bytes(p): reason for reason, p in s.query("SELECT reason, payload FROM quarantine")}
        assert len(q) == 3, q
        assert "seq" in q[no_seq[1]] and "required" in q[no_seq[1]]
        assert q[not_json[1]].startswith("reading: not JSON")
        assert "'someone-else' in the payload" in q[other_device[1]]
        # the day of m1 is collected (valid energy), m2's comm_error day is not
        assert s.query("SELECT meter_id, collected FROM collected_days") == [("%s/m1" % dev, 1)]
        assert sorted(s.query("SELECT meter_id, collector_id FROM meters")) == [
            ("%s/m1" % dev, dev), ("%s/m2" % dev, dev)]


def test_kill_9_mid_stream_loses_nothing_and_doubles_nothing(broker, db_url, tmp_path):
    devices = [unique("gw") for _ in range(3)]
    messages = traffic.readings_stream(devices, 8, 3000)
    cid = unique("ingest")
    proc = start_ingest(broker, db_url, cid, tmp_path)
    publisher = Publisher(broker.url, messages)
    publisher.start()
    try:
        for mark in (600, 1500):
            wait_count(db_url, devices, mark, procs=[proc])
            proc.kill()  # SIGKILL: no goodbye, mid-transaction or between commit and ack
            proc = start_ingest(broker, db_url, cid, tmp_path)
        publisher.finish()
        wait_count(db_url, devices, len(messages), procs=[proc])
        time.sleep(0.5)  # redeliveries still on their way must not add rows
    finally:
        proc.stop()
    assert "session present: True" in proc.log_text()
    assert_exactly_once(db_url, messages)


def test_database_unavailable_nothing_acknowledged_until_committed(broker, tmp_path):
    path = tmp_path / "bo.db"
    db = "sqlite:///%s" % path
    devices = [unique("gw")]
    first, second = traffic.readings_stream(devices, 4, 600)[:300], traffic.readings_stream(devices, 4, 600)[300:]
    cid = unique("ingest")
    quick = ["--db-timeout", "0.2"]  # a locked database counts as unavailable after 0.2 s
    proc = start_ingest(broker, db, cid, tmp_path, extra=quick)
    try:
        lock = sqlite3.connect(str(path), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the database is unavailable to everyone else
        traffic.publish(broker.url, first)
        time.sleep(1.5)
        assert proc.running
        # the messages reached the ingest, which could not commit them: killed now, it must not
        # have acknowledged them, so the broker still holds every one
        proc.kill()
        lock.execute("ROLLBACK")
        proc = start_ingest(broker, db, cid, tmp_path, extra=quick)
        wait_count(db, devices, len(first), procs=[proc])
        # an outage while running: the same process retries with backoff and catches up
        lock.execute("BEGIN EXCLUSIVE")
        traffic.publish(broker.url, second)
        time.sleep(1.5)
        lock.execute("ROLLBACK")
        lock.close()
        wait_count(db, devices, 600, procs=[proc])
    finally:
        proc.stop()
    assert re.search(r"database unavailable .*held unacknowledged", proc.log_text())
    assert_exactly_once(db, first + second)


def test_postgresql_outage_mid_stream_catches_up(broker, postgres, tmp_path):
    db = postgres.url
    devices = [unique("gw") for _ in range(2)]
    messages = traffic.readings_stream(devices, 4, 2000)
    proc = start_ingest(broker, db, unique("ingest"), tmp_path)
    publisher = Publisher(broker.url, messages)
    publisher.start()
    try:
        wait_count(db, devices, 400, procs=[proc])
        postgres.stop_server()
        time.sleep(2.0)
        postgres.start_server()
        publisher.finish()
        wait_count(db, devices, len(messages), procs=[proc])
    finally:
        proc.stop()
    assert "database unavailable" in proc.log_text()
    assert_exactly_once(db, messages)


def test_four_processes_on_a_shared_subscription_store_each_reading_once(broker, db_url, tmp_path):
    devices = [unique("gw") for _ in range(4)]
    messages = traffic.readings_stream(devices, 8, 4000)
    group = unique("grp")
    ids = [unique("ingest") for _ in range(4)]
    # a retained birth: mosquitto hands it to every member as it subscribes; one event must come of it
    traffic.publish(broker.url, [traffic.message(devices[0], "status", traffic.status(devices[0], boot_count=5))],
                    retain=True)
    procs = [start_ingest(broker, db_url, cid, tmp_path, group=group) for cid in ids]
    publisher = Publisher(broker.url, messages)
    publisher.start()
    try:
        wait_count(db_url, devices, 1000, procs=procs)
        procs[1].kill()  # one of them dies mid-stream; its share waits in its session
        procs[1] = start_ingest(broker, db_url, ids[1], tmp_path, group=group)
        publisher.finish()
        wait_count(db_url, devices, len(messages), procs=procs)
        time.sleep(0.5)
    finally:
        for p in procs:
            p.stop()
    shares = []
    for p in procs:
        m = re.search(r"ingest stopped: reading (\d+)", p.log_text())
        assert m, p.tail(20)
        shares.append(int(m.group(1)))
    assert all(n > 0 for n in shares), "every process took a share: %s" % shares
    assert_exactly_once(db_url, messages)
    with Store(db_url).connect() as s:
        assert s.query("SELECT state, boot_count FROM gateway_events WHERE device = ?", (devices[0],)) == [
            ("online", 5)]


def _mutations(body):
    """The body with each field removed or given a wrong value, recursively, plus an extra field."""
    yield dict(body, extra_field=1)
    for key, value in body.items():
        yield {k: v for k, v in body.items() if k != key}
        for wrong in ("x", "", -1, 0, 1.5, None, True, [], {}):
            if wrong != value or type(wrong) is not type(value):
                yield dict(body, **{key: wrong})
        if isinstance(value, dict):
            for inner in _mutations(value):
                yield dict(body, **{key: inner})


@pytest.mark.parametrize("engine", ["jsonschema-rs", "fastjsonschema"])
def test_fast_contract_check_agrees_with_the_reference_validator(engine):
    import json

    from metergate import contract
    from metergate.backoffice.ingest import FastContract

    fast = FastContract(engine=engine)
    bodies = {
        "reading": traffic.reading("gw-1", "m1", 7, ts=1795456800),
        "status": traffic.status("gw-1"),
        "health": {"device": "gw-1", "fw": "0.4.0", "ts": 1, "uptime_s": 61, "boot_count": 3,
                   "reset_cause": "power-on", "resets": [], "heap": {"free": 1, "alloc": 2}, "rssi": None,
                   "config": {"source": "config.json", "errors": 0},
                   "spool": {"depth": 0, "dropped": 0, "bytes": 0, "next_seq": 3}, "mqtt": None,
                   "bus": {"idle_junk": 0, "overruns": 0}, "meters": {}, "collectors": {}},
    }
    checked = refused = 0
    for kind, body in bodies.items():
        for mutated in list(_mutations(body)) + [body]:
            payload = json.dumps(mutated).encode()
            outcomes = []
            for check in (fast.validate, contract.validate):
                try:
                    outcomes.append(("ok", check(kind, payload)))
                except contract.ContractError as exc:
                    outcomes.append(("refused", str(exc)))
            assert outcomes[0] == outcomes[1], (kind, mutated)
            checked += 1
            refused += outcomes[0][0] == "refused"
        for raw in (b"", b"\xff", b"[1]", b'"x"', "{}".encode("utf-16"), b' {} ', b'{} {}', b"\xef\xbb\xbf{}"):
            with pytest.raises(contract.ContractError) as exc:
                fast.validate(kind, raw)
            with pytest.raises(contract.ContractError) as ref:
                contract.validate(kind, raw)
            assert str(exc.value) == str(ref.value)
    assert checked > 300 and refused > 250


def test_a_message_the_database_refuses_is_quarantined_not_blocking(db_url):
    from metergate.backoffice.ingest import BatchWriter, classify
    from metergate.backoffice.rule import CollectionRule

    huge = traffic.reading("gw-big", "m1", 2 ** 70, ts=1795456800)  # valid JSON Schema, beyond BIGINT
    records = [classify(*traffic.message("gw-big", "reading", traffic.reading("gw-big", "m1", n, ts=1795456800)))
               for n in (1, 2)]
    records.insert(1, classify(*traffic.message("gw-big", "reading", huge)))
    assert [r.kind for r in records] == ["reading"] * 3
    with Store(db_url).connect() as s:
        BatchWriter(s, CollectionRule(tz="UTC")).write_or_quarantine(records)
        assert s.query("SELECT seq FROM readings ORDER BY seq") == [(1,), (2,)]
        (reason, payload), = s.query("SELECT reason, payload FROM quarantine")
        assert reason.startswith("reading: refused by the database: ")
        assert bytes(payload) == records[1].payload
