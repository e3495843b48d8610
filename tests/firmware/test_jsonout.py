# The reading message writer (gateway/jsonout.py) against a plain reference
# written with json.dumps and string formatting: the same bytes for values,
# failures, exact decimals, floats and a failed poll. Both runtimes.
import json

from gateway import jsonout
from gateway import meters as mt
from gateway.runtime import _num


def _q(text):
    return json.dumps(text)


def reading_json(device, meter, seq, ts, group, items, judged, errors, units):
    """The reference: docs/mqtt.md written the plain way."""
    parts = []
    for name in items:
        if name in judged:
            v, unit, q = judged[name]
            parts.append("%s:{\"v\":%s,\"unit\":%s,\"q\":\"%s\",\"t\":%d}" % (_q(name), _num(v), _q(unit), q, ts))
        else:
            reason = errors.get(name) or errors.get("*") or "not_read"
            unit = units.get(name)
            u = ",\"unit\":%s" % _q(unit) if unit is not None else ""
            parts.append("%s:{\"q\":\"comm_error\",\"error\":%s%s,\"t\":%d}" % (_q(name), _q(reason), u, ts))
    extra = ""
    if "*" in errors:
        extra = ",\"error\":%s" % _q(errors["*"])
    return "{\"device\":%s,\"meter\":%s,\"seq\":%d,\"ts\":%d,\"group\":%s,\"values\":{%s}%s}" % (
        _q(device), _q(meter), seq, ts, _q(group), ",".join(parts), extra)



def _both(items, judged, errors, units, seq=7, ts=1795456800):
    g = jsonout.group_out("fast", items, units)
    w = jsonout.Writer()
    got = bytes(w.reading(jsonout.device_head("gw-1"), "m1", g, seq, ts, judged, errors, _num)).decode()
    want = reading_json("gw-1", "m1", seq, ts, "fast", items, judged, errors, units)
    return got, want


def test_values_and_failures_match_the_reference():
    items = ("voltage", "current", "energy_forward", "pf", "frequency", "x")
    units = {"voltage": "V", "current": "A", "energy_forward": "kWh", "pf": "", "frequency": "Hz"}
    judged = {"voltage": (mt.Num(2201, 1), "V", "good"), "current": (mt.Num(-5, 3), "A", "good"),
              "energy_forward": (mt.Num(1234567890, 2), "kWh", "implausible"), "pf": (-0.95, "", "good")}
    errors = {"frequency": "meter_error:no_such_data", "x": "unknown_item"}
    got, want = _both(items, judged, errors, units)
    assert got == want
    msg = json.loads(got)
    assert msg["values"]["current"]["v"] == -0.005 and '"v":12345678.90' in got
    assert msg["values"]["x"] == {"q": "comm_error", "error": "unknown_item", "t": 1795456800}


def test_numbers_at_the_edges():
    cases = [mt.Num(0, 2), mt.Num(5, 2), mt.Num(-1, 1), mt.Num(100, 0), mt.Num(-123456, 4), mt.Num(7, 0)]
    for n in cases:
        got, want = _both(("v",), {"v": (n, "V", "good")}, {}, {"v": "V"}, seq=1, ts=0)
        assert got == want, (got, want)
        assert json.loads(got)["values"]["v"]["v"] == json.loads(n.text())


def test_a_failed_poll_and_an_oversized_reading():
    got, want = _both(("a", "b"), {}, {"*": "internal:RuntimeError"}, {"a": "V"})
    assert got == want and json.loads(got)["error"] == "internal:RuntimeError"
    g = jsonout.GroupOut("g", tuple("i%d" % k for k in range(200)), {})
    w = jsonout.Writer(256)
    try:
        w.reading(jsonout.device_head("gw"), "m", g, 1, 1, {}, {}, _num)
    except ValueError as exc:
        assert "larger than 256" in str(exc)
    else:
        raise AssertionError("an oversized reading must be refused, not cut")
