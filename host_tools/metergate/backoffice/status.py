"""`metergate backoffice status`: what the back office knows right now.

Gateways online/offline and when they were last heard, today's collection
success by site and collector, and what sits in quarantine.
"""

from __future__ import annotations

import datetime
import time

from metergate.backoffice import success
from metergate.backoffice.rule import CollectionRule
from metergate.backoffice.store import using_store


def gather(db_url, rule=None, day=None, now=None):
    """The status as plain data (what --json prints)."""
    rule = rule or CollectionRule()
    day = day or rule.today()
    now = int(time.time()) if now is None else now
    with using_store(db_url) as store:
        gateways = [
            {"device": d, "state": state or "unknown", "fw": fw, "boot_count": boot, "since": state_at,
             "last_seen": seen, "last_seen_ago_s": None if seen is None else max(0, now - seen)}
            for d, state, fw, boot, state_at, seen in store.query(
                "SELECT device, state, fw, boot_count, state_at, last_seen FROM gateways ORDER BY device")]
        collectors = []
        for c in success.collector_days(store, day, day):
            ok, total = c.ok_total
            collectors.append({"collector": c.collector_id, "kind": c.kind, "site": c.site,
                               "meters": c.meters, "meters_collected": c.meters_collected,
                               "collected": c.collected,
                               "rate": success.Rate(ok, total).as_dict()})
        sites = {site: {kind: rate.as_dict() for kind, rate in rates.items()}
                 for site, rates in sorted(success.site_day(store, day).items())}
        quarantined = store.query("SELECT COUNT(*) FROM quarantine")[0][0]
        recent = [{"received_at": t, "topic": topic, "reason": reason}
                  for t, topic, reason in store.query(
                      "SELECT received_at, topic, reason FROM quarantine ORDER BY id DESC LIMIT 5")]
        readings = store.query("SELECT COUNT(*) FROM readings")[0][0]
        return {"database": store.display_url, "schema_version": store.schema_version(),
                "day": day.isoformat(), "rule": rule.describe(), "readings": readings,
                "gateways": gateways, "sites": sites, "collectors": collectors,
                "quarantine": {"count": quarantined, "latest": recent}}


def _ago(seconds):
    if seconds is None:
        return "never"
    if seconds < 120:
        return "%d s ago" % seconds
    if seconds < 7200:
        return "%d min ago" % (seconds // 60)
    return "%.1f h ago" % (seconds / 3600)


def _rate(rate):
    if rate["total"] == 0:
        return "-"
    return "%d/%d  %.1f%%" % (rate["ok"], rate["total"], rate["percent"])


def render(data):
    """rich renderables for the status."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    gw = Table(title="Gateways 网关", expand=False)
    for col in ("device 设备", "state 状态", "fw", "boots", "last seen 最近"):
        gw.add_column(col, no_wrap=True)
    for g in data["gateways"]:
        colour = {"online": "green", "offline": "red"}.get(g["state"], "yellow")
        gw.add_row(g["device"], "[%s]%s[/]" % (colour, g["state"]), g["fw"] or "-",
                   "-" if g["boot_count"] is None else str(g["boot_count"]), _ago(g["last_seen_ago_s"]))
    sites = Table(title="Collection success %s by site 按台区采集成功率" % data["day"], expand=False)
    for col in ("site 台区", "wireless collectors 无线采集器", "carrier users 载波用户"):
        sites.add_column(col, no_wrap=True)
    for site, rates in data["sites"].items():
        sites.add_row(site, _rate(rates["wireless"]), _rate(rates["carrier"]))
    col = Table(title="Collection success %s by collector 按采集器" % data["day"], expand=False)
    for c in ("collector 采集器", "kind 类型", "site 台区", "meters read 已采表数", "result 结果"):
        col.add_column(c, no_wrap=True)
    for c in data["collectors"]:
        result = ("[green]collected 成功[/]" if c["collected"] else "[red]not collected 失败[/]") \
            if c["kind"] == "wireless" else _rate(c["rate"])
        col.add_row(c["collector"], c["kind"], c["site"] or "-",
                    "%d/%d" % (c["meters_collected"], c["meters"]), result)
    q = data["quarantine"]
    lines = ["readings stored 已存读数: %d   quarantined messages 隔离消息: %s" % (
        data["readings"], ("[bold red]%d[/]" % q["count"]) if q["count"] else "0")]
    for item in q["latest"]:
        lines.append("  [dim]%s %s: %s[/]" % (
            datetime.datetime.fromtimestamp(item["received_at"]).strftime("%Y-%m-%d %H:%M:%S"),
            item["topic"], item["reason"][:160]))
    lines.append("[dim]%s (schema v%d); a day is collected with %s[/]" % (
        data["database"], data["schema_version"], data["rule"]))
    return Group(gw, sites, col, Text.from_markup("\n".join(lines)))
