"""The MQTT contract (docs/mqtt.md, metergate/contract/*.schema.json) against
what the firmware really produces: the runtime runs under CPython with the
fake meters of tests/firmware/test_runtime.py, its messages are validated by
jsonschema (an implementation we did not write). The end-to-end check against
mosquitto and the virtual board is tests/host/test_gateway_mqtt.py."""

import json

import pytest

from metergate import contract

import test_runtime as tr  # tests/firmware is on sys.path (tests/conftest.py)


def _run_runtime():
    mq = tr.FakeMqtt()
    mq.connected = True
    cfg = dict(tr.CONFIG, mqtt={"url": "mqtt://h:1"})
    rt, hal, lines = tr._runtime(cfg, mqtt=mq)
    rt.config_errors.append(("meters[9].address", "needs 12 digits"))

    async def main():
        import asyncio

        await rt.on_connect()
        task = asyncio.create_task(rt.publisher())
        await tr._poll_all(rt)
        await rt.on_message(rt.base + "/cmd/poll", b'{"id": "r1", "meter": "m1"}')
        await rt.on_message(rt.base + "/cmd/nope", b'{"id": 7}')
        await tr.rtm.sleep_ms(50)
        rt.stop()
        task.cancel()

    tr._arun(main())
    return rt, mq


def test_every_message_the_runtime_publishes_follows_the_contract():
    rt, mq = _run_runtime()
    kinds = {}
    for topic, payload, qos, retain, _pid in mq.published:
        device, kind, name = contract.kind_of_topic(topic)
        assert device == "gw-test"
        if kind == "config_error" and payload == b"":
            continue
        contract.validate(kind, payload)
        kinds.setdefault(kind, []).append((qos, retain))
    assert sorted(kinds) == ["config_error", "health", "reading", "reply", "status"]
    assert set(kinds["status"]) == {(1, True)} and set(kinds["health"]) == {(1, True)}
    assert set(kinds["reading"]) == {(1, False)} and len(kinds["reading"]) == 3
    # the last will the broker publishes for us follows it too
    will = rt._status_json("offline")
    assert contract.validate("status", will)["state"] == "offline"


def test_failed_reads_follow_the_contract_and_never_carry_a_value():
    bus = tr._bus()
    bus.mute = True
    rt, hal, lines = tr._runtime({"meters": [tr.CONFIG["meters"][0]], "link": {"retries": 0}}, bus)
    tr._arun(tr._poll_all(rt))
    msg = contract.validate("reading", [x for x in lines if x.startswith("READING ")][0][8:].encode())
    assert all("v" not in v and v["q"] == "comm_error" for v in msg["values"].values())


@pytest.mark.parametrize("kind, bad, where", [
    ("reading", {"device": "g", "meter": "m", "seq": 0, "ts": 1, "group": "g", "values": {}}, "seq"),
    ("reading", {"device": "g", "meter": "m", "seq": 1, "ts": 1, "group": "g",
                 "values": {"voltage": {"v": 0, "q": "comm_error", "t": 1}}}, "values/voltage"),
    ("reading", {"device": "g", "meter": "m", "seq": 1, "ts": 1, "group": "g",
                 "values": {"voltage": {"q": "comm_error", "t": 1}}}, "values/voltage"),
    ("status", {"device": "g", "state": "sleeping", "fw": "1", "boot_count": 1}, "state"),
    ("command", {"id": "x", "meter": 5}, "meter"),
])
def test_contract_rejects_what_a_consumer_must_not_accept(kind, bad, where):
    with pytest.raises(contract.ContractError) as info:
        contract.validate(kind, json.dumps(bad).encode())
    assert where in str(info.value)


def test_topics():
    assert contract.topic("metergate", "gw-1", "reading") == "metergate/v1/gw-1/reading"
    assert contract.topic("metergate", "gw-1", "command", "poll") == "metergate/v1/gw-1/cmd/poll"
    assert contract.kind_of_topic("metergate/v1/gw-1/reply/poll") == ("gw-1", "reply", "poll")
    assert contract.kind_of_topic("metergate/v2/gw-1/reading") is None
    with pytest.raises(contract.ContractError, match="not JSON"):
        contract.validate("reading", b"{nope")
