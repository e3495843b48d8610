# Time of a full self-check of a 12-meter box at 2400 baud against its wire-time floor.
#
# The box: 10 single-phase and 2 three-phase four-wire DL/T 645-2007 meters
# (Td 40 ms) on one 2400 8E1 bus of the simulator, no fault; the virtual board
# runs its commissioning check at first boot (config selfcheck.on_first_boot,
# the default sample of 20 reads a meter, energy_window_s 0: the 60 s wait for
# reverse energy to rise is a deliberate pause, not bus time). Measured: host
# time from the first PROGRESS line on the board's console to its SELFCHECK line.
#
# Floor: the check's own transactions answered by the simulator's meter models
# (bus_efficiency_bench.wire_floor): per meter the sample (20 x 04000401), the
# asset number (04000403) and every item the electrical diagnosis needs
# (gateway.selfcheck.electrical.needed_items), each (request + reply bytes) x
# 11 / 2400 + Td; plus the idle listen (config idle_listen_ms). floor / measured
# is printed; the 3.5-character gap between frames is printed as its own share.
import pathlib
import sys
import tempfile
import time

from bench.bus_efficiency_bench import ROOT, wire_floor

N = 12
BAUD = 2400
TD_MS = 40
SAMPLE = 20
IDLE_MS = 1000


def site_toml():
    out = ['[site]', 'name = "bench: 12-meter box"', '',
           '[[buses]]', 'name = "rs485-1"', 'baud = %d' % BAUD, 'parity = "E"', '',
           '[[boxes]]', 'id = "B1"', 'positions = %d' % N, '']
    for k in range(N):
        kind = "three-phase-4w" if k in (4, 9) else "single-phase"
        out += ['[[meters]]', 'id = "m%02d"' % (k + 1), 'position = %d' % (k + 1), 'protocol = "dlt645-2007"',
                'kind = "%s"' % kind, 'address = "2021070700%02d"' % (k + 1), 'response_delay_ms = %d' % TD_MS]
        if kind == "single-phase":
            out.append('phase = "%s"' % "abc"[k % 3])
        out += ['', '[[customers]]', 'id = "c%02d"' % (k + 1), 'kw = %.1f' % (0.5 + k % 4), 'pf = 0.95', '',
                '[[breakers]]', 'id = "QF%02d"' % (k + 1), 'position = %d' % (k + 1),
                'customer = "c%02d"' % (k + 1), '',
                '[[work_order]]', 'position = %d' % (k + 1), 'asset = "2021070700%02d"' % (k + 1), '']
    return "\n".join(out)


def floor(site, cfg):
    sys.path.insert(0, str(ROOT / "firmware"))
    from gateway import meters as mt
    from gateway.selfcheck import electrical

    frames = []
    for entry in cfg["meters"]:
        dis = [0x04000401] * SAMPLE + [0x04000403]
        for name in electrical.needed_items(entry.get("kind", "single-phase"), entry["protocol"]):
            alias = mt.ITEM_ALIASES.get(name)
            dis.append(int(alias[0] if alias is not None else name, 16))
        frames += wire_floor(site, [entry], dis)
    return frames


def run():
    from metergate.sim.site import load_site
    from metergate.vboard.gateway import Bench, site_config

    with tempfile.TemporaryDirectory(prefix="mg-sctime-") as tmp:
        site_path = pathlib.Path(tmp) / "site.toml"
        site_path.write_text(site_toml())
        site = load_site(site_path)
        cfg = site_config(site, health_interval_s=300, selfcheck={
            "on_first_boot": True, "sample": SAMPLE, "energy_window_s": 0, "idle_listen_ms": IDLE_MS})
        frames = floor(site, cfg)
        first = last = None
        report = None
        with Bench(site_path, cfg, workdir=pathlib.Path(tmp) / "run") as bench:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and report is None:
                for line in bench.board_log.read_text(errors="replace").splitlines():
                    if line.startswith("PROGRESS ") and first is None:
                        first = time.monotonic()
                    elif line.startswith("SELFCHECK "):
                        last = time.monotonic()
                        report = line
                time.sleep(0.05)
    if report is None or first is None:
        raise RuntimeError("no self-check report within 600 s")
    import json

    rep = json.loads(report[len("SELFCHECK "):])
    measured = last - first
    wire = sum((a + b) * 11 / BAUD + d for a, b, d in frames) + IDLE_MS / 1000
    gap = len(frames) * 3.5 * 11 / BAUD
    print("   12 DL/T 645-2007 meters (2 three-phase), 2400 8E1, Td %d ms, sample %d reads a meter, no fault: "
          "%d transactions" % (TD_MS, SAMPLE, len(frames)))
    print("   self-check measured %.1f s (report: %d findings, %d faults); wire-time floor %.1f s "
          "(+ %.1f s of 3.5-character gaps)" % (measured, len(rep["findings"]), rep["summary"]["fault"], wire, gap))
    print("   floor / measured = %.3f (with the gaps: %.3f)" % (wire / measured, (wire + gap) / measured))
