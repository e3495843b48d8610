"""DOMAIN.md's pay and spot-check rules, at and around every threshold. The
expected values are worked out by hand from the rule text (DOMAIN.md "Pay
rules", "Spot-check volume"), not from the code, and checked against the
default rules file shipped with metergate."""
import datetime as dt
import pathlib
import tomllib
from fractions import Fraction

import pytest

from metergate.scoring import rules as rules_mod, scores

RULES = rules_mod.load()
D = dt.date


# Wireless: rate >= 80 % -> qualified, +5 %; below 80 % each 10 points (or part)
# lower costs 5 %: 70-79.99 -> -5, 60-69.99 -> -10, ... 0 % -> -40.
# Quota 5-8 collectors a day.
WIRELESS = [
    # ok, total, qualified, adjust, quota
    (5, 5, True, 5, "within"),
    (4, 5, True, 5, "within"),        # 4/5 is exactly 80 %
    (3, 5, False, -10, "within"),     # 60 % -> 20 points under -> 2 steps
    (7, 8, True, 5, "within"),        # 87.5 %
    (6, 8, False, -5, "within"),      # 75 %
    (5, 8, False, -10, "within"),     # 62.5 %
    (4, 8, False, -15, "within"),     # 50 %: 30 points under -> 3 steps
    (8, 10, True, 5, "above"),        # exactly 80 % with 10 collectors, above the quota of 8
    (7, 10, False, -5, "above"),      # exactly 70 %: 10 points under -> 1 step
    (6, 10, False, -10, "above"),     # exactly 60 %
    (79, 100, False, -5, "above"),    # 79 % -> 1 point under -> 1 step (partial steps count)
    (0, 5, False, -40, "within"),     # 0 %: 80 points under -> 8 steps
    (1, 1, True, 5, "below"),
    (0, 1, False, -40, "below"),
    (3, 4, False, -5, "below"),       # 75 %, 4 collectors is under the quota of 5
]

# Carrier: < 70 % -> -5 % and not qualified; 70-79.99 -> qualified, 0;
# 80-89.99 -> +5 %; >= 90 % -> +10 % (highest tier only). Quota 15-20 users.
CARRIER = [
    (20, 20, True, 10, "within"),
    (18, 20, True, 10, "within"),     # exactly 90 %
    (17, 20, True, 5, "within"),      # 85 %
    (16, 20, True, 5, "within"),      # exactly 80 %
    (15, 20, True, 0, "within"),      # 75 %
    (14, 20, True, 0, "within"),      # exactly 70 %
    (13, 20, False, -5, "within"),    # 65 %
    (0, 20, False, -5, "within"),     # 0 %: a flat -5, not stepped
    (27, 30, True, 10, "above"),      # exactly 90 %
    (26, 30, True, 5, "above"),       # 86.67 %
    (899, 1000, True, 5, "above"),    # 89.9 %: just under 90
    (699, 1000, False, -5, "above"),  # 69.9 %: just under 70
    (14, 15, True, 10, "within"),     # 93.3 %, exactly the minimum quota
    (13, 14, True, 10, "below"),      # 92.9 %, one user under the quota
]


@pytest.mark.parametrize("ok,total,qualified,adjust,quota", WIRELESS)
def test_wireless_day(ok, total, qualified, adjust, quota):
    o = scores.maintenance_day(RULES.wireless, ok, total)
    assert (o.qualified, o.adjust, o.quota) == (qualified, adjust, quota)
    assert o.rate == Fraction(100 * ok, total)
    assert ("below quota" in " ".join(o.flags)) == (quota == "below")


@pytest.mark.parametrize("ok,total,qualified,adjust,quota", CARRIER)
def test_carrier_day(ok, total, qualified, adjust, quota):
    o = scores.maintenance_day(RULES.carrier, ok, total)
    assert (o.qualified, o.adjust, o.quota) == (qualified, adjust, quota)


@pytest.mark.parametrize("kind", ["wireless", "carrier"])
def test_nothing_maintained(kind):
    # docs/scoring.md: 0 collectors (users) maintained has no rate: not qualified,
    # neither bonus nor deduction, flagged, and below the quota.
    o = scores.maintenance_day(RULES.kind(kind), 0, 0)
    assert o.rate is None and o.qualified is False and o.adjust == 0 and o.quota == "below"
    assert o.flags[0].startswith("nothing maintained")


def test_exactly_on_a_threshold_is_decided_without_floats():
    # 0.7 * 100 is 70.00000000000001 as a float; the rules must not care.
    assert scores.meets(7, 10, 70) and scores.meets(14, 20, 70) and not scores.meets(13, 20, 70)
    assert scores.meets(29, 100, Fraction("29"))
    o = scores.maintenance_day(RULES.carrier, 7, 10)
    assert o.adjust == 0 and o.qualified
    assert "7*100 >= 70*10" in o.rule


# Rotation lateness: 10 % of the order's pay per calendar day late, linear, capped at 100 %.
@pytest.mark.parametrize("completed,days,deduction", [
    (D(2026, 11, 9), 0, 0),     # early
    (D(2026, 11, 10), 0, 0),    # on the deadline
    (D(2026, 11, 11), 1, 10),
    (D(2026, 11, 12), 2, 20),
    (D(2026, 11, 19), 9, 90),
    (D(2026, 11, 20), 10, 100),
    (D(2026, 11, 21), 11, 100),  # capped
    (D(2027, 1, 10), 61, 100),
])
def test_rotation_late(completed, days, deduction):
    assert scores.late_deduction(RULES, D(2026, 11, 10), completed) == (days, deduction)


# Spot-check volume: sample = ceil(rate x N), at least 1.
@pytest.mark.parametrize("rate,n,size", [
    (RULES.rotation_rate, 1, 1),     # 0.15 -> at least 1
    (RULES.rotation_rate, 6, 1),     # 0.9 -> 1
    (RULES.rotation_rate, 7, 2),     # 1.05 -> 2
    (RULES.rotation_rate, 20, 3),    # exactly 3: 0.15*20 as a float is 3.0000000000000004
    (RULES.rotation_rate, 100, 15),
    (RULES.rotation_rate, 101, 16),
    (RULES.rotation_rate, 0, 0),
    (RULES.class_rates["2"], 7, 7),  # all class-2 loads
    (RULES.class_rates["3"], 10, 2),
    (RULES.class_rates["3"], 11, 3),
    (RULES.class_rates["3"], 1, 1),
    (RULES.class_rates["1"], 50, 0),  # class 1 not sampled by default
])
def test_sample_size(rate, n, size):
    assert scores.sample_size(rate, n, RULES.min_sample) == size


# Quality: rotation spot check >= 98 %, batch >= 99 %, collection >= 95 %,
# including the small samples a 15 % draw produces.
@pytest.mark.parametrize("ok,total,min_percent,passed", [
    (3, 3, RULES.rotation_spot_min, True),
    (2, 3, RULES.rotation_spot_min, False),   # one failure in a small sample sinks it
    (49, 50, RULES.rotation_spot_min, True),  # exactly 98 %
    (48, 50, RULES.rotation_spot_min, False),
    (49, 50, RULES.batch_spot_min, False),    # 98 % is under the batch 99 %
    (99, 100, RULES.batch_spot_min, True),    # exactly 99 %
    (98, 99, RULES.batch_spot_min, False),    # 98.99 %
    (1, 1, RULES.batch_spot_min, True),
    (19, 20, RULES.rotation_collection_min, True),   # exactly 95 %
    (18, 20, RULES.batch_collection_min, False),
    (0, 0, RULES.batch_spot_min, None),       # nothing checked is not a pass
])
def test_quality(ok, total, min_percent, passed):
    q = scores.Quality("spot", ok, total, min_percent)
    assert q.passed is passed


def test_rules_name_their_version():
    text = (pathlib.Path(rules_mod.__file__).parent / rules_mod.DEFAULT_RULES).read_text(encoding="utf-8")
    assert RULES.version == tomllib.loads(text)["version"]
    assert len(RULES.digest) == 64


# --- rules as data: a change is a file edit; a bad file is refused by field ----------------------------------

DEFAULT_TEXT = (pathlib.Path(rules_mod.__file__).parent / rules_mod.DEFAULT_RULES).read_text(encoding="utf-8")


def _rules(tmp_path, old, new):
    assert old in DEFAULT_TEXT
    p = tmp_path / "rules.toml"
    p.write_text(DEFAULT_TEXT.replace(old, new, 1), encoding="utf-8")
    return p


def test_changed_rule_changes_the_result_without_code(tmp_path):
    r = rules_mod.load(_rules(tmp_path, "late_deduction_cap = 100", "late_deduction_cap = 50"))
    assert scores.late_deduction(r, D(2026, 11, 1), D(2026, 11, 12)) == (11, 50)
    r = rules_mod.load(_rules(tmp_path, '"3" = 0.2', '"3" = 0.3'))
    assert scores.sample_size(r.class_rates["3"], 10, r.min_sample) == 3
    r = rules_mod.load(_rules(tmp_path, 'below_quota = "flag"      # "flag"', 'below_quota = "no_bonus"  # "flag"'))
    o = scores.maintenance_day(r.wireless, 4, 4)
    assert o.adjust == 0 and o.qualified and any("withheld" in f for f in o.flags)
    assert r.digest != RULES.digest


@pytest.mark.parametrize("old,new,field,reason", [
    ("quota_min = 5", "quota_min = -1", "maintenance.wireless.quota_min", "minimum"),
    ("quota_min = 5", 'quota_min = "five"', "maintenance.wireless.quota_min", "not of type"),
    ("quota_min = 5", "quota_min = 9", "maintenance.wireless.quota_min", "above quota_max"),
    ("spot_check_rate = 0.15", "spot_check_rate = 15", "rotation.spot_check_rate", "maximum"),
    ('meter_read = "all"', 'meter_read = "most"', "success.meter_read", "is not one of"),
    ("late_deduction_cap = 100", "late_deduction_kap = 100", "rotation", "unknown field"),
    ('version = "2026.11-1"', "", "(top level)", "'version' is a required property"),
    ("{ at_least = 80, adjust = 5, qualified = true },\n]\nbelow = { deduction = 5, step",
     "{ at_least = 80, adjust = 5 },\n]\nbelow = { deduction = 5, step",
     "maintenance.wireless.tiers[0]", "'qualified' is a required property"),
    ("{ at_least = 80, adjust = 5, qualified = true },\n  { at_least = 70",
     "{ at_least = 60, adjust = 5, qualified = true },\n  { at_least = 70",
     "maintenance.carrier.tiers[2].at_least", "highest threshold first"),
    ('"3" = 0.2', '"3" = 1.5', "batch.class_rates.3", "maximum"),
    ('screws_tight = { zh = "螺丝紧固", en = "terminal screws tight" }', 'screws_tight = { en = "screws" }',
     "spot_check.items.screws_tight", "'zh' is a required property"),
])
def test_invalid_rules_are_refused_with_field_and_reason(tmp_path, old, new, field, reason):
    with pytest.raises(rules_mod.RulesError) as e:
        rules_mod.load(_rules(tmp_path, old, new))
    assert e.value.field == field or (field == "(top level)" and e.value.field == "")
    assert reason in e.value.reason
    assert "rules.toml" in str(e.value) and field in str(e.value)


def test_unreadable_rules(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("version = \n", encoding="utf-8")
    with pytest.raises(rules_mod.RulesError, match="not valid TOML"):
        rules_mod.load(p)
    with pytest.raises(rules_mod.RulesError, match="cannot read"):
        rules_mod.load(tmp_path / "missing.toml")
