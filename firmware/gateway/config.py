# The device config: validation against gateway/config_schema.py (by hand,
# the JSON Schema subset that file names), the checks a schema cannot say,
# defaults, the poll budget, and SAFE MODE loading. Pure: files come in as
# an object (FlashFiles wraps open/os for main.py), so the tests run under
# CPython and the MicroPython unix port alike. Docs: docs/gateway-config.md.
#
#   validate(cfg)        -> [(path, reason)], e.g. ("meters[2].address", "needs 12 digits")
#   with_defaults(cfg)   -> a copy with the schema's defaults filled in
#   fill_defaults(cfg)   -> the same, into cfg itself (the board: one config, not two)
#   poll_budget(cfg)     -> {"utilisation": 0.42, ..., "error": None | "the schedule needs ..."}
#   load(files, ...)     -> (config, errors, source); never raises
#
# Memory: errors are built only when found (paths are a stack of parts
# joined on error), at most MAX_ERRORS of them; nothing else is copied. At
# boot load() is the board's heap peak: see its docstring.
from gateway.config_schema import SCHEMA, PATTERN_REASONS

CONFIG = "config.json"
GOOD = "config.good.json"
MAX_ERRORS = 40
DLT = ("dlt645-2007", "dlt645-1997")
COLLECTOR_TIMEOUT_MS = 2000
_LINE_DEFAULT = {"dlt645-2007": 2400, "dlt645-1997": 1200}


class _Full(Exception):
    pass


# ---- pattern subset ----------------------------------------------------------

_compiled = {}


def _compile(p):
    """'^[0-9]{12}$' -> [(test, lo, hi)]: test None (any char) or
    (negated, ((first, last), ...)); hi -1 is unbounded."""
    if len(p) < 2 or p[0] != "^" or p[-1] != "$":
        raise ValueError("pattern must be ^...$: " + p)
    atoms = []
    i, n = 1, len(p) - 1
    while i < n:
        c = p[i]
        if c == "[":
            i += 1
            neg = p[i] == "^"
            if neg:
                i += 1
            ranges = []
            first = True
            while p[i] != "]" or first:
                first = False
                a = p[i]
                if a == "\\":
                    i += 1
                    a = p[i]
                if p[i + 1] == "-" and p[i + 2] != "]":
                    b = p[i + 2]
                    if b == "\\":
                        i += 1
                        b = p[i + 2]
                    ranges.append((a, b))
                    i += 3
                else:
                    ranges.append((a, a))
                    i += 1
            i += 1
            test = (neg, tuple(ranges))
        elif c == ".":
            test = None
            i += 1
        elif c in "()|^$":
            raise ValueError("pattern feature not supported: " + p)
        else:
            if c == "\\":
                i += 1
                c = p[i]
            test = (False, ((c, c),))
            i += 1
        lo, hi = 1, 1
        if i < n:
            q = p[i]
            if q == "?":
                lo, hi = 0, 1
                i += 1
            elif q == "*":
                lo, hi = 0, -1
                i += 1
            elif q == "+":
                lo, hi = 1, -1
                i += 1
            elif q == "{":
                j = p.index("}", i)
                body = p[i + 1:j]
                if "," in body:
                    a, b = body.split(",")
                    lo, hi = int(a), (int(b) if b else -1)
                else:
                    lo = hi = int(body)
                i = j + 1
        atoms.append((test, lo, hi))
    return atoms


def _char_ok(test, ch):
    if test is None:
        return True
    hit = False
    for a, b in test[1]:
        if a <= ch <= b:
            hit = True
            break
    return hit != test[0]


def _match_at(atoms, k, s, i):
    if k == len(atoms):
        return i == len(s)
    test, lo, hi = atoms[k]
    j = i
    while j < len(s) and (hi < 0 or j - i < hi) and _char_ok(test, s[j]):
        j += 1
    while j - i >= lo:
        if _match_at(atoms, k + 1, s, j):
            return True
        j -= 1
    return False


def match(pattern, s):
    """Whole-string match of one of the schema's patterns."""
    atoms = _compiled.get(pattern)
    if atoms is None:
        atoms = _compiled[pattern] = _compile(pattern)
    return _match_at(atoms, 0, s, 0)


# ---- schema check ------------------------------------------------------------

_TYPE_NAMES = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def _is(v, t):
    if t == "object":
        return isinstance(v, dict)
    if t == "array":
        return isinstance(v, list)
    if t == "string":
        return isinstance(v, str)
    if isinstance(v, bool):
        return t == "boolean"
    if t == "integer":
        return isinstance(v, int)
    if t == "number":
        return isinstance(v, (int, float))
    if t == "null":
        return v is None
    return False


def _eq(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _text(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    return str(v)


def path_text(parts):
    """["meters", 2, "address"] -> "meters[2].address"; [] -> "(root)"."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += "[%d]" % p
        elif out:
            out += "." + p
        else:
            out = p
    return out or "(root)"


def _err(out, parts, reason, key=None):
    if len(out) >= MAX_ERRORS:
        raise _Full()
    if key is not None:
        parts.append(key)
        out.append((path_text(parts), reason))
        parts.pop()
    else:
        out.append((path_text(parts), reason))


def _check(v, s, parts, out):
    t = s.get("type")
    if t is not None:
        if isinstance(t, str):
            ok = _is(v, t)
        else:
            ok = False
            for x in t:
                if _is(v, x):
                    ok = True
                    break
        if not ok:
            names = [_TYPE_NAMES[t]] if isinstance(t, str) else [_TYPE_NAMES[x] for x in t]
            _err(out, parts, "must be " + " or ".join(names))
            return
    e = s.get("enum")
    if e is not None:
        for x in e:
            if _eq(v, x):
                break
        else:
            _err(out, parts, "must be one of " + ", ".join([_text(x) for x in e]))
            return
    if isinstance(v, bool) or v is None:
        return
    if isinstance(v, (int, float)):
        lo = s.get("minimum")
        hi = s.get("maximum")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if lo is not None and hi is not None:
                _err(out, parts, "must be %s..%s" % (lo, hi))
            elif lo is not None:
                _err(out, parts, "must be at least %s" % lo)
            else:
                _err(out, parts, "must be at most %s" % hi)
        lo = s.get("exclusiveMinimum")
        if lo is not None and v <= lo:
            _err(out, parts, "must be more than %s" % lo)
    elif isinstance(v, str):
        lo = s.get("minLength")
        hi = s.get("maxLength")
        if lo is not None and len(v) < lo:
            _err(out, parts, "must not be empty" if lo == 1 else "needs at least %d characters" % lo)
        if hi is not None and len(v) > hi:
            _err(out, parts, "must be at most %d characters" % hi)
        p = s.get("pattern")
        if p is not None and not match(p, v):
            _err(out, parts, PATTERN_REASONS.get(p) or "must match " + p)
    elif isinstance(v, dict):
        props = s.get("properties") or {}
        for k in s.get("required", ()):
            if k not in v:
                _err(out, parts, "required", k)
        closed = s.get("additionalProperties") is False
        for k in v:
            sub = props.get(k)
            if sub is not None:
                parts.append(k)
                _check(v[k], sub, parts, out)
                parts.pop()
            elif closed:
                _err(out, parts, "unknown key '%s'" % k)
    elif isinstance(v, list):
        lo = s.get("minItems")
        hi = s.get("maxItems")
        if lo is not None and len(v) < lo:
            _err(out, parts, "needs at least %d entries" % lo)
        if hi is not None and len(v) > hi:
            _err(out, parts, "at most %d entries" % hi)
        sub = s.get("items")
        if sub is not None:
            for k in range(len(v)):
                parts.append(k)
                _check(v[k], sub, parts, out)
                parts.pop()
        if s.get("uniqueItems"):
            for a in range(len(v)):
                for b in range(a):
                    if _eq(v[a], v[b]):
                        _err(out, parts, "entries must be unique (%s twice)" % _text(v[a]))
                        break


def schema_errors(cfg, out=None):
    """[(path, reason)] for what the JSON Schema alone says is wrong."""
    if out is None:
        out = []
    try:
        _check(cfg, SCHEMA, [], out)
    except _Full:
        pass
    return out


# ---- checks a schema cannot say ----------------------------------------------

def _item_error(item, proto, model):
    """None if the meter can read `item`, else why not."""
    try:
        from gateway import meters as mt

        aliases = mt.ITEM_ALIASES
    except Exception:  # noqa: BLE001 - the poller's tables moved: judge hex DIs only
        aliases = {}
    alias = aliases.get(item)
    if proto == "modbus":
        q = alias[2] if alias is not None else item
        from gateway.protocols import modbus_maps

        try:
            known = modbus_maps.quantities(model)
        except (ValueError, TypeError):
            return None  # the model itself is reported
        if q is None or q not in known:
            return ("not available on %s" if alias is not None else "unknown item '%s' for %s") % (
                (model,) if alias is not None else (item, model))
        return None
    version = 2007 if proto == "dlt645-2007" else 1997
    if alias is not None:
        if alias[0 if version == 2007 else 1] is None:
            return "not available in DL/T 645-%d" % version
        return None
    if len(item) == (8 if version == 2007 else 4):
        from gateway.protocols import dlt645_items

        try:
            int(item, 16)
            if dlt645_items.known(item, version):
                return None
        except ValueError:
            pass
    return "unknown item '%s' for %s" % (item, proto)


def _host_port(url, skip, out, path):
    rest = url[skip:]
    if "@" in rest:  # user:password@host:port
        rest = rest[rest.rindex("@") + 1:]
    host, port = rest, ""
    if rest.startswith("["):  # [IPv6]:port
        host, _, tail = rest[1:].partition("]")
        if tail:
            port = tail[1:] if tail[0] == ":" else "x"
    elif ":" in rest:
        host, _, port = rest.rpartition(":")
        if not port:
            port = "x"
    if not host:
        _err(out, [path], "needs a host name")
    if port:
        ok = True
        for ch in port:
            if not "0" <= ch <= "9":
                ok = False
        if not ok or not 1 <= int(port) <= 65535:
            _err(out, [path], "port must be 1..65535")


def cross_errors(cfg, out=None, budget=True):
    """[(path, reason)] for what the schema cannot say. Tolerates any shape
    (parts of the wrong type are skipped: schema_errors reports those). The
    poll budget is judged only when nothing else is wrong."""
    if out is None:
        out = []
    try:
        _cross(cfg, out)
        if budget and not out:
            b = poll_budget(cfg)
            if b["error"]:
                _err(out, ["meters"], b["error"])
    except _Full:
        pass
    return out


def _dict_list(cfg, key):
    v = cfg.get(key)
    if not isinstance(v, list):
        return ()
    return v


def _cross(cfg, out):
    if not isinstance(cfg, dict):
        return
    colls = {}
    cl = _dict_list(cfg, "collectors")
    for k in range(len(cl)):
        c = cl[k]
        if isinstance(c, dict) and isinstance(c.get("id"), str):
            if c["id"] in colls:
                _err(out, ["collectors", k, "id"], "duplicate id '%s' (also collectors[%d])" % (c["id"], colls[c["id"]]))
            else:
                colls[c["id"]] = k
    ids = {}
    seen = {}  # (protocol family, address or unit, route) -> index
    ml = _dict_list(cfg, "meters")
    for k in range(len(ml)):
        m = ml[k]
        if not isinstance(m, dict):
            continue
        mid = m.get("id")
        if isinstance(mid, str):
            if mid in ids:
                _err(out, ["meters", k, "id"], "duplicate id '%s' (also meters[%d])" % (mid, ids[mid]))
            else:
                ids[mid] = k
        proto = m.get("protocol")
        coll = m.get("collector")
        if isinstance(coll, str) and coll not in colls:
            _err(out, ["meters", k, "collector"], "no collector '%s' in collectors" % coll)
        route = coll if isinstance(coll, str) else bool(coll)
        if proto in DLT:
            if "address" not in m:
                _err(out, ["meters", k, "address"], "required for " + proto)
            for key in ("model", "unit_id"):
                if key in m:
                    _err(out, ["meters", k, key], "only for modbus meters")
            addr = m.get("address")
            if isinstance(addr, str):
                key = (proto, addr, route)
                if key in seen:
                    _err(out, ["meters", k, "address"], "address %s is also meters[%d]'s" % (addr, seen[key]))
                else:
                    seen[key] = k
        elif proto == "modbus":
            for key in ("model", "unit_id"):
                if key not in m:
                    _err(out, ["meters", k, key], "required for modbus")
            if "address" in m:
                _err(out, ["meters", k, "address"], "only for DL/T 645 meters (modbus uses unit_id)")
            unit = m.get("unit_id")
            if isinstance(unit, int):
                key = ("modbus", unit, route)
                if key in seen:
                    _err(out, ["meters", k, "unit_id"], "unit_id %d is also meters[%d]'s" % (unit, seen[key]))
                else:
                    seen[key] = k
        if "items" in m and "groups" in m:
            _err(out, ["meters", k], "give items or groups, not both")
        if proto in DLT or (proto == "modbus" and isinstance(m.get("model"), str)):
            _items_cross(m.get("items"), proto, m.get("model"), ["meters", k, "items"], out)
            gl = m.get("groups")
            if isinstance(gl, list):
                for j in range(len(gl)):
                    if isinstance(gl[j], dict):
                        _items_cross(gl[j].get("items"), proto, m.get("model"), ["meters", k, "groups", j, "items"], out)
    mq = cfg.get("mqtt")
    if isinstance(mq, dict) and isinstance(mq.get("url"), str):
        url = mq["url"]
        tls = url.startswith("mqtts://")
        if tls or url.startswith("mqtt://"):
            _host_port(url, 8 if tls else 7, out, "mqtt.url")
        for key in ("ca", "cert", "key"):
            if key in mq and not tls:
                _err(out, ["mqtt", key], "only used with mqtts://")
        if ("cert" in mq) != ("key" in mq):
            _err(out, ["mqtt", "key" if "cert" in mq else "cert"], "cert and key go together")
        if "password" in mq and "user" not in mq and "@" not in url:
            _err(out, ["mqtt", "user"], "a password needs a user name (MQTT 3.1.1)")
    bus = cfg.get("bus")
    if isinstance(bus, str) and bus.startswith("tcp://"):
        _host_port(bus, 6, out, "bus")
    sp = cfg.get("spool")
    if isinstance(sp, dict):
        mb, seg, mr = sp.get("max_bytes", 262144), sp.get("segments", 8), sp.get("max_record", 1024)
        if isinstance(mb, int) and isinstance(seg, int) and isinstance(mr, int) and seg > 0:
            room = mb // seg - 28  # spool.HDR + spool.SEGHDR
            if mr > room:
                _err(out, ["spool", "max_record"], "larger than a segment holds (max_bytes / segments - 28 = %d)" % room)


def _items_cross(items, proto, model, parts, out):
    if not isinstance(items, list):
        return
    for j in range(len(items)):
        it = items[j]
        if isinstance(it, str) and it:
            why = _item_error(it, proto, model)
            if why:
                parts.append(j)
                _err(out, parts, why)
                parts.pop()


def validate(cfg):
    """Every problem with a config as [(path, reason)]; [] when it is good."""
    out = schema_errors(cfg)
    cross_errors(cfg, out)
    return out


# ---- defaults ----------------------------------------------------------------

def _copy(v):
    if isinstance(v, dict):
        d = {}
        for k in v:
            d[k] = _copy(v[k])
        return d
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _fill(v, s):
    # in place; a default is a fresh copy of the schema's, never the schema's own object
    if isinstance(v, dict):
        props = s.get("properties")
        if props:
            for k in v:
                sub = props.get(k)
                if sub is not None:
                    _fill(v[k], sub)
            for k in props:
                if k not in v and "default" in props[k]:
                    v[k] = _fill(_copy(props[k]["default"]), props[k])
    elif isinstance(v, list):
        sub = s.get("items")
        if sub is not None:
            for x in v:
                _fill(x, sub)
    return v


def fill_defaults(cfg):
    """cfg itself with every schema default filled in (nested objects too); no
    copy, so a board holds one config, not two. Not a dict: a new {} filled."""
    return _fill(cfg if isinstance(cfg, dict) else {}, SCHEMA)


def with_defaults(cfg):
    """A copy of cfg with every schema default filled in; cfg is left as it was."""
    return fill_defaults(_copy(cfg) if isinstance(cfg, dict) else {})


def defaults():
    return with_defaults({})


# ---- poll budget -------------------------------------------------------------

def _dlt_frames(m, items, proto):
    """[(request bytes, reply bytes)] the poller sends for these items."""
    from gateway.protocols import dlt645_items

    try:
        from gateway import meters as mt

        aliases = mt.ITEM_ALIASES
    except Exception:  # noqa: BLE001
        aliases = {}
    version = 2007 if proto == "dlt645-2007" else 1997
    disize = 4 if version == 2007 else 2
    req = 4 + 12 + disize  # 4 FE wake-up bytes, frame, DI
    block_ok = m.get("block_read", "auto") is not False
    blocks = {}  # block DI -> [members wanted, member bytes, members in the block]
    frames = []
    for it in items:
        alias = aliases.get(it)
        di = alias[0 if version == 2007 else 1] if alias is not None else it
        if not isinstance(di, str):
            continue
        try:
            row, blk = dlt645_items.lookup(di, version)
        except (ValueError, dlt645_items.UnknownItem):
            continue
        d = int(di, 16)
        if blk:  # a block DI asked for itself: one frame with every member
            n = blk[3] - blk[2] + 1
            frames.append((req, 12 + disize + row.size * (n if n < 5 else 5)))
            continue
        # the poller's family rule (gateway/meters.py): DI1 all F (2007) or
        # the last nibble F (1997) must be a block of the table
        key = d | 0xFF00 if version == 2007 else d | 0xF
        blk = None
        if block_ok and key != d:
            try:
                blk = dlt645_items.lookup(key, version)[1]
            except (ValueError, dlt645_items.UnknownItem):
                blk = None
        if not blk:
            frames.append((req, 12 + disize + row.size))
            continue
        b = blocks.get(key)
        if b is None:
            # members a block answer holds; a tariff block counted as total + 4 tariffs
            n = blk[3] - blk[2] + 1
            blocks[key] = [1, row.size, n if n < 5 else 5]
        else:
            b[0] += 1
    for key in blocks:
        wanted, size, members = blocks[key]
        if wanted > 1:
            frames.append((req, 12 + disize + size * members))
        else:
            frames.append((req, 12 + disize + size))
    return frames


def _modbus_frames(m, items):
    from gateway.protocols import modbus_maps

    try:
        from gateway import meters as mt

        aliases = mt.ITEM_ALIASES
    except Exception:  # noqa: BLE001
        aliases = {}
    try:
        model = modbus_maps.model(m.get("model"))
    except (ValueError, TypeError):
        return []
    known = modbus_maps.quantities(model)
    qs = []
    for it in items:
        alias = aliases.get(it)
        q = alias[2] if alias is not None else it
        if q in known and q not in qs:
            qs.append(q)
    if not qs:
        return []
    return [(8, 5 + 2 * r.count) for r in modbus_maps.plan(model, qs)]


def _meter_line(m):
    proto = m.get("protocol")
    if proto == "modbus":
        from gateway.protocols import modbus_maps

        try:
            model = modbus_maps.model(m.get("model"))
            baud, parity = model["baud"], model["parity"]
        except (ValueError, TypeError):
            baud, parity = 9600, "N"
    else:
        baud, parity = _LINE_DEFAULT.get(proto, 2400), "E"
    baud = m.get("baud", baud)
    parity = m.get("parity", parity)
    stop = m.get("stop_bits", 1)
    return baud, 1 + 8 + (0 if parity == "N" else 1) + stop


def _meter_timeout(cfg, m):
    if "response_timeout_ms" in m:
        return m["response_timeout_ms"]
    coll = m.get("collector")
    if isinstance(coll, str):
        for c in _dict_list(cfg, "collectors"):
            if isinstance(c, dict) and c.get("id") == coll:
                return c.get("response_timeout_ms", COLLECTOR_TIMEOUT_MS)
        return COLLECTOR_TIMEOUT_MS
    if coll:
        return COLLECTOR_TIMEOUT_MS
    link = cfg.get("link")
    if isinstance(link, dict) and "response_timeout_ms" in link:
        return link["response_timeout_ms"]
    return 500


def poll_budget(cfg, expected_delay_ms=None, limit=None):
    """How much of the RS-485 bus the schedule needs (one bus: the board's UART;
    meters behind a collector share it). Per request: (request + reply bytes +
    3.5 characters of silence) x bits a character / baud + the expected meter
    delay Td (expected_delay_ms, else budget.expected_delay_ms, else a quarter
    of the meter's response timeout). Retries are not counted.

    Returns {"utilisation", "limit", "interval_s", "busy_s" (bus seconds every
    interval_s), "meters": {id: utilisation}, "requests": {id: requests per
    poll}, "bauds", "error": None or a sentence naming the busiest meters}."""
    bud = cfg.get("budget") if isinstance(cfg.get("budget"), dict) else {}
    if expected_delay_ms is None:
        expected_delay_ms = bud.get("expected_delay_ms")
    if limit is None:
        limit = bud.get("limit", 1.0)
    interval = cfg.get("poll_interval_s", 10)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        interval = 10
    try:
        from gateway import meters as mt

        default_items = mt.DEFAULT_ITEMS
    except Exception:  # noqa: BLE001
        default_items = ("voltage", "current", "power", "energy_forward", "energy_reverse")
    shares = {}
    requests = {}
    bauds = []
    total = 0.0
    for m in _dict_list(cfg, "meters"):
        if not isinstance(m, dict) or not isinstance(m.get("id"), str):
            continue
        proto = m.get("protocol")
        baud, bits = _meter_line(m)
        if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
            continue
        if baud not in bauds:
            bauds.append(baud)
        delay = expected_delay_ms
        if delay is None:
            delay = _meter_timeout(cfg, m) / 4
        if isinstance(m.get("groups"), list):
            sched = [(g.get("items") or (), g.get("interval_s", interval))
                     for g in m["groups"] if isinstance(g, dict)]
        else:
            sched = [(m.get("items") or default_items, interval)]
        share = 0.0
        nreq = 0
        for items, every in sched:
            if isinstance(every, bool) or not isinstance(every, (int, float)) or every <= 0:
                continue
            if proto in DLT:
                frames = _dlt_frames(m, items, proto)
            elif proto == "modbus":
                frames = _modbus_frames(m, items)
            else:
                continue
            t = 0.0
            for req, rep in frames:
                t += (req + rep + 3.5) * bits / baud + delay / 1000
            nreq += len(frames)
            share += t / every
        shares[m["id"]] = share
        requests[m["id"]] = nreq
        total += share
    res = {"utilisation": total, "limit": limit, "interval_s": interval, "busy_s": total * interval,
           "meters": shares, "requests": requests, "bauds": sorted(bauds), "error": None}
    if total > limit:
        ranked = sorted(shares, key=lambda k: -shares[k])[:3]
        bauds.sort()
        at = ("%d baud" % bauds[0]) if len(bauds) == 1 else ("%d..%d baud" % (bauds[0], bauds[-1]))
        res["error"] = "the schedule needs %.1f s of bus time every %s s at %s%s; busiest: %s" % (
            total * interval, _text(interval), at,
            "" if limit >= 1 else " (limit %d%%)" % int(limit * 100 + 0.5),
            ", ".join(["%s %.1f s" % (k, shares[k] * interval) for k in ranked]))
    return res


# ---- safe-mode loading ---------------------------------------------------------

class FlashFiles:
    """The file API load() takes, on the board's filesystem: open(name, mode)
    (OSError when missing), rename(old, new), remove(name). `path` maps a name
    to a path (hal.flash_path); default: relative to the current dir."""

    def __init__(self, path=None):
        self.path = path

    def open(self, name, mode="r"):
        return open(self.path(name) if self.path else name, mode)

    def rename(self, old, new):
        import os

        os.rename(self.path(old) if self.path else old, self.path(new) if self.path else new)

    def remove(self, name):
        import os

        os.remove(self.path(name) if self.path else name)


def _json_error(exc, name):
    # CPython's JSONDecodeError knows where; MicroPython's ValueError does not
    msg = getattr(exc, "msg", None)
    if msg is not None and getattr(exc, "lineno", None) is not None:
        return name, "not valid JSON: %s at line %d, column %d" % (msg, exc.lineno, exc.colno)
    return name, "not valid JSON: %s" % (exc.args[0] if exc.args else "syntax error")


def parse(text, name):
    """(config, None) or (None, (name, reason)) for the text of a config file."""
    import json

    if isinstance(text, (bytes, bytearray)):
        try:
            text = text.decode()
        except UnicodeError:
            return None, (name, "not UTF-8 text")
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        return None, _json_error(exc, name)
    if not isinstance(cfg, dict):
        return None, (name, "must be a JSON object")
    return cfg, None


def parse_file(files, name):
    """parse() for a file, read as a stream: its text is never held whole (on
    MicroPython json.load reads it byte by byte), so the parsed objects are all
    the heap it costs. (config, None); (None, (name, reason)); OSError when the
    file cannot be opened (missing)."""
    import json

    f = files.open(name, "r")
    try:
        try:
            cfg = json.load(f)
        except UnicodeError:  # ValueError's subclass on CPython: first
            return None, (name, "not UTF-8 text")
        except ValueError as exc:
            return None, _json_error(exc, name)
        except OSError as exc:  # opened, then the read failed (flash error)
            return None, (name, "unreadable: %r" % (exc,))
    finally:
        f.close()
    if not isinstance(cfg, dict):
        return None, (name, "must be a JSON object")
    return cfg, None


CHUNK = 512  # bytes a file comparison or copy holds at a time (per file)


def same_file(files, a, b):
    """True if files a and b hold the same bytes (False if either is missing or
    unreadable). Compared a chunk at a time: neither text is held whole."""
    try:
        fa = files.open(a, "rb")
    except Exception:  # noqa: BLE001
        return False
    try:
        try:
            fb = files.open(b, "rb")
        except Exception:  # noqa: BLE001
            return False
        try:
            ba, bb = bytearray(CHUNK), bytearray(CHUNK)
            while True:
                na, nb = fa.readinto(ba), fb.readinto(bb)
                if na != nb:
                    return False
                if not na:
                    return True
                if na == CHUNK:
                    if ba != bb:
                        return False
                elif ba[:na] != bb[:na]:
                    return False
        except Exception:  # noqa: BLE001 - unreadable: not known to be the same
            return False
        finally:
            fb.close()
    finally:
        fa.close()


def copy_file(files, src, dest):
    """Copy src to dest a chunk at a time."""
    buf = bytearray(CHUNK)
    with files.open(src, "rb") as fi:
        with files.open(dest, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(buf if n == CHUNK else buf[:n])


def _save_good(files, name, good):
    """Make `good` a copy of `name` (tmp + rename) unless it holds the same bytes
    already. (good, reason) if it could not; the config is still good to use."""
    if same_file(files, name, good):
        return None
    tmp = good + ".tmp"
    try:
        copy_file(files, name, tmp)
        try:
            files.rename(tmp, good)
        except OSError:  # a filesystem whose rename will not replace (FAT)
            files.remove(good)
            files.rename(tmp, good)
    except Exception as exc:  # noqa: BLE001 - the config is still good to use
        return (good, "could not save: %r" % (exc,))
    return None


def load(files, paths=(CONFIG,), good=GOOD):
    """SAFE MODE loading; never raises. Returns (config with defaults, errors,
    source): source is the file used (paths[k] or `good`) or "defaults".

    The first of `paths` that can be opened is the config. Valid: it is used
    and copied to `good` (only when different). Missing, unparseable or
    invalid: errors say why (path, reason) and the good copy is used if it is
    still valid, else the defaults. `files`: see FlashFiles.

    Memory (the peak of a board's boot): the file is parsed as a stream, only
    one parsed config is alive at a time, defaults are filled into it in
    place, and the good copy is compared and copied in chunks."""
    import gc

    errors = []
    try:
        cfg = None
        name = None
        for p in paths:
            try:
                cfg, err = parse_file(files, p)
            except OSError:
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. the flash driver failing
                err = (p, "unreadable: %r" % (exc,))
            name = p
            break
        if name is None:
            errors.append((paths[0], "missing"))
        elif err is not None:
            errors.append(err)
        else:
            gc.collect()  # the parse's garbage, before validation adds its own
            # an over-full schedule does not stop a board: it polls as fast as the bus
            # allows (overruns in health) and says so; the host tools refuse it outright
            errs = cross_errors(cfg, schema_errors(cfg), budget=False)
            if not errs:
                err = _save_good(files, name, good)
                if err is not None:
                    errors.append(err)
                warn = _budget_warning(cfg)
                if warn is not None:
                    errors.append(warn)
                gc.collect()
                return fill_defaults(cfg), errors, name
            errors.extend(errs)
            errs = None
        cfg = err = None
        gc.collect()  # the bad config, before the good copy is parsed
        try:
            gcfg, err = parse_file(files, good)
        except OSError:
            gcfg = None
        except Exception as exc:  # noqa: BLE001
            gcfg, err = None, (good, "unreadable: %r" % (exc,))
        if err is None and gcfg is not None:
            errs = validate(gcfg)
            if not errs:
                gc.collect()
                return fill_defaults(gcfg), errors, good
            err = (good, "unusable: %s: %s" % errs[0])
        if err is not None:
            errors.append(err)
        gcfg = None
        return defaults(), errors, "defaults"
    except Exception as exc:  # noqa: BLE001 - loading must never stop the board
        errors.append(("config", "loader failed: %r" % (exc,)))
        cfg = gcfg = None
        try:
            gc.collect()
            return defaults(), errors, "defaults"
        except Exception:  # noqa: BLE001
            return {}, errors, "defaults"


def _budget_warning(cfg):
    try:
        b = poll_budget(cfg)
    except Exception as exc:  # noqa: BLE001 - an estimate must not stop the board
        return ("meters", "poll budget not computed: %r" % (exc,))
    if b["error"]:
        return ("meters", "warning: %s; polling anyway, the schedule will slip" % b["error"])
    return None


def safe_mode(errors, source, config_name=CONFIG):
    """True when the board runs on something other than its config.json."""
    return source != config_name
