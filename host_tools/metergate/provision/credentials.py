"""Per-device broker credentials and the mosquitto files that enforce them.

The credential store is a JSON file (mode 0600) on the provisioning machine:
``{"devices": {"<device id>": {"user": ..., "password": ..., "created": ...}}}``.
A device's password is made once (128 random bits) and reused on every
re-provisioning, so re-runs write the same config.json and change nothing.
The broker user name is the device id.

``write_broker_files`` turns the store into:

- a mosquitto password file in the PBKDF2-SHA512 format mosquitto 2.0
  documents for ``password_file`` (``user:$7$<iterations>$<salt b64>$<hash b64>``,
  what ``mosquitto_passwd`` writes), so no mosquitto tool is needed on the
  provisioning machine;
- an ACL file in which each gateway may write only its own topics
  (``P/v1/D/reading``, ``health``, ``status``, ``config_error``, ``selfcheck``,
  ``reply/#``) and read only its own commands (``P/v1/D/cmd/#``); service
  users (the back office, a technician's tool) read every gateway's topics
  and write commands.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import secrets
import threading
import time

from metergate.provision.identity import check_device_id

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default; the passwords are random 128-bit, not guessable
GATEWAY_WRITES = ("reading", "health", "status", "config_error", "selfcheck", "reply/#")


class CredentialError(Exception):
    pass


class CredentialStore:
    """Per-device broker credentials in one JSON file (mode 0600). A batch provisions
    boards in parallel threads (and several batches may run at once): every
    read-modify-write holds a lock (a thread lock and an flock on `<file>.lock`), so
    no device's entry is lost and no two writers share a temporary file."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(self.path.name + ".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self) -> dict:
        if not self.path.exists():
            return {"devices": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CredentialError("%s: not JSON: %s" % (self.path, exc)) from None
        if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
            raise CredentialError("%s: expected {\"devices\": {...}}" % self.path)
        for dev, entry in data["devices"].items():
            if not isinstance(entry, dict) or not entry.get("user") or not entry.get("password"):
                raise CredentialError("%s: devices.%s: needs user and password" % (self.path, dev))
        return data

    def _save(self, data: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("%s.%d.tmp" % (self.path.name, os.getpid()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, self.path)

    def for_device(self, device_id: str) -> tuple[dict, bool]:
        """(credentials, created): the device's entry, made and saved when missing."""
        check_device_id(device_id)
        with self._locked():
            data = self.load()
            entry = data["devices"].get(device_id)
            if entry is not None:
                return entry, False
            entry = {"user": device_id, "password": secrets.token_urlsafe(16),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            data["devices"][device_id] = entry
            self._save(data)
        return entry, True

    def devices(self) -> dict:
        return self.load()["devices"]


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "$7$%d$%s$%s" % (iterations, base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def check_mosquitto_hash(password: str, stored: str) -> bool:
    try:
        _, kind, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt), int(iterations))
    return secrets.compare_digest(got, base64.b64decode(digest))


def _check_user(name: str, what: str):
    if not name or any(c in name for c in ":\n\r #+/") or name != name.strip():
        raise CredentialError("%s %r: no ':', spaces, '#', '+', '/' or line breaks" % (what, name))


def _check_prefix(prefix: str):
    if not prefix or any(c in prefix for c in "+#\n ") or prefix.startswith("/") or prefix.endswith("/"):
        raise CredentialError("topic prefix %r: no '+', '#', spaces or leading/trailing '/'" % prefix)


def acl_text(devices, services=(), prefix: str = "metergate") -> str:
    """mosquitto ACL: `devices` (ids = user names) confined to their own
    topics; `services` (user names) read everything under the prefix and
    write commands."""
    _check_prefix(prefix)
    lines = ["# Written by `metergate broker-acl`: each gateway writes only its own topics",
             "# and reads only its own commands (docs/installer-guide.md).", ""]
    for user in services:
        _check_user(user, "service user")
        lines += ["user %s" % user, "topic read %s/v1/#" % prefix, "topic write %s/v1/+/cmd/#" % prefix, ""]
    for dev in sorted(devices):
        check_device_id(dev)
        base = "%s/v1/%s" % (prefix, dev)
        lines.append("user %s" % dev)
        lines += ["topic write %s/%s" % (base, t) for t in GATEWAY_WRITES]
        lines += ["topic read %s/cmd/#" % base, ""]
    return "\n".join(lines)


def password_text(users: dict) -> str:
    """{user: password} -> mosquitto password file text."""
    out = []
    for user in sorted(users):
        _check_user(user, "user")
        out.append("%s:%s" % (user, mosquitto_hash(users[user])))
    return "\n".join(out) + "\n"


def write_broker_files(store: CredentialStore, out_dir, services: dict | None = None,
                       prefix: str = "metergate") -> dict:
    """Write `passwd` and `acl` into `out_dir` (both 0600, replaced atomically).
    `services`: {user: password} of service accounts. Returns the paths and counts."""
    services = dict(services or {})
    devices = store.devices()
    clash = sorted(set(devices) & set(services))
    if clash:
        raise CredentialError("service user(s) %s clash with device ids" % ", ".join(clash))
    users = {entry["user"]: entry["password"] for entry in devices.values()}
    users.update(services)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"passwd": out_dir / "passwd", "acl": out_dir / "acl"}
    texts = {"passwd": password_text(users), "acl": acl_text(devices, sorted(services), prefix)}
    for name, path in paths.items():
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(texts[name])
        os.replace(tmp, path)
    return {"passwd": paths["passwd"], "acl": paths["acl"], "devices": len(devices), "services": len(services)}
