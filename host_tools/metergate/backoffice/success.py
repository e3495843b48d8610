"""Collection success (DOMAIN.md "Success rate definitions").

- per meter per day: ``meter_days`` (collected when any source says so: the
  ingest's rule over MQTT readings, or an imported result);
- per collector per day: ``collector_days``; a wireless collector counts as
  collected when all its meters are, a carrier collector is counted per user
  (meter);
- per work order after it closes: ``work_order_success`` over the collection
  window of the scoring rules (``success.window_offset_days`` and
  ``window_days`` of the rules file, ``scoring.rules.collection_window``), the
  same days the crews' scores are judged on.

Rates are kept as (ok, total) integers; compare them as ``ok * 100 >= 80 *
total``, never as floats.
"""

from __future__ import annotations

import dataclasses
import datetime

from metergate.backoffice.rule import CollectionRule
from metergate.backoffice.store import using_store


def _day(value) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError("not a day (YYYY-MM-DD): %r" % (value,)) from None


def _days(start, end):
    start, end = _day(start), _day(end)
    if end < start:
        raise ValueError("end day %s is before start day %s" % (end, start))
    return [start + datetime.timedelta(days=i) for i in range((end - start).days + 1)]


def meter_days(db_url, start_day, end_day):
    """(meter_id, collector_id, day: datetime.date, collected: bool) for every
    registered meter and every day from start_day to end_day, both included;
    ordered by meter_id then day. Streams: memory grows with the number of
    meters, not meters x days."""
    days = _days(start_day, end_day)
    with using_store(db_url) as store:
        meters = sorted(store.query("SELECT meter_id, collector_id FROM meters"))
        rows = store.iterate(
            "SELECT meter_id, day FROM collected_days WHERE day >= ? AND day <= ? GROUP BY meter_id, day "
            "HAVING MAX(collected) = 1 ORDER BY meter_id COLLATE %s, day" % store.bytewise,
            (days[0].isoformat(), days[-1].isoformat()))
        pending = next(rows, None)
        for meter, collector in meters:
            got = set()
            while pending is not None and pending[0] <= meter:
                if pending[0] == meter:
                    got.add(pending[1])
                pending = next(rows, None)
            for day in days:
                yield meter, collector, day, day.isoformat() in got


@dataclasses.dataclass
class CollectorDay:
    collector_id: str
    kind: str  # wireless / carrier
    site: str | None
    day: datetime.date
    meters: int
    meters_collected: int

    @property
    def collected(self) -> bool:
        """Wireless: all its meters read (a collector without meters is not collected)."""
        return self.meters > 0 and self.meters_collected == self.meters

    @property
    def ok_total(self):
        """(ok, total) in the collector's counting unit: collectors for wireless, users for carrier."""
        if self.kind == "wireless":
            return (1 if self.collected else 0), 1
        return self.meters_collected, self.meters


def collector_days(db_url, start_day, end_day):
    """CollectorDay for every collector (with its registered meters) and day, ordered by collector, day."""
    with using_store(db_url) as store:
        info = {cid: (kind, site) for cid, kind, site in store.query("SELECT collector_id, kind, site FROM collectors")}
        tally = {}
        for _meter, collector, day, collected in meter_days(store, start_day, end_day):
            t = tally.setdefault((collector, day), [0, 0])
            t[0] += 1
            t[1] += collected
        days = _days(start_day, end_day)
        for cid in sorted(info):
            kind, site = info[cid]
            for day in days:
                total, ok = tally.get((cid, day), (0, 0))
                yield CollectorDay(cid, kind, site, day, total, ok)


@dataclasses.dataclass
class Rate:
    ok: int
    total: int

    @property
    def percent(self):
        """For display only; decisions compare ok and total as integers."""
        return None if self.total == 0 else 100.0 * self.ok / self.total

    def as_dict(self):
        return {"ok": self.ok, "total": self.total,
                "percent": None if self.total == 0 else round(self.percent, 2)}


def site_day(db_url, day):
    """{site: {"wireless": Rate (collectors), "carrier": Rate (users)}} for one day."""
    out = {}
    for c in collector_days(db_url, day, day):
        rates = out.setdefault(c.site or "(no site)", {"wireless": Rate(0, 0), "carrier": Rate(0, 0)})
        ok, total = c.ok_total
        rates[c.kind].ok += ok
        rates[c.kind].total += total
    return out


@dataclasses.dataclass
class WorkOrderResult:
    order_id: str
    kind: str
    closed_at: int
    window: tuple  # (first day, last day)
    state: str  # "pending" (window not over) or "measured"
    rate: Rate
    items: list  # (collector_id, meter_id or "", collected: bool, detail)

    def as_dict(self):
        return {"work_order": self.order_id, "kind": self.kind, "closed_at": self.closed_at,
                "window": [d.isoformat() for d in self.window], "state": self.state,
                "rate": self.rate.as_dict(),
                "items": [{"collector": c, "meter": m or None, "collected": ok, "detail": d}
                          for c, m, ok, d in self.items]}


class UnknownWorkOrder(KeyError):
    pass


def work_order_success(db_url, order_id, rule=None, today=None, rules=None):
    """Collection success of one closed work order over its window after closing
    (rules: the scoring rules, metergate.scoring.rules.load(); the default file when None)."""
    from metergate.scoring import rules as scoring_rules

    rule = rule or CollectionRule()
    rules = rules or scoring_rules.load()
    with using_store(db_url) as store:
        row = store.query("SELECT kind, closed_at FROM work_orders WHERE order_id = ?", (order_id,))
        if not row:
            raise UnknownWorkOrder("no work order %r in %s" % (order_id, store.display_url))
        kind, closed_at = row[0]
        closing_day = rule.day_of(closed_at)
        days = scoring_rules.collection_window(closing_day, rules.window_offset_days, rules.window_days)
        window = (days[0], days[-1])
        today = today or rule.today()
        items = store.query("SELECT collector_id, meter_id FROM work_order_items WHERE order_id = ? "
                            "ORDER BY collector_id, meter_id", (order_id,))
        collectors = {c for c, _ in items}
        per_meter = {}
        for meter, collector, day, collected in meter_days(store, window[0], window[1]):
            if collector in collectors:
                per_meter.setdefault(meter, [collector, True])[1] &= collected
        result = []
        if kind == "wireless":
            for collector, _ in items:
                mine = {m: ok for m, (c, ok) in per_meter.items() if c == collector}
                missed = sorted(m for m, ok in mine.items() if not ok)
                ok = bool(mine) and not missed
                detail = ("no meters registered" if not mine else
                          "all %d meters read" % len(mine) if ok else "not read: %s" % ", ".join(missed))
                result.append((collector, "", ok, detail))
        else:
            for collector, meter in items:
                state = per_meter.get(meter)
                if state is None:
                    result.append((collector, meter, False, "meter not registered under this collector"))
                else:
                    result.append((collector, meter, state[1], "read every day" if state[1] else "not read"))
        ok = sum(1 for r in result if r[2])
        return WorkOrderResult(order_id, kind, closed_at, window, "pending" if today <= window[1] else "measured",
                               Rate(ok, len(result)), result)


def recompute(db_url, rule, start_day, end_day):
    """Re-derive the 'mqtt' verdicts of these days from the stored readings under
    `rule` (after the rule changed); returns how many meter-days are collected."""
    import json

    from metergate.backoffice.ingest import meter_id

    days = _days(start_day, end_day)
    first, last = days[0].isoformat(), days[-1].isoformat()
    with using_store(db_url) as store:
        # readings carry the poll end `ts`; item times are within the poll, a day of margin is plenty
        lo, hi = rule.day_start(days[0]) - 86400, rule.day_start(days[-1]) + 2 * 86400
        found = {}
        for device, payload in list(store.iterate("SELECT device, payload FROM readings WHERE ts >= ? AND ts < ?",
                                                  (lo, hi))):
            body = json.loads(payload)
            for day, evidence in rule.collected(body).items():
                if first <= day <= last:
                    found.setdefault((meter_id(device, body["meter"]), day), evidence)
        with store.transaction():
            store.execute("DELETE FROM collected_days WHERE source = 'mqtt' AND day >= ? AND day <= ?", (first, last))
            store.executemany("INSERT INTO collected_days (meter_id, day, source, collected, evidence) "
                              "VALUES (?, ?, 'mqtt', 1, ?)", [(m, d, e) for (m, d), e in sorted(found.items())])
        return len(found)
