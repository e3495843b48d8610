# Firmware memory under the MicroPython unix port, against the ESP32's budget:
# an ESP32 without PSRAM leaves about 100 KB of heap for everything
# (PROTOCOLS/brief), so the runtime's own objects are printed as a fraction of
# that, and the garbage one reading leaves (what the GC must clean up) per
# reading and per bus transaction.
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAP_BUDGET = 100 * 1024


def run():
    import tempfile

    mpy = pathlib.Path(sys.executable).with_name("micropython")
    with tempfile.TemporaryDirectory(prefix="mg-fwmem-") as tmp:
        build = pathlib.Path(tmp) / "mpy"  # always this checkout's code, never a stale build
        subprocess.run([str(pathlib.Path(sys.executable).with_name("metergate")), "firmware", "build", "--out",
                        str(build)], check=True, capture_output=True)
        out = subprocess.run([str(mpy), str(ROOT / "bench" / "mpy" / "runtime_mem.py"), str(build),
                              str(ROOT / "tests" / "firmware")], capture_output=True, text=True, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("static ")]
    if not line:
        raise RuntimeError("runtime_mem.py printed nothing useful:\n" + out.stdout + out.stderr)
    f = line[0].split()
    d = {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}
    print("   runtime objects with 3 meters, spool, link buffers: %d bytes = %.2f of a %d KB heap"
          % (d["static"], d["static"] / HEAP_BUDGET, HEAP_BUDGET // 1024))
    print("   garbage per reading: %d bytes (%.3f of the heap); per bus transaction: %d bytes (%d transactions)"
          % (d["garbage_per_reading"], d["garbage_per_reading"] / HEAP_BUDGET, d["garbage_per_transaction"],
             d["transactions"]))


if __name__ == "__main__":
    run()
