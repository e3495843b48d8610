"""The MQTT contract (docs/mqtt.md): topic names and one JSON Schema per message.

Both sides check against these files: the firmware's output in
tests/host/test_mqtt_contract.py, the back office when it ingests.

    from metergate import contract
    contract.validate("reading", payload_bytes_or_dict)   # raises ContractError
    contract.kind_of_topic("metergate/v1/gw-1/reading")   # -> ("gw-1", "reading", None)
"""

from __future__ import annotations

import functools
import json
import pathlib

import jsonschema

HERE = pathlib.Path(__file__).resolve().parent
VERSION = "v1"
KINDS = ("reading", "health", "status", "config_error", "reply", "command", "selfcheck", "progress")


class ContractError(ValueError):
    """A payload that breaks the contract: `kind`, `reason` (what and where)."""

    def __init__(self, kind: str, reason: str):
        self.kind, self.reason = kind, reason
        super().__init__("%s: %s" % (kind, reason))


@functools.lru_cache(maxsize=None)
def schema(kind: str) -> dict:
    if kind not in KINDS:
        raise KeyError("no message kind %r (%s)" % (kind, ", ".join(KINDS)))
    return json.loads((HERE / ("%s.schema.json" % kind)).read_text())


@functools.lru_cache(maxsize=None)
def _validator(kind: str):
    s = schema(kind)
    cls = jsonschema.validators.validator_for(s)
    cls.check_schema(s)
    return cls(s)


def validate(kind: str, payload) -> dict:
    """The decoded message, or ContractError naming the field and the rule it breaks."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            payload = json.loads(bytes(payload).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ContractError(kind, "not JSON: %s" % exc) from None
    errors = sorted(_validator(kind).iter_errors(payload), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise ContractError(kind, "%s: %s" % (where, e.message))
    return payload


def topic(prefix: str, device: str, kind: str, name: str | None = None) -> str:
    t = "%s/%s/%s/%s" % (prefix, VERSION, device, "cmd" if kind == "command" else kind)
    return t + "/" + name if name else t


def kind_of_topic(topic_name: str, prefix: str = "metergate"):
    """(device, kind, command name or None) for a topic of the contract, else None."""
    parts = topic_name.split("/")
    if len(parts) < 4 or parts[0] != prefix or parts[1] != VERSION:
        return None
    device, kind = parts[2], parts[3]
    if kind == "cmd" and len(parts) == 5:
        return device, "command", parts[4]
    if kind == "reply" and len(parts) == 5:
        return device, "reply", parts[4]
    if len(parts) == 4 and kind in ("reading", "health", "status", "config_error", "selfcheck", "progress"):
        return device, kind, None
    return None
