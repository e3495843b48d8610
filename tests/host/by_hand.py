"""DL/T 645 and Modbus RTU frames built and parsed by hand from PROTOCOLS.md, and
a simulated bus driven in virtual time, for the simulator's wire-level tests
(test_sim_meters.py, test_sim_faults.py).

Nothing here imports metergate.codecs / gateway.protocols: the meter models
build their frames with those, so these helpers are the independent check.
"""

import struct

from metergate.sim.bus import Bus
from metergate.sim.meters import build_meters
from metergate.sim.site import LineSettings, SiteState, load_site_text

# ---------------------------------------------------------------------------
# DL/T 645 (PROTOCOLS.md "DL/T 645-2007 framing")


def wire_addr(addr: str) -> bytes:
    """12 digits -> 6 bytes low byte first: 202107072529 -> 29 25 07 07 21 20."""
    return bytes.fromhex(addr.rjust(12, "0"))[::-1]


def frame(addr_wire: bytes, control: int, data: bytes = b"", preamble: int = 4) -> bytes:
    body = b"\x68" + addr_wire + b"\x68" + bytes([control, len(data)]) + bytes((x + 0x33) & 0xFF for x in data)
    return b"\xfe" * preamble + body + bytes([sum(body) & 0xFF, 0x16])


def read_req(addr: str, di: int) -> bytes:
    return frame(wire_addr(addr), 0x11, di.to_bytes(4, "little"))


def read_req_1997(addr: str, di: int) -> bytes:
    return frame(wire_addr(addr), 0x01, di.to_bytes(2, "little"))


READ_ADDRESS = frame(b"\xaa" * 6, 0x13)


def parse(buf: bytes):
    """(address, control, data - 0x33) of the first well-formed frame in buf (FE and
    junk before it skipped), else None."""
    for i in range(len(buf)):
        f = buf[i:]
        if len(f) >= 12 and f[0] == 0x68 and f[7] == 0x68 and len(f) >= 12 + f[9]:
            f = f[:12 + f[9]]
            if f[-1] == 0x16 and sum(f[:-2]) & 0xFF == f[-2]:
                return f[1:7], f[8], bytes((x - 0x33) & 0xFF for x in f[10:-2])
    return None


def bcd(data: bytes, decimals: int = 0, signed: bool = False) -> float:
    """BCD low byte first; signed: the top bit of the most significant byte is the sign."""
    b = bytearray(data)
    neg = signed and bool(b[-1] & 0x80)
    if signed:
        b[-1] &= 0x7F
    digits = bytes(reversed(b)).hex()
    assert digits.isdigit(), "not BCD: %s" % data.hex(" ")
    value = int(digits) / 10 ** decimals
    return -value if neg else value


def to_bcd(value: int, size: int) -> bytes:
    return bytes.fromhex("%0*d" % (2 * size, value))[::-1]


# ---------------------------------------------------------------------------
# Modbus RTU


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS: init FFFF, reflected polynomial A001."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def mb_req(unit: int, fn: int, reg: int, count: int) -> bytes:
    body = struct.pack(">BBHH", unit, fn, reg, count)
    return body + struct.pack("<H", crc16(body))


def mb_valid(reply: bytes) -> bool:
    return len(reply) >= 5 and struct.unpack("<H", reply[-2:])[0] == crc16(reply[:-2])


def mb_check(reply: bytes) -> bytes:
    """The reply without its CRC, after checking the CRC (low byte first)."""
    assert mb_valid(reply), reply.hex(" ")
    return reply[:-2]


# ---------------------------------------------------------------------------
# Sites and the bus in virtual time


def site_toml(meters, customers=(), faults="", buses=(("b", 2400, "E"),), work_order="", positions=8):
    """meters: (id, toml lines) each at the next position of box X; customers: (id, toml,
    position), each on its own breaker QFn at that position."""
    parts = ['[site]\nname = "t"\n']
    for name, baud, parity in buses:
        parts.append('[[buses]]\nname = "%s"\nbaud = %d\nparity = "%s"\n' % (name, baud, parity))
    parts.append('[[boxes]]\nid = "X"\npositions = %d\n' % positions)
    for n, (mid, more) in enumerate(meters, 1):
        parts.append('[[meters]]\nid = "%s"\nposition = %d\n%s\n' % (mid, n, more))
    for n, (cid, more, pos) in enumerate(customers, 1):
        parts.append('[[customers]]\nid = "%s"\n%s\n' % (cid, more))
        parts.append('[[breakers]]\nid = "QF%d"\nposition = %d\ncustomer = "%s"\n' % (n, pos, cid))
    parts += [work_order, faults]
    return "\n".join(parts)


class BusRig:
    """One bus of a site seen from the gateway, in virtual time: ``now`` is the
    meters' wall clock, ``t`` the bus timeline."""

    def __init__(self, text, bus=None, seed=1, now=1_700_000_000.0):
        self.site = load_site_text(text, "t.toml")
        self.state = SiteState(self.site)
        self.now = now
        self.models = build_meters(self.site, self.state, bus or self.site.buses[0].name, clock=lambda: self.now)
        self.bus = Bus(self.site, self.state, self.models, seed=seed, wall=lambda: self.now)
        self.t = 0.0
        self.bus.advance(self.t)

    def line(self, baud, parity="E", invert=False):
        self.bus.set_gateway_line(LineSettings(baud, parity), invert=invert, t=self.t)

    def transact(self, request: bytes) -> bytes:
        self.bus.write(request, self.t)
        got = self.bus.run_until_idle(self.t)
        self.t = (got[-1][0] if got else self.t) + 1.0  # > any request + Td: the bus is idle again
        return b"".join(d for _, d in got)

    def advance(self, seconds):
        """Wall time passes (the meters integrate energy over it)."""
        self.now += seconds
        self.t += 1.0

    def _settle(self):  # what the control interface does before a switch
        for m in self.models:
            m.settle(self.now)

    def fault(self, fid, on):
        self._settle()
        self.state.set_fault(fid, on)

    def breaker(self, bid, closed):
        self._settle()
        self.state.set_breaker(bid, closed)
