# The config loader's heap peak at boot (issue 4): the 32-meter config.json of
# tests/host/test_gateway_memory.py (~20 KB of text) loaded in safe mode by the
# compiled firmware under the MicroPython unix port, as main.py loads it (the
# runtime's code preloaded first). The peak is measured as the board would meet
# it: the smallest -X heapsize with which the load still succeeds (bisected to
# 256 bytes), less the code. That includes what fragmentation costs, which a
# sum of gc.mem_alloc() readings would not. Printed against the floor, the
# config the loader returns (it must be alive when the loader is done), and the
# 96 KB the reliability test leaves for data.
#
# Three boots: the first (config.json, no good copy: the copy is written), the
# usual one (the good copy is identical: compared, not rewritten), and safe
# mode (config.json broken: the good copy is parsed and used).
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_CAP = 96 * 1024
STEP = 256


def _run(mpy, build, flash, heap):
    out = subprocess.run([str(mpy), "-X", "heapsize=%d" % heap, str(ROOT / "bench" / "mpy" / "config_mem.py"),
                          str(build), str(flash)], capture_output=True, text=True, timeout=60)
    line = [x for x in out.stdout.splitlines() if x.startswith("code ")]
    if out.returncode or not line:
        return None
    f = line[0].split()
    return {"code": int(f[1]), "config": int(f[3]), "source": f[5], "errors": int(f[7])}


def _min_heap(mpy, build, flash, prepare, source):
    """The smallest heap (bytes) with which the load gives `source` without errors."""
    def ok(heap):
        prepare()
        got = _run(mpy, build, flash, heap)
        return got if got is not None and got["source"] == source and got["errors"] == (source != "config.json") \
            else None

    lo, hi = 64 * 1024, 2048 * 1024
    best = ok(hi)
    if best is None:
        raise RuntimeError("the config does not load even with a %d KB heap" % (hi // 1024))
    while hi - lo > STEP:
        mid = (lo + hi) // 2
        got = ok(mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
    return hi, best


def run():
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    import test_gateway_memory as tgm  # the reliability test's own 32-meter config

    bindir = pathlib.Path(sys.executable).parent
    mpy = bindir / "micropython"
    with tempfile.TemporaryDirectory(prefix="mg-cfgmem-") as tmp:
        tmp = pathlib.Path(tmp)
        build = tmp / "fw"
        subprocess.run([str(bindir / "metergate"), "firmware", "build", "--out", str(build)], check=True,
                       capture_output=True)  # this checkout's code, never a stale build
        _path, _site, cfg = tgm._site_and_config(tmp)
        text = json.dumps(cfg, indent=2) + "\n"  # as the bench board's flash holds it
        flash = tmp / "flash"
        flash.mkdir()
        good = flash / "config.good.json"

        def first():
            (flash / "config.json").write_text(text)
            good.unlink(missing_ok=True)

        def usual():
            (flash / "config.json").write_text(text)
            good.write_text(text)

        def safe_mode():
            (flash / "config.json").write_text(text[:-40])
            good.write_text(text)

        print("   32 meters, config.json %d bytes; MicroPython unix port (64-bit), firmware as .mpy" % len(text))
        for label, prepare, source in (("first boot (good copy written)", first, "config.json"),
                                       ("usual boot (good copy identical)", usual, "config.json"),
                                       ("safe mode (config.json broken, good copy used)", safe_mode,
                                        "config.good.json")):
            heap, got = _min_heap(mpy, build, flash, prepare, source)
            peak = heap - got["code"]
            print("   %s: peak %.1f KB of data = %.2f x the config it returns (%.1f KB, the floor); "
                  "%.2f of the test's %d KB" % (label, peak / 1024, peak / got["config"], got["config"] / 1024,
                                                peak / DATA_CAP, DATA_CAP // 1024))


if __name__ == "__main__":
    run()
