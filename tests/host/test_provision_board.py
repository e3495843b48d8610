"""Provisioning one virtual board through its pty with the real mpremote:
re-runs repair only what differs, a bad config writes nothing, site meters
and a given device id end up on the board, and what cannot work is refused
with a clear reason."""

import json
import os
import pty

import pytest
from click.testing import CliRunner

from metergate.cli import main
from metergate.provision import app as appbuild
from metergate.provision import runner
from metergate.provision.identity import ProvisioningLog
from metergate.provision.repl import BoardInfo
from metergate.sim import DEMO_SITE
from metergate.vboard.board import ReplServer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def board(tmp_path):
    srv = ReplServer(tmp_path / "flash", tmp_path / "gw.pty")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def provision(tmp_path, *args):
    res = CliRunner().invoke(main, ["provision", "--records", str(tmp_path / "records")] + list(args))
    return res, ProvisioningLog(tmp_path / "records" / "provision.jsonl").records()


def test_rerun_repairs_only_what_differs(tmp_path, board):
    res, log = provision(tmp_path, "--port", str(board.link))
    assert res.exit_code == 0, res.output
    flash = board.flash
    # what a half-finished copy or an older release leaves behind
    (flash / "gateway" / "link.mpy").write_bytes(b"truncated")
    (flash / "gateway" / "runtime.py").write_text("raise RuntimeError('old source shadows the .mpy')\n")
    (flash / "gateway" / "old").mkdir()
    (flash / "gateway" / "old" / "gone.mpy").write_bytes(b"x")
    cfg = json.loads((flash / "config.json").read_text())
    (flash / "config.json").write_text(json.dumps(dict(cfg, poll_interval_s=99)))
    (flash / "spool.0").write_bytes(b"readings")  # the board's own data is left alone
    res, log = provision(tmp_path, "--port", str(board.link))
    assert res.exit_code == 0, res.output
    assert sorted(log[-1]["changed"]) == sorted(["config.json", "gateway/link.mpy", "-gateway/runtime.py",
                                                 "-gateway/old/gone.mpy"])
    assert not (flash / "gateway" / "runtime.py").exists() and not (flash / "gateway" / "old").exists()
    assert json.loads((flash / "config.json").read_text()) == cfg
    assert (flash / "spool.0").read_bytes() == b"readings"
    assert log[-1]["config_sha256"] == log[0]["config_sha256"] and log[-1]["app_sha256"] == log[0]["app_sha256"]
    assert "running, 0 meters" in res.output  # it came back up on the repaired files


def test_site_meters_and_given_device_id(tmp_path, board):
    res, log = provision(tmp_path, "--port", str(board.link), "--device-id", "gw-demo-1", "--site", str(DEMO_SITE),
                         "--board", "esp32-devkitc-max485")
    assert res.exit_code == 0, res.output
    cfg = json.loads((board.flash / "config.json").read_text())
    assert cfg["device_id"] == "gw-demo-1" and "mqtt" not in cfg
    assert len(cfg["meters"]) == 6 and cfg["meters"][0]["position"]["position"] == 1
    assert "running, 6 meters" in res.output and "broker: none configured" in res.output
    assert log[-1]["device"] == "gw-demo-1" and log[-1]["mac"].count(":") == 5


def test_invalid_config_writes_nothing(tmp_path, board):
    bad = tmp_path / "meters.json"
    bad.write_text(json.dumps({"meters": [{"id": "m1", "protocol": "dlt645-2007", "address": "12345"}]}))
    res, log = provision(tmp_path, "--port", str(board.link), "--meters", str(bad))
    assert res.exit_code == 1
    assert "meters[0].address" in res.output and "nothing written" in res.output
    assert log[-1]["result"] == "failed" and log[-1]["step"] == "config"
    assert not (board.flash / "main.py").exists() and not (board.flash / "config.json").exists()


def test_bad_inputs_are_named(tmp_path, board):
    res, _ = provision(tmp_path, "--port", str(board.link), "--board", "no-such-board")
    assert res.exit_code == 1 and "board 'no-such-board'" in res.output and "lilygo-t-can485" in res.output
    res, _ = provision(tmp_path, "--port", str(tmp_path / "nothing*"))
    assert res.exit_code == 1 and "matches no port" in res.output
    res, _ = provision(tmp_path, "--port", str(board.link), "--device-id", "a", "--device-id", "b")
    assert res.exit_code == 1 and "2 device ids for 1 ports" in res.output


def test_a_port_without_a_repl_is_refused(tmp_path):
    master, slave = pty.openpty()
    try:
        plan = runner.Plan(probe_timeout=3)
        res = runner.provision_board(os.ttyname(slave), plan)
    finally:
        os.close(master)
        os.close(slave)
    assert not res.ok and "give --image to flash MicroPython first" in res.error


def test_mpy_version_from_the_board_and_a_missing_mpy_cross():
    info = BoardInfo(platform="esp32", mpy=6 | (3 << 8) | (10 << 10), version="1.28.0", machine="", uid=None,
                     vflash=None, files={}, dirs=[])
    assert info.mpy_version == "6.3" and not info.virtual
    with pytest.raises(appbuild.AppError) as err:
        appbuild.matching_mpy_cross("6.1", "1.20.0")
    text = str(err.value)
    assert "MicroPython 1.20.0" in text and "v6.1" in text and "emits v6.3" in text and "--mpy-cross" in text
