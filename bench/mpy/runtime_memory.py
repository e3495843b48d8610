# Runs under the MicroPython unix port (bench/runtime_memory_bench.py starts it):
# the gateway runtime's heap with 32 DL/T 645-2007 meters (6 items each)
# behind the fake UART and fake MQTT client of tests/firmware/test_runtime.py,
# the publisher task running and every publish acknowledged.
#
# argv: build dir (compiled firmware), tests/firmware, number of polls.
# Prints one line "key value key value ...", bytes unless named otherwise.
#
# The fake UART has no wire: link.char_ms is made 0 so the asyncio driver's
# wire-time and inter-frame sleeps are sleep_ms(0) (the fake clock, not real
# time, is what the link's timeouts run on). The fakes' own allocations (the
# fake meters build their replies, the fake UART logs what it was sent) are
# measured and left out of the garbage figures; their logs are emptied after
# every poll so they do not grow.
import gc
import sys

sys.path.insert(0, sys.argv[2])  # tests/firmware
sys.path.insert(0, sys.argv[1])  # the compiled firmware
POLLS = int(sys.argv[3])
N_METERS = 32

import asyncio  # noqa: E402  (frozen into every port's firmware: not the gateway's)

gc.collect()
m0 = gc.mem_alloc()  # the interpreter with asyncio

from gateway import runtime as rtm  # noqa: E402  (and with it link, meters, jsonout, spool, protocols)

gc.collect()
m_code = gc.mem_alloc()
from gateway import mqtt as _mqtt_code  # noqa: E402,F401  (the board loads the client too)

gc.collect()
m_mqtt = gc.mem_alloc()
from gateway import link as lk  # noqa: E402
from gateway.protocols import dlt645  # noqa: E402

import test_runtime as tr  # noqa: E402

gc.collect()
m_fakes = gc.mem_alloc()

lk.char_ms = lambda *a: 0.0  # no wire behind the fake UART (see the top)

ITEMS = ["voltage", "current", "power", "power_factor", "energy_forward", "energy_reverse"]
VALUES = {0x02010100: 220.1, 0x02020100: 5.432, 0x02030000: 1.1954, 0x02060000: 0.987,
          0x00010000: 317.76, 0x00020000: 12.5}


class AckMqtt(tr.FakeMqtt):
    """FakeMqtt that keeps nothing but the pids to acknowledge."""

    def __init__(self):
        tr.FakeMqtt.__init__(self)
        self.connected = True
        self.pending = []
        self.n = 0

    async def publish(self, topic, payload, qos=0, retain=False):
        self.pid = self.pid % 65535 + 1
        self.n += 1
        if qos:
            self.pending.append(self.pid)
        return self.pid if qos else 0


gc.collect()
f0 = gc.mem_alloc()
bus = tr.FakeBus()
cfg = {"poll_interval_s": 10, "health_interval_s": 60, "mqtt": {"url": "mqtt://127.0.0.1:1883"}, "meters": []}
for k in range(N_METERS):
    addr = "2021070700%02d" % (k + 1)
    bus.dlt[dlt645.address_to_wire(addr)] = (2007, 2400, dict(VALUES))
    cfg["meters"].append({"id": "m%02d" % (k + 1), "protocol": "dlt645-2007", "address": addr, "items": ITEMS})
hal = tr.FakeHal(cfg, bus)
mq = AckMqtt()
gc.collect()
fakes_static = gc.mem_alloc() - f0  # the fake meters, HAL, UART, MQTT: not the firmware's

uart = hal._uart
fake = [0]
COUNT = [False]  # gc.mem_alloc() walks the heap: count the fakes only while measuring
for name in ("readinto", "any", "write", "flush", "init", "wait"):
    f = getattr(uart, name)

    def wrap(*a, _f=f, **k):
        if not COUNT[0]:
            r = _f(*a, **k)
        else:
            b = gc.mem_alloc()
            r = _f(*a, **k)
            fake[0] += gc.mem_alloc() - b
        # the fake UART's logs are the test's, not the firmware's: keep only what it reads back
        del uart.events[:]
        del uart.written[:-1]
        del uart.inits[1:]
        return r

    setattr(uart, name, wrap)

SAMPLE = [False]
live_max = [0]


async def wait_async(timeout_ms):
    if SAMPLE[0]:  # the live heap in the middle of a transaction
        gc.collect()
        a = gc.mem_alloc()
        if a > live_max[0]:
            live_max[0] = a
    return uart.wait(timeout_ms)


uart.wait_async = wait_async


def tidy():
    """Empty the fake UART's logs and acknowledge what was published."""
    uart.written.clear()
    uart.events.clear()
    del uart.inits[1:]
    p = mq.pending
    while p:
        rt.on_ack(p.pop(0))


async def settle():
    for _ in range(4):
        await asyncio.sleep_ms(0)  # the publisher sends what the poll spooled
    tidy()


async def one(m):
    await rt.poll_group(m, 0)
    await settle()


async def main():
    out = {}
    pub = asyncio.create_task(rt.publisher())
    await asyncio.sleep_ms(0)
    for m in rt.meters:  # warm-up round: first use of caches, lazily built tables
        await one(m)
    polls = N_METERS
    gc.collect()
    out["live_after_warmup"] = gc.mem_alloc() - base

    # peak between collections: collected before each poll, none during it
    peak = 0
    garbage = 0
    for m in rt.meters:
        gc.collect()
        gc.disable()
        fake[0] = 0
        COUNT[0] = True
        a0 = gc.mem_alloc()
        await one(m)
        a1 = gc.mem_alloc() - fake[0]
        COUNT[0] = False
        gc.enable()
        garbage += a1 - a0
        if a1 > peak:
            peak = a1
    polls += N_METERS
    out["peak_between_collections"] = peak - base
    out["garbage_per_poll"] = garbage // N_METERS

    # the same for a health message (32 meters' counters as JSON)
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    await rt.publish_health()
    a1 = gc.mem_alloc()
    gc.enable()
    tidy()
    out["health_peak"] = a1 - base
    out["health_garbage"] = a1 - a0

    # live high-water: collected at every wait for the UART, one round
    SAMPLE[0] = True
    for m in rt.meters:
        await one(m)
    SAMPLE[0] = False
    polls += N_METERS
    out["live_high_water"] = live_max[0] - base

    # leak: live heap after a collection at poll 1,000, half-way and at the end
    # (the slots are made first: a dict or list growing here would show as growth)
    marks = (1000, POLLS // 2, POLLS)
    at = [0, 0, 0]
    k = 0
    while polls < POLLS:
        m = rt.meters[k % N_METERS]
        k += 1
        await one(m)
        polls += 1
        if polls == marks[0] or polls == marks[1] or polls == marks[2]:
            await settle()
            gc.collect()
            at[0 if polls == marks[0] else (1 if polls == marks[1] else 2)] = gc.mem_alloc()
    out["live_at_1000"] = at[0] - base
    out["live_at_mid"] = at[1] - base
    out["live_at_end"] = at[2] - base
    out["polls"] = polls
    out["published"] = mq.n
    out["spool_depth"] = rt.spool.depth
    out["unacked"] = len(rt.sent)
    pub.cancel()
    return out


console = lambda b: None  # noqa: E731  (the board's console path: bytes written, no str copy)
gc.collect()
base = gc.mem_alloc()  # everything the bench itself made: the fakes, their wrappers, these functions
rt = rtm.Runtime(hal, cfg, out=lambda s: None, mqtt_factory=lambda m: mq)
rt._console = console
gc.collect()
runtime_static = gc.mem_alloc() - base
out = asyncio.run(main())

rt.spool.close()
rt = None  # the side measurements below start from its memory freed
# one meter: the runtime's fixed part (spool, link, writer buffers)
one_cfg = dict(cfg)
one_cfg["meters"] = cfg["meters"][:1]
gc.collect()
r0 = gc.mem_alloc()
rt1 = rtm.Runtime(tr.FakeHal(one_cfg, bus), one_cfg, out=lambda s: None, mqtt_factory=lambda m: AckMqtt())
gc.collect()
runtime_static_1 = gc.mem_alloc() - r0
rt1.spool.close()
del rt1
# what one meter costs: the first of a kind (its Meter object and the Profile that meters
# configured alike share), each further one, and its prebuilt reading pieces
from gateway import jsonout, meters as mt  # noqa: E402

gc.collect()
r0 = gc.mem_alloc()
mobj = mt.build(cfg["meters"][1], {"poll_interval_s": 10})
gc.collect()
r1 = gc.mem_alloc()
mobj2 = mt.build(cfg["meters"][2], {"poll_interval_s": 10})
gc.collect()
meter_obj = gc.mem_alloc() - r1
meter_profile = r1 - r0 - meter_obj
mt.forget_profiles()
gc.collect()
r0 = gc.mem_alloc()
gout = [jsonout.group_out(g[0], g[1], mobj.item_units) for g in mobj.groups]  # shared by meters alike
gc.collect()
group_out = gc.mem_alloc() - r0  # (0 when the meters built them already)
del mobj, mobj2, gout

out["interpreter"] = m0
out["code"] = m_code - m0
out["mqtt_code"] = m_mqtt - m_code
out["fakes_code"] = m_fakes - m_mqtt
out["fakes_static"] = fakes_static
out["bench_static"] = base - m_fakes - fakes_static
out["runtime_static"] = runtime_static
out["runtime_static_1"] = runtime_static_1
out["meter_obj"] = meter_obj
out["meter_profile"] = meter_profile
out["group_out"] = group_out
print(" ".join("%s %d" % (k, out[k]) for k in out))
