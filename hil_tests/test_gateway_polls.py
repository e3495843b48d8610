"""The gateway polls the site's meters over RS-485 and prints what it read.

Virtual board + simulator in CI; a real board on a bench (its config.json is
copied with mpremote, its console read over serial). The board's config.json
comes from the site file: every meter of the first bus, its own line
settings, a few items each, one attempt per read (so a dead bus shows fast).
"""

import pytest

from metergate.sim import load_site
from metergate.vboard.gateway import reading_errors, site_config

ITEMS = 3  # voltage, current, power: enough to see the bus work, short cycles
LINK_FAILURES = {"timeout", "bad_frame", "bad_checksum"}


@pytest.fixture
def site(bench):
    return load_site(bench.site)


@pytest.fixture
def board_config_json(site):
    cfg = site_config(site, poll_interval_s=1, health_interval_s=2)
    cfg["link"] = {"retries": 0, "response_timeout_ms": 300}
    for entry in cfg["meters"]:
        entry["items"] = entry["items"][:ITEMS]
    return cfg


def _alive(board):
    return (lambda: board.process.running) if board.kind == "virtual" else None


def _ids(site):
    return [m.id for m in site.meters_on_bus(site.buses[0].name)]


def _clean(readings, mid):
    return [r for r in readings.get(mid, []) if not reading_errors(r)]


def test_gateway_reads_every_meter_of_the_site(board, sim, site):
    ids = _ids(site)
    console = board.console()
    # one clean reading per meter (a host stall under load may cost a single read)
    # ...and a health report taken after every meter has answered at least once
    readings, health = console.wait_for(
        lambda r, h: all(_clean(r, m) for m in ids) and h and all(
            h[-1]["meters"].get(m, {}).get("valid", 0) > 0 for m in ids), timeout=90,
        alive=_alive(board))
    for mid in ids:
        last = _clean(readings, mid)[-1]
        assert last["values"], last
        for item in last["values"].values():
            assert isinstance(item["v"], (int, float)) and isinstance(item["unit"], str)
    counters = health[-1]["meters"]
    for mid, c in counters.items():
        # one request may be on the wire while the health is taken
        assert c["sent"] >= 1 and c["valid"] >= 0.8 * (c["sent"] - 1), (mid, c)


def _after(readings, mid, seq):
    return [r for r in readings.get(mid, []) if r["seq"] > seq]


@pytest.mark.needs("uart-invert")
def test_ab_swapped_at_the_gateway_makes_every_read_fail(board, sim, site):
    from metergate.sim.control import SimControl

    ids = _ids(site)
    console = board.console()
    alive = _alive(board)
    readings, _ = console.wait_for(lambda r, h: all(_clean(r, m) for m in ids), timeout=90, alive=alive)
    with SimControl(sim.control_url) as control:
        control.fault("gateway-ab-swapped", True)
        try:
            # the poll in progress may straddle the switch: judge the one after it
            seq = {m: readings[m][-1]["seq"] + 1 for m in ids}
            swapped, health = console.wait_for(lambda r, h: all(_after(r, m, seq[m]) for m in ids) and h,
                                               timeout=90, alive=alive)
            for mid in ids:
                last = _after(swapped, mid, seq[mid])[-1]
                # a failed read is an error, never a zero
                assert all(v["q"] == "comm_error" and "v" not in v for v in last["values"].values()), last
                assert set(reading_errors(last).values()) <= LINK_FAILURES, last
            counters = health[-1]["meters"]
            assert sum(c["timeout"] + c["bad_frame"] + c["bad_checksum"] for c in counters.values()) >= len(ids)
        finally:
            control.fault("gateway-ab-swapped", False)
        back, _ = console.wait_for(lambda r, h: all(any(not reading_errors(x) for x in r.get(m, [])) for m in ids),
                                   timeout=90, alive=alive)
        assert all(any(not reading_errors(x) for x in back[m]) for m in ids)
