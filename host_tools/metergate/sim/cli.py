"""`metergate sim`: run the meter-bus simulator, check a site file (docs/sim.md)."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from metergate.sim import DEMO_SITE
from metergate.sim.site import LineSettings, SiteError, load_site


def _site_path(site):
    return DEMO_SITE if site in (None, "", "demo") else site


def _load(site):
    try:
        return load_site(_site_path(site))
    except SiteError as exc:
        raise click.ClickException(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def sim():
    """The meter-bus simulator: simulated meters on an RS-485 bus."""


@sim.command("serve")
@click.argument("site", required=False)
@click.option("--listen", metavar="tcp://HOST:PORT",
              help="TCP server like an RS-485-to-Ethernet converter (raw bytes or the MGUART1 virtual UART link).")
@click.option("--pty", "pty_path", metavar="PATH", help="Create a pty; PATH becomes a symlink to it.")
@click.option("--serial", "serial_dev", metavar="DEV", help="A real serial port (USB RS-485 adapter).")
@click.option("--baud", type=int, help="Gateway-side baud for raw TCP, pty and serial (default: the bus's).")
@click.option("--parity", type=click.Choice(["N", "E", "O"], case_sensitive=False),
              help="Gateway-side parity (default: the bus's).")
@click.option("--bus", "bus_name", metavar="NAME", help="Which bus of the site to serve (default: the first).")
@click.option("--control", metavar="tcp://HOST:PORT", help="Control interface (JSON lines).")
@click.option("--seed", type=int, help="Seed of the loose-contact random numbers (repeatable runs).")
@click.option("-v", "--verbose", count=True, help="Log every transaction (-vv: more).")
def serve(site, listen, pty_path, serial_dev, baud, parity, bus_name, control, seed, verbose):
    """Serve SITE's meters on one bus (SITE: a site file; omitted or "demo": the demo site).

    \b
    metergate sim serve demo --listen tcp://127.0.0.1:7645 --control tcp://127.0.0.1:7646
    metergate sim serve site.toml --pty /tmp/bus.pty -v
    metergate sim serve site.toml --serial /dev/ttyUSB1 --baud 2400 --parity E
    """
    from metergate.sim.bus import Bus, BusRunner
    from metergate.sim.control import ControlServer
    from metergate.sim.meters import build_meters
    from metergate.sim.site import SiteState
    from metergate.sim.transports import PtyTransport, SerialTransport, TcpTransport, parse_tcp_url

    chosen = [x for x in (listen, pty_path, serial_dev) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --listen, --pty, --serial")
    logging.basicConfig(level=logging.WARNING if not verbose else (logging.INFO if verbose == 1 else logging.DEBUG),
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    site_obj = _load(site)
    bus_name = bus_name or site_obj.buses[0].name
    try:
        bus_def = site_obj.bus(bus_name)
    except KeyError:
        raise click.BadParameter("no bus %r in %s (buses: %s)" % (
            bus_name, site_obj.source, ", ".join(b.name for b in site_obj.buses)), param_hint="--bus")
    line = LineSettings(baud or bus_def.line.baud, (parity or bus_def.line.parity).upper(),
                        bus_def.line.data_bits, bus_def.line.stop_bits)
    state = SiteState(site_obj)
    meters = build_meters(site_obj, state, bus_name)
    bus = Bus(site_obj, state, meters, gateway_line=line, seed=seed)
    runner = BusRunner(bus)
    log = logging.getLogger("metergate.sim")

    def on_transaction(rec):
        replies = ", ".join("%s: %s" % (mid, r.hex(" ")) for mid, r in rec["replies"]) or "no reply"
        log.info("request %s -> %s", rec["request"].hex(" "), replies)

    bus.on_transaction = on_transaction
    parts = []
    started = []
    stop = threading.Event()
    try:
        runner.start()
        started.append(runner)
        if listen:
            host, port = _url(listen, "--listen", parse_tcp_url)
            transport = TcpTransport(runner, host, port, line)
            parts.append("listening on %s" % transport.url)
        elif pty_path:
            transport = PtyTransport(runner, pty_path, line)
            parts.append("pty %s" % transport.description)
        else:
            transport = SerialTransport(runner, serial_dev, line)
            parts.append("serial %s" % transport.description)
        started.append(transport.start())
        if control:
            host, port = _url(control, "--control", parse_tcp_url)
            server = ControlServer(runner, host, port, meters)
            started.append(server.start())
            parts.append("control %s" % server.url)
    except OSError as exc:
        for part in reversed(started):
            part.stop()
        raise click.ClickException("cannot start: %s" % exc)
    ids = " ".join(m.meter.id for m in meters)
    click.echo("sim: %s, bus %s (%s), %d meters [%s]: %s (seed %s)" % (
        site_obj.name, bus_name, line, len(meters), ids, ", ".join(parts), seed), nl=True)
    sys.stdout.flush()

    def on_signal(signum, frame):
        stop.set()

    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        for part in reversed(started):
            part.stop()
        click.echo("sim: stopped")


def _url(value, option, parse):
    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option)


@sim.command("check")
@click.argument("site", required=False)
def check(site):
    """Validate SITE and summarise it (omitted or "demo": the demo site)."""
    s = _load(site)
    click.echo("%s: %s" % (_site_path(site), s.name))
    click.echo("  supply %g V / %g V, %g Hz" % (s.nominal_voltage, s.nominal_line_voltage, s.frequency))
    for b in s.buses:
        ms = s.meters_on_bus(b.name)
        click.echo("  bus %s: %s, %d meters" % (b.name, b.line, len(ms)))
        for m in ms:
            click.echo("    %-6s %s:%d  %-12s %-14s %-13s addr %-12s %s  delay %g ms" % (
                m.id, m.box, m.position, m.protocol, m.model, m.kind, m.bus_address, m.line, m.response_delay_ms))
    for box in s.boxes:
        click.echo("  box %s: %s, %d positions" % (box.id, box.name, box.positions))
    click.echo("  %d customers, %d breakers, %d work order entries" % (
        len(s.customers), len(s.breakers), len(s.work_order)))
    for f in s.faults:
        params = ", ".join("%s=%s" % (k, _show(v)) for k, v in f.params.items())
        click.echo("  fault %-20s %-8s %s (%s)" % (f.id, "ON" if f.enabled else "off", f.type, params))
    click.echo("ok")


def _show(v):
    if isinstance(v, tuple):
        return "[" + " ".join(str(x) for x in v) + "]"
    return str(v)


@sim.command("demo-site")
def demo_site():
    """Print the path of the embedded demo site."""
    click.echo(str(DEMO_SITE))
