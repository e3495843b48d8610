"""The gateway end to end: the firmware on the virtual board polls the
simulated meters and publishes over our own MQTT client to a real mosquitto;
a paho-mqtt subscriber (an implementation we did not write) checks what
arrives against the contract, across a broker outage and a power cut."""

import json
import time

import pytest

from metergate.bench.broker import Broker, MqttProbe
from metergate.sim import DEMO_SITE
from metergate.sim.control import SimControl
from metergate.sim.site import load_site
from metergate.vboard.gateway import Bench, site_config

from received import Received

DEVICE = "gw-e2e"
BASE = "metergate/v1/" + DEVICE


def _config(broker_url):
    site = load_site(DEMO_SITE)
    cfg = site_config(site, device_id=DEVICE, health_interval_s=3, mqtt={"url": broker_url, "keepalive_s": 10})
    cfg["meters"] = [m for m in cfg["meters"] if m["id"] in ("m1", "m6")]
    return site_config(site, device_id=DEVICE, health_interval_s=3, mqtt={"url": broker_url, "keepalive_s": 10},
                       meters=cfg["meters"])


def console_seqs(bench):
    seqs = []
    for kind, body in bench.follower.poll():
        if kind == "READING":
            seqs.append(body["seq"])
    return seqs


def test_readings_health_status_and_commands_reach_the_broker(tmp_path, broker):
    probe = MqttProbe(broker.url, client_id="backoffice-test", clean_session=False).connect()
    probe.subscribe(BASE + "/#", qos=1)
    col = Received(probe)
    with Bench(DEMO_SITE, _config(broker.url), workdir=tmp_path / "bench") as bench:
        assert col.wait_for(lambda: len(col.readings) >= 4, 30), bench.board.tail()
        kinds = {k for k, _, _, _ in col.other}
        assert {"status", "health"} <= kinds
        status = [b for k, _, b, _ in col.other if k == "status"][0]
        assert status["state"] == "online" and status["boot_count"] == 1
        # values agree with the simulator's physics (m1: 1.2 kW customer on 220 V)
        with SimControl(bench.control_url) as sim:
            truth = sim.state()["meters"]
        m1 = [r for r in col.readings.values() if r["meter"] == "m1"][-1]
        assert m1["values"]["voltage"]["q"] == "good"
        assert m1["values"]["voltage"]["v"] == pytest.approx(truth["m1"]["U"], abs=0.11)
        assert m1["values"]["power"]["v"] == pytest.approx(truth["m1"]["P_kw"], abs=0.002)
        m6 = [r for r in col.readings.values() if r["meter"] == "m6"][-1]
        assert m6["values"]["voltage"]["unit"] == "V" and m6["values"]["voltage"]["q"] == "good"
        # a command and its reply
        probe.publish(BASE + "/cmd/poll", json.dumps({"id": "c-1", "meter": "m6"}).encode(), qos=1)
        probe.publish(BASE + "/cmd/warp", b'{"id": "c-2"}', qos=1)
        assert col.wait_for(lambda: len([1 for k, _, _, _ in col.other if k == "reply"]) >= 2, 15)
        replies = {b["id"]: b for k, _, b, _ in col.other if k == "reply"}
        assert replies["c-1"]["ok"] is True and replies["c-1"]["result"] == {"queued": 1}
        assert replies["c-2"]["ok"] is False and "unknown command" in replies["c-2"]["error"]
        health = [b for k, _, b, _ in col.other if k == "health"][-1]
        assert health["meters"]["m1"]["valid"] > 0 and health["spool"]["dropped"] == 0
    probe.disconnect()


def test_nothing_is_lost_across_a_broker_outage_and_a_power_cut(tmp_path, broker):
    probe = MqttProbe(broker.url, client_id="backoffice-test", clean_session=False).connect()
    probe.subscribe(BASE + "/reading", qos=1)
    col = Received(probe)
    seen_on_console = []
    bench = Bench(DEMO_SITE, _config(broker.url), workdir=tmp_path / "bench").start()
    try:
        assert col.wait_for(lambda: len(col.readings) >= 2, 30), bench.board.tail()
        # the broker goes away; the gateway keeps polling into its spool
        probe.disconnect()
        port, workdir = broker.port, broker.workdir
        broker.stop()
        time.sleep(8)
        seen_on_console += console_seqs(bench)
        during = [s for s in seen_on_console if s not in col.readings]
        assert len(during) >= 2, "no readings were taken while the broker was down"
        back = Broker(port=port, workdir=workdir, persistence=True).start()
        try:
            probe = MqttProbe(back.url, client_id="backoffice-test", clean_session=False).connect()
            probe.subscribe(BASE + "/reading", qos=1)
            col.probe = probe
            assert col.wait_for(lambda: all(s in col.readings for s in during), 40), (
                sorted(set(during) - set(col.readings)), bench.board.tail())
            # power cut: the board dies mid-work and boots again on the same flash
            bench.board.kill()
            seen_on_console += console_seqs(bench)
            before_cut = list(seen_on_console)
            bench.restart_board()
            assert col.wait_for(lambda: max(col.readings) > max(seen_on_console), 40), bench.board.tail()
            seen_on_console += console_seqs(bench)
            col.wait_for(lambda: all(s in col.readings for s in seen_on_console), 20)
        finally:
            probe.disconnect()
            back.stop()
    finally:
        bench.stop()
    missing = sorted(set(seen_on_console) - set(col.readings))
    assert not missing, "recorded by the gateway, never delivered: %s" % missing
    seqs = sorted(col.readings)
    first_boot = [q for q in seqs if q <= max(before_cut)]
    assert first_boot == list(range(1, max(before_cut) + 1)), "gaps in the sequence"
    # after the power cut the seqs go on above every seq of the first boot (the spool
    # reserves them in blocks, so a block may be skipped), never below or repeated
    after = [q for q in seqs if q > max(before_cut)]
    assert after and after == list(range(after[0], after[-1] + 1))
    # every seq is one reading: a duplicate delivery carries the same content
    assert len({(r["meter"], r["ts"], r["group"]) for r in col.readings.values()}) == len(seqs)
    # per meter, in seq order, time never goes back (replays and the reboot included)
    per_meter = {}
    for q in seqs:
        per_meter.setdefault(col.readings[q]["meter"], []).append(col.readings[q]["ts"])
    assert all(ts == sorted(ts) for ts in per_meter.values()), per_meter


def test_gateway_over_tls_with_its_client_certificate(tmp_path, pki):
    """mqtts:// with the CA and the gateway's certificate as files on its flash;
    the broker requires a client certificate."""
    import shutil

    from metergate.bench.broker import TlsListener

    tls = TlsListener(pki / "ca.crt", pki / "server.crt", pki / "server.key", require_certificate=True)
    with Broker(workdir=tmp_path / "broker", tls=tls) as broker:
        flash = tmp_path / "bench" / "flash"
        flash.mkdir(parents=True)
        for name in ("ca.crt", "client.crt", "client.key"):
            shutil.copy(pki / name, flash / name)
        cfg = _config(broker.tls_url)
        cfg["mqtt"].update({"ca": "ca.crt", "cert": "client.crt", "key": "client.key"})
        probe = MqttProbe(broker.url).connect()
        probe.subscribe(BASE + "/#", qos=1)
        col = Received(probe)
        with Bench(DEMO_SITE, cfg, workdir=tmp_path / "bench") as bench:
            assert col.wait_for(lambda: len(col.readings) >= 2, 40), bench.board.tail()
            assert any(k == "status" and b["state"] == "online" for k, _, b, _ in col.other)
        probe.disconnect()


def test_config_put_over_mqtt_is_confirmed_or_rolled_back(tmp_path, broker):
    from metergate.bench.procs import free_tcp_port

    probe = MqttProbe(broker.url, client_id="backoffice-test").connect()
    probe.subscribe(BASE + "/#", qos=1)
    col = Received(probe)
    cfg = _config(broker.url)
    with Bench(DEMO_SITE, cfg, workdir=tmp_path / "bench") as bench:
        flash = bench.flash

        def boots_online():
            return [b["boot_count"] for k, _, b, _ in col.other if k == "status" and b["state"] == "online"]

        assert col.wait_for(lambda: boots_online() == [1], 30), bench.board.tail()
        # a valid new config: stored, rebooted into, confirmed by reaching the broker
        new = dict(cfg, poll_interval_s=cfg["poll_interval_s"] + 7)
        probe.publish(BASE + "/cmd/config_put", json.dumps({"id": "put-1", "config": new}).encode(), qos=1)
        assert col.wait_for(lambda: 2 in boots_online(), 40), bench.board.tail()
        assert col.wait_for(lambda: not (flash / "config.trial").exists(), 20), bench.board.tail()
        assert json.loads((flash / "config.json").read_text())["poll_interval_s"] == new["poll_interval_s"]
        replies = {b["id"]: b for k, _, b, _ in col.other if k == "reply"}
        assert replies["put-1"]["ok"] is True and replies["put-1"]["result"]["rebooting"] is True
        # a config whose broker cannot be reached: rolled back after config_confirm_s
        dead = dict(new, mqtt={"url": "mqtt://127.0.0.1:%d" % free_tcp_port()}, config_confirm_s=10)
        probe.publish(BASE + "/cmd/config_put", json.dumps({"id": "put-2", "config": dead}).encode(), qos=1)
        assert col.wait_for(lambda: 3 in boots_online() or 4 in boots_online(), 60), bench.board.tail()
        assert json.loads((flash / "config.json").read_text())["mqtt"]["url"] == broker.url
        assert "rolling back (the broker was not reached within 10 s)" in bench.board.log_text()
        # an invalid one changes nothing
        probe.publish(BASE + "/cmd/config_put", json.dumps({"id": "put-3", "config": {"meters": 5}}).encode(), qos=1)
        assert col.wait_for(lambda: "put-3" in {b["id"] for k, _, b, _ in col.other if k == "reply"}, 20)
        bad = [b for k, _, b, _ in col.other if k == "reply" and b["id"] == "put-3"][0]
        assert bad["ok"] is False and "invalid config" in bad["error"]
    probe.disconnect()
