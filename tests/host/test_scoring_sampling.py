"""Spot-check sampling: sizes from the rule text, reproducible from the seed
whatever the row order, fair proportions over many seeds, stratified by crew,
and inspectors' results recorded back against the draw."""
import collections
import csv
import json
import pathlib
import random
import shutil

import pytest
from click.testing import CliRunner

from metergate.cli import main
from metergate.scoring import inputs, month, rules as rules_mod, sampling

DATA = pathlib.Path(__file__).parent / "scoring_data" / "nov"
RULES = rules_mod.load()


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "nov"
    shutil.copytree(DATA, d)
    return d


def _big_rotation(d, n, crews):
    """Order R5 with n meters spread over the given crews (one person each)."""
    with open(d / "crew.csv", "a", encoding="utf-8") as f:
        for c in crews:
            f.write("Q%s,Installer %s,%s\n" % (c, c, c))
    with open(d / "orders.csv", "a", encoding="utf-8") as f:
        f.write("R5,rotation,P01,2026-11-20,2026-11-20\n")
    with open(d / "order_meters.csv", "a", encoding="utf-8") as f:
        for i in range(n):
            f.write("R5,R5M%03d,Q%s,\n" % (i, crews[i % len(crews)]))


def test_sizes_follow_the_rules():
    ds = inputs.load(DATA, RULES)
    r1 = sampling.draw(ds, RULES, "R1", seed=1)
    assert [(s.key, s.population, s.size) for s in r1.strata] == [("all", 20, 3)]  # ceil(0.15 x 20) = 3
    b1 = sampling.draw(ds, RULES, "B1", seed=1)
    assert [(s.key, s.population, s.size) for s in b1.strata] == [("class 2", 3, 3), ("class 3", 7, 2)]
    assert {m["meter"] for m in b1.meters} >= {"B1M01", "B1M02", "B1M03"}  # every class-2 load


def test_same_seed_same_draw_whatever_the_row_order(data):
    _big_rotation(data, 60, ["A", "B", "C"])
    first = sampling.draw(inputs.load(data, RULES), RULES, "R5", seed=20261123)
    lines = (data / "order_meters.csv").read_text(encoding="utf-8").splitlines()
    body = lines[1:]
    random.Random(7).shuffle(body)
    (data / "order_meters.csv").write_text("\n".join([lines[0]] + body) + "\n", encoding="utf-8")
    again = sampling.draw(inputs.load(data, RULES), RULES, "R5", seed=20261123)
    assert again.meters == first.meters and again.population_digest == first.population_digest
    assert len(first.meters) == 9  # ceil(0.15 x 60)
    other = sampling.draw(inputs.load(data, RULES), RULES, "R5", seed=20261124)
    assert {m["meter"] for m in other.meters} != {m["meter"] for m in first.meters}


def test_every_meter_equally_likely(data):
    # Over 3000 seeds each of 20 meters is drawn 3/20 of the time: expect 450 +- 20 (one sd);
    # allow 5 sd either side.
    _big_rotation(data, 20, ["A"])
    ds = inputs.load(data, RULES)
    counts = collections.Counter()
    for seed in range(3000):
        counts.update(m["meter"] for m in sampling.draw(ds, RULES, "R5", seed=seed).meters)
    assert len(counts) == 20 and sum(counts.values()) == 9000
    assert all(350 < c < 550 for c in counts.values()), counts


def test_stratified_by_crew(data):
    _big_rotation(data, 61, ["A", "B", "C"])  # 21, 20, 20 meters
    d = sampling.draw(inputs.load(data, RULES), RULES, "R5", seed=5, stratify="crew")
    assert [(s.key, s.population, s.size) for s in d.strata] == [("crew A", 21, 4), ("crew B", 20, 3),
                                                                 ("crew C", 20, 3)]
    by_crew = collections.Counter(m["crew"] for m in d.meters)
    assert by_crew == {"A": 4, "B": 3, "C": 3}


def _fill(sheet, results, inspector="T02 Zhao", day="2026-11-14", skip=(), signed=None):
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    head = [h.split(" / ")[0] for h in rows[0]]
    for row in rows[1:]:
        meter = row[head.index("meter")]
        if meter in skip:
            continue
        for item, value in results.get(meter, {"screws_tight": "pass", "rs485_polarity": "合格"}).items():
            row[head.index(item)] = value
        row[head.index("inspector")], row[head.index("day")] = inspector, day
        for k, v in (signed or {}).items():
            row[head.index(k)] = v
    with open(sheet, "w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    return [r[head.index("meter")] for r in rows[1:]]


def test_draw_fill_record_score(data):
    run = CliRunner().invoke
    res = run(main, ["sample", "draw", "--data", str(data), "--order", "B1", "--seed", "77"])
    assert res.exit_code == 0, res.output
    sheet = data / "samples" / "B1-77.csv"
    assert "sample B1-77: 5 meters, seed 77, rules 2026.11-1" in res.output
    head = sheet.read_text(encoding="utf-8-sig").splitlines()[0]
    assert head.startswith("sample / 抽样号,order / 工单,meter / 表计局号") and "correspondence / 表-表位-空开-户对应" in head
    record = json.loads((data / "samples" / "B1-77.json").read_text(encoding="utf-8"))
    assert record["seed"] == 77 and record["rules_version"] == "2026.11-1"
    # the same seed again draws the same sheet
    res = run(main, ["sample", "draw", "--data", str(data), "--order", "B1", "--seed", "77", "--out",
                     str(data / "again.csv")])
    assert (data / "again.csv").read_text(encoding="utf-8-sig") == sheet.read_text(encoding="utf-8-sig")

    assert "signed_crew / 施工方签字,signed_property / 物业签字" in head
    meters = _fill(sheet, {"B1M02": {"correspondence": "不合格", "screws_tight": "pass"}}, skip=("B1M03",))
    # the correspondence check is signed by crew and property manager too (三方签字)
    res = run(main, ["sample", "record", str(sheet), "--data", str(data)])
    assert res.exit_code == 1 and "B1-77.csv:3: signed_crew: the correspondence check needs the crew's" in res.output
    assert "B1-77.csv:3: signed_property:" in res.output
    _fill(sheet, {"B1M02": {"correspondence": "不合格", "screws_tight": "pass"}}, skip=("B1M03",),
          signed={"signed_crew": "Q Wang", "signed_property": "物业 Liu"})
    res = run(main, ["sample", "record", str(sheet), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert "8 results for 4 meters" in res.output and "未检查: B1M03" in res.output
    rep = month.score_month(inputs.load(data, RULES), RULES, "2026-11")
    b1 = [o for o in rep.orders if o.order.id == "B1"][0]
    # 3 of 4 checked meters pass = 75 % < 99 %; still 4 of the 5 sampled checked
    assert (b1.spot.ok, b1.spot.total, b1.spot.passed) == (3, 4, False)
    assert {sc.sample for _, scs in b1.checked.values() for sc in scs} == {"B1-77"}
    assert "spot check incomplete: 4 of 5" in b1.flags[0]
    assert set(meters) == {m["meter"] for m in record["meters"]}
    # recording the same sheet twice is refused, and nothing is appended
    before = (data / "spot_checks.csv").read_bytes()
    res = run(main, ["sample", "record", str(sheet), "--data", str(data)])
    assert res.exit_code == 1 and "already recorded" in res.output
    assert (data / "spot_checks.csv").read_bytes() == before


def test_record_refuses_bad_sheets(data):
    (data / "spot_checks.csv").write_text("order,meter,item,result,inspector,day,sample\n", encoding="utf-8")
    ds = inputs.load(data, RULES)
    d = sampling.draw(ds, RULES, "R1", seed=3)
    sheet = data / "s.csv"
    sampling.write(d, RULES, sheet)
    drawn = [m["meter"] for m in d.meters]
    _fill(sheet, {drawn[0]: {"screws_tight": "maybe"}, drawn[1]: {}})
    with open(sheet, "a", encoding="utf-8", newline="") as f:
        f.write("R1-3,R1,R1M99,,,,,pass,,,,,,,T02,2026-11-14\n")
    text = sheet.read_text(encoding="utf-8-sig").replace("T02 Zhao,2026-11-14", "T02 Zhao,14/11/2026", 1)
    sheet.write_text(text, encoding="utf-8-sig")
    before = (data / "spot_checks.csv").read_bytes()
    with pytest.raises(inputs.InputErrors) as e:
        sampling.record(ds, RULES, sheet, data)
    got = {(p.line, p.field) for p in e.value.problems}
    assert got == {(2, "screws_tight"), (2, "day"), (3, ""), (5, "meter")}, e.value
    assert (data / "spot_checks.csv").read_bytes() == before


def test_record_refuses_a_draw_that_no_longer_matches(data):
    d = sampling.draw(inputs.load(data, RULES), RULES, "R1", seed=3)
    sheet = data / "s.csv"
    sampling.write(d, RULES, sheet)
    _fill(sheet, {})
    with open(data / "order_meters.csv", "a", encoding="utf-8") as f:
        f.write("R1,R1M21,,\n")  # the order changed after the draw (21 meters: 4 to sample)
    with pytest.raises(inputs.InputErrors, match="the draw no longer matches"):
        sampling.record(inputs.load(data, RULES), RULES, sheet, data)


def test_a_draw_without_seed_records_the_one_it_used(data):
    res = CliRunner().invoke(main, ["sample", "draw", "--data", str(data), "--order", "R1", "--stratify", "crew",
                                    "--out", str(data / "s.csv")])
    assert res.exit_code == 0, res.output
    record = json.loads((data / "s.json").read_text(encoding="utf-8"))
    assert "seed %d" % record["seed"] in res.output and record["stratify"] == "crew"
    again = sampling.draw(inputs.load(data, RULES), RULES, "R1", seed=record["seed"], stratify="crew")
    assert again.meters == record["meters"]
    res = CliRunner().invoke(main, ["sample", "draw", "--data", str(data), "--order", "R404"])
    assert res.exit_code == 1 and "R404" in res.output
