"""Every board config validates against the schema and is consistent with itself."""

import json
import pathlib

import jsonschema
import pytest

BOARDS = pathlib.Path(__file__).resolve().parents[2] / "board_configs"
SCHEMA = json.loads((BOARDS / "schema.json").read_text())
CONFIGS = sorted(p for p in BOARDS.glob("*.json") if p.name != "schema.json")


def test_there_is_a_generic_and_a_commercial_board():
    names = {p.stem for p in CONFIGS}
    assert "esp32-devkitc-max485" in names
    assert "lilygo-t-can485" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_board_config(path):
    config = json.loads(path.read_text())
    jsonschema.validate(config, SCHEMA)
    assert config["name"] == path.stem
    uart = config["uart"]
    used = [uart["tx"], uart["rx"]] + [p for p in (uart["de"], uart.get("re")) if p is not None]
    used += [entry["pin"] for entry in config.get("power_enable", [])]
    assert len(used) == len(set(used)), "a GPIO is used twice"
    # a DE pin is needed exactly when the transceiver does not switch direction by itself
    assert (uart["de"] is None) == (config["transceiver"]["direction"] == "automatic")
    assert ("de-pin" in config["capabilities"]) == (uart["de"] is not None)
    assert ("supply-adc" in config["capabilities"]) == (config.get("supply_adc") is not None)
    # inverting TX confuses an automatic-direction transceiver (PROTOCOLS.md)
    if config["transceiver"]["direction"] == "automatic":
        assert "uart-invert" not in config["capabilities"]


def test_schema_rejects_a_missing_pin():
    config = json.loads(CONFIGS[0].read_text())
    del config["uart"]["tx"]
    with pytest.raises(jsonschema.ValidationError, match="'tx' is a required property"):
        jsonschema.validate(config, SCHEMA)
