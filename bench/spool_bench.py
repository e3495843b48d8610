# Spool speed under the MicroPython unix port: committed appends a second
# against the peer of the same run, a raw append + flush of the same bytes to a
# plain file (what any durable log must pay at least); replay rate of a
# 10,000-record backlog after a reopen against a raw sequential read; and the
# steady-state cycle (append, read back for publishing, ack) rate.
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

MPY_SCRIPT = """
import sys, time, os
sys.path.insert(0, %(fw)r)
from gateway.spool import Spool
tmp = %(tmp)r
payload = b'{"meter":"202107072529","di":"0201FF00","v":[220.1,220.2,220.0],"u":"V","q":"good","ts":1700000000}'
N = 2000
BACKLOG = 10000

def us():
    return time.ticks_us()

# raw: header-sized write + payload + flush, no checksum, no bookkeeping
hdr = bytearray(20)
f = open(tmp + "/raw.bin", "ab")
t = us()
for i in range(N):
    f.write(hdr)
    f.write(payload)
    f.flush()
raw = time.ticks_diff(us(), t)
f.close()
# raw read-back of the same file: the peer for replay
buf = bytearray(len(payload))
f = open(tmp + "/raw.bin", "rb")
t = us()
for i in range(N):
    f.readinto(hdr)
    f.readinto(buf)
rawread = time.ticks_diff(us(), t)
f.close()

s = Spool(tmp + "/a", max_bytes=4194304, segments=16, max_record=512)
t = us()
for i in range(N):
    s.append(payload, 1700000000 + i)
app = time.ticks_diff(us(), t)
s.close()

s = Spool(tmp + "/b", max_bytes=4194304, segments=16, max_record=512)
for i in range(BACKLOG):
    s.append(payload, 1700000000 + i)
s.close()
t = us()
s = Spool(tmp + "/b", max_bytes=4194304, segments=16, max_record=512)
opened = time.ticks_diff(us(), t)
assert s.depth == BACKLOG
t = us()
n = 0
last = 0
while True:
    got = s.peek(8, last)
    if not got:
        break
    for seq, ts, data in got:
        s.ack(seq)
        n += 1
    last = got[-1][0]
replay = time.ticks_diff(us(), t)
assert n == BACKLOG and s.depth == 0
s.close()

s = Spool(tmp + "/c", max_bytes=262144, segments=8, max_record=512)
t = us()
for i in range(N):
    q = s.append(payload, 1700000000 + i)
    for seq, ts, mv in s.records(q - 1):
        break
    s.ack(q)
steady = time.ticks_diff(us(), t)
s.close()
print(raw, rawread, app, opened, replay, steady, N, BACKLOG, len(payload))
"""


def run():
    with tempfile.TemporaryDirectory() as tmp:
        script = pathlib.Path(tmp) / "spool_bench_mpy.py"
        script.write_text(MPY_SCRIPT % {"fw": str(ROOT / "firmware"), "tmp": tmp})
        out = subprocess.run([str(ROOT / ".venv/bin/micropython"), str(script)], check=True,
                             capture_output=True, text=True, timeout=300).stdout
    raw, rawread, app, opened, replay, steady, n, backlog, size = (int(x) for x in out.split())
    raw_rate = n / (raw / 1e6)
    app_rate = n / (app / 1e6)
    print("spool append (MicroPython unix, %d-byte reading, flushed each): %.0f records/s;"
          " raw file append+flush of the same bytes %.0f records/s; ratio %.2f (spool/raw)"
          % (size, app_rate, raw_rate, app_rate / raw_rate))
    print("spool reopen with a %d-record backlog (verify pass): %.0f ms" % (backlog, opened / 1e3))
    replay_rate = backlog / (replay / 1e6)
    read_rate = n / (rawread / 1e6)
    print("spool replay of the %d-record backlog (read + CRC + ack, oldest first): %.0f records/s;"
          " raw sequential read %.0f records/s, ratio %.2f (replay/raw read); %.2fx the raw append rate"
          % (backlog, replay_rate, read_rate, replay_rate / read_rate, replay_rate / raw_rate))
    print("spool steady state (append + read back + ack): %.0f records/s" % (n / (steady / 1e6)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    run()
