"""Scoring inputs: every bad row is reported with file, line and field, none is
dropped; collection records from the back office's database give the same
scores as the same records imported as CSV."""
import shutil
import pathlib

import pytest
from click.testing import CliRunner

from metergate.cli import main
from metergate.scoring import inputs, month, rules as rules_mod

DATA = pathlib.Path(__file__).parent / "scoring_data" / "nov"
RULES = rules_mod.load()


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "nov"
    shutil.copytree(DATA, d)
    return d


def _append(path, *lines):
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _problems(data):
    with pytest.raises(inputs.InputErrors) as e:
        inputs.load(data, RULES)
    return {(p.file, p.line, p.field): p.reason for p in e.value.problems}


def test_every_bad_row_is_reported_by_file_line_and_field(data):
    _append(data / "crew.csv", "P01,Dup,C", "P09,,C")                            # lines 5, 6
    _append(data / "maintenance.csv",
            "J9,P01,2026-11-31,wireless,W9,,",                                    # line 12: no such day
            "J9,P77,2026-11-05,wireless,W9,,",                                    # 13: unknown person
            "J9,P01,2026-11-05,solar,W9,,",                                       # 14: bad kind
            "J1,P01,2026-11-03,wireless,W1,,",                                    # 15: W1 twice that day
            "J9,P01,2026-11-05,wireless,W9,2026-11-04,",                          # 16: closed before the day
            "J9,P01,2026-11-05,wireless")                                         # 17: too few fields
    _append(data / "orders.csv", "R9,rotation,P01,,", "R1,batch,P01,,")           # 5: no deadline, 6: dup
    _append(data / "order_meters.csv", "B1,B1M11,,4", "R7,X,,", "B1,B1M12,,")     # 32 class, 33 order, 34 class
    _append(data / "spot_checks.csv",
            "R1,R1M04,torque,pass,T01,2026-11-12,,,",                               # 8: unknown item
            "R1,R1M05,screws_tight,maybe,T01,2026-11-12,,,",                        # 9: result
            "R1,B1M01,screws_tight,pass,T01,2026-11-12,,,",                         # 10: meter of another order
            "R1,R1M03,screws_tight,pass,T01,2026-11-12,,,")                         # 11: recorded twice
    _append(data / "complaints.csv",
            "K4,P01,2026-11-18,substantiated,4,,T01,2026-11-18T10:00,x",          # 5: deduction without reason
            "K5,P01,2026-11-18,unsubstantiated,2,why,T01,2026-11-18T10:00,x",     # 6: unsubstantiated
            "K6,P01,2026-11-18,closed,,,,,",                                      # 7: no such state
            "K7,P01,2026-11-18,substantiated,4,why,,,x")                          # 8: who and when missing
    _append(data / "adjustments.csv", "P02,2026-11-13,R1,-2,,T01,2026-11-13T16:20",  # 3: no why
            "P02,2026-11-13,R1,-200,because,T01,yesterday")                       # 4: percent, when
    got = _problems(data)
    want = {
        ("crew.csv", 5, "person"), ("crew.csv", 6, "name"),
        ("maintenance.csv", 12, "day"), ("maintenance.csv", 13, "person"), ("maintenance.csv", 14, "kind"),
        ("maintenance.csv", 15, "collector"), ("maintenance.csv", 16, "closed"), ("maintenance.csv", 17, ""),
        ("orders.csv", 5, "deadline"), ("orders.csv", 6, "order"),
        ("order_meters.csv", 32, "load_class"), ("order_meters.csv", 33, "order"),
        ("order_meters.csv", 34, "load_class"),
        ("spot_checks.csv", 8, "item"), ("spot_checks.csv", 9, "result"), ("spot_checks.csv", 10, "meter"),
        ("spot_checks.csv", 11, "item"),
        ("complaints.csv", 5, "reason"), ("complaints.csv", 6, "deduction"), ("complaints.csv", 7, "state"),
        ("complaints.csv", 8, "who"), ("complaints.csv", 8, "when"),
        ("adjustments.csv", 3, "why"), ("adjustments.csv", 4, "percent"), ("adjustments.csv", 4, "when"),
    }
    assert set(got) == want, sorted(set(got) ^ want)
    assert "P77" in got[("maintenance.csv", 13, "person")] and "crew.csv" in got[("maintenance.csv", 13, "person")]
    assert "already maintained" in got[("maintenance.csv", 15, "collector")]
    assert "torque" in got[("spot_checks.csv", 8, "item")] and "screws_tight" in got[("spot_checks.csv", 8, "item")]
    assert "4" in got[("order_meters.csv", 32, "load_class")]
    assert "empty" in got[("order_meters.csv", 34, "load_class")]


def test_header_problems(data):
    (data / "orders.csv").write_text("order,kind,persn,deadline\nR1,rotation,P01,2026-11-01\n", encoding="utf-8")
    (data / "complaints.csv").write_text("", encoding="utf-8")
    got = _problems(data)
    assert got[("orders.csv", 1, "person")] == "missing column(s)"
    assert "unknown column" in got[("orders.csv", 1, "persn")]
    assert "header row is required" in got[("complaints.csv", 1, "")]


def test_bad_collection_rows_are_reported_and_refuse_the_month(data):
    _append(data / "collection.csv", "M11,W1,2026-11-04,maybe", "M12,W1,04/11/2026,yes", ",W1,2026-11-04,yes")
    ds = inputs.load(data, RULES)
    with pytest.raises(inputs.InputErrors) as e:
        month.score_month(ds, RULES, "2026-11")
    got = [(p.file, p.line, p.field) for p in e.value.problems]
    assert got == [("collection.csv", 103, "collected"), ("collection.csv", 104, "day"),
                   ("collection.csv", 105, "meter")]


def test_cli_prints_every_problem(data):
    _append(data / "maintenance.csv", "J9,P77,2026-11-05,wireless,W9,,", "J9,P01,2026-11-05,solar,W9,,")
    res = CliRunner().invoke(main, ["score", "--month", "2026-11", "--data", str(data)])
    assert res.exit_code == 1
    assert "2 input problem(s)" in res.output
    assert "maintenance.csv:12: person:" in res.output and "maintenance.csv:13: kind:" in res.output


def test_db_without_back_office_is_a_clear_error(data, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_backoffice(name, *args, **kwargs):
        if name.startswith("metergate.backoffice"):
            raise ImportError("No module named %r" % name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_backoffice)
    res = CliRunner().invoke(main, ["score", "--month", "2026-11", "--data", str(data), "--db", "sqlite:///x.db"])
    assert res.exit_code == 1
    assert "back office is not available" in res.output and "collection.csv" in res.output


def test_db_gives_the_same_scores_as_csv(data, tmp_path):
    # The back office (issue 6) stores collection results; import the fixture's
    # records through its own CSV import and score from its database.
    imports = pytest.importorskip("metergate.backoffice.imports")
    rows = (data / "collection.csv").read_text(encoding="utf-8").splitlines()[1:]
    conv = tmp_path / "results.csv"
    kinds = {"W": "wireless", "C": "carrier"}
    conv.write_text("day,collector,kind,meter,collected\n" + "".join(
        "%s,%s,%s,%s,%s\n" % (day, coll, kinds[coll[0]], meter, 1 if c == "yes" else 0)
        for meter, coll, day, c in (r.split(",") for r in rows)
        if not (meter == "M11" and day != "2026-11-04")), encoding="utf-8")  # one verdict per meter-day
    url = "sqlite:///%s" % (tmp_path / "bo.db")
    report = imports.import_results(url, conv)
    assert report.applied, report.bad
    ds = inputs.load(data, RULES)
    from_csv = month.score_month(ds, RULES, "2026-11")
    from_db = month.score_month(ds, RULES, "2026-11",
                                lambda s, e, p: inputs.read_collection_db(url, s, e, p), "db")
    assert [(d.person, d.day, d.outcome.ok, d.outcome.total, d.outcome.adjust) for d in from_db.days] == \
        [(d.person, d.day, d.outcome.ok, d.outcome.total, d.outcome.adjust) for d in from_csv.days]
    assert [(o.order.id, o.collection.ok, o.collection.total) for o in from_db.orders] == \
        [(o.order.id, o.collection.ok, o.collection.total) for o in from_csv.orders]
    res = CliRunner().invoke(main, ["score", "--month", "2026-11", "--data", str(data), "--db", url,
                                    "--explain", "P03:2026-11-04"])
    assert res.exit_code == 0, res.output
    assert "collection from db" in res.output and "meter M81: NOT read" in res.output


def test_db_that_cannot_be_opened_is_a_clear_error(data, tmp_path):
    pytest.importorskip("metergate.backoffice.success")
    url = "sqlite:///%s" % (tmp_path / "no-such-dir" / "bo.db")
    res = CliRunner().invoke(main, ["score", "--month", "2026-11", "--data", str(data), "--db", url])
    assert res.exit_code == 1
    assert "--db" in res.output and "no-such-dir" in res.output and "Traceback" not in res.output
