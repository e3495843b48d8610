"""The ingest's own MQTT 3.1.1 consumer session (metergate.backoffice.consumer):
the packet codec on its own (remaining length, a stream cut anywhere, malformed
and oversized packets), then against a real mosquitto: persistent session,
batched acknowledgements, keepalive, a silent broker, a broker restarted under
a running ingest, TLS with a test CA, a wrong password, a refused subscription."""

import os
import pathlib
import signal
import socket
import ssl
import sys
import threading
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metergate.backoffice import traffic
from metergate.backoffice.consumer import (MAX_REMAINING_LENGTH, PINGRESP, SUBACK, ConnectionLost, ConnectRefused,
                                           MalformedPacket, Message, PacketReader, Session, SubscriptionRefused,
                                           decode_remaining_length, encode_remaining_length, publish_packet,
                                           puback_packets)
from metergate.backoffice.ingest import BROKER_SETTINGS, Ingest
from metergate.backoffice.store import Store
from metergate.bench.broker import Broker, MqttProbe, TlsListener

pytestmark = pytest.mark.timeout(120)
METERGATE = str(pathlib.Path(sys.executable).with_name("metergate"))
TOPIC = "metergate/v1/+/reading"


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:6])


# -- the codec ------------------------------------------------------------------

@given(st.integers(0, MAX_REMAINING_LENGTH))
def test_remaining_length_round_trip(n):
    field = encode_remaining_length(n)
    assert 1 <= len(field) <= 4
    assert decode_remaining_length(field + b"\x00tail") == (n, len(field))
    # every proper prefix says "not complete yet", not a wrong value
    for cut in range(len(field)):
        assert decode_remaining_length(field[:cut]) is None


def test_remaining_length_edges_from_the_spec():
    # the table of spec 2.2.3: the largest value of each length
    for n, field in ((0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
                     (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
                     (268435455, b"\xff\xff\xff\x7f")):
        assert encode_remaining_length(n) == field
        assert decode_remaining_length(field) == (n, len(field))
    for bad in (-1, MAX_REMAINING_LENGTH + 1):
        with pytest.raises(ValueError):
            encode_remaining_length(bad)


@given(st.lists(st.integers(0x80, 0xFF), min_size=4, max_size=6), st.binary(max_size=4))
def test_remaining_length_longer_than_four_bytes_is_malformed(continued, tail):
    with pytest.raises(MalformedPacket, match="longer than 4 bytes"):
        decode_remaining_length(bytes(continued) + tail)
    # and the reader drops the stream instead of waiting for more
    with pytest.raises(MalformedPacket):
        reader = PacketReader()
        reader.feed(b"\x30" + bytes(continued) + tail)
        reader.parse([])


def test_longer_than_needed_encodings_are_accepted():
    # 3.1.1 does not ask for the shortest form (MQTT 5 does)
    assert decode_remaining_length(b"\x80\x00") == (0, 2)
    assert decode_remaining_length(b"\x85\x80\x00") == (5, 3)


def _stream():
    """Packets a broker sends a consumer, with the messages they carry."""
    packets = [
        (publish_packet("metergate/v1/gw-1/reading", b'{"seq": 1}', qos=1, packet_id=1), True),
        (publish_packet("metergate/v1/gw-1/status", b"online", qos=0, retain=True), True),  # no packet id
        (b"\xd0\x00", False),  # PINGRESP
        (publish_packet("metergate/v1/gw-2/reading", b"x" * 300, qos=1, packet_id=65535, dup=True), True),
        (b"\x90\x03\x00\x07\x01", False),  # SUBACK id 7, QoS 1 granted
        (publish_packet("t/\u00e9\u4e2d", b"", qos=1, packet_id=2), True),  # UTF-8 topic, empty payload
        (publish_packet("big", bytes(range(256)) * 80, qos=1, packet_id=3), True),  # 3-byte length
        (publish_packet("metergate/v1/gw-3/reading", b"last", qos=1, packet_id=4), True),
    ]
    return b"".join(p for p, _ in packets), packets


def _parse_all(chunks, max_packet=1 << 20, limit=None):
    reader = PacketReader(max_packet)
    out = []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            before = len(out)
            reader.parse(out, limit)
            if len(out) == before:
                break
    return out, reader


def test_a_stream_cut_at_every_byte_parses_to_the_same_packets():
    data, packets = _stream()
    whole, reader = _parse_all([data])
    assert reader.pending == 0
    messages = [p for p in whole if isinstance(p, Message)]
    assert [(m.topic, m.packet_id, m.qos, m.retain, m.dup) for m in messages] == [
        ("metergate/v1/gw-1/reading", 1, 1, False, False), ("metergate/v1/gw-1/status", None, 0, True, False),
        ("metergate/v1/gw-2/reading", 65535, 1, False, True), ("t/\u00e9\u4e2d", 2, 1, False, False),
        ("big", 3, 1, False, False), ("metergate/v1/gw-3/reading", 4, 1, False, False)]
    assert messages[4].payload == bytes(range(256)) * 80
    assert [p for p in whole if not isinstance(p, Message)] == [(PINGRESP, 0, b""), (SUBACK, 0, b"\x00\x07\x01")]
    for cut in range(1, len(data)):
        assert _parse_all([data[:cut], data[cut:]])[0] == whole, cut
    # and one message at a time (the receive limit) leaves the rest for the next call
    assert _parse_all([data], limit=1)[0] == whole


@settings(max_examples=60)
@given(st.data())
def test_a_stream_in_random_pieces_parses_to_the_same_packets(data):
    stream, _ = _stream()
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=40)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert _parse_all(pieces)[0] == _parse_all([stream])[0]


@pytest.mark.parametrize("data, reason", [
    (b"\xd1\x00", "reserved flags"),                      # PINGRESP with a flag set
    (b"\x10\x00", "not one a broker sends"),              # CONNECT, from the broker
    (b"\xf0\x00", "not one a broker sends"),              # type 15 (reserved in 3.1.1)
    (b"\x36\x05\x00\x01t\x00\x01", "QoS 3"),
    (b"\x32\x05\x00\x01t\x00\x00", "packet id 0"),
    (b"\x32\x03\x00\x01t", "shorter than its topic and packet id"),
    (b"\x30\x03\x00\x05t", "shorter than its topic"),
    (b"\x30\x03\x00\x01\xff", "not UTF-8"),
])
def test_malformed_packets_are_refused(data, reason):
    with pytest.raises(MalformedPacket, match=reason):
        _parse_all([data])


def test_an_oversized_publish_is_reported_truncated_and_skipped_as_it_arrives():
    big = publish_packet("metergate/v1/gw-9/reading", b"y" * 50000, qos=1, packet_id=9)
    after = publish_packet("metergate/v1/gw-9/reading", b"small", qos=1, packet_id=10)
    data = big + b"\xd0\x00" + after
    for size in (1, 7, 4096, len(data)):
        out, reader = _parse_all([data[i:i + size] for i in range(0, len(data), size)], max_packet=1000)
        first = out[0]
        assert (first.topic, first.packet_id, first.size, first.truncated) == ("metergate/v1/gw-9/reading", 9,
                                                                               50000, True)
        assert first.payload == b"y" * 4096  # the first bytes, for the quarantine record
        assert out[1:] == [(PINGRESP, 0, b""), Message("metergate/v1/gw-9/reading", b"small", 10, 1)]
        assert len(reader.buf) <= 4096 + 100  # never buffered whole
    # a control packet beyond the limit is not something to skip
    with pytest.raises(MalformedPacket, match="beyond the limit"):
        _parse_all([b"\x90" + encode_remaining_length(5000) + b"\x00" * 5000], max_packet=1000)


def test_acknowledgements_are_one_buffer_of_pubacks():
    assert puback_packets([1, None, 258, 65535]) == b"\x40\x02\x00\x01" b"\x40\x02\x01\x02" b"\x40\x02\xff\xff"
    assert puback_packets([None]) == b""


# -- against mosquitto ------------------------------------------------------------

@pytest.fixture(scope="module")
def mosquitto():
    with Broker(extra_config=BROKER_SETTINGS) as b:
        yield b


def session(broker, client_id, **kw):
    return Session(broker.host, broker.port, client_id, **kw)


def drain(s, count, timeout=10.0, batch=1000):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += s.receive(batch, 0.02, 0.2)
    return got


def seqs(messages):
    import json

    return sorted(json.loads(m.payload)["seq"] for m in messages)


def test_persistent_session_redelivers_exactly_the_unacknowledged(mosquitto):
    cid, dev = unique("consumer"), unique("gw")
    s = session(mosquitto, cid)
    assert s.connect() is False
    assert s.subscribe([TOPIC]) == [1]
    messages = traffic.readings_stream([dev], 2, 400)
    traffic.publish(mosquitto.url, messages)
    got = drain(s, 400)
    assert seqs(got) == list(range(1, 401))
    assert all(m.qos == 1 and m.packet_id for m in got)
    acked, unacked = got[:250], got[250:]
    s.ack([m.packet_id for m in acked])  # 250 PUBACKs in one send
    s.close()
    # the session and its 150 unacknowledged messages wait on the broker
    assert s.connect() is True
    assert s.generation == 2
    s.subscribe([TOPIC])
    again = drain(s, 150)
    assert seqs(again) == seqs(unacked)
    assert all(m.dup for m in again)
    assert s.receive(1000, 0.02, 1.0) == []  # and nothing that was acknowledged
    s.ack([m.packet_id for m in again])
    s.close()
    assert s.connect() is True
    s.subscribe([TOPIC])
    assert s.receive(1000, 0.02, 1.0) == []
    s.close()


def test_a_retained_qos0_message_has_no_packet_id_and_acks_skip_it(mosquitto):
    dev = unique("gw")
    topic = "metergate/v1/%s/status" % dev
    with MqttProbe(mosquitto.url) as probe:
        probe.publish(topic, b"online", qos=0, retain=True)
    s = session(mosquitto, unique("consumer"))
    s.connect()
    s.subscribe([topic])
    (m,) = drain(s, 1)
    assert (m.topic, m.payload, m.packet_id, m.qos, m.retain) == (topic, b"online", None, 0, True)
    s.ack([m.packet_id])  # nothing to send, nothing broken
    with MqttProbe(mosquitto.url) as probe:
        probe.publish(topic, b"", qos=0, retain=True)  # clears the retained message, reaches us live
    assert drain(s, 1)[0].payload == b""
    s.close()


def test_keepalive_holds_an_idle_connection_and_a_silent_broker_is_noticed(tmp_path):
    with Broker(extra_config=BROKER_SETTINGS, workdir=tmp_path / "b") as broker:
        s = session(broker, unique("consumer"), keepalive=2)
        s.connect()
        s.subscribe([TOPIC])
        idle_until = time.monotonic() + 5.0  # 2.5 x keepalive with nothing to receive
        while time.monotonic() < idle_until:
            assert s.receive(1000, 0.02, 0.2) == []
        dev = unique("gw")
        traffic.publish(broker.url, traffic.readings_stream([dev], 1, 3))
        assert seqs(drain(s, 3)) == [1, 2, 3]
        assert s.generation == 1 and s.connected  # the same connection throughout
        assert "exceeded timeout" not in broker.log_path.read_text()
        # the broker frozen: no PINGRESP, nothing at all; lost after 1.5 x keepalive, not hanging
        os.kill(broker.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ConnectionLost, match="1.5 x keepalive"):
                for _ in range(100):
                    s.receive(1000, 0.02, 0.2)
            assert not s.connected
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)


def test_tls_with_a_test_ca_and_a_wrong_ca_refused(tmp_path, pki):
    tls = TlsListener(pki / "ca.crt", pki / "server.crt", pki / "server.key")
    with Broker(extra_config=BROKER_SETTINGS, tls=tls, workdir=tmp_path / "b") as broker:
        s = Session(broker.host, broker.tls_port, unique("consumer"), tls=True, ca_certs=pki / "ca.crt")
        s.connect()
        assert isinstance(s.sock, ssl.SSLSocket) and s.sock.version()
        s.subscribe([TOPIC])
        dev = unique("gw")
        traffic.publish(broker.url, traffic.readings_stream([dev], 1, 500))
        got = drain(s, 500)
        assert seqs(got) == list(range(1, 501))
        s.ack([m.packet_id for m in got])
        s.close()
        wrong = Session(broker.host, broker.tls_port, unique("consumer"), tls=True, ca_certs=pki / "other-ca.crt")
        with pytest.raises(ssl.SSLCertVerificationError):
            wrong.connect()
        assert not wrong.connected


@pytest.fixture
def locked_broker(tmp_path):
    from metergate.provision.credentials import mosquitto_hash

    (tmp_path / "passwd").write_text("office:%s\n" % mosquitto_hash("right-pw"))
    with Broker(allow_anonymous=False, password_file=tmp_path / "passwd", workdir=tmp_path / "b") as b:
        yield b


def test_a_wrong_password_is_named(locked_broker, tmp_path):
    s = session(locked_broker, unique("consumer"), username="office", password="wrong-pw")
    with pytest.raises(ConnectRefused) as refused:
        s.connect()
    # mosquitto 2.0 answers a wrong password with "not authorized" (5); others say 4
    assert refused.value.code in (4, 5)
    assert "refused the connection: " in str(refused.value) and "CONNACK code" in str(refused.value)
    assert session(locked_broker, unique("consumer"), username="office", password="right-pw").connect() is False
    # the ingest command stops at once with that reason instead of retrying a configuration error
    import subprocess

    out = subprocess.run([METERGATE, "backoffice", "ingest", "--broker", locked_broker.url,
                          "--db", "sqlite:///%s" % (tmp_path / "x.db"), "--username", "office",
                          "--password", "wrong-pw"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "refused the connection" in out.stderr


def test_a_refused_subscription_is_named(tmp_path):
    # mosquitto 2.0 grants every 3.1.1 subscription and applies its ACL per message, so the
    # SUBACK failure code (0x80) comes from a scripted peer on a real socket here
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def peer():
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)                       # CONNECT
            conn.sendall(b"\x20\x02\x00\x00")     # CONNACK accepted
            sub = conn.recv(1024)                 # SUBSCRIBE: echo its packet id, refuse the second filter
            conn.sendall(b"\x90\x04" + sub[2:4] + b"\x01\x80")
            conn.recv(1024)

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    s = Session("127.0.0.1", port, "c")
    s.connect()
    with pytest.raises(SubscriptionRefused, match="metergate/v1/\\+/health") as refused:
        s.subscribe(["metergate/v1/+/reading", "metergate/v1/+/health"])
    assert refused.value.filters == ["metergate/v1/+/health"]
    s.close()
    server.close()
    t.join(5)


def test_ingest_rides_out_a_broker_restart_and_stores_everything(tmp_path):
    workdir = tmp_path / "b"
    broker = Broker(extra_config=BROKER_SETTINGS, persistence=True, workdir=workdir).start()
    port = broker.port
    db = "sqlite:///%s" % (tmp_path / "bo.db")
    devices = [unique("gw") for _ in range(2)]
    messages = traffic.readings_stream(devices, 4, 1200)
    ingest = Ingest(broker.url, db, client_id=unique("ingest"), backoff_s=(0.1, 0.5))
    runner = threading.Thread(target=ingest.run, daemon=True)
    runner.start()

    def stored():
        with Store(db).connect() as s:
            return s.query("SELECT device, seq FROM readings")

    try:
        assert ingest.subscribed.wait(10)
        traffic.publish(broker.url, messages[:400])
        deadline = time.monotonic() + 30
        while len(stored()) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        first_connection = ingest.session.generation
        broker.stop()  # the ingest loses it and keeps retrying
        broker = Broker(extra_config=BROKER_SETTINGS, persistence=True, workdir=workdir, port=port).start()
        traffic.publish(broker.url, messages[400:])
        deadline = time.monotonic() + 30
        while len(stored()) < len(messages) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a redelivery still on its way must not add a row
        assert ingest.session.generation > first_connection
    finally:
        ingest.stop()
        runner.join(10)
        broker.stop()
    assert not runner.is_alive()
    import json

    want = {(json.loads(p)["device"], json.loads(p)["seq"]) for _, p in messages}
    rows = stored()
    assert len(rows) == len(want) and set(rows) == want


def test_an_oversized_message_is_quarantined_and_acknowledged(mosquitto, tmp_path):
    db = "sqlite:///%s" % (tmp_path / "bo.db")
    dev = unique("gw")
    ingest = Ingest(mosquitto.url, db, client_id=unique("ingest"), max_packet=2000)
    runner = threading.Thread(target=ingest.run, daemon=True)
    runner.start()
    try:
        assert ingest.subscribed.wait(10)
        big = ("metergate/v1/%s/reading" % dev, b"{" + b" " * 9000 + b"}")
        traffic.publish(mosquitto.url, [big] + traffic.readings_stream([dev], 1, 2))
        deadline = time.monotonic() + 10
        while sum(ingest.writer.counts.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingest.writer.counts["quarantine"] == 1 and ingest.writer.counts["reading"] == 2
    finally:
        ingest.stop()
        runner.join(10)
    with Store(db).connect() as s:
        ((reason, payload),) = s.query("SELECT reason, payload FROM quarantine")
    assert reason.startswith("payload of 9002 bytes beyond the ingest's limit of 2000")
    assert bytes(payload) == big[1][:len(payload)]
