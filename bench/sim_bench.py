# The meter-bus simulator against the physical floor of the bus it simulates.
#
# 1. Model cost: CPU time the bit-level bus and the meter models spend on one
#    request/reply (virtual time, no sleeping) divided by the wire time of that
#    transaction (bytes x 11 / baud + the meter's delay). Below 1 the simulator
#    keeps up with a real bus; the margin says how many buses one core could run.
# 2. End to end: a real `metergate sim serve` over TCP, timed from the client:
#    measured request/reply time divided by the floor (should be ~1.00: the
#    simulator must be neither faster nor noticeably slower than the wire).
import os
import socket
import statistics
import struct
import sys
import tempfile
import time

from metergate.bench.procs import LOOPBACK, ManagedProcess, free_tcp_port
from metergate.sim import DEMO_SITE
from metergate.sim.bus import Bus
from metergate.sim.meters import build_meters
from metergate.sim.site import SiteState, load_site

ADDRESS = "202107072529"  # demo meter m1, 2400 8E1
N_MODEL = 200
N_WIRE = 20


def request(di):
    body = b"\x68" + bytes.fromhex(ADDRESS)[::-1] + b"\x68\x11\x04" + bytes(
        (b + 0x33) & 0xFF for b in struct.pack("<I", di))
    return b"\xfe" * 4 + body + bytes([sum(body) & 0xFF, 0x16])


def model_cost():
    site = load_site(DEMO_SITE)
    state = SiteState(site)
    meters = build_meters(site, state, "rs485-1", clock=lambda: 1000.0)
    bus = Bus(site, state, meters, seed=1, wall=lambda: 1000.0)
    bus.advance(0.0)
    m1 = site.meter("m1")
    req = request(0x0201FF00)
    t, wire_total, reply_len = 0.0, 0.0, None
    cpu0 = time.process_time()
    for _ in range(N_MODEL):
        bus.write(req, t)
        got = bus.run_until_idle(t)
        reply_len = sum(len(d) for _, d in got)
        end = got[-1][0]
        wire_total += (len(req) + reply_len) * 11 / 2400 + m1.response_delay_ms / 1000
        t = end + 0.05
    cpu = time.process_time() - cpu0
    print("   model: %d transactions (%d + %d bytes): %.2f ms CPU each, wire %.1f ms each: ratio %.3f "
          "(< 1 keeps up; one core could run ~%d such buses)"
          % (N_MODEL, len(req), reply_len, 1000 * cpu / N_MODEL, 1000 * wire_total / N_MODEL,
             cpu / wire_total, wire_total / cpu))


def end_to_end():
    port = free_tcp_port()
    metergate = os.path.join(os.path.dirname(sys.executable), "metergate")
    argv = [metergate, "sim", "serve", "demo", "--listen", "tcp://%s:%d" % (LOOPBACK, port)]
    delay = load_site(DEMO_SITE).meter("m1").response_delay_ms / 1000
    req = request(0x02010100)
    with tempfile.TemporaryDirectory() as tmp, \
            ManagedProcess(argv, os.path.join(tmp, "sim.log"), ready_port=port, ready_timeout=20):
        with socket.create_connection((LOOPBACK, port), 5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(2.0)
            took, n_reply = [], 0
            for _ in range(N_WIRE):
                t0 = time.monotonic()
                s.sendall(req)
                buf = b""
                while not buf.endswith(b"\x16") or len(buf) < 22:
                    buf += s.recv(256)
                took.append(time.monotonic() - t0)
                n_reply = len(buf)
                time.sleep(0.05)
    floor = (len(req) + n_reply) * 11 / 2400 + delay
    med = statistics.median(took)
    print("   wire: %d reads over TCP: median %.1f ms, floor (%d + %d bytes x 11 / 2400 + %d ms) %.1f ms: "
          "ratio %.3f (min %.3f, max %.3f)"
          % (N_WIRE, 1000 * med, len(req), n_reply, 1000 * delay, 1000 * floor, med / floor,
             min(took) / floor, max(took) / floor))


def run():
    model_cost()
    end_to_end()


if __name__ == "__main__":
    run()
