"""`metergate backoffice ingest`: the gateways' MQTT messages into the database.

Nothing lost, nothing doubled:

- the session is persistent (clean_session False, a fixed client id), so the
  broker keeps what arrives while the ingest is down;
- acknowledgements are manual (paho-mqtt ``manual_ack``): a message is
  acknowledged only after the transaction holding it has committed; a
  consumer killed at any moment has its unacknowledged messages redelivered;
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
import queue
import socket
import threading
import time

from metergate import contract
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
    validated: bool = True


def _selfcheck_validator():
    """contract.validate('selfcheck') once the contract has it; the schema file if only that exists."""
    if "selfcheck" in contract.KINDS:
        return lambda payload: contract.validate("selfcheck", payload)
    path = contract.HERE / "selfcheck.schema.json"
    if not path.exists():
        return None
    import jsonschema

    schema = json.loads(path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)

    def check(body):
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
            raise contract.ContractError("selfcheck", "%s: %s" % (where, errors[0].message))
        return body
    return check


class FastContract:
    """The contract's schemas compiled to Python code (fastjsonschema): about
    four times the rate of the reference validator on readings. Anything the
    fast check refuses is judged again by ``contract.validate``, whose verdict
    and wording (field and rule) are the ones kept; tests check both agree."""

    def __init__(self, kinds=("reading", "health", "status")):
        import fastjsonschema

        self._refused = fastjsonschema.JsonSchemaException
        self._checks = {kind: fastjsonschema.compile(contract.schema(kind)) for kind in kinds}

    def validate(self, kind, payload):
        check = self._checks.get(kind)
        if check is None:
            return contract.validate(kind, payload)
        try:
            body = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return contract.validate(kind, payload)  # raises with the parser's reason
        try:
            check(body)
        except self._refused:
            return contract.validate(kind, body)
        return body


@functools.lru_cache(maxsize=1)
def _fast_contract():
    try:
        return FastContract()
    except ImportError:  # pragma: no cover - fastjsonschema is a dependency; the reference still works
        return None


def classify(topic: str, payload: bytes, prefix: str = "metergate", selfcheck_validator=None) -> Record:
    """What the message is and whether it keeps the contract (never raises)."""
    payload = bytes(payload)

    def bad(reason, device=None):
        return Record("quarantine", device, topic=topic, payload=payload, reason=reason)

    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[1] != contract.VERSION or parts[3] not in KINDS:
        return bad("not a topic of the contract (%s/%s/<device>/{%s})" % (prefix, contract.VERSION, ",".join(KINDS)))
    device, kind = parts[2], parts[3]
    try:
        if kind == "selfcheck":
            try:
                body = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise contract.ContractError(kind, "not JSON: %s" % exc) from None
            if not isinstance(body, dict):
                raise contract.ContractError(kind, "(top): not a JSON object")
            validated = selfcheck_validator is not None
            if validated:
                body = selfcheck_validator(body)
        else:
            fast = _fast_contract()
            body = fast.validate(kind, payload) if fast is not None else contract.validate(kind, payload)
            validated = True
    except contract.ContractError as exc:
        return bad(str(exc), device)
    if body.get("device", device) != device:
        return bad("%s: device %r in the payload, topic is for %r" % (kind, body.get("device"), device), device)
    return Record(kind, device, body=body, topic=topic, payload=payload, validated=validated)


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
                for day, evidence in self.rule.collected(b).items():
                    if (mid, day) not in self._known_days:
                        new_days.setdefault((mid, day), evidence)
            elif r.kind == "health":
                b = r.body
                health.append((r.device, b["boot_count"], b["uptime_s"], now, r.payload.decode("utf-8")))
            elif r.kind == "selfcheck":
                b = r.body
                t = b.get("ts", b.get("time"))
                t = t if isinstance(t, int) and not isinstance(t, bool) else now
                selfchecks.append((r.device, t, now, 1 if r.validated else 0, r.payload.decode("utf-8")))
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


class Ingest:
    """One ingest process: ``run()`` until ``stop()`` (or a signal handler calling it).

    ``batch_max`` messages (or what arrived within ``linger_s``) go into one
    transaction; ``backoff_s`` (first, max) paces retries while the database
    is unavailable.
    """

    def __init__(self, broker_url, db_url, *, client_id=None, group=None, prefix="metergate", rule=None,
                 batch_max=1000, linger_s=0.02, backoff_s=(0.5, 30.0), username=None, password=None,
                 ca_certs=None, keepalive=30, on_batch=None, db_timeout_s=5.0):
        from metergate.bench.broker import parse_mqtt_url

        self.scheme, self.host, self.port = parse_mqtt_url(broker_url)
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
        self.on_batch = on_batch
        self.inbox = queue.Queue()
        self._stop = threading.Event()
        self._generation = 0  # a new one per connection: acks of an older one are void
        self._connected = threading.Event()
        self.subscribed = threading.Event()
        self._selfcheck = _selfcheck_validator()
        self.writer = None
        self.client = None
        self.retries = 0

    def stop(self):
        self._stop.set()

    # paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker %s refused %s: %s", self.broker_url, self.client_id, reason_code)
            return
        self._generation += 1
        # subscribing again is harmless and covers a session the broker lost
        client.subscribe([(t, 1) for t in subscriptions(self.prefix, self.group)])
        log.info("connected to %s as %s (session present: %s)", self.broker_url, self.client_id,
                 flags.session_present)
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        refused = [c for c in reason_codes if c.is_failure]
        if refused:
            log.error("broker %s refused the subscription: %s", self.broker_url, refused)
        else:
            log.info("subscribed to %s", ", ".join(subscriptions(self.prefix, self.group)))
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("lost the broker %s (%s); reconnecting", self.broker_url, reason_code)

    def _on_connect_fail(self, client, userdata):
        log.warning("cannot reach the broker %s; retrying", self.broker_url)

    def _on_message(self, client, userdata, msg):
        self.inbox.put((self._generation, msg))

    def _make_client(self):
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                             protocol=mqtt.MQTTv311, manual_ack=True)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.scheme == "mqtts":
            client.tls_set(ca_certs=self.ca_certs)
        client.reconnect_delay_set(0.5, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = self._on_connect_fail
        return client

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

    def _next_batch(self):
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.linger_s
        while len(batch) < self.batch_max:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self.inbox.get(timeout=left))
                except queue.Empty:
                    break
        return batch

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
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, self.backoff_s[1])

    def run(self):
        if not self._connect_store():
            return
        self.writer = BatchWriter(self.store, self.rule)
        self.client = client = self._make_client()
        client.connect_async(self.host, self.port, keepalive=self.keepalive)
        client.loop_start()
        try:
            while not self._stop.is_set():
                batch = self._next_batch()
                if not batch:
                    continue
                records = [classify(m.topic, m.payload, self.prefix, self._selfcheck) for _, m in batch]
                if not self._commit(records):
                    break  # stopping with the batch uncommitted: the broker redelivers it
                current = self._generation
                for generation, m in batch:
                    if generation == current:
                        client.ack(m.mid, m.qos)
                if self.on_batch is not None:
                    self.on_batch(len(batch))
        finally:
            client.disconnect()  # a clean goodbye: the session and its unacked messages stay on the broker
            client.loop_stop()
            self.store.close()
        return self.writer.counts
