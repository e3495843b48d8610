"""`metergate selfcheck` end to end: the firmware on the virtual board checks
a simulated site (one meter wired in/out reversed, two breakers swapped)
and a technician runs the CLI over a real mosquitto, or over the board's
REPL (socat pty + the MicroPython unix port) with mpremote's transport.
Rendering, exit status and bad input are checked from stored reports."""

import json

import pytest
from click.testing import CliRunner

from metergate.bench.broker import Broker, MqttProbe
from metergate.bench.procs import LOOPBACK, ManagedProcess, free_tcp_port
from metergate.cli import main
from metergate.sim.control import SimControl
from metergate.sim.site import load_site
from metergate.technician import selfcheck as sc
from metergate.vboard.board import ReplServer, install_firmware
from metergate.vboard.gateway import Bench, metergate_argv, site_config

pytestmark = pytest.mark.timeout(180)
DEVICE = "gw-tech"

SITE = """
[site]
name = "Technician test box"

[[buses]]
name = "rs485-1"
baud = 2400
parity = "E"

[[boxes]]
id = "MB-1"
positions = 3
""" + "".join("""
[[meters]]
id = "m{k}"
position = {k}
protocol = "dlt645-2007"
kind = "single-phase"
phase = "{ph}"
address = "20230000000{k}"
response_delay_ms = 20

[[customers]]
id = "c{k}"
kw = {kw}
pf = 0.95

[[breakers]]
id = "QF{k}"
position = {k}
customer = "c{k}"

[[work_order]]
position = {k}
asset = "20230000000{k}"
customer = "c{k}"
breaker = "QF{k}"
""".format(k=k, ph="abc"[k - 1], kw=kw) for k, kw in ((1, 1.2), (2, 2.0), (3, 0.8))) + """
[[faults]]
type = "reversed"
meter = "m3"

[[faults]]
type = "breaker_mixup"
breaker = "QF1"
meter = "m2"

[[faults]]
type = "breaker_mixup"
breaker = "QF2"
meter = "m1"
"""

# short windows keep the check to seconds; the firmware's defaults are for a real box
CHECK = {"sample": 4, "energy_window_s": 3, "idle_listen_ms": 300}


@pytest.fixture(scope="module")
def site_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("site") / "site.toml"
    path.write_text(SITE)
    load_site(path)  # a bad site fails here, not in the simulator process
    return path


def _config(site_path, **extra):
    return site_config(load_site(site_path), device_id=DEVICE, selfcheck=CHECK, **extra)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, site_path):
    """mosquitto, the simulator and the virtual board publishing to the broker."""
    work = tmp_path_factory.mktemp("bench")
    with Broker(workdir=work / "broker") as broker:
        cfg = _config(site_path, mqtt={"url": broker.url, "keepalive_s": 10})
        with Bench(site_path, cfg, workdir=work / "bench") as b:
            with MqttProbe(broker.url) as probe:  # online: it has subscribed to its commands
                probe.subscribe("metergate/v1/%s/status" % DEVICE)
                while json.loads(probe.get(timeout=30).payload)["state"] != "online":
                    pass
            b.broker = broker
            yield b


def test_selfcheck_over_mqtt_shows_progress_the_table_and_fails_on_a_fault(bench):
    res = CliRunner().invoke(main, ["selfcheck", "--mqtt", bench.broker.url, "--gateway", DEVICE, "--lang", "en",
                                    "--timeout", "120"])
    assert res.exit_code == 1, res.output + bench.board.tail()
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("[")]
    assert any("link m1" in ln for ln in progress) and any("judging the wiring m1" in ln for ln in progress)
    out = res.stdout
    assert "ELEC-IN-OUT-REVERSED" in out and "FAULT" in out
    table_rows = [ln for ln in out.splitlines() if "ELEC-IN-OUT-REVERSED" in ln]
    assert table_rows and "m3" in table_rows[0] and "3" in table_rows[0]
    assert "Verdict: FAIL" in out and "3 meters, 1 with a fault" in out
    assert "ELEC-IN-OUT-REVERSED" not in "".join(ln for ln in out.splitlines() if "│ m1 " in ln)


def test_one_meter_over_mqtt_as_json_in_the_library(bench):
    seen = []
    report = sc.run_over_mqtt(bench.broker.url, DEVICE, "full", "m1", timeout=60, on_progress=seen.append)
    assert report["device"] == DEVICE and report["mode"] == "full"
    assert {p["run"] for p in seen} == {report["run"]}
    assert sc.exit_status(report) == 0
    assert {r["meter"] for r in sc.rows(report, "en") if r["meter"].startswith("m")} <= {"m1"}


def test_guided_breaker_test_finds_the_two_swapped_breakers(bench, site_path):
    """The prompts are answered (Enter); --sim-control switches the simulator's
    breaker after each answer, as the technician would in the box."""
    res = CliRunner().invoke(main, ["selfcheck", "correspondence", "--mqtt", bench.broker.url, "--gateway", DEVICE,
                                    "--work-order", str(site_path), "--sim-control", bench.control_url,
                                    "--lang", "en", "--settle", "0.3", "--timeout", "60"], input="\n" * 6)
    assert res.exit_code == 1, res.output + bench.board.tail()
    out = res.output
    # bilingual prompts name the breaker from the work order
    assert "请断开表位 1 的空开 (QF1)" in out and "Switch OFF the breaker of position 1 (QF1)" in out
    assert "Switch the breaker of position 3 (QF3) back ON" in out
    assert "position 1: current dropped at m2: MISMATCH" in out
    assert "position 2: current dropped at m1: MISMATCH" in out
    assert "position 3: current dropped at m3: matches" in out
    assert out.count("CORR-BREAKER-MISMATCH") == 2 and "Verdict: FAIL" in out
    with SimControl(bench.control_url) as sim:  # every breaker closed again at the end
        assert all(sim.state()["breakers"].values())


def test_breaker_test_in_the_library_with_a_callback(bench):
    """The callback is the technician's hands: it switches the simulator's breakers."""
    switched = []
    with SimControl(bench.control_url) as sim:
        def switch(position, breaker, closed):
            sim.breaker("QF%d" % position, closed)
            switched.append((position, closed))

        events = []
        with sc.Gateway(bench.broker.url, DEVICE) as gw:
            report = sc.correspondence(sc.BreakerTest(gw, 60), [(3, None)], switch,
                                       lambda e, d: events.append((e, d)))
    assert switched == [(3, False), (3, True)]
    assert [e for e, _ in events] == ["baseline", "off", "report"]
    assert set(events[0][1]["currents"]) == {"m1", "m2", "m3"}
    assert events[1][1]["dropped"] == ["m3"] and events[1][1]["finding"] is None
    assert report["mode"] == "correspondence" and report["findings"] == [] and sc.exit_status(report) == 0


def test_a_gateway_that_does_not_answer_is_exit_status_2(bench):
    res = CliRunner().invoke(main, ["selfcheck", "--mqtt", bench.broker.url, "--gateway", "gw-absent",
                                    "--timeout", "2"])
    assert res.exit_code == 2
    assert "gw-absent did not answer cmd/selfcheck within 2 s" in res.output


def test_selfcheck_over_the_serial_console(tmp_path, site_path):
    """The board's REPL: the app is interrupted, the check runs on the board's
    own config (no broker), its PROGRESS/SELFCHECK lines are read, and the
    board is reset back into its app."""
    bus_port, control_port = free_tcp_port(), free_tcp_port()
    sim_url = "tcp://%s:%d" % (LOOPBACK, bus_port)
    sim = ManagedProcess(metergate_argv() + ["sim", "serve", str(site_path), "--listen", sim_url,
                                             "--control", "tcp://%s:%d" % (LOOPBACK, control_port)],
                         tmp_path / "sim.log", name="sim", ready_port=[bus_port, control_port], ready_timeout=20)
    flash = tmp_path / "flash"
    install_firmware(flash)
    (flash / "config.json").write_text(json.dumps(_config(site_path)))
    with open(tmp_path / "board.log", "wb") as log:
        sim.start()
        try:
            sim.wait_ready()
            with ReplServer(flash, tmp_path / "gw.pty", bus=sim_url, log=log) as board:
                res = CliRunner().invoke(main, ["selfcheck", "--serial", str(board.link), "--json",
                                                "--timeout", "120"])
                assert res.exit_code == 1, res.output
                report = json.loads(res.stdout)
                assert report["device"] == DEVICE and report["mode"] == "full"
                assert [f["meter"] for f in report["findings"] if f["code"] == "ELEC-IN-OUT-REVERSED"] == ["m3"]
                assert "[1/" in res.stderr and "did not come back" not in res.stderr
                assert json.loads((flash / "selfcheck.json").read_text()) == report  # stored on the flash too
                # the app runs again and reads its meters
                reading = _console_reading(board.link, "m1", 20)
                if reading["values"]["voltage"]["q"] == "comm_error" and "already connected" in (
                        tmp_path / "sim.log").read_text():
                    pytest.xfail("virtual board: standalone() leaves its bus socket open after the soft reset, "
                                 "and the simulator refuses the restarted app's connection (one gateway at a time)")
                assert reading["values"]["voltage"]["q"] == "good"
        finally:
            sim.stop()


def _console_reading(port, meter, timeout):
    """The next READING of `meter` on the board's console."""
    import time

    import serial

    from metergate.vboard.gateway import ConsoleLines

    lines = ConsoleLines()
    deadline = time.monotonic() + timeout
    with serial.Serial(str(port), 115200, timeout=0.2) as ser:
        while time.monotonic() < deadline:
            for kind, body in lines.feed(ser.read(4096)):
                if kind == "READING" and body["meter"] == meter:
                    return body
    raise AssertionError("no READING of %s on %s within %d s" % (meter, port, timeout))


# -- stored reports: rendering, exit status, bad input ---------------------------------

def _finding(code, severity, meter, position, evidence=None):
    return {"code": code, "severity": severity, "meter": meter, "position": position, "evidence": evidence or {},
            "message": {"zh": "%s 中文说明" % code, "en": "%s explained" % code},
            "fix": {"zh": "%s 中文处理" % code, "en": "%s fix it" % code}}


def _report(findings):
    return {"device": "gw-1", "run": 3, "mode": "full", "fw": "0.5.0", "started": 1795467000, "ts": 1795467042,
            "duration_s": 42, "summary": {s: sum(f["severity"] == s for f in findings) for s in sc.SEVERITIES},
            "meters": {"m1": {"position": 1, "protocol": "dlt645-2007", "status": "ok"},
                       "m2": {"position": 2, "protocol": "modbus", "status": "ok"}},
            "findings": findings}


@pytest.mark.parametrize("findings, status", [
    ([], 0),
    ([_finding("LINK-IDLE-JUNK", "warning", None, None, {"bytes": 12, "seconds": 2})], 0),
    ([_finding("ELEC-NO-LOAD", "info", "m2", 2)], 0),
    ([_finding("LINK-IDLE-JUNK", "warning", None, None), _finding("ELEC-IN-OUT-REVERSED", "fault", "m2", 2)], 1),
])
def test_exit_status_from_a_stored_report(tmp_path, findings, status):
    path = tmp_path / "selfcheck.json"
    path.write_text(json.dumps(_report(findings)))
    res = CliRunner().invoke(main, ["selfcheck", "--report", str(path)])
    assert res.exit_code == status, res.output
    verdict = "不合格" if status else "合格"
    assert "结论：%s" % verdict in res.output


def test_table_in_chinese_and_english(tmp_path):
    path = tmp_path / "selfcheck.json"
    path.write_text(json.dumps(_report([_finding("ELEC-IN-OUT-REVERSED", "fault", "m2", 2, {"p_kw": -1.2}),
                                        _finding("LINK-IDLE-JUNK", "warning", None, None, {"bytes": 12})])))
    zh = CliRunner().invoke(main, ["selfcheck", "--report", str(path)]).output
    for text in ("表计", "处理方法", "ELEC-IN-OUT-REVERSED 中文说明", "ELEC-IN-OUT-REVERSED 中文处理", "p_kw=-1.2",
                 "网关/总线", "bytes=12", "故障", "警告", "合格",
                 "网关 gw-1 第 3 次自检（full）：2 块表，1 块有故障；故障 1，警告 1，提示 0，用时 42 秒"):
        assert text in zh, text
    assert "explained" not in zh
    en = CliRunner().invoke(main, ["selfcheck", "--report", str(path), "--lang", "en"]).output
    for text in ("meter", "fix", "ELEC-IN-OUT-REVERSED explained", "ELEC-IN-OUT-REVERSED fix it", "gateway/bus",
                 "FAULT", "warning", "2 meters, 1 with a fault; 1 faults, 1 warnings, 0 info, took 42 s"):
        assert text in en, text
    rows = sc.rows(json.loads(path.read_text()), "en")
    assert [(r["meter"], r["position"], r["severity"]) for r in rows] == [
        ("m1", "1", "ok"), ("m2", "2", "fault"), ("gateway/bus", "-", "warning")]
    as_json = CliRunner().invoke(main, ["selfcheck", "--report", str(path), "--json"])
    assert json.loads(as_json.stdout) == json.loads(path.read_text()) and as_json.exit_code == 1


@pytest.mark.parametrize("text, error", [
    ("{", "not JSON"),
    ("[]", "expected a JSON object"),
    (json.dumps(dict(_report([]), findings=[{"code": "X-Y", "severity": "bad", "meter": None, "position": None,
                                             "evidence": {}, "message": {"zh": "a", "en": "a"},
                                             "fix": {"zh": "a", "en": "a"}}])), "findings/0/severity"),
    (json.dumps({k: v for k, v in _report([]).items() if k != "meters"}), "'meters' is a required property"),
])
def test_a_bad_report_file_is_named_with_the_field(tmp_path, text, error):
    path = tmp_path / "bad.json"
    path.write_text(text)
    res = CliRunner().invoke(main, ["selfcheck", "--report", str(path)])
    assert res.exit_code == 2 and str(path) in res.output and error in res.output, res.output


@pytest.mark.parametrize("args, error", [
    ([], "give one of --mqtt"),
    (["--mqtt", "mqtt://127.0.0.1:1"], "--mqtt needs --gateway"),
    (["--serial", "/dev/null", "--report", "x.json"], "not --serial and --report together"),
    (["--mqtt", "mqtt://127.0.0.1:1", "--gateway", "g", "--lang", "fr"], "'fr' is not one of"),
    (["correspondence", "--mqtt", "mqtt://127.0.0.1:1", "--gateway", "g"], "give --positions 1,2,3 or --work-order"),
])
def test_usage_errors_are_exit_status_2(args, error):
    res = CliRunner().invoke(main, ["selfcheck"] + args)
    assert res.exit_code == 2 and error in res.output, res.output


def test_connection_failures_name_what_failed(tmp_path):
    port = free_tcp_port()
    res = CliRunner().invoke(main, ["selfcheck", "--mqtt", "mqtt://127.0.0.1:%d" % port, "--gateway", "g"])
    assert res.exit_code == 2 and "broker mqtt://127.0.0.1:%d: cannot connect" % port in res.output
    res = CliRunner().invoke(main, ["selfcheck", "--mqtt", "http://x", "--gateway", "g"])
    assert res.exit_code == 2 and "not an MQTT URL" in res.output
    res = CliRunner().invoke(main, ["selfcheck", "--serial", str(tmp_path / "no-such-port")])
    assert res.exit_code == 2 and "no-such-port: cannot open the serial port" in res.output
    res = CliRunner().invoke(main, ["selfcheck", "correspondence", "--mqtt", "mqtt://127.0.0.1:%d" % port,
                                    "--gateway", "g", "--positions", "1,x"])
    assert res.exit_code == 2 and "--positions: 'x' is not a position number" in res.output


def test_a_breaker_step_without_a_verdict_is_not_shown_as_a_mismatch():
    unread = {"position": 2, "dropped": [], "finding": {
        "code": "CORR-CURRENT-UNREAD", "message": {"zh": "表 m1 的电流读不到", "en": "meter(s) m1 could not be read"}}}
    en, zh = sc.off_text(unread, "en"), sc.off_text(unread, "zh")
    assert "NOT JUDGED" in en and "m1 could not be read" in en and "MISMATCH" not in en
    assert "无法判断" in zh and "不符" not in zh
    mismatch = {"position": 1, "dropped": ["m2"], "finding": {"code": "CORR-BREAKER-MISMATCH",
                                                              "message": {"en": "feeds m2", "zh": "接在 m2"}}}
    assert "MISMATCH" in sc.off_text(mismatch, "en")
