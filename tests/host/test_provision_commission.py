"""Commissioning: a self-check report against the work order -> the record.

The self-check itself is firmware (issue 5); until it lands, reports here are
given as files in the shape its findings module documents
({code, severity, meter, position, evidence, message, fix}). The gateway's
config is read from a provisioned virtual board over the real mpremote.
"""

import json

import pytest
from click.testing import CliRunner

from metergate.bench.broker import Broker
from metergate.cli import main
from metergate.provision import commission as cm
from metergate.sim import DEMO_SITE
from metergate.vboard.board import ReplServer

pytestmark = pytest.mark.timeout(120)


def finding(code, severity, meter=None, position=None, zh="中文说明", en="English text"):
    return {"code": code, "severity": severity, "meter": meter, "position": position, "evidence": {"polls": 5},
            "message": {"zh": zh + " " + code, "en": en + " " + code}, "fix": {"zh": "处理", "en": "fix it"}}


ORDER = """
[order]
id = "WO-2026-0815"
crew = "crew-7"
site = "Block 3"

[[work_order]]
box = "MB-1"
position = 1
asset = "A-001"
customer = "flat-101"

[[work_order]]
box = "MB-1"
position = 2
asset = "A-002"

[[work_order]]
box = "MB-1"
position = 3
asset = "A-003"
"""

CONFIG = {"device_id": "gw-7", "meters": [
    {"id": "m1", "protocol": "dlt645-2007", "address": "000000000001", "position": {"box": "MB-1", "position": 1},
     "asset": "A-001"},
    {"id": "m2", "protocol": "dlt645-2007", "address": "000000000002", "position": {"box": "MB-1", "position": 2},
     "asset": "A-002"},
    {"id": "m3", "protocol": "dlt645-2007", "address": "000000000003", "position": {"box": "MB-1", "position": 3},
     "asset": "A-003"}]}


@pytest.fixture
def order(tmp_path):
    path = tmp_path / "order.toml"
    path.write_text(ORDER)
    return cm.load_work_order(path)


def test_clean_report_passes(order):
    rec = cm.record({"device": "gw-7", "mode": "commissioning", "ts": 1795456800,
                     "findings": [finding("ELEC-NO-LOAD", "info", "m3")]}, order, CONFIG)
    assert rec["verdict"] == "pass"
    assert [r["status"] for r in rec["positions"]] == ["ok", "ok", "ok"]
    assert rec["counts"] == {"fault": 0, "warning": 0, "info": 1}
    text = cm.summary(rec)
    assert "结论: 通过 / verdict: PASS" in text and "WO-2026-0815" in text


def test_faults_are_placed_at_their_positions(order):
    report = {"device": "gw-7", "findings": [
        finding("ID-WRONG-METER", "fault", "m2"),
        finding("LINK-INTERMITTENT", "warning", "m1"),
        finding("GW-BROWNOUT-RESETS", "warning"),
        finding("ID-UNEXPECTED-METER", "warning", "x9")]}
    rec = cm.record(report, order, CONFIG)
    assert rec["verdict"] == "fail"
    assert [r["status"] for r in rec["positions"]] == ["warning", "fault", "ok"]
    assert [f["code"] for f in rec["positions"][1]["findings"]] == ["ID-WRONG-METER"]
    assert [f["code"] for f in rec["gateway_findings"]] == ["GW-BROWNOUT-RESETS"]
    assert [f["code"] for f in rec["unexpected_findings"]] == ["ID-UNEXPECTED-METER"]
    text = cm.summary(rec)
    assert "表位 MB-1/2: 有故障 / position MB-1/2: fault" in text
    assert "中文说明 ID-WRONG-METER" in text and "English text ID-WRONG-METER" in text


def test_config_against_the_order(order):
    cfg = {"device_id": "gw-7", "meters": [dict(CONFIG["meters"][0], asset="B-999"), CONFIG["meters"][1],
                                           dict(CONFIG["meters"][2], id="m9",
                                                position={"box": "MB-2", "position": 3})]}
    rec = cm.record({"findings": []}, order, cfg)
    assert [r["status"] for r in rec["positions"]] == ["config_differs", "ok", "not_configured"]
    assert rec["meters_not_in_order"] == ["m9"] and rec["verdict"] == "fail"
    assert "gateway config says asset B-999, the order A-001" in cm.summary(rec)


@pytest.mark.parametrize("text, error", [
    ('[[work_order]]\nposition = 1\nasset = "A"\ncolour = "red"\n', "work_order[0]: unknown key 'colour'"),
    ('[[work_order]]\nposition = 1\n', "work_order[0].asset: required"),
    ('[[work_order]]\nposition = 0\nasset = "A"\n', "work_order[0].position: required"),
    ('[[work_order]]\nposition = 1\nasset = "A"\n[[work_order]]\nposition = 1\nasset = "B"\n',
     "work_order[1]: position 1 listed twice"),
    ('[order]\nnumber = 3\n[[work_order]]\nposition = 1\nasset = "A"\n', "order: unknown key 'number'"),
    ('[[work_order]\n', "not valid TOML"),
    ('jobs = 1\n', "unknown key 'jobs'"),
])
def test_bad_work_orders_are_named(tmp_path, text, error):
    path = tmp_path / "wo.toml"
    path.write_text(text)
    with pytest.raises(cm.CommissionError) as err:
        cm.load_work_order(path)
    assert str(err.value).startswith(str(path)) and error in str(err.value)


def test_bad_reports_are_named(order):
    with pytest.raises(cm.CommissionError, match="findings: missing"):
        cm.record({"device": "gw-7"}, order, CONFIG)
    with pytest.raises(cm.CommissionError, match=r"findings\[0\].severity: 'bad'"):
        cm.record({"findings": [{"code": "X", "severity": "bad"}]}, order, CONFIG)


def test_commission_a_provisioned_virtual_board(tmp_path):
    runner = CliRunner()
    with ReplServer(tmp_path / "flash", tmp_path / "gw.pty") as board:
        res = runner.invoke(main, ["provision", "--port", str(board.link), "--site", str(DEMO_SITE),
                                   "--records", str(tmp_path / "records"), "--device-id", "gw-demo"])
        assert res.exit_code == 0, res.output
        report = tmp_path / "selfcheck.json"
        report.write_text(json.dumps({"device": "gw-demo", "mode": "commissioning", "ts": 1795456800, "findings": [
            finding("ELEC-IN-OUT-REVERSED", "fault", "m2", {"box": "MB-3-1", "position": 2})]}))
        res = runner.invoke(main, ["commission", "--port", str(board.link), "--work-order", str(DEMO_SITE),
                                   "--report", str(report), "--out", str(tmp_path / "rec")])
        assert res.exit_code == 1, res.output  # a fault: FAIL
        # reading the config over the REPL stopped the app; commissioning started it again
        rerun = runner.invoke(main, ["provision", "--port", str(board.link), "--site", str(DEMO_SITE),
                                     "--records", str(tmp_path / "records"), "--device-id", "gw-demo"])
        assert rerun.exit_code == 0 and "running, 6 meters" in rerun.output
    assert "结论: 不通过 / verdict: FAIL" in res.output
    records = sorted((tmp_path / "rec").glob("gw-demo-*.json"))
    assert len(records) == 1 and records[0].with_suffix(".txt").exists()
    rec = json.loads(records[0].read_text())
    assert rec["kind"] == cm.RECORD_KIND and rec["device"] == "gw-demo"
    assert rec["work_order"]["site"].startswith("Demo")
    assert [r["status"] for r in rec["positions"]] == ["ok", "fault", "ok", "ok", "ok", "ok"]
    assert rec["selfcheck"]["source"] == "file:selfcheck.json"
    assert "password" not in records[0].read_text()


def test_selfcheck_over_mqtt_names_a_silent_gateway(tmp_path):
    with Broker() as broker:
        with pytest.raises(cm.CommissionError, match="gw-absent did not answer cmd/selfcheck within 2 s"):
            cm.run_selfcheck(broker.url, "gw-absent", timeout=2)
