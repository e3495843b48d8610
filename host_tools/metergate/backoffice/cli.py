"""`metergate backoffice ...`: thin click commands over the back-office library."""

from __future__ import annotations

import json
import logging
import signal

import click

from metergate.backoffice.store import DEFAULT_URL, StoreError, parse_db_url


def _db_url(ctx, param, value):
    try:
        parse_db_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param)
    return value


db_option = click.option("--db", "db_url", default=DEFAULT_URL, show_default=True, envvar="METERGATE_DB",
                         callback=_db_url,
                         help="sqlite:///FILE (or a file path) or postgresql://USER@HOST:PORT/DB.")
tz_option = click.option("--tz", default=None, envvar="METERGATE_TZ",
                         help="Time zone of collection days [default: Asia/Shanghai].")


def _rule(tz, items=None):
    from metergate.backoffice.rule import CollectionRule

    kwargs = {}
    if tz:
        kwargs["tz"] = tz
    if items:
        kwargs["items"] = tuple(items)
    try:
        return CollectionRule(**kwargs)
    except ValueError as exc:
        raise click.BadParameter(str(exc))


@click.group("backoffice")
def backoffice():
    """The back office: ingest the gateways' MQTT data, collection success (后台采集管控)."""


@backoffice.command("ingest")
@click.option("--broker", "broker_url", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT].")
@db_option
@click.option("--group", default=None, help="Share the load with other ingest processes ($share/GROUP/...).")
@click.option("--client-id", default=None, help="MQTT client id; fixed per process so its session survives "
              "restarts [default: metergate-ingest-HOSTNAME[-GROUP]].")
@click.option("--prefix", default="metergate", show_default=True, help="Topic prefix of the gateways.")
@click.option("--username", default=None, envvar="METERGATE_MQTT_USER")
@click.option("--password", default=None, envvar="METERGATE_MQTT_PASSWORD")
@click.option("--ca", "ca_certs", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CA certificate for mqtts://.")
@click.option("--item", "items", multiple=True, help="Items whose valid value makes a day collected "
              "(repeatable) [default: energy_forward].")
@tz_option
@click.option("--batch", "batch_max", type=click.IntRange(1, 100000), default=1000, show_default=True,
              help="At most this many messages per transaction.")
@click.option("--db-timeout", type=click.FloatRange(0.1, 600), default=5.0, show_default=True,
              help="Seconds a write waits for a locked or unreachable database before it backs off.")
@click.option("-v", "--verbose", is_flag=True)
def ingest_cmd(broker_url, db_url, group, client_id, prefix, username, password, ca_certs, items, tz,
               batch_max, db_timeout, verbose):
    """Subscribe to the gateways and store what they publish, until SIGTERM / Ctrl-C.

    Acknowledges each message only after it is committed; run it under a
    supervisor that restarts it (the broker keeps its session meanwhile).
    """
    from metergate.backoffice.consumer import MqttError
    from metergate.backoffice.ingest import Ingest

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ingest = Ingest(broker_url, db_url, client_id=client_id, group=group, prefix=prefix,
                        rule=_rule(tz, items), batch_max=batch_max, username=username, password=password,
                        ca_certs=ca_certs, db_timeout_s=db_timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ingest.stop())
    click.echo("ingest: %s -> %s as %s%s" % (broker_url, ingest.store.display_url, ingest.client_id,
                                             " in group %s" % group if group else ""), err=True)
    try:
        counts = ingest.run()
    except (StoreError, MqttError) as exc:  # MqttError: refused at the first connection (credentials, ACL)
        raise click.ClickException(str(exc))
    if counts:
        click.echo("ingest stopped: %s" % ", ".join("%s %d" % kv for kv in counts.items()), err=True)


@backoffice.command("status")
@db_option
@tz_option
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Day [default: today].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status_cmd(db_url, tz, day, as_json):
    """Gateways online/offline, today's collection success by site and collector, quarantine."""
    from metergate.backoffice import status

    try:
        data = status.gather(db_url, _rule(tz), day=day.date() if day else None)
    except StoreError as exc:
        raise click.ClickException(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console

        Console(width=None if Console().is_terminal else 140).print(status.render(data))


@backoffice.group("import")
def import_group():
    """Import CSV files (bad rows are listed with their line; nothing is imported unless --skip-bad)."""


def _report(report, as_json):
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        for bad in report.bad:
            click.echo("bad row 错误行: %s" % bad, err=True)
        if report.applied:
            click.echo("%s: %d rows imported 已导入%s" % (report.path, report.imported,
                                                       ", %d bad rows skipped" % len(report.bad) if report.bad else ""))
        else:
            click.echo("%s: nothing imported 未导入: %d bad rows" % (report.path, len(report.bad)), err=True)
    if report.bad:
        raise SystemExit(1)


@import_group.command("results")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@db_option
@click.option("--skip-bad", is_flag=True, help="Import the good rows even when some are bad.")
@click.option("--json", "as_json", is_flag=True)
def import_results_cmd(path, db_url, skip_bad, as_json):
    """Collection results of other systems: day,collector,kind,meter,collected[,site]."""
    from metergate.backoffice import imports

    try:
        _report(imports.import_results(db_url, path, skip_bad=skip_bad), as_json)
    except StoreError as exc:
        raise click.ClickException(str(exc))


@import_group.command("work-orders")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@db_option
@tz_option
@click.option("--skip-bad", is_flag=True, help="Import the good rows even when some are bad.")
@click.option("--json", "as_json", is_flag=True)
def import_orders_cmd(path, db_url, tz, skip_bad, as_json):
    """Closed work orders: work_order,kind,closed_at,collector,meter."""
    from metergate.backoffice import imports

    try:
        _report(imports.import_work_orders(db_url, path, rule=_rule(tz), skip_bad=skip_bad), as_json)
    except StoreError as exc:
        raise click.ClickException(str(exc))


@backoffice.command("collector")
@click.argument("collector_id")
@db_option
@click.option("--kind", type=click.Choice(["wireless", "carrier"]), default=None)
@click.option("--site", default=None, help="Site (台区 / estate) the collector belongs to.")
def collector_cmd(collector_id, db_url, kind, site):
    """Register a collector or set its kind and site."""
    from metergate.backoffice import imports

    try:
        imports.set_collector(db_url, collector_id, kind=kind, site=site)
    except StoreError as exc:
        raise click.ClickException(str(exc))
    click.echo("collector %s: saved" % collector_id)


@backoffice.command("work-order")
@click.argument("order_id")
@db_option
@tz_option
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False), default=None,
              help="Scoring rules file whose success.window_offset_days / window_days give the collection "
                   "window [default: the rules shipped with metergate].")
@click.option("--json", "as_json", is_flag=True)
def work_order_cmd(order_id, db_url, tz, rules_path, as_json):
    """Collection success of one work order after it closed."""
    from metergate.backoffice import success
    from metergate.scoring import rules as scoring_rules

    try:
        rules = scoring_rules.load(rules_path)
    except scoring_rules.RulesError as exc:
        raise click.ClickException(str(exc))
    try:
        result = success.work_order_success(db_url, order_id, rule=_rule(tz), rules=rules)
    except success.UnknownWorkOrder as exc:
        raise click.ClickException(exc.args[0])
    except StoreError as exc:
        raise click.ClickException(str(exc))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return
    r = result.rate
    click.echo("work order %s (%s), window %s .. %s: %s" % (
        result.order_id, result.kind, result.window[0], result.window[1],
        "pending 待测" if result.state == "pending" else "measured 已测"))
    for collector, meter, ok, detail in result.items:
        click.echo("  %-20s %-20s %s  %s" % (collector, meter or "", "ok  " if ok else "FAIL", detail))
    click.echo("success 成功率: %d/%d%s" % (r.ok, r.total, "" if r.total == 0 else " = %.1f%%" % r.percent))


@backoffice.command("recompute")
@db_option
@tz_option
@click.option("--item", "items", multiple=True, help="Items whose valid value makes a day collected.")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True)
def recompute_cmd(db_url, tz, items, start, end):
    """Re-apply a (changed) collection rule to the stored readings of these days."""
    from metergate.backoffice import success

    rule = _rule(tz, items)
    try:
        n = success.recompute(db_url, rule, start.date(), end.date())
    except StoreError as exc:
        raise click.ClickException(str(exc))
    click.echo("collected days from readings %s .. %s: %d (%s)" % (start.date(), end.date(), n, rule.describe()))
