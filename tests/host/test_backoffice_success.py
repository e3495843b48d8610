"""Collection success from stored readings and imported results: per meter per
day, per collector per day (wireless: all its meters; carrier: per user), per
work order over the window after it closes; CSV imports reporting every bad
row by line; `metergate backoffice status` and the import commands through
click. Run on SQLite and on a real PostgreSQL."""

import dataclasses
import datetime
import json
import pathlib
import uuid

import pytest
from click.testing import CliRunner

from metergate.backoffice import imports, success, traffic
from metergate.backoffice.ingest import BatchWriter, classify
from metergate.backoffice.rule import CollectionRule
from metergate.backoffice.store import Store
from metergate.cli import main
from metergate.scoring import rules as scoring_rules

REPO = pathlib.Path(__file__).resolve().parents[2]
SHANGHAI = CollectionRule(tz="Asia/Shanghai")
D = datetime.date(2026, 11, 20)


def at(day, hour, minute=0, tz="Asia/Shanghai"):
    import zoneinfo

    return int(datetime.datetime.combine(day, datetime.time(hour, minute), zoneinfo.ZoneInfo(tz)).timestamp())


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = "sqlite:///%s" % (tmp_path / "bo.db")
    else:
        import psycopg

        pg = request.getfixturevalue("postgres")
        name = "s_" + uuid.uuid4().hex[:10]
        base = pg.url.rsplit("/", 1)[0]
        with psycopg.connect(base + "/postgres", autocommit=True) as conn:
            conn.execute('CREATE DATABASE "%s"' % name)
        url = base + "/" + name
    store = Store(url).connect()
    yield store
    store.close()


def ingest(store, readings, rule=SHANGHAI):
    """Readings through the ingest's own classify + BatchWriter (no broker needed for the arithmetic)."""
    writer = BatchWriter(store, rule)
    records = [classify(*traffic.message(r["device"], "reading", r)) for r in readings]
    assert all(r.kind == "reading" for r in records)
    writer.write(records)


def csv_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def carrier_results(tmp_path, ok, total, day=D, collector="CZ-1", site="Estate 7"):
    rows = ["day,collector,kind,meter,collected,site"]
    rows += ["%s,%s,carrier,31000%03d,%d,%s" % (day, collector, i, 1 if i < ok else 0, site) for i in range(total)]
    return csv_file(tmp_path, "master-station-%s.csv" % day, "\n".join(rows) + "\n")


def test_meter_day_needs_a_valid_energy_reading_on_that_local_day(db):
    ingest(db, [
        traffic.reading("gw-a", "m1", 1, ts=at(D, 9)),
        traffic.reading("gw-a", "m2", 2, ts=at(D, 9), quality="comm_error"),  # no value: not collected
        traffic.reading("gw-a", "m3", 3, ts=at(D, 9), quality="implausible"),  # not billable: not collected
        # 00:30 in Shanghai on the next day is still 16:30 UTC on D: it counts for D + 1
        traffic.reading("gw-a", "m2", 4, ts=at(D + datetime.timedelta(days=1), 0, 30)),
    ])
    got = list(success.meter_days(db.url, D, D + datetime.timedelta(days=1)))
    assert got == [
        ("gw-a/m1", "gw-a", D, True), ("gw-a/m1", "gw-a", D + datetime.timedelta(days=1), False),
        ("gw-a/m2", "gw-a", D, False), ("gw-a/m2", "gw-a", D + datetime.timedelta(days=1), True),
        ("gw-a/m3", "gw-a", D, False), ("gw-a/m3", "gw-a", D + datetime.timedelta(days=1), False),
    ]


def test_changed_rule_recomputed_from_the_stored_readings(db):
    ingest(db, [traffic.reading("gw-a", "m1", 1, ts=at(D, 23, 30)),
                traffic.reading("gw-a", "m2", 2, ts=at(D, 9), quality="implausible")])
    assert [c for *_, c in success.meter_days(db.url, D, D)] == [True, False]
    lenient = CollectionRule(tz="UTC", qualities=("good", "implausible"))
    assert success.recompute(db.url, lenient, D - datetime.timedelta(days=1), D + datetime.timedelta(days=1)) == 2
    # in UTC, 23:30 Shanghai is 15:30 on D; the implausible value now counts too
    assert [c for *_, c in success.meter_days(db.url, D, D)] == [True, True]


def test_wireless_collector_needs_all_its_meters_carrier_counts_users(db, tmp_path):
    ingest(db, [traffic.reading("gw-a", "m1", 1, ts=at(D, 9)), traffic.reading("gw-a", "m2", 2, ts=at(D, 9)),
                traffic.reading("gw-b", "m1", 1, ts=at(D, 9)),
                traffic.reading("gw-b", "m2", 2, ts=at(D, 9), quality="comm_error")])
    imports.set_collector(db.url, "gw-a", site="Estate 7")
    imports.set_collector(db.url, "gw-b", site="Estate 7")
    report = imports.import_results(db.url, carrier_results(tmp_path, 14, 20))
    assert report.applied and report.imported == 20 and report.bad == []
    days = {c.collector_id: c for c in success.collector_days(db.url, D, D)}
    assert days["gw-a"].collected and days["gw-a"].ok_total == (1, 1)
    assert not days["gw-b"].collected and days["gw-b"].ok_total == (0, 1)
    assert days["CZ-1"].kind == "carrier" and days["CZ-1"].ok_total == (14, 20)
    site = success.site_day(db.url, D)["Estate 7"]
    assert (site["wireless"].ok, site["wireless"].total) == (1, 2)
    assert (site["carrier"].ok, site["carrier"].total) == (14, 20)
    assert site["carrier"].ok * 100 >= 70 * site["carrier"].total  # exactly 70 %: integer comparison holds
    # importing the same file again replaces, it does not add
    imports.import_results(db.url, carrier_results(tmp_path, 16, 20))
    days = {c.collector_id: c for c in success.collector_days(db.url, D, D)}
    assert days["CZ-1"].ok_total == (16, 20)
    # meter_days for scoring: (meter, collector, day, collected), every meter of the registry
    rows = [r for r in success.meter_days(db.url, D, D) if r[1] == "CZ-1"]
    assert len(rows) == 20 and sum(r[3] for r in rows) == 16
    assert all(isinstance(r[2], datetime.date) for r in rows)


def test_work_order_measured_over_the_window_after_closing(db, tmp_path):
    d1, d2 = D + datetime.timedelta(days=1), D + datetime.timedelta(days=2)
    ingest(db, [traffic.reading("gw-a", "m1", 1, ts=at(d1, 9)), traffic.reading("gw-a", "m2", 2, ts=at(d1, 9)),
                traffic.reading("gw-b", "m1", 1, ts=at(d1, 9)),
                traffic.reading("gw-b", "m2", 2, ts=at(D, 20)),  # before the window: does not count
                traffic.reading("gw-a", "m1", 3, ts=at(d2, 9))])
    carrier = ["day,collector,kind,meter,collected"] + ["%s,CZ-1,carrier,U%d,%d" % (d1, i, i < 18) for i in range(20)]
    imports.import_results(db.url, csv_file(tmp_path, "carrier.csv", "\n".join(carrier) + "\n"))
    orders = csv_file(tmp_path, "orders.csv", "work_order,kind,closed_at,collector,meter\n"
                      "WO-1,wireless,%s 16:30,gw-a,\n"
                      "WO-1,wireless,%s 16:30,gw-b,\n" % (D, D)
                      + "".join("WO-2,carrier,%sT17:05+08:00,CZ-1,U%d\n" % (D, i) for i in range(20)))
    report = imports.import_work_orders(db.url, orders, rule=SHANGHAI)
    assert report.bad == [] and report.imported == 22
    wo1 = success.work_order_success(db.url, "WO-1", rule=SHANGHAI, today=d2)
    assert wo1.window == (d1, d1) and wo1.state == "measured"
    assert (wo1.rate.ok, wo1.rate.total) == (1, 2)
    assert wo1.items[1] == ("gw-b", "", False, "not read: gw-b/m2")
    wo2 = success.work_order_success(db.url, "WO-2", rule=SHANGHAI, today=d2)
    assert (wo2.rate.ok, wo2.rate.total) == (18, 20) and wo2.rate.ok * 100 >= 90 * wo2.rate.total
    # still inside the window: pending
    assert success.work_order_success(db.url, "WO-1", rule=SHANGHAI, today=d1).state == "pending"
    # a two-day window needs both days: only gw-a/m1 was read on d2
    two = dataclasses.replace(scoring_rules.load(), window_days=2)
    assert success.work_order_success(db.url, "WO-1", rule=SHANGHAI, rules=two,
                                      today=d2 + datetime.timedelta(days=1)).rate.ok == 0
    with pytest.raises(success.UnknownWorkOrder):
        success.work_order_success(db.url, "WO-404")


def test_bad_csv_rows_are_reported_by_line_and_nothing_is_dropped_silently(db, tmp_path):
    ingest(db, [traffic.reading("gw-a", "m1", 1, ts=at(D, 9))])
    path = csv_file(tmp_path, "results.csv", "\n".join([
        "day,collector,kind,meter,collected",
        "2026-11-20,CZ-1,carrier,U1,1",        # 2 good
        "2026-11-31,CZ-1,carrier,U2,1",        # 3 no such day
        "2026-11-20,CZ-1,carier,U3,1",         # 4 kind typo
        "2026-11-20,CZ-1,carrier,U4,maybe",    # 5 collected
        "2026-11-20,CZ-1,carrier,U1,0",        # 6 same meter and day as line 2
        "2026-11-20,gw-a,carrier,U5,1",        # 7 gw-a is a wireless gateway
        "2026-11-20,CZ-2,carrier,U1,1",        # 8 U1 belongs to CZ-1
        "2026-11-20,CZ-1,carrier,,1",          # 9 no meter
        "2026-11-20,CZ-1,carrier,U6,1,extra",  # 10 too many fields
        "2026-11-20,CZ-1,carrier,U7,yes",      # 11 good
    ]) + "\n")
    report = imports.import_results(db.url, path)
    lines = [(b.line, b.column) for b in report.bad]
    assert lines == [(3, "day"), (4, "kind"), (5, "collected"), (6, "day"), (7, "kind"), (8, "meter"),
                     (9, "meter"), (10, "(row)")]
    assert "2026-11-31" in str(report.bad[0]) and "results.csv: line 3" in str(report.bad[0])
    assert "already given on line 2" in report.bad[3].reason
    assert not report.applied
    assert db.query("SELECT COUNT(*) FROM collected_days WHERE source LIKE 'import:%'")[0][0] == 0
    report = imports.import_results(db.url, path, skip_bad=True)
    assert report.applied and report.imported == 2 and len(report.bad) == 8
    header = csv_file(tmp_path, "wrong.csv", "day,collector,meter,collected\n2026-11-20,CZ-1,U1,1\n")
    bad = imports.import_results(db.url, header).bad
    assert [(b.line, b.column) for b in bad] == [(1, "kind")]
    orders = csv_file(tmp_path, "orders.csv", "work_order,kind,closed_at,collector,meter\n"
                      "WO-1,carrier,2026-11-20 16:30,CZ-1,\n"
                      "WO-2,wireless,yesterday,gw-a,\n"
                      "WO-3,wireless,2026-11-20 16:30,gw-a,gw-a/m1\n"
                      "WO-4,wireless,2026-11-20 16:30,gw-a,\n"
                      "WO-4,carrier,2026-11-20 16:30,CZ-1,U1\n")
    bad = imports.import_work_orders(db.url, orders).bad
    assert [(b.line, b.column) for b in bad] == [(2, "meter"), (3, "closed_at"), (4, "meter"), (6, "work_order")]


def test_status_and_imports_through_the_cli(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "bo.db")
    store = Store(url).connect()
    today = SHANGHAI.today()
    now = at(today, 0, 5)
    writer = BatchWriter(store, SHANGHAI)
    writer.write([classify(*traffic.message("gw-a", "status", traffic.status("gw-a", "online", 4))),
                  classify(*traffic.message("gw-a", "reading", traffic.reading("gw-a", "m1", 1, ts=now))),
                  classify(*traffic.message("gw-b", "status", traffic.status("gw-b", "offline", 2))),
                  classify("metergate/v1/gw-b/reading", b'{"device": "gw-b"}')])
    store.close()
    runner = CliRunner()
    ok = runner.invoke(main, ["backoffice", "collector", "gw-a", "--site", "Estate 7", "--db", url])
    assert ok.exit_code == 0, ok.output
    bad_csv = csv_file(tmp_path, "r.csv", "day,collector,kind,meter,collected\n%s,CZ-1,carrier,U1,2\n" % today)
    res = runner.invoke(main, ["backoffice", "import", "results", str(bad_csv), "--db", url])
    assert res.exit_code == 1
    assert "r.csv: line 2: collected: '2' is not 1/0" in res.output
    assert "nothing imported" in res.output
    good_csv = csv_file(tmp_path, "g.csv", "day,collector,kind,meter,collected,site\n"
                        "%s,CZ-1,carrier,U1,1,Estate 7\n%s,CZ-1,carrier,U2,0,Estate 7\n" % (today, today))
    res = runner.invoke(main, ["backoffice", "import", "results", str(good_csv), "--db", url])
    assert res.exit_code == 0 and "2 rows imported" in res.output
    res = runner.invoke(main, ["backoffice", "status", "--db", url, "--json", "--tz", "Asia/Shanghai"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [(g["device"], g["state"], g["boot_count"]) for g in data["gateways"]] == [
        ("gw-a", "online", 4), ("gw-b", "offline", 2)]
    assert data["sites"]["Estate 7"]["wireless"] == {"ok": 1, "total": 1, "percent": 100.0}
    assert data["sites"]["Estate 7"]["carrier"] == {"ok": 1, "total": 2, "percent": 50.0}
    assert data["quarantine"]["count"] == 1 and "meter" in data["quarantine"]["latest"][0]["reason"]
    assert data["day"] == today.isoformat()
    table = runner.invoke(main, ["backoffice", "status", "--db", url, "--tz", "Asia/Shanghai"])
    assert table.exit_code == 0, table.output
    for text in ("gw-a", "online", "offline", "Estate 7", "1/2  50.0%", "quarantined messages 隔离消息: 1",
                 "collected 成功"):
        assert text in table.output, text
    missing = runner.invoke(main, ["backoffice", "work-order", "WO-9", "--db", url])
    assert missing.exit_code == 1 and "no work order 'WO-9'" in missing.output


def test_cli_refuses_bad_urls_and_zones_naming_them(tmp_path):
    runner = CliRunner()
    db = "sqlite:///%s" % (tmp_path / "bo.db")
    res = runner.invoke(main, ["backoffice", "status", "--db", "mysql://db/x"])
    assert res.exit_code == 2 and "--db" in res.output and "unsupported database URL scheme 'mysql'" in res.output
    res = runner.invoke(main, ["backoffice", "ingest", "--broker", "http://broker", "--db", db])
    assert res.exit_code == 2 and "not an MQTT URL" in res.output and "'http://broker'" in res.output
    res = runner.invoke(main, ["backoffice", "status", "--db", db, "--tz", "Mars/Base"])
    assert res.exit_code == 2 and "unknown time zone 'Mars/Base'" in res.output
    res = runner.invoke(main, ["backoffice", "status", "--db", "sqlite:///%s/none/bo.db" % tmp_path])
    assert res.exit_code == 1 and "does not exist" in res.output
