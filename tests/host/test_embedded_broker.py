"""The demo's embedded broker (amqtt in a child process) with the clients the demo
puts on it: paho-mqtt (the demo's probe), the back office's consumer Session
(the ingest) and the gateway's own MQTT client (the virtual gateway). What the
demo relies on: QoS 1 both ways, retained messages for a later subscriber (once,
flagged retained), persistent sessions that keep what was published while the
client was away (flagged not retained), unacknowledged messages redelivered, a
last will when a client drops and none on a clean goodbye."""

import json
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from metergate.backoffice import traffic
from metergate.backoffice.consumer import Session
from metergate.bench.broker import MqttProbe
from metergate.bench.embedded_broker import EmbeddedBroker
from metergate.bench.procs import port_accepting

pytestmark = pytest.mark.timeout(120)
TOPIC = "metergate/v1/+/reading"


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:6])


@pytest.fixture
def broker(tmp_path):
    with EmbeddedBroker(workdir=tmp_path / "amqtt") as b:
        yield b


def nothing_more(probe, wait=1.0):
    """True when no further message comes within `wait` s."""
    try:
        msg = probe.get(timeout=wait)
    except TimeoutError:
        return True
    raise AssertionError("unexpected %s %r (qos %d, retain %s)" % (msg.topic, msg.payload, msg.qos, msg.retain))


def drain(s, count, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += s.receive(1000, 0.02, 0.2)
    return got


def seqs(messages):
    return sorted(json.loads(m.payload)["seq"] for m in messages)


# -- the process ---------------------------------------------------------------------


def test_start_stop_releases_the_port_and_keeps_only_the_log():
    b = EmbeddedBroker()
    b.start()
    try:
        assert b.process.running
        assert b.url == "mqtt://127.0.0.1:%d" % b.port
        assert port_accepting(b.host, b.port)
        assert "metergate embedded broker ready on 127.0.0.1:%d (amqtt " % b.port in b.process.log_text()
        workdir, pid = b.workdir, b.process.pid
    finally:
        b.stop()
    assert b.process.returncode == 0  # SIGTERM: amqtt shut down, not killed
    assert not pathlib.Path("/proc/%d" % pid).exists() or "Z" in pathlib.Path("/proc/%d/stat" % pid).read_text()
    assert not port_accepting(b.host, b.port)
    with socket.socket() as sock:  # nothing holds the port any more
        sock.bind((b.host, b.port))
    # like Broker: a temp dir of its own holds the log, kept for a post-mortem
    assert [p.name for p in workdir.iterdir()] == ["amqtt.log"]
    shutil.rmtree(workdir)


def test_a_log_in_its_work_dir_kept_and_a_clean_exit(tmp_path):
    with EmbeddedBroker(workdir=tmp_path / "amqtt") as b:
        with MqttProbe(b.url, client_id="hello-log"):
            pass
    log = (tmp_path / "amqtt" / "amqtt.log").read_text()
    assert "connected hello-log (clean_session True" in log
    assert "metergate embedded broker stopped" in log


def test_two_brokers_side_by_side_on_their_own_ports(tmp_path):
    with EmbeddedBroker(workdir=tmp_path / "a") as a, EmbeddedBroker(workdir=tmp_path / "b") as b:
        assert a.port != b.port
        with MqttProbe(a.url) as pa, MqttProbe(b.url) as pb:
            pa.subscribe("x", 1)
            pb.subscribe("x", 1)
            pa.publish("x", b"only-a")
            assert pa.get().payload == b"only-a"
            assert nothing_more(pb, 0.5)


# -- paho-mqtt: the demo's probe ------------------------------------------------------------


def test_qos1_publish_subscribe_and_a_retained_message_for_a_later_subscriber(broker):
    with MqttProbe(broker.url) as sub, MqttProbe(broker.url) as pub:
        assert sub.subscribe("site/#", qos=1) == 1
        pub.publish("site/r", b"reading", qos=1)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("site/r", b"reading", 1, False)
        pub.publish("site/status", b"online", qos=1, retain=True)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.retain) == ("site/status", b"online", False)  # live: not flagged
    with MqttProbe(broker.url) as late:
        assert nothing_more(late, 0.5)  # nothing before it subscribes, though others used site/#
        late.subscribe("site/status", qos=1)
        msg = late.get()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("site/status", b"online", 1, True)
        assert nothing_more(late)  # once, not once per matching filter
    with MqttProbe(broker.url) as clear:
        clear.publish("site/status", b"", qos=1, retain=True)
    with MqttProbe(broker.url) as later:
        later.subscribe("site/#", qos=1)
        assert nothing_more(later)


def test_a_persistent_paho_session_gets_what_was_published_while_it_was_away(broker):
    cid = unique("away")
    first = MqttProbe(broker.url, client_id=cid, clean_session=False).connect()
    assert first.session_present is False
    first.subscribe("gw/+/reading", qos=1)
    first.disconnect()
    with MqttProbe(broker.url) as pub:
        for i in range(5):
            pub.publish("gw/a/reading", b"r%d" % i, qos=1)
    again = MqttProbe(broker.url, client_id=cid, clean_session=False).connect()
    try:
        assert again.session_present is True
        got = [again.get() for _ in range(5)]
        assert [m.payload for m in got] == [b"r%d" % i for i in range(5)]
        assert all(m.qos == 1 and not m.retain for m in got)  # queued, not retained
        # and the kept subscription still delivers live
        with MqttProbe(broker.url) as pub:
            pub.publish("gw/b/reading", b"live", qos=1)
        assert again.get().payload == b"live"
        assert nothing_more(again)
    finally:
        again.disconnect()


def test_a_clean_session_starts_empty(broker):
    cid = unique("clean")
    first = MqttProbe(broker.url, client_id=cid, clean_session=False).connect()
    first.subscribe("gw/+/reading", qos=1)
    first.disconnect()
    with MqttProbe(broker.url) as pub:
        pub.publish("gw/a/reading", b"while-away", qos=1)
    with MqttProbe(broker.url, client_id=cid, clean_session=True) as clean:
        assert clean.session_present is False
        assert nothing_more(clean)


# -- the back office's consumer Session: the demo's ingest ----------------------------------------


def test_the_ingest_session_gets_what_came_while_away_and_unacknowledged_again(broker):
    cid, dev = unique("consumer"), unique("gw")
    s = Session(broker.host, broker.port, cid, keepalive=30, clean_session=False)
    assert s.connect() is False
    assert s.subscribe([TOPIC]) == [1]
    s.close()
    # published while the ingest is away
    traffic.publish(broker.url, traffic.readings_stream([dev], 2, 40))
    assert s.connect() is True
    assert s.subscribe([TOPIC]) == [1]
    got = drain(s, 40)
    assert seqs(got) == list(range(1, 41))
    assert all(m.qos == 1 and m.packet_id and not m.retain for m in got)
    acked, unacked = got[:25], got[25:]
    s.ack([m.packet_id for m in acked])  # one batch of PUBACKs, as the ingest sends after a commit
    s.close()
    # the 15 unacknowledged come again, flagged DUP; the acknowledged do not. The ingest
    # subscribes again after every connect: its SUBACK must not wait for those 15 PUBACKs
    assert s.connect() is True
    assert s.subscribe([TOPIC]) == [1]
    again = drain(s, 15)
    assert seqs(again) == seqs(unacked)
    assert all(m.dup for m in again)
    assert s.receive(1000, 0.02, 1.0) == []
    s.ack([m.packet_id for m in again])
    s.close()
    assert s.connect() is True
    assert s.receive(1000, 0.02, 1.0) == []
    s.close()


def test_messages_not_acknowledged_before_the_ingest_dropped_come_again_however_long_it_took(broker):
    cid, dev = unique("consumer"), unique("gw")
    s = Session(broker.host, broker.port, cid, keepalive=30, clean_session=False)
    s.connect()
    s.subscribe([TOPIC])
    traffic.publish(broker.url, traffic.readings_stream([dev], 1, 5))
    got = drain(s, 5)
    assert seqs(got) == [1, 2, 3, 4, 5]
    time.sleep(6)  # a slow commit: longer than amqtt's own 5 s wait for a PUBACK
    s.close(disconnect=False)  # and then the ingest dies: no DISCONNECT
    assert s.connect() is True
    s.subscribe([TOPIC])
    again = drain(s, 5)
    assert seqs(again) == [1, 2, 3, 4, 5] and all(m.dup for m in again)
    s.ack([m.packet_id for m in again])
    s.close()


def test_the_ingest_session_gets_a_retained_status_once(broker):
    dev = unique("gw")
    topic = "metergate/v1/%s/status" % dev
    with MqttProbe(broker.url) as probe:
        probe.publish(topic, b'{"state": "online"}', qos=1, retain=True)
    s = Session(broker.host, broker.port, unique("consumer"), keepalive=30, clean_session=False)
    s.connect()
    s.subscribe(["metergate/v1/+/status", TOPIC])
    (m,) = drain(s, 1)
    assert (m.topic, m.retain) == (topic, True)
    s.ack([m.packet_id])
    assert s.receive(1000, 0.02, 1.0) == []
    s.close()


# -- last will ------------------------------------------------------------------------------


WILL_CLIENT = r"""
import sys, time
import paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sys.argv[3], protocol=mqtt.MQTTv311)
c.will_set(sys.argv[4], b"offline", qos=1, retain=True)
c.on_connect = lambda *a: print("CONNECTED", flush=True)
c.connect(sys.argv[1], int(sys.argv[2]), keepalive=30)
c.loop_start()
for line in sys.stdin:
    if line.strip() == "bye":
        c.disconnect()
        c.loop_stop()
        print("BYE", flush=True)
        break
"""


def will_client(broker, topic):
    proc = subprocess.Popen([sys.executable, "-c", WILL_CLIENT, broker.host, str(broker.port), unique("will"), topic],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "CONNECTED"
    return proc


def test_a_last_will_when_a_client_drops_and_none_on_a_clean_goodbye(broker):
    with MqttProbe(broker.url) as watcher:
        watcher.subscribe("gw/+/status", qos=1)
        dropped = will_client(broker, "gw/a/status")
        dropped.kill()  # no DISCONNECT: the connection just ends
        dropped.wait(10)
        msg = watcher.get(timeout=10)
        assert (msg.topic, msg.payload, msg.qos) == ("gw/a/status", b"offline", 1)
        with MqttProbe(broker.url) as late:  # a retained will stays for later subscribers
            late.subscribe("gw/a/status", qos=1)
            msg = late.get()
            assert (msg.payload, msg.retain) == (b"offline", True)

        polite = will_client(broker, "gw/b/status")
        polite.stdin.write("bye\n")
        polite.stdin.flush()
        assert polite.stdout.readline().strip() == "BYE"
        polite.wait(10)
        assert nothing_more(watcher)


def _field(data):
    return len(data).to_bytes(2, "big") + data


def test_a_silent_client_is_dropped_after_its_keepalive_and_its_will_published(broker):
    """A gateway that loses power sends nothing more and no FIN: only the keepalive tells."""
    with MqttProbe(broker.url) as watcher:
        watcher.subscribe("gw/+/status", qos=1)
        # CONNECT by hand: clean session, will QoS 1 on gw/s/status, keepalive 1 s, then silence
        body = (_field(b"MQTT") + bytes([4, 0x02 | 0x04 | 0x08]) + (1).to_bytes(2, "big")
                + _field(unique("silent").encode()) + _field(b"gw/s/status") + _field(b"offline"))
        with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
            msg = watcher.get(timeout=15)
            assert (msg.topic, msg.payload) == ("gw/s/status", b"offline")
            assert sock.recv(16) == b""  # and the broker closed the connection


# -- the gateway's own client (firmware/gateway/mqtt.py) ------------------------------------------


@pytest.fixture
def gateway_client():
    """tests/host/test_mqtt_client.py's driver: the firmware client in a child process."""
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import test_mqtt_client as tmc

    made = []

    def make(**cfg):
        runtime = "micropython" if tmc.MPY.exists() else "cpython"
        d = tmc.Driver(runtime, **cfg)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def test_the_gateway_client_qos1_retained_will_and_a_queued_command(broker, gateway_client):
    gw_id = unique("gw")
    with MqttProbe(broker.url) as office:
        office.subscribe("gw/out/#", qos=1)
        gw = gateway_client(client_id=gw_id, port=broker.port, keepalive=30, clean_session=False,
                            will=["gw/out/status", "offline", 1, True], subscribe=[["gw/in/#", 1]])
        assert gw.expect("CONNECTED") == ["CONNECTED", "0"]
        gw.send("pub gw/out/status online 1 1")  # retained status, as the gateway does
        gw.expect("ACK")
        msg = office.get()
        assert (msg.topic, msg.payload, msg.qos) == ("gw/out/status", b"online", 1)
        gw.send("pub gw/out/reading r1 1 0")
        gw.expect("ACK")
        assert office.get().payload == b"r1"
        office.publish("gw/in/cmd", b"live", qos=1)
        assert gw.expect("MSG") == ["MSG", "gw/in/cmd", "0", b"live".hex()]

        # the gateway drops off the network: its will is published
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(5)
        msg = office.get(timeout=10)
        assert (msg.topic, msg.payload) == ("gw/out/status", b"offline")
        # a command sent meanwhile waits in the gateway's persistent session...
        office.publish("gw/in/cmd", b"queued", qos=1)

        back = gateway_client(client_id=gw_id, port=broker.port, keepalive=30, clean_session=False,
                              will=["gw/out/status", "offline", 1, True], subscribe=[["gw/in/#", 1]])
        assert back.expect("CONNECTED") == ["CONNECTED", "1"]
        # ... and comes not flagged retained: the gateway ignores retained commands as stale
        assert back.expect("MSG") == ["MSG", "gw/in/cmd", "0", b"queued".hex()]
        back.send("disconnect")
        back.expect("BYE")
    assert not [line for line in back.seen if line.startswith("MSG") and line.split(" ")[2] == "1"], back.seen
