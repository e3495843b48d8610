"""Site files generated for the reliability tests (issue 4): many meters on one
bus, in the format of docs/site-format.md, validated by the simulator's loader.

``site_text(...)`` returns the TOML; ``write_site(path, ...)`` writes it and
returns ``(path, Site)`` (loading it, so a bad file fails here, not in the
simulator process).
"""

import random

from metergate.sim.site import load_site

BUS_BAUD = 2400  # the default; site_text(baud=...) changes it


def _meter_plan(n, n_three_phase, n_1997, n_modbus):
    """[(protocol, kind, model, extra)] for n meters: mostly DL/T 645-2007 single-phase."""
    plan = []
    for _ in range(n_three_phase):
        plan.append(("dlt645-2007", "three-phase-4w", "generic-2007", {}))
    for _ in range(n_1997):
        plan.append(("dlt645-1997", "single-phase", "generic-1997", {"baud": 1200}))
    for _ in range(n_modbus):
        plan.append(("modbus", "single-phase", "sdm120", {}))
    while len(plan) < n:
        plan.append(("dlt645-2007", "single-phase", "generic-2007", {}))
    if len(plan) > n:
        raise ValueError("more special meters than meters")
    # spread the special ones over the bus (not all at the start of a round)
    out = [None] * n
    specials = [p for p in plan if p[1] != "single-phase" or p[0] != "dlt645-2007"]
    plain = [p for p in plan if p not in specials]
    step = max(1, n // max(1, len(specials)))
    k = 0
    for p in specials:
        while out[k % n] is not None:
            k += 1
        out[k % n] = p
        k += step
    it = iter(plain)
    return [p if p is not None else next(it) for p in out]


def site_text(n=32, n_three_phase=3, n_1997=2, n_modbus=2, seed=4, name="Reliability block",
              delay_ms=(30, 80), faults=(), extra_meters=(), baud=BUS_BAUD):
    """TOML of a site with `n` meters in one box on one bus at `baud` 8E1 (the
    DL/T 645-1997 meters keep their factory 1200 baud).

    Meter ids are m01..mNN; DL/T 645 addresses 2023000000NN (1997: 0000000000NN),
    Modbus unit ids 11, 12, ... Each meter feeds one customer through one
    breaker (a load from 0.2 to 3 kW, three-phase 3 to 12 kW) and appears in
    the work order. `faults`: TOML tables (strings, without the header) appended
    as [[faults]]. `extra_meters`: {field: value} dicts merged into meter k
    (k = 1-based index in `extra_meters[i]["index"]`), e.g. to give two meters
    one address."""
    rng = random.Random(seed)
    plan = _meter_plan(n, n_three_phase, n_1997, n_modbus)
    overrides = {e["index"]: {k: v for k, v in e.items() if k != "index"} for e in extra_meters}
    out = ['[site]', 'name = "%s"' % name, '',
           '[[buses]]', 'name = "rs485-1"', 'baud = %d' % baud, 'parity = "E"', '',
           '[[boxes]]', 'id = "MB-1"', 'positions = %d' % n, '']
    unit = 11
    for k, (protocol, kind, model, extra) in enumerate(plan, 1):
        mid = "m%02d" % k
        fields = {"id": mid, "position": k, "protocol": protocol, "model": model, "kind": kind,
                  "response_delay_ms": rng.randint(*delay_ms)}
        if kind == "single-phase":
            fields["phase"] = "abc"[k % 3]
        if protocol == "modbus":
            fields["unit_id"] = unit
            unit += 1
        elif protocol == "dlt645-1997":
            fields["address"] = "%012d" % k
        else:
            fields["address"] = "2023%08d" % k
        fields.update(extra)
        fields.update(overrides.get(k, {}))
        out.append("[[meters]]")
        for key, value in fields.items():
            out.append("%s = %s" % (key, _toml(value)))
        out.append("[meters.energy]")
        out.append("forward_kwh = %.2f" % rng.uniform(10, 9000))
        out.append("")
    for k, (_protocol, kind, _model, _extra) in enumerate(plan, 1):
        kw = rng.uniform(3, 12) if kind.startswith("three") else rng.uniform(0.2, 3)
        out += ['[[customers]]', 'id = "c%02d"' % k, 'kw = %.2f' % kw, 'pf = %.2f' % rng.uniform(0.8, 1.0), '',
                '[[breakers]]', 'id = "QF%02d"' % k, 'position = %d' % k, 'customer = "c%02d"' % k, '']
    for fault in faults:
        out += ["[[faults]]", fault.strip(), ""]
    return "\n".join(out) + "\n"


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"%s"' % value


def write_site(path, **kwargs):
    """Write site_text(**kwargs) to `path`; returns (path, the loaded Site)."""
    path.write_text(site_text(**kwargs))
    return path, load_site(path)
