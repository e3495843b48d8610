"""The self-check on the virtual board, end to end: the firmware checks the
simulated demo box on command (MQTT); the reply, the progress and the report
reach a paho subscriber, checked against the contract, and the report is on the
board's flash. (At first boot: test_selfcheck_link_faults.py; the guided breaker
test: test_selfcheck_cli.py.)"""

import json

from metergate.bench.broker import MqttProbe
from metergate.sim import DEMO_SITE
from metergate.sim.site import load_site
from metergate.vboard.gateway import Bench, site_config

from received import Received

DEVICE = "gw-sc"
BASE = "metergate/v1/" + DEVICE
FAST = {"sample": 5, "energy_window_s": 8, "idle_listen_ms": 300}


def _config(broker_url, **selfcheck):
    site = load_site(DEMO_SITE)
    return site_config(site, device_id=DEVICE, health_interval_s=30, mqtt={"url": broker_url, "keepalive_s": 10},
                       selfcheck=dict(FAST, **selfcheck))


def _reports(rx):
    return [body for kind, _name, body, _retained in rx.other if kind == "selfcheck"]


def _codes(report, meter):
    return sorted(f["code"] for f in report["findings"] if f["meter"] == meter)


def test_selfcheck_on_command_finds_the_reversed_meter_and_leaves_the_pv_meter_alone(tmp_path, broker):
    probe = MqttProbe(broker.url, client_id="tech").connect()
    probe.subscribe(BASE + "/#", qos=1)
    rx = Received(probe)
    with Bench(DEMO_SITE, _config(broker.url), workdir=tmp_path / "bench") as bench:
        assert rx.wait_for(lambda: any(k == "reading" for k, *_ in rx.other) or rx.readings, 30)
        probe.publish(BASE + "/cmd/selfcheck", json.dumps({"id": "sc-1", "mode": "full"}).encode(), qos=1)
        assert rx.wait_for(lambda: _reports(rx), 120), bench.board.tail()
        flash_report = json.loads((bench.flash / "selfcheck.json").read_text())
    probe.disconnect()
    rep = _reports(rx)[-1]
    replies = [body for kind, name, body, _r in rx.other if kind == "reply" and name == "selfcheck"]
    assert replies and replies[0]["ok"] and replies[0]["result"] == {"run": rep["run"], "started": True}
    progress = [body for kind, _n, body, _r in rx.other if kind == "progress"]
    assert {p["step"] for p in progress} >= {"link", "electrical"}
    assert rep["mode"] == "full" and set(rep["meters"]) == {"m1", "m2", "m3", "m4", "m5", "m6"}
    assert "ELEC-IN-OUT-REVERSED" in _codes(rep, "m2")  # the demo site's miswired meter
    assert rep["meters"]["m2"]["status"] == "fault"
    for mid in ("m1", "m3", "m4", "m5", "m6"):  # m3 exports (PV): not reversed
        assert not [c for c in _codes(rep, mid) if c.startswith(("ELEC-IN-OUT", "LINK-"))], (mid, rep["findings"])
    assert rep["meters"]["m1"]["sample"] == {"sent": 5, "valid": 5, "timeout": 0, "bad_checksum": 0,
                                             "bad_frame": 0}
    gw = [f for f in rep["findings"] if f["meter"] is None]
    assert any(f["code"] == "CHECK-SKIPPED" and f["evidence"] == {} for f in gw)  # no supply ADC on unix
    assert flash_report == rep
    for f in rep["findings"]:
        assert f["message"]["zh"] and f["message"]["en"] and f["fix"]["en"]
