"""Collection success after a job: which meters were read in the window after it
closed. A month holds millions of meter-days; only those inside some job's or
order's window are kept, so memory follows the jobs, not the fleet."""
from metergate.scoring.rules import collection_window


class Collection:
    def __init__(self, rules, source="collection.csv"):
        self.offset, self.days, self.read_when = rules.window_offset_days, rules.window_days, rules.meter_read
        self.source = source
        self.need_collector = {}   # collector -> {day}
        self.need_meter = {}       # meter -> {day}
        self.by_meter_day = {}     # (meter, day) -> [collected, line]
        self.by_collector_day = {}  # (collector, day) -> {meter}
        self.rows = 0

    def window(self, closed):
        return collection_window(closed, self.offset, self.days)

    def want_collector(self, collector, closed):
        self.need_collector.setdefault(collector, set()).update(self.window(closed))

    def want_meter(self, meter, closed):
        self.need_meter.setdefault(meter, set()).update(self.window(closed))

    def span(self):
        """(first, last) day any window needs, or None."""
        days = [d for s in (self.need_collector, self.need_meter) for ds in s.values() for d in ds]
        return (min(days), max(days)) if days else None

    def feed(self, records):
        """Keep the records some window needs; records are (meter, collector, day, collected, line)."""
        need_c, need_m = self.need_collector, self.need_meter
        by_md, by_cd = self.by_meter_day, self.by_collector_day
        n = 0
        for meter, collector, day, collected, line in records:
            n += 1
            cdays = need_c.get(collector)
            if cdays is not None and day in cdays:
                by_cd.setdefault((collector, day), set()).add(meter)
            elif not ((mdays := need_m.get(meter)) is not None and day in mdays):
                continue
            rec = by_md.get((meter, day))
            if rec is None:
                by_md[(meter, day)] = [collected, line]
            elif collected and not rec[0]:
                # Several records of one meter-day: read if any of them says so.
                by_md[(meter, day)] = [True, line]
        self.rows += n

    def meter_read(self, meter, closed):
        """(read?, evidence): evidence is [(day, collected or None when no record, source)]."""
        evidence = []
        for day in self.window(closed):
            rec = self.by_meter_day.get((meter, day))
            evidence.append((day, None if rec is None else rec[0],
                             None if rec is None else "%s:%s" % (self.source, rec[1])))
        flags = [c is True for _, c, _ in evidence]
        return (all(flags) if self.read_when == "all" else any(flags)), evidence

    def collector_meters(self, collector, closed):
        """The meters the records show on a collector during the window."""
        out = set()
        for day in self.window(closed):
            out |= self.by_collector_day.get((collector, day), set())
        return sorted(out)
