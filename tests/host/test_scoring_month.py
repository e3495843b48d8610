"""A month scored end to end from the fixture data set (tests/host/scoring_data/nov,
worked by hand in its comments below), through the library and through
`metergate score` (table, CSV, JSON, --explain)."""
import csv
import json
import pathlib
import shutil

import pytest
from click.testing import CliRunner

from metergate.cli import main
from metergate.scoring import inputs, month, rules as rules_mod

DATA = pathlib.Path(__file__).parent / "scoring_data" / "nov"
RULES = rules_mod.load()


@pytest.fixture(scope="module")
def rep():
    return month.score_month(inputs.load(DATA, RULES), RULES, "2026-11")


def test_days(rep):
    got = {(d.person, d.day.isoformat(), d.kind): (d.outcome.ok, d.outcome.total, d.outcome.qualified,
                                                   d.outcome.adjust) for d in rep.days}
    assert got == {
        # W1-W4 have both meters read on 11-04, W5 one of two: 4/5 collectors = 80 % -> +5
        ("P01", "2026-11-03", "wireless"): (4, 5, True, 5),
        # C2 closed 11-05, window 11-06: 18 of 20 users = 90 % -> +10
        ("P01", "2026-11-04", "carrier"): (18, 20, True, 10),
        # C1: 14 of 20 users on 11-04 = 70 % -> qualified, 0
        ("P02", "2026-11-03", "carrier"): (14, 20, True, 0),
        # W6, W7 read, W8 not: 2/3 = 66.7 % -> -10 (and below the quota of 5)
        ("P03", "2026-11-04", "wireless"): (2, 3, False, -10),
    }
    assert rep.warnings == []


def test_orders(rep):
    o = {s.order.id: s for s in rep.orders}
    r1 = o["R1"]  # deadline 11-08, completed 11-10: 2 days, -20 %; 20 meters -> 3 sampled
    assert (r1.days_late, r1.late_deduction, r1.sample_required) == (2, 20, 3)
    assert (r1.spot.ok, r1.spot.total, r1.spot.passed) == (2, 3, False)            # R1M11 RS-485 reversed
    assert (r1.collection.ok, r1.collection.total, r1.collection.passed) == (19, 20, True)  # exactly 95 %
    assert [a.percent for a in r1.adjustments] == [-2] and r1.flags == []  # the failure carries its adjustment
    b1 = o["B1"]  # 3 class-2 (all) + 7 class-3 (20 % -> 2) = 5 to check, none checked yet
    assert b1.sample_required == 5 and b1.spot.passed is None
    assert (b1.collection.ok, b1.collection.total) == (10, 10)
    assert "spot check incomplete: 0 of 5" in b1.flags[0]
    r2 = o["R2"]  # open, deadline 11-20: 10 days late at the month's end, provisional
    assert r2.status == "open" and r2.days_late == 10 and "provisional" in r2.flags[0]


def test_people_and_crews(rep):
    p = {k: (v.maintenance, v.late_deduction, v.complaints, v.manual, v.total) for k, v in rep.people.items()}
    assert p == {
        "P01": (15, 0, 3, 0, 12),     # R2 open: its lateness is not in the total; K1 substantiated -3
        "P02": (0, 20, 0, -2, -22),   # K2 pending: nothing applied yet
        "P03": (-10, 0, 0, 0, -10),   # K3 unsubstantiated
    }
    assert {k: v.total for k, v in rep.crews.items()} == {"A": -10, "B": -10}
    notes = {c.id: (applied, note) for c, applied, note in rep.complaints}
    assert notes["K1"] == (3, "applied") and notes["K2"][0] == 0 and "pending" in notes["K2"][1]


def test_window_and_read_rules(tmp_path):
    # Two window days, "any": a meter read on either day counts.
    d = tmp_path / "nov"
    shutil.copytree(DATA, d)
    with open(d / "collection.csv", "a", encoding="utf-8") as f:
        f.write("M81,W8,2026-11-06,yes\n")
    text = (pathlib.Path(rules_mod.__file__).parent / rules_mod.DEFAULT_RULES).read_text(encoding="utf-8")
    p = tmp_path / "r.toml"
    p.write_text(text.replace("window_days = 1", "window_days = 2").replace('meter_read = "all"',
                                                                            'meter_read = "any"'), encoding="utf-8")
    r = rules_mod.load(p)
    rep = month.score_month(inputs.load(d, r), r, "2026-11")
    p03 = [x for x in rep.days if x.person == "P03"][0]
    assert (p03.outcome.ok, p03.outcome.total) == (3, 3)
    # with "all", the same meter must be read on both days: 11-06 alone is not enough for M61 (no record)
    p.write_text(text.replace("window_days = 1", "window_days = 2"), encoding="utf-8")
    r = rules_mod.load(p)
    rep = month.score_month(inputs.load(d, r), r, "2026-11")
    p03 = [x for x in rep.days if x.person == "P03"][0]
    assert (p03.outcome.ok, p03.outcome.total) == (0, 3)


def test_collector_without_records_is_not_read_and_warned(tmp_path):
    d = tmp_path / "nov"
    shutil.copytree(DATA, d)
    with open(d / "maintenance.csv", "a", encoding="utf-8") as f:
        f.write("J5,P02,2026-11-07,wireless,W99,,\n")
    rep = month.score_month(inputs.load(d, RULES), RULES, "2026-11")
    day = [x for x in rep.days if x.person == "P02" and x.kind == "wireless"][0]
    assert (day.outcome.ok, day.outcome.total) == (0, 1)
    assert any("W99" in w and "maintenance.csv:12" in w for w in rep.warnings)


def test_cli_table_csv_json(tmp_path):
    res = CliRunner().invoke(main, ["score", "--month", "2026-11", "--data", str(DATA), "--csv",
                                    str(tmp_path / "csv"), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "rules 2026.11-1" in res.output and "Zhang Wei" in res.output and "14/20" in res.output
    with open(tmp_path / "csv" / "2026-11-people.csv", encoding="utf-8-sig") as f:
        people = {r["person"]: r for r in csv.DictReader(f)}
    assert people["P02"]["total"] == "-22" and people["P01"]["maintenance"] == "15"
    with open(tmp_path / "csv" / "2026-11-provenance.csv", encoding="utf-8-sig") as f:
        prov = dict(csv.reader(f))
    assert prov["rules version"] == "2026.11-1" and prov["rules sha256"] == RULES.digest
    assert len(prov["input collection.csv sha256"]) == 64
    j = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert j["rules"]["version"] == "2026.11-1" and j["inputs"]["collection"]["records_read"] == 101
    p03 = [d for d in j["days"] if d["person"] == "P03"][0]
    assert (p03["rate"], p03["adjust"], p03["quota"]) == (66.6667, -10, "below")
    assert "maintenance.csv:8" in p03["records"]
    r1 = [o for o in j["orders"] if o["order"] == "R1"][0]
    assert (r1["spot_rate"], r1["spot_pass"], r1["manual_adjustment"]) == (66.6667, False, -2)


def test_cli_explain():
    run = CliRunner().invoke
    res = run(main, ["score", "--month", "2026-11", "--data", str(DATA), "--explain", "P01:2026-11-03"])
    assert res.exit_code == 0, res.output
    assert "4*100 >= 80*5" in res.output
    assert "meter M52: NOT read  2026-11-04 no @collection.csv:11" in res.output
    assert "collector W5 (maintenance.csv:6" in res.output
    res = run(main, ["score", "--month", "2026-11", "--data", str(DATA), "--explain", "R1"])
    assert "late: 2 day(s) x 10% = 20%" in res.output
    assert "rs485_polarity=fail by T01 2026-11-12 @spot_checks.csv:5" in res.output
    assert "manual adjustment -2% by T01 Chen at 2026-11-13 16:20:00" in res.output
    res = run(main, ["score", "--month", "2026-11", "--data", str(DATA), "--explain", "P09:2026-11-03"])
    assert res.exit_code == 2 and "--explain" in res.output
    res = run(main, ["score", "--month", "2026-13", "--data", str(DATA)])
    assert res.exit_code == 2 and "YYYY-MM" in res.output


def test_batch_correspondence_needs_three_signatures(tmp_path):
    d = tmp_path / "nov"
    shutil.copytree(DATA, d)
    with open(d / "spot_checks.csv", "a", encoding="utf-8") as f:
        f.write("B1,B1M01,correspondence,pass,T01,2026-11-14,,Q Wang,物业 Liu\n"
                "B1,B1M02,correspondence,pass,T01,2026-11-14,,Q Wang,\n")
    rep = month.score_month(inputs.load(d, RULES), RULES, "2026-11")
    b1 = [o for o in rep.orders if o.order.id == "B1"][0]
    assert (b1.spot.ok, b1.spot.total) == (2, 2)
    assert "not signed by crew and property manager (三方签字): B1M02" in " ".join(b1.flags)
