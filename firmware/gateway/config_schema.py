# The device config (config.json) as data: a JSON Schema, draft 2020-12,
# restricted to what gateway/config.py validates by hand on the board:
#   type (a name or a list of names), properties, required,
#   additionalProperties: false, enum, minimum, maximum, exclusiveMinimum,
#   minLength, maxLength, minItems, maxItems, uniqueItems, items, default,
#   pattern: anchored ^...$ made of literals, ".", [classes], [^classes] and
#   the quantifiers ? * + {n} {n,m} (no groups, no alternation).
# "integer" means a JSON number written without a fraction (1.0 is not an
# integer here); the host validator (metergate.config) checks the same way.
# Checks a schema cannot say (unique ids, address needed for DL/T 645, the
# poll budget, ...) live in gateway/config.py. Shared by the firmware and the
# host tools (metergate config schema / check). Docs: docs/gateway-config.md.
#
# Shared pieces are referenced, not copied: one object each in RAM.

_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}
_ADDRESS = {"type": "string", "pattern": "^[0-9]{12}$"}
_FILE = {"type": "string", "pattern": "^[A-Za-z0-9._/-]{1,64}$"}
_PROTOCOL = {"enum": ["dlt645-2007", "dlt645-1997", "modbus"]}
_TIMEOUT = {"type": "integer", "minimum": 20, "maximum": 10000}
_BYTE_TIMEOUT = {"type": "integer", "minimum": 5, "maximum": 1000}
_RETRIES = {"type": "integer", "minimum": 0, "maximum": 5}
_INTERVAL = {"type": "number", "minimum": 0.1, "maximum": 86400}
_ITEMS = {"type": "array", "minItems": 1, "maxItems": 32,
          "items": {"type": "string", "minLength": 1, "maxLength": 32}}
_BOOL = {"type": "boolean"}
_STR = {"type": "string", "maxLength": 128}
_GPIO = {"type": "integer", "minimum": 0, "maximum": 48}
_GPIO_OR_NULL = {"type": ["integer", "null"], "minimum": 0, "maximum": 48}
_BIT = {"enum": [0, 1]}

# board_configs/schema.json without oneOf / $ref (a null-or-object is a type
# list; minimum and required only apply to numbers and objects).
BOARD = {
    "type": ["object", "string"],
    "pattern": "^[a-z0-9][a-z0-9-]{0,63}$",
    "required": ["name", "description", "sources", "chip", "uart", "transceiver", "capabilities"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
        "description": {"type": "string", "minLength": 1},
        "sources": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 10}},
        "chip": {"enum": ["esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6"]},
        "uart": {
            "type": "object",
            "required": ["id", "tx", "rx", "de"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 2},
                "tx": _GPIO,
                "rx": _GPIO,
                "de": _GPIO_OR_NULL,
                "de_active": _BIT,
                "re": _GPIO_OR_NULL,
            },
        },
        "transceiver": {
            "type": "object",
            "required": ["direction"],
            "properties": {"direction": {"enum": ["de-pin", "automatic"]}, "part": {"type": "string"}},
        },
        "power_enable": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pin", "value", "why"],
                "additionalProperties": False,
                "properties": {"pin": _GPIO, "value": _BIT, "why": {"type": "string"}},
            },
        },
        "led": {"type": ["object", "null"], "required": ["pin"], "properties": {"pin": _GPIO}},
        "supply_adc": {
            "type": ["object", "null"],
            "required": ["pin", "divider"],
            "properties": {"pin": _GPIO, "divider": {"type": "number", "exclusiveMinimum": 0}},
        },
        "capabilities": {"type": "array", "uniqueItems": True,
                         "items": {"enum": ["uart-invert", "de-pin", "supply-adc"]}},
        "notes": {"type": "string"},
    },
}

METER = {
    "type": "object",
    "required": ["id", "protocol"],
    "additionalProperties": False,
    "properties": {
        "id": _ID,
        "protocol": _PROTOCOL,
        "address": _ADDRESS,
        "model": {"enum": ["ddsu666", "sdm120", "sdm630"]},
        "unit_id": {"type": "integer", "minimum": 1, "maximum": 247},
        "baud": {"type": "integer", "enum": [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]},
        "parity": {"enum": ["N", "E", "O"]},
        "stop_bits": {"type": "integer", "enum": [1, 2]},
        "items": _ITEMS,
        "groups": {
            "type": "array", "minItems": 1, "maxItems": 8,
            "items": {
                "type": "object",
                "required": ["items"],
                "additionalProperties": False,
                "properties": {"name": _ID, "items": _ITEMS, "interval_s": _INTERVAL},
            },
        },
        "response_timeout_ms": _TIMEOUT,
        "byte_timeout_ms": _BYTE_TIMEOUT,
        "retries": _RETRIES,
        "collector": {"type": ["boolean", "string"], "pattern": "^[A-Za-z0-9_-]{1,32}$"},
        "kind": {"enum": ["single-phase", "three-phase-4w", "three-phase-3w"]},
        "block_read": {"enum": [True, False, "auto"], "default": "auto"},
        "position": {
            "type": "object",
            "required": ["position"],
            "additionalProperties": False,
            "properties": {
                "box": {"type": "string", "minLength": 1, "maxLength": 32},
                "position": {"type": "integer", "minimum": 1, "maximum": 999},
            },
        },
        "asset": {"type": "string", "minLength": 1, "maxLength": 32},
        "exporting": {"type": "boolean", "default": False},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://metergate.example/device-config.schema.json",
    "title": "Metergate device config (config.json)",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "device_id": _ID,
        "site": _STR,
        "poll_interval_s": {"type": "number", "minimum": 0.1, "maximum": 86400, "default": 10},
        "health_interval_s": {"type": "number", "minimum": 1, "maximum": 86400, "default": 60},
        "command_token": {"type": "string", "minLength": 8, "maxLength": 64},
        "config_confirm_s": {"type": "number", "minimum": 10, "maximum": 3600, "default": 120},
        "watchdog": {"type": "boolean", "default": True},
        "link": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "properties": {
                "retries": {"type": "integer", "minimum": 0, "maximum": 5, "default": 1},
                "response_timeout_ms": {"type": "integer", "minimum": 20, "maximum": 10000, "default": 500},
                "byte_timeout_ms": {"type": "integer", "minimum": 5, "maximum": 1000, "default": 100},
                "echo": {"type": "boolean", "default": False},
            },
        },
        "bus": {"type": "string", "pattern": "^tcp://[^/]+$"},
        "wifi": {
            "type": "object",
            "required": ["ssid"],
            "additionalProperties": False,
            "properties": {
                "ssid": {"type": "string", "minLength": 1, "maxLength": 32},
                "password": {"type": "string", "maxLength": 64},
            },
        },
        "mqtt": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "pattern": "^mqtts?://[^/]+$"},
                "user": {"type": "string", "maxLength": 64},
                "password": _STR,
                "client_id": {"type": "string", "minLength": 1, "maxLength": 64},
                "keepalive_s": {"type": "integer", "minimum": 10, "maximum": 3600, "default": 60},
                "topic_prefix": {"type": "string", "pattern": "^[A-Za-z0-9_/-]{1,64}$", "default": "metergate"},
                "ca": _FILE,
                "cert": _FILE,
                "key": _FILE,
                "qos": {"type": "integer", "enum": [0, 1], "default": 1},
                "verify": {"type": "boolean", "default": True},
                "replay_per_s": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
            },
        },
        "board": BOARD,
        "spool": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "properties": {
                "max_bytes": {"type": "integer", "minimum": 8192, "maximum": 4194304, "default": 131072},
                "segments": {"type": "integer", "minimum": 2, "maximum": 64, "default": 8},
                "max_record": {"type": "integer", "minimum": 64, "maximum": 4096, "default": 2048},
            },
        },
        "selfcheck": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "on_first_boot": {"type": "boolean"},
                "sample": {"type": "integer", "minimum": 1, "maximum": 200},
                "duplicate_pct": {"type": "integer", "minimum": 1, "maximum": 100},
                "energy_window_s": {"type": "number", "minimum": 0, "maximum": 900},
                "idle_listen_ms": {"type": "integer", "minimum": 0, "maximum": 10000},
                "supply_min_v": {"type": "number", "minimum": 0, "maximum": 60},
                "probe_timeout_ms": {"type": "integer", "minimum": 100, "maximum": 5000},
            },
        },
        "clock": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "properties": {
                "check_interval_s": {"type": "integer", "minimum": 60, "maximum": 86400, "default": 3600},
                "max_drift_s": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 60},
                "sync": {"type": "boolean", "default": True},
                "tz_offset_s": {"type": "integer", "minimum": -43200, "maximum": 50400, "default": 28800},
            },
        },
        "budget": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "properties": {
                "limit": {"type": "number", "minimum": 0.05, "maximum": 1, "default": 1},
                "expected_delay_ms": {"type": "integer", "minimum": 0, "maximum": 10000},
            },
        },
        "collectors": {
            "type": "array",
            "maxItems": 16,
            "default": [],
            "items": {
                "type": "object",
                "required": ["id", "protocol"],
                "additionalProperties": False,
                "properties": {
                    "id": _ID,
                    "protocol": _PROTOCOL,
                    "address": _ADDRESS,
                    "response_timeout_ms": {"type": "integer", "minimum": 20, "maximum": 10000, "default": 2000},
                },
            },
        },
        "meters": {"type": "array", "maxItems": 64, "default": [], "items": METER},
    },
}

# Reasons for patterns, so a user reads "needs 12 digits", not a regex.
PATTERN_REASONS = {
    "^[A-Za-z0-9_-]{1,32}$": "needs 1..32 characters of A-Z a-z 0-9 _ -",
    "^[0-9]{12}$": "needs 12 digits",
    "^[A-Za-z0-9._/-]{1,64}$": "needs a file name on flash: 1..64 characters of A-Z a-z 0-9 . _ / -",
    "^[a-z0-9][a-z0-9-]{0,63}$": "needs a board name: lowercase letters, digits and -",
    "^[a-z0-9][a-z0-9-]*$": "needs lowercase letters, digits and -",
    "^tcp://[^/]+$": "needs tcp://host:port",
    "^mqtts?://[^/]+$": "needs mqtt://host:port or mqtts://host:port",
    "^[A-Za-z0-9_/-]{1,64}$": "needs 1..64 characters of A-Z a-z 0-9 _ / - (no MQTT wildcards)",
}
