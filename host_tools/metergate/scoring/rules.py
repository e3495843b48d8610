"""The pay and spot-check rules as data: load a rules TOML, validate it, and give
the scoring code typed, exact (Fraction) values. Nothing in the scoring code
hard-codes a threshold, tier, quota, rate or cap; they all come from here."""
import datetime
import hashlib
import pathlib
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources

import jsonschema

DEFAULT_RULES = "default_rules.toml"

_PERCENT = {"type": "number", "minimum": 0, "maximum": 100}
_SHARE = {"type": "number", "minimum": 0, "maximum": 1}
_POS_INT = {"type": "integer", "minimum": 1}
_KIND = {
    "type": "object",
    "additionalProperties": False,
    "required": ["unit", "quota_min", "quota_max", "below_quota", "tiers", "below"],
    "properties": {
        "unit": {"enum": ["collector", "user"]},
        "quota_min": {"type": "integer", "minimum": 0},
        "quota_max": {"type": "integer", "minimum": 0},
        "below_quota": {"enum": ["flag", "no_bonus"]},
        "tiers": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["at_least", "adjust", "qualified"],
                "properties": {"at_least": _PERCENT, "adjust": {"type": "number", "minimum": -100, "maximum": 100},
                               "qualified": {"type": "boolean"}},
            },
        },
        "below": {
            "type": "object", "additionalProperties": False,
            "required": ["deduction", "qualified"],
            "properties": {"deduction": _PERCENT, "step_points": {"type": "number", "exclusiveMinimum": 0},
                           "qualified": {"type": "boolean"}, "cap": _PERCENT},
        },
    },
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "success", "maintenance", "rotation", "batch", "sampling", "complaints", "spot_check"],
    "properties": {
        "version": {"type": "string", "minLength": 1},
        "source": {"type": "string"},
        "success": {
            "type": "object", "additionalProperties": False,
            "required": ["window_offset_days", "window_days", "meter_read"],
            "properties": {"window_offset_days": {"type": "integer", "minimum": 0}, "window_days": _POS_INT,
                           "meter_read": {"enum": ["all", "any"]}},
        },
        "maintenance": {
            "type": "object", "additionalProperties": False, "required": ["wireless", "carrier"],
            "properties": {"wireless": _KIND, "carrier": _KIND},
        },
        "rotation": {
            "type": "object", "additionalProperties": False,
            "required": ["late_deduction_per_day", "late_deduction_cap", "spot_check_rate",
                         "spot_check_pass_min", "collection_pass_min"],
            "properties": {"late_deduction_per_day": _PERCENT, "late_deduction_cap": _PERCENT,
                           "spot_check_rate": _SHARE, "spot_check_pass_min": _PERCENT,
                           "collection_pass_min": _PERCENT},
        },
        "batch": {
            "type": "object", "additionalProperties": False,
            "required": ["spot_check_pass_min", "collection_pass_min", "class_rates"],
            "properties": {"spot_check_pass_min": _PERCENT, "collection_pass_min": _PERCENT,
                           "class_rates": {"type": "object", "minProperties": 1,
                                           "propertyNames": {"pattern": "^[0-9A-Za-z_-]+$"},
                                           "additionalProperties": _SHARE}},
        },
        "sampling": {
            "type": "object", "additionalProperties": False, "required": ["min_sample"],
            "properties": {"min_sample": {"type": "integer", "minimum": 0}},
        },
        "complaints": {
            "type": "object", "additionalProperties": False, "required": ["deduct_states"],
            "properties": {"deduct_states": {"type": "array", "items": {
                "enum": ["pending", "substantiated", "unsubstantiated"]}}},
        },
        "spot_check": {
            "type": "object", "additionalProperties": False, "required": ["items"],
            "properties": {"items": {
                "type": "object", "minProperties": 1,
                "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"},
                "additionalProperties": {
                    "type": "object", "additionalProperties": False, "required": ["zh", "en"],
                    "properties": {"zh": {"type": "string", "minLength": 1},
                                   "en": {"type": "string", "minLength": 1}}}}},
        },
    },
}

COMPLAINT_STATES = ("pending", "substantiated", "unsubstantiated")


class RulesError(ValueError):
    """An invalid rules file: where it is, which field, and why."""

    def __init__(self, path, field, reason):
        self.path, self.field, self.reason = str(path), field, reason
        super().__init__("rules file %s: field %s: %s" % (path, field or "(top level)", reason))


def _exact(x):
    # Through str so that 0.15 means 15/100, not the binary float nearest to it.
    return Fraction(str(x))


@dataclass(frozen=True)
class Tier:
    at_least: Fraction
    adjust: Fraction
    qualified: bool


@dataclass(frozen=True)
class Below:
    deduction: Fraction
    step_points: Fraction | None
    qualified: bool
    cap: Fraction | None


@dataclass(frozen=True)
class KindRules:
    kind: str
    unit: str
    quota_min: int
    quota_max: int
    below_quota: str
    tiers: tuple  # of Tier, highest at_least first
    below: Below


@dataclass(frozen=True)
class Rules:
    version: str
    digest: str  # sha256 of the file's bytes, so a report pins the exact text used
    path: str
    window_offset_days: int
    window_days: int
    meter_read: str
    wireless: KindRules
    carrier: KindRules
    late_per_day: Fraction
    late_cap: Fraction
    rotation_rate: Fraction
    rotation_spot_min: Fraction
    rotation_collection_min: Fraction
    batch_spot_min: Fraction
    batch_collection_min: Fraction
    class_rates: dict  # load class (str) -> Fraction
    min_sample: int
    deduct_states: frozenset
    items: dict  # item key -> {"zh": ..., "en": ...}

    def kind(self, kind):
        return {"wireless": self.wireless, "carrier": self.carrier}[kind]

    @property
    def ident(self):
        return "%s (sha256 %s)" % (self.version, self.digest[:12])


def _field(path_parts):
    out = ""
    for p in path_parts:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def _kind(name, d, path):
    tiers = tuple(Tier(_exact(t["at_least"]), _exact(t["adjust"]), t["qualified"]) for t in d["tiers"])
    for i in range(1, len(tiers)):
        if tiers[i].at_least >= tiers[i - 1].at_least:
            raise RulesError(path, "maintenance.%s.tiers[%d].at_least" % (name, i),
                             "tiers must be listed highest threshold first (%s is not below %s)"
                             % (tiers[i].at_least, tiers[i - 1].at_least))
    if d["quota_min"] > d["quota_max"]:
        raise RulesError(path, "maintenance.%s.quota_min" % name,
                         "quota_min %d is above quota_max %d" % (d["quota_min"], d["quota_max"]))
    b = d["below"]
    below = Below(_exact(b["deduction"]), _exact(b["step_points"]) if "step_points" in b else None,
                  b["qualified"], _exact(b["cap"]) if "cap" in b else None)
    return KindRules(name, d["unit"], d["quota_min"], d["quota_max"], d["below_quota"], tiers, below)


def parse(data, path="<rules>", raw=b""):
    """Validate a decoded rules document and build Rules; RulesError names the field."""
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        reason = e.message
        if e.validator == "additionalProperties":
            reason = "unknown field (%s)" % e.message
        raise RulesError(path, _field(e.absolute_path), reason)
    rot, bat = data["rotation"], data["batch"]
    return Rules(
        version=data["version"], digest=hashlib.sha256(raw).hexdigest(), path=str(path),
        window_offset_days=data["success"]["window_offset_days"], window_days=data["success"]["window_days"],
        meter_read=data["success"]["meter_read"],
        wireless=_kind("wireless", data["maintenance"]["wireless"], path),
        carrier=_kind("carrier", data["maintenance"]["carrier"], path),
        late_per_day=_exact(rot["late_deduction_per_day"]), late_cap=_exact(rot["late_deduction_cap"]),
        rotation_rate=_exact(rot["spot_check_rate"]), rotation_spot_min=_exact(rot["spot_check_pass_min"]),
        rotation_collection_min=_exact(rot["collection_pass_min"]),
        batch_spot_min=_exact(bat["spot_check_pass_min"]), batch_collection_min=_exact(bat["collection_pass_min"]),
        class_rates={k: _exact(v) for k, v in bat["class_rates"].items()},
        min_sample=data["sampling"]["min_sample"],
        deduct_states=frozenset(data["complaints"]["deduct_states"]),
        items=dict(data["spot_check"]["items"]),
    )


def collection_window(closed, offset_days, days):
    """The collection days that judge a job closed on `closed` (a date): from
    closed + offset_days, `days` of them. The one definition: scoring and the
    back office's work-order success both use it, from the same rules file."""
    start = closed + datetime.timedelta(days=offset_days)
    return tuple(start + datetime.timedelta(days=i) for i in range(days))


def load(path=None):
    """Load a rules file, or the default shipped with the package when path is None."""
    if path is None:
        res = resources.files("metergate.scoring").joinpath(DEFAULT_RULES)
        raw, shown = res.read_bytes(), "(default) " + DEFAULT_RULES
    else:
        p = pathlib.Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise RulesError(p, "", "cannot read: %s" % exc.strerror)
        shown = str(p)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RulesError(shown, "", "not UTF-8 text (%s)" % exc.reason)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(shown, "", "not valid TOML: %s" % exc)
    return parse(data, shown, raw)
