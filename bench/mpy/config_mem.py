# Runs under the MicroPython unix port (bench/config_mem_bench.py starts it, many
# times, with smaller and smaller -X heapsize): the board's boot up to its
# config, as main.py does it: the runtime's code preloaded, then gateway.config
# loads config.json in safe mode from the flash directory and is dropped again.
#
# argv: build dir (compiled firmware), flash dir (config.json, maybe config.good.json).
# Prints "code N config N source NAME errors N": heap bytes the code takes (the
# runtime, MQTT client and the config loader), the live config after loading
# (and the loader dropped),
# the file the board would run on and how many errors it reported.
import gc
import os
import sys

sys.path.insert(0, sys.argv[1])
flash = sys.argv[2]

import gateway.runtime  # noqa: E402,F401  (main.preload)
import gateway.mqtt  # noqa: E402,F401

os.chdir(flash)
gc.collect()
base = gc.mem_alloc()  # the code the board keeps
from gateway import config as cf  # noqa: E402

gc.collect()
code = gc.mem_alloc()  # and the loader's, while it runs
got = cf.load(cf.FlashFiles(), ("config.json",), cf.GOOD)
cf = None
for name in ("gateway.config", "gateway.config_schema"):
    sys.modules.pop(name, None)
    try:
        delattr(sys.modules["gateway"], name.split(".")[1])
    except AttributeError:
        pass
gc.collect()
print("code %d config %d source %s errors %d" % (code, gc.mem_alloc() - base, got[2], len(got[1])))
for where, reason in got[1]:
    print("error %s: %s" % (where, reason))
