# `python -m bench [NAME ...]`: run every bench/*_bench.py (or the named ones).
import importlib
import pathlib
import sys
import time
import traceback


def main(argv):
    here = pathlib.Path(__file__).resolve().parent
    names = argv or sorted(p.stem for p in here.glob("*_bench.py"))
    failed = []
    for name in names:
        mod_name = name if name.endswith("_bench") else name + "_bench"
        print("== %s" % mod_name, flush=True)
        start = time.monotonic()
        try:
            importlib.import_module("bench." + mod_name).run()
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(mod_name)
        print("   (%.1f s)" % (time.monotonic() - start), flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
