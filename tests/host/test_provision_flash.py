"""The esptool layer, without a chip: the exact commands, the parsing of
esptool's output, the skip-when-identical rule, and the real esptool failing
clearly on a port where no bootloader answers."""

import os
import pty
import sys

import pytest

from metergate.provision import device as devfiles
from metergate.provision import flash

READ_MAC_OUT = """esptool v5.1.0
Connected to ESP32 on /dev/ttyUSB0:
Chip type:          ESP32-D0WD-V3 (revision v3.1)
Features:           Wi-Fi, BT, Dual Core + LP Core, 240MHz
Crystal frequency:  40MHz
MAC:                24:0a:c4:12:ab:cd

Stub flasher running.

MAC:                24:0a:c4:12:ab:cd

Hard resetting via RTS pin...
"""


def test_the_exact_commands(tmp_path):
    img = tmp_path / "ESP32_GENERIC-v1.28.0.bin"
    py = [sys.executable, "-m", "esptool"]
    assert flash.read_mac_argv("/dev/ttyUSB0") == py + [
        "--port", "/dev/ttyUSB0", "--chip", "auto", "--connect-attempts", "3", "read-mac"]
    assert flash.verify_argv("/dev/ttyUSB0", "esp32", img) == py + [
        "--port", "/dev/ttyUSB0", "--chip", "esp32", "--connect-attempts", "3", "verify-flash", "0x1000", str(img)]
    assert flash.write_argv("/dev/ttyUSB0", "esp32s3", img) == py + [
        "--port", "/dev/ttyUSB0", "--chip", "esp32s3", "--connect-attempts", "3", "--baud", "460800",
        "write-flash", "0x0", str(img)]
    assert flash.erase_argv("/dev/ttyACM0", "esp32c3")[-1] == "erase-flash"


def test_esptool_accepts_these_commands():
    # the installed esptool knows every subcommand and option we pass
    import subprocess

    for cmd in ("read-mac", "verify-flash", "write-flash", "erase-flash"):
        out = subprocess.run(flash.esptool_argv("/dev/null", cmd, chip="esp32")[:-1] + [cmd, "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (cmd, out.stderr)


def test_parse_read_mac():
    info = flash.parse_read_mac(READ_MAC_OUT)
    assert (info.chip, info.mac) == ("esp32", "24:0a:c4:12:ab:cd")
    assert info.description == "ESP32-D0WD-V3 (revision v3.1)"
    older = "Chip is ESP32-S3 (QFN56) (revision v0.2)\nMAC: F4:12:FA:00:11:22\n"
    assert flash.parse_read_mac(older).chip == "esp32s3"
    assert flash.parse_read_mac(older).mac == "f4:12:fa:00:11:22"
    with pytest.raises(flash.FlashError, match="no MAC line"):
        flash.parse_read_mac("Chip type: ESP32\n")
    with pytest.raises(flash.FlashError, match="not an ESP32"):
        flash.chip_family("ESP8266EX")


def test_every_board_config_has_a_known_chip_offset():
    for name in devfiles.board_names():
        board = devfiles.load_board(name)
        assert flash.image_offset(board["chip"]) in (0, 0x1000)


class Recorder:
    """Stands in for the chip: answers esptool commands with canned output
    (the only fake here; the chip is the hardware edge)."""

    def __init__(self, verify_out="", code=0):
        self.calls, self.verify_out, self.code = [], verify_out, code

    def __call__(self, argv):
        self.calls.append(argv[argv.index("--connect-attempts") + 2:])
        if "verify-flash" in argv:
            return (0 if "matched" in self.verify_out else 2), self.verify_out
        return self.code, "ok"


def test_flash_skipped_when_the_image_is_there(tmp_path):
    img = tmp_path / "fw.bin"
    img.write_bytes(b"\xe9" + bytes(100))
    same = Recorder("Verification successful (digest matched).")
    assert flash.flash_image("P", "esp32", img, runner=same) == "unchanged"
    assert same.calls == [["verify-flash", "0x1000", str(img)]]
    differs = Recorder("Verification failed (digest mismatch).")
    assert flash.flash_image("P", "esp32", img, runner=differs) == "written"
    assert [c[0] for c in differs.calls] == ["verify-flash", "--baud"]
    assert differs.calls[1][2:] == ["write-flash", "0x1000", str(img)]
    erase = Recorder()
    assert flash.flash_image("P", "esp32", img, erase=True, runner=erase) == "written"
    assert [c[0] for c in erase.calls] == ["erase-flash", "--baud"]
    with pytest.raises(flash.FlashError, match="no such file"):
        flash.flash_image("P", "esp32", tmp_path / "missing.bin", runner=same)


def test_real_esptool_on_a_port_without_a_chip_fails_clearly():
    master, slave = pty.openpty()  # a serial port where nothing answers
    try:
        name = os.ttyname(slave)
        argv = flash.esptool_argv(name, "read-mac", connect_attempts=1)
        with pytest.raises(flash.FlashError) as err:
            flash.identify(name, runner=lambda _argv: flash.run(argv, timeout=120))
    finally:
        os.close(master)
        os.close(slave)
    text = str(err.value)
    assert name in text and "read-mac" in text
    assert "no ESP32 bootloader answered" in text, text
