# Bus efficiency: how close the gateway's poll cycle comes to the wire.
#
# 32 DL/T 645-2007 single-phase meters (Td = 20 ms, the minimum) on one
# 2400 8E1 bus of the simulator, 6 items each, polled by the virtual board
# (the firmware under the MicroPython unix port, `metergate vboard run`).
# The poll interval is set far below what the bus can do, so the bus task runs
# back to back: the time between READING console lines is then the bus time of
# one meter's poll, and 32 consecutive READINGs are one full round.
#
# Floor: every request/reply of a round, (request bytes + reply bytes) x 11 /
# 2400 + Td. The frames are the firmware's own requests (gateway.meters plans,
# block reads included) and the simulator's own replies (its meter model, run in
# virtual time in this process). floor / measured is the efficiency (target
# >= 0.85). Not in the floor: the 3.5-character silence between frames (16 ms
# at 2400 baud) that RS-485 requires, printed as its own share.
#
# Optional: what block reads change for a three-phase meter (floor only).
import statistics
import sys
import tempfile
import time
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

N_METERS = 32
BAUD = 2400
TD_MS = 20
ITEMS = ["voltage", "current", "power", "power_factor", "energy_forward", "energy_reverse"]
ROUNDS = 2  # from the end of the first poll on
CLOCK_DIS = (0x04000101, 0x04000102)  # the runtime's meter clock check (date, time), once per meter after boot


def site_toml(n=N_METERS, kind="single-phase", delay_ms=TD_MS):
    out = ['[site]', 'name = "bench: %d meters, one bus"' % n, '',
           '[[buses]]', 'name = "rs485-1"', 'baud = %d' % BAUD, 'parity = "E"', 'data_bits = 8', 'stop_bits = 1', '',
           '[[boxes]]', 'id = "B1"', 'positions = %d' % n, '']
    for k in range(n):
        out += ['[[meters]]', 'id = "m%02d"' % (k + 1), 'position = %d' % (k + 1), 'protocol = "dlt645-2007"',
                'kind = "%s"' % kind, 'address = "2021070700%02d"' % (k + 1), 'response_delay_ms = %d' % delay_ms]
        if kind == "single-phase":
            out.append('phase = "%s"' % "abc"[k % 3])
        out.append('')
    return "\n".join(out)


def wire_floor(site, entries, dis=None):
    """[(request bytes, reply bytes, Td s)] of one poll of every config entry
    (or of reads of `dis`, ints), the firmware's requests answered by the
    simulator's meter models."""
    sys.path.insert(0, str(ROOT / "firmware"))
    from gateway import meters as mt
    from metergate.sim.bus import Bus
    from metergate.sim.meters import build_meters
    from metergate.sim.site import SiteState

    state = SiteState(site)
    bus_name = site.buses[0].name
    models = build_meters(site, state, bus_name, clock=lambda: 1.7e9)
    bus = Bus(site, state, models, seed=1, wall=lambda: 1.7e9)
    bus.advance(0.0)
    t = 0.0
    out = []
    for entry in entries:
        m = mt.build(entry, {"retries": 1})
        blocks, singles = m.plans[0]
        # the firmware may build a request only when it sends it (None in the plan)
        reqs = ([req if req is not None else m._request(bdi) for bdi, req, _names in blocks]
                + [m.entries[n][1] if m.entries[n][1] is not None else m._request(m.entries[n][0]) for n in singles])
        if dis is not None:
            reqs = [m._request(di) for di in dis]
        delay = site.meter(entry["id"]).response_delay_ms / 1000
        for req in reqs:
            bus.write(bytes(req), t)
            got = bus.run_until_idle(t)
            n_reply = sum(len(d) for _, d in got)
            if not n_reply:
                raise RuntimeError("simulated meter %s did not answer %s" % (entry["id"], bytes(req).hex()))
            out.append((len(req), n_reply, delay))
            t = got[-1][0] + 0.05
    return out


def floor_s(frames, baud=BAUD):
    return sum((a + b) * 11 / baud + d for a, b, d in frames)


def measure():
    from metergate.sim.site import load_site
    from metergate.vboard.gateway import Bench, site_config

    with tempfile.TemporaryDirectory(prefix="mg-buseff-") as tmp:
        site_path = pathlib.Path(tmp) / "site.toml"
        site_path.write_text(site_toml())
        site = load_site(site_path)
        cfg = site_config(site, health_interval_s=60)
        for e in cfg["meters"]:
            e["items"] = list(ITEMS)
        need_s = cfg["poll_interval_s"]
        cfg["poll_interval_s"] = 1  # far below a round: the bus task never idles
        frames = wire_floor(site, cfg["meters"])
        clock = wire_floor(site, cfg["meters"], CLOCK_DIS)
        stamps = []  # (host monotonic s, meter id, errors)
        with Bench(site_path, cfg, workdir=pathlib.Path(tmp) / "run") as bench:
            deadline = time.monotonic() + 60 + ROUNDS * 60
            while time.monotonic() < deadline and len(stamps) <= ROUNDS * N_METERS:
                for kind, msg in bench.follower.poll():
                    if kind == "READING":
                        bad = [k for k, v in msg["values"].items() if v.get("q") == "comm_error"]
                        stamps.append((time.monotonic(), msg["meter"], bad))
                time.sleep(0.002)
    return cfg, frames, clock, stamps, need_s


def three_phase_blocks():
    """Floor of one poll of a three-phase meter, single reads vs block reads."""
    from metergate.sim.site import load_site_text

    site = load_site_text(site_toml(1, kind="three-phase-4w"))
    items = ["voltage_a", "voltage_b", "voltage_c", "current_a", "current_b", "current_c", "power", "power_a",
             "power_b", "power_c", "energy_forward", "energy_reverse"]
    base = {"id": "m01", "protocol": "dlt645-2007", "address": "202107070001", "items": items}
    single = wire_floor(site, [dict(base, block_read=False)])
    block = wire_floor(site, [dict(base, block_read=True)])
    return items, single, block


def run():
    cfg, frames, clock, stamps, need_s = measure()
    if len(stamps) <= ROUNDS * N_METERS:
        raise RuntimeError("too few READING lines: %d" % len(stamps))
    # stamps[0] ends the first poll: from there every READING ends one meter's poll
    window = stamps[:ROUNDS * N_METERS + 1]
    ids = [w[1] for w in window[1:]]
    rounds = [(window[(r + 1) * N_METERS][0] - window[r * N_METERS][0]) for r in range(ROUNDS)]
    for r in range(ROUNDS):
        got = set(ids[r * N_METERS:(r + 1) * N_METERS])
        if len(got) != N_METERS:
            raise RuntimeError("round %d polled %d distinct meters, not %d" % (r, len(got), N_METERS))
    errors = sum(len(w[2]) for w in window[1:])
    per_meter = [window[i + 1][0] - window[i][0] for i in range(len(window) - 1)]
    med = statistics.median(per_meter)
    # The meters' clock checks (2 reads each, all meters in a row, once after boot) fall between
    # two READINGs: that gap stands out; its reads go into that round's floor.
    big = max(range(len(per_meter)), key=per_meter.__getitem__)
    clock_round = big // N_METERS if per_meter[big] > 3 * med else None
    floor = floor_s(frames)
    floor_clock = floor_s(clock)
    n_tx = len(frames)
    req_b = frames[0][0]
    rep_b = sorted({b for _, b, _ in frames})
    floors = [floor + (floor_clock if r == clock_round else 0) for r in range(ROUNDS)]
    txs = [n_tx + (len(clock) if r == clock_round else 0) for r in range(ROUNDS)]
    measured = sum(rounds)
    total_floor = sum(floors)
    gap = sum(txs) * 3.5 * 11 / BAUD
    print("   %d meters x %d items, DL/T 645-2007, %d 8E1, Td %d ms: %d transactions a round "
          "(request %d bytes, replies %s bytes)" % (N_METERS, len(ITEMS), BAUD, TD_MS, n_tx, req_b,
                                                     "/".join(map(str, rep_b))))
    print("   physical floor (sum of (req + reply) x 11 / %d + Td): %.2f s a round, %.1f ms a transaction"
          % (BAUD, floor, 1000 * floor / n_tx))
    for r in range(ROUNDS):
        extra = " (+ the %d clock-check reads after boot, floor %.2f s)" % (len(clock), floor_clock) \
            if r == clock_round else ""
        print("   round %d: measured %.2f s, floor %.2f s%s: floor / measured %.3f"
              % (r + 1, rounds[r], floors[r], extra, floors[r] / rounds[r]))
    print("   floor / measured over %d rounds: %.3f (target >= 0.85); %d items not read"
          % (ROUNDS, total_floor / measured, errors))
    steady = [x for i, x in enumerate(per_meter) if i != big or clock_round is None]
    print("   one meter's poll (6 reads), READING to READING: median %.1f ms (min %.1f, max %.1f), floor %.1f ms: "
          "%.3f" % (1000 * statistics.median(steady), 1000 * min(steady), 1000 * max(steady),
                    1000 * floor / N_METERS, floor / N_METERS / statistics.median(steady)))
    print("   the rest: 3.5-char silence before each request %.2f s (%.3f of the time); "
          "everything else %.2f s = %.1f ms a transaction; (floor + silence) / measured %.3f"
          % (gap, gap / measured, measured - total_floor - gap, 1000 * (measured - total_floor - gap) / sum(txs),
             (total_floor + gap) / measured))
    print("   site_config's poll interval for this bus: %g s (%.2f x the measured cycle)"
          % (need_s, need_s / min(rounds)))
    items, single, block = three_phase_blocks()
    fs, fb = floor_s(single), floor_s(block)
    print("   three-phase meter, %d items (V/I/P per phase + totals, energies): single reads %d requests %.0f ms, "
          "block reads %d requests %.0f ms on the wire: %.2f x (floor, Td %d ms)"
          % (len(items), len(single), 1000 * fs, len(block), 1000 * fb, fb / fs, TD_MS))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    run()
