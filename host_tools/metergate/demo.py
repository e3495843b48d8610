"""`metergate demo`: a simulated meter box, the virtual gateway polling it, live readings.

Starts the meter-bus simulator on the demo site (or --site) on free loopback
ports, writes a config.json for the site's meters into a temporary flash
directory, boots the virtual board on the simulator's bus, and shows the
readings and health the gateway publishes, as received from the MQTT broker, as
a table until Ctrl-C, SIGTERM or --duration. The broker is mosquitto when it is
installed, else an embedded one (amqtt, metergate.bench.embedded_broker);
--broker picks one. The back office's ingest stores what reaches the broker in
build/demo-backoffice.db (new every run); the demo ends with today's collection
success for the site. Then everything it started is stopped. Only when no
broker can start does the table show the gateway's console lines instead (and
no back office runs).

Without a terminal (CI, a pipe) the table is printed once per poll cycle
instead of redrawn in place; nothing is read from stdin.
"""

from __future__ import annotations

import pathlib
import signal
import threading
import time

import click

from metergate.sim import DEMO_SITE
from metergate.vboard.gateway import reading_errors

CURRENT_GATE_A = 0.05  # judge direction only under load (PROTOCOLS.md)


class DemoView:
    """What the table shows, built from the gateway's console lines and the site file."""

    def __init__(self, site):
        self.site = site
        self.meters = site.meters_on_bus(site.buses[0].name)
        self.latest = {}  # meter id -> last READING
        self.seen_at = {}
        self.health = None
        self.cycles = 0
        self.source = "the gateway's console"
        self.contract_errors = []

    def feed(self, kind, msg):
        if kind == "READING":
            self.latest[msg.get("meter")] = msg
            self.seen_at[msg.get("meter")] = time.monotonic()
            if self.meters and msg.get("meter") == self.meters[0].id:
                self.cycles += 1  # a round of the bus starts with the first meter
        elif kind == "HEALTH":
            self.health = msg
        elif kind == "CONTRACT":
            self.contract_errors.append(msg["error"])

    def exporting(self, meter):
        """True when the meter's customer may legitimately export (PV)."""
        for breaker in self.site.breakers_at(meter.box, meter.position):
            try:
                if self.site.customer(breaker.customer).exporting:
                    return True
            except KeyError:
                pass
        return False

    def reversed_meters(self):
        """(meter, power) for meters under load with negative power and no export expected."""
        out = []
        for m in self.meters:
            r = self.latest.get(m.id)
            if not r:
                continue
            vals = r.get("values", {})
            p = _v(vals, "power")
            i = _v(vals, "current") if "current" in vals else _v(vals, "current_a")
            if p is not None and p < 0 and i is not None and abs(i) >= CURRENT_GATE_A and not self.exporting(m):
                out.append((m, p))
        return out

    def banner(self):
        rev = self.reversed_meters()
        if rev:
            parts = ["%s (position %d, P = %.3f kW)" % (m.id, m.position, p) for m, p in rev]
            return ("[bold white on red] MISWIRED: %s: negative power without export: "
                    "in/out reversed? [/]" % ", ".join(parts))
        if not self.latest:
            return "[yellow]waiting for the gateway's first readings...[/]"
        return "[green]no reversed meter seen[/]"

    def table(self):
        from rich.table import Table

        t = Table(title="%s: virtual gateway readings (cycle %d)" % (self.site.name, self.cycles),
                  caption="as received from %s%s" % (self.source, "; %d messages broke the contract, last: %s" % (
                      len(self.contract_errors), self.contract_errors[-1]) if self.contract_errors else ""),
                  expand=False)
        for col, justify in (("meter", "left"), ("pos", "right"), ("protocol", "left"), ("U V", "right"),
                             ("I A", "right"), ("P kW", "right"), ("fwd kWh", "right"), ("rev kWh", "right")):
            t.add_column(col, justify=justify, no_wrap=True)
        t.add_column("quality / last error", overflow="fold", min_width=8)
        t.add_column("link ok", justify="right", no_wrap=True)
        t.add_column("age s", justify="right", no_wrap=True)
        counters = (self.health or {}).get("meters", {})
        now = time.monotonic()
        for m in self.meters:
            r = self.latest.get(m.id)
            vals = r.get("values", {}) if r else {}
            errs = reading_errors(r) if r else {}
            odd = [name for name, v in vals.items() if isinstance(v, dict) and v.get("q") == "implausible"]
            u = _v(vals, "voltage") if "voltage" in vals else _v(vals, "voltage_a")
            i = _v(vals, "current") if "current" in vals else _v(vals, "current_a")
            p = _v(vals, "power")
            if r is None:
                quality = "[dim]not read yet[/]"
            elif errs:
                quality = "[red]%s[/]" % "; ".join("%s: %s" % kv for kv in errs.items())
            elif odd:
                quality = "[yellow]implausible: %s[/]" % ", ".join(odd)
            else:
                quality = "[green]ok[/]"
            c = counters.get(m.id) or {}
            success = c.get("success")
            link = "-" if success is None else "%.0f%%" % (100.0 * success)
            if not errs and c.get("last_error"):
                quality += " [dim](last: %s)[/]" % c["last_error"]
            p_text = _fmt(p, 4)
            if p is not None and p < 0 and i is not None and abs(i) >= CURRENT_GATE_A and not self.exporting(m):
                p_text = "[bold red]%s[/]" % p_text
            age = "" if m.id not in self.seen_at else "%.0f" % (now - self.seen_at[m.id])
            t.add_row(m.id, str(m.position), _protocol(m), _fmt(u, 1), _fmt(i, 3), p_text,
                      _fmt(_v(vals, "energy_forward"), 2), _fmt(_v(vals, "energy_reverse"), 2),
                      quality, link, age)
        return t

    def render(self):
        from rich.console import Group
        from rich.text import Text

        return Group(Text.from_markup(self.banner()), self.table(),
                     Text.from_markup("[dim]Ctrl-C stops the demo[/]"))


def _protocol(meter):
    """Short protocol and line: '645-07 2400E', '645-97 1200E', 'sdm120 2400E'."""
    name = {"dlt645-2007": "645-07", "dlt645-1997": "645-97"}.get(meter.protocol, meter.model)
    line = meter.line
    return "%s %d%s" % (name, line.baud, line.parity)


def _v(values, name):
    item = values.get(name)
    if not isinstance(item, dict):
        return None
    v = item.get("v")
    return v if isinstance(v, (int, float)) else None


def _fmt(v, nd):
    return "-" if v is None else "%.*f" % (nd, v)


class _Stop(Exception):
    pass


DEMO_DEVICE = "demo-gw"
DEMO_DB = pathlib.Path("build") / "demo-backoffice.db"


class DemoBackoffice:
    """The back office's ingest (metergate.backoffice) in a thread, into a fresh SQLite file."""

    def __init__(self, broker_url, site, db_path=DEMO_DB):
        from metergate.backoffice.imports import set_collector
        from metergate.backoffice.ingest import Ingest
        from metergate.backoffice.store import Store

        db_path = pathlib.Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # a new virtual gateway starts its seq at 1 again: an old file would take its readings for duplicates
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(str(db_path) + suffix).unlink(missing_ok=True)
        self.url = "sqlite:///%s" % db_path
        self.site = site
        store = Store(self.url).connect()
        try:
            set_collector(store, DEMO_DEVICE, kind="wireless", site=site.name)
        finally:
            store.close()
        self.ingest = Ingest(broker_url, self.url, client_id="metergate-demo-backoffice")
        self.thread = threading.Thread(target=self.ingest.run, name="backoffice-ingest", daemon=True)

    def start(self, timeout=10.0):
        self.thread.start()
        if not self.ingest.subscribed.wait(timeout):
            raise click.ClickException("the back office's ingest did not subscribe within %.0f s" % timeout)
        return self

    def stop(self, drain_s=3.0):
        deadline = time.monotonic() + drain_s
        while not self.ingest.inbox.empty() and time.monotonic() < deadline:
            time.sleep(0.05)  # what already arrived is committed before stopping
        self.ingest.stop()
        self.thread.join(10)

    def summary(self, console):
        """Today's collection success for the site, from the database the ingest filled."""
        from metergate.backoffice import status

        data = status.gather(self.url)
        console.print(status.render(data))
        rates = data["sites"].get(self.site.name, {}).get("wireless", {"ok": 0, "total": 0})
        mine = [c for c in data["collectors"] if c["collector"] == DEMO_DEVICE]
        read = "%d/%d" % (mine[0]["meters_collected"], mine[0]["meters"]) if mine else "0/0"
        console.print("collection success today 今日采集成功率 (%s, %s): collectors %d/%d, meters read 已采表 %s"
                      % (data["day"], self.site.name, rates["ok"], rates["total"], read))


def _mqtt_messages(probe):
    """("READING" | "HEALTH", message) for what reached the broker since the last call;
    a message that breaks the contract is shown as a contract error, never dropped silently."""
    from metergate import contract

    out = []
    while True:
        try:
            msg = probe.get(timeout=0)
        except TimeoutError:
            return out
        where = contract.kind_of_topic(msg.topic)
        if where is None or where[1] not in ("reading", "health"):
            continue
        try:
            body = contract.validate(where[1], msg.payload)
        except contract.ContractError as exc:
            out.append(("CONTRACT", {"error": str(exc)}))
            continue
        out.append(("READING" if where[1] == "reading" else "HEALTH", body))


BROKER_CHOICES = ("auto", "mosquitto", "embedded")


def start_broker(choice="auto", workdir=None):
    """(started broker or None, one line saying which and why).

    auto: mosquitto when installed (the production broker), else the embedded
    amqtt broker; None only when neither could start (the console fallback).
    A broker asked for by name that cannot start is an error (ClickException).
    """
    from metergate.backoffice.ingest import BROKER_SETTINGS
    from metergate.bench.broker import Broker, BrokerNotFound, find_mosquitto
    from metergate.bench.embedded_broker import EmbeddedBroker
    from metergate.bench.procs import ProcessError

    def logs(name):
        return None if workdir is None else pathlib.Path(workdir) / name

    failures = []
    if choice in ("auto", "mosquitto"):
        try:
            binary = find_mosquitto()
            broker = Broker(extra_config=BROKER_SETTINGS, workdir=logs("mosquitto")).start()
            why = "asked for with --broker" if choice == "mosquitto" else "installed on this machine"
            return broker, "broker: mosquitto (%s) on %s, %s" % (binary, broker.url, why)
        except BrokerNotFound:
            failures.append("mosquitto is not installed")
        except ProcessError as exc:
            failures.append("mosquitto did not start: %s" % str(exc).splitlines()[0])
        if choice == "mosquitto":
            raise click.ClickException("--broker mosquitto: %s (apt-get install mosquitto, or --broker embedded)"
                                       % failures[0])
    try:
        broker = EmbeddedBroker(workdir=logs("amqtt")).start()
        why = "asked for with --broker" if choice == "embedded" else failures[0]
        return broker, ("broker: embedded (amqtt, in Python) on %s, %s; mosquitto remains the broker for "
                        "production (docs/virtual-board.md)" % (broker.url, why))
    except (BrokerNotFound, ProcessError) as exc:
        failures.append("the embedded broker did not start: %s" % str(exc).splitlines()[0])
        if choice == "embedded":
            raise click.ClickException("--broker embedded: %s" % failures[-1])
    return None, ("[yellow]no MQTT broker could start (%s); showing the gateway's console instead, "
                  "without the back office[/]" % "; ".join(failures))


def run_demo(site_path, duration=None, interval=2.0, console=None, workdir=None, broker_choice="auto"):
    """Run the demo; returns the DemoView at the end. Raises ProcessError if a part fails."""
    from rich.console import Console
    from rich.live import Live

    from metergate.sim import load_site
    from metergate.vboard.gateway import Bench, site_config

    from metergate.bench.broker import MqttProbe

    site = load_site(site_path)
    console = console or Console()
    view = DemoView(site)
    extra = {"health_interval_s": max(2, int(interval))}

    probe = backoffice = None
    broker, which = start_broker(broker_choice, workdir)
    console.print(which)
    if broker is not None:
        extra.update(device_id=DEMO_DEVICE, mqtt={"url": broker.url, "keepalive_s": 30})
    cfg = site_config(site, poll_interval_s=interval, **extra)

    def on_signal(signum, frame):
        raise _Stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    bench = Bench(site_path, cfg, workdir=workdir)
    try:
        console.print("metergate demo: simulator on %s, virtual gateway polling %d meters; starting..."
                      % (site.name, len(view.meters)))
        if broker is not None:
            # the back office's view: what arrives at the broker, checked against the contract
            probe = MqttProbe(broker.url, client_id="metergate-demo").connect()
            probe.subscribe("metergate/v1/%s/#" % DEMO_DEVICE, qos=1)
            view.source = "MQTT %s%s" % (broker.url, " (embedded broker)" if broker.kind == "embedded" else "")
            backoffice = DemoBackoffice(broker.url, site).start()
        bench.start()
        console.print("simulator %s (control %s), gateway flash %s%s" % (
            bench.sim_url, bench.control_url, bench.flash,
            ", broker %s" % broker.url if broker is not None else ""))
        deadline = None if duration is None else time.monotonic() + duration
        live = console.is_terminal
        printed_cycle = 0

        def step():
            lines = bench.follower.poll()  # read always: keeps the log follower current
            if probe is None:
                for kind, msg in lines:
                    view.feed(kind, msg)
            else:
                for kind, msg in _mqtt_messages(probe):
                    view.feed(kind, msg)
            if not bench.board.running:
                raise click.ClickException("the virtual board stopped (exit %s):\n%s"
                                           % (bench.board.returncode, bench.board.tail()))
            if not bench.sim.running:
                raise click.ClickException("the simulator stopped (exit %s):\n%s"
                                           % (bench.sim.returncode, bench.sim.tail()))

        def done():
            return deadline is not None and time.monotonic() >= deadline

        if live:
            with Live(view.render(), console=console, refresh_per_second=4, transient=False) as screen:
                while not done():
                    step()
                    screen.update(view.render())
                    time.sleep(0.25)
        else:
            while not done():
                step()
                if view.cycles > printed_cycle:
                    printed_cycle = view.cycles
                    console.print(view.render())
                time.sleep(0.25)
            if view.cycles != printed_cycle or not printed_cycle:
                console.print(view.render())  # unless this cycle's table is already out
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        bench.stop()
        if probe is not None:
            probe.disconnect()
        if backoffice is not None:
            backoffice.stop()
        if broker is not None:
            broker.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    console.print("metergate demo: stopped the simulator and the virtual gateway")
    if backoffice is not None:
        backoffice.summary(console)
    return view


@click.command("demo")
@click.option("--duration", type=float, default=None, metavar="SECONDS",
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--site", "site_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Site file to simulate [default: the embedded demo site].")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Gateway poll interval in seconds.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the flash and the logs here (default: a temp dir, removed at the end).")
@click.option("--broker", "broker_choice", type=click.Choice(BROKER_CHOICES), default="auto", show_default=True,
              help="MQTT broker the readings flow through: mosquitto when installed, else an embedded "
                   "one (amqtt, in Python); the gateway's console only if neither can start.")
def demo(duration, site_path, interval, workdir, broker_choice):
    """A simulated meter box and the virtual gateway polling it: live readings.

    The readings are shown as received from MQTT and stored by the back office.
    The broker is mosquitto when installed, else an embedded one (amqtt).

    \b
    metergate demo                    until Ctrl-C
    metergate demo --duration 20      scripted runs, CI (no terminal needed)
    metergate demo --broker embedded  without mosquitto, even where it is installed
    """
    from rich.console import Console

    from metergate.bench.procs import ProcessError

    console = Console(width=None if Console().is_terminal else 160)
    try:
        run_demo(site_path or DEMO_SITE, duration=duration, interval=interval, console=console,
                 workdir=workdir, broker_choice=broker_choice)
    except ProcessError as exc:
        raise click.ClickException(str(exc))
