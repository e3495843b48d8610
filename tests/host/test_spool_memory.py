# Spool heap use under the MicroPython unix port with an ESP32-sized heap:
# 10,000 append/publish/ack cycles must not grow the heap (no leak).
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MPY = ROOT / ".venv" / "bin" / "micropython"

pytestmark = pytest.mark.skipif(not MPY.exists(), reason="MicroPython unix port not installed")

SCRIPT = """
import gc, sys
sys.path.insert(0, %(fw)r)
from gateway.spool import Spool
s = Spool(%(dir)r, max_bytes=65536, segments=8, max_record=256, ack_every=32)
payload = bytearray(b'{"meter":"202107072529","di":"0201FF00","v":[220.1,220.2,220.0],"ts":1700000000}')
last = 0

def cycle(i):
    global last
    # four readings, published, acked in reverse (QoS1 acks out of order)
    for k in range(4):
        s.append(payload, 1700000000 + i)
    got = []
    for seq, ts, mv in s.records(last):
        got.append(seq)
        last = seq
        if len(got) == 4:
            break
    for k in range(len(got) - 1, -1, -1):
        s.ack(got[k])

for i in range(100):
    cycle(i)
gc.collect()
base = gc.mem_alloc()
peak = 0
for i in range(2500):
    cycle(i)
    if i %% 250 == 0:
        a = gc.mem_alloc()
        if a > peak:
            peak = a
gc.collect()
after = gc.mem_alloc()
print("alloc_before", base)
print("alloc_after", after)
print("growth", after - base)
print("alloc_max_sampled_incl_garbage", peak)
print("depth", s.depth)
s.close()
"""


def test_spool_heap_does_not_grow(tmp_path):
    script = tmp_path / "mem.py"
    script.write_text(SCRIPT % {"fw": str(ROOT / "firmware"), "dir": str(tmp_path / "spool")})
    out = subprocess.run([str(MPY), "-X", "heapsize=96K", str(script)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    print(out.stdout)
    vals = dict(line.split() for line in out.stdout.splitlines())
    assert int(vals["depth"]) == 0
    # 10,000 records appended and acked; a leak of even a byte a record would show
    assert int(vals["growth"]) <= 512, vals
