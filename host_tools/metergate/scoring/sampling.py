"""Spot-check sampling: which meters of a rotation or batch order the inspectors
check, drawn from a recorded seed so anyone can repeat and audit the draw, and
the inspectors' results recorded back against it.

The draw ranks every meter by sha256("<seed>:<meter>") and takes the lowest
ranks of each stratum. The ranking does not depend on row order, Python's
random module or its version: the same seed and the same order always give the
same meters (docs/scoring.md, "Sampling")."""
import csv
import hashlib
import json
import pathlib
import secrets
from dataclasses import asdict, dataclass

from metergate.scoring import inputs, scores

# (key, zh) of the inspector CSV's fixed columns; item columns follow the rules.
COLUMNS = [("sample", "抽样号"), ("order", "工单"), ("meter", "表计局号"), ("person", "施工人员"),
           ("crew", "班组"), ("load_class", "负荷等级"), ("stratum", "分层")]
TAIL = [("inspector", "检查人"), ("day", "检查日期")]
# A batch installation's correspondence check is signed by three parties: the
# inspector above, the crew and the property manager (DOMAIN.md rule 4.3).
SIGNED = [("signed_crew", "施工方签字"), ("signed_property", "物业签字")]
SIGNER = {"signed_crew": "the crew's signature", "signed_property": "the property manager's signature"}
SIGNED_ITEM = "correspondence"


def tail(kind):
    return TAIL + (SIGNED if kind == "batch" else [])


class SamplingError(ValueError):
    pass


@dataclass
class Stratum:
    key: str
    population: int
    rate: str  # exact fraction as text, e.g. "3/20"
    size: int


@dataclass
class Draw:
    sample: str
    order: str
    kind: str
    seed: int
    stratify: str
    rules_version: str
    rules_digest: str
    population_digest: str  # sha256 of the sorted meter list the draw was made from
    strata: list
    meters: list  # [{"meter", "person", "crew", "load_class", "stratum"}]

    def to_json(self):
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


def rank(seed, meter):
    return hashlib.sha256(("%d:%s" % (seed, meter)).encode()).digest()


def _population_digest(order):
    return hashlib.sha256("\n".join(sorted(order.meters)).encode()).hexdigest()


def draw(ds, rules, order_id, seed=None, stratify=None):
    """Draw the spot-check sample of one order. stratify=None or "crew"."""
    if order_id not in ds.orders:
        raise SamplingError("order %r is not in orders.csv" % order_id)
    if stratify not in (None, "crew"):
        raise SamplingError("stratify by %r: only 'crew' is supported" % stratify)
    o = ds.orders[order_id]
    if not o.meters:
        raise SamplingError("order %s has no meters in order_meters.csv" % order_id)
    if seed is None:
        seed = secrets.randbelow(10 ** 9)
    strata = {}
    for m in o.meters.values():
        crew = ds.people[m.person].crew
        parts = []
        if o.kind == "batch":
            parts.append("class " + m.load_class)
        if stratify == "crew":
            parts.append("crew " + crew)
        strata.setdefault(" / ".join(parts) or "all", []).append((m, crew))
    out_strata, chosen = [], []
    for key in sorted(strata):
        members = strata[key]
        share = rules.rotation_rate if o.kind == "rotation" else rules.class_rates[members[0][0].load_class]
        k = scores.sample_size(share, len(members), rules.min_sample)
        out_strata.append(Stratum(key, len(members), str(share), k))
        for m, crew in sorted(members, key=lambda mc: rank(seed, mc[0].meter))[:k]:
            chosen.append({"meter": m.meter, "person": m.person, "crew": crew, "load_class": m.load_class,
                           "stratum": key})
    chosen.sort(key=lambda c: c["meter"])
    return Draw("%s-%d" % (order_id, seed), order_id, o.kind, seed, stratify or "", rules.version, rules.digest,
                _population_digest(o), out_strata, chosen)


def header(rules, kind):
    cols = COLUMNS + [(k, v["zh"]) for k, v in rules.items.items()] + tail(kind)
    return ["%s / %s" % (k, zh) for k, zh in cols]


def write(d, rules, csv_path):
    """Write the inspectors' CSV and, beside it, the draw record (.json) that
    `record` checks the filled-in sheet against."""
    csv_path = pathlib.Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8-sig") as f:  # BOM: opens right in Excel/WPS
        w = csv.writer(f)
        w.writerow(header(rules, d.kind))
        for m in d.meters:
            w.writerow([d.sample, d.order, m["meter"], m["person"], m["crew"], m["load_class"], m["stratum"]]
                       + [""] * (len(rules.items) + len(tail(d.kind))))
    json_path = csv_path.with_suffix(".json")
    json_path.write_text(d.to_json() + "\n", encoding="utf-8")
    return json_path


@dataclass
class Recorded:
    sample: str
    rows: int        # spot-check rows (meter x item) appended
    meters: int      # meters with results
    unfilled: list   # sampled meters the sheet leaves blank (not checked yet)


def record(ds, rules, filled_csv, data_dir):
    """Validate a filled-in inspector sheet against its draw and append its
    results to data_dir/spot_checks.csv. Raises InputErrors listing every bad row;
    nothing is written unless the whole sheet is good."""
    filled_csv = pathlib.Path(filled_csv)
    name = filled_csv.name
    problems = []
    json_path = filled_csv.with_suffix(".json")
    if not json_path.exists():
        raise inputs.InputErrors([inputs.Problem(name, 0, "", "its draw record %s is missing" % json_path.name)])
    d = Draw(**json.loads(json_path.read_text(encoding="utf-8")))
    o = ds.orders.get(d.order)
    if o is None:
        raise inputs.InputErrors([inputs.Problem(json_path.name, 0, "order", "%r is not in orders.csv" % d.order)])
    again = draw(ds, rules, d.order, d.seed, d.stratify or None)
    if again.meters != d.meters:
        raise inputs.InputErrors([inputs.Problem(json_path.name, 0, "meters", (
            "the draw no longer matches: redrawing seed %d from order %s's meters today gives another sample "
            "(order meters or rules changed since; population sha256 %s then, %s now)")
            % (d.seed, d.order, d.population_digest[:12], again.population_digest[:12]))])
    sampled = {m["meter"] for m in d.meters}
    items = list(rules.items)
    with open(filled_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        head = [h.split("/")[0].strip() for h in next(reader, [])]
        want = [k for k, _ in COLUMNS] + items + [k for k, _ in tail(d.kind)]
        if head != want:
            raise inputs.InputErrors([inputs.Problem(name, 1, "", "header differs from the sheet drawn (%s)"
                                                     % ", ".join(sorted(set(want) ^ set(head))))])
        new, seen, done = [], set(), set()
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(want):
                problems.append(inputs.Problem(name, line, "", "%d fields, the header has %d" % (len(row),
                                                                                                  len(want))))
                continue
            r = dict(zip(want, (c.strip() for c in row)))
            bad = len(problems)
            if r["sample"] != d.sample:
                problems.append(inputs.Problem(name, line, "sample", "%r is not this sheet's sample %s"
                                               % (r["sample"], d.sample)))
            if r["meter"] not in sampled:
                problems.append(inputs.Problem(name, line, "meter", "%r was not drawn in sample %s"
                                               % (r["meter"], d.sample)))
            elif r["meter"] in seen:
                problems.append(inputs.Problem(name, line, "meter", "%s appears twice" % r["meter"]))
            seen.add(r["meter"])
            results = {}
            for it in items:
                if r[it]:
                    try:
                        results[it] = inputs.parse_pass(r[it])
                    except ValueError as exc:
                        problems.append(inputs.Problem(name, line, it, str(exc)))
            if not any(r[it] for it in items) and not r["inspector"] and not r["day"]:
                continue  # not checked yet: reported as unfilled below
            if not any(r[it] for it in items):
                problems.append(inputs.Problem(name, line, "", "no item has a result (pass/fail)"))
            if not r["inspector"]:
                problems.append(inputs.Problem(name, line, "inspector", "empty"))
            if d.kind == "batch" and r.get(SIGNED_ITEM):
                for k, zh in SIGNED:
                    if not r[k]:
                        problems.append(inputs.Problem(name, line, k, "the correspondence check needs %s (%s)"
                                                       % (SIGNER[k], zh)))
            day = None
            try:
                day = inputs.parse_day(r["day"])
            except ValueError as exc:
                problems.append(inputs.Problem(name, line, "day", str(exc)))
            if len(problems) > bad:
                continue
            done.add(r["meter"])
            for it, ok in results.items():
                if any(sc.order == d.order and sc.meter == r["meter"] and sc.item == it for sc in ds.spot_checks):
                    problems.append(inputs.Problem(name, line, it, "already recorded in spot_checks.csv"))
                new.append([d.order, r["meter"], it, "pass" if ok else "fail", r["inspector"], day.isoformat(),
                            d.sample, r.get("signed_crew", ""), r.get("signed_property", "")])
    if problems:
        raise inputs.InputErrors(problems)
    target = pathlib.Path(data_dir) / "spot_checks.csv"
    cols = ["order", "meter", "item", "result", "inspector", "day", "sample", "signed_crew", "signed_property"]
    fresh = not target.exists() or target.stat().st_size == 0
    if not fresh:
        # Append in the existing file's own column order.
        raw = target.read_bytes()
        with open(target, newline="", encoding="utf-8-sig") as f:
            existing = [h.strip() for h in next(csv.reader(f))]
        lacking = [c for c in ("sample",) + (("signed_crew", "signed_property") if d.kind == "batch" else ())
                   if c not in existing]
        if lacking:
            raise inputs.InputErrors([inputs.Problem("spot_checks.csv", 1, ",".join(lacking),
                                                     "add these columns before recording this sample into it")])
        new = [[dict(zip(cols, row)).get(c, "") for c in existing] for row in new]
    with open(target, "a", newline="", encoding="utf-8") as f:
        if not fresh and not raw.endswith(b"\n"):
            f.write("\n")
        w = csv.writer(f)
        if fresh:
            w.writerow(cols)
        w.writerows(new)
    return Recorded(d.sample, len(new), len(done), sorted(sampled - done))
