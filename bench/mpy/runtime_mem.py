# Runs under the MicroPython unix port (bench/firmware_mem_bench.py starts it):
# the gateway runtime's heap use with three meters (DL/T 645-2007, -1997,
# Modbus) behind the fake UART of the firmware tests. The fake's own
# allocations (it builds the meters' replies) are measured and left out.
import gc
import sys

sys.path.insert(0, sys.argv[2])  # tests/firmware
sys.path.insert(0, sys.argv[1])  # the compiled firmware
import asyncio  # noqa: E402

import test_runtime as tr  # noqa: E402
from gateway import link as lk  # noqa: E402

gc.collect()
base = gc.mem_alloc()
rt, hal, lines = tr._runtime(tr.CONFIG)
rt.out = lambda s: None
gc.collect()
static = gc.mem_alloc() - base

fake = [0]
uart = hal._uart
for name in ("wait", "readinto", "any", "write", "flush", "init"):
    f = getattr(uart, name)

    def wrap(*a, _f=f, **k):
        b = gc.mem_alloc()
        r = _f(*a, **k)
        fake[0] += gc.mem_alloc() - b
        return r

    setattr(uart, name, wrap)


async def rounds(n):
    for _ in range(n):
        for m in rt.meters:
            await rt.poll_group(m, 0)


asyncio.run(rounds(1))  # first use: caches, lazily built tables
gc.collect()
gc.disable()
fake[0] = 0
tx0 = sum(m.stats[lk.SENT] for m in rt.meters)
a0 = gc.mem_alloc()
asyncio.run(rounds(2))
a1 = gc.mem_alloc()
gc.enable()
gc.collect()
tx = sum(m.stats[lk.SENT] for m in rt.meters) - tx0
ours = a1 - a0 - fake[0]
print("static %d garbage_per_reading %d garbage_per_transaction %d readings 6 transactions %d" % (
    static, ours // 6, ours // tx, tx))
