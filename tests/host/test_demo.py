"""`metergate demo` as a user runs it, without a terminal: it shows the demo
meters' readings, names the miswired meter (m2), stores what reached the
broker through the back office's ingest and ends with today's collection
success, exits 0 and leaves no process behind, both after --duration and
after Ctrl-C (SIGINT)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

METERGATE = str(pathlib.Path(sys.executable).with_name("metergate"))


def _ppids():
    out = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), fields[0])
    return out


def descendants(pid):
    table = _ppids()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, (ppid, _state) in table.items():
            if ppid == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid):
    try:
        stat = pathlib.Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def run_demo(args, tmp_path, interrupt_after=None, timeout=90):
    out = tmp_path / "demo.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([METERGATE, "demo"] + args, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    seen = set()
    start = time.monotonic()
    interrupted = False
    while proc.poll() is None:
        seen |= descendants(proc.pid)
        if interrupt_after is not None and not interrupted and time.monotonic() - start > interrupt_after:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("metergate demo did not stop:\n" + out.read_text())
        time.sleep(0.2)
    text = out.read_text()
    deadline = time.monotonic() + 5
    left = [p for p in seen if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in seen if alive(p)]
    return proc.returncode, text, seen, left


def test_demo_runs_for_its_duration_and_cleans_up(tmp_path):
    code, text, seen, left = run_demo(["--duration", "20"], tmp_path)
    assert code == 0, text
    assert len(seen) >= 3, "the broker, the simulator and the board should have been children"
    assert left == [], "left behind: %s" % left
    for mid in ("m1", "m2", "m3", "m4", "m5", "m6"):
        assert "│ %s " % mid in text, mid
    assert "MISWIRED: m2 (position 2" in text
    assert "m3 (position 3" not in text  # m3 exports PV power: negative but expected
    assert "645-97 1200E" in text and "sdm120 2400E" in text
    assert "100%" in text
    # the readings shown are what reached the broker, every one within the MQTT contract
    assert "as received from MQTT mqtt://127.0.0.1:" in text
    assert "broke the contract" not in text
    assert "stopped the simulator and the virtual gateway" in text
    # the back office stored the readings and judged today: every meter read, the gateway collected
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("collection success today 今日采集成功率 (")
    assert last.endswith("Demo estate, building 3, unit 1): collectors 1/1, meters read 已采表 6/6")
    from metergate.backoffice.store import Store

    with Store("sqlite:///%s" % (tmp_path / "build" / "demo-backoffice.db")).connect() as db:
        stored = db.query("SELECT COUNT(*), COUNT(DISTINCT meter) FROM readings WHERE device = 'demo-gw'")[0]
        assert stored[0] >= 6 and stored[1] == 6
        assert db.query("SELECT COUNT(*) FROM quarantine")[0][0] == 0
        assert db.query("SELECT state FROM gateway_events WHERE device = 'demo-gw' ORDER BY id")[0] == ("online",)
    assert "quarantined messages 隔离消息: 0" in text
    assert not list(tmp_path.glob("metergate-demo-*"))


def test_ctrl_c_stops_the_demo_cleanly(tmp_path):
    code, text, seen, left = run_demo([], tmp_path, interrupt_after=6)
    assert code == 0, text
    assert left == [], "left behind: %s" % left
    assert "stopped the simulator and the virtual gateway" in text
    assert "collection success today" in text.rstrip().splitlines()[-1]


def test_demo_with_the_embedded_broker_shows_and_stores_what_came_over_mqtt(tmp_path):
    work = tmp_path / "work"
    code, text, seen, left = run_demo(["--broker", "embedded", "--duration", "20", "--workdir", str(work)], tmp_path)
    assert code == 0, text
    assert text.startswith("broker: embedded (amqtt, in Python) on mqtt://127.0.0.1:"), text[:300]
    assert len(seen) >= 3, "the broker, the simulator and the board should have been children"
    assert left == [], "left behind: %s" % left
    for mid in ("m1", "m2", "m3", "m4", "m5", "m6"):
        assert "│ %s " % mid in text, mid
    assert "MISWIRED: m2 (position 2" in text
    # the table shows what reached the embedded broker, every message within the contract
    assert "as received from MQTT mqtt://127.0.0.1:" in text and "(embedded broker)" in text
    assert "the gateway's console" not in text
    assert "broke the contract" not in text
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("collection success today 今日采集成功率 (")
    assert last.endswith("Demo estate, building 3, unit 1): collectors 1/1, meters read 已采表 6/6")
    # amqtt carried it: the gateway and the ingest on persistent sessions, the demo's probe beside them
    log = (work / "amqtt" / "amqtt.log").read_text()
    assert "connected demo-gw (clean_session False" in log
    assert "connected metergate-demo-backoffice (clean_session False" in log
    assert "connected metergate-demo (clean_session True" in log
    assert "metergate embedded broker stopped" in log
    from metergate.backoffice.store import Store

    with Store("sqlite:///%s" % (tmp_path / "build" / "demo-backoffice.db")).connect() as db:
        stored = db.query("SELECT COUNT(*), COUNT(DISTINCT meter) FROM readings WHERE device = 'demo-gw'")[0]
        assert stored[0] >= 6 and stored[1] == 6
        assert db.query("SELECT COUNT(*) FROM quarantine")[0][0] == 0


def test_an_embedded_broker_that_cannot_start_is_named_when_asked_for(tmp_path):
    # an amqtt that fails to import: the broker asked for by name is an error, not a quiet fallback
    broken = tmp_path / "broken" / "amqtt"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('amqtt is broken here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "broken"))
    proc = subprocess.run([METERGATE, "demo", "--broker", "embedded", "--duration", "5"], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--broker embedded: the embedded broker did not start" in proc.stderr
    assert "amqtt is broken here" in proc.stderr
