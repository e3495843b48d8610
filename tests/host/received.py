"""What a back-office subscriber (paho, through MqttProbe) received from a
gateway, every message checked against the MQTT contract on arrival.

``readings``: seq -> the reading (the last copy); ``by_seq``: seq -> {payload
bytes: reading}, so a seq delivered twice with different contents shows;
``other``: (kind, command name, body, retained) of everything else."""

import time

from metergate import contract


class Received:
    def __init__(self, probe):
        self.probe = probe
        self.readings = {}
        self.by_seq = {}
        self.other = []
        self.messages = 0
        self.dupes = 0

    def drain(self, seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                msg = self.probe.get(timeout=min(0.2, left))
            except TimeoutError:
                continue
            device, kind, name = contract.kind_of_topic(msg.topic)
            if kind == "config_error" and msg.payload == b"":
                continue  # a cleared config error
            body = contract.validate(kind, msg.payload)  # raises on a contract violation
            self.messages += 1
            if kind == "reading":
                if body["seq"] in self.readings:
                    self.dupes += 1
                self.readings[body["seq"]] = body
                self.by_seq.setdefault(body["seq"], {})[bytes(msg.payload)] = body
            else:
                self.other.append((kind, name, body, msg.retain))

    def wait_for(self, predicate, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.drain(0.3)
            if predicate():
                return True
        return False
