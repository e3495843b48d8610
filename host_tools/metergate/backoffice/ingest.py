"""`metergate backoffice ingest`: the gateways' MQTT messages into the database.

Nothing lost, nothing doubled:

- the session is persistent (clean_session False, a fixed client id), so the
  broker keeps what arrives while the ingest is down;
- acknowledgements are manual: a batch's PUBACKs leave (in one send) only
  after the transaction holding it has committed, and only on the connection
  that delivered it; a consumer killed at any moment has its unacknowledged
  messages redelivered. The MQTT side is our own lean consumer session
  (consumer.py): paho-mqtt's per-message costs alone exceeded the budget;
- the database keys make a redelivery a no-op: readings by (device, seq),
  health by (device, boot_count, uptime_s), self-checks by (device, time),
  quarantine by (topic, payload digest);
- a payload that breaks the contract goes to the quarantine table with the
  reason and the raw bytes, and is acknowledged only once that is committed;
- the database unavailable: nothing is acknowledged, the batch is retried with
  exponential backoff; the broker holds the rest (its inflight window stops
  the flow) and the ingest catches up when the database is back.

Several processes share the load with ``--group`` (``$share/<group>/...``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import random
import socket
import threading
import time

from metergate import contract
from metergate.backoffice.consumer import (ConnectRefused, MqttError, Session, SubscriptionRefused,
                                           DEFAULT_MAX_PACKET)
from metergate.backoffice.rule import CollectionRule
from metergate.backoffice.store import Store, StoreError, Unavailable

log = logging.getLogger("metergate.backoffice.ingest")

KINDS = ("reading", "health", "status", "selfcheck")

# mosquitto.conf lines the ingest needs (docs/backoffice.md). The defaults
# silently drop QoS 1 messages queued for a persistent session beyond 1000
# (max_queued_messages), and let only 20 unacknowledged messages be in flight
# to a consumer, which caps a consumer that acknowledges after commit.
BROKER_SETTINGS = (
    "max_queued_messages 1000000",
    "max_queued_bytes 0",
    "max_inflight_messages 1000",
)


def meter_id(device: str, meter: str) -> str:
    """A gateway's meter in the back office: '<device>/<meter id in its config>'."""
    return "%s/%s" % (device, meter)


def subscriptions(prefix="metergate", group=None):
    """Topic filters; with a group, shared subscriptions ($share/<group>/...)."""
    topics = ["%s/%s/+/%s" % (prefix, contract.VERSION, kind) for kind in KINDS]
    if group:
        topics = ["$share/%s/%s" % (group, t) for t in topics]
    return topics


# -- turning one MQTT message into rows -------------------------------------------

@dataclasses.dataclass
class Record:
    kind: str  # reading / health / status / selfcheck / quarantine
    device: str | None
    body: dict | None = None
    topic: str = ""
    payload: bytes = b""
    reason: str = ""


class FastContract:
    """A fast first check of the contract's schemas: jsonschema-rs (compiled
    Rust, about 1 µs a reading), else fastjsonschema (about 11 µs: the
    reading schema's ``oneOf`` makes it build an exception for the failing
    branch of every value). Anything the fast check refuses is judged again by
    ``contract.validate``, whose verdict and wording (field and rule) are the
    ones kept; tests check both agree."""

    def __init__(self, kinds=("reading", "health", "status"), engine=None):
        self.engine = engine or ("jsonschema-rs" if _has("jsonschema_rs") else "fastjsonschema")
        if self.engine == "jsonschema-rs":
            import jsonschema_rs

            self._checks = {kind: jsonschema_rs.validator_for(contract.schema(kind)).is_valid for kind in kinds}
        elif self.engine == "fastjsonschema":
            import fastjsonschema

            def passes(check):
                def is_valid(body):
                    try:
                        check(body)
                        return True
                    except fastjsonschema.JsonSchemaException:
                        return False
                return is_valid
            self._checks = {kind: passes(fastjsonschema.compile(contract.schema(kind))) for kind in kinds}
        else:
            raise ValueError("no contract engine %r" % self.engine)

    def validate(self, kind, payload):
        is_valid = self._checks.get(kind)
        if is_valid is None:
            return contract.validate(kind, payload)
        try:
            text = payload.decode("utf-8")  # UTF-8 only, as the reference: not json's guessing
            body, end = _raw_decode(text)  # json.loads without its wrappers (-0.7 µs)
            if end != len(text):
                raise ValueError("more than one JSON value, or surrounding whitespace")
        except (UnicodeDecodeError, ValueError):
            return contract.validate(kind, payload)  # judged by json.loads there, with its reason
        try:
            if is_valid(body):
                return body
        except Exception:  # noqa: BLE001 - whatever the fast engine cannot take, the reference judges
            pass
        return contract.validate(kind, body)


_raw_decode = json.JSONDecoder().raw_decode


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


@functools.lru_cache(maxsize=1)
def _fast_contract():
    try:
        return FastContract()
    except ImportError:  # pragma: no cover - both are dependencies; the reference still works
        return None


def classify(topic: str, payload: bytes, prefix: str = "metergate") -> Record:
    """What the message is and whether it keeps the contract (never raises)."""
    payload = bytes(payload)

    def bad(reason, device=None):
        return Record("quarantine", device, topic=topic, payload=payload, reason=reason)

    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[1] != contract.VERSION or parts[3] not in KINDS:
        return bad("not a topic of the contract (%s/%s/<device>/{%s})" % (prefix, contract.VERSION, ",".join(KINDS)))
    device, kind = parts[2], parts[3]
    try:
        # every kind against its schema; the fast check knows the frequent ones, the rest go to the reference
        fast = _fast_contract()
        body = fast.validate(kind, payload) if fast is not None else contract.validate(kind, payload)
    except contract.ContractError as exc:
        return bad(str(exc), device)
    if body.get("device", device) != device:
        return bad("%s: device %r in the payload, topic is for %r" % (kind, body.get("device"), device), device)
    return Record(kind, device, body=body, topic=topic, payload=payload)


# -- writing a batch -------------------------------------------------------------

class BatchWriter:
    """Writes a batch of Records in one transaction; remembers (after commit)
    which meters and days are already stored, to skip statements next time."""

    def __init__(self, store: Store, rule: CollectionRule):
        self.store = store
        self.rule = rule
        self._known_meters = set()
        self._known_days = set()
        self.counts = {"reading": 0, "health": 0, "status": 0, "selfcheck": 0, "quarantine": 0}

    def write(self, records, received_at=None):
        now = int(time.time()) if received_at is None else received_at
        s = self.store
        readings, health, selfchecks, quarantine, statuses = [], [], [], [], []
        seen, new_meters, new_days = {}, {}, {}
        for r in records:
            if r.device is not None:
                seen[r.device] = now
            if r.kind == "reading":
                b = r.body
                mid = meter_id(r.device, b["meter"])
                readings.append((r.device, b["seq"], b["meter"], b["ts"], now, r.payload.decode("utf-8")))
                if mid not in self._known_meters:
                    new_meters[mid] = r.device
                for day in self.rule.collected_days(b):
                    if (mid, day) not in self._known_days and (mid, day) not in new_days:
                        new_days[(mid, day)] = self.rule.collected(b)[day]  # the evidence, only when new
            elif r.kind == "health":
                b = r.body
                health.append((r.device, b["boot_count"], b["uptime_s"], now, r.payload.decode("utf-8")))
            elif r.kind == "selfcheck":
                b = r.body
                t = b.get("ts", b.get("time"))
                t = t if isinstance(t, int) and not isinstance(t, bool) else now
                selfchecks.append((r.device, t, now, 1, r.payload.decode("utf-8")))  # always checked now
            elif r.kind == "status":
                statuses.append(r)
            else:
                quarantine.append((now, r.topic, r.reason, hashlib.sha256(r.payload).hexdigest(), r.payload))
        with s.transaction():
            if seen:
                s.executemany(
                    "INSERT INTO gateways (device, last_seen) VALUES (?, ?) ON CONFLICT (device) DO UPDATE "
                    "SET last_seen = %s(gateways.last_seen, excluded.last_seen)" % s.greatest,
                    sorted(seen.items()))
            if new_meters:
                s.executemany("INSERT INTO collectors (collector_id, kind, source) VALUES (?, 'wireless', 'mqtt') "
                              "ON CONFLICT (collector_id) DO NOTHING", [(d,) for d in sorted(set(new_meters.values()))])
                s.executemany("INSERT INTO meters (meter_id, collector_id, source) VALUES (?, ?, 'mqtt') "
                              "ON CONFLICT (meter_id) DO NOTHING", sorted(new_meters.items()))
            s.executemany("INSERT INTO readings (device, seq, meter, ts, received_at, payload) "
                          "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, seq) DO NOTHING", readings)
            if new_days:
                s.executemany("INSERT INTO collected_days (meter_id, day, source, collected, evidence) "
                              "VALUES (?, ?, 'mqtt', 1, ?) ON CONFLICT (meter_id, day, source) DO NOTHING",
                              [(m, d, e) for (m, d), e in sorted(new_days.items())])
            s.executemany("INSERT INTO health (device, boot_count, uptime_s, received_at, payload) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, boot_count, uptime_s) DO NOTHING", health)
            s.executemany("INSERT INTO selfchecks (device, time, received_at, validated, payload) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, time) DO NOTHING", selfchecks)
            s.executemany("INSERT INTO quarantine (received_at, topic, reason, digest, payload) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic, digest) DO NOTHING", quarantine)
            for r in statuses:
                self._status(r.body, now)
        self._known_meters.update(new_meters)
        self._known_days.update(new_days)
        if len(self._known_days) > 200000:  # a long-running ingest: forget old days, the key still dedupes
            self._known_days.clear()
        for r in records:
            self.counts[r.kind] += 1

    def write_or_quarantine(self, records, received_at=None):
        """write(), except that a message the database itself refuses (a number
        beyond its integer range, ...) goes to quarantine with the database's
        reason instead of blocking every message behind it. Unavailable
        (down, locked) still propagates: that is retried, not judged."""
        try:
            self.write(records, received_at)
            return
        except Unavailable:
            raise
        except (StoreError, OverflowError) as exc:
            log.warning("the database refused a batch (%s); writing its %d messages one by one", exc, len(records))
        for r in records:
            try:
                self.write([r], received_at)
            except Unavailable:
                raise
            except (StoreError, OverflowError) as exc:
                self.write([Record("quarantine", r.device, topic=r.topic, payload=r.payload,
                                   reason="%s: refused by the database: %s" % (r.kind, exc))], received_at)

    def _status(self, body, now):
        """Gateway state now; an event when it changed (a redelivered or retained
        copy of the last status is not a new event)."""
        s = self.store
        if s.dialect == "postgresql":
            # several processes of a group may get the same retained status at once: one at a time per
            # gateway (SQLite's write lock already serialises the whole transaction)
            s.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("metergate-status:" + body["device"],))
        last = s.query("SELECT state, boot_count FROM gateway_events WHERE device = ? ORDER BY id DESC LIMIT 1",
                       (body["device"],))
        if last and (last[0][0], last[0][1]) == (body["state"], body["boot_count"]):
            return
        s.execute("INSERT INTO gateway_events (device, state, fw, boot_count, received_at) VALUES (?, ?, ?, ?, ?)",
                  (body["device"], body["state"], body["fw"], body["boot_count"], now))
        s.execute("UPDATE gateways SET state = ?, fw = ?, boot_count = ?, state_at = ? WHERE device = ?",
                  (body["state"], body["fw"], body["boot_count"], now, body["device"]))


# -- the consumer ---------------------------------------------------------------

def default_client_id(group=None):
    return "metergate-ingest-%s%s" % (socket.gethostname(), "-" + group if group else "")


class _Inbox:
    """How many messages arrived and are not committed yet (demo.py waits for
    ``empty()`` before stopping; the paho version had a queue here)."""

    def __init__(self):
        self.n = 0

    def qsize(self):
        return self.n

    def empty(self):
        return self.n == 0


class Ingest:
    """One ingest process: ``run()`` until ``stop()`` (or a signal handler calling it).

    One thread does everything: receive a batch (``batch_max`` messages, or
    what arrived within ``linger_s`` of the first), classify it, commit it in
    one transaction, then acknowledge it in one send if the connection that
    delivered it is still the current one. ``backoff_s`` (first, max) paces
    retries while the database is unavailable and reconnects to the broker
    (with jitter, so that a group's members do not return in step).
    """

    def __init__(self, broker_url, db_url, *, client_id=None, group=None, prefix="metergate", rule=None,
                 batch_max=1000, linger_s=0.02, backoff_s=(0.5, 30.0), username=None, password=None,
                 ca_certs=None, keepalive=30, on_batch=None, db_timeout_s=5.0, max_packet=DEFAULT_MAX_PACKET):
        from metergate.bench.broker import parse_mqtt_url

        self.scheme, self.host, self.port = parse_mqtt_url(broker_url)
        if password is not None and username is None:
            raise ValueError("a broker password needs a user name as well (MQTT 3.1.1 sends none without one)")
        self.broker_url = broker_url
        self.store = Store(db_url, busy_timeout_s=db_timeout_s, connect_timeout_s=max(1, int(db_timeout_s)))
        self.rule = rule or CollectionRule()
        self.client_id = client_id or default_client_id(group)
        self.group = group
        self.prefix = prefix
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.backoff_s = backoff_s
        self.username, self.password, self.ca_certs = username, password, ca_certs
        self.keepalive = keepalive
        self.max_packet = max_packet
        self.on_batch = on_batch
        self.inbox = _Inbox()
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self.writer = None
        self.session = None
        self.retries = 0

    def stop(self):
        self._stop.set()

    def _make_session(self):
        return Session(self.host, self.port, self.client_id, tls=self.scheme == "mqtts", ca_certs=self.ca_certs,
                       username=self.username, password=self.password, keepalive=self.keepalive,
                       clean_session=False, max_packet=self.max_packet, interrupted=self._stop.is_set)

    def _connect_store(self):
        delay = self.backoff_s[0]
        while not self._stop.is_set():
            try:
                self.store.connect()
                return True
            except Unavailable as exc:
                log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
        return False

    def _wait(self, seconds):
        """Sleep (True when told to stop meanwhile), keeping the broker connection alive."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left, 1.0)):
                return True
            if self.session is not None and self.session.connected:
                try:
                    self.session.ping_if_due()
                except MqttError:
                    pass  # lost: its batch's acks are void, the next receive reconnects

    def _commit(self, records):
        """Write until it commits (True) or we are told to stop (False); never gives up on its own."""
        delay = self.backoff_s[0]
        while True:
            try:
                if self.store.conn is None:
                    self.store.connect()
                self.writer.write_or_quarantine(records)
                return True
            except Unavailable as exc:
                self.retries += 1
                log.warning("database unavailable (%s): %d messages held unacknowledged, retry in %.1f s",
                            exc, len(records), delay)
                self.store.close()
                if self._wait(delay):
                    return False
                delay = min(delay * 2, self.backoff_s[1])

    def _record(self, m):
        if m.truncated:  # judged without its bytes: acknowledged once quarantined, not met again forever
            parts = m.topic.split("/")
            return Record("quarantine", parts[2] if len(parts) == 4 and parts[0] == self.prefix else None,
                          topic=m.topic, payload=m.payload,
                          reason="payload of %d bytes beyond the ingest's limit of %d (first %d bytes kept)"
                          % (m.size, self.max_packet, len(m.payload)))
        return classify(m.topic, m.payload, self.prefix)

    def _connect(self, session, filters):
        """Connect and subscribe; the first refusal is raised (a configuration error), later ones retried."""
        present = session.connect()
        log.info("connected to %s as %s (session present: %s)", self.broker_url, self.client_id, present)
        # subscribing again on every connection is harmless and covers a session the broker lost
        session.subscribe(filters, 1)
        log.info("subscribed to %s", ", ".join(filters))
        self.subscribed.set()

    def run(self):
        if not self._connect_store():
            return None
        self.writer = BatchWriter(self.store, self.rule)
        self.session = session = self._make_session()
        filters = subscriptions(self.prefix, self.group)
        delay = self.backoff_s[0]
        try:
            while not self._stop.is_set():
                if not session.connected:
                    try:
                        self._connect(session, filters)
                        delay = self.backoff_s[0]
                        continue
                    except (ConnectRefused, SubscriptionRefused) as exc:
                        session.close(disconnect=False)
                        if not self.subscribed.is_set():
                            raise  # never worked: wrong credentials, ACL, client id; say so and leave
                        log.error("%s; retrying", exc)
                    except (MqttError, OSError) as exc:
                        session.close(disconnect=False)
                        if self._stop.is_set():
                            break
                        log.warning("cannot reach the broker %s (%s); retrying", self.broker_url, exc)
                    self._stop.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.backoff_s[1])
                    continue
                try:
                    batch = session.receive(self.batch_max, self.linger_s, timeout=0.2)
                except (MqttError, OSError) as exc:
                    session.close(disconnect=False)
                    log.warning("lost the broker %s (%s); reconnecting", self.broker_url, exc)
                    continue
                if not batch:
                    continue
                self.inbox.n = len(batch)
                generation = session.generation
                records = [self._record(m) for m in batch]
                if not self._commit(records):
                    break  # stopping with the batch uncommitted: the broker redelivers it
                if session.connected and session.generation == generation:
                    try:
                        session.ack([m.packet_id for m in batch])
                    except MqttError as exc:
                        log.warning("lost the broker %s while acknowledging (%s); it redelivers, the keys "
                                    "make that a no-op", self.broker_url, exc)
                # else: delivered on a connection since lost; the broker sends them again
                self.inbox.n = 0
                if self.on_batch is not None:
                    self.on_batch(len(batch))
        finally:
            session.close()  # a clean goodbye: the session and its unacked messages stay on the broker
            self.store.close()
        return self.writer.counts
