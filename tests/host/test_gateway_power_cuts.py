"""Power cuts (issue 4, reliability): the virtual board, polling a few meters
and publishing to a real mosquitto, is killed with SIGKILL at random moments
(seeded, recorded in the work dir as kills.json) - some while it polls with the
broker up, some while the broker is down (the spool backlog grows), some while
it replays that backlog - and boots again on the same flash each time.

Judged from what a paho subscriber received and what the board printed on its
console (a READING line is printed after the reading is committed to the
spool): every message meets the contract, a seq never arrives with two
contents and never names two readings on the console, per meter the seqs rise
with ts, and printed readings that never arrive are at most one per kill
(expected: none)."""

import json
import random

from metergate.bench.broker import Broker, MqttProbe
from metergate.vboard.gateway import Bench, site_config

from received import Received
from sites import write_site

DEVICE = "gw-cuts"
BASE = "metergate/v1/" + DEVICE
KILLS = 30
SEED = 0x4C0A
OUTAGE = range(10, 18)  # kills made while the broker is down (the backlog grows)
SLOW_REPLAY = 4  # readings a second replayed, so the backlog lasts over several kills


def _probe(url):
    probe = MqttProbe(url, client_id="backoffice-cuts", clean_session=False).connect()
    probe.subscribe(BASE + "/reading", qos=1)
    return probe


def test_power_cuts_lose_nothing_committed_and_invent_nothing(tmp_path):
    site_path, site = write_site(tmp_path / "site.toml", n=4, n_three_phase=1, n_1997=0, n_modbus=1,
                                 baud=9600, delay_ms=(20, 40), seed=7)
    rng = random.Random(SEED)
    broker = Broker(workdir=tmp_path / "broker", persistence=True).start()
    cfg = site_config(site, device_id=DEVICE, health_interval_s=1,
                      mqtt={"url": broker.url, "keepalive_s": 10, "replay_per_s": SLOW_REPLAY})
    for entry in cfg["meters"]:  # two items each: every meter is polled within a second of a boot
        entry["items"] = entry["items"][:1] + ["power"]
    cfg = site_config(site, device_id=DEVICE, health_interval_s=1, meters=cfg["meters"],
                      mqtt={"url": broker.url, "keepalive_s": 10, "replay_per_s": SLOW_REPLAY})
    probe = _probe(broker.url)
    got = Received(probe)
    console = {}  # seq -> (READING text as parsed, boot number)
    console_conflicts = []
    kills = []
    boot = 0
    bench = Bench(site_path, cfg, workdir=tmp_path / "bench").start()

    def follow():
        last_health = None
        for kind, body in bench.follower.poll():
            if kind == "READING":
                seq = body["seq"]
                if seq in console and console[seq][0] != body:
                    console_conflicts.append((seq, console[seq], body, boot))
                console.setdefault(seq, (body, boot))
            else:
                last_health = body
        return last_health

    try:
        assert got.wait_for(lambda: len(got.by_seq) >= 4, 30), bench.board.tail()
        for k in range(KILLS):
            if k == OUTAGE[0]:
                probe.disconnect()
                port = broker.port
                broker.stop()
            if k == OUTAGE[-1] + 1:
                broker = Broker(port=port, workdir=tmp_path / "broker", persistence=True).start()
                got.probe = probe = _probe(broker.url)
            wait = rng.uniform(0.3, 2.4)
            got.drain(wait)
            health = follow()
            if k in OUTAGE:
                phase = "outage"
            elif k > OUTAGE[-1] and health and health["spool"]["depth"] > 2:
                phase = "replay"  # the backlog of the outage is still going out
            else:
                phase = "polling"
            kills.append({"kill": k, "after_s": round(wait, 3), "phase": phase,
                          "spool_depth": health["spool"]["depth"] if health else None,
                          "console_max_seq": max(console) if console else None})
            bench.board.kill()
            follow()
            boot += 1
            bench.restart_board()  # raises unless the board prints its ready line again
        # the end: broker up, everything printed must arrive
        assert got.wait_for(lambda: (follow() or True) and all(s in got.by_seq for s in console), 60), (
            sorted(set(console) - set(got.by_seq))[:20])
        follow()
        assert bench.board.running
        log = bench.board_log.read_text()
    finally:
        (tmp_path / "kills.json").write_text(json.dumps({"seed": SEED, "kills": kills}, indent=1))
        probe.disconnect()
        bench.stop()
        broker.stop()

    phases = [k["phase"] for k in kills]
    print("power cuts: seed %#x, %d kills (%s), %d readings printed, %d distinct delivered, %d messages"
          % (SEED, len(kills), {p: phases.count(p) for p in set(phases)}, len(console), len(got.by_seq),
             got.messages))
    assert phases.count("outage") == len(OUTAGE), kills
    assert phases.count("replay") >= 2 and phases.count("polling") >= 5, kills
    assert "Traceback" not in log and "MemoryError" not in log
    # a seq is one reading: never two contents on the wire, never two on the console
    twice = {s: list(p) for s, p in got.by_seq.items() if len(p) > 1}
    assert not twice, "seq delivered with different contents: %s" % twice
    assert not console_conflicts, console_conflicts[:3]
    delivered = {s: next(iter(p.values())) for s, p in got.by_seq.items()}
    for seq, body in delivered.items():
        if seq in console:
            assert console[seq][0] == body, (seq, console[seq][0], body)
    # delivered without a console line: committed just before a kill cut the print (one per kill at most)
    unprinted = sorted(set(delivered) - set(console))
    assert len(unprinted) <= KILLS, unprinted
    # printed (so committed to the spool) but never delivered: at most one per kill
    # is tolerated; none is expected, the count is printed
    lost = sorted(set(console) - set(delivered))
    print("power cuts: printed but never delivered: %d %s; delivered without a console line: %d"
          % (len(lost), lost[:10], len(unprinted)))
    assert len(lost) <= KILLS, lost
    # per meter, in seq order, time never goes back
    per_meter = {}
    for seq in sorted(delivered):
        per_meter.setdefault(delivered[seq]["meter"], []).append((seq, delivered[seq]["ts"]))
    assert set(per_meter) == {m.id for m in site.meters}
    for meter, rows in per_meter.items():
        ts = [t for _s, t in rows]
        assert ts == sorted(ts), (meter, rows)
        assert len(rows) >= 5, (meter, len(rows))
