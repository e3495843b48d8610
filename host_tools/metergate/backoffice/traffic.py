"""Gateway-like MQTT traffic for the back office's tests, the bench and trying
the ingest without a site: contract-valid readings, health and status."""

from __future__ import annotations

import json
import time
import uuid

from metergate import contract

PREFIX = "metergate"


def reading(device, meter, seq, ts=None, energy=100.0, quality="good"):
    ts = int(time.time()) if ts is None else ts
    energy_value = ({"v": energy, "unit": "kWh", "q": quality, "t": ts} if quality != "comm_error"
                    else {"q": "comm_error", "error": "timeout", "unit": "kWh", "t": ts})
    return {"device": device, "meter": meter, "seq": seq, "ts": ts, "group": "energy",
            "values": {"voltage": {"v": 220.1, "unit": "V", "q": "good", "t": ts},
                       "energy_forward": energy_value}}


def status(device, state="online", boot_count=1, fw="0.4.0"):
    return {"device": device, "state": state, "fw": fw, "boot_count": boot_count}


def message(device, kind, body, prefix=PREFIX):
    """(topic, payload bytes) for one message of the contract."""
    return contract.topic(prefix, device, kind), json.dumps(body, separators=(",", ":")).encode()


def readings_stream(devices, meters_per_device, count, ts=None, prefix=PREFIX):
    """`count` reading messages round-robin over devices and their meters, seq 1.. per device."""
    out, seqs = [], {d: 0 for d in devices}
    i = 0
    while len(out) < count:
        device = devices[i % len(devices)]
        seqs[device] += 1
        meter = "m%d" % (1 + (seqs[device] - 1) % meters_per_device)
        out.append(message(device, "reading", reading(device, meter, seqs[device], ts,
                                                      energy=100.0 + seqs[device] / 100), prefix))
        i += 1
    return out


def publish(url, messages, *, client_id=None, retain=False, inflight=1000, timeout=120.0):
    """Publish (topic, payload) pairs at QoS 1 as fast as the broker takes them;
    returns once every one is acknowledged (TimeoutError otherwise)."""
    import paho.mqtt.client as mqtt

    from metergate.bench.broker import parse_mqtt_url

    _, host, port = parse_mqtt_url(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "traffic-" + uuid.uuid4().hex[:8],
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("broker %s did not acknowledge %d messages in %.0f s"
                                   % (url, sum(not i.is_published() for i in infos), timeout))
    finally:
        client.disconnect()
        client.loop_stop()
    return len(infos)
