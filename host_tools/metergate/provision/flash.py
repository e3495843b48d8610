"""The esptool layer: detect the chip, read its MAC, put a MicroPython image on it.

Kept thin and separate because it is the one step that needs a real chip in
ROM-bootloader reach: everything here builds an exact argv for esptool (the
`esptool` package, run as ``python -m esptool`` so the pinned one is used),
runs it, and reads its output. Tests check the argv and the parsing without a
chip; docs/installer-guide.md lists the commands.

Commands run on a real board, in order (``P`` the port, ``IMG`` the image,
``OFF`` its offset); read-mac always, the rest only when an image is given:

    python -m esptool --port P --chip auto --connect-attempts N read-mac
    python -m esptool --port P --chip CHIP --connect-attempts N verify-flash OFF IMG
    python -m esptool --port P --chip CHIP --connect-attempts N erase-flash     (only with erase=True)
    python -m esptool --port P --chip CHIP --connect-attempts N --baud B write-flash OFF IMG

verify-flash compares the flash's MD5 with the image's: when they match the
write is skipped. esptool resets the chip into its bootloader before each
command and hard-resets it after (its defaults).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
import subprocess
import sys

# Where a MicroPython firmware .bin (bootloader + partition table + app) starts,
# per chip family (MicroPython's download page, "Installation instructions").
IMAGE_OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
WRITE_BAUD = 460800
CONNECT_ATTEMPTS = 3


class FlashError(Exception):
    """esptool failed: the message names the port, the command and esptool's last words."""


@dataclasses.dataclass
class ChipInfo:
    chip: str          # family as board_configs spell it: esp32, esp32s3, ...
    description: str   # esptool's words, e.g. "ESP32-D0WD-V3 (revision v3.1)"
    mac: str           # aa:bb:cc:dd:ee:ff


def esptool_argv(port: str, *command: str, chip: str = "auto", baud: int | None = None,
                 connect_attempts: int = CONNECT_ATTEMPTS) -> list[str]:
    argv = [sys.executable, "-m", "esptool", "--port", str(port), "--chip", chip,
            "--connect-attempts", str(connect_attempts)]
    if baud:
        argv += ["--baud", str(baud)]
    return argv + list(command)


def read_mac_argv(port: str, **kw) -> list[str]:
    return esptool_argv(port, "read-mac", **kw)


def verify_argv(port: str, chip: str, image: pathlib.Path, **kw) -> list[str]:
    return esptool_argv(port, "verify-flash", "0x%x" % image_offset(chip), str(image), chip=chip, **kw)


def erase_argv(port: str, chip: str, **kw) -> list[str]:
    return esptool_argv(port, "erase-flash", chip=chip, **kw)


def write_argv(port: str, chip: str, image: pathlib.Path, baud: int = WRITE_BAUD, **kw) -> list[str]:
    return esptool_argv(port, "write-flash", "0x%x" % image_offset(chip), str(image), chip=chip, baud=baud, **kw)


def image_offset(chip: str) -> int:
    try:
        return IMAGE_OFFSETS[chip]
    except KeyError:
        raise FlashError("chip %r: no known MicroPython image offset (known: %s)"
                         % (chip, ", ".join(sorted(IMAGE_OFFSETS)))) from None


_CHIP_LINE = re.compile(r"^(?:Chip type:|Chip is)\s*(.+?)\s*$", re.M)
_MAC_LINE = re.compile(r"^MAC:\s*((?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2})\s*$", re.M)


def chip_family(description: str) -> str:
    """'ESP32-S3 (QFN56) (revision v0.2)' -> 'esp32s3'; 'ESP32-D0WD-V3 ...' -> 'esp32'."""
    text = description.upper()
    for family in ("S2", "S3", "C3", "C6"):
        if text.startswith("ESP32-" + family):
            return "esp32" + family.lower()
    if text.startswith("ESP32"):
        return "esp32"
    raise FlashError("chip %r is not an ESP32 this project supports" % description)


def parse_read_mac(output: str) -> ChipInfo:
    chip = _CHIP_LINE.search(output)
    mac = _MAC_LINE.search(output)
    if not chip or not mac:
        raise FlashError("esptool's read-mac output has no %s line:\n%s"
                         % ("chip" if not chip else "MAC", _tail(output)))
    description = chip.group(1)
    return ChipInfo(chip_family(description), description, mac.group(1).lower())


def verify_matched(output: str) -> bool | None:
    """True: the flash holds the image; False: it differs; None: no verdict in the output."""
    if "digest matched" in output or "Verification successful" in output:
        return True
    if "Verification failed" in output:
        return False
    return None


def _tail(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def run(argv: list[str], timeout: float = 300.0) -> tuple[int, str]:
    """Run esptool; (exit code, stdout + stderr)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FlashError("esptool did not finish in %d s: %s" % (timeout, " ".join(argv[1:])))
    return proc.returncode, proc.stdout + proc.stderr


def _failed(port: str, argv: list[str], out: str) -> FlashError:
    hint = ""
    if "Failed to connect" in out or "No serial data received" in out:
        hint = (" (no ESP32 bootloader answered: check the cable, hold BOOT while pressing EN/RST,"
                " or close the program holding the port / 没有 ESP32 应答: 检查数据线, 按住 BOOT 再按 EN)")
    elif "could not open port" in out or "No such file" in out:
        hint = " (the port does not exist / 串口不存在)"
    return FlashError("%s: esptool %s failed%s:\n%s" % (port, argv[argv.index("--connect-attempts") + 2:], hint,
                                                       _tail(out)))


def identify(port: str, runner=run) -> ChipInfo:
    """The chip family and its MAC (esptool read-mac)."""
    argv = read_mac_argv(port)
    code, out = runner(argv)
    if code != 0:
        raise _failed(port, argv, out)
    return parse_read_mac(out)


def image_sha256(image: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(image).read_bytes()).hexdigest()


def flash_image(port: str, chip: str, image: pathlib.Path, erase: bool = False, runner=run) -> str:
    """Put `image` on the chip unless it is there already: 'unchanged' or 'written'."""
    image = pathlib.Path(image)
    if not image.is_file():
        raise FlashError("firmware image %s: no such file" % image)
    if not erase:
        argv = verify_argv(port, chip, image)
        code, out = runner(argv)
        verdict = verify_matched(out)
        if verdict is None and code != 0:
            raise _failed(port, argv, out)
        if verdict:
            return "unchanged"
    else:
        argv = erase_argv(port, chip)
        code, out = runner(argv)
        if code != 0:
            raise _failed(port, argv, out)
    argv = write_argv(port, chip, image)
    code, out = runner(argv)
    if code != 0:
        raise _failed(port, argv, out)
    return "written"
