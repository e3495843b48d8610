# MicroPython driver for tests/host/test_spool_crash.py: opens the spool, reads
# back what is unacked, then appends and acks in a loop until it is killed.
# usage: micropython spool_crash_driver.py FIRMWARE_DIR SPOOL_DIR SEED [once]
# Output lines (the test only trusts lines that end in a newline):
#   O next_seq floor dropped torn corrupt   after open
#   R seq ok                                each record read back (ok: 1/0)
#   E depth                                 end of read-back
#   C seq                                   append returned: committed
#   A seq                                   about to ack seq
import sys

sys.path.insert(0, sys.argv[1])
from gateway.spool import Spool  # noqa: E402

PAD = b"abcdefghijklmnopqrstuvwxyz0123456789"


def payload(seq):
    # the payload names its own seq: a record served under another seq shows
    n = (seq * 7) % 37
    return b'{"seq":%d,"pad":"%s"}' % (seq, PAD[:n])


def ts_of(seq):
    return (seq * 3 + 1700000000) & 0xFFFFFFFF


_state = [int(sys.argv[3]) & 0x7FFFFFFF or 1]


def rnd(n):
    # small LCG: deterministic per seed, no dependence on the port's random
    _state[0] = (_state[0] * 1103515245 + 12345) & 0x7FFFFFFF
    return (_state[0] >> 8) % n


s = Spool(sys.argv[2], max_bytes=65536, segments=6, max_record=256, ack_every=8, reserve=16)
print("O %d %d %d %d %d" % (s.next_seq, s.floor, s.dropped, s.torn, s.corrupt))
for seq, ts, mv in s.records():
    print("R %d %d" % (seq, 1 if (bytes(mv) == payload(seq) and ts == ts_of(seq)) else 0))
print("E %d" % s.depth)
if len(sys.argv) > 4:
    s.close()
    sys.exit(0)

inflight = []  # published, not yet acked (acks come back out of order)
last_sent = 0
outage = 0
while True:
    q = s.next_seq
    got = s.append(payload(q), ts_of(q))
    if got != q:
        print("X %d %d" % (q, got))
    print("C %d" % got)
    if outage > 0:
        outage -= 1
        continue
    if rnd(150) == 0:
        outage = 20 + rnd(200)  # broker away: the backlog grows
        continue
    # publish the oldest unsent records (replay first, then the live one)
    for seq, ts, data in s.peek(3, after=last_sent):
        inflight.append(seq)
        last_sent = seq
    # the broker acks some of them, in any order
    k = 0
    while inflight and k < 3:
        i = rnd(len(inflight))
        seq = inflight.pop(i)
        print("A %d" % seq)  # before: a kill inside ack() may or may not have applied it
        s.ack(seq)
        k += 1
