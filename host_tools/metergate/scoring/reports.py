"""A scored month as a rich terminal table, CSV files, JSON, a standalone HTML page
(inline SVG charts, no script, no CDN: it opens offline) and the --explain view.
Every output names the rules version and the inputs it was computed from."""
import csv
import datetime as dt
import html
import json
import pathlib
from fractions import Fraction

from metergate.scoring.scores import pct, pct_num, signed


def _provenance(rep):
    return {
        "month": rep.month,
        "rules": {"version": rep.rules.version, "sha256": rep.rules.digest, "file": rep.rules.path},
        "inputs": {"directory": rep.dataset.root, "files": rep.dataset.files,
                   "collection": {"source": rep.collection_source, "records_read": rep.collection_rows}},
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def day_rows(rep):
    for d in rep.days:
        p = rep.dataset.people[d.person]
        o = d.outcome
        yield {"person": d.person, "name": p.name, "crew": p.crew, "day": d.day.isoformat(), "kind": d.kind,
               "ok": o.ok, "total": o.total, "rate": pct_num(o.rate), "qualified": o.qualified,
               "adjust": pct_num(o.adjust), "quota": o.quota, "rule": o.rule, "flags": "; ".join(o.flags),
               "records": " ".join(u.job_src for u in d.units)}


def order_rows(rep):
    for s in rep.orders:
        o = s.order
        yield {"order": o.id, "kind": o.kind, "person": o.person, "status": s.status,
               "deadline": o.deadline.isoformat() if o.deadline else "",
               "completed": o.completed.isoformat() if o.completed else "", "days_late": s.days_late,
               "late_deduction": pct_num(s.late_deduction), "meters": len(o.meters),
               "sample_required": s.sample_required, "spot_checked": s.spot.total, "spot_passed": s.spot.ok,
               "spot_rate": pct_num(s.spot.rate), "spot_pass": s.spot.passed,
               "collection_total": s.collection.total, "collection_read": s.collection.ok,
               "collection_rate": pct_num(s.collection.rate), "collection_pass": s.collection.passed,
               "manual_adjustment": pct_num(sum((a.percent for a in s.adjustments), Fraction(0))),
               "samples": " ".join(sorted({sc.sample for _, scs in s.checked.values() for sc in scs if sc.sample})),
               "flags": "; ".join(s.flags), "records": o.src}


def person_rows(rep, which="people"):
    for key, p in getattr(rep, which).items():
        row = {"crew": key} if which == "crews" else {"person": key, "name": p.person.name, "crew": p.person.crew}
        row.update({"days": p.days, "qualified_days": p.qualified_days, "below_quota_days": p.below_quota_days,
                    "maintenance": pct_num(p.maintenance), "orders": p.orders,
                    "late_deduction": pct_num(p.late_deduction), "quality_failures": p.quality_failures,
                    "complaints": pct_num(p.complaints), "manual": pct_num(p.manual), "total": pct_num(p.total)})
        yield row


def complaint_rows(rep):
    for c, applied, note in rep.complaints:
        yield {"complaint": c.id, "person": c.person, "opened": c.opened.isoformat(), "state": c.state,
               "deduction": pct_num(c.deduction), "applied": pct_num(applied), "reason": c.reason, "who": c.who,
               "when": c.when.isoformat() if c.when else "",
               "note": note, "records": c.src}


def adjustment_rows(rep):
    for a in rep.adjustments:
        yield {"person": a.person, "day": a.day.isoformat(), "target": a.target, "percent": pct_num(a.percent),
               "why": a.why, "who": a.who, "when": a.when.isoformat(), "records": a.src}


TABLES = {"days": day_rows, "orders": order_rows, "people": person_rows,
          "crews": lambda rep: person_rows(rep, "crews"), "complaints": complaint_rows,
          "adjustments": adjustment_rows}


def to_dict(rep):
    out = _provenance(rep)
    for name, rows in TABLES.items():
        out[name] = list(rows(rep))
    out["warnings"] = rep.warnings
    return out


def write_json(rep, path):
    pathlib.Path(path).write_text(json.dumps(to_dict(rep), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_csv(rep, directory):
    """One CSV per table; each starts with the same provenance in provenance.csv."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in TABLES.items():
        rows = list(rows(rep))
        path = d / ("%s-%s.csv" % (rep.month, name))
        with open(path, "w", newline="", encoding="utf-8-sig") as f:
            if rows:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        written.append(path)
    prov = _provenance(rep)
    path = d / ("%s-provenance.csv" % rep.month)
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow(["what", "value"])
        w.writerow(["month", rep.month])
        w.writerow(["rules version", rep.rules.version])
        w.writerow(["rules sha256", rep.rules.digest])
        for name, digest in prov["inputs"]["files"].items():
            w.writerow(["input %s sha256" % name, digest or "(absent)"])
        w.writerow(["collection source", rep.collection_source])
        w.writerow(["generated", prov["generated"]])
    written.append(path)
    return written


def print_table(rep, console):
    from rich.table import Table

    console.print("[bold]Maintenance scores 绩效 %s[/]  rules %s  inputs %s  collection %s (%d records)"
                  % (rep.month, rep.rules.ident, rep.dataset.root, rep.collection_source, rep.collection_rows))
    t = Table(title="Per person per day 每人每日采集器维护", title_justify="left")
    for c in ("person 人员", "day 日期", "kind 类型", "ok/total", "rate 成功率", "qualified 合格", "adjust 奖扣",
              "flags"):
        t.add_column(c, justify="right" if c in ("ok/total", "rate 成功率", "adjust 奖扣") else "left")
    for d in rep.days:
        o = d.outcome
        style = "green" if o.adjust > 0 else ("red" if o.adjust < 0 else None)
        t.add_row(rep.dataset.people[d.person].name, d.day.isoformat(), d.kind, "%d/%d" % (o.ok, o.total),
                  pct(o.rate) + ("%" if o.rate is not None else ""), "yes" if o.qualified else "no",
                  "[%s]%s%%[/]" % (style, signed(o.adjust)) if style else signed(o.adjust) + "%",
                  "; ".join(o.flags))
    console.print(t)
    if rep.orders:
        t = Table(title="Orders 工单 (rotation 轮换 / batch 新装批量)", title_justify="left")
        for c in ("order", "kind", "person", "status", "late 超期", "deduct 扣", "spot 抽查", "collection 采集",
                  "flags"):
            t.add_column(c)
        for s in rep.orders:
            t.add_row(s.order.id, s.order.kind, rep.dataset.people[s.order.person].name, s.status,
                      "%d d" % s.days_late, signed(-s.late_deduction) + "%", _q(s.spot), _q(s.collection),
                      "; ".join(s.flags))
        console.print(t)
    t = Table(title="Month per person 月度汇总 (percent points)", title_justify="left")
    for c in ("person", "crew 班组", "days", "qualified", "maint.", "late", "complaints", "manual", "total 合计"):
        t.add_column(c, justify="left" if c in ("person", "crew 班组") else "right")
    for key, p in rep.people.items():
        t.add_row(p.person.name, p.person.crew, str(p.days), str(p.qualified_days), signed(p.maintenance),
                  signed(-p.late_deduction), signed(-p.complaints), signed(p.manual), "[bold]%s[/]" % signed(p.total))
    for key, c in rep.crews.items():
        t.add_row("[italic]crew %s[/]" % key, key, str(c.days), str(c.qualified_days), signed(c.maintenance),
                  signed(-c.late_deduction), signed(-c.complaints), signed(c.manual), "[bold]%s[/]" % signed(c.total))
    console.print(t)
    for w in rep.warnings:
        console.print("[yellow]warning:[/] " + w)


def _q(q):
    if q.total == 0:
        return "-"
    return "%d/%d %s%% %s" % (q.ok, q.total, pct(q.rate), "ok" if q.passed else "[red]FAIL[/]")


# --- explain -------------------------------------------------------------------------------------------------

def explain(rep, what):
    """Lines tracing one figure to its rule and records. what: "PERSON:YYYY-MM-DD" or an order id."""
    head = ["rules %s (%s)" % (rep.rules.ident, rep.rules.path), "inputs %s; collection from %s"
            % (rep.dataset.root, rep.collection_source)]
    if what in rep.dataset.orders:
        for s in rep.orders:
            if s.order.id == what:
                return head + _explain_order(rep, s)
        return head + ["order %s is not scored in %s (completed in another month)" % (what, rep.month)]
    person, _, day = what.partition(":")
    if person not in rep.dataset.people:
        raise KeyError("%r is neither an order nor PERSON:YYYY-MM-DD with a person of crew.csv" % what)
    try:
        day = dt.date.fromisoformat(day)
    except ValueError:
        raise KeyError("%r: give the day as PERSON:YYYY-MM-DD" % what)
    found = [d for d in rep.days if d.person == person and d.day == day]
    if not found:
        return head + ["%s maintained no collector on %s" % (person, day)]
    lines = list(head)
    for d in found:
        o = d.outcome
        kr = rep.rules.kind(d.kind)
        lines.append("%s %s, %s, %s collectors: %d/%d %ss successful, rate %s%%"
                     % (person, rep.dataset.people[person].name, day, d.kind, o.ok, o.total, kr.unit,
                        pct(o.rate)))
        lines.append("  rule: %s; qualified: %s; adjustment %s%% of the day's maintenance pay"
                     % (o.rule, "yes" if o.qualified else "no", signed(o.adjust)))
        lines.append("  quota %d-%d %ss: %s" % (kr.quota_min, kr.quota_max, kr.unit, o.quota))
        for f in o.flags:
            lines.append("  flag: " + f)
        for u in d.units:
            lines.append("  collector %s (%s; meters from %s): %s" % (
                u.collector, u.job_src, "the job row" if u.meters_from == "job" else "the collection records",
                "%d/%d" % (u.ok, u.total) + (" users read" if d.kind == "carrier" else
                                             (" all meters read" if u.ok else " not all meters read"))))
            if not u.meters:
                lines.append("    no meter known: no collection record in the window")
            for meter, read, evidence in u.meters:
                lines.append("    meter %s: %s  %s" % (meter, "read" if read else "NOT read", _evidence(evidence)))
    return lines


def _evidence(evidence):
    return ", ".join("%s %s" % (day, "no record" if c is None else ("yes" if c else "no") + " @" + src)
                     for day, c, src in evidence)


def _explain_order(rep, s):
    o = s.order
    lines = ["%s order %s (%s), person %s, deadline %s, completed %s" % (o.kind, o.id, o.src, o.person,
                                                                         o.deadline or "-", o.completed or "open")]
    if o.kind == "rotation":
        lines.append("  late: %d day(s) x %s%% = %s%%, cap %s%% -> deduction %s%% of the order's rotation pay"
                     % (s.days_late, pct(rep.rules.late_per_day), pct(rep.rules.late_per_day * s.days_late),
                        pct(rep.rules.late_cap), pct(s.late_deduction)))
    lines.append("  sample required: %d of %d meters" % (s.sample_required, len(o.meters)))
    lines.append("  " + s.spot.describe())
    for meter, (passed, scs) in sorted(s.checked.items()):
        lines.append("    meter %s: %s  %s" % (meter, "pass" if passed else "FAIL", ", ".join(
            "%s=%s by %s %s @%s%s" % (sc.item, "pass" if sc.passed else "fail", sc.inspector, sc.day, sc.src,
                                      " sample " + sc.sample if sc.sample else "") for sc in scs)))
    lines.append("  " + s.collection.describe())
    for meter, (read, evidence) in sorted(s.read.items()):
        lines.append("    meter %s: %s  %s" % (meter, "read" if read else "NOT read", _evidence(evidence)))
    for a in s.adjustments:
        lines.append("  manual adjustment %s%% by %s at %s: %s (%s)" % (signed(a.percent), a.who, a.when, a.why,
                                                                        a.src))
    for f in s.flags:
        lines.append("  flag: " + f)
    return lines


# --- HTML ----------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,"Noto Sans CJK SC",sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td.l,th.l{text-align:left}.neg{color:#b00020}.pos{color:#0a7d32}.meta{color:#555;font-size:.9em}
figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.4em}
"""
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _e(x):
    return html.escape(str(x))


def _rate_chart(rep):
    """Success rate per person per day, one coloured line and dots per person, with
    the rule thresholds as dashed lines (each kind's tiers)."""
    w, h, left, right, top, bottom = 760, 320, 48, 170, 16, 36
    first = dt.date.fromisoformat(rep.month + "-01")
    ndays = ((first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - first).days
    x = lambda day: left + (day.day - 1) * (w - left - right) / max(1, ndays - 1)  # noqa: E731
    y = lambda r: top + (100 - r) * (h - top - bottom) / 100  # noqa: E731
    out = ['<svg id="rate-chart" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" '
           'aria-label="success rate per person per day">' % (w, h)]
    for r in range(0, 101, 20):
        out.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%d%%</text>' % (left - 6, y(r) + 4, r))
    out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#999"/>' % (left, y(0), w - right, y(0)))
    for dday in range(1, ndays + 1, 5):
        dd = first.replace(day=dday)
        out.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>'
                   % (x(dd), h - bottom + 16, dd.strftime("%m-%d")))
    thresholds = {}
    for kind in ("wireless", "carrier"):
        for t in rep.rules.kind(kind).tiers:
            thresholds.setdefault(t.at_least, []).append(kind)
    for at, kinds in sorted(thresholds.items()):
        out.append('<line class="threshold" x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#888" '
                   'stroke-dasharray="6 3"/>' % (left, y(float(at)), w - right, y(float(at))))
        out.append('<text class="threshold-label" x="%d" y="%.1f" font-size="10" fill="#666">%s%% %s</text>'
                   % (w - right + 4, y(float(at)) + 3, pct(at), ", ".join(kinds)))
    people = sorted({d.person for d in rep.days})
    for i, pid in enumerate(people):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(d.day, float(d.outcome.rate), d) for d in rep.days if d.person == pid and d.outcome.rate is not None]
        if len(pts) > 1:
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (
                colour, " ".join("%.1f,%.1f" % (x(dd), y(r)) for dd, r, _ in pts)))
        for dd, r, d in pts:
            out.append('<circle class="point" cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s %s %s %d/%d = %s%%, '
                       '%s%%</title></circle>' % (x(dd), y(r), colour, _e(rep.dataset.people[pid].name), dd,
                                                  d.kind, d.outcome.ok, d.outcome.total, pct(d.outcome.rate),
                                                  signed(d.outcome.adjust)))
        out.append('<text class="legend" x="%d" y="%d" font-size="11" fill="%s">%s</text>'
                   % (w - right + 4, h - bottom - 12 * (len(people) - i), colour, _e(rep.dataset.people[pid].name)))
    out.append("</svg>")
    return "\n".join(out)


def _adjust_chart(rep):
    """Net percent points per person, split by source, as bars either side of zero."""
    parts = [("maintenance", "#2ca02c", lambda p: p.maintenance), ("late", "#ff7f0e", lambda p: -p.late_deduction),
             ("complaints", "#d62728", lambda p: -p.complaints), ("manual", "#9467bd", lambda p: p.manual)]
    people = list(rep.people.values())
    row, left, w = 26, 170, 760
    h = 40 + row * max(1, len(people))
    span = max([1.0] + [abs(float(f(p))) for p in people for _, _, f in parts] + [abs(float(p.total)) for p in people])
    zero = left + (w - left - 80) / 2
    scale = (w - left - 80) / 2 / span
    out = ['<svg id="adjust-chart" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" '
           'aria-label="deductions and bonuses per person">' % (w, h)]
    out.append('<line x1="%.1f" y1="10" x2="%.1f" y2="%d" stroke="#999"/>' % (zero, zero, h - 20))
    for i, p in enumerate(people):
        y0 = 14 + i * row
        out.append('<text x="%d" y="%d" font-size="12" text-anchor="end">%s</text>'
                   % (left - 8, y0 + 13, _e(p.person.name)))
        bh = (row - 8) / len(parts)
        for j, (name, colour, f) in enumerate(parts):
            v = float(f(p))
            if v == 0:
                continue
            x0 = zero if v > 0 else zero + v * scale
            out.append('<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: '
                       '%s%%</title></rect>' % (x0, y0 + j * bh, abs(v) * scale, bh, colour, _e(p.person.name), name,
                                               signed(f(p))))
        out.append('<text x="%d" y="%d" font-size="12">%s%%</text>' % (w - 70, y0 + 13, signed(p.total)))
    for j, (name, colour, _) in enumerate(parts):
        out.append('<text x="%d" y="%d" font-size="11" fill="%s">%s</text>' % (left + j * 110, h - 4, colour, name))
    out.append("</svg>")
    return "\n".join(out)


def _html_table(rows, tid, left=(), signed_cols=()):
    rows = list(rows)
    if not rows:
        return '<p id="%s">none</p>' % tid
    cols = list(rows[0])
    out = ['<table id="%s"><thead><tr>%s</tr></thead><tbody>' % (
        tid, "".join('<th class="%s">%s</th>' % ("l" if c in left else "", _e(c)) for c in cols))]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cls = "l" if c in left else ""
            if isinstance(v, (int, float)) and not isinstance(v, bool) and c in signed_cols:
                cls += " neg" if v < 0 else (" pos" if v > 0 else "")
            cells.append('<td class="%s">%s</td>' % (cls.strip(), _e("" if v is None else v)))
        out.append("<tr>%s</tr>" % "".join(cells))
    out.append("</tbody></table>")
    return "\n".join(out)


def write_html(rep, path):
    prov = _provenance(rep)
    files = ", ".join("%s %s" % (n, (d or "absent")[:12]) for n, d in rep.dataset.files.items())
    left = ("person", "name", "crew", "day", "kind", "rule", "flags", "records", "order", "status", "reason",
            "note", "why", "who", "target", "state", "samples", "complaint", "opened", "when", "quota")
    days = [{k: r[k] for k in ("name", "day", "kind", "ok", "total", "rate", "qualified", "adjust", "quota", "rule",
                               "flags")} for r in day_rows(rep)]
    body = [
        "<h1>Maintenance scores 绩效考核 %s</h1>" % _e(rep.month),
        '<p class="meta" id="provenance">Rules 规则 <b>%s</b> (sha256 %s) &middot; inputs %s (%s) &middot; collection '
        'from %s, %d records &middot; generated %s</p>' % (_e(rep.rules.version), _e(rep.rules.digest[:12]),
                                                           _e(rep.dataset.root), _e(files),
                                                           _e(rep.collection_source), rep.collection_rows,
                                                           _e(prov["generated"])),
        "<h2>Month per person 月度汇总</h2>",
        "<p class=\"meta\">Percent points: maintenance = sum of the daily bonuses/deductions (each on that day's "
        "maintenance pay), late = rotation lateness (on each order's pay), complaints, manual adjustments.</p>",
        _html_table(person_rows(rep), "people", left, ("maintenance", "manual", "total")),
        _html_table(person_rows(rep, "crews"), "crews", left, ("maintenance", "manual", "total")),
        "<figure><figcaption>Success rate per person per day 每人每日采集成功率 (dashed: rule thresholds)"
        "</figcaption>%s</figure>" % _rate_chart(rep),
        "<figure><figcaption>Bonuses and deductions per person 奖励与扣除</figcaption>%s</figure>" % _adjust_chart(rep),
        "<h2>Per person per day 每人每日</h2>", _html_table(days, "days", left, ("adjust",)),
        "<h2>Orders 工单</h2>", _html_table(order_rows(rep), "orders", left),
        "<h2>Complaints 投诉</h2>", _html_table(complaint_rows(rep), "complaints", left),
        "<h2>Manual adjustments 人工调整</h2>", _html_table(adjustment_rows(rep), "adjustments", left, ("percent",)),
    ]
    if rep.warnings:
        body.append("<h2>Warnings</h2><ul id=\"warnings\">%s</ul>" % "".join("<li>%s</li>" % _e(w)
                                                                            for w in rep.warnings))
    doc = ('<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8"><title>Metergate scores %s</title>'
           '<style>%s</style></head><body>\n%s\n</body></html>\n' % (_e(rep.month), CSS, "\n".join(body)))
    pathlib.Path(path).write_text(doc, encoding="utf-8")
