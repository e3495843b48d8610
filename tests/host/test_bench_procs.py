"""The bench process layer (metergate.bench) and the HIL pytest plugin, with real
processes, a real mosquitto and real paho clients."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from metergate.bench import Broker, BrokerNotFound, ManagedProcess, MqttProbe, ProcessError, ReadyTimeout
from metergate.bench import TlsListener, find_mosquitto, free_tcp_port
from metergate.bench.procs import port_accepting

pytest_plugins = ["pytester"]

PY = sys.executable


def alive(pid):
    """True while `pid` is a live process (a zombie nobody reaps counts as gone)."""
    try:
        stat = pathlib.Path("/proc/%d/stat" % pid).read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def listener_script(port, delay):
    return ("import socket, time; time.sleep(%s); s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('127.0.0.1', %d)); s.listen(); print('listening', flush=True); time.sleep(60)"
            % (delay, port))


# -- ManagedProcess ------------------------------------------------------------

def test_free_tcp_port_can_be_bound():
    port = free_tcp_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 <= port <= 65535


def test_ready_when_port_accepts(tmp_path):
    port = free_tcp_port()
    proc = ManagedProcess([PY, "-c", listener_script(port, 0.3)], tmp_path / "l.log", ready_port=port)
    started = time.monotonic()
    with proc:
        # not before the child listened (it sleeps 0.3 s first)
        assert time.monotonic() - started >= 0.3
        assert port_accepting("127.0.0.1", port)
        assert proc.running
    assert not proc.running
    assert not port_accepting("127.0.0.1", port)
    assert proc.returncode == -signal.SIGTERM


def test_ready_when_log_line_matches(tmp_path):
    script = "echo starting; sleep 0.2; echo 'bus listening on tcp://127.0.0.1:4711'; sleep 60"
    with ManagedProcess(["sh", "-c", script], tmp_path / "l.log",
                        ready_line=r"listening on tcp://[\d.]+:(\d+)") as proc:
        assert proc.ready_match.group(1) == "4711"
        assert "starting" in proc.log_text()


def test_ready_when_path_exists(tmp_path):
    flag = tmp_path / "pty-link"
    with ManagedProcess(["sh", "-c", "sleep 0.2; touch '%s'; sleep 60" % flag], tmp_path / "l.log",
                        ready_path=flag):
        assert flag.exists()


def test_timeout_error_quotes_the_log_and_stops_the_process(tmp_path):
    port = free_tcp_port()
    proc = ManagedProcess(["sh", "-c", "echo 'config: meter 7 has no address'; exec sleep 60"],
                          tmp_path / "l.log", name="stubborn", ready_port=port, ready_timeout=0.5)
    with pytest.raises(ReadyTimeout) as err:
        with proc:
            pytest.fail("must not become ready")
    message = str(err.value)
    assert "stubborn not ready after 0.5 s" in message
    assert "127.0.0.1:%d" % port in message
    assert "config: meter 7 has no address" in message
    assert not alive(proc.pid)


def test_exit_before_ready_fails_at_once_with_code_and_log(tmp_path):
    proc = ManagedProcess(["sh", "-c", "echo 'Error: No such command' >&2; exit 2"], tmp_path / "l.log",
                          ready_port=free_tcp_port(), ready_timeout=30)
    started = time.monotonic()
    with pytest.raises(ProcessError) as err:
        with proc:
            pass
    assert time.monotonic() - started < 5
    assert not isinstance(err.value, ReadyTimeout)
    assert "exited with code 2" in str(err.value)
    assert "No such command" in str(err.value)  # stderr goes to the log too


def test_stop_ends_the_whole_process_group(tmp_path):
    # a shell that starts a child, like socat starting micropython
    script = "sleep 300 & echo child=$!; wait"
    with ManagedProcess(["sh", "-c", script], tmp_path / "l.log", ready_line=r"child=(\d+)") as proc:
        child = int(proc.ready_match.group(1))
        assert alive(child)
    assert not alive(child)
    assert not alive(proc.pid)


def test_stop_ends_children_of_a_leader_that_already_exited(tmp_path):
    proc = ManagedProcess(["sh", "-c", "sleep 300 & echo child=$!"], tmp_path / "l.log",
                          ready_line=r"child=(\d+)")
    with proc:
        child = int(proc.ready_match.group(1))
        assert proc.wait(5) == 0
        assert alive(child)  # orphaned but still in the group
    assert not alive(child)


def test_sigkill_after_grace_when_sigterm_is_ignored(tmp_path):
    script = "trap '' TERM; echo armed; while :; do sleep 0.05; done"
    proc = ManagedProcess(["sh", "-c", script], tmp_path / "l.log", ready_line="armed", grace=0.5)
    proc.start()
    proc.wait_ready(5)
    started = time.monotonic()
    code = proc.stop()
    assert code == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5
    assert proc.stop() == -signal.SIGKILL  # idempotent


def test_log_is_appended_and_log_text_is_this_run_only(tmp_path):
    log = tmp_path / "logs" / "sim.log"
    for word in ("first", "second"):
        proc = ManagedProcess(["sh", "-c", "echo %s; exec sleep 60" % word], log, ready_line=word)
        with proc:
            pass
    text = log.read_text()
    assert "first" in text and "second" in text
    assert "first" not in proc.log_text()
    assert "$ sh -c" in text  # each run starts with its command line


def test_missing_program_is_a_process_error(tmp_path):
    with pytest.raises(ProcessError, match="cannot start"):
        ManagedProcess(["/nonexistent/metergate-x"], tmp_path / "l.log").start()


# -- Broker ----------------------------------------------------------------------

def test_broker_round_trip_and_log(tmp_path):
    log = tmp_path / "broker" / "mosquitto.log"
    with Broker(log_path=log) as broker:
        assert broker.url == "mqtt://127.0.0.1:%d" % broker.port
        config = broker.config_path.read_text()
        assert "listener %d 127.0.0.1" % broker.port in config
        assert "allow_anonymous true" in config and "persistence false" in config
        with MqttProbe(broker.url) as sub, MqttProbe(broker.url) as pub:
            sub.subscribe("site/+/reading", qos=1)
            pub.publish("site/m1/reading", b"42.5", qos=1)
            msg = sub.get(timeout=5)
            assert (msg.topic, msg.payload, msg.qos) == ("site/m1/reading", b"42.5", 1)
        workdir = broker.workdir
    assert not port_accepting("127.0.0.1", broker.port)
    assert "mosquitto version" in log.read_text()
    assert "site/+/reading" in log.read_text()  # subscriptions are logged
    assert not workdir.exists()  # temp config removed, log kept
    assert log.exists()


def test_two_brokers_get_different_ports(tmp_path):
    with Broker(log_path=tmp_path / "a.log") as a, Broker(log_path=tmp_path / "b.log") as b:
        assert a.port != b.port
        with MqttProbe(a.url) as on_a, MqttProbe(b.url) as on_b:
            on_a.subscribe("x", qos=1)
            on_b.publish("x", b"only on b", qos=1)
            with pytest.raises(TimeoutError):
                on_a.get(timeout=0.3)


def test_broker_with_password_file_refuses_anonymous(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "gateway-17", "s3cret"], check=True)
    with Broker(log_path=tmp_path / "m.log", allow_anonymous=False, password_file=passwd) as broker:
        with pytest.raises(ConnectionError, match="refused"):
            MqttProbe(broker.url).connect()
        with pytest.raises(ConnectionError, match="refused"):
            MqttProbe(broker.url, username="gateway-17", password="wrong").connect()
        with MqttProbe(broker.url, username="gateway-17", password="s3cret") as ok:
            ok.subscribe("a", qos=1)
            ok.publish("a", b"1", qos=1)
            assert ok.get(timeout=5).payload == b"1"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_broker_tls_listener(tmp_path):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    tls = TlsListener(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    with Broker(log_path=tmp_path / "m.log", tls=tls) as broker:
        assert broker.tls_url == "mqtts://127.0.0.1:%d" % broker.tls_port
        with MqttProbe(broker.tls_url, ca_certs=tmp_path / "ca.crt") as secure, MqttProbe(broker.url) as plain:
            secure.subscribe("t", qos=1)
            plain.publish("t", b"over tls", qos=1)
            assert secure.get(timeout=5).payload == b"over tls"


def test_missing_mosquitto_names_the_debian_package(tmp_path):
    with pytest.raises(BrokerNotFound, match=r"apt-get install mosquitto"):
        find_mosquitto(path=str(tmp_path), extra_dirs=())
    assert os.access(find_mosquitto(), os.X_OK)


# -- the HIL plugin ----------------------------------------------------------------

NEEDS_TESTS = """
import pytest

@pytest.mark.needs("uart-invert")
def test_ab_swap_by_inverting(bench):
    assert "uart-invert" in bench.capabilities

@pytest.mark.needs("supply-adc", "de-pin")
def test_supply_voltage():
    pass

def test_plain():
    pass
"""


def run_plugin(pytester, *args):
    return pytester.runpytest("-p", "metergate.hil.plugin", "-p", "no:cacheprovider", *args)


def skip_reasons(result):
    """{test name: skip reason} of an in-process pytester run."""
    reasons = {}
    for report in result.reprec.getreports("pytest_runtest_logreport"):
        if report.skipped:
            reasons[report.nodeid.split("::")[-1]] = report.longrepr[2].removeprefix("Skipped: ")
    return reasons


def test_needs_marker_on_the_virtual_board(pytester):
    pytester.makepyfile(NEEDS_TESTS)
    result = run_plugin(pytester)
    result.assert_outcomes(passed=2, skipped=1)
    assert skip_reasons(result) == {
        "test_supply_voltage": "needs de-pin, supply-adc; board virtual has uart-invert"}


def test_needs_marker_on_a_real_board_uses_its_config(pytester):
    pytester.makepyfile(NEEDS_TESTS)
    result = run_plugin(pytester, "--board", "port:/dev/ttyUSB0", "--board-config", "lilygo-t-can485")
    result.assert_outcomes(passed=1, skipped=2)
    assert skip_reasons(result)["test_ab_swap_by_inverting"] == (
        "needs uart-invert; board port:/dev/ttyUSB0 [lilygo-t-can485] has no capabilities")
    result.stdout.fnmatch_lines(["metergate bench: board=port:/dev/ttyUSB0*"])


def test_needs_marker_without_board_config(pytester):
    pytester.makepyfile(NEEDS_TESTS)
    result = run_plugin(pytester, "--board", "port:/dev/ttyUSB0")
    result.assert_outcomes(passed=1, skipped=2)
    assert skip_reasons(result)["test_ab_swap_by_inverting"] == (
        "needs uart-invert; board port:/dev/ttyUSB0 has no capabilities (no --board-config given)")


def test_board_config_file_path(pytester):
    pytester.makepyfile(NEEDS_TESTS)
    config = pytester.path / "bench-board.json"
    config.write_text('{"name": "bench-board", "capabilities": ["uart-invert", "de-pin", "supply-adc"]}')
    result = run_plugin(pytester, "--board", "port:/dev/ttyUSB0", "--board-config", str(config))
    result.assert_outcomes(passed=3)


def test_unknown_capability_is_a_usage_error(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.needs("uart-invret")
        def test_typo():
            pass
    """)
    result = run_plugin(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown capability uart-invret*"])


@pytest.mark.parametrize("args, message", [
    (("--board", "ttyUSB0"), "*--board must be 'virtual' or 'port:DEVICE'*"),
    (("--bus", "port:"), "*--bus must be 'sim' or 'port:DEVICE'*"),
    (("--broker", "tcp://x:1"), "*--broker: not an MQTT URL*"),
    (("--board-config", "no-such-board"), "*--board-config no-such-board*"),
])
def test_bad_options_are_usage_errors(pytester, args, message):
    pytester.makepyfile("def test_x(): pass")
    result = run_plugin(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_sim_and_virtual_board_skip_when_the_bus_is_a_real_port(pytester):
    pytester.makepyfile("""
        def test_uses_sim(sim):
            pass
        def test_uses_board(board):
            pass
    """)
    result = run_plugin(pytester, "--bus", "port:/dev/ttyUSB1")
    result.assert_outcomes(skipped=2)
    reasons = skip_reasons(result)
    assert reasons["test_uses_sim"] == reasons["test_uses_board"]
    assert reasons["test_uses_sim"].startswith("--bus port:/dev/ttyUSB1: the bus is a real RS-485 adapter")
    assert "--serial /dev/ttyUSB1" in reasons["test_uses_sim"]


def test_bench_logs_are_kept_per_test_and_named_in_junit(pytester):
    pytester.makepyfile(test_logs="""
        def test_writes(bench_logs):
            (bench_logs / "note.txt").write_text("kept")
        def test_fails(bench_logs):
            assert False
    """)
    result = run_plugin(pytester, "--junitxml=out.xml")
    result.assert_outcomes(passed=1, failed=1)
    kept = pytester.path / "build" / "hil-logs" / "test_logs" / "test_writes" / "note.txt"
    assert kept.read_text() == "kept"
    result.stdout.fnmatch_lines(["*bench logs*", "*hil-logs/test_logs/test_fails*"])
    junit = (pytester.path / "out.xml").read_text()
    assert 'name="board" value="virtual"' in junit
    assert 'name="bench_logs"' in junit


def test_broker_fixture_with_an_external_url(pytester):
    with Broker(log_path=pytester.path / "ext.log") as external:
        pytester.makepyfile("""
            def test_external(broker, mqtt):
                assert broker.url == %r and broker.log_path is None
                client = mqtt()
                client.subscribe("e", qos=1)
                client.publish("e", b"via external", qos=1)
                assert client.get(timeout=5).payload == b"via external"
        """ % external.url)
        result = run_plugin(pytester, "--broker", external.url)
        result.assert_outcomes(passed=1)
        assert not (pytester.path / "build" / "hil-logs" / "_session").exists()  # no own mosquitto
        assert "New client connected" in (pytester.path / "ext.log").read_text()


def test_hil_command_passes_args_and_returns_pytests_code(tmp_path):
    result = subprocess.run([PY, "-m", "metergate.cli", "hil", "--", "-k", "no_test_has_this_name", "-q"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout + result.stderr
    assert "deselected" in result.stdout
    assert (tmp_path / "build" / "hil-junit.xml").exists()  # the default junit path
