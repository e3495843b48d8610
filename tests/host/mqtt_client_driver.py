# Drives gateway.mqtt.MQTTClient for tests/host/test_mqtt_client.py, under the
# MicroPython unix port or CPython (the same script for both).
# usage: RUNTIME mqtt_client_driver.py FIRMWARE_DIR CONFIG_JSON|CONFIG_FILE
# CONFIG_JSON: keyword arguments of MQTTClient (will as a list, backoff_ms as a
# list) plus "subscribe": [[topic, qos], ...] made before run() starts.
# Commands, one per line on stdin:
#   pub TOPIC PAYLOAD QOS RETAIN   -> "PID n" (n is None for QoS 0)
#   pubn PREFIX TOPIC N            -> N QoS 1 messages PREFIX-0.., then "PUBN N"
#   sub TOPIC QOS                  -> "SUBACK topic granted"
#   stats                          -> "STATS {json}"
#   mem N                          -> N QoS 1 publishes, each waited for; "MEM {json}"
#   disconnect                     -> "BYE" once run() returned
# Events: "CONNECTED 0|1", "DISCONNECTED reason", "ACK pid",
#         "MSG topic retained payload-hex".
import sys

sys.path.insert(0, sys.argv[1])

import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
from binascii import hexlify  # noqa: E402

from gateway.mqtt import MQTTClient  # noqa: E402

MPY = sys.implementation.name == "micropython"


def out(*parts):
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


async def stdin_reader():
    if MPY:
        return asyncio.StreamReader(sys.stdin)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


quiet = [False]


def on_ack(pid):
    if not quiet[0]:
        out("ACK", pid)


async def on_message(topic, payload, retained):
    await asyncio.sleep(0)  # a coroutine hook
    out("MSG", topic, 1 if retained else 0, hexlify(payload).decode() or "-")


def on_connect(session_present):
    out("CONNECTED", 1 if session_present else 0)


def on_disconnect(reason):
    out("DISCONNECTED", reason)


async def mem_test(client, n):
    payload = b'{"m":"m1","e":12345.67,"p":1234.5,"u":230.1}'
    topic = b"gw/mem/reading"
    quiet[0] = True
    for i in range(20):  # warm up: dict slots, first-use allocations
        pid = await client.publish(topic, payload, 1)
        while pid in client._inflight:
            await asyncio.sleep(0.001)
    gc.collect()
    before = gc.mem_alloc() if MPY else 0
    gc.disable()
    start = gc.mem_alloc() if MPY else 0
    for i in range(n):
        await client.publish(topic, payload, 1)
    gross = (gc.mem_alloc() if MPY else 0) - start
    gc.enable()
    while client._inflight:
        await asyncio.sleep(0.005)
    quiet[0] = False
    gc.collect()
    after = gc.mem_alloc() if MPY else 0
    return {"n": n, "gross_per_publish": gross // n, "net_growth": after - before,
            "mem_free": gc.mem_free() if MPY else 0}


async def main():
    arg = sys.argv[2]
    if not arg.startswith("{"):  # a file: this micropython build dies on an argument of 256+ chars
        with open(arg) as f:
            arg = f.read()
    cfg = json.loads(arg)
    subs = cfg.pop("subscribe", [])
    if cfg.get("will"):
        w = cfg["will"]
        cfg["will"] = (w[0], w[1].encode(), w[2], w[3])
    if cfg.get("backoff_ms"):
        cfg["backoff_ms"] = tuple(cfg["backoff_ms"])
    client = MQTTClient(on_message=on_message, on_ack=on_ack, on_connect=on_connect,
                        on_disconnect=on_disconnect, **cfg)
    for topic, qos in subs:
        await client.subscribe(topic, qos)
    runner = asyncio.create_task(client.run())
    out("READY")
    reader = await stdin_reader()
    while True:
        line = await reader.readline()
        if not line:
            break
        words = line.decode().split()
        if not words:
            continue
        cmd = words[0]
        if cmd == "pub":
            pid = await client.publish(words[1], words[2].encode(), int(words[3]), words[4] == "1")
            out("PID", pid)
        elif cmd == "pubn":
            for i in range(int(words[3])):
                await client.publish(words[2], ("%s-%d" % (words[1], i)).encode(), 1)
            out("PUBN", words[3])
        elif cmd == "sub":
            out("SUBACK", words[1], await client.subscribe(words[1], int(words[2])))
        elif cmd == "stats":
            out("STATS", json.dumps(client.stats))
        elif cmd == "mem":
            out("MEM", json.dumps(await mem_test(client, int(words[1]))))
        elif cmd == "disconnect":
            await client.disconnect()
            await runner
            out("BYE")
            break


asyncio.run(main())
