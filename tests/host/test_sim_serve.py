"""`metergate sim serve` as a real process: TCP (raw and MGUART1), pty, control.

Timing is measured on the client side; the reference values come from the
site file and electrical.measure, the reader is the independent `dlt645`
package or a frame parser written here from the DL/T 645 framing rules.
"""

import json
import os
import shutil
import socket
import statistics
import struct
import sys
import time

import pytest
from click.testing import CliRunner

from metergate.bench.procs import LOOPBACK, ManagedProcess, free_tcp_port
from metergate.cli import main
from metergate.sim import DEMO_SITE, electrical
from metergate.sim.control import SimControl, SimControlError
from metergate.sim.site import SiteState, load_site

METERGATE = [os.path.join(os.path.dirname(sys.executable), "metergate")]
M1 = "202107072529"  # demo meter m1: 2400 8E1, customer c101 on breaker QF1
M1_DELAY = load_site(DEMO_SITE).meter("m1").response_delay_ms / 1000  # 40 ms


def wire(addr):
    return bytes.fromhex(addr)[::-1]


def request(addr, di, preamble=b""):
    body = b"\x68" + wire(addr) + b"\x68\x11\x04" + bytes((b + 0x33) & 0xFF for b in struct.pack("<I", di))
    return preamble + body + bytes([sum(body) & 0xFF, 0x16])


def find_frame(buf):
    """(address, control, data) of the first well-formed frame in buf, else None."""
    for i in range(len(buf)):
        f = buf[i:]
        if len(f) >= 12 and f[0] == 0x68 and f[7] == 0x68 and len(f) >= 12 + f[9]:
            f = f[:12 + f[9]]
            if f[-1] == 0x16 and sum(f[:-2]) & 0xFF == f[-2]:
                return f[1:7], f[8], bytes((b - 0x33) & 0xFF for b in f[10:-2])
    return None


def read_reply(sock, timeout):
    """Bytes until a whole frame arrived (or the timeout); (bytes, monotonic time of the last)."""
    sock.settimeout(0.02)
    buf, last = b"", None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        if not data:
            break
        buf, last = buf + data, time.monotonic()
        if find_frame(buf):
            break
    return buf, last


def serve(tmp_path, *args, name="sim"):
    bus, control = free_tcp_port(), free_tcp_port()
    argv = METERGATE + ["sim", "serve", str(DEMO_SITE), "--listen", "tcp://%s:%d" % (LOOPBACK, bus),
                        "--control", "tcp://%s:%d" % (LOOPBACK, control), "--seed", "1", "-v"] + list(args)
    proc = ManagedProcess(argv, tmp_path / (name + ".log"), name="metergate sim serve",
                          ready_port=[bus, control], ready_timeout=20)
    return proc, bus, "tcp://%s:%d" % (LOOPBACK, control)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    proc, port, control = serve(tmp_path_factory.mktemp("sim"))
    with proc:
        yield port, control, proc


def connect(port):
    s = socket.create_connection((LOOPBACK, port), 5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def test_request_reply_takes_wire_time_plus_meter_delay(sim):
    port, _, proc = sim
    req = request(M1, 0x02010100)  # voltage: 16 bytes without wake-up FEs
    assert len(req) == 16
    took, sizes = [], set()
    with connect(port) as s:
        for _ in range(5):
            t0 = time.monotonic()
            s.sendall(req)
            reply, t_last = read_reply(s, 2.0)
            assert find_frame(reply) is not None, proc.tail()
            took.append(t_last - t0)
            sizes.add(len(reply))
            time.sleep(0.05)
    (n_reply,) = sizes
    expected = (len(req) + n_reply) * 11 / 2400 + M1_DELAY  # 16 + 22 bytes: 174 ms + 40 ms
    assert statistics.median(took) == pytest.approx(expected, rel=0.05)
    assert min(took) > expected * 0.95  # never faster than the wire allows


def test_dlt645_package_reads_the_simulated_meter_over_tcp(sim):
    from dlt645 import MeterClientService

    port, _, _ = sim
    site = load_site(DEMO_SITE)
    client = MeterClientService.new_tcp_client(LOOPBACK, port, timeout=3.0)
    try:
        client.set_address(wire(M1).hex())  # the package takes the address in wire order
        voltage = client.read_02(0x02010100)
        current = client.read_02(0x02020100)
        energy = client.read_00(0x00010000)  # forward active energy, total
    finally:
        client.disconnect()
    truth = electrical.measure(site, SiteState(site), "m1", time.time())
    assert voltage is not None and current is not None and energy is not None
    assert voltage.value == pytest.approx(truth.U, abs=0.051)  # XXX.X V
    assert current.value == pytest.approx(truth.I, abs=0.0011)  # XXX.XXX A
    # forward energy started at 317.76 kWh and grows with 1.2 kW: a few Wh since start
    assert 317.76 <= energy.value <= 317.76 + 1.2 * 60 / 3600 + 0.01


def test_control_breaker_drops_the_current(sim):
    port, control, _ = sim
    with SimControl(control) as ctl, connect(port) as s:
        def current():
            s.sendall(request(M1, 0x02020100))
            reply, _ = read_reply(s, 2.0)
            addr, c, data = find_frame(reply)
            assert c == 0x91 and data[:4] == struct.pack("<I", 0x02020100)
            return int(data[4:7][::-1].hex()) / 1000  # XXX.XXX, positive here

        before = current()
        assert before > 4.0  # 1.2 kW at PF 0.95 on 220 V: 5.7 A
        assert ctl.breaker("QF1", False) == {"ok": True, "id": "QF1", "closed": False}
        try:
            assert current() < 0.01
            state = ctl.state()
            assert state["breakers"]["QF1"] is False
            assert state["meters"]["m1"]["powered"] is True and state["meters"]["m1"]["I"] < 0.01
        finally:
            ctl.breaker("QF1", True)
        assert current() == pytest.approx(before, rel=0.05)
        stats = ctl.stats()
        assert stats["meters"]["m1"]["replies_sent"] >= 3
        assert stats["meters"]["m1"]["requests_heard"] >= 3
        with pytest.raises(SimControlError, match="no breaker"):
            ctl.breaker("QF99", False)
        with pytest.raises(SimControlError, match="unknown op"):
            ctl.request("explode")
        with pytest.raises(SimControlError, match="closed"):
            ctl.request("breaker", id="QF1", closed="no")


def test_control_rejects_bad_json(sim):
    _, control, _ = sim
    host, port = control[6:].split(":")
    with socket.create_connection((host, int(port)), 5) as s:
        s.sendall(b"{nope\n")
        reply = json.loads(s.makefile().readline())
    assert reply["ok"] is False and "JSON" in reply["error"]


def mguart(kind, payload):
    return kind + struct.pack(">H", len(payload)) + payload


def settings(baud=2400, parity="E", invert=False):
    return json.dumps({"baud": baud, "bits": 8, "parity": parity, "stop": 1, "invert": invert}).encode()


def test_virtual_uart_link_line_settings_and_ab_swap(sim):
    port, control, _ = sim
    req = request(M1, 0x02010100, b"\xfe" * 4)
    with connect(port) as s, SimControl(control) as ctl:
        s.sendall(b"MGUART1\n" + mguart(b"L", settings()))
        s.sendall(mguart(b"D", req))
        assert find_frame(read_reply(s, 2.0)[0])[1] == 0x91
        # wrong baud: the meter hears garbage and stays silent
        s.sendall(mguart(b"L", settings(baud=1200)) + mguart(b"D", req))
        assert find_frame(read_reply(s, 0.6)[0]) is None
        # the gateway's UART inverted on a good pair: no valid frame either
        s.sendall(mguart(b"L", settings(invert=True)) + mguart(b"D", req))
        assert find_frame(read_reply(s, 0.6)[0]) is None
        # A/B swapped at the gateway: plain UART fails, inverted UART reads the meter
        ctl.fault("gateway-ab-swapped", True)
        try:
            s.sendall(mguart(b"D", req))
            assert find_frame(read_reply(s, 2.0)[0])[1] == 0x91
            s.sendall(mguart(b"L", settings(invert=False)) + mguart(b"D", req))
            assert find_frame(read_reply(s, 0.6)[0]) is None
        finally:
            ctl.fault("gateway-ab-swapped", False)


def test_second_tcp_client_is_refused(sim):
    port, _, _ = sim
    with connect(port) as first:
        first.sendall(request(M1, 0x02010100))
        assert find_frame(read_reply(first, 2.0)[0])
        with connect(port) as second:
            second.settimeout(2.0)
            assert second.recv(10) == b""  # closed at once: one gateway at a time


def test_pty_transport_with_pyserial_and_clean_sigterm(tmp_path):
    import serial

    link = tmp_path / "bus.pty"
    argv = METERGATE + ["sim", "serve", "demo", "--pty", str(link)]
    with ManagedProcess(argv, tmp_path / "pty.log", ready_path=link, ready_timeout=20) as proc:
        with serial.Serial(str(link), 2400, parity=serial.PARITY_EVEN, timeout=0.05) as port:
            t0 = time.monotonic()
            port.write(request(M1, 0x02010100, b"\xfe" * 4))
            buf = b""
            while time.monotonic() - t0 < 2.0 and not find_frame(buf):
                buf += port.read(64)
        addr, control, data = find_frame(buf)
        assert addr == wire(M1) and control == 0x91 and data[:4] == struct.pack("<I", 0x02010100)
        assert proc.wait(0.1) is None
    assert proc.returncode == 0  # SIGTERM: a clean exit
    assert not os.path.lexists(link)
    assert "sim: stopped" in proc.log_text()


def test_serve_needs_exactly_one_transport():
    result = CliRunner().invoke(main, ["sim", "serve", "demo"])
    assert result.exit_code == 2 and "exactly one of --listen, --pty, --serial" in result.output


def test_check_and_demo_site(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["sim", "check"])
    assert result.exit_code == 0, result.output
    assert "m2-reversed" in result.output and "6 meters" in result.output
    assert runner.invoke(main, ["sim", "demo-site"]).output.strip() == str(DEMO_SITE)
    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO_SITE.read_text().replace('address = "202107072530"', 'address = "20210707253X"'))
    result = runner.invoke(main, ["sim", "check", str(bad)])
    assert result.exit_code == 1
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if "20210707253X" in text)
    assert "meters[1].address" in result.output and "line %d" % line in result.output


def test_serial_transport_through_a_socat_null_modem(tmp_path):
    """`--serial DEV` opens a real serial device with pyserial. A socat pty pair
    stands in for the USB RS-485 adapter and the cable: the simulator opens one
    end as its port, a pyserial "gateway" polls m1 on the other."""
    import serial

    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is not installed (make test installs it: scripts/system-deps.sh)")
    adapter, gateway = tmp_path / "adapter", tmp_path / "gateway"
    cable = ManagedProcess([socat, "-d", "pty,raw,echo=0,link=%s" % adapter, "pty,raw,echo=0,link=%s" % gateway],
                           tmp_path / "socat.log", name="socat", ready_path=gateway, ready_timeout=10)
    with cable:
        argv = METERGATE + ["sim", "serve", "demo", "--serial", str(adapter), "--baud", "2400", "--parity", "E"]
        with ManagedProcess(argv, tmp_path / "serial.log", ready_line=r"sim: .*serial", ready_timeout=20) as proc:
            with serial.Serial(str(gateway), 2400, parity=serial.PARITY_EVEN, timeout=0.05) as port:
                t0 = time.monotonic()
                port.write(request(M1, 0x04000401, b"\xfe" * 4))  # comm address
                buf = b""
                while time.monotonic() - t0 < 3.0 and not find_frame(buf):
                    buf += port.read(64)
            found = find_frame(buf)
            assert found is not None, proc.tail()
            addr, control, data = found
            assert (addr, control) == (wire(M1), 0x91)
            assert data == struct.pack("<I", 0x04000401) + wire(M1)  # the address, BCD low byte first
            assert "serial %s at 2400 8E1" % adapter in proc.log_text()
        assert proc.returncode == 0
