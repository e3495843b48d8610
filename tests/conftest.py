import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Firmware modules and the dual-runtime test helpers import as top-level packages,
# exactly as they do on the board and under the MicroPython unix port.
for path in (ROOT / "firmware", ROOT / "tests" / "firmware"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
