"""CSV imports: other systems' collection results, work orders, the collector registry.

Every bad row is reported with its line number, the column and the reason.
By default a file with any bad row imports nothing (fix it and import
again); ``skip_bad=True`` imports the good rows and still reports the bad
ones. Importing the same file again replaces its earlier rows (the source
is the file name), it does not add them twice.

Results (``import_results``), one row per meter and day, the same meaning as
the ingest's verdict (collected = a valid energy reading that day)::

    day,collector,kind,meter,collected[,site]
    2026-11-20,CZ-0042,carrier,3100123456789,1,Estate 7

Work orders (``import_work_orders``): wireless orders list collectors (meter
empty), carrier orders list users (meters)::

    work_order,kind,closed_at,collector,meter
    WO-1001,wireless,2026-11-20 16:30,gw-3f2a9c,
    WO-1002,carrier,2026-11-20T17:05+08:00,CZ-0042,3100123456789
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import pathlib

from metergate.backoffice.rule import CollectionRule
from metergate.backoffice.store import using_store

KINDS = ("wireless", "carrier")
TRUE = {"1", "true", "yes", "y"}
FALSE = {"0", "false", "no", "n"}


@dataclasses.dataclass
class BadRow:
    path: str
    line: int
    column: str
    reason: str

    def __str__(self):
        return "%s: line %d: %s: %s" % (self.path, self.line, self.column, self.reason)


@dataclasses.dataclass
class ImportReport:
    path: str
    imported: int = 0
    bad: list = dataclasses.field(default_factory=list)
    applied: bool = False  # False when bad rows stopped the whole file

    def as_dict(self):
        return {"file": self.path, "imported": self.imported, "applied": self.applied,
                "bad_rows": [dataclasses.asdict(b) for b in self.bad]}


class _Rows:
    """Rows of a CSV file with their line numbers; a missing column is one error for the file."""

    def __init__(self, path, required, optional=()):
        self.path = str(path)
        self.required, self.optional = required, optional
        self.bad = []

    def __iter__(self):
        with open(self.path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in self.required if c not in header]
            if missing:
                self.bad.append(BadRow(self.path, 1, ",".join(missing), "missing column(s); the header must name %s"
                                       % ", ".join(self.required + tuple(self.optional))))
                return
            unknown = [c for c in header if c not in self.required and c not in self.optional]
            if unknown:
                self.bad.append(BadRow(self.path, 1, ",".join(unknown), "unknown column(s)"))
                return
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                if None in row:
                    self.bad.append(BadRow(self.path, line, "(row)", "more fields than the header has"))
                    continue
                yield line, {k: (v or "").strip() for k, v in row.items()}

    def error(self, line, column, reason):
        self.bad.append(BadRow(self.path, line, column, reason))


def _registry(store):
    collectors = {c: (k, s) for c, k, s in store.query("SELECT collector_id, kind, site FROM collectors")}
    meters = dict(store.query("SELECT meter_id, collector_id FROM meters"))
    return collectors, meters


def _check_collector(rows, line, collectors, new_collectors, cid, kind):
    known = collectors.get(cid) or new_collectors.get(cid)
    if known and known[0] != kind:
        rows.error(line, "kind", "collector %s is %s in the registry, the row says %s" % (cid, known[0], kind))
        return False
    return True


def import_results(db_url, path, *, skip_bad=False) -> ImportReport:
    path = pathlib.Path(path)
    with using_store(db_url) as store:
        source = "import:%s" % path.name
        rows = _Rows(path, ("day", "collector", "kind", "meter", "collected"), ("site",))
        collectors, meters = _registry(store)
        new_collectors, new_meters, results = {}, {}, {}
        for line, r in rows:
            ok = True
            try:
                day = datetime.date.fromisoformat(r["day"]).isoformat()
            except ValueError:
                rows.error(line, "day", "%r is not a day (YYYY-MM-DD)" % r["day"])
                ok = False
            for col in ("collector", "meter"):
                if not r[col]:
                    rows.error(line, col, "empty")
                    ok = False
            if r["kind"] not in KINDS:
                rows.error(line, "kind", "%r is not one of %s" % (r["kind"], ", ".join(KINDS)))
                ok = False
            flag = r["collected"].lower()
            if flag not in TRUE | FALSE:
                rows.error(line, "collected", "%r is not 1/0, yes/no or true/false" % r["collected"])
                ok = False
            if not ok or not _check_collector(rows, line, collectors, new_collectors, r["collector"], r["kind"]):
                continue
            owner = meters.get(r["meter"]) or new_meters.get(r["meter"])
            if owner and owner != r["collector"]:
                rows.error(line, "meter", "meter %s belongs to collector %s, the row says %s"
                           % (r["meter"], owner, r["collector"]))
                continue
            if (r["meter"], day) in results:
                rows.error(line, "day", "meter %s on %s already given on line %d"
                           % (r["meter"], day, results[(r["meter"], day)][1]))
                continue
            new_collectors.setdefault(r["collector"], (r["kind"], r.get("site") or None))
            new_meters.setdefault(r["meter"], r["collector"])
            results[(r["meter"], day)] = (1 if flag in TRUE else 0, line)
        report = ImportReport(str(path), bad=rows.bad)
        if rows.bad and not skip_bad:
            return report
        with store.transaction():
            _register(store, collectors, meters, new_collectors, new_meters, source)
            store.executemany(
                "INSERT INTO collected_days (meter_id, day, source, collected, evidence) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (meter_id, day, source) DO UPDATE SET collected = excluded.collected, "
                "evidence = excluded.evidence",
                [(m, d, source, c, "%s line %d" % (path.name, line)) for (m, d), (c, line) in sorted(results.items())])
        report.imported, report.applied = len(results), True
        return report


def _register(store, collectors, meters, new_collectors, new_meters, source):
    store.executemany("INSERT INTO collectors (collector_id, kind, site, source) VALUES (?, ?, ?, ?)",
                      [(c, k, s, source) for c, (k, s) in sorted(new_collectors.items()) if c not in collectors])
    store.executemany("UPDATE collectors SET site = ? WHERE collector_id = ? AND site IS NULL",
                      [(s, c) for c, (k, s) in sorted(new_collectors.items()) if c in collectors and s])
    store.executemany("INSERT INTO meters (meter_id, collector_id, source) VALUES (?, ?, ?)",
                      [(m, c, source) for m, c in sorted(new_meters.items()) if m not in meters])


def _instant(text, rule):
    """Unix seconds of 'YYYY-MM-DD HH:MM[:SS]' (the rule's zone) or an ISO time with its offset."""
    t = datetime.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=rule.zone)
    return int(t.timestamp())


def import_work_orders(db_url, path, *, rule=None, skip_bad=False) -> ImportReport:
    path = pathlib.Path(path)
    rule = rule or CollectionRule()
    with using_store(db_url) as store:
        source = "import:%s" % path.name
        rows = _Rows(path, ("work_order", "kind", "closed_at", "collector", "meter"))
        collectors, meters = _registry(store)
        orders, items, new_collectors, new_meters = {}, {}, {}, {}
        for line, r in rows:
            ok = True
            if not r["work_order"]:
                rows.error(line, "work_order", "empty")
                ok = False
            if r["kind"] not in KINDS:
                rows.error(line, "kind", "%r is not one of %s" % (r["kind"], ", ".join(KINDS)))
                ok = False
            try:
                closed = _instant(r["closed_at"], rule)
            except ValueError:
                rows.error(line, "closed_at", "%r is not a time (YYYY-MM-DD HH:MM, or ISO 8601 with an offset)"
                           % r["closed_at"])
                ok = False
            if not r["collector"]:
                rows.error(line, "collector", "empty")
                ok = False
            if r["kind"] == "carrier" and not r["meter"]:
                rows.error(line, "meter", "a carrier work order lists users: the meter is required")
                ok = False
            if r["kind"] == "wireless" and r["meter"]:
                rows.error(line, "meter", "a wireless work order lists collectors: leave the meter empty")
                ok = False
            if not ok or not _check_collector(rows, line, collectors, new_collectors, r["collector"], r["kind"]):
                continue
            if r["meter"]:
                owner = meters.get(r["meter"]) or new_meters.get(r["meter"])
                if owner and owner != r["collector"]:
                    rows.error(line, "meter", "meter %s belongs to collector %s, the row says %s"
                               % (r["meter"], owner, r["collector"]))
                    continue
            order = orders.get(r["work_order"])
            if order and order[:2] != (r["kind"], closed):
                rows.error(line, "work_order", "%s was given as %s closed at %s on line %d"
                           % (r["work_order"], order[0], order[1], order[2]))
                continue
            orders.setdefault(r["work_order"], (r["kind"], closed, line))
            if r["collector"] not in collectors:
                new_collectors.setdefault(r["collector"], (r["kind"], None))
            if r["meter"] and r["meter"] not in meters:
                new_meters.setdefault(r["meter"], r["collector"])
            items[(r["work_order"], r["collector"], r["meter"])] = line
        report = ImportReport(str(path), bad=rows.bad)
        if rows.bad and not skip_bad:
            return report
        with store.transaction():
            _register(store, collectors, meters, new_collectors, new_meters, source)
            ids = sorted(orders)
            store.executemany("DELETE FROM work_order_items WHERE order_id = ?", [(o,) for o in ids])
            store.executemany("DELETE FROM work_orders WHERE order_id = ?", [(o,) for o in ids])
            store.executemany("INSERT INTO work_orders (order_id, kind, closed_at, source) VALUES (?, ?, ?, ?)",
                              [(o, orders[o][0], orders[o][1], source) for o in ids])
            store.executemany("INSERT INTO work_order_items (order_id, collector_id, meter_id) VALUES (?, ?, ?)",
                              sorted(items))
        report.imported, report.applied = len(items), True
        return report


def set_collector(db_url, collector_id, kind=None, site=None):
    """Register a collector or change its kind / site (the registry the success figures count by)."""
    if kind is not None and kind not in KINDS:
        raise ValueError("collector kind must be one of %s, not %r" % (", ".join(KINDS), kind))
    with using_store(db_url) as store:
        with store.transaction():
            if store.query("SELECT 1 FROM collectors WHERE collector_id = ?", (collector_id,)):
                if kind is not None:
                    store.execute("UPDATE collectors SET kind = ? WHERE collector_id = ?", (kind, collector_id))
                if site is not None:
                    store.execute("UPDATE collectors SET site = ? WHERE collector_id = ?", (site or None, collector_id))
            else:
                store.execute("INSERT INTO collectors (collector_id, kind, site, source) VALUES (?, ?, ?, 'cli')",
                              (collector_id, kind or "wireless", site or None))
