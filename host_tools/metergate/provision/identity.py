"""Who a board is, and the record of what was put on it.

Device id: ``mg-`` + the 12 hex digits of the chip's MAC (what the ESP32 HAL
calls itself when config.json names no id: ``machine.unique_id()`` is the
Wi-Fi MAC), unless the installer gives one.

The virtual board has no MAC. It presents one derived from its flash
directory: the first 6 bytes of SHA-256 of the directory's absolute path (the
``METERGATE_FLASH`` it runs with, read over its REPL), written as a MAC; its
device id is ``vb-`` + those 12 hex digits, exactly what the unix HAL calls
itself (gateway/hal/unix.py), so a board keeps its id whether or not the
config names it.

The provisioning log is JSONL, one object per board per run, only ever
appended to: who, when, the port, MAC, device id, the hashes of the firmware
image, app and config (never a password: the config hash is of the file on
the board, which cannot be reversed), what changed, and the outcome.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pathlib
import re
import socket
import time

_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SECRET_KEYS = ("password", "secret", "token", "key")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(65536), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(files: dict) -> str:
    """One hash for a set of files ({board path: local path}), independent of order."""
    h = hashlib.sha256()
    for dest in sorted(files):
        h.update(("%s %s\n" % (dest, sha256_file(files[dest]))).encode())
    return h.hexdigest()


def virtual_mac(flash_path: str) -> str:
    digest = hashlib.sha256(flash_path.encode()).digest()[:6]
    return ":".join("%02x" % b for b in digest)


def mac_from_uid(uid_hex: str) -> str:
    return ":".join(uid_hex[i:i + 2] for i in range(0, 12, 2)).lower()


def device_id_for(mac: str, virtual: bool = False) -> str:
    mac = mac.lower()
    if not _MAC.match(mac):
        raise ValueError("MAC %r: expected six hex pairs aa:bb:cc:dd:ee:ff" % mac)
    return ("vb-" if virtual else "mg-") + mac.replace(":", "")


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.match(device_id or ""):
        raise ValueError("device id %r: 1..32 characters A-Z a-z 0-9 _ - (it is part of MQTT topics)" % device_id)
    return device_id


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = str(os.getuid())
    return "%s@%s" % (user, socket.gethostname())


class ProvisioningLog:
    """Append-only JSONL. Each record is written with one write() on a file
    opened for appending, so records from boards provisioned in parallel
    never interleave."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def append(self, record: dict) -> dict:
        bad = [k for k in _keys(record) if any(s in k.lower() for s in SECRET_KEYS)]
        if bad:
            raise ValueError("provisioning log: refusing to record %s (secrets never go in the log)" % ", ".join(bad))
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": who()}
        rec.update(record)
        line = json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return rec

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError("%s:%d: not JSON: %s" % (self.path, n, exc)) from None
        return out


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)
