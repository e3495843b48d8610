"""Commissioning: the gateway's self-check compared with the work order.

After installation the gateway runs its self-check in commissioning mode
(firmware, issue 5): MQTT command ``P/v1/D/cmd/selfcheck`` with
``{"id": ..., "mode": "commissioning"}``, answered on ``reply/selfcheck``;
the report is published retained on ``P/v1/D/selfcheck`` and kept on flash
as ``selfcheck.json``. Its findings are ``{code, severity, meter, position,
evidence, message: {zh, en}, fix: {zh, en}}`` (gateway/selfcheck/findings.py).

Here the report meets the work order: every position the order lists gets a
status (ok, fault, warning, not configured, config differs from the order),
meters the order does not list are named, and the whole gets a verdict. The
commissioning record is JSON for the back office plus a bilingual summary
for the crew and the site supervisor.
"""

from __future__ import annotations

import json
import pathlib
import time
import tomllib

from metergate.provision.identity import who

RECORD_KIND = "metergate-commissioning/1"
ENTRY_KEYS = {"box", "position", "asset", "customer", "breaker"}
ORDER_KEYS = {"id", "crew", "site", "deadline"}
STATUS_TEXT = {
    "ok": ("合格", "ok"),
    "fault": ("有故障", "fault"),
    "warning": ("需查看", "warning"),
    "not_configured": ("网关未配置此表位", "not configured on the gateway"),
    "config_differs": ("网关配置与装接单不符", "gateway config differs from the work order"),
}
VERDICT_TEXT = {"pass": ("通过", "PASS"), "pass_with_warnings": ("通过（有提示）", "PASS with warnings"),
                "fail": ("不通过", "FAIL")}


class CommissionError(Exception):
    pass


# -- the work order -----------------------------------------------------------

def load_work_order(path) -> dict:
    """{"order": {...}, "entries": [{box, position, asset, ...}]} from a TOML or
    JSON file: an optional `order` table (id, crew, site, deadline) and
    `[[work_order]]` entries as in the site format (docs/site-format.md). A
    site file works too: its other tables are ignored."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeError) as exc:
        raise CommissionError("%s: cannot read: %s" % (path, exc)) from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise CommissionError("%s: not valid %s: %s" % (path, "JSON" if path.suffix == ".json" else "TOML", exc))
    is_site = "site" in data and isinstance(data.get("site"), dict) and "name" in data["site"]
    if not is_site:
        unknown = sorted(set(data) - {"order", "work_order"})
        if unknown:
            raise CommissionError("%s: unknown key '%s' (expected order, work_order)" % (path, unknown[0]))
    order = dict(data.get("order") or {})
    for key in order:
        if key not in ORDER_KEYS:
            raise CommissionError("%s: order: unknown key '%s'" % (path, key))
    if is_site and "site" not in order:
        order["site"] = data["site"]["name"]
    entries = data.get("work_order")
    if not isinstance(entries, list) or not entries:
        raise CommissionError("%s: work_order: needs at least one [[work_order]] entry" % path)
    boxes = {b.get("id") for b in data.get("boxes", []) if isinstance(b, dict)}
    seen = set()
    out = []
    for i, e in enumerate(entries):
        where = "%s: work_order[%d]" % (path, i)
        if not isinstance(e, dict):
            raise CommissionError("%s: must be a table" % where)
        for key in e:
            if key not in ENTRY_KEYS:
                raise CommissionError("%s: unknown key '%s'" % (where, key))
        if not isinstance(e.get("position"), int) or isinstance(e.get("position"), bool) or e["position"] < 1:
            raise CommissionError("%s.position: required, a whole number from 1" % where)
        if not isinstance(e.get("asset"), str) or not e["asset"]:
            raise CommissionError("%s.asset: required, the asset number as printed on the meter" % where)
        box = e.get("box")
        if box is None and len(boxes) == 1:
            box = next(iter(boxes))
        key = (box, e["position"])
        if key in seen:
            raise CommissionError("%s: position %s listed twice" % (where, _pos_text(box, e["position"])))
        seen.add(key)
        out.append(dict(e, box=box))
    return {"order": order, "entries": out}


def _pos_text(box, position):
    return "%s/%s" % (box, position) if box else str(position)


# -- comparing ---------------------------------------------------------------

def _position_of(value):
    """A finding's or meter's position -> (box, position) or None."""
    if isinstance(value, dict) and "position" in value:
        return value.get("box"), value["position"]
    if isinstance(value, int) and not isinstance(value, bool):
        return None, value
    if isinstance(value, str) and "/" in value:
        box, _, pos = value.rpartition("/")
        if pos.isdigit():
            return box or None, int(pos)
    if isinstance(value, str) and value.isdigit():
        return None, int(value)
    return None


def check_report(report) -> dict:
    if not isinstance(report, dict):
        raise CommissionError("self-check report: expected a JSON object")
    findings = report.get("findings")
    if not isinstance(findings, list):
        raise CommissionError("self-check report: findings: missing or not a list")
    for i, f in enumerate(findings):
        if not isinstance(f, dict) or not isinstance(f.get("code"), str):
            raise CommissionError("self-check report: findings[%d]: needs a code" % i)
        if f.get("severity") not in ("fault", "warning", "info"):
            raise CommissionError("self-check report: findings[%d].severity: %r is not fault, warning or info"
                                  % (i, f.get("severity")))
    return report


def compare(report: dict, work_order: dict, config: dict) -> dict:
    """The commissioning record (without who/when) for `report` against `work_order`,
    with the gateway's `config` telling which meter sits at which position."""
    check_report(report)
    meters = config.get("meters") or []
    by_pos = {}
    for m in meters:
        pos = _position_of(m.get("position"))
        if pos is not None:
            by_pos[pos] = m
    one_box = len({e["box"] for e in work_order["entries"]}) == 1

    def lookup(box, position):
        if (box, position) in by_pos:
            return by_pos[(box, position)]
        if one_box:  # a single-box order may leave the box out on either side
            hits = [m for (b, p), m in by_pos.items() if p == position and (box is None or b is None or b == box)]
            return hits[0] if len(hits) == 1 else None
        return None

    meter_pos = {}
    positions = []
    for e in work_order["entries"]:
        m = lookup(e["box"], e["position"])
        row = {"box": e["box"], "position": e["position"], "asset_expected": e["asset"],
               "customer": e.get("customer"), "breaker": e.get("breaker"),
               "meter": m.get("id") if m else None, "asset_configured": m.get("asset") if m else None,
               "findings": []}
        if m is not None:
            meter_pos[m["id"]] = row
        positions.append(row)
    gateway_findings = []
    unexpected = []
    for f in report["findings"]:
        row = meter_pos.get(f.get("meter"))
        if row is None and f.get("position") is not None:
            pos = _position_of(f["position"])
            row = next((r for r in positions if pos and r["position"] == pos[1] and (pos[0] in (None, r["box"]))),
                       None)
        if row is not None:
            row["findings"].append(f)
        elif f.get("meter") is None:
            gateway_findings.append(f)
        else:
            unexpected.append(f)
    for row in positions:
        sev = {f["severity"] for f in row["findings"]}
        if row["meter"] is None:
            row["status"] = "not_configured"
        elif "fault" in sev:
            row["status"] = "fault"
        elif row["asset_configured"] not in (None, row["asset_expected"]):
            row["status"] = "config_differs"
        elif "warning" in sev:
            row["status"] = "warning"
        else:
            row["status"] = "ok"
    listed = {r["meter"] for r in positions if r["meter"]}
    not_in_order = [m["id"] for m in meters if m.get("id") not in listed]
    counts = {s: sum(1 for f in report["findings"] if f["severity"] == s) for s in ("fault", "warning", "info")}
    bad = [r for r in positions if r["status"] in ("fault", "not_configured", "config_differs")]
    gw_faults = [f for f in gateway_findings + unexpected if f["severity"] == "fault"]
    if bad or gw_faults:
        verdict = "fail"
    elif counts["warning"] or not_in_order:
        verdict = "pass_with_warnings"
    else:
        verdict = "pass"
    return {"verdict": verdict, "positions": positions, "gateway_findings": gateway_findings,
            "unexpected_findings": unexpected, "meters_not_in_order": not_in_order, "counts": counts}


def record(report: dict, work_order: dict, config: dict, device: str | None = None, source: str = "file") -> dict:
    out = {"kind": RECORD_KIND, "device": device or report.get("device") or config.get("device_id"),
           "work_order": work_order["order"], "commissioned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "who": who(),
           "selfcheck": {"source": source, "mode": report.get("mode"), "ts": report.get("ts"), "fw": report.get("fw")}}
    out.update(compare(report, work_order, config))
    out["report"] = report
    return out


def summary(rec: dict) -> str:
    """The record as text a crew reads: Chinese first, English beneath, per line."""
    order = rec["work_order"]
    zh, en = VERDICT_TEXT[rec["verdict"]]
    lines = ["调试记录 / Commissioning record",
             "网关 / gateway: %s" % rec["device"],
             "装接单 / work order: %s%s" % (order.get("id", "-"), ("  (%s)" % order["site"]) if order.get("site") else ""),
             "施工队 / crew: %s" % order.get("crew", "-"),
             "时间 / at: %s  by %s" % (rec["commissioned_at"], rec["who"]),
             "结论: %s / verdict: %s" % (zh, en),
             "故障 %d, 提示 %d, 信息 %d / faults %d, warnings %d, info %d" % (
                 rec["counts"]["fault"], rec["counts"]["warning"], rec["counts"]["info"],
                 rec["counts"]["fault"], rec["counts"]["warning"], rec["counts"]["info"]),
             ""]
    for row in rec["positions"]:
        s_zh, s_en = STATUS_TEXT[row["status"]]
        lines.append("表位 %s: %s / position %s: %s (meter %s, asset %s)" % (
            _pos_text(row["box"], row["position"]), s_zh, _pos_text(row["box"], row["position"]), s_en,
            row["meter"] or "-", row["asset_expected"]))
        if row["status"] == "config_differs":
            lines.append("    网关配置表号 %s, 装接单表号 %s / gateway config says asset %s, the order %s" % (
                row["asset_configured"], row["asset_expected"], row["asset_configured"], row["asset_expected"]))
        for f in row["findings"]:
            lines += _finding_lines(f)
    if rec["gateway_findings"] or rec["unexpected_findings"]:
        lines.append("")
        lines.append("网关及其他 / gateway and other:")
        for f in rec["gateway_findings"] + rec["unexpected_findings"]:
            lines += _finding_lines(f)
    if rec["meters_not_in_order"]:
        lines.append("")
        lines.append("装接单中没有的表 / meters not in the work order: %s" % ", ".join(rec["meters_not_in_order"]))
    return "\n".join(lines) + "\n"


def _finding_lines(f):
    msg, fix = f.get("message") or {}, f.get("fix") or {}
    out = ["    [%s] %s %s" % (f["severity"], f["code"], msg.get("zh", ""))]
    if msg.get("en"):
        out.append("        %s" % msg["en"])
    if fix.get("zh") or fix.get("en"):
        out.append("        处理 / fix: %s / %s" % (fix.get("zh", ""), fix.get("en", "")))
    return out


def write(rec: dict, out_dir) -> tuple[pathlib.Path, pathlib.Path]:
    """<device>-<time>.json and .txt in `out_dir`; never overwrites an earlier record."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "%s-%s" % (rec["device"], rec["commissioned_at"].replace(":", "").replace("-", ""))
    n = 0
    while (out_dir / (stem + ".json")).exists():
        n += 1
        stem = "%s-%s-%d" % (rec["device"], rec["commissioned_at"].replace(":", "").replace("-", ""), n)
    jpath, tpath = out_dir / (stem + ".json"), out_dir / (stem + ".txt")
    jpath.write_text(json.dumps(rec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tpath.write_text(summary(rec), encoding="utf-8")
    return jpath, tpath


# -- running the self-check over MQTT -------------------------------------------

def run_selfcheck(broker: str, device: str, username=None, password=None, prefix: str = "metergate",
                  token: str | None = None, timeout: float = 300.0) -> dict:
    """Ask the gateway for a commissioning self-check and return its report
    (metergate.technician.selfcheck: the reply names the run, the report of that run)."""
    from metergate.technician import selfcheck as sc

    try:
        return sc.run_over_mqtt(broker, device, "commissioning", None, username, password, prefix, token, timeout)
    except sc.SelfcheckError as exc:
        raise CommissionError(str(exc)) from None
