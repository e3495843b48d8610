"""pytest plugin for the hardware-in-the-loop suite (hil_tests/).

One suite runs against the virtual board (CI) or a real ESP32 on the bench.
The options pick the board, the RS-485 bus, the broker and the simulated site;
the fixtures start and stop what the selection needs, with every log kept under
build/hil-logs/<test>/. Tests that need a hardware feature declare it with
``@pytest.mark.needs("uart-invert")`` and are skipped, naming what is missing,
on a board without it. See docs/hil.md.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from metergate.bench.broker import Broker, ExternalBroker, MqttProbe, parse_mqtt_url
from metergate.bench.procs import LOOPBACK, ManagedProcess, free_tcp_port

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent  # host_tools/metergate
REPO_ROOT = PACKAGE_DIR.parent.parent
BOARD_CONFIGS = REPO_ROOT / "board_configs"
DEMO_SITE = PACKAGE_DIR / "sim" / "sites" / "demo.toml"

# What the virtual board (firmware under the MicroPython unix port) can do that
# a given real board may not: its UART can invert TX/RX like the ESP32's.
VIRTUAL_CAPABILITIES = frozenset({"uart-invert"})
# Used when board_configs/schema.json cannot be read.
FALLBACK_CAPABILITIES = frozenset({"uart-invert", "de-pin", "supply-adc"})

# A log line the virtual board prints once the firmware runs (the poller's
# start line); None: only check that `metergate vboard run` did not exit
# straight away.
VBOARD_READY_LINE = r"\[app\] polling"
CONSOLE_BAUD = 115200  # a real board's USB console
VBOARD_SETTLE_S = 0.3
SIM_READY_TIMEOUT_S = 20.0


def _metergate_argv():
    from metergate.vboard.gateway import metergate_argv

    return metergate_argv()


def missing_command(*words):
    """None when `metergate WORDS...` exists, else the first missing part (click's view)."""
    import click

    from metergate.cli import main

    command = main
    for i, word in enumerate(words):
        sub = None
        if isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), word)
        if sub is None:
            return "metergate " + " ".join(words[:i + 1])
        command = sub
    return None


def _require_command(*words):
    missing = missing_command(*words)
    if missing is not None:
        pytest.fail("`metergate %s` is not available in this checkout (click: No such command %r), "
                    "so the HIL fixture cannot start it"
                    % (" ".join(words), missing.split()[-1]), pytrace=False)


# -- options -----------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("metergate-hil", "metergate HIL bench (docs/hil.md)")
    group.addoption("--board", default="virtual", metavar="virtual|port:DEV",
                    help="board under test: the virtual board, or a real one on a serial port "
                         "(port:/dev/ttyUSB0). Default: virtual.")
    group.addoption("--bus", default="sim", metavar="sim|port:DEV",
                    help="RS-485 bus: the simulator over TCP, or a USB RS-485 adapter wired to "
                         "the real board (port:/dev/ttyUSB1). Default: sim.")
    group.addoption("--broker", default=None, metavar="URL",
                    help="MQTT broker URL (mqtt://HOST:PORT). Default: start mosquitto on a free "
                         "loopback port for the session.")
    group.addoption("--site", default=None, metavar="PATH",
                    help="simulated site file (TOML). Default: the simulator's demo site.")
    group.addoption("--board-config", default=None, metavar="PATH|NAME",
                    help="board config JSON of the real board (or its name in board_configs/); "
                         "its 'capabilities' decide which @needs tests run.")
    group.addoption("--hil-logs", default=None, metavar="DIR",
                    help="where per-test logs are kept. Default: build/hil-logs under the rootdir.")


def _parse_target(option, value, word):
    if value == word:
        return word, None
    if value.startswith("port:") and len(value) > len("port:"):
        return "port", value[len("port:"):]
    raise pytest.UsageError("%s must be '%s' or 'port:DEVICE' (e.g. port:/dev/ttyUSB0), not %r"
                            % (option, word, value))


def _known_capabilities():
    try:
        schema = json.loads((BOARD_CONFIGS / "schema.json").read_text())
        return frozenset(schema["properties"]["capabilities"]["items"]["enum"])
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_CAPABILITIES


def _load_board_config(value):
    path = pathlib.Path(value)
    if not path.exists() and (BOARD_CONFIGS / (value + ".json")).exists():
        path = BOARD_CONFIGS / (value + ".json")
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise pytest.UsageError("--board-config %s: %s" % (value, exc.strerror or exc))
    except ValueError as exc:
        raise pytest.UsageError("--board-config %s is not valid JSON: %s" % (path, exc))
    caps = config.get("capabilities") if isinstance(config, dict) else None
    if not isinstance(caps, list):
        raise pytest.UsageError("--board-config %s has no 'capabilities' list" % path)
    return path, config


class Bench:
    """The selection made by the options, shared by every fixture (``bench`` fixture)."""

    def __init__(self, config):
        opt = config.getoption
        self.board_kind, self.board_port = _parse_target("--board", opt("--board"), "virtual")
        self.bus_kind, self.bus_port = _parse_target("--bus", opt("--bus"), "sim")
        self.broker_url = opt("--broker")
        if self.broker_url is not None:
            try:
                parse_mqtt_url(self.broker_url)
            except ValueError as exc:
                raise pytest.UsageError("--broker: %s" % exc)
        self.site = pathlib.Path(opt("--site")) if opt("--site") else DEMO_SITE
        if opt("--site") and not self.site.is_file():
            raise pytest.UsageError("--site %s: no such file" % self.site)
        self.board_config_path = self.board_config = None
        if opt("--board-config"):
            self.board_config_path, self.board_config = _load_board_config(opt("--board-config"))
        if self.board_kind == "virtual":
            self.capabilities = VIRTUAL_CAPABILITIES
        elif self.board_config is not None:
            self.capabilities = frozenset(self.board_config["capabilities"])
        else:
            self.capabilities = frozenset()
        self.known_capabilities = _known_capabilities() | VIRTUAL_CAPABILITIES | self.capabilities
        logs = opt("--hil-logs")
        self.logs_root = pathlib.Path(logs) if logs else config.rootpath / "build" / "hil-logs"
        self.logs_root = self.logs_root.resolve()

    @property
    def board_label(self):
        if self.board_kind == "virtual":
            return "virtual"
        label = "port:%s" % self.board_port
        if self.board_config is not None:
            label += " [%s]" % self.board_config.get("name", self.board_config_path.stem)
        return label

    def describe(self):
        return ("board=%s capabilities=%s bus=%s broker=%s site=%s logs=%s" % (
            self.board_label, ",".join(sorted(self.capabilities)) or "none",
            "sim" if self.bus_kind == "sim" else "port:%s" % self.bus_port,
            self.broker_url or "mosquitto (started for the session)", self.site, self.logs_root))


_BENCH = pytest.StashKey()
_LOG_DIR = pytest.StashKey()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs(*capabilities): the test needs these board capabilities "
                   "(uart-invert, de-pin, supply-adc); skipped on a board without them")
    config.stash[_BENCH] = Bench(config)


def pytest_report_header(config):
    return "metergate bench: " + config.stash[_BENCH].describe()


def missing_capabilities(bench, needed):
    return sorted(set(needed) - bench.capabilities)


def pytest_collection_modifyitems(config, items):
    bench = config.stash[_BENCH]
    for item in items:
        needed = []
        for mark in item.iter_markers("needs"):
            needed.extend(mark.args)
        unknown = sorted(set(needed) - bench.known_capabilities)
        if unknown:
            raise pytest.UsageError("%s: unknown capability %s in @pytest.mark.needs (known: %s)"
                                    % (item.nodeid, ", ".join(unknown),
                                       ", ".join(sorted(bench.known_capabilities))))
        missing = missing_capabilities(bench, needed)
        if missing:
            why = "" if bench.board_kind == "virtual" or bench.board_config else " (no --board-config given)"
            item.add_marker(pytest.mark.skip(reason="needs %s; board %s has %s%s" % (
                ", ".join(missing), bench.board_label,
                ", ".join(sorted(bench.capabilities)) or "no capabilities", why)))
        # junit <properties> say what the test ran against
        item.user_properties.append(("board", bench.board_label))
        item.user_properties.append(("bus", "sim" if bench.bus_kind == "sim" else "port:%s" % bench.bus_port))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    log_dir = item.stash.get(_LOG_DIR, None)
    if log_dir is not None and report.failed:
        report.sections.append(("bench logs", str(log_dir)))
    return report


# -- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="session")
def bench(pytestconfig):
    """The bench selection (board, bus, broker, site, capabilities, logs root)."""
    return pytestconfig.stash[_BENCH]


def _safe(text):
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "_"


@pytest.fixture
def bench_logs(request, bench):
    """A directory for this test's logs, build/hil-logs/<module>/<test>/, kept after the run.

    Emptied when the test starts, so it holds the latest run only.
    """
    module, _, name = request.node.nodeid.partition("::")
    module = pathlib.PurePosixPath(module).with_suffix("").name
    path = bench.logs_root / _safe(module) / _safe(name.replace("::", "."))
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    request.node.stash[_LOG_DIR] = path
    request.node.user_properties.append(("bench_logs", str(path)))
    return path


@pytest.fixture(scope="session")
def broker(bench):
    """The session's MQTT broker: Broker (mosquitto we run) or ExternalBroker (--broker).

    Both have .host .port .url; .log_path is None for an external broker.
    """
    if bench.broker_url is not None:
        yield ExternalBroker(bench.broker_url)
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    log = bench.logs_root / "_session" / ("mosquitto-%s.log" % worker)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    with Broker(log_path=log) as running:
        yield running


@pytest.fixture
def mqtt(broker):
    """Factory of connected MqttProbe clients on the broker, disconnected after the test.

    ``mqtt(client_id=None, clean_session=True, **kw)``.
    """
    probes = []

    def connect(client_id=None, **kwargs):
        probe = MqttProbe(broker.url, client_id, **kwargs).connect()
        probes.append(probe)
        return probe

    yield connect
    for probe in probes:
        try:
            probe.disconnect()
        except Exception:  # noqa: BLE001 - already disconnected by the test
            pass


class Sim:
    """A running `metergate sim serve`: .bus_url (raw RS-485 bytes over TCP), .control_url."""

    def __init__(self, site, bus_url, control_url, process):
        self.site = site
        self.bus_url = bus_url
        self.control_url = control_url
        self.process = process
        self.log_path = process.log_path

    def __repr__(self):
        return "<Sim %s bus=%s control=%s>" % (self.site.name, self.bus_url, self.control_url)


@pytest.fixture
def sim(bench, bench_logs):
    """The meter-bus simulator for --site on two free loopback ports (per test)."""
    if bench.bus_kind != "sim":
        pytest.skip("--bus port:%s: the bus is a real RS-485 adapter, which the simulator serves "
                    "itself (`metergate sim serve SITE --serial %s`), not a per-test TCP bus"
                    % (bench.bus_port, bench.bus_port))
    _require_command("sim", "serve")
    bus_port, control_port = free_tcp_port(), free_tcp_port()
    bus_url = "tcp://%s:%d" % (LOOPBACK, bus_port)
    control_url = "tcp://%s:%d" % (LOOPBACK, control_port)
    argv = _metergate_argv() + ["sim", "serve", str(bench.site), "--listen", bus_url,
                                "--control", control_url]
    with ManagedProcess(argv, bench_logs / "sim.log", name="metergate sim serve",
                        ready_port=[bus_port, control_port],
                        ready_timeout=SIM_READY_TIMEOUT_S) as process:
        yield Sim(bench.site, bus_url, control_url, process)


@pytest.fixture
def board_config_json(bench):
    """The config written to the virtual board's flash as config.json (None: none written).

    Override in a conftest or test module to give the firmware its settings.
    """
    return None


class GatewayConsole:
    """The gateway's READING / HEALTH console lines (docs/gateway-config.md "What the gateway prints").

    ``poll()`` -> new (kind, dict) pairs; ``wait_for(until, timeout)`` collects
    {meter: [READING, ...]} and [HEALTH, ...] until ``until(readings, health)``
    is true, and fails the test with the console's last lines otherwise.
    ``source``: an object with ``poll()`` giving parsed lines (a LineFollower
    over the virtual board's log, or a serial reader for a real board).
    """

    def __init__(self, source, describe):
        self.source = source
        self.describe = describe

    def poll(self):
        return self.source.poll()

    def wait_for(self, until, timeout=60.0, alive=None):
        import time

        readings, health = {}, []
        deadline = time.monotonic() + timeout
        while True:
            for kind, msg in self.poll():
                if kind == "READING":
                    readings.setdefault(msg.get("meter"), []).append(msg)
                else:
                    health.append(msg)
            if until(readings, health):
                return readings, health
            if alive is not None and not alive():
                pytest.fail("the board stopped while waiting for its console:\n%s" % self.describe(),
                            pytrace=False)
            if time.monotonic() >= deadline:
                pytest.fail("no matching gateway console lines after %.0f s (got READING counts %s)\n%s"
                            % (timeout, {k: len(v) for k, v in readings.items()}, self.describe()),
                            pytrace=False)
            time.sleep(0.1)


class _SerialLines:
    """Gateway lines read from a real board's serial console (pyserial)."""

    def __init__(self, port, log_path, baud=CONSOLE_BAUD):
        import serial

        self.serial = serial.Serial(port, baud, timeout=0)
        self.log_path = log_path
        from metergate.vboard.gateway import ConsoleLines

        self.lines = ConsoleLines()

    def poll(self):
        data = self.serial.read(65536) or b""
        if data:
            with open(self.log_path, "ab") as log:
                log.write(data)
        return self.lines.feed(data)

    def close(self):
        self.serial.close()


class VirtualBoard:
    """`metergate vboard run` on the simulator's bus; its flash is a kept directory."""

    kind = "virtual"
    port = None

    def __init__(self, flash_dir, bus_url, process, capabilities):
        self.flash_dir = flash_dir
        self.bus_url = bus_url
        self.process = process
        self.log_path = process.log_path
        self.capabilities = capabilities

    def console(self):
        """A GatewayConsole on what the board printed since it started."""
        from metergate.vboard.gateway import LineFollower

        follower = LineFollower(self.log_path)
        follower.pos = self.process._log_start
        return GatewayConsole(follower, lambda: self.process.tail(30))

    def __repr__(self):
        return "<VirtualBoard flash=%s bus=%s>" % (self.flash_dir, self.bus_url)


class PortBoard:
    """A real board on a serial port; tests drive it with mpremote."""

    kind = "port"

    def __init__(self, port, capabilities, config, log_dir):
        self.port = port
        self.capabilities = capabilities
        self.config = config
        self.log_dir = log_dir

    def mpremote(self, *args, timeout=60, check=True):
        """Run `mpremote connect PORT ARGS...`; the output is also logged to mpremote.log."""
        argv = [sys.executable, "-m", "mpremote", "connect", self.port] + [str(a) for a in args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        with open(self.log_dir / "mpremote.log", "a") as log:
            log.write("$ %s\n%s%s[exit %d]\n" % (subprocess.list2cmdline(argv), result.stdout,
                                                 result.stderr, result.returncode))
        if check and result.returncode != 0:
            raise AssertionError("mpremote %s failed (exit %d):\n%s%s" % (
                " ".join(map(str, args)), result.returncode, result.stdout, result.stderr))
        return result

    def console(self):
        """A GatewayConsole on the board's serial console (close other monitors first)."""
        reader = _SerialLines(self.port, self.log_dir / "console.log")
        self._readers = getattr(self, "_readers", [])
        self._readers.append(reader)
        return GatewayConsole(reader, lambda: "see %s" % (self.log_dir / "console.log"))

    def close(self):
        for reader in getattr(self, "_readers", []):
            reader.close()
        self._readers = []

    def __repr__(self):
        return "<PortBoard %s>" % self.port


@pytest.fixture
def board(request, bench, bench_logs, board_config_json):
    """The board under test: VirtualBoard (started per test) or PortBoard."""
    if bench.board_kind == "port":
        if not os.path.exists(bench.board_port):
            pytest.fail("--board port:%s: no such device" % bench.board_port, pytrace=False)
        real = PortBoard(bench.board_port, bench.capabilities, bench.board_config, bench_logs)
        if board_config_json is not None:
            # provision the way an installer does: copy config.json, reset the board
            path = bench_logs / "config.json"
            path.write_text(json.dumps(board_config_json, indent=2) + "\n")
            real.mpremote("fs", "cp", str(path), ":config.json")
            real.mpremote("reset", check=False)
        try:
            yield real
        finally:
            real.close()
        return
    sim = request.getfixturevalue("sim")
    _require_command("vboard", "run")
    flash = bench_logs / "flash"
    flash.mkdir()
    if board_config_json is not None:
        (flash / "config.json").write_text(json.dumps(board_config_json, indent=2) + "\n")
    argv = _metergate_argv() + ["vboard", "run", "--flash", str(flash), "--bus", sim.bus_url]
    process = ManagedProcess(argv, bench_logs / "vboard.log", name="metergate vboard run",
                             ready_line=VBOARD_READY_LINE, ready_timeout=SIM_READY_TIMEOUT_S)
    with process:
        if VBOARD_READY_LINE is None:
            # without a ready line, at least catch a board that dies on start
            if process.wait(VBOARD_SETTLE_S) is not None:
                pytest.fail("metergate vboard run exited with %s at start:\n%s"
                            % (process.returncode, process.tail()), pytrace=False)
        yield VirtualBoard(flash, sim.bus_url, process, bench.capabilities)
