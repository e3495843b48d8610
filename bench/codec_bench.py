# Codec speed: our DL/T 645 parser against the `dlt645` package's parser (a
# peer, same frames, same run, CPython), and our parser under the MicroPython
# unix port against the fastest the wire can deliver frames (the floor a
# gateway must beat by a wide margin to keep up with a busy bus).
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "firmware"))

from gateway.protocols import dlt645 as d  # noqa: E402

N = 20000
# A voltage block reply (0201FF00) as a 2007 meter sends it, with FE preamble.
ADDR = d.address_to_wire("202107072529")
FRAME = bytes(d.build_read_reply(ADDR, 0x0201FF00, bytes([0x00, 0x22, 0x10, 0x22, 0x20, 0x22])))

MPY_SCRIPT = """
import sys, time
sys.path.insert(0, %r)
from gateway.protocols import dlt645 as d
frame = bytes.fromhex(%r)
scratch = bytearray(256)
n = %d
t0 = time.ticks_us()
for _ in range(n):
    d.parse(frame, 0, len(frame), 200, scratch)
dt = time.ticks_diff(time.ticks_us(), t0)
print(dt / n)
"""


def ours_cpython():
    scratch = bytearray(256)
    t0 = time.perf_counter()
    for _ in range(N):
        status, frame, _, _ = d.parse(FRAME, 0, len(FRAME), 200, scratch)
    assert status == d.FRAME
    return (time.perf_counter() - t0) / N


def theirs_cpython():
    from dlt645 import DLT645Protocol

    t0 = time.perf_counter()
    for _ in range(N):
        frame = DLT645Protocol.deserialize(FRAME)
    assert frame is not None
    return (time.perf_counter() - t0) / N


def ours_micropython():
    mpy_dir = ROOT / "build" / "mpy"
    if not (mpy_dir / "gateway").exists():
        subprocess.run([str(ROOT / ".venv/bin/metergate"), "firmware", "build", "--out", str(mpy_dir)],
                       check=True, capture_output=True)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(MPY_SCRIPT % (str(mpy_dir), FRAME.hex(), N))
    out = subprocess.run([str(ROOT / ".venv/bin/micropython"), f.name], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip()) / 1e6


def run():
    ours, theirs = ours_cpython(), theirs_cpython()
    print("DL/T 645 parse, CPython: ours %.1f us/frame, dlt645 package %.1f us/frame, ratio %.2f (peer/ours)"
          % (ours * 1e6, theirs * 1e6, theirs / ours))
    mpy = ours_micropython()
    wire_9600 = len(FRAME) * 11 / 9600
    print("DL/T 645 parse, MicroPython unix: %.1f us/frame; the frame takes %.1f ms on the wire at 9600 8E1:"
          " parse is %.0fx faster than the wire (floor 1x)" % (mpy * 1e6, wire_9600 * 1e3, wire_9600 / mpy))


if __name__ == "__main__":
    run()
