"""The pay rules applied: pure functions of counts and dates, exact arithmetic only
(an 80 % threshold is `ok * 100 >= 80 * total`, never a float comparison)."""
import math
from dataclasses import dataclass, field
from fractions import Fraction


def rate(ok, total):
    """Success rate in percent as an exact Fraction; None when nothing was counted."""
    return None if total == 0 else Fraction(100 * ok, total)


def meets(ok, total, min_percent):
    """ok/total >= min_percent %, decided on integers (Fractions), never floats."""
    return ok * 100 >= min_percent * total


def pct(x):
    """A Fraction percent for people: 80, 66.67, -5."""
    if x is None:
        return "-"
    if x.denominator == 1:
        return str(x.numerator)
    return "%.2f" % float(x)


def signed(x):
    """A Fraction percent with its sign: +5, -10, 0."""
    return ("+" if x > 0 else "") + pct(x)


def pct_num(x):
    """A Fraction percent for JSON/CSV: int when whole, else a float rounded to 4 places."""
    if x is None:
        return None
    return x.numerator if x.denominator == 1 else round(float(x), 4)


@dataclass
class DayOutcome:
    """One person's collector maintenance of one kind on one day."""
    kind: str
    ok: int
    total: int
    rate: Fraction | None
    qualified: bool
    adjust: Fraction          # + bonus / - deduction, percent of the day's maintenance pay
    rule: str                 # which tier or deduction applied, with the comparison made
    quota: str                # "below", "within", "above"
    flags: list = field(default_factory=list)


def maintenance_day(kr, ok, total):
    """Apply one kind's rules (rules.KindRules) to `ok` successes out of `total` units
    (collectors for wireless, users for carrier). The first tier reached applies,
    highest first, so bonuses never add up."""
    flags = []
    quota = "below" if total < kr.quota_min else ("above" if total > kr.quota_max else "within")
    if quota == "below":
        flags.append("below quota: %d %ss < %d" % (total, kr.unit, kr.quota_min))
    elif quota == "above":
        flags.append("above quota: %d %ss > %d" % (total, kr.unit, kr.quota_max))
    if total == 0:
        # Nothing maintained: no rate exists, so no tier and no deduction apply;
        # the day is not qualified and is flagged (docs/scoring.md, "0 maintained").
        flags.insert(0, "nothing maintained: no success rate, not qualified, 0 %")
        return DayOutcome(kr.kind, ok, total, None, False, Fraction(0), "0 %ss maintained" % kr.unit, quota, flags)
    for t in kr.tiers:
        if meets(ok, total, t.at_least):
            rule = "%d*100 >= %s*%d: tier >= %s%% -> %s%%" % (ok, pct(t.at_least), total, pct(t.at_least),
                                                             signed(t.adjust))
            adjust, qualified = t.adjust, t.qualified
            break
    else:
        low = kr.tiers[-1].at_least
        b = kr.below
        if b.step_points is None:
            steps = 1
            rule = "%d*100 < %s*%d: below %s%% -> -%s%%" % (ok, pct(low), total, pct(low), pct(b.deduction))
        else:
            # ceil((low - rate) / step) computed on Fractions: exact at every boundary.
            steps = math.ceil((low - rate(ok, total)) / b.step_points)
            rule = "%d*100 < %s*%d: -%s%% x ceil((%s - %s) / %s) = -%s%% x %d" % (
                ok, pct(low), total, pct(b.deduction), pct(low), pct(rate(ok, total)), pct(b.step_points),
                pct(b.deduction), steps)
        adjust = -b.deduction * steps
        if b.cap is not None and -adjust > b.cap:
            adjust = -b.cap
            rule += ", capped at -%s%%" % pct(b.cap)
        qualified = b.qualified
    if quota == "below" and kr.below_quota == "no_bonus" and adjust > 0:
        flags.append("bonus %s%% withheld (below quota, policy no_bonus)" % signed(adjust))
        adjust = Fraction(0)
    return DayOutcome(kr.kind, ok, total, rate(ok, total), qualified, adjust, rule, quota, flags)


def late_deduction(rules, deadline, completed):
    """(days late, deduction %) of a rotation order: each calendar day past the
    deadline costs late_deduction_per_day %, linearly, capped."""
    days = max(0, (completed - deadline).days)
    return days, min(rules.late_cap, rules.late_per_day * days)


@dataclass
class Quality:
    """A pass rate against its threshold; passed is None when nothing was checked."""
    what: str
    ok: int
    total: int
    min_percent: Fraction

    @property
    def rate(self):
        return rate(self.ok, self.total)

    @property
    def passed(self):
        return None if self.total == 0 else meets(self.ok, self.total, self.min_percent)

    def describe(self):
        if self.total == 0:
            return "%s: nothing checked" % self.what
        return "%s: %d/%d = %s%% %s %s%% -> %s" % (
            self.what, self.ok, self.total, pct(self.rate), ">=" if self.passed else "<", pct(self.min_percent),
            "pass" if self.passed else "FAIL")


def sample_size(rate_share, population, min_sample):
    """ceil(rate x N), at least min_sample, never more than N; 0 when the rate or N is 0."""
    if population == 0 or rate_share == 0:
        return 0
    return min(population, max(min_sample, math.ceil(rate_share * population)))
