"""A month scored: per person per day maintenance, per order rotation and batch
quality, complaints, manual adjustments, and the summary per person and crew.
Every figure keeps the records it came from (file:line) for --explain."""
import calendar
import datetime as dt
from dataclasses import dataclass, field
from fractions import Fraction

from metergate.scoring import inputs, scores
from metergate.scoring.collection import Collection


@dataclass
class Unit:
    """One maintained collector: its job row, its meters and whether each was read."""
    collector: str
    job_src: str
    meters: list  # (meter, read, evidence)
    meters_from: str  # "job" (listed) or "records" (found in the window)
    ok: int
    total: int


@dataclass
class DayScore:
    person: str
    day: dt.date
    kind: str
    closed: list
    units: list
    outcome: scores.DayOutcome


@dataclass
class OrderScore:
    order: inputs.Order
    status: str  # completed | open
    days_late: int
    late_deduction: Fraction
    sample_required: int
    spot: scores.Quality
    collection: scores.Quality
    checked: dict  # meter -> (passed, [SpotCheck])
    read: dict  # meter -> (read, evidence)
    adjustments: list
    flags: list = field(default_factory=list)


@dataclass
class PersonMonth:
    person: inputs.Person
    days: int = 0
    qualified_days: int = 0
    below_quota_days: int = 0
    maintenance: Fraction = Fraction(0)
    orders: int = 0
    late_deduction: Fraction = Fraction(0)
    quality_failures: int = 0
    complaints: Fraction = Fraction(0)
    manual: Fraction = Fraction(0)

    @property
    def total(self):
        # Percent points, each on its own pay base (docs/scoring.md "Monthly summary").
        return self.maintenance - self.late_deduction - self.complaints + self.manual


@dataclass
class MonthReport:
    month: str
    rules: object
    dataset: inputs.Dataset
    collection_source: str
    collection_rows: int
    days: list
    orders: list
    complaints: list  # (Complaint, applied deduction, note)
    adjustments: list
    people: dict  # person id -> PersonMonth
    crews: dict  # crew -> PersonMonth-like totals
    warnings: list


def parse_month(text):
    try:
        y, m = text.split("-")
        first = dt.date(int(y), int(m), 1)
    except ValueError:
        raise ValueError("month %r is not YYYY-MM" % text)
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def score_month(ds, rules, month, collection_records=None, collection_source="collection.csv"):
    """Score `month` ("YYYY-MM"). collection_records(start, end, problems) yields
    (meter, collector, day, collected, line); by default collection.csv of the data
    directory is read. Raises inputs.InputErrors on any bad collection record."""
    first, last = parse_month(month)
    in_month = lambda d: d is not None and first <= d <= last  # noqa: E731
    coll = Collection(rules, collection_source)
    jobs = [j for j in ds.jobs if in_month(j.day)]
    for j in jobs:
        if j.meters is None:
            coll.want_collector(j.collector, j.closed)
        else:
            for m in j.meters:
                coll.want_meter(m, j.closed)
    orders = [o for o in ds.orders.values() if in_month(o.completed) or (o.completed is None and (
        o.deadline is None or o.deadline <= last))]
    for o in orders:
        if o.completed is not None:
            for m in o.meters:
                coll.want_meter(m, o.completed)

    problems, warnings = [], []
    span = coll.span()
    if span is not None:
        if collection_records is None:
            path = ds.files.get("collection.csv") and "%s/collection.csv" % ds.root
            if path is None:
                warnings.append("no collection.csv: every meter counts as not read")
            else:
                coll.feed(inputs.read_collection_csv(path, problems))
        else:
            coll.feed(collection_records(span[0], span[1], problems))
    if problems:
        raise inputs.InputErrors(problems)

    # Collector maintenance, per person, day and kind.
    groups = {}
    for j in jobs:
        groups.setdefault((j.person, j.day, j.kind), []).append(j)
    days = []
    for (person, day, kind), js in sorted(groups.items()):
        units = []
        for j in js:
            listed = j.meters is not None
            meters = list(j.meters) if listed else coll.collector_meters(j.collector, j.closed)
            checked = [(m,) + coll.meter_read(m, j.closed) for m in meters]
            read = sum(1 for _, r, _ in checked if r)
            if not meters:
                warnings.append("%s: collector %s has no meter listed and no collection record in its window "
                                "(%s); %s" % (j.src, j.collector, ", ".join(map(str, coll.window(j.closed))),
                                              "counted as not read" if kind == "wireless" else "0 users counted"))
            if kind == "wireless":
                ok, total = (1 if meters and read == len(meters) else 0), 1
            else:
                ok, total = read, len(meters)
            units.append(Unit(j.collector, j.src, checked, "job" if listed else "records", ok, total))
        ok, total = sum(u.ok for u in units), sum(u.total for u in units)
        outcome = scores.maintenance_day(rules.kind(kind), ok, total)
        days.append(DayScore(person, day, kind, sorted({j.closed for j in js}), units, outcome))

    adjustments = [a for a in ds.adjustments if in_month(a.day)]
    by_target = {}
    for a in adjustments:
        if a.target:
            by_target.setdefault(a.target, []).append(a)

    checks = {}
    for sc in ds.spot_checks:
        checks.setdefault(sc.order, {}).setdefault(sc.meter, []).append(sc)
    order_scores = []
    for o in sorted(orders, key=lambda o: o.id):
        flags = []
        if o.kind == "rotation":
            end = o.completed or last
            days_late, late = scores.late_deduction(rules, o.deadline, end)
            if o.completed is None:
                flags.append("open: %d day(s) late at %s so far (provisional)" % (days_late, last))
            spot_min, coll_min = rules.rotation_spot_min, rules.rotation_collection_min
            required = scores.sample_size(rules.rotation_rate, len(o.meters), rules.min_sample)
        else:
            days_late, late = 0, Fraction(0)
            if o.deadline is not None:
                days_late = max(0, ((o.completed or last) - o.deadline).days)
            if o.completed is None:
                flags.append("open")
            spot_min, coll_min = rules.batch_spot_min, rules.batch_collection_min
            required = 0
            for cls, rate in rules.class_rates.items():
                n = sum(1 for m in o.meters.values() if m.load_class == cls)
                required += scores.sample_size(rate, n, rules.min_sample)
        checked = {m: (all(sc.passed for sc in scs), scs) for m, scs in checks.get(o.id, {}).items()}
        spot = scores.Quality("spot-check pass rate", sum(1 for p, _ in checked.values() if p), len(checked),
                              spot_min)
        read = {m: coll.meter_read(m, o.completed) for m in o.meters} if o.completed else {}
        collection = scores.Quality("collection pass rate", sum(1 for r, _ in read.values() if r), len(read),
                                    coll_min)
        if len(checked) < required:
            flags.append("spot check incomplete: %d of %d sampled meters checked" % (len(checked), required))
        if not o.meters:
            flags.append("no meters listed in order_meters.csv")
        if o.kind == "batch":
            unsigned = sorted(sc.meter for _, scs in checked.values() for sc in scs
                              if sc.item == "correspondence" and not (sc.signed_crew and sc.signed_property))
            if unsigned:
                flags.append("correspondence check not signed by crew and property manager (三方签字): %s"
                             % " ".join(unsigned))
        adj = by_target.get(o.id, [])
        for q in (spot, collection):
            if q.passed is False and not adj:
                flags.append("%s below %s%%: needs a manual adjustment with a reason" % (q.what,
                                                                                        scores.pct(q.min_percent)))
        order_scores.append(OrderScore(o, "completed" if o.completed else "open", days_late, late, required, spot,
                                       collection, checked, read, adj, flags))

    complaints = []
    for c in ds.complaints:
        if not in_month(c.opened):
            continue
        applied = c.deduction if c.state in rules.deduct_states else Fraction(0)
        note = {"pending": "pending: not applied yet", "unsubstantiated": "unsubstantiated: nothing deducted"}.get(
            c.state, "applied" if c.state in rules.deduct_states else "not applied under rules %s" % rules.version)
        complaints.append((c, applied, note))

    people = {}

    def pm(pid):
        if pid not in people:
            people[pid] = PersonMonth(ds.people[pid])
        return people[pid]

    for d in days:
        p = pm(d.person)
        p.days += 1
        p.qualified_days += d.outcome.qualified
        p.below_quota_days += d.outcome.quota == "below"
        p.maintenance += d.outcome.adjust
    for s in order_scores:
        p = pm(s.order.person)
        p.orders += 1
        if s.status == "completed":
            # An open order's lateness is provisional: shown on the order, not paid yet.
            p.late_deduction += s.late_deduction
        p.quality_failures += (s.spot.passed is False) + (s.collection.passed is False)
    for c, applied, _ in complaints:
        pm(c.person).complaints += applied
    for a in adjustments:
        pm(a.person).manual += a.percent
    crews = {}
    for p in people.values():
        c = crews.setdefault(p.person.crew, PersonMonth(inputs.Person(p.person.crew, p.person.crew, p.person.crew,
                                                                      "")))
        for f in ("days", "qualified_days", "below_quota_days", "maintenance", "orders", "late_deduction",
                  "quality_failures", "complaints", "manual"):
            setattr(c, f, getattr(c, f) + getattr(p, f))
    return MonthReport(month, rules, ds, collection_source, coll.rows, days, order_scores, complaints, adjustments,
                       dict(sorted(people.items())), dict(sorted(crews.items())), warnings)
