# Runs under the MicroPython unix port (bench/spool_bench.py starts it, with a
# mosquitto and a paho-mqtt subscriber already up): the runtime's spool +
# publisher + the real MQTT client (gateway/mqtt.py) against that broker.
#
# argv: build dir, tests/firmware, broker port, BACKLOG, REPLAY2, LIVE, PACED.
# 1. Backlog: one meter (6 items, DL/T 645-2007 behind the fake UART of the
#    firmware tests, no wire time) polled BACKLOG times with no broker
#    connection: every reading waits in the spool, as after an outage.
# 2. Capacity: the client connects; the backlog goes out through the
#    runtime's own _publish / on_ack (spool.peek in batches of 16, publish
#    QoS 1, a record leaves the spool at its PUBACK) with no pacing at all.
#    Timed from connect to the last PUBACK.
# 3. The runtime's publisher task replaying REPLAY2 records appended as a
#    backlog, with mqtt.replay_per_s = 1000 (the schema's maximum).
# 4. Steady state: LIVE readings written by the runtime's record() (spool
#    append, then handed to the publisher as live) as fast as they are taken,
#    timed until the last one is acknowledged.
# 5. The configured pacing: PACED records appended as a backlog,
#    replay_per_s = 20 (the default), timed.
# Prints "phase <name> <n> <us>" lines.
import sys
import time

sys.path.insert(0, sys.argv[2])  # tests/firmware
sys.path.insert(0, sys.argv[1])  # the compiled firmware
PORT = int(sys.argv[3])
BACKLOG = int(sys.argv[4])
REPLAY2 = int(sys.argv[5])
LIVE = int(sys.argv[6])
PACED = int(sys.argv[7])

import asyncio  # noqa: E402

from gateway import link as lk  # noqa: E402
from gateway import runtime as rtm  # noqa: E402
from gateway.protocols import dlt645  # noqa: E402

import test_runtime as tr  # noqa: E402

lk.char_ms = lambda *a: 0.0  # the fake UART has no wire

ADDR = "202107070001"
VALUES = {0x02010100: 220.1, 0x02020100: 5.432, 0x02030000: 1.1954, 0x02060000: 0.987,
          0x00010000: 317.76, 0x00020000: 12.5}
bus = tr.FakeBus()
bus.dlt[dlt645.address_to_wire(ADDR)] = (2007, 2400, dict(VALUES))
cfg = {"poll_interval_s": 10, "health_interval_s": 3600,
       "mqtt": {"url": "mqtt://127.0.0.1:%d" % PORT, "replay_per_s": 1000},
       "spool": {"max_bytes": 16 * 1024 * 1024, "segments": 16},  # room for the whole backlog
       "meters": [{"id": "m01", "protocol": "dlt645-2007", "address": ADDR,
                   "items": ["voltage", "current", "power", "power_factor", "energy_forward", "energy_reverse"]}]}
hal = tr.FakeHal(cfg, bus)
rt = rtm.Runtime(hal, cfg, out=lambda s: None)
rt._console = lambda b: None
uart = hal._uart
m = rt.meters[0]


def us():
    return time.ticks_us()


def report(name, n, t0):
    print("phase %s %d %d" % (name, n, time.ticks_diff(us(), t0)))


J = [None, None]


def backlog(n):
    """n readings into the spool behind the publisher's back (no live hand-over)."""
    for _ in range(n):
        rt.spool.append(rt.writer.reading(rt.reading_head, m.id, m.out[0], rt.spool.next_seq, hal.time(), J[0], J[1], rtm._num),
                        hal.time())


async def drained(limit_s=120):
    end = time.ticks_add(time.ticks_ms(), limit_s * 1000)
    while rt.spool.depth and time.ticks_diff(end, time.ticks_ms()) > 0:
        await asyncio.sleep_ms(1)


async def main():
    for _ in range(BACKLOG):  # 1. the outage: polled, spooled, not sent
        await rt.poll_group(m, 0)
        uart.written.clear()
        uart.events.clear()
    assert rt.spool.depth == BACKLOG, rt.spool.depth
    judged, errors = await rt.poll_group(m, 0)  # one more: the values the later phases write
    J[0], J[1] = judged, errors
    print("backlog %d bytes %d" % (rt.spool.depth, rt.spool.used_bytes()))

    t0 = us()  # 2. capacity: from connect to the last PUBACK, no pacing
    cli = asyncio.create_task(rt.mqtt.run())
    while not rt.mqtt.connected:
        await asyncio.sleep_ms(1)
    report("connect", 0, t0)
    last = 0
    while rt.spool.depth:
        recs = rt.spool.peek(16, after=last)
        if not recs:
            await asyncio.sleep_ms(1)  # all sent: the last PUBACKs are on their way
            continue
        for seq, _ts, payload in recs:
            await rt._publish(seq, payload)
            last = seq
    report("capacity", BACKLOG + 1, t0)

    backlog(REPLAY2)  # 3. the runtime's publisher task at replay_per_s 1000
    t0 = us()
    pub = asyncio.create_task(rt.publisher())
    await drained()
    report("replay1000", REPLAY2, t0)

    t0 = us()  # 3. live readings, as fast as the publisher takes them
    for i in range(LIVE):
        rt.record(m, 0, hal.time(), judged, errors)
        await asyncio.sleep_ms(0)
    await drained()
    report("live", LIVE, t0)

    rt.replay_per_s = rtm.REPLAY_PER_S  # 5. the configured pacing (20/s by default)
    backlog(PACED)
    t0 = us()
    rt.pub_wake.set()
    await drained()
    report("paced", PACED, t0)
    print("left %d" % rt.spool.depth)
    rt.stop()
    await rt.mqtt.disconnect()
    pub.cancel()
    cli.cancel()


asyncio.run(main())
