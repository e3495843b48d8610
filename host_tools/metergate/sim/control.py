"""Control interface of a running simulator: JSON lines over TCP.

One request line -> one reply line; any number of clients at once.

    {"op": "breaker", "id": "QF3", "closed": false}  -> {"ok": true, "id": "QF3", "closed": false}
    {"op": "fault", "id": "bus-loose", "enabled": true} -> {"ok": true, "id": ..., "enabled": true}
    {"op": "state"}  -> breakers, faults, gateway line, per meter powered + measurements
    {"op": "stats"}  -> per meter requests_heard, replies_sent, collisions, corrupted, dropped; bus totals
    {"op": "reset_stats"}, {"op": "ping"}
    errors           -> {"ok": false, "error": "..."}

``SimControl(url)`` is the client (``breaker``, ``fault``, ``state``, ``stats``).
"""

from __future__ import annotations

import json
import logging
import socket
import threading

from metergate.sim.transports import _Listener, parse_tcp_url

log = logging.getLogger("metergate.sim.control")


class ControlServer(_Listener):
    """Serves the control protocol for one simulated bus (``runner``: a BusRunner)."""

    name = "sim-control"

    def __init__(self, runner, host: str, port: int, meters, clock=None):
        super().__init__(host, port)
        self.runner = runner
        self.bus = runner.bus
        self.site = self.bus.site
        self.state = self.bus.state
        self.meters = list(meters)
        self.clock = clock or self.bus.wall

    def accepted(self, conn, addr):
        threading.Thread(target=self._client, args=(conn,), name="sim-control-client", daemon=True).start()

    def _client(self, conn):
        buf = b""
        conn.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    reply = self.handle_line(line)
                    conn.settimeout(5.0)
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                    conn.settimeout(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    def handle_line(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": "not JSON: %s" % exc}
        if not isinstance(req, dict):
            return {"ok": False, "error": "a request is a JSON object with an 'op'"}
        try:
            return self.handle(req)
        except (KeyError, ValueError, TypeError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return {"ok": False, "error": str(msg)}
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            log.exception("control request %r failed", req)
            return {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "breaker":
            bid, closed = _need(req, "id", str), _need(req, "closed", bool)
            with self.runner.locked():
                self._settle()
                self.state.set_breaker(bid, closed)
            log.info("breaker %s %s", bid, "closed" if closed else "opened")
            return {"ok": True, "id": bid, "closed": closed}
        if op == "fault":
            fid, enabled = _need(req, "id", str), _need(req, "enabled", bool)
            with self.runner.locked():
                self._settle()
                self.state.set_fault(fid, enabled)
            log.info("fault %s %s", fid, "enabled" if enabled else "disabled")
            return {"ok": True, "id": fid, "enabled": enabled}
        if op == "state":
            return self.snapshot()
        if op == "stats":
            with self.runner.locked():
                return {"ok": True,
                        "meters": {mid: s.as_dict() for mid, s in self.bus.stats.items()},
                        "bus": dict(self.bus.bus_stats)}
        if op == "reset_stats":
            with self.runner.locked():
                for s in self.bus.stats.values():
                    s.__init__()
                for k in self.bus.bus_stats:
                    self.bus.bus_stats[k] = 0
            return {"ok": True}
        raise ValueError("unknown op %r (breaker, fault, state, stats, reset_stats, ping)" % (op,))

    def _settle(self):
        """Energy up to now counts under the old state; the switch acts from now on."""
        now = self.clock()
        for model in self.meters:
            settle = getattr(model, "settle", None)
            if settle is not None:
                settle(now)

    def snapshot(self) -> dict:
        now = self.clock()
        with self.runner.locked():
            breakers = dict(self.state.breakers)
            faults = dict(self.state.faults)
            meters = {}
            for model in self.meters:
                mid = model.meter.id
                m = model.measurement(now)  # also brings its energy registers up to now
                link = model.link
                entry = {
                    "powered": bool(model.powered(now)),
                    "protocol": model.meter.protocol,
                    "address": model.meter.bus_address,
                    "line": str(link.line),
                    "inverted": bool(link.inverted),
                    "U": _r(m.U), "I": _r(m.I), "P_kw": _r(m.P, 4), "Q_kvar": _r(m.Q, 4), "PF": _r(m.PF, 3),
                    "I_N": _r(m.I_N), "true_P_kw": _r(m.true_P, 4), "frequency": _r(m.frequency, 2),
                    "phases": [{"U": _r(p.U), "I": _r(p.I), "P_kw": _r(p.P, 4)} for p in m.phases],
                    "flags": sorted(k for k, v in m.flags.as_dict().items() if v),
                }
                energy = getattr(model, "energy", None)
                if energy is not None and hasattr(energy, "forward_kwh"):
                    entry["energy"] = {"forward_kwh": _r(energy.forward_kwh, 4),
                                       "reverse_kwh": _r(energy.reverse_kwh, 4)}
                meters[mid] = entry
            gateway = {"line": str(self.bus.gateway_line), "invert": self.bus.gateway_invert,
                       "connected": self.runner.sink is not None}
        return {"ok": True, "time": now, "site": self.site.name, "breakers": breakers, "faults": faults,
                "gateway": gateway, "meters": meters}


def _r(x, nd=3):
    return None if x is None else round(float(x), nd)


def _need(req, key, typ):
    if key not in req:
        raise ValueError("missing %r" % key)
    value = req[key]
    if not isinstance(value, typ):
        raise ValueError("%r must be %s" % (key, "true/false" if typ is bool else typ.__name__))
    return value


class SimControlError(RuntimeError):
    """The simulator answered {"ok": false, "error": ...}."""


class SimControl:
    """Client of the control interface: ``SimControl("tcp://127.0.0.1:PORT")``.

    Keeps one connection; usable as a context manager.
    """

    def __init__(self, url: str, timeout: float = 5.0):
        self.host, self.port = parse_tcp_url(url)
        self.timeout = timeout
        self._sock = None
        self._buf = b""

    def _connect(self):
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), self.timeout)
            self._buf = b""
        return self._sock

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, op: str, **fields) -> dict:
        """Send one request; the reply dict, or SimControlError for {"ok": false}."""
        sock = self._connect()
        try:
            sock.sendall(json.dumps(dict(fields, op=op)).encode() + b"\n")
            while b"\n" not in self._buf:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("simulator closed the control connection")
                self._buf += data
        except OSError:
            self.close()
            raise
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise SimControlError(reply.get("error", "unknown error"))
        return reply

    def breaker(self, breaker_id: str, closed: bool) -> dict:
        return self.request("breaker", id=breaker_id, closed=bool(closed))

    def fault(self, fault_id: str, enabled: bool) -> dict:
        return self.request("fault", id=fault_id, enabled=bool(enabled))

    def state(self) -> dict:
        return self.request("state")

    def stats(self) -> dict:
        return self.request("stats")

    def reset_stats(self) -> dict:
        return self.request("reset_stats")
