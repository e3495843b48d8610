"""The virtual gateway on a simulated site, seen from the host as a user sees it.

- ``site_config(site)``: a gateway config.json that polls every meter of a
  site's bus (protocol, address / unit id, the meter's own line settings),
  valid against the device config schema (metergate.config).
- ``parse_line(text)``: a console line of the gateway -> ("READING" | "HEALTH",
  dict) or None. READING carries the reading message of docs/mqtt.md,
  HEALTH the health message. ``reading_errors(msg)``: what a reading failed to read.
- ``Bench``: the simulator and a virtual board polling it, as two managed
  processes on free loopback ports (used by ``metergate demo`` and the tests).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import tempfile

from metergate.bench.procs import LOOPBACK, ManagedProcess, free_tcp_port

PREFIXES = ("READING", "HEALTH")

# What the gateway reads per meter kind: the same names for every protocol.
SINGLE_PHASE_ITEMS = ["voltage", "current", "power", "energy_forward", "energy_reverse"]
THREE_PHASE_ITEMS = ["voltage_a", "current_a", "power", "energy_forward", "energy_reverse"]


def items_for(meter) -> list[str]:
    return list(THREE_PHASE_ITEMS if meter.kind.startswith("three-phase") else SINGLE_PHASE_ITEMS)


def meter_entry(meter, site=None) -> dict:
    """The config.json entry for one site meter (metergate.sim.site.Meter).
    With the site: where it is installed, the work order's asset number, and
    whether its customer exports (PV)."""
    entry = {"id": meter.id, "protocol": meter.protocol}
    if meter.protocol == "modbus":
        entry["model"] = meter.model
        entry["unit_id"] = meter.unit_id
    else:
        entry["address"] = meter.address
    entry["baud"] = meter.line.baud
    entry["parity"] = meter.line.parity
    if meter.line.stop_bits != 1:
        entry["stop_bits"] = meter.line.stop_bits
    entry["items"] = items_for(meter)
    entry["kind"] = meter.kind
    if site is not None:
        if len(meter.box) <= 32:
            entry["position"] = {"box": meter.box, "position": meter.position}
        work = site.work_order_for(meter.box, meter.position)
        if work is not None and len(work.asset) <= 32:
            entry["asset"] = work.asset
        customers = []
        if work is not None and work.customer:
            customers.append(work.customer)
        customers.extend(b.customer for b in site.breakers_at(meter.box, meter.position))
        exporting = False
        for cid in customers:
            try:
                exporting = exporting or site.customer(cid).exporting
            except KeyError:
                pass
        entry["exporting"] = exporting
    return entry


def site_config(site, bus_name: str | None = None, poll_interval_s: float | None = None, health_interval_s: float = 2,
                **extra) -> dict:
    """A gateway config that polls every meter on one bus of `site` (a Site).

    It passes the device config schema (metergate.config.check). The poll
    interval is at least what the bus needs for one round of every meter (the
    firmware's poll budget, gateway/config.py, with 5% to spare): a shorter
    one would be refused by the gateway, so a requested interval below it is
    raised (None: exactly that)."""
    from metergate.codecs import config as fwconfig

    bus_name = bus_name or site.buses[0].name
    cfg = {"site": site.name[:128], "poll_interval_s": 10, "health_interval_s": health_interval_s,
           "link": {"retries": 1},
           "meters": [meter_entry(m, site) for m in site.meters_on_bus(bus_name)]}
    cfg.update(extra)
    budget = fwconfig.poll_budget(cfg)
    need = budget["busy_s"] / budget["limit"]
    need = max(1, math.ceil(need * 1.05))
    cfg["poll_interval_s"] = need if poll_interval_s is None else max(poll_interval_s, need)
    return cfg


def parse_line(text: str):
    """("READING", dict) / ("HEALTH", dict) for a gateway console line, else None."""
    text = text.strip("\r\n")
    for prefix in PREFIXES:
        if text.startswith(prefix + " "):
            try:
                return prefix, json.loads(text[len(prefix) + 1:])
            except ValueError:
                return None
    return None


def reading_errors(msg: dict) -> dict:
    """{item: error} of a reading message (docs/mqtt.md): the items that were not
    read, plus "*" when the whole poll failed. Empty for a clean reading."""
    out = {name: v.get("error") for name, v in (msg.get("values") or {}).items()
           if isinstance(v, dict) and v.get("q") == "comm_error"}
    if msg.get("error"):
        out["*"] = msg["error"]
    return out


def metergate_argv() -> list[str]:
    script = pathlib.Path(sys.executable).with_name("metergate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "metergate.cli"]


class ConsoleLines:
    """Cuts console bytes into whole lines and keeps the gateway's READING / HEALTH ones."""

    def __init__(self):
        self.rest = b""

    def feed(self, data: bytes) -> list:
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()  # an unfinished line waits for its newline
        out = []
        for raw in lines:
            got = parse_line(raw.decode("utf-8", "replace"))
            if got is not None:
                out.append(got)
        return out


class LineFollower:
    """Reads a growing log file and yields the gateway lines added since last time."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.pos = 0
        self.lines = ConsoleLines()

    def poll(self):
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        return self.lines.feed(data)


class Bench:
    """`metergate sim serve SITE` + `metergate vboard run` polling it (context manager).

    ``workdir`` holds the flash and both logs (a temp dir, removed on exit, when
    None). ``heapsize`` (e.g. "96K") caps the board's MicroPython heap
    (``vboard run --heapsize``); ``firmware`` installs another firmware tree,
    e.g. the .mpy of ``metergate firmware build`` (``vboard run --firmware``),
    which is what a board with little RAM needs: compiling the .py sources
    takes more heap than 96K. ``.sim_url``, ``.control_url``, ``.board_log``,
    ``.follower``.
    """

    def __init__(self, site_path, config: dict, workdir=None, ready_timeout: float = 20.0, heapsize=None,
                 firmware=None):
        self.site_path = pathlib.Path(site_path)
        self.config = config
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="metergate-demo-")
            workdir = self._tmp.name
        self.workdir = pathlib.Path(workdir)
        self.ready_timeout = ready_timeout
        self.heapsize = heapsize
        self.firmware = firmware
        self.sim = self.board = None

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        bus_port, control_port = free_tcp_port(), free_tcp_port()
        self.sim_url = "tcp://%s:%d" % (LOOPBACK, bus_port)
        self.control_url = "tcp://%s:%d" % (LOOPBACK, control_port)
        flash = self.workdir / "flash"
        flash.mkdir(exist_ok=True)
        (flash / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        self.flash = flash
        self.sim_log = self.workdir / "sim.log"
        self.board_log = self.workdir / "vboard.log"
        self.sim = ManagedProcess(
            metergate_argv() + ["sim", "serve", str(self.site_path), "--listen", self.sim_url,
                                "--control", self.control_url],
            self.sim_log, name="metergate sim serve", ready_port=[bus_port, control_port],
            ready_timeout=self.ready_timeout, grace=3.0)
        self.board = self._board()
        try:
            self.sim.start()
            self.sim.wait_ready()
            self.board.start()
            self.board.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.follower = LineFollower(self.board_log)
        return self

    def _board(self):
        extra = ["--heapsize", str(self.heapsize)] if self.heapsize else []
        if self.firmware:
            extra += ["--firmware", str(self.firmware)]
        return ManagedProcess(
            metergate_argv() + ["vboard", "run", "--flash", str(self.flash), "--bus", self.sim_url] + extra,
            self.board_log, name="metergate vboard run", ready_line=r"\[app\] polling",
            ready_timeout=self.ready_timeout, grace=3.0)

    def restart_board(self):
        """Boot the board again on the same flash (after a kill: a power cut)."""
        if self.board is not None:
            self.board.stop()
        self.board = self._board()
        self.board.start()
        self.board.wait_ready()
        return self.board

    def stop(self):
        for proc in (self.board, self.sim):
            if proc is not None:
                proc.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
