"""The files that make a gateway this gateway: config.json and board.json.

config.json = the site's meters (a site file and its work order, or a config
file), the device id, the board's name, the broker URL with the device's own
credentials, Wi-Fi. It is checked on the host with the same rules the board
applies (metergate.config.check: the shared schema plus the firmware's cross
checks) before anything is written; board.json is checked against
board_configs/schema.json.
"""

from __future__ import annotations

import json
import pathlib

import jsonschema

from metergate import config as devconfig

BOARD_CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "board_configs"


class DeviceConfigError(Exception):
    pass


def board_names(root: pathlib.Path = BOARD_CONFIGS) -> list[str]:
    return sorted(p.stem for p in root.glob("*.json") if p.name != "schema.json")


def load_board(name_or_path: str, root: pathlib.Path = BOARD_CONFIGS) -> dict:
    """A board config by name (board_configs/NAME.json) or path, checked against the schema."""
    path = pathlib.Path(name_or_path)
    if not path.suffix:
        path = root / (name_or_path + ".json")
    if not path.is_file():
        raise DeviceConfigError("board %r: no %s (known boards: %s)" % (name_or_path, path, ", ".join(board_names(root))))
    try:
        board = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DeviceConfigError("%s: not JSON: %s" % (path, exc)) from None
    schema = json.loads((root / "schema.json").read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(board), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise DeviceConfigError("%s: %s: %s" % (path, "/".join(map(str, e.absolute_path)) or "(top)", e.message))
    return board


def site_meters(site_path, bus: str | None = None) -> dict:
    """The meter part of a config for one bus of a site file (with its work order)."""
    from metergate.sim import load_site

    try:
        site = load_site(site_path)
        return devconfig.from_site(site, bus)
    except Exception as exc:  # SiteError / ValueError name the file and field already
        raise DeviceConfigError(str(exc)) from None


def meters_from_config(path) -> dict:
    try:
        return devconfig.read_file(path)
    except devconfig.ConfigFileError as exc:
        raise DeviceConfigError(str(exc)) from None


def build(base: dict, device_id: str, board: dict | None, broker: str | None, credentials: dict | None,
          topic_prefix: str | None = None, wifi: dict | None = None) -> dict:
    cfg = json.loads(json.dumps(base))  # a copy: the batch shares `base`
    cfg["device_id"] = device_id
    if board is not None:
        cfg["board"] = board["name"]
    if broker:
        mqtt = dict(cfg.get("mqtt") or {})
        mqtt["url"] = broker
        if credentials:
            mqtt["user"], mqtt["password"] = credentials["user"], credentials["password"]
        if topic_prefix:
            mqtt["topic_prefix"] = topic_prefix
        cfg["mqtt"] = mqtt
    if wifi:
        cfg["wifi"] = wifi
    # the gateway checks the crew's work itself at its first boot (docs/selfcheck.md)
    check = dict(cfg.get("selfcheck") or {})
    check.setdefault("on_first_boot", True)
    cfg["selfcheck"] = check
    errors = devconfig.check(cfg)
    if errors:
        raise DeviceConfigError("config.json for %s is not valid, nothing written: %s"
                                % (device_id, "; ".join("%s: %s" % e for e in errors)))
    return cfg


def stage(cfg: dict, board: dict | None, folder: pathlib.Path) -> dict:
    """Write config.json (and board.json) into `folder`: {board path: local file}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"config.json": folder / "config.json"}
    out["config.json"].write_text(devconfig.dumps(cfg), encoding="utf-8")
    if board is not None:
        out["board.json"] = folder / "board.json"
        out["board.json"].write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
