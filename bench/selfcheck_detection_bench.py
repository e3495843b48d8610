# The electrical self-check (issue 5) against the simulator's fault catalogue.
#
# 1. Detection matrix: every electrical fault alone (at four load power
#    factors) and in pairs on one meter, DL/T 645-2007 meters (with SW7) and
#    Modbus meters (without): found with the right code, the exact wiring
#    named, ambiguous, wrongly named. Target: 100 % found, 0 wrong.
# 2. False alarms over random clean sites (random loads, power factors inside
#    the expected window, unbalance, noise, unloaded meters). Target: 0.
# 3. Where the identification's assumption ends: a wiring fault under loads
#    whose power factor lies outside the expected window (named right /
#    ambiguous / named wrong), and three-wire clean meters against unbalance.
# 4. Cost on the device: the diagnosis of one meter on the MicroPython unix
#    port, and the heap its import takes, against the wire time of reading
#    that meter's items at 2400 baud (the floor of the check itself).
# The harness is tests/host/test_selfcheck_matrix.py (one matrix, one place).
import pathlib
import random
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (ROOT / "tests" / "host", ROOT / "firmware"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import test_selfcheck_matrix as mx  # noqa: E402
from gateway.selfcheck import electrical  # noqa: E402

N_CLEAN = 1000
SWEEP_PFS = ((0.5, "lagging"), (0.6, "lagging"), (0.7, "lagging"), (0.75, "lagging"), (0.8, "lagging"),
             (0.85, "lagging"), (0.95, "lagging"), (1.0, "lagging"), (0.97, "leading"), (0.94, "leading"),
             (0.9, "leading"), (0.8, "leading"))


def pct(a, b):
    return 100.0 * a / b if b else 100.0


def show(title, res, seconds):
    found = res["expected"] - len(res["missing"])
    print("   %s: %d cases, %d expected findings, found %d (%.1f %%), missing %d; wirings named exactly %d of %d "
          "(%.1f %%), ambiguous %d, named wrong %d; unexplained alarms %d; physically invisible %d (%.1f s)"
          % (title, res["cases"], res["expected"], found, pct(found, res["expected"]), len(res["missing"]),
             res["wiring_named"], res["wiring_expected"], pct(res["wiring_named"], res["wiring_expected"]),
             len(res["ambiguous"]), len(res["wrong"]), len(res["unexpected"]), len(res["invisible"]), seconds))
    for kind in ("missing", "wrong", "unexpected"):
        for x in res[kind][:3]:
            print("      %s: %s" % (kind, x))


def detection():
    t = time.monotonic()
    res = mx.matrix(pfs=mx.MATRIX_PFS)
    show("DL/T 645-2007, singles at PF %s + pairs at PF 0.9" % "/".join(
        "%g%s" % (p, k[:3]) for p, k in mx.MATRIX_PFS), res, time.monotonic() - t)
    t = time.monotonic()
    show("Modbus (no SW7), PF 0.9 lagging", mx.matrix(cases=mx.modbus_cases()), time.monotonic() - t)


def false_alarms():
    t = time.monotonic()
    n, count, unloaded, false = mx.clean_sites(N_CLEAN, seed=7)
    print("   clean sites: %d sites, %d meters (%d unloaded): %d false alarms (%.2f %% of meters) (%.1f s)"
          % (n, count, unloaded, len(false), pct(len(false), count), time.monotonic() - t))
    for f in false[:3]:
        print("      %s" % (f[:4],))


def sweep():
    print("   wiring faults under loads outside the expected window (lagging >= %.2f, leading >= %.2f):"
          % (electrical.DEFAULTS["pf_lagging_min"], electrical.DEFAULTS["pf_leading_min"]))
    print("      %-12s %8s %8s %10s %10s %18s" % ("load PF", "wirings", "right", "ambiguous", "wrong",
                                                   "missed (no alarm)"))
    for pf in SWEEP_PFS:
        cases = [c for c in mx.matrix_cases(pfs=(pf,), pairs=False) if c[1].name.startswith("wiring")]
        res = mx.matrix(cases=cases)
        n = res["wiring_expected"]
        missed = [m for m in res["missing"] if m[2] == {"ELEC-WIRING"}]
        silent = [m for m in missed if not set(m[3]) - {"CHECK-SKIPPED", "ELEC-NO-LOAD"}]
        print("      %-12s %8d %7.1f%% %9.1f%% %9.1f%% %9.1f%% (%.1f%%)" % (
            "%g %s" % pf, n, pct(res["wiring_named"], n), pct(len(res["ambiguous"]), n), pct(len(res["wrong"]), n),
            pct(len(missed), n), pct(len(silent), n)))
    print("   three-wire clean meters against load unbalance (smallest phase weight / largest), PF 0.82-1 lagging:")
    rng = random.Random(3)
    for low in (1.0, 0.8, 0.6, 0.4, 0.2):
        alarms = 0
        for _ in range(60):
            w = [1.0, 1.0, 1.0]
            w[rng.randrange(3)] = low
            pf = round(rng.uniform(0.82, 1.0), 3)
            rig = mx.Rig(mx.site_text([("t", "three-phase-3w", None, 10.0, pf, "lagging", tuple(w))]))
            alarms += any(f["severity"] in mx.ALARMS for f in rig.diagnose("t"))
        print("      unbalance %.1f: %d of 60 meters with an alarm" % (low, alarms))


MPY_SCRIPT = r"""
import sys, gc, time
sys.path.insert(0, %(fw)r)
gc.collect()
free0 = gc.mem_free()
from gateway.selfcheck import electrical, findings
gc.collect()
free1 = gc.mem_free()
cases = %(cases)r
for kind, readings in cases:
    n = 50
    t = time.ticks_us()
    for _ in range(n):
        electrical.diagnose(kind, readings)
    dt = time.ticks_diff(time.ticks_us(), t) / n
    print("%%s %%d" %% (kind, dt))
print("import %%d" %% (free0 - free1))
"""


def device_cost():
    """Diagnosis time per meter on the MicroPython unix port (a desktop CPU: an ESP32
    at 240 MHz is roughly 20-50x slower) and the wire time of the items it needs."""
    mpy = ROOT / ".venv" / "bin" / "micropython"
    if not mpy.exists():
        print("   device cost: skipped (no .venv/bin/micropython)")
        return
    meters = mx.base_meters()
    rig = mx.Rig(mx.site_text(meters, [mx.wiring_body("m3", "abc", ((1, "b"), (1, "a"), (1, "c")))]))
    cases = []
    for mid, kind, *_ in meters[::2] + meters[3:]:
        readings = rig.read(mid, mx.T0, electrical.needed_items(kind))
        cases.append((kind, {k: (v if isinstance(v, tuple) else float(v)) for k, v in readings.items()}))
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "fw"
        subprocess.run([str(ROOT / ".venv" / "bin" / "metergate"), "firmware", "build", "--out", str(out)],
                       check=True, capture_output=True)
        script = pathlib.Path(tmp) / "cost.py"
        script.write_text(MPY_SCRIPT % {"fw": str(out), "cases": cases})
        proc = subprocess.run([str(mpy), str(script)], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        print("   device cost: micropython failed: %s" % proc.stderr.strip()[-300:])
        return
    for line in proc.stdout.split("\n"):
        parts = line.split()
        if len(parts) != 2:
            continue
        if parts[0] == "import":
            print("   heap taken by importing gateway.selfcheck (findings + electrical): %.1f KB" % (int(parts[1]) / 1024))
            continue
        kind, us = parts[0], int(parts[1])
        items = electrical.needed_items(kind)
        # one single read per item: 16-byte request + reply with 4 FE and 12 + 4 + data bytes, 11 bits, + Td 20 ms
        wire = 0.0
        for name in items:
            alias = mx.ITEM_ALIASES.get(name)
            di = alias[0] if alias else name
            size = mx.dlt645_items.item_info(di)["bytes"]
            wire += (16 + 4 + 12 + 4 + size) * 11 / 2400.0 + 0.020
        print("   %s: diagnosis %.2f ms on the unix port vs reading its %d items at 2400 baud %.0f ms "
              "(wire floor): %.4f x" % (kind, us / 1000.0, len(items), wire * 1000, us / 1e6 / wire))


def run():
    detection()
    false_alarms()
    sweep()
    device_cost()


if __name__ == "__main__":
    run()
