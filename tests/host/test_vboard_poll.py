"""The virtual gateway polls the real simulator: `metergate sim serve demo` +
`metergate vboard run` with a config.json for the demo meters. Values are
compared with the simulator's own state (control interface), within each
data item's resolution, and a breaker switched over the control interface
shows up in the next readings."""

import time

import pytest

from metergate.sim import DEMO_SITE, load_site
from metergate.sim.control import SimControl
from metergate.vboard.gateway import Bench, parse_line, reading_errors, site_config

DEMO_IDS = ["m1", "m2", "m3", "m4", "m5", "m6"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    cfg = site_config(load_site(DEMO_SITE), poll_interval_s=1, health_interval_s=2)
    with Bench(DEMO_SITE, cfg, workdir=tmp_path_factory.mktemp("vboard-poll")) as running:
        with SimControl(running.control_url) as control:
            running.control = control
            yield running


def collect(bench, until, timeout=60.0):
    """Gateway lines until until(readings_by_meter, health) is true; returns both."""
    readings, health = {}, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for kind, msg in bench.follower.poll():
            if kind == "READING":
                readings.setdefault(msg["meter"], []).append(msg)
            else:
                health.append(msg)
        if until(readings, health):
            return readings, health
        assert bench.board.running, "the virtual board stopped:\n" + bench.board.tail()
        time.sleep(0.1)
    raise AssertionError("gave up after %.0f s; got %s\n%s" % (
        timeout, {k: len(v) for k, v in readings.items()}, bench.board.tail()))


def test_every_demo_meter_is_read_without_errors(bench):
    readings, health = collect(bench, lambda r, h: all(m in r for m in DEMO_IDS) and h)
    # the gateway numbers its readings 1, 2, 3... in the order it takes them
    firsts = sorted(readings[mid][0]["seq"] for mid in DEMO_IDS)
    assert firsts == list(range(1, len(DEMO_IDS) + 1))
    for mid in DEMO_IDS:
        first = readings[mid][0]
        # one read per item, one retry each: a clean first poll (host stalls aside)
        assert not reading_errors(first), (mid, first)
        assert set(first["values"]) >= {"power", "energy_forward"}, first
    assert readings["m1"][0]["values"]["voltage"]["unit"] == "V"
    assert readings["m1"][0]["values"]["energy_forward"]["unit"] == "kWh"
    counters = health[-1]["meters"]["m1"]
    assert counters["sent"] >= 5 and counters["valid"] >= counters["sent"] - 2  # a retry; one on the wire


def clean(readings, mid):
    """READINGs of `mid` with no error."""
    return [r for r in readings.get(mid, []) if not reading_errors(r)]


def _close(value, expected, resolution):
    return abs(value - expected) <= resolution * 1.01 + 1e-9


def test_values_match_the_simulator_state_within_resolution(bench):
    state = bench.control.state()["meters"]
    readings, _ = collect(bench, lambda r, h: all(clean(r, m) for m in DEMO_IDS))
    after = bench.control.state()["meters"]
    checks = {  # meter: (voltage item, current item, V resolution, A resolution)
        "m1": ("voltage", "current", 0.1, 0.001),
        "m2": ("voltage", "current", 0.1, 0.001),
        "m4": ("voltage", "current", 1, 0.01),  # DL/T 645-1997: XXX V, XX.XX A
        "m5": ("voltage_a", "current_a", 0.1, 0.001),
        "m6": ("voltage", "current", 0.001, 0.001),  # float32
    }
    for mid, (v_item, i_item, v_res, i_res) in checks.items():
        r = clean(readings, mid)[-1]["values"]
        for snap in (state, after):  # a stable load reads the same before and after
            s = snap[mid]
            u = s["phases"][0]["U"] if mid == "m5" else s["U"]
            i = s["phases"][0]["I"] if mid == "m5" else s["I"]
            if _close(r[v_item]["v"], u, v_res) and _close(abs(r[i_item]["v"]), abs(i), i_res):
                break
        else:
            pytest.fail("%s read U=%s I=%s, simulator says U=%s I=%s" % (
                mid, r[v_item]["v"], r[i_item]["v"], state[mid]["U"], state[mid]["I"]))
    # m2 is wired in/out reversed: the meter itself measures negative power and current
    m2 = clean(readings, "m2")[-1]["values"]
    assert m2["power"]["v"] < 0 and m2["current"]["v"] < 0
    assert clean(readings, "m1")[-1]["values"]["power"]["v"] > 0


def test_opening_breaker_qf1_drops_m1_current(bench):
    before, _ = collect(bench, lambda r, h: clean(r, "m1"))
    assert clean(before, "m1")[-1]["values"]["current"]["v"] > 1.0
    bench.control.breaker("QF1", False)
    try:
        # the poll in progress may predate the switch: wait for two more readings
        readings, _ = collect(bench, lambda r, h: len(r.get("m1", [])) >= 2 and clean(r, "m1")[1:])
        m1 = clean(readings, "m1")[-1]
        assert abs(m1["values"]["current"]["v"]) < 0.01, m1
        assert abs(m1["values"]["power"]["v"]) < 0.001, m1
        assert m1["values"]["voltage"]["v"] > 200  # the meter is on the supply side: still live
        assert bench.control.state()["meters"]["m1"]["I"] < 0.01
        # the other meters are untouched
        m2 = clean(readings, "m2")
        if m2:
            assert abs(m2[-1]["values"]["current"]["v"]) > 1
    finally:
        bench.control.breaker("QF1", True)
    readings, _ = collect(bench, lambda r, h: len(r.get("m1", [])) >= 2 and clean(r, "m1")[1:])
    assert clean(readings, "m1")[-1]["values"]["current"]["v"] > 1.0


def test_parse_line():
    assert parse_line('READING {"meter":"m1","seq":1}\r\n') == ("READING", {"meter": "m1", "seq": 1})
    assert parse_line('HEALTH {"cycle":2}') == ("HEALTH", {"cycle": 2})
    assert parse_line("[app] polling") is None
    assert parse_line("READING {broken") is None
