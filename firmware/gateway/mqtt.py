# MQTT 3.1.1 client on asyncio, for MicroPython (unix port, ESP32) and CPython.
# QoS 0 and 1 both ways, keepalive with dead-broker detection, reconnect with
# jittered exponential backoff, retransmission of unacked QoS 1 messages with
# DUP, re-subscription when the broker lost the session, TLS with server
# verification and an optional client certificate. Behaviour and API:
# docs/mqtt-client.md.
#
# Memory: one receive buffer of max_packet bytes and one transmit buffer are
# allocated up front; a PUBLISH is assembled in the transmit buffer and written
# in one piece; a received packet is read into the receive buffer, and only
# the topic (str) and payload (bytes) handed to on_message are new objects.
import sys

try:
    import asyncio
except ImportError:  # older MicroPython firmware
    import uasyncio as asyncio

from random import getrandbits

from gateway.compat import const, ticks_ms, ticks_diff, sleep_ms as _sleep_ms

_MPY = sys.implementation.name == "micropython"

CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x82)  # SUBSCRIBE carries fixed-header flags 0010
SUBACK = const(0x90)
UNSUBACK = const(0xB0)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)

MAX_REMAINING = const(268435455)  # largest 4-byte remaining length
_TXBUF = const(512)

CONNACK_ERRORS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

_PINGREQ_PKT = b"\xc0\x00"
_DISCONNECT_PKT = b"\xe0\x00"


class MQTTError(Exception):
    """A protocol violation or a refusal by the broker."""


class ConnectRefused(MQTTError):
    """CONNACK with a non-zero return code; .code holds it."""

    def __init__(self, code):
        super().__init__("connection refused: %s (%d)" % (CONNACK_ERRORS.get(code, "unknown"), code))
        self.code = code


# -- codec: pure functions, no I/O ---------------------------------------------


def put_varint(buf, off, n):
    """Write the remaining length n at buf[off]; returns the offset after it."""
    if n < 0 or n > MAX_REMAINING:
        raise ValueError("remaining length out of range")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[off] = b | 0x80
            off += 1
        else:
            buf[off] = b
            return off + 1


def varint(n):
    """The remaining-length bytes of n."""
    buf = bytearray(4)
    return bytes(buf[: put_varint(buf, 0, n)])


def get_varint(buf, off=0, end=-1):
    """(value, offset after) of the remaining length at buf[off]; ValueError
    when it is cut short or longer than four bytes."""
    if end < 0:
        end = len(buf)
    n = 0
    shift = 0
    while shift < 28:
        if off >= end:
            raise ValueError("truncated remaining length")
        b = buf[off]
        off += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, off
        shift += 7
    raise ValueError("remaining length longer than 4 bytes")


def _as_bytes(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def _put_field(body, data):
    data = _as_bytes(data)
    if len(data) > 65535:
        raise ValueError("field longer than 65535 bytes")
    body.append(len(data) >> 8)
    body.append(len(data) & 0xFF)
    body.extend(data)


def _packet(first, body):
    hdr = bytearray(5)
    hdr[0] = first
    n = put_varint(hdr, 1, len(body))
    return bytes(hdr[:n]) + bytes(body)


def connect_packet(client_id, clean_session=True, keepalive=60, user=None, password=None, will=None):
    """CONNECT. will: (topic, payload, qos, retain) or None."""
    if not 0 <= keepalive <= 65535:
        raise ValueError("keepalive out of range")
    if password is not None and user is None:
        raise ValueError("MQTT 3.1.1 needs a user name with a password")
    flags = 0x02 if clean_session else 0
    body = bytearray(b"\x00\x04MQTT\x04\x00\x00\x00")
    body[8] = keepalive >> 8
    body[9] = keepalive & 0xFF
    _put_field(body, client_id)
    if will is not None:
        topic, payload, qos, retain = will
        if qos not in (0, 1, 2):
            raise ValueError("will qos must be 0, 1 or 2")
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        _put_field(body, topic)
        _put_field(body, payload)
    if user is not None:
        flags |= 0x80
        _put_field(body, user)
    if password is not None:
        flags |= 0x40
        _put_field(body, password)
    body[7] = flags
    return _packet(CONNECT, body)


def parse_connack(body):
    """session_present from a CONNACK body; ConnectRefused for a refusal."""
    if len(body) != 2 or body[0] & 0xFE:
        raise MQTTError("malformed CONNACK")
    if body[1]:
        raise ConnectRefused(body[1])
    return bool(body[0] & 1)


def publish_header(buf, topic, plen, qos=0, retain=False, dup=False, pid=0):
    """Write a PUBLISH's fixed header, topic and packet id into buf (topic:
    bytes, plen: payload length); returns the header length. The payload
    follows it on the wire."""
    tlen = len(topic)
    if tlen > 65535:
        raise ValueError("topic too long")
    if qos:
        if qos != 1:
            raise ValueError("qos must be 0 or 1")
        if not 0 < pid < 65536:
            raise ValueError("packet id out of range")
    buf[0] = PUBLISH | (0x08 if (dup and qos) else 0) | (qos << 1) | (1 if retain else 0)
    off = put_varint(buf, 1, 2 + tlen + plen + (2 if qos else 0))
    buf[off] = tlen >> 8
    buf[off + 1] = tlen & 0xFF
    off += 2
    buf[off : off + tlen] = topic
    off += tlen
    if qos:
        buf[off] = pid >> 8
        buf[off + 1] = pid & 0xFF
        off += 2
    return off


def publish_packet(topic, payload, qos=0, retain=False, dup=False, pid=0):
    """A whole PUBLISH as bytes (tests and tools; the client writes in place)."""
    topic = _as_bytes(topic)
    payload = _as_bytes(payload)
    buf = bytearray(9 + len(topic))
    n = publish_header(buf, topic, len(payload), qos, retain, dup, pid)
    return bytes(buf[:n]) + payload


def parse_publish(first, buf, n, off=0):
    """Locate the parts of a PUBLISH whose body is buf[off:off + n]: returns
    (topic_end, payload_start, qos, pid) as offsets into buf; the topic is
    buf[off + 2:topic_end], the payload buf[payload_start:off + n]."""
    qos = (first >> 1) & 3
    if qos == 3:
        raise MQTTError("PUBLISH with qos 3")
    if n < 2:
        raise MQTTError("PUBLISH too short")
    tend = off + 2 + ((buf[off] << 8) | buf[off + 1])
    start = tend + (2 if qos else 0)
    if start > off + n:
        raise MQTTError("PUBLISH topic overruns the packet")
    pid = 0
    if qos:
        pid = (buf[tend] << 8) | buf[tend + 1]
        if not pid:
            raise MQTTError("PUBLISH with packet id 0")
    return tend, start, qos, pid


def decode_publish(packet):
    """(topic, payload, qos, retain, dup, pid) of a whole PUBLISH packet."""
    if packet[0] & 0xF0 != PUBLISH:
        raise MQTTError("not a PUBLISH")
    try:
        n, off = get_varint(packet, 1)
    except ValueError as exc:
        raise MQTTError(str(exc))
    if off + n != len(packet):
        raise MQTTError("remaining length does not match the packet")
    mv = memoryview(packet)
    tend, start, qos, pid = parse_publish(packet[0], mv, n, off)
    topic = _topic(mv, off + 2, tend)
    return topic, bytes(mv[start:]), qos, bool(packet[0] & 1), bool(packet[0] & 8), pid


def _topic(mv, begin, end):
    try:
        return str(mv[begin:end], "utf-8")
    except Exception:  # UnicodeError (MicroPython), UnicodeDecodeError (CPython)
        raise MQTTError("topic is not UTF-8")


def subscribe_packet(pid, topics):
    """SUBSCRIBE for [(topic, qos), ...]."""
    body = bytearray(2)
    body[0] = pid >> 8
    body[1] = pid & 0xFF
    for topic, qos in topics:
        _put_field(body, topic)
        body.append(qos)
    return _packet(SUBSCRIBE, body)


def ack_packet(kind, pid):
    """PUBACK (or another 2-byte-body ack) for pid."""
    return bytes((kind, 2, pid >> 8, pid & 0xFF))


def _unquote(s):
    if "%" not in s:
        return s
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == "%" and i + 3 <= len(s):
            out.append(int(s[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(s[i].encode())
            i += 1
    return str(bytes(out), "utf-8")


def parse_url(url):
    """'mqtt://user:pass@host:1883' or 'mqtts://...' -> keyword arguments for
    MQTTClient: host, port, user, password, ssl (True for mqtts, else None)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError("not an MQTT URL (mqtt:// or mqtts://)")
    rest = rest.split("/", 1)[0]
    user = password = None
    if "@" in rest:
        cred, _, rest = rest.rpartition("@")
        user, sep, password = cred.partition(":")
        user = _unquote(user)
        password = _unquote(password) if sep else None
    port = 8883 if scheme == "mqtts" else 1883
    host = rest
    if rest.startswith("["):  # [IPv6]:port
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = int(tail[1:])
    elif ":" in rest:
        host, _, p = rest.rpartition(":")
        port = int(p)
    if not host:
        raise ValueError("MQTT URL without a host")
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return {"host": host, "port": port, "user": user, "password": password,
            "ssl": True if scheme == "mqtts" else None}


# -- runtime differences ---------------------------------------------------------

def _rand():
    return getrandbits(20) / 1048576


async def _call(fn, *args):
    """Call a hook that may be a plain function or a coroutine function."""
    if fn is not None:
        res = fn(*args)
        if res is not None and hasattr(res, "send"):
            await res


def _read_file(data):
    if isinstance(data, str):
        with open(data, "rb") as f:
            return f.read()
    return data


def pem_to_der(data):
    """The first PEM block of data as DER bytes; data that is not PEM is
    returned as it is. (The unix port's mbedtls is built without PEM parsing.)"""
    data = bytes(data)
    begin = data.find(b"-----BEGIN ")
    if begin < 0:
        return data
    start = data.find(b"\n", begin) + 1
    end = data.find(b"-----END ", start)
    if start <= 0 or end < 0:
        raise ValueError("truncated PEM")
    from binascii import a2b_base64

    return a2b_base64(data[start:end].replace(b"\r", b"").replace(b"\n", b""))


def _tls_context(opts):
    """An SSL context from {"ca", "cert", "key", "server_hostname", "verify"}."""
    if opts is True:
        opts = {}
    verify = opts.get("verify", True)
    ca, cert, key = opts.get("ca"), opts.get("cert"), opts.get("key")
    if _MPY:
        import tls

        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        if ca is not None:
            ctx.load_verify_locations(pem_to_der(_read_file(ca)))
        if cert is not None:
            ctx.load_cert_chain(pem_to_der(_read_file(cert)), pem_to_der(_read_file(key)))
        ctx.verify_mode = tls.CERT_REQUIRED if verify else tls.CERT_NONE
        return ctx
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        if ca is None:
            ctx.load_default_certs()
        elif isinstance(ca, str):
            ctx.load_verify_locations(cafile=ca)
        else:
            ca = bytes(ca)
            ctx.load_verify_locations(cadata=ca.decode() if ca.lstrip().startswith(b"-----") else ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        if isinstance(cert, str):
            ctx.load_cert_chain(cert, key)
        else:  # CPython loads a client certificate only from files
            import os
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                paths = []
                for name, data in (("cert.pem", cert), ("key.pem", _read_file(key))):
                    path = os.path.join(tmp, name)
                    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                        f.write(data)
                    paths.append(path)
                ctx.load_cert_chain(paths[0], paths[1])
    return ctx


def _pending(w):
    """Bytes the stream writer holds because the socket did not take them."""
    if _MPY:
        return len(w.out_buf)
    return w.transport.get_write_buffer_size()


class MQTTClient:
    """An MQTT 3.1.1 client that keeps itself connected while run() runs.

    Hooks may be plain functions or coroutine functions:
    on_message(topic: str, payload: bytes, retained: bool),
    on_ack(pid), on_connect(session_present), on_disconnect(reason).
    """

    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=60,
                 clean_session=False, will=None, ssl=None, on_message=None, on_ack=None,
                 on_connect=None, on_disconnect=None, max_inflight=16, max_packet=4096,
                 backoff_ms=(500, 60000), rand=None, connect_timeout_ms=10000, max_publish=16384):
        if will is not None and (len(will) != 4 or will[2] not in (0, 1, 2)):
            raise ValueError("will is (topic, payload, qos, retain)")
        if max_inflight < 1 or max_packet < 16:
            raise ValueError("max_inflight >= 1 and max_packet >= 16")
        self.client_id = client_id
        self.host = host
        self.port = port
        self._connect_pkt = connect_packet(client_id, clean_session, keepalive, user, password, will)
        self._keepalive_ms = keepalive * 1000
        self._ssl = ssl
        self.on_message = on_message
        self.on_ack = on_ack
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self._max_inflight = max_inflight
        self._max_packet = max_packet  # incoming: the receive buffer holds a whole packet
        self._max_publish = max_publish  # outgoing: written from the caller's bytes, no buffer of that size
        self._backoff = backoff_ms
        self._rand = rand or _rand
        self._timeout_ms = connect_timeout_ms
        self._sleep = _sleep_ms  # tests replace it to watch the backoff
        # receive buffer: a whole packet of max_packet bytes plus its fixed header
        self._rx = bytearray(max_packet + 5)
        self._rxmv = memoryview(self._rx)
        self._rpos = self._rend = 0  # parsed up to / filled up to
        self._skip = 0  # bytes of an oversized packet still to throw away
        self._tx = bytearray(min(max_packet + 5, _TXBUF))
        self._txmv = memoryview(self._tx)
        self._ackbuf = bytearray(b"\x40\x02\x00\x00")
        self._inflight = {}  # pid -> [topic bytes, payload, retain, epoch sent (0: never), seq]
        self._seq = 0
        self._subs = {}  # topic str -> [qos, epoch sent]
        self._subacks = {}  # pid -> granted qos (-1 while waiting)
        self._pid = 0
        self._epoch = 0
        self._r = self._w = None
        self._lock = asyncio.Lock()
        self._room = asyncio.Event()
        self._down = asyncio.Event()
        self._reason = None
        self._connected = False
        self._stop = False
        self._last_rx = self._last_tx = ticks_ms()
        self._ping_at = None
        self.stats = {"connects": 0, "disconnects": 0, "connect_failures": 0, "last_error": None,
                      "pings": 0, "rx_packets": 0, "tx_packets": 0, "retransmits": 0,
                      "dropped": 0, "oversize": 0, "callback_errors": 0}

    @property
    def connected(self):
        return self._connected

    @property
    def inflight(self):
        """Packet ids of QoS 1 messages not yet acknowledged."""
        return list(self._inflight)

    # -- public API ------------------------------------------------------------

    async def publish(self, topic, payload, qos=1, retain=False):
        """Send a message. QoS 1: returns its packet id once written (or, when
        offline, once queued for the next connection); waits while max_inflight
        messages are unacknowledged. QoS 0: returns None; dropped when offline.
        topic: str or bytes; payload: bytes (or str)."""
        if qos != 0 and qos != 1:
            raise ValueError("qos must be 0 or 1")
        while qos and len(self._inflight) >= self._max_inflight:
            self._room.clear()
            await self._room.wait()
        pid = self._put(topic, payload, qos, retain)
        w = self._w
        if w is not None and _pending(w):
            await self._flush_safe()
        return pid

    def _put(self, topic, payload, qos, retain):
        # the synchronous part of publish(): a small coroutine frame matters
        # when every reading is a publish
        if isinstance(topic, str):
            topic = topic.encode()
        if isinstance(payload, str):
            payload = payload.encode()
        if 4 + len(topic) + len(payload) > self._max_publish:
            raise ValueError("message larger than max_publish (%d bytes)" % self._max_publish)
        if not qos:
            if not self._connected:
                self.stats["dropped"] += 1
                return None
            try:
                self._write_publish(topic, payload, 0, retain, False, 0)
            except Exception as exc:
                self.stats["dropped"] += 1
                self._fail(exc)
            return None
        pid = self._new_pid()
        self._seq += 1
        entry = [topic, payload, retain, 0, self._seq]
        self._inflight[pid] = entry
        if self._connected:
            self._emit_entry(pid, entry)
        return pid

    async def subscribe(self, topic, qos=1):
        """Subscribe now if connected (waits for SUBACK, returns the granted
        qos) and again after every reconnect that lost the session."""
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        entry = [qos, 0]
        self._subs[topic] = entry
        if not self._connected:
            return None
        pid = self._new_pid()
        self._subacks[pid] = -1
        epoch = self._epoch
        try:
            self._write(subscribe_packet(pid, ((topic, qos),)))
            await self._flush()
            t0 = ticks_ms()
            while self._subacks[pid] < 0:
                if not self._connected or ticks_diff(ticks_ms(), t0) > self._timeout_ms:
                    return None  # entry[1] stays 0: sent again on the next connection
                await self._sleep(10)
            granted = self._subacks[pid]
        except Exception as exc:
            self._fail(exc)
            return None
        finally:
            self._subacks.pop(pid, None)
        if granted == 0x80:
            self._subs.pop(topic, None)
            raise MQTTError("broker refused subscription to %s" % topic)
        if epoch == self._epoch:
            entry[1] = epoch
        return granted

    async def disconnect(self):
        """Send DISCONNECT (the broker discards the will) and make run() return."""
        self._stop = True
        if self._connected:
            try:
                await self._send(_DISCONNECT_PKT)
            except Exception:
                pass
        self._fail("disconnect")

    async def run(self):
        """Connect and stay connected until disconnect(); never raises for
        network or broker errors."""
        self._stop = False
        attempt = 0
        while not self._stop:
            try:
                session_present = await self._open()
            except Exception as exc:
                self.stats["connect_failures"] += 1
                self.stats["last_error"] = _describe(exc)
                await self._close()
                if self._stop:
                    break
                await self._sleep(self.backoff_delay(attempt))
                attempt += 1
                continue
            attempt = 0
            await self._serve(session_present)
            self.stats["disconnects"] += 1
            try:
                await _call(self.on_disconnect, self._reason)
            except Exception as exc:
                self._hook_error(exc)
            if not self._stop:
                await self._sleep(self.backoff_delay(0))
        self._stop = False

    def backoff_delay(self, attempt):
        """ms to wait before reconnect attempt number `attempt` (0-based):
        base * 2**attempt capped, then a random point in its upper half."""
        base, cap = self._backoff
        d = cap if attempt >= 24 else min(cap, base << attempt)
        half = d // 2
        return half + int(self._rand() * (d - half + 1))

    # -- connection ------------------------------------------------------------

    async def _open(self):
        self._down = asyncio.Event()
        self._reason = None
        self._ping_at = None
        self._rpos = self._rend = self._skip = 0
        if self._ssl:
            ctx = _tls_context(self._ssl)
            name = (self._ssl.get("server_hostname") if isinstance(self._ssl, dict) else None) or self.host
            opening = asyncio.open_connection(self.host, self.port, ssl=ctx, server_hostname=name)
        else:
            opening = asyncio.open_connection(self.host, self.port)
        self._r, self._w = await asyncio.wait_for(opening, self._timeout_ms / 1000)
        return await asyncio.wait_for(self._handshake(), self._timeout_ms / 1000)

    async def _handshake(self):
        self._w.write(self._connect_pkt)
        await self._w.drain()
        self._last_tx = ticks_ms()
        self.stats["tx_packets"] += 1
        first, off, n = await self._next_packet()
        if first != CONNACK:
            raise MQTTError("expected CONNACK, got packet type %d" % (first >> 4))
        return parse_connack(self._rx[off : off + n])

    async def _serve(self, session_present):
        self._epoch += 1
        self.stats["connects"] += 1
        reader = asyncio.create_task(self._read_loop())
        pinger = asyncio.create_task(self._ping_loop())
        try:
            await self._resume(session_present)
            self._connected = True
            if not self._down.is_set():
                await _call(self.on_connect, session_present)
            await self._down.wait()
        except Exception as exc:
            self._fail(exc)
        finally:
            self._connected = False
            reader.cancel()
            pinger.cancel()
            await self._close()
        self._room.set()  # publishers waiting for room: nothing changes while offline

    async def _resume(self, session_present):
        """Subscriptions the broker does not hold, then every unacked message;
        repeated until nothing is left that this connection has not sent."""
        epoch = self._epoch
        if session_present:
            for entry in self._subs.values():
                if entry[1]:
                    entry[1] = epoch
        while not self._down.is_set():
            subs = [(t, e[0]) for t, e in self._subs.items() if e[1] != epoch]
            if subs:
                for t, _ in subs:
                    self._subs[t][1] = epoch
                await self._send(subscribe_packet(self._new_pid(), subs))
                continue
            todo = sorted((e[4], pid) for pid, e in self._inflight.items() if e[3] != epoch)
            if not todo:
                return
            for _, pid in todo:
                entry = self._inflight.get(pid)
                if entry is not None and entry[3] != epoch:
                    self._emit_entry(pid, entry)
                    await self._flush_safe()

    async def _close(self):
        w = self._w
        self._r = self._w = None
        if w is None:
            return
        try:
            if _MPY:
                w.close()
                await w.wait_closed()
            else:
                w.transport.abort()
        except Exception:
            pass

    def _fail(self, why):
        if self._reason is None:
            self._reason = why if isinstance(why, str) else _describe(why)
            if self._reason != "disconnect":
                self.stats["last_error"] = self._reason
        self._down.set()

    def _hook_error(self, exc):
        self.stats["callback_errors"] += 1
        self.stats["last_error"] = "callback: " + _describe(exc)

    def _new_pid(self):
        pid = self._pid
        while True:
            pid = pid + 1 if pid < 65535 else 1
            if pid not in self._inflight and pid not in self._subacks:
                self._pid = pid
                return pid

    # -- writing ---------------------------------------------------------------
    # Packets are written whole and synchronously (no await between the parts
    # of one packet), so they never interleave; the stream keeps them in order
    # when the socket is full, and only then does a sender wait, one at a time.

    def _write(self, data):
        w = self._w
        if w is None:
            raise OSError("not connected")
        w.write(data)
        self._last_tx = ticks_ms()
        self.stats["tx_packets"] += 1

    async def _flush(self):
        w = self._w
        if w is None or not _pending(w):
            return
        await self._lock.acquire()
        try:
            if _pending(w):  # a broker that stopped reading must not hang us
                await asyncio.wait_for(w.drain(), (self._keepalive_ms or 30000) / 1000)
        finally:
            self._lock.release()

    async def _send(self, data):
        self._write(data)
        await self._flush()

    def _emit_entry(self, pid, entry):
        """Write an in-flight message (DUP when an earlier connection sent it);
        False when the connection broke: it stays in flight for the next one."""
        dup = entry[3] != 0
        entry[3] = self._epoch
        try:
            self._write_publish(entry[0], entry[1], 1, entry[2], dup, pid)
        except Exception as exc:
            self._fail(exc)
            return False
        if dup:
            self.stats["retransmits"] += 1
        return True

    async def _flush_safe(self):
        """Wait for the socket to take what the stream holds, if anything
        (only then is a coroutine made: the common case allocates nothing)."""
        w = self._w
        if w is not None and _pending(w):
            try:
                await self._flush()
            except Exception as exc:
                self._fail(exc)

    def _write_publish(self, topic, payload, qos, retain, dup, pid):
        tx = self._tx
        if 9 + len(topic) > len(tx):
            tx = bytearray(9 + len(topic))
        plen = len(payload)
        n = publish_header(tx, topic, plen, qos, retain, dup, pid)
        if n + plen <= len(tx):
            tx[n : n + plen] = payload
            n += plen
            plen = 0
        if _MPY:
            self._write(self._txmv[:n] if tx is self._tx else tx[:n])
        else:  # CPython's transports may keep a reference: hand them a copy
            self._write(bytes(tx[:n]))
        if plen:
            self._w.write(payload)

    def _write_ack(self, pid):
        buf = self._ackbuf
        buf[2] = pid >> 8
        buf[3] = pid & 0xFF
        self._write(buf if _MPY else bytes(buf))

    # -- reading ---------------------------------------------------------------
    # Bytes are read in as large pieces as the socket offers into the receive
    # buffer, and packets are parsed where they lie.

    async def _fill(self):
        rx = self._rx
        pos, end = self._rpos, self._rend
        if pos == end:
            pos = end = 0
        elif pos:  # move the partial packet to the front, in non-overlapping pieces
            k = end - pos
            done = 0
            while done < k:
                c = min(pos, k - done)
                rx[done : done + c] = self._rxmv[pos + done : pos + done + c]
                done += c
            pos, end = 0, k
        self._rpos, self._rend = pos, end
        if _MPY:
            k = await self._r.readinto(self._rxmv[end:])
            if k is None:  # TLS: the record is not complete yet
                return
        else:
            data = await self._r.read(len(rx) - end)
            k = len(data)
            rx[end : end + k] = data
        if not k:
            raise OSError("connection closed by broker")
        self._rend = end + k

    async def _next_packet(self):
        """(first byte, body offset, body length) of the next whole packet in
        the receive buffer, reading as needed."""
        rx = self._rx
        while True:
            if self._skip:
                k = min(self._skip, self._rend - self._rpos)
                self._skip -= k
                self._rpos += k
            else:
                p = self._rpos
                end = self._rend
                q = p + 1
                n = 0
                shift = 0
                while q < end:
                    b = rx[q]
                    q += 1
                    n |= (b & 0x7F) << shift
                    if not b & 0x80:
                        if n > self._max_packet:
                            self._oversize(rx[p], q, n)
                            break
                        if end - q >= n:
                            self._rpos = q + n
                            self._last_rx = ticks_ms()
                            self.stats["rx_packets"] += 1
                            return rx[p], q, n
                        break
                    shift += 7
                    if shift >= 28:
                        raise MQTTError("remaining length longer than 4 bytes")
                if self._skip:
                    continue
            await self._fill()

    def _oversize(self, first, off, n):
        """A packet longer than max_packet: a PUBLISH is thrown away (and acked
        when QoS 1, so the broker does not send it again) and the connection
        stays up; any other packet that large is a protocol error."""
        if first & 0xF0 != PUBLISH:
            raise MQTTError("packet of %d bytes exceeds max_packet" % n)
        rx = self._rx
        if (first >> 1) & 3:
            # the topic and the packet id come first: wait for them if they fit
            have = self._rend - off
            room = len(rx) - (off - self._rpos)  # what the buffer can hold of the body
            if have < 2:
                return  # _next_packet reads more and comes back here
            tlen = (rx[off] << 8) | rx[off + 1]
            if have < tlen + 4 and tlen + 4 <= room:
                return
            if have >= tlen + 4:
                pid = (rx[off + 2 + tlen] << 8) | rx[off + 3 + tlen]
                if pid:
                    self._write_ack(pid)  # flushed with the next write or by the stream
        self.stats["oversize"] += 1
        self.stats["rx_packets"] += 1
        self.stats["last_error"] = "dropped a %d-byte PUBLISH (max_packet %d)" % (n, self._max_packet)
        self._rpos = off
        self._skip = n

    async def _read_loop(self):
        try:
            while True:
                first, off, n = await self._next_packet()
                kind = first & 0xF0
                rx = self._rx
                if kind == PUBLISH:
                    tend, start, qos, pid = parse_publish(first, rx, n, off)
                    topic = _topic(self._rxmv, off + 2, tend)
                    payload = bytes(self._rxmv[start : off + n])
                    try:
                        res = self.on_message(topic, payload, bool(first & 1))
                        if res is not None and hasattr(res, "send"):
                            await res
                    except Exception as exc:  # acked anyway: a message that breaks the handler must not loop
                        self._hook_error(exc)
                    if qos:
                        self._write_ack(pid)
                        if _pending(self._w):
                            await self._flush()
                elif first == PUBACK:
                    if n != 2:
                        raise MQTTError("malformed PUBACK")
                    pid = (rx[off] << 8) | rx[off + 1]
                    if self._inflight.pop(pid, None) is not None:
                        self._room.set()
                        if self.on_ack is not None:
                            try:
                                res = self.on_ack(pid)
                                if res is not None and hasattr(res, "send"):
                                    await res
                            except Exception as exc:
                                self._hook_error(exc)
                elif first == PINGRESP:
                    self._ping_at = None
                elif first == SUBACK:
                    if n < 3:
                        raise MQTTError("malformed SUBACK")
                    pid = (rx[off] << 8) | rx[off + 1]
                    if pid in self._subacks:
                        self._subacks[pid] = rx[off + 2]
                    for i in range(off + 2, off + n):
                        if rx[i] == 0x80:
                            self.stats["last_error"] = "broker refused a subscription"
                elif first != UNSUBACK:
                    raise MQTTError("unexpected packet type %d" % (first >> 4))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    # -- keepalive ---------------------------------------------------------------

    async def _ping_loop(self):
        ka = self._keepalive_ms
        if not ka:
            return
        step = min(1000, ka // 4)
        try:
            while True:
                await self._sleep(step)
                now = ticks_ms()
                if self._ping_at is not None:
                    if ticks_diff(now, self._ping_at) > ka:
                        self._fail("no PINGRESP within keepalive")
                        return
                elif ticks_diff(now, self._last_tx) >= ka // 2 or ticks_diff(now, self._last_rx) >= ka // 2:
                    self._ping_at = now
                    self.stats["pings"] += 1
                    await self._send(_PINGREQ_PKT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)


def _describe(exc):
    if isinstance(exc, str):
        return exc
    text = str(exc)
    name = type(exc).__name__
    return name + ": " + text if text else name
