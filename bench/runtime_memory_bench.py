# The gateway runtime's heap with 32 meters under the MicroPython unix port
# (bench/mpy/runtime_memory.py: 32 DL/T 645-2007 meters x 6 items behind the
# fake UART and MQTT client of the firmware tests, the publisher running, every
# publish acknowledged), against the issue-4 targets: heap high-water <= 40 KB,
# no growth over 10,000 polls (live heap after gc.collect() at poll 1,000 and
# at poll 10,000).
#
# The unix port is 64-bit: pointers and GC blocks (32 bytes, 16 on the ESP32)
# are twice the ESP32's, so object-heavy figures are roughly halved there
# (not measured here). The firmware's code (.mpy loaded into the heap) is
# printed apart: on an ESP32 it can be frozen into flash and then costs no heap.
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = 40 * 1024
POLLS = 10000


def run():
    bindir = pathlib.Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="mg-rtmem-") as tmp:
        build = pathlib.Path(tmp) / "fw"
        subprocess.run([str(bindir / "metergate"), "firmware", "build", "--out", str(build)], check=True,
                       capture_output=True)  # the code as flashed (.mpy), and never a stale build
        out = subprocess.run([str(bindir / "micropython"), str(ROOT / "bench" / "mpy" / "runtime_memory.py"),
                              str(build), str(ROOT / "tests" / "firmware"), str(POLLS)],
                             capture_output=True, text=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if " live_high_water " in " " + x + " "]
    if out.returncode or not line:
        raise RuntimeError("runtime_memory.py failed:\n" + out.stdout + out.stderr)
    f = line[0].split()
    d = {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}
    if d["live_high_water"] <= 0 or d["published"] < POLLS:
        raise RuntimeError("the polls did not run (no transaction sampled, %d published):\n%s"
                           % (d["published"], out.stdout))
    code = d["code"] + d["mqtt_code"]

    def kb(x):
        return x / 1024

    # the data figures are from a baseline taken when every bench-side object (fakes, their
    # wrappers, the bench's functions) existed, right before the runtime was made
    data_startup = d["runtime_static"]
    data_live_hw = d["live_high_water"]
    data_peak = d["peak_between_collections"]
    data_health = d["health_peak"]
    per_meter = (d["runtime_static"] - d["runtime_static_1"]) / 31
    print("   MicroPython unix port (64-bit), 32 DL/T 645-2007 meters x 6 items, fake UART + fake MQTT (acked)")
    print("   firmware code in the heap (.mpy): runtime and what it imports %.1f KB + MQTT client %.1f KB = %.1f KB "
          "(%.2f x the %d KB target; none if frozen into flash)"
          % (kb(d["code"]), kb(d["mqtt_code"]), kb(code), code / TARGET, TARGET // 1024))
    print("   after start-up, the runtime's objects: %.1f KB (%.2f x target) = %.1f KB fixed (spool, link, writer "
          "buffers, the meters' shared Profile %.2f KB) + %.2f KB a meter (Meter object with its stats %.2f KB)"
          % (kb(data_startup), data_startup / TARGET, kb(d["runtime_static_1"] - per_meter),
             kb(d["meter_profile"]), kb(per_meter), kb(d["meter_obj"])))
    print("   during polling, live high-water (collected at every UART wait, one round): %.1f KB of data "
          "(%.2f x target); %.1f KB with the code (%.2f x)"
          % (kb(data_live_hw), data_live_hw / TARGET, kb(data_live_hw + code), (data_live_hw + code) / TARGET))
    print("   peak between collections (collected before each poll, none during it): %.1f KB of data (%.2f x target), "
          "%.1f KB with the code (%.2f x); garbage a poll (6 reads + reading + spool + publish) %.1f KB"
          % (kb(data_peak), data_peak / TARGET, kb(data_peak + code), (data_peak + code) / TARGET,
             kb(d["garbage_per_poll"])))
    print("   health message for 32 meters: peak %.1f KB of data (%.2f x target), %.1f KB of garbage"
          % (kb(data_health), data_health / TARGET, kb(d["health_garbage"])))
    growth = d["live_at_end"] - d["live_at_1000"]
    print("   live heap after gc.collect(): poll 1,000 %d B, poll %d %d B, poll %d %d B: growth %+d B "
          "(%.2f B a poll; target 0); %d readings published and acked, spool depth %d, unacked %d"
          % (d["live_at_1000"], d["polls"] // 2, d["live_at_mid"], d["polls"], d["live_at_end"], growth,
             growth / (d["polls"] - 1000), d["published"], d["spool_depth"], d["unacked"]))


if __name__ == "__main__":
    run()
