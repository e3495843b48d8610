# The polling schedule: every poll_interval_s, each configured meter is read
# item by item over the link and one console line is printed per meter:
#
#   READING {"meter":"m1","seq":7,"t":1718000000,"values":{"voltage":{"v":220.1,"unit":"V"}},
#            "errors":{"energy_reverse":"timeout"}}
#
# and every health_every cycles one HEALTH line with the link counters. A bad
# meter entry is logged and left out; a meter whose poll fails in any way is
# reported with the reason and the others go on. Config keys:
# docs/gateway-config.md.
import json

from gateway import link as lk
from gateway import meters as mt

DEFAULT_INTERVAL_S = 10
DEFAULT_HEALTH_EVERY = 10
_SLEEP_SLICE_MS = 500  # feed the watchdog at least this often while idle


def log(msg):
    print("[app] " + msg)


def _num_text(v):
    if isinstance(v, mt.Num):
        return v.text()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    # floats from Modbus registers are IEEE singles: 7 significant digits
    s = "%.7g" % v
    if s in ("nan", "inf", "-inf"):
        return "null"
    return s


def reading_json(meter_id, seq, t, items, values, errors):
    """The READING payload, items in configured order, numbers exact."""
    parts = []
    for name in items:
        if name in values:
            v, unit = values[name]
            parts.append("%s:{\"v\":%s,\"unit\":%s}" % (json.dumps(name), _num_text(v), json.dumps(unit)))
    errs = []
    for name in items:
        if name in errors:
            errs.append("%s:%s" % (json.dumps(name), json.dumps(errors[name])))
    for name in errors:  # reasons not tied to an item ("*": the whole poll)
        if name not in items:
            errs.append("%s:%s" % (json.dumps(name), json.dumps(errors[name])))
    return "{\"meter\":%s,\"seq\":%d,\"t\":%d,\"values\":{%s},\"errors\":{%s}}" % (
        json.dumps(meter_id), seq, t, ",".join(parts), ",".join(errs))


def _number(cfg, key, default, lo, hi):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        log("config: %s must be a number %s..%s, got %r; using %r" % (key, lo, hi, v, default))
        return default
    return v


class Poller:
    def __init__(self, hal, config, out=None):
        self.hal = hal
        self.out = out or print
        config = config if isinstance(config, dict) else {}
        self.interval_ms = int(_number(config, "poll_interval_s", DEFAULT_INTERVAL_S, 0.1, 86400) * 1000)
        self.health_every = int(_number(config, "health_every", DEFAULT_HEALTH_EVERY, 1, 100000))
        defaults = config.get("link")
        if not isinstance(defaults, dict):
            if defaults is not None:
                log("config: link must be an object; using defaults")
            defaults = {}
        self.meters = []
        entries = config.get("meters", [])
        if not isinstance(entries, list):
            log("config: meters must be a list; no meters polled")
            entries = []
        seen = {}
        for k in range(len(entries)):
            entry = entries[k]
            mid = entry.get("id") if isinstance(entry, dict) else None
            try:
                if mid in seen:
                    raise mt.ConfigError("%s: duplicate meter id" % mid)
                m = mt.build(entry, defaults)
            except mt.ConfigError as exc:
                log("meter %s: bad config, skipped: %s" % (mid if mid else "#%d" % k, exc))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the others
                log("meter %s: bad config, skipped: %r" % (mid if mid else "#%d" % k, exc))
                continue
            seen[m.id] = True
            self.meters.append(m)
        self.link = lk.Link(hal.uart(), hal.ticks_ms, hal.sleep_ms, echo=bool(defaults.get("echo", False)))
        self.cycle = 0

    def poll_meter(self, m):
        try:
            values, errors = m.poll(self.link)
        except Exception as exc:  # noqa: BLE001 - a meter's failure must not stop the poller
            log("meter %s: poll failed: %r" % (m.id, exc))
            values, errors = {}, {"*": "internal:" + type(exc).__name__}
        m.seq += 1
        if errors:
            for name in m.items:
                if name in errors:
                    m.last_error = name + ": " + errors[name]
                    break
            else:
                for name in errors:
                    m.last_error = name + ": " + errors[name]
                    break
        self.out("READING " + reading_json(m.id, m.seq, self.hal.time(), m.items, values, errors))
        return values, errors

    def health_json(self):
        ms = {}
        for m in self.meters:
            d = m.counters.as_dict()
            d["last_error"] = m.last_error
            ms[m.id] = d
        return json.dumps({"cycle": self.cycle, "t": self.hal.time(), "meters": ms,
                           "bus": {"idle_junk": self.link.idle_junk}})

    def run_cycle(self):
        self.cycle += 1
        for m in self.meters:
            self.hal.wdt_feed()
            self.poll_meter(m)
        if self.cycle % self.health_every == 0:
            self.out("HEALTH " + self.health_json())

    def run(self, cycles=None):
        hal = self.hal
        ids = " ".join(m.id for m in self.meters)
        log("polling %d meters every %s s: %s" % (len(self.meters), self.interval_ms / 1000, ids or "(none)"))
        n = 0
        while cycles is None or n < cycles:
            start = hal.ticks_ms()
            self.run_cycle()
            n += 1
            if cycles is not None and n >= cycles:
                break
            while True:
                hal.wdt_feed()
                left = self.interval_ms - lk.ticks_diff(hal.ticks_ms(), start)
                if left <= 0:
                    break
                hal.sleep_ms(left if left < _SLEEP_SLICE_MS else _SLEEP_SLICE_MS)
