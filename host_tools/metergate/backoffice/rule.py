"""When a meter's day counts as collected (DOMAIN.md "Success rate definitions").

Default: the day has a valid energy reading: an `energy_forward` value of
quality `good`, its time `t` falling on that calendar day in the utility's
time zone. Items, qualities and the zone are configurable; the ingest applies
the rule when it stores a reading (table collected_days, source 'mqtt'), and
`metergate backoffice recompute` re-applies a changed rule to the stored raw
readings.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import zoneinfo

DEFAULT_TZ = "Asia/Shanghai"


@dataclasses.dataclass(frozen=True)
class CollectionRule:
    items: tuple = ("energy_forward",)
    qualities: tuple = ("good",)
    tz: str = dataclasses.field(default_factory=lambda: os.environ.get("METERGATE_TZ", DEFAULT_TZ))
    # (first, end) in Unix seconds of the last local day looked up, and that day: readings come in time order
    _day_memo: tuple = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        try:
            zoneinfo.ZoneInfo(self.tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown time zone %r (an IANA name such as Asia/Shanghai): %s" % (self.tz, exc)) from None
        if not self.items:
            raise ValueError("a collection rule needs at least one item")

    @property
    def zone(self):
        return zoneinfo.ZoneInfo(self.tz)

    def day_of(self, unix_s: int) -> datetime.date:
        memo = self._day_memo
        if memo is not None and memo[0] <= unix_s < memo[1]:
            return memo[2]
        zone = self.zone
        local = datetime.datetime.fromtimestamp(unix_s, zone)
        offset = local.utcoffset()
        first = unix_s - (unix_s + int(offset.total_seconds())) % 86400
        end = first + 86400
        # the span is that day only if the UTC offset is the same at both ends (no DST change that day)
        if (datetime.datetime.fromtimestamp(first, zone).utcoffset() == offset
                and datetime.datetime.fromtimestamp(end - 1, zone).utcoffset() == offset):
            object.__setattr__(self, "_day_memo", (first, end, local.date()))
        return local.date()

    def today(self) -> datetime.date:
        return datetime.datetime.now(self.zone).date()

    def day_start(self, day: datetime.date) -> int:
        return int(datetime.datetime.combine(day, datetime.time(), self.zone).timestamp())

    def collected(self, reading: dict):
        """{day: evidence} for the days this (contract-valid) reading proves collected."""
        out = {}
        values = reading.get("values") or {}
        for item in self.items:
            value = values.get(item)
            if isinstance(value, dict) and value.get("q") in self.qualities and "v" in value:
                day = self.day_of(value["t"]).isoformat()
                out.setdefault(day, "seq %d %s=%s t=%d" % (reading["seq"], item, value["v"], value["t"]))
        return out

    def collected_days(self, reading: dict):
        """The keys of collected(reading), without writing the evidence (the ingest's hot path)."""
        values = reading.get("values") or {}
        days = []
        for item in self.items:
            value = values.get(item)
            if isinstance(value, dict) and value.get("q") in self.qualities and "v" in value:
                days.append(self.day_of(value["t"]).isoformat())
        return days

    def describe(self):
        return "items %s with quality %s, day in %s" % ("/".join(self.items), "/".join(self.qualities), self.tz)
