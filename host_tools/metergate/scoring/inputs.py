"""Scoring inputs: the CSV files of a data directory (docs/scoring.md lists their
columns) and the back office's collection records. Every bad row is reported
with its file, line and field; a data set with any bad row is refused whole."""
import csv
import datetime as dt
import hashlib
import pathlib
from dataclasses import dataclass, field
from fractions import Fraction

# file name -> (required columns, optional columns)
FILES = {
    "crew.csv": (("person", "name", "crew"), ()),
    "maintenance.csv": (("job", "person", "day", "kind", "collector"), ("closed", "meters")),
    "collection.csv": (("meter", "collector", "day", "collected"), ()),
    "orders.csv": (("order", "kind", "person"), ("deadline", "completed")),
    "order_meters.csv": (("order", "meter"), ("person", "load_class")),
    "spot_checks.csv": (("order", "meter", "item", "result", "inspector", "day"),
                        ("sample", "signed_crew", "signed_property")),
    "complaints.csv": (("complaint", "person", "opened", "state"), ("deduction", "reason", "who", "when", "content")),
    "adjustments.csv": (("person", "day", "percent", "why", "who", "when"), ("target",)),
}

YES = {"yes": True, "y": True, "1": True, "true": True, "是": True,
       "no": False, "n": False, "0": False, "false": False, "否": False}
PASS = {"pass": True, "p": True, "ok": True, "合格": True, "fail": False, "f": False, "ng": False, "不合格": False}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    reason: str

    def __str__(self):
        if self.line == 0:  # about the whole file or source, not a row
            return "%s: %s%s" % (self.file, self.field + ": " if self.field else "", self.reason)
        return "%s:%d: %s: %s" % (self.file, self.line, self.field or "(row)", self.reason)


class InputErrors(ValueError):
    """Every bad row of a data set, each with file, line, field and reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("%d input problem(s):\n  " % len(self.problems)
                         + "\n  ".join(str(p) for p in self.problems))


def parse_day(s):
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise ValueError("%r is not a date (YYYY-MM-DD)" % s)


def parse_when(s):
    try:
        return dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError("%r is not a date-time (YYYY-MM-DD HH:MM or YYYY-MM-DDTHH:MM)" % s)


def parse_yes(s):
    try:
        return YES[s.strip().lower()]
    except KeyError:
        raise ValueError("%r is not yes/no" % s)


def parse_pass(s):
    try:
        return PASS[s.strip().lower()]
    except KeyError:
        raise ValueError("%r is not pass/fail (合格/不合格)" % s)


def parse_percent(s):
    try:
        v = Fraction(s)
    except (ValueError, ZeroDivisionError):
        raise ValueError("%r is not a number of percent points" % s)
    if not -100 <= v <= 100:
        raise ValueError("%s is outside -100..100" % s)
    return v


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    crew: str
    src: str


@dataclass(frozen=True)
class Job:
    """One collector maintained by one person on one day."""
    job: str
    person: str
    day: dt.date
    closed: dt.date
    kind: str
    collector: str
    meters: tuple | None  # the users maintained when the job lists them
    src: str


@dataclass
class Order:
    id: str
    kind: str  # rotation | batch
    person: str
    deadline: dt.date | None
    completed: dt.date | None
    src: str
    meters: dict = field(default_factory=dict)  # meter -> OrderMeter


@dataclass(frozen=True)
class OrderMeter:
    order: str
    meter: str
    person: str
    load_class: str
    src: str


@dataclass(frozen=True)
class SpotCheck:
    order: str
    meter: str
    item: str
    passed: bool
    inspector: str
    day: dt.date
    sample: str
    signed_crew: str       # batch correspondence checks: signed by the crew ...
    signed_property: str   # ... and the property manager, beside the inspector
    src: str


@dataclass(frozen=True)
class Complaint:
    id: str
    person: str
    opened: dt.date
    state: str
    deduction: Fraction
    reason: str
    who: str                     # who decided the deduction, and when (an override: who, when, why)
    when: dt.datetime | None
    content: str
    src: str


@dataclass(frozen=True)
class Adjustment:
    person: str
    day: dt.date
    target: str
    percent: Fraction
    why: str
    who: str
    when: dt.datetime
    src: str


@dataclass
class Dataset:
    root: str
    files: dict = field(default_factory=dict)  # name -> sha256 of what was read, or None if absent
    people: dict = field(default_factory=dict)
    jobs: list = field(default_factory=list)
    orders: dict = field(default_factory=dict)
    spot_checks: list = field(default_factory=list)
    complaints: list = field(default_factory=list)
    adjustments: list = field(default_factory=list)


def _rows(path, name, problems, raw=False):
    """Yield (line, dict) for each row of one CSV; header problems are recorded.
    raw: yield (0, header) first, then (line, list of fields) unstripped (fast path)."""
    required, optional = FILES[name]
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            problems.append(Problem(name, 1, "", "empty file: a header row is required"))
            return
        except (UnicodeDecodeError, csv.Error) as exc:
            problems.append(Problem(name, 1, "", "unreadable: %s" % exc))
            return
        missing = [c for c in required if c not in header]
        unknown = [c for c in header if c not in required and c not in optional]
        if missing:
            problems.append(Problem(name, 1, ",".join(missing), "missing column(s)"))
        if unknown:
            problems.append(Problem(name, 1, ",".join(unknown),
                                    "unknown column(s); expected %s" % ", ".join(required + optional)))
        if missing or unknown:
            return
        width = len(header)
        if raw:
            yield 0, header
        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != width:
                    problems.append(Problem(name, reader.line_num, "",
                                            "%d fields, the header has %d" % (len(row), width)))
                    continue
                yield reader.line_num, (row if raw else {k: v.strip() for k, v in zip(header, row)})
        except (UnicodeDecodeError, csv.Error) as exc:
            problems.append(Problem(name, reader.line_num, "", "unreadable: %s" % exc))


class _Row:
    """Field access for one row that records problems instead of raising at once."""

    def __init__(self, name, line, row, problems):
        self.name, self.line, self.row, self.problems, self.bad = name, line, row, problems, False

    @property
    def src(self):
        return "%s:%d" % (self.name, self.line)

    def fail(self, col, reason):
        self.problems.append(Problem(self.name, self.line, col, reason))
        self.bad = True

    def get(self, col, parse=None, required=True, default=None):
        v = self.row.get(col, "")
        if v == "":
            if required:
                self.fail(col, "empty")
            return default
        if parse is None:
            return v
        try:
            return parse(v)
        except ValueError as exc:
            self.fail(col, str(exc))
            return default


def _each(root, name, ds, problems):
    path = pathlib.Path(root) / name
    if not path.exists():
        ds.files[name] = None
        return
    ds.files[name] = _sha256(path)
    for line, row in _rows(path, name, problems):
        yield _Row(name, line, row, problems)


def load(root, rules):
    """Read every CSV of a data directory except collection.csv (read by
    `collection_records`). Raises InputErrors listing every bad row."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise InputErrors([Problem(str(root), 0, "", "not a directory")])
    problems = []
    ds = Dataset(str(root))
    for r in _each(root, "crew.csv", ds, problems):
        pid = r.get("person")
        p = Person(pid, r.get("name"), r.get("crew"), r.src)
        if pid in ds.people:
            r.fail("person", "%s already listed at %s" % (pid, ds.people[pid].src))
        if not r.bad:
            ds.people[pid] = p

    def person(r, col="person", required=True):
        pid = r.get(col, required=required)
        if pid is not None and pid not in ds.people:
            r.fail(col, "%r is not in crew.csv" % pid)
        return pid

    seen_units = {}
    for r in _each(root, "maintenance.csv", ds, problems):
        day = r.get("day", parse_day)
        closed = r.get("closed", parse_day, required=False, default=day)
        kind = r.get("kind")
        if kind is not None and kind not in ("wireless", "carrier"):
            r.fail("kind", "%r is neither wireless nor carrier" % kind)
        meters = r.get("meters", required=False)
        meters = tuple(meters.split()) if meters else None
        if meters is not None and len(set(meters)) != len(meters):
            r.fail("meters", "a meter is listed twice")
        job = Job(r.get("job"), person(r), day, closed, kind, r.get("collector"), meters, r.src)
        if day and closed and closed < day:
            r.fail("closed", "closed %s before the job day %s" % (closed, day))
        key = (job.person, job.day, job.collector)
        if not r.bad and key in seen_units:
            r.fail("collector", "%s already maintained by %s on %s at %s" % (job.collector, job.person, day,
                                                                              seen_units[key]))
        if not r.bad:
            seen_units[key] = r.src
            ds.jobs.append(job)

    for r in _each(root, "orders.csv", ds, problems):
        oid, kind = r.get("order"), r.get("kind")
        if kind is not None and kind not in ("rotation", "batch"):
            r.fail("kind", "%r is neither rotation nor batch" % kind)
        deadline = r.get("deadline", parse_day, required=(kind == "rotation"))
        o = Order(oid, kind, person(r), deadline, r.get("completed", parse_day, required=False), r.src)
        if oid in ds.orders:
            r.fail("order", "%s already listed at %s" % (oid, ds.orders[oid].src))
        if not r.bad:
            ds.orders[oid] = o

    def order(r):
        oid = r.get("order")
        if oid is not None and oid not in ds.orders:
            r.fail("order", "%r is not in orders.csv" % oid)
            return None
        return ds.orders.get(oid)

    for r in _each(root, "order_meters.csv", ds, problems):
        o, meter = order(r), r.get("meter")
        who = person(r, required=False)
        cls = r.get("load_class", required=bool(o and o.kind == "batch"), default="")
        if o and o.kind == "batch" and cls and cls not in rules.class_rates:
            r.fail("load_class", "%r has no rate in the rules (classes: %s)" % (cls, ", ".join(rules.class_rates)))
        if o and meter in o.meters:
            r.fail("meter", "%s already in order %s at %s" % (meter, o.id, o.meters[meter].src))
        if not r.bad:
            o.meters[meter] = OrderMeter(o.id, meter, who or o.person, cls, r.src)

    seen_checks = {}
    for r in _each(root, "spot_checks.csv", ds, problems):
        o, meter, item = order(r), r.get("meter"), r.get("item")
        if o and meter and meter not in o.meters:
            r.fail("meter", "%s is not a meter of order %s (order_meters.csv)" % (meter, o.id))
        if item and item not in rules.items:
            r.fail("item", "%r is not a spot-check item of rules %s (known: %s)"
                   % (item, rules.version, ", ".join(rules.items)))
        sc = SpotCheck(o.id if o else None, meter, item, r.get("result", parse_pass), r.get("inspector"),
                       r.get("day", parse_day), r.get("sample", required=False, default=""),
                       r.get("signed_crew", required=False, default=""),
                       r.get("signed_property", required=False, default=""), r.src)
        key = (sc.order, meter, item)
        if not r.bad and key in seen_checks:
            r.fail("item", "%s of %s already recorded at %s" % (item, meter, seen_checks[key]))
        if not r.bad:
            seen_checks[key] = r.src
            ds.spot_checks.append(sc)

    seen_complaints = {}
    for r in _each(root, "complaints.csv", ds, problems):
        state = r.get("state")
        if state is not None and state not in ("pending", "substantiated", "unsubstantiated"):
            r.fail("state", "%r is not pending, substantiated or unsubstantiated" % state)
        deduction = r.get("deduction", parse_percent, required=False, default=Fraction(0))
        if deduction is not None and deduction < 0:
            r.fail("deduction", "give the deduction as a positive number of percent points")
        reason = r.get("reason", required=False, default="")
        who = r.get("who", required=bool(deduction), default="")
        when = r.get("when", parse_when, required=bool(deduction))
        if deduction and not reason:
            r.fail("reason", "a deduction needs a reason")
        if state == "unsubstantiated" and deduction:
            r.fail("deduction", "an unsubstantiated complaint carries no deduction")
        c = Complaint(r.get("complaint"), person(r), r.get("opened", parse_day), state, deduction, reason, who,
                      when, r.get("content", required=False, default=""), r.src)
        if not r.bad and c.id in seen_complaints:
            r.fail("complaint", "%s already listed at %s" % (c.id, seen_complaints[c.id]))
        if not r.bad:
            seen_complaints[c.id] = r.src
            ds.complaints.append(c)

    for r in _each(root, "adjustments.csv", ds, problems):
        a = Adjustment(person(r), r.get("day", parse_day), r.get("target", required=False, default=""),
                       r.get("percent", parse_percent), r.get("why"), r.get("who"), r.get("when", parse_when), r.src)
        if not r.bad:
            ds.adjustments.append(a)

    coll = root / "collection.csv"
    ds.files["collection.csv"] = _sha256(coll) if coll.exists() else None
    if problems:
        raise InputErrors(problems)
    return ds


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_collection_csv(path, problems):
    """Yield (meter, collector, day, collected, line) from a collection CSV. Written for
    speed (millions of rows a month): dates are parsed once per distinct text."""
    name = pathlib.Path(path).name
    days = {}
    rows = _rows(path, "collection.csv", problems, raw=True)
    _, header = next(rows, (0, None))
    if header is None:
        return
    im, ic, iday, iok = (header.index(k) for k in ("meter", "collector", "day", "collected"))
    for line, row in rows:
        meter, collector, d, c = row[im].strip(), row[ic].strip(), row[iday].strip(), row[iok].strip()
        day = days.get(d)
        if day is None:
            try:
                day = days[d] = dt.date.fromisoformat(d)
            except ValueError:
                problems.append(Problem(name, line, "day", "%r is not a date (YYYY-MM-DD)" % d))
                continue
        collected = YES.get(c)
        if collected is None and (collected := YES.get(c.lower())) is None:
            problems.append(Problem(name, line, "collected", "%r is not yes/no" % c))
            continue
        if not meter or not collector:
            problems.append(Problem(name, line, "meter" if not meter else "collector", "empty"))
            continue
        yield meter, collector, day, collected, line


def read_collection_db(db_url, start, end, problems):
    """Collection records from the back office (issue 6's
    metergate.backoffice.success.meter_days), validated like CSV rows."""
    try:
        from metergate.backoffice import success
    except ImportError as exc:
        raise InputErrors([Problem("--db", 0, "", "the back office is not available (metergate.backoffice.success "
                                   "cannot be imported: %s); give collection.csv in the data directory instead"
                                   % exc)])
    try:
        yield from _db_rows(success.meter_days(db_url, start, end), problems)
    except (RuntimeError, ValueError, OSError) as exc:
        # the back office's StoreError (a RuntimeError) or a bad URL: say which database
        raise InputErrors([Problem("--db", 0, "", "%s: %s" % (db_url, exc))])


def _db_rows(records, problems):
    for n, rec in enumerate(records, 1):
        try:
            meter, collector, day, collected = rec
            ok = isinstance(day, dt.date) and isinstance(collected, bool) and meter and collector
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(Problem("db", n, "", "not a (meter, collector, date, bool) record: %r" % (rec,)))
            continue
        yield str(meter), str(collector), day, collected, n
