"""Provision one board or a batch: the steps, in order, with progress.

    probe -> flash -> identity -> app -> config -> copy -> verify -> reboot

Each step reports (board, step, status, detail) to a callback; a batch runs
one thread per board (the work is waiting on serial ports and subprocesses)
and compiles the app once per MicroPython version. Nothing is written to a
board before its config passed the host check; every run appends one record
per board to the provisioning log.
"""

from __future__ import annotations

import dataclasses
import glob
import pathlib
import tempfile
import threading
import time

from metergate.provision import app as appbuild
from metergate.provision import device as devfiles
from metergate.provision import flash as esptool
from metergate.provision.credentials import CredentialStore
from metergate.provision.identity import (ProvisioningLog, check_device_id, device_id_for, mac_from_uid,
                                          sha256_file, sha256_tree, virtual_mac)
from metergate.provision.repl import Repl, ReplError, reboot_and_watch

STEPS = ("probe", "flash", "identity", "app", "config", "copy", "verify", "reboot")


class ProvisionError(Exception):
    pass


@dataclasses.dataclass
class Plan:
    """What to put on every board of a batch."""
    board: dict | None = None            # a board config (board_configs/)
    base: dict = dataclasses.field(default_factory=dict)  # meters etc. (site / config file)
    broker: str | None = None
    topic_prefix: str | None = None
    wifi: dict | None = None
    image: pathlib.Path | None = None    # MicroPython firmware .bin for esptool
    erase: bool = False
    mpy_cross: str | None = None
    firmware: pathlib.Path = appbuild.FIRMWARE_DIR
    credentials: CredentialStore | None = None
    log: ProvisioningLog | None = None
    wait: str = "console"                # console | health | none
    wait_timeout: float = 30.0
    mqtt_wait_s: float = 5.0
    probe_timeout: float = 15.0          # a port where no REPL answers makes mpremote hang: give up after this
    watcher: object = None               # a connected MqttProbe subscribed to PREFIX/v1/+/health (wait="health")


@dataclasses.dataclass
class Result:
    port: str
    device_id: str | None = None
    mac: str | None = None
    ok: bool = False
    error: str | None = None
    steps: dict = dataclasses.field(default_factory=dict)  # step -> short text
    changed: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    record: dict | None = None


def expand_ports(patterns) -> list[str]:
    """Ports as given; a pattern with * ? [ is expanded (sorted) and must match something."""
    out = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            found = sorted(glob.glob(pat))
            if not found:
                raise ProvisionError("port pattern %r matches no port" % pat)
            out += found
        else:
            out.append(pat)
    dup = sorted({p for p in out if out.count(p) > 1})
    if dup:
        raise ProvisionError("port(s) given twice: %s" % ", ".join(dup))
    return out


class _Watch:
    """Health messages seen on the broker, by device (wait="health")."""

    def __init__(self, probe):
        self.probe = probe
        self.seen = {}
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.stopping = False
        self.thread.start()

    def _pump(self):
        import json as _json

        while not self.stopping:
            try:
                msg = self.probe.get(timeout=0.2)
            except TimeoutError:
                continue
            if msg.retain:
                continue  # an old report from an earlier boot proves nothing
            try:
                dev = _json.loads(msg.payload).get("device")
            except (ValueError, AttributeError):
                continue
            with self.cv:
                self.seen.setdefault(dev, msg)
                self.cv.notify_all()

    def forget(self, device):
        with self.cv:
            self.seen.pop(device, None)

    def wait(self, device, timeout):
        with self.cv:
            return self.cv.wait_for(lambda: device in self.seen, timeout)

    def stop(self):
        self.stopping = True
        self.thread.join(1)


def provision_board(port: str, plan: Plan, device_id: str | None = None, progress=None, watch=None) -> Result:
    res = Result(port)
    started = time.monotonic()

    def step(name, status, detail=""):
        if status in ("done", "skipped"):
            res.steps[name] = detail or status
        if progress:
            progress(res, name, status, detail)

    repl = Repl(port)
    try:
        # 1. the REPL first: a board that answers tells us what it is
        step("probe", "running")
        try:
            info = repl.probe(timeout=plan.probe_timeout)
        except ReplError as exc:
            if plan.image is None:
                raise ProvisionError("%s; no MicroPython REPL answers, give --image to flash MicroPython first"
                                   " / 没有 MicroPython 应答, 请用 --image 先烧录 MicroPython"
                                     % exc) from None
            info = None
        step("probe", "done", "no REPL" if info is None else "MicroPython %s on %s, mpy v%s"
             % (info.version, "virtual board" if info.virtual else info.platform, info.mpy_version))

        # 2. esptool, unless the board is virtual
        chip = None
        image_hash = None
        if plan.image is not None:
            image_hash = esptool.image_sha256(plan.image)
        if info is not None and info.virtual:
            step("flash", "skipped", "virtual board: its firmware is the host's MicroPython")
        else:
            # a chip: esptool names it and reads its MAC (and resets it), then the image if one is given
            step("flash", "running", "esptool read-mac")
            chip = esptool.identify(port)
            if plan.board is not None and plan.board["chip"] != chip.chip:
                raise ProvisionError("the chip is %s (%s) but board %s is an %s"
                                     % (chip.chip, chip.description, plan.board["name"], plan.board["chip"]))
            what = "kept (no --image)"
            if plan.image is not None:
                step("flash", "running", "esptool verify/write %s" % plan.image.name)
                what = esptool.flash_image(port, chip.chip, plan.image, erase=plan.erase)
                if what == "written":
                    res.changed.append("firmware")
                    time.sleep(2.0)  # MicroPython's first boot makes its filesystem
            repl = Repl(port)  # esptool reset the chip: a fresh session interrupts the app again
            info = repl.probe(timeout=plan.probe_timeout)
            step("flash", "done", "%s: MicroPython image %s" % (chip.description, what))

        # 3. who it is
        if chip is not None:
            mac = chip.mac
        elif info.virtual:
            mac = virtual_mac(info.vflash)
        elif info.uid:
            mac = mac_from_uid(info.uid)
        else:
            raise ProvisionError("cannot read the board's MAC (no machine.unique_id) and no esptool run")
        res.mac = mac
        res.device_id = check_device_id(device_id) if device_id else device_id_for(mac, virtual=info.virtual)
        step("identity", "done", "%s (MAC %s)" % (res.device_id, mac))

        # 4. the app for this board's MicroPython
        step("app", "running")
        if info.mpy_version is None:
            raise ProvisionError("the board does not report sys.implementation._mpy: cannot pick an mpy-cross")
        exe = appbuild.matching_mpy_cross(info.mpy_version, info.version, plan.mpy_cross)
        app_files = appbuild.build(exe, plan.firmware)
        step("app", "done", "%d files for mpy v%s" % (len(app_files), info.mpy_version))

        with tempfile.TemporaryDirectory(prefix="metergate-provision-") as tmp:
            # 5. its config, checked before anything is written
            step("config", "running")
            creds = None
            if plan.broker and plan.credentials is not None:
                creds, created = plan.credentials.for_device(res.device_id)
                if created:
                    res.changed.append("credentials")
            cfg = devfiles.build(plan.base, res.device_id, plan.board, plan.broker, creds, plan.topic_prefix,
                                 plan.wifi)
            conf_files = devfiles.stage(cfg, plan.board, pathlib.Path(tmp))
            step("config", "done", "%d meters%s" % (len(cfg.get("meters", [])),
                                                    ", broker user %s" % creds["user"] if creds else ""))
            staged = dict(app_files)
            staged.update(conf_files)

            # 6. copy what differs
            step("copy", "running")
            got = repl.sync(staged, info.files, info.dirs)
            if got["copied"] or got["removed"]:
                res.changed += got["copied"] + ["-" + p for p in got["removed"]]
            step("copy", "done", "%d written, %d unchanged%s" % (
                len(got["copied"]), len(got["unchanged"]),
                ", %d stale removed" % len(got["removed"]) if got["removed"] else ""))

            # 7. read back every hash
            step("verify", "running")
            after = repl.probe().files if (got["copied"] or got["removed"]) else info.files
            bad = sorted(p for p, local in staged.items() if after.get(p) != sha256_file(local))
            if bad:
                raise ProvisionError("after writing, the board's copy differs for: %s" % ", ".join(bad))
            step("verify", "done", "%d files match (sha256)" % len(staged))
            app_hash = sha256_tree(app_files)
            config_hash = sha256_file(conf_files["config.json"])

        # 8. reboot and see it run
        step("reboot", "running")
        if watch is not None:
            watch.forget(res.device_id)
        console = reboot_and_watch(port, info.platform, timeout=plan.wait_timeout, mqtt_wait_s=plan.mqtt_wait_s,
                                   want_mqtt=bool(plan.broker) and plan.wait != "none")
        if plan.wait != "none" and not console.running:
            errs = "; ".join(console.config_errors) or "no '[app] polling' line"
            raise ProvisionError("the gateway did not come up on config.json within %.0f s (config source %s): %s"
                                 % (plan.wait_timeout, console.source, errs))
        if console.device and console.device != res.device_id:
            raise ProvisionError("the gateway calls itself %s, expected %s" % (console.device, res.device_id))
        if plan.wait == "health":
            if not watch.wait(res.device_id, plan.wait_timeout):
                raise ProvisionError("no health message from %s on the broker within %.0f s (console: mqtt %s)"
                                     % (res.device_id, plan.wait_timeout, console.mqtt))
            detail = "health received on the broker"
        elif plan.wait == "none":
            detail = "rebooted"
        else:
            broker = console.mqtt or ("not reached yet" if plan.broker else "none configured")
            detail = "running, %d meters; broker: %s" % (console.meters, broker)
        step("reboot", "done", detail)
        res.ok = True
        res.record = {"port": port, "device": res.device_id, "mac": mac, "virtual": info.virtual,
                      "chip": chip.description if chip else info.machine, "micropython": info.version,
                      "firmware_sha256": image_hash, "app_sha256": app_hash, "config_sha256": config_hash,
                      "board": plan.board["name"] if plan.board else None, "broker": _no_userinfo(plan.broker),
                      "changed": res.changed, "result": "ok"}
    except (ProvisionError, ReplError, esptool.FlashError, appbuild.AppError, devfiles.DeviceConfigError,
            OSError, ValueError) as exc:
        res.error = str(exc)
        running = next((s for s in STEPS if s not in res.steps), None)
        if progress:
            progress(res, running or "done", "failed", res.error)
        res.record = {"port": port, "device": res.device_id, "mac": res.mac, "changed": res.changed,
                      "result": "failed", "error": res.error, "step": running}
    res.seconds = round(time.monotonic() - started, 2)
    res.record["seconds"] = res.seconds
    if plan.log is not None:
        plan.log.append(res.record)
    return res


def _no_userinfo(url):
    if not url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return scheme + "://" + rest.split("@", 1)[1]


def provision(ports, plan: Plan, device_ids=None, progress=None) -> list[Result]:
    """Every port at once, one thread each; results in port order."""
    ports = list(ports)
    device_ids = list(device_ids or [])
    if device_ids and len(device_ids) != len(ports):
        raise ProvisionError("%d device ids for %d ports: give one per port, in port order"
                             % (len(device_ids), len(ports)))
    if len(set(device_ids)) != len(device_ids):
        raise ProvisionError("a device id is given twice")
    watch = _Watch(plan.watcher) if plan.wait == "health" else None
    if plan.wait == "health" and plan.watcher is None:
        raise ProvisionError("wait=health needs a broker watcher (--watch-user)")
    results = [None] * len(ports)

    def one(i):
        results[i] = provision_board(ports[i], plan, device_ids[i] if device_ids else None, progress, watch)

    threads = [threading.Thread(target=one, args=(i,), name="provision-%s" % p) for i, p in enumerate(ports)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if watch is not None:
            watch.stop()
    ids = [r.device_id for r in results if r.ok]
    dup = sorted({d for d in ids if ids.count(d) > 1})
    if dup:
        for r in results:
            if r.device_id in dup:
                r.ok, r.error = False, "device id %s is on more than one board of this batch" % r.device_id
    return results
