# Runs the dual-runtime test modules under the MicroPython unix port.
# usage: micropython mpy_runner.py FIRMWARE_DIR TESTS_DIR [test_module ...]
# FIRMWARE_DIR may hold .py sources or the .mpy files mpy-cross made from them.
# Prints one line per failure and ends with "N passed, N failed".
import sys
import os

try:
    from time import ticks_ms, ticks_diff
except ImportError:  # lets the runner itself be checked under CPython
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


def main(argv):
    if len(argv) < 3:
        print("usage: mpy_runner.py FIRMWARE_DIR TESTS_DIR [module ...]")
        return 2
    firmware_dir, tests_dir = argv[1], argv[2]
    sys.path.insert(0, tests_dir)
    sys.path.insert(0, firmware_dir)
    wanted = argv[3:]
    names = wanted or sorted(
        n[:-3] for n in os.listdir(tests_dir) if n.startswith("test_") and n.endswith(".py")
    )
    passed = failed = 0
    for name in names:
        try:
            module = __import__(name)
        except Exception as exc:
            failed += 1
            print("FAIL %s (import): %s: %s" % (name, type(exc).__name__, exc))
            sys.print_exception(exc) if hasattr(sys, "print_exception") else None
            continue
        skip_reason = getattr(module, "MICROPYTHON_SKIP", None)
        if skip_reason:
            print("skip %s: %s" % (name, skip_reason))
            continue
        for attr in sorted(dir(module)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(module, attr)
            if not callable(fn):
                continue
            start = ticks_ms()
            try:
                fn()
                passed += 1
            except Exception as exc:
                failed += 1
                print("FAIL %s.%s: %s: %s" % (name, attr, type(exc).__name__, exc))
                if hasattr(sys, "print_exception"):
                    sys.print_exception(exc)
            took = ticks_diff(ticks_ms(), start)
            if took > 2000:
                print("slow %s.%s: %d ms" % (name, attr, took))
    print("micropython: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


sys.exit(main(sys.argv))
