"""The broker the bench uses carries what the gateway relies on: QoS 1 delivery,
retained messages and persistent sessions. Runs against the session broker
(mosquitto we start, or --broker URL)."""

import uuid

import pytest


class Topics:
    """Topic names under a prefix of this test only, so runs on a shared broker do not mix."""

    def __init__(self):
        self.prefix = "metergate-hil/%s" % uuid.uuid4().hex[:12]
        self.retained = []

    def __call__(self, name, retained=False):
        full = "%s/%s" % (self.prefix, name)
        if retained:
            self.retained.append(full)
        return full


@pytest.fixture
def topic(mqtt):
    topics = Topics()
    yield topics
    if topics.retained:
        cleaner = mqtt()
        for name in topics.retained:
            cleaner.publish(name, b"", qos=1, retain=True)  # an empty retained payload deletes it


def test_qos1_message_reaches_another_client(mqtt, topic):
    subscriber, publisher = mqtt(), mqtt()
    reading = topic("gw-1/v1/reading")
    assert subscriber.subscribe(reading, qos=1) == 1
    publisher.publish(reading, b'{"energy_kwh": 1234.56}', qos=1)
    msg = subscriber.get(timeout=5)
    assert msg.topic == reading
    assert msg.payload == b'{"energy_kwh": 1234.56}'
    assert msg.qos == 1
    assert not msg.retain


def test_retained_message_survives_reconnect(mqtt, topic):
    status = topic("gw-1/v1/status", retained=True)
    publisher = mqtt()
    publisher.publish(status, b"online", qos=1, retain=True)
    publisher.disconnect()
    for _ in range(2):  # a client that reconnects gets the retained message again
        client = mqtt()
        client.subscribe(status, qos=1)
        msg = client.get(timeout=5)
        assert (msg.payload, msg.retain) == (b"online", True)
        client.disconnect()


def test_persistent_session_gets_qos1_sent_while_offline(mqtt, topic):
    command = topic("gw-1/v1/cmd")
    client_id = "hil-" + uuid.uuid4().hex[:10]
    gateway = mqtt(client_id, clean_session=False)
    gateway.subscribe(command, qos=1)
    gateway.disconnect()
    mqtt().publish(command, b"reboot", qos=1)
    back = mqtt(client_id, clean_session=False)
    assert back.session_present
    msg = back.get(timeout=5)
    assert (msg.topic, msg.payload, msg.qos) == (command, b"reboot", 1)
    back.disconnect()
    mqtt(client_id, clean_session=True).disconnect()  # drop the session from the broker
