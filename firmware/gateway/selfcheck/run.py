# The installation self-check as the gateway runs it (docs/selfcheck.md): the
# bus, the link to every meter, each meter's identity against the work order,
# the wiring (gateway/selfcheck/electrical.py judges what is read here), the
# guided breaker test and the gateway's own supply. Findings come from the
# catalogue (gateway/selfcheck/findings.py).
#
# Everything here runs as one job of the runtime's bus task (or standalone on
# the serial console): it owns the bus while it runs. It is imported only for a
# check and dropped again (about 50 KB of code on the unix port).
#
# Link classification over a sample of reads (PROTOCOLS.md, "RS-485 faults"):
# all valid: healthy; some errors below DUPLICATE_PCT: intermittent (loose
# contact, noise); bytes but (nearly) never a clean frame that no line setting
# or inversion fixes: two meters on one address; nothing at all: the search
# (inverted, other baud/parity, the other DL/T 645 version) says why, else no
# response. Thresholds are engineering choices, kept in the config.
import json

from gateway import link as lk
from gateway import meters as mt
from gateway.compat import sleep_ms, ticks_diff, ticks_ms
from gateway.protocols import dlt645, dlt645_1997, dlt645_items
from gateway.selfcheck import electrical
from gateway.selfcheck.findings import finding

DEFAULTS = {
    "sample": 20,  # reads per meter for the error rate
    "duplicate_pct": 50,  # garbled replies at or above: two meters answer one address
    "energy_window_s": 60,  # reverse energy must rise over this long to count
    "idle_listen_ms": 1000,  # listening for junk while nobody talks
    "supply_min_v": 4.5,  # the gateway's supply (5 V boards) below this: low
    "probe_timeout_ms": 500,  # PROTOCOLS.md: wait >= 500 ms for each search probe
}

# PROTOCOLS.md, "Baud / parity search": DL/T 645 at 8E1, Modbus at N or E
_DLT_SEARCH = ((2400, "E"), (1200, "E"), (4800, "E"), (9600, "E"), (19200, "E"))
_MODBUS_SEARCH = ((9600, "N"), (2400, "N"), (9600, "E"), (2400, "E"))
DEAD_AFTER = 3  # reads without one clean frame before the sample gives up on a meter
_PHASE_CURRENTS = {"single-phase": ("current",), "three-phase-4w": ("current_a", "current_b", "current_c"),
                   "three-phase-3w": ("current_a", "current_c")}
_SEVERITY_RANK = {"fault": 3, "warning": 2, "info": 1}
BUS = "rs485"


def settings(cfg):
    """The self-check settings: DEFAULTS overridden by the config's "selfcheck" section."""
    s = dict(DEFAULTS)
    sec = cfg.get("selfcheck") if isinstance(cfg, dict) else None
    if isinstance(sec, dict):
        for k in DEFAULTS:
            if k in sec:
                s[k] = sec[k]
    return s


def line_text(baud, parity, invert=False):
    return "%d 8%s1%s" % (baud, parity, " inverted" if invert else "")


class Context:
    """What a check needs: the link, the HAL, the meters, the settings, and where
    progress goes. Built by the runtime, or by standalone() on the console."""

    def __init__(self, hal, link, meters, cfg, device, resets=(), progress=None, beat=None):
        self.hal = hal
        self.link = link
        self.meters = meters
        self.s = settings(cfg)
        self.device = device
        self.resets = list(resets)
        self.progress = progress
        self.beat = beat  # called while waiting: the watchdog sees the check is alive
        self.run = 0

    def step(self, step, meter, done, total):
        if self.progress is not None:
            self.progress({"device": self.device, "run": self.run, "step": step, "meter": meter,
                           "done": done, "total": total})

    async def wait(self, ms):
        end = ticks_ms()
        while ms > 0:
            k = ms if ms < 1000 else 1000
            await sleep_ms(k)
            ms -= k
            if self.beat is not None:
                self.beat()
        return ticks_diff(ticks_ms(), end)


# -- one read, any line setting -------------------------------------------------

def _probe_di(m, version):
    return 0x04000401 if version == 2007 else 0xC032


async def _dlt_read(ctx, m, di, version=None, line=None, invert=None, address=None, timeout=None, fn=None):
    """(link result, frame or None) of one DL/T 645 read with the given line settings
    (default: the meter's). The meter's counters are not touched: the check keeps its own."""
    version = version or m.version
    baud, parity = line if line is not None else (m.line[0], m.line[1])
    ctx.link.configure(baud, parity, 8, 1, m.invert if invert is None else invert)
    addr = m.address if address is None else address
    if fn == dlt645.FN_READ_ADDRESS:
        req = dlt645.build_read_address()
        di = None
    elif version == 2007:
        req = dlt645.build_read(addr, di)
        fn = dlt645.FN_READ
    else:
        req = dlt645_1997.build_read(addr, di)
        fn = dlt645_1997.FN_READ
    res = await ctx.link.dlt645_async(req, addr, fn, di, None, timeout or m.timeout_ms, m.byte_timeout_ms, 0)
    return res, (ctx.link.frame if res == lk.OK else None)


async def _modbus_read(ctx, m, line=None, invert=None):
    """Link result of one read of the meter's first planned Modbus request."""
    baud, parity = line if line is not None else (m.line[0], m.line[1])
    ctx.link.configure(baud, parity, 8, m.line[3], m.invert if invert is None else invert)
    reads, requests, _bad = m.plans[0]
    if not reads:
        return lk.BAD_FRAME
    rd = reads[0]
    return await ctx.link.modbus_async(requests[0], m.unit, rd.function, rd.count, None, m.timeout_ms,
                                       m.byte_timeout_ms, 0)


async def _probe(ctx, m, line=None, invert=None, version=None, timeout=None):
    if isinstance(m, mt.DltMeter):
        v = version or m.version
        return (await _dlt_read(ctx, m, _probe_di(m, v), v, line, invert, timeout=timeout))[0]
    return await _modbus_read(ctx, m, line, invert)


# -- link -------------------------------------------------------------------------

async def _sample(ctx, m, c=None, give_up=True):
    """{"sent", "valid", "timeout", "bad_checksum", "bad_frame"} over the sample
    (continuing counters c). give_up: stop after DEAD_AFTER reads without one
    clean frame (the search says why; a full sample would only cost time)."""
    if c is None:
        c = {"sent": 0, "valid": 0, "timeout": 0, "bad_checksum": 0, "bad_frame": 0}
    while c["sent"] < int(ctx.s["sample"]):
        res = await _probe(ctx, m)
        c["sent"] += 1
        c[("valid", "timeout", "bad_checksum", "bad_frame")[res] if 0 <= res <= 3 else "bad_frame"] += 1
        if give_up and c["valid"] == 0 and c["sent"] >= DEAD_AFTER:
            break
    return c


async def _search(ctx, m):
    """For a meter that gave no clean frame: what makes it answer, as
    ("invert", None) / ("line", (baud, parity, invert)) / ("version", v) / (None, None)."""
    t = int(ctx.s["probe_timeout_ms"])
    if await _probe(ctx, m, invert=not m.invert, timeout=t) == lk.OK:
        return "invert", None
    own = (m.line[0], m.line[1])
    table = _DLT_SEARCH if isinstance(m, mt.DltMeter) else _MODBUS_SEARCH
    for line in table:
        for inv in (False, True):
            if line == own and inv == m.invert:
                continue  # what the sample already tried
            if line == own and inv != m.invert:
                continue  # the inversion above
            ctx.step("search", m.id, 0, 0)
            if await _probe(ctx, m, line=line, invert=inv, timeout=t) == lk.OK:
                return "line", (line[0], line[1], inv)
    if isinstance(m, mt.DltMeter):
        other = 1997 if m.version == 2007 else 2007
        for line in ((1200, "E"), (2400, "E")) if other == 1997 else ((2400, "E"), (9600, "E"), (1200, "E")):
            if await _probe(ctx, m, line=line, version=other, timeout=t) == lk.OK:
                return "version", other
    return None, None


async def check_link(ctx, m, out):
    """Link findings for one meter; returns (answers, sample counters, needed inversion)."""
    c = await _sample(ctx, m)
    what = how = None
    if c["valid"] == 0:
        what, how = await _search(ctx, m)
        if what is None:  # nothing else makes it answer: the whole sample at its own setting
            c = await _sample(ctx, m, c, give_up=False)
    errors = c["sent"] - c["valid"]
    garbled = c["bad_checksum"] + c["bad_frame"]
    addr = dlt645.wire_to_address(m.address) if isinstance(m, mt.DltMeter) else str(m.unit)
    if what == "invert":
        return True, c, True  # A/B: judged once every meter is known (gateway or this meter)
    if what == "line":
        found = line_text(how[0], how[1], how[2])
        out.append(finding("LINK-LINE-SETTINGS", m.id, m.position, dict(c, found=found), found=found,
                           expected=line_text(m.line[0], m.line[1], m.invert)))
        return False, c, False
    if what == "version":
        found = "dlt645-%d" % how
        out.append(finding("LINK-PROTOCOL-VERSION", m.id, m.position, dict(c, found=found), found=found,
                           expected=m.protocol))
        return False, c, False
    if c["valid"] and errors == 0:
        return True, c, False
    if c["valid"] and garbled * 100 < int(ctx.s["duplicate_pct"]) * c["sent"]:
        out.append(finding("LINK-INTERMITTENT", m.id, m.position, c, polls=c["sent"], errors=errors,
                           rate_pct=round(errors * 100 / c["sent"], 1)))
        return True, c, False
    if garbled:
        out.append(finding("LINK-DUPLICATE-ADDRESS", m.id, m.position, c, bus=BUS, address=addr))
        return False, c, False
    out.append(finding("LINK-NO-RESPONSE", m.id, m.position, c, address=addr, polls=c["sent"]))
    return False, c, False


async def idle_junk(ctx, out):
    ms = int(ctx.s["idle_listen_ms"])
    if not ctx.meters or ms <= 0:
        return
    m = ctx.meters[0]
    ctx.link.configure(m.line[0], m.line[1], 8, m.line[3], m.invert)
    ctx.link.drain()
    await ctx.wait(ms)
    n = ctx.link.drain()
    if n:
        out.append(finding("LINK-IDLE-JUNK", None, None, {"bytes": n, "ms": ms}, bus=BUS, seconds=ms / 1000,
                           bytes=n))


# -- identity ---------------------------------------------------------------------

def _text(v):
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode()
    return str(v).strip().strip("\x00").strip()


async def check_identity(ctx, m, out):
    """The meter's asset number (DL/T 645-2007 04000403; 1997: meter number C032)
    against the work order's `asset` for its position."""
    if m.asset is None:
        return
    if not isinstance(m, mt.DltMeter):
        out.append(finding("CHECK-SKIPPED", m.id, m.position, {}, check="identity",
                           reason="no asset register in Modbus model"))
        return
    di = 0x04000403 if m.version == 2007 else 0xC032
    res, f = await _dlt_read(ctx, m, di)
    if res != lk.OK or f.abnormal:
        out.append(finding("CHECK-SKIPPED", m.id, m.position, {"result": lk.result_name(res)}, check="identity",
                           reason="asset number not readable"))
        return
    try:
        found = _text(dlt645_items.decode_item(di, f.item_data(), m.version))
    except ValueError as exc:
        out.append(finding("CHECK-SKIPPED", m.id, m.position, {}, check="identity",
                           reason="asset number: %s" % exc))
        return
    if found != m.asset:
        out.append(finding("ID-WRONG-METER", m.id, m.position, {"expected": m.asset, "found": found},
                           expected=m.asset, found=found))


async def discover(ctx, out, answered):
    """A bus configured with one DL/T 645 meter: ask whoever is there for its
    address (fn 13 to AAAAAAAAAAAA). Another address there: a meter the work order
    does not know (or, when the configured one is silent, the meter actually
    installed); garbled replies: more than one meter answers."""
    if len(ctx.meters) != 1 or not isinstance(ctx.meters[0], mt.DltMeter):
        return
    m = ctx.meters[0]
    res, f = await _dlt_read(ctx, m, None, 2007, address=dlt645.WILDCARD, fn=dlt645.FN_READ_ADDRESS,
                             timeout=int(ctx.s["probe_timeout_ms"]))
    configured = dlt645.wire_to_address(m.address)
    if res == lk.OK and f is not None:
        found = dlt645.wire_to_address(f.address)
        if found == configured:
            return
        ev = {"configured": configured, "found": found}
        if answered:
            out.append(finding("ID-UNEXPECTED-METER", None, None, ev, found=found))
        else:
            out.append(finding("ID-ADDRESS-DISCOVERED", m.id, m.position, ev, bus=BUS, address=found))
    elif res in (lk.BAD_CHECKSUM, lk.BAD_FRAME):
        out.append(finding("ID-UNEXPECTED-METER", None, None, {"configured": configured,
                                                               "broadcast": lk.result_name(res)},
                           found="2+ (the broadcast read collides)"))


# -- electrical ---------------------------------------------------------------------

async def read_items(ctx, m, names):
    """{item: value} of what the meter answers, for the electrical diagnosis; a
    failed item is left out (the diagnosis then says what it could not judge)."""
    got = {}
    if isinstance(m, mt.DltMeter):
        slot = 0 if m.version == 2007 else 1
        for name in names:
            alias = mt.ITEM_ALIASES.get(name)
            di = alias[slot] if alias is not None else name
            if di is None:
                continue
            try:
                di_int = int(di, 16)
                info = dlt645_items.item_info(di, m.version)
            except (ValueError, dlt645.DLT645Error):
                continue
            res, f = await _dlt_read(ctx, m, di_int)
            if res != lk.OK or f.abnormal:
                continue
            try:
                if info["kind"] == "number" and not info["block"]:
                    mag, dec = dlt645_items.decode_scaled(di_int, f.item_data(), m.version)
                    got[name] = mt.Num(mag, dec)
                else:
                    got[name] = dlt645_items.decode_item(di_int, f.item_data(), m.version)
            except ValueError:
                continue
        return got
    cfg = {"id": m.id, "protocol": "modbus", "model": m.model_key, "unit_id": m.unit,
           "baud": m.line[0], "parity": m.line[1], "stop_bits": m.line[3],
           "items": [n for n in names if n in mt.ITEM_ALIASES]}
    tmp = mt.build(cfg)
    mt.forget_profiles()
    tmp.invert = m.invert
    values, _errors = await tmp.poll(ctx.link, 0)
    for name in values:
        got[name] = values[name][0]
    return got


def _expect(m):
    return {"exporting": bool(m.exporting)}


def _current(readings, kind):
    total = 0.0
    seen = False
    for name in _PHASE_CURRENTS.get(kind, ("current",)):
        v = readings.get(name)
        if v is not None:
            total += abs(float(v))
            seen = True
    return total if seen else None


# -- gateway --------------------------------------------------------------------------

def check_gateway(ctx, out):
    supply = getattr(ctx.hal, "supply_voltage", None)
    v = supply() if supply is not None else None
    if v is None:
        out.append(finding("CHECK-SKIPPED", None, None, {}, check="gateway_supply",
                           reason="no supply ADC on this board"))
    elif v < float(ctx.s["supply_min_v"]):
        out.append(finding("GW-SUPPLY-LOW", None, None, {"voltage": round(v, 2)}, voltage=round(v, 2),
                           minimum=ctx.s["supply_min_v"]))
    n = ctx.resets.count("brownout")
    if n:
        out.append(finding("GW-BROWNOUT-RESETS", None, None, {"resets": ctx.resets}, resets=", ".join(ctx.resets),
                           count=n))


# -- the whole check ------------------------------------------------------------------

async def check(ctx, mode="full", only=None):
    """The report (docs/selfcheck.md) of a full check of every meter (or `only`)."""
    started = ctx.hal.time()
    t0 = ticks_ms()
    out = []
    meters = [m for m in ctx.meters if only is None or m.id == only]
    total = len(meters)
    ctx.step("bus", None, 0, total)
    await idle_junk(ctx, out)
    ok = {}
    counts = {}
    inverted = []
    for k in range(total):
        m = meters[k]
        ctx.step("link", m.id, k, total)
        answers, c, inv = await check_link(ctx, m, out)
        counts[m.id] = c
        ok[m.id] = answers
        if inv:
            inverted.append(m)
    answering = [m for m in meters if ok[m.id]]
    if inverted and len(inverted) == len(answering) and len(meters) > 1:
        # every meter that answers needs the line inverted: the pair is swapped at the gateway,
        # and working inverted is safe for all of them
        out.append(finding("LINK-AB-SWAPPED-GATEWAY", None, None, {"meters": [m.id for m in inverted]}, bus=BUS))
        for m in ctx.meters:
            m.invert = not m.invert
    else:
        for m in inverted:  # one meter's pair: that meter's transactions run inverted
            out.append(finding("LINK-AB-SWAPPED", m.id, m.position, counts[m.id]))
            m.invert = not m.invert
    if only is None:
        await discover(ctx, out, bool(answering))
    first = {}
    t_first = ticks_ms()
    for k in range(total):
        m = meters[k]
        if not ok[m.id]:
            continue
        ctx.step("identity", m.id, k, total)
        await check_identity(ctx, m, out)
        ctx.step("electrical", m.id, k, total)
        first[m.id] = await read_items(ctx, m, electrical.needed_items(m.kind, m.protocol))
    window_ms = int(float(ctx.s["energy_window_s"]) * 1000)
    if first and window_ms > 0:
        left = window_ms - ticks_diff(ticks_ms(), t_first)
        if left > 0:
            ctx.step("energy_window", None, 0, total)
            await ctx.wait(left)
    for k in range(total):
        m = meters[k]
        if m.id not in first:
            continue
        earlier = None
        readings = first[m.id]
        if window_ms > 0:
            t1 = ticks_ms()
            later = await read_items(ctx, m, ("energy_forward", "energy_reverse"))
            earlier = dict(readings)
            earlier["elapsed_s"] = ticks_diff(t1, t_first) / 1000
            readings = dict(readings)
            readings.update(later)
        ctx.step("judge", m.id, k, total)
        out.extend(electrical.diagnose(m.kind, readings, _expect(m), earlier, m.id, m.position))
    check_gateway(ctx, out)
    return report(ctx, mode, started, ticks_diff(ticks_ms(), t0), meters, counts, out)


def report(ctx, mode, started, elapsed_ms, meters, counts, out):
    summary = {"fault": 0, "warning": 0, "info": 0}
    status = {}
    for f in out:
        summary[f["severity"]] = summary.get(f["severity"], 0) + 1
        mid = f.get("meter")
        if mid is not None and _SEVERITY_RANK.get(f["severity"], 0) > _SEVERITY_RANK.get(status.get(mid), 0):
            status[mid] = f["severity"]
    per = {}
    for m in meters:
        d = {"position": m.position, "protocol": m.protocol, "status": status.get(m.id, "ok")}
        if m.id in counts:
            d["sample"] = counts[m.id]
        per[m.id] = d
    from gateway import VERSION

    return {"device": ctx.device, "run": ctx.run, "mode": mode, "fw": VERSION, "started": started,
            "ts": ctx.hal.time(), "duration_s": elapsed_ms // 1000, "summary": summary, "meters": per,
            "findings": out}


# -- guided breaker test ------------------------------------------------------------------

class Correspondence:
    """The guided breaker test: currents at the start, then after each breaker is
    switched off, which meter's current dropped."""

    DROP = 0.5  # a meter "dropped" when its current fell by at least half...
    GATE_A = 0.05  # ...and by more than the no-load gate (PROTOCOLS.md: max(0.05 A, 1 % Ib))
    TRIES = 3  # reads of a meter's current before it counts as unread (one lost reply is no verdict)

    def __init__(self):
        self.baseline = None
        self.findings = []
        self.steps = []

    async def currents(self, ctx):
        cur = {}
        for m in ctx.meters:
            names = _PHASE_CURRENTS.get(m.kind, ("current",))
            for _ in range(self.TRIES):
                v = _current(await read_items(ctx, m, names), m.kind)
                if v is not None:
                    cur[m.id] = round(v, 3)
                    break
        return cur

    async def baseline_step(self, ctx):
        self.baseline = await self.currents(ctx)
        self.findings = []
        self.steps = []
        return {"currents": self.baseline}

    async def off_step(self, ctx, position):
        if self.baseline is None:
            raise ValueError("take the baseline first (step: baseline)")
        now = await self.currents(ctx)
        dropped = []
        unread = [mid for mid in self.baseline if mid not in now]
        for mid in self.baseline:
            b = self.baseline[mid]
            a = now.get(mid)
            if a is None:
                continue
            if b - a > self.GATE_A and a <= b * (1 - self.DROP):
                dropped.append(mid)
        at = [m for m in ctx.meters if m.position == position]
        expected = at[0].id if at else None
        f = None
        if unread and (not dropped or expected in unread):
            # a meter that did not answer may be the one that dropped: no verdict on this breaker
            f = finding("CORR-CURRENT-UNREAD", expected, position, {"before": self.baseline, "after": now},
                        meters=", ".join(unread))
        elif not dropped:
            f = finding("CORR-NO-CURRENT-DROP", expected, position, {"before": self.baseline, "after": now})
        elif expected not in dropped or len(dropped) > 1:
            other = [mid for mid in dropped if mid != expected] or dropped
            mo = [m for m in ctx.meters if m.id == other[0]][0]
            f = finding("CORR-BREAKER-MISMATCH", expected, position, {"dropped": dropped, "before": self.baseline,
                                                                    "after": now},
                        found=mo.id, found_position=mo.position)
        if f is not None:
            self.findings.append(f)
        self.steps.append({"position": position, "dropped": dropped})
        return {"position": position, "dropped": dropped, "currents": now, "finding": f}


# -- on the serial console -------------------------------------------------------------------

def standalone(mode="full", meter=None, config="config.json"):
    """Run a check from the REPL (the app stopped): the board's config and HAL,
    progress and report on the console (PROGRESS / SELFCHECK lines), the report
    stored as selfcheck.json."""
    import asyncio

    from gateway import config as cf
    from gateway.hal import for_this_board

    cfg, errors, source = cf.load(cf.FlashFiles(), (config,), cf.GOOD)
    for where, reason in errors:
        print("[selfcheck] config: %s: %s" % (where, reason))
    hal = for_this_board(cfg)
    link = lk.Link(hal.uart(), hal.ticks_ms, hal.sleep_ms, echo=bool((cfg.get("link") or {}).get("echo", False)))
    defaults = dict(cfg.get("link") or {})
    meters = []
    for entry in cfg.get("meters") or []:
        try:
            meters.append(mt.build(entry, defaults))
        except Exception as exc:  # noqa: BLE001 - the check runs on the meters it can build
            print("[selfcheck] meter skipped: %s" % exc)
    mt.forget_profiles()
    cfg["meters"] = None

    def progress(p):
        print("PROGRESS " + json.dumps(p))

    ctx = Context(hal, link, meters, cfg, hal.device_id(), (hal.reset_cause(),), progress)
    try:
        rep = asyncio.run(check(ctx, mode, meter))
    finally:
        hal.release()
    store(hal, rep)
    print("SELFCHECK " + json.dumps(rep))
    return rep


def store(hal, rep):
    """The last report on the flash (selfcheck.json; tmp + rename)."""
    import os

    path = hal.flash_path("selfcheck.json")
    with open(path + ".tmp", "w") as f:
        json.dump(rep, f)
    try:
        os.rename(path + ".tmp", path)
    except OSError:
        os.remove(path)
        os.rename(path + ".tmp", path)
