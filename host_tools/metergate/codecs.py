"""The firmware's pure codecs, importable from the host tools.

ARCHITECTURE.md lets host tools use the firmware's pure parts (DL/T 645 and
Modbus RTU codecs, the config schema) and nothing else. They live in
``firmware/gateway/protocols`` and import each other as ``gateway.protocols.*``,
exactly as on the board, so the firmware directory goes on ``sys.path`` (at the
end: it never shadows a host package).

    from metergate.codecs import dlt645, dlt645_1997, dlt645_items, modbus, modbus_maps
    from metergate.codecs import config_schema, config   # the device config schema + validator
"""

from __future__ import annotations

import pathlib
import sys

FIRMWARE_DIR = pathlib.Path(__file__).resolve().parents[2] / "firmware"

if not (FIRMWARE_DIR / "gateway" / "protocols").is_dir():  # pragma: no cover - only a broken install
    raise ImportError("the firmware codecs are not at %s: install metergate from a source checkout "
                      "(pip install -e .)" % FIRMWARE_DIR)
if str(FIRMWARE_DIR) not in sys.path:
    sys.path.append(str(FIRMWARE_DIR))

from gateway.protocols import dlt645, dlt645_1997, dlt645_items, modbus, modbus_maps  # noqa: E402
from gateway import config, config_schema  # noqa: E402

__all__ = ["FIRMWARE_DIR", "dlt645", "dlt645_1997", "dlt645_items", "modbus", "modbus_maps",
           "config", "config_schema"]
