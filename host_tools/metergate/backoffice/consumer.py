"""A lean MQTT 3.1.1 consumer session for the back-office ingest.

Why not paho-mqtt: the ingest acknowledges a whole batch after its database
commit. paho reads every packet header byte by byte (one recv() each), builds
an MQTTMessage per message, hands it across threads, and sends each PUBACK
with its own send(); that alone costs more per message than the whole budget
of the ingest (docs/backoffice.md, bench/ingest_bench.py). This session is
single-threaded and does only what a QoS 1 consumer needs:

- CONNECT (persistent session, keepalive, user name and password, TLS with
  server verification) and CONNACK, with the refusal named;
- SUBSCRIBE and SUBACK, a refused filter named;
- ``receive()``: large recv() calls into one buffer, every complete packet in
  it parsed, PUBLISH messages returned as a batch (size and linger limits);
- ``ack(packet_ids)``: every PUBACK of a batch in one sendall();
- keepalive: PINGREQ when nothing was sent for keepalive/2; the connection is
  deemed lost when nothing arrived for 1.5 x keepalive.

The codec (``encode_remaining_length``, ``decode_remaining_length``,
``PacketReader``) is pure and tested on its own (tests/host/test_backoffice_consumer.py).
Written from the MQTT 3.1.1 specification (OASIS, 2014), sections 2 and 3.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
import struct
import time

__all__ = [
    "ConnectRefused",
    "ConnectionLost",
    "MalformedPacket",
    "Message",
    "MqttError",
    "PacketReader",
    "Session",
    "SubscriptionRefused",
    "decode_remaining_length",
    "encode_remaining_length",
]

MAX_REMAINING_LENGTH = 268435455  # four bytes of seven bits (spec 2.2.3)
DEFAULT_MAX_PACKET = 1 << 20  # far above any contract message; a larger PUBLISH is reported, not buffered
OVERSIZED_KEEP = 4096  # bytes of an oversized payload kept for the quarantine record

# packet types (spec 2.2.1)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

CONNACK_REFUSALS = {
    1: "unacceptable protocol version (the broker does not speak MQTT 3.1.1)",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

# the fixed flags each packet a client may receive must carry (spec 2.2.2); PUBLISH has its own
_FIXED_FLAGS = {CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBACK: 0, UNSUBACK: 0, PINGRESP: 0}

_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"


class MqttError(Exception):
    """Anything that ends an MQTT session."""


class MalformedPacket(MqttError):
    """Bytes that are not MQTT 3.1.1: the connection is dropped (spec 4.8)."""


class ConnectionLost(MqttError):
    """The broker closed the connection, or went silent past 1.5 x keepalive."""


class ConnectRefused(MqttError):
    """CONNACK with a refusal: ``code`` and what it means."""

    def __init__(self, code, broker):
        self.code = code
        meaning = CONNACK_REFUSALS.get(code, "refusal code not in MQTT 3.1.1")
        super().__init__("broker %s refused the connection: %s (CONNACK code %d)" % (broker, meaning, code))


class SubscriptionRefused(MqttError):
    """SUBACK with 0x80 for one or more filters (an ACL, usually)."""

    def __init__(self, broker, refused):
        self.filters = list(refused)
        super().__init__("broker %s refused the subscription to %s (SUBACK 0x80: not allowed by its ACL?)"
                         % (broker, ", ".join(self.filters)))


class Message:
    """One PUBLISH: ``packet_id`` is None for QoS 0 (a retained QoS 0 message,
    say). ``size`` is the payload's length on the wire; when it exceeds the
    packet limit, ``payload`` holds only its first bytes and ``truncated`` is set."""

    __slots__ = ("topic", "payload", "packet_id", "qos", "retain", "dup", "size", "truncated")

    def __init__(self, topic, payload, packet_id=None, qos=0, retain=False, dup=False, size=None, truncated=False):
        self.topic, self.payload, self.packet_id = topic, payload, packet_id
        self.qos, self.retain, self.dup = qos, retain, dup
        self.size = len(payload) if size is None else size
        self.truncated = truncated

    def __eq__(self, other):
        return isinstance(other, Message) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        return "Message(%r, %d bytes, id=%s, qos=%d%s%s)" % (
            self.topic, self.size, self.packet_id, self.qos, ", retain" if self.retain else "",
            ", truncated" if self.truncated else "")


# -- codec ----------------------------------------------------------------------

def encode_remaining_length(n: int) -> bytes:
    """The remaining length field: seven bits a byte, least significant first (spec 2.2.3)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError("remaining length %d outside 0..%d" % (n, MAX_REMAINING_LENGTH))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_remaining_length(buf, pos: int = 0, end: int | None = None):
    """(length, position after the field), or None when ``buf`` ends inside it.
    MalformedPacket when a fourth byte still says "more follows". (3.1.1 does
    not require the shortest encoding, so a longer one is accepted.)"""
    if end is None:
        end = len(buf)
    value = 0
    for i in range(4):
        if pos + i >= end:
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise MalformedPacket("remaining length longer than 4 bytes")


def _utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 65535:
        raise ValueError("string of %d bytes: MQTT strings hold at most 65535" % len(b))
    return struct.pack(">H", len(b)) + b


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


def connect_packet(client_id, *, clean_session=False, keepalive=30, username=None, password=None) -> bytes:
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 sends a password only with a user name (spec 3.1.2.9)")
    if not 0 <= keepalive <= 65535:
        raise ValueError("keepalive %r outside 0..65535 s" % keepalive)
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0) | (
        0x40 if password is not None else 0)
    body = _utf8("MQTT") + bytes((4, flags)) + struct.pack(">H", keepalive) + _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        pw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
        body += struct.pack(">H", len(pw)) + pw
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id, filters, qos=1) -> bytes:
    body = struct.pack(">H", packet_id) + b"".join(_utf8(f) + bytes((qos,)) for f in filters)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def publish_packet(topic, payload, *, qos=0, packet_id=None, retain=False, dup=False) -> bytes:
    """For tests and tools (the ingest does not publish)."""
    body = _utf8(topic) + (struct.pack(">H", packet_id) if qos else b"") + bytes(payload)
    return _packet((PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0), body)


def puback_packets(packet_ids) -> bytes:
    ids = [p for p in packet_ids if p is not None]
    return struct.pack(">" + "BBH" * len(ids), *[x for p in ids for x in (0x40, 2, p)])


class PacketReader:
    """Bytes in (``feed``), packets out (``parse``): PUBLISH as Message, every
    other packet as (type, flags, body bytes). Keeps a partial packet for the
    next feed. A PUBLISH longer than ``max_packet`` is not buffered: its first
    bytes are kept, the rest is skipped as it arrives, and it is reported as a
    truncated Message so that the consumer can judge and acknowledge it
    instead of meeting it again after every reconnect."""

    def __init__(self, max_packet=DEFAULT_MAX_PACKET):
        self.max_packet = max_packet
        self.buf = bytearray()
        self._skip = 0  # bytes of an oversized PUBLISH still to discard

    def feed(self, data):
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self.buf += data

    @property
    def pending(self):
        """Bytes held of a packet not yet complete."""
        return len(self.buf)

    def parse(self, out, limit=None):
        """Appends complete packets to ``out``, stopping after ``limit`` messages
        (PUBLISH); returns how many messages were appended."""
        buf = self.buf
        end = len(buf)
        pos = 0
        got = 0
        try:
            while pos < end:
                if self._skip:  # only while a truncated PUBLISH is being skipped
                    break
                if limit is not None and got >= limit:
                    break
                first = buf[pos]
                # the remaining length, one- and two-byte cases inline (every packet up to 16 KiB)
                if pos + 1 >= end:
                    break
                b = buf[pos + 1]
                if b < 0x80:
                    length, start = b, pos + 2
                elif pos + 2 < end and buf[pos + 2] < 0x80:
                    length, start = (b & 0x7F) | (buf[pos + 2] << 7), pos + 3
                else:
                    r = decode_remaining_length(buf, pos + 1, end)
                    if r is None:
                        break
                    length, start = r
                stop = start + length
                ptype = first >> 4
                if ptype == PUBLISH:
                    if length > self.max_packet:
                        m = self._oversized(buf, first, start, length, end)
                        if m is None:
                            break  # the topic and packet id are not all here yet
                        out.append(m)
                        got += 1
                        kept = min(end, stop)
                        self._skip = stop - kept
                        pos = kept
                        continue
                    if stop > end:
                        break
                    out.append(self._publish(buf, first, start, stop))
                    got += 1
                else:
                    if ptype not in _FIXED_FLAGS:
                        raise MalformedPacket("packet type %d is not one a broker sends to a client" % ptype)
                    if first & 0x0F != _FIXED_FLAGS[ptype]:
                        raise MalformedPacket("packet type %d with reserved flags 0x%x" % (ptype, first & 0x0F))
                    if length > self.max_packet:
                        raise MalformedPacket("packet type %d of %d bytes, beyond the limit of %d"
                                              % (ptype, length, self.max_packet))
                    if stop > end:
                        break
                    out.append((ptype, first & 0x0F, bytes(buf[start:stop])))
                pos = stop
        finally:
            if pos:
                del buf[:pos]
        return got

    @staticmethod
    def _publish(buf, first, start, stop):
        qos = (first >> 1) & 3
        if stop - start < 2:
            raise MalformedPacket("PUBLISH without a topic")
        tlen = (buf[start] << 8) | buf[start + 1]
        p = start + 2 + tlen
        try:
            topic = buf[start + 2:p].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("PUBLISH topic is not UTF-8") from None
        if qos:
            if qos == 3:
                raise MalformedPacket("PUBLISH with QoS 3")
            if p + 2 > stop:
                raise MalformedPacket("PUBLISH shorter than its topic and packet id")
            pid = (buf[p] << 8) | buf[p + 1]
            if pid == 0:
                raise MalformedPacket("PUBLISH QoS %d with packet id 0" % qos)
            p += 2
        else:
            if p > stop:
                raise MalformedPacket("PUBLISH shorter than its topic")
            pid = None
        return Message(topic, bytes(buf[p:stop]), pid, qos, bool(first & 1), bool(first & 8))

    @staticmethod
    def _oversized(buf, first, start, length, end):
        if start + 2 > end:
            return None
        tlen = (buf[start] << 8) | buf[start + 1]
        qos = (first >> 1) & 3
        head = start + 2 + tlen + (2 if qos else 0)
        stop = start + length
        keep = min(stop, head + OVERSIZED_KEEP)
        if keep > end:
            return None  # the topic, packet id and the bytes to keep are not all here yet
        m = PacketReader._publish(buf, first, start, keep)
        m.size = stop - head
        m.truncated = True
        return m


# -- the session -----------------------------------------------------------------

class Session:
    """One consumer's connection to a broker; ``connect()`` again after a loss.

    ``generation`` counts connections: a packet id belongs to the connection
    that delivered it, so acknowledgements for an older generation are void
    (the broker redelivers those messages on the new connection).
    ``interrupted``: a callable that returns True when the owner wants to stop;
    blocking waits (connect, CONNACK, SUBACK) check it every ``tick`` seconds.
    """

    def __init__(self, host, port, client_id, *, tls=False, ca_certs=None, username=None, password=None,
                 keepalive=30, clean_session=False, connect_timeout=10.0, max_packet=DEFAULT_MAX_PACKET,
                 recv_size=1 << 18, interrupted=None, tick=0.2):
        self.host, self.port = host, port
        self.client_id = client_id
        self.tls, self.ca_certs = tls, ca_certs
        self.username, self.password = username, password
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.connect_timeout = connect_timeout
        self.max_packet = max_packet
        self.recv_size = recv_size
        self.interrupted = interrupted or (lambda: False)
        self.tick = tick
        self.sock = None
        self.reader = None
        self.generation = 0
        self.session_present = None
        self._next_id = 0
        self._control = []  # non-PUBLISH packets parsed while looking for something else
        self._held = []  # messages that came while waiting for CONNACK/SUBACK, for receive()
        self._last_sent = self._last_received = 0.0

    @property
    def broker(self):
        return "%s://%s:%d" % ("mqtts" if self.tls else "mqtt", self.host, self.port)

    @property
    def connected(self):
        return self.sock is not None

    # -- connection

    def connect(self):
        """TCP (+ TLS), CONNECT, CONNACK. Returns the session-present flag;
        ConnectRefused, ConnectionLost, OSError (ssl.SSLError among them) otherwise."""
        self.close(disconnect=False)
        deadline = time.monotonic() + self.connect_timeout
        sock = self._open_tcp(deadline)
        try:
            if self.tls:
                ctx = ssl.create_default_context(cafile=None if self.ca_certs is None else str(self.ca_certs))
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
            self.sock = sock
            self.reader = PacketReader(self.max_packet)
            self._control, self._held = [], []  # an older connection's messages are void
            self.generation += 1
            self._send(connect_packet(self.client_id, clean_session=self.clean_session, keepalive=self.keepalive,
                                      username=self.username, password=self.password))
            ptype, flags, body = self._wait_control((CONNACK,), deadline, "CONNACK")
            if len(body) != 2:
                raise MalformedPacket("CONNACK of %d bytes" % len(body))
            if body[1]:
                raise ConnectRefused(body[1], self.broker)
            self.session_present = bool(body[0] & 1)
            return self.session_present
        except BaseException:
            self.close(disconnect=False)
            sock.close()
            raise

    def _open_tcp(self, deadline):
        last = None
        for family, kind, proto, _, addr in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                err = sock.connect_ex(addr)
                while err in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN):  # wait in ticks
                    if self.interrupted():
                        raise ConnectionLost("stopped while connecting to %s" % self.broker)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("no TCP connection to %s within %.1f s" % (self.broker, self.connect_timeout))
                    _, writable, _ = select.select([], [sock], [], min(self.tick, left))
                    if writable:
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        break
                if err:
                    raise OSError(err, "cannot connect to %s: %s" % (self.broker, errno.errorcode.get(err, err)))
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                last = exc
        raise last or OSError("no address for %s" % self.host)

    def subscribe(self, filters, qos=1):
        """SUBSCRIBE, wait for its SUBACK; the granted QoS per filter, or SubscriptionRefused."""
        filters = list(filters)
        self._next_id = self._next_id % 65535 + 1
        pid = self._next_id
        self._send(subscribe_packet(pid, filters, qos))
        deadline = time.monotonic() + self.connect_timeout
        while True:
            _, _, body = self._wait_control((SUBACK,), deadline, "SUBACK")
            if len(body) < 2 or (body[0] << 8 | body[1]) != pid:
                continue  # a late SUBACK of an earlier request
            codes = list(body[2:])
            if len(codes) != len(filters):
                raise MalformedPacket("SUBACK with %d codes for %d filters" % (len(codes), len(filters)))
            refused = [f for f, c in zip(filters, codes) if c == 0x80]
            if refused:
                raise SubscriptionRefused(self.broker, refused)
            return codes

    def close(self, disconnect=True):
        """Ends the connection; with ``disconnect``, a DISCONNECT first (a clean
        goodbye: the session and its unacknowledged messages stay on the broker)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            if disconnect:
                # DISCONNECT, then wait for the broker to close its side: a socket closed at once made
                # mosquitto 2.0 drop the PUBACKs still unread in its buffer now and then (measured: the
                # acknowledged messages came again on the next connection)
                sock.settimeout(1.0)
                sock.sendall(_DISCONNECT)
                sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and sock.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            sock.close()

    # -- traffic

    def _send(self, data):
        try:
            self.sock.settimeout(max(1.0, self.keepalive or 10))
            self.sock.sendall(data)
        except OSError as exc:
            self.close(disconnect=False)
            raise ConnectionLost("sending to %s: %s" % (self.broker, exc)) from exc
        self._last_sent = time.monotonic()

    def ack(self, packet_ids):
        """PUBACK for every id (None ones skipped: QoS 0) in one sendall."""
        data = puback_packets(packet_ids)
        if data:
            self._send(data)

    def ping_if_due(self, now=None):
        """PINGREQ when nothing has been sent for keepalive/2 (also called while
        the owner waits for its database, so the broker keeps the connection)."""
        if self.sock is None or not self.keepalive:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_sent >= self.keepalive / 2:
            self._send(_PINGREQ)

    def _fill(self, timeout):
        """One recv() of up to recv_size bytes within ``timeout``; False when nothing came."""
        sock = self.sock
        try:
            sock.settimeout(max(timeout, 0.0001))
            data = sock.recv(self.recv_size)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        except OSError as exc:
            self.close(disconnect=False)
            raise ConnectionLost("receiving from %s: %s" % (self.broker, exc)) from exc
        if not data:
            self.close(disconnect=False)
            raise ConnectionLost("%s closed the connection" % self.broker)
        self._last_received = time.monotonic()
        self.reader.feed(data)
        return True

    def _check_alive(self, now):
        if self.keepalive and now - self._last_received > 1.5 * self.keepalive:
            self.close(disconnect=False)
            raise ConnectionLost("nothing from %s for %.0f s (1.5 x keepalive)" % (self.broker, now - self._last_received))

    def _parse(self, out, limit):
        """Messages into ``out``; control packets handled or kept for a waiter."""
        packets = []
        try:
            got = self.reader.parse(packets, limit)
        except MalformedPacket:
            self.close(disconnect=False)
            raise
        if got == len(packets):
            out.extend(packets)
            return got
        for p in packets:
            if isinstance(p, Message):
                out.append(p)
            elif p[0] == PINGRESP:
                pass  # its arrival already counted as traffic
            elif p[0] in (CONNACK, SUBACK, UNSUBACK):
                self._control.append(p)
            elif p[0] == PUBREL:
                raise self._protocol("PUBREL: QoS 2 was never requested")
            # PUBACK/PUBREC/PUBCOMP answer publishes this client never makes: ignored
        return got

    def _protocol(self, what):
        self.close(disconnect=False)
        return MalformedPacket("%s sent %s" % (self.broker, what))

    def _wait_control(self, types, deadline, name):
        """The next control packet of one of ``types``; messages that come first are kept for receive()."""
        while True:
            for i, p in enumerate(self._control):
                if p[0] in types:
                    return self._control.pop(i)
            if self.interrupted():
                self.close(disconnect=False)
                raise ConnectionLost("stopped while waiting for %s" % name)
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(disconnect=False)
                raise ConnectionLost("no %s from %s within %.1f s" % (name, self.broker, self.connect_timeout))
            if self._fill(min(self.tick, left)):
                self._parse(self._held, None)

    def receive(self, max_messages=1000, linger_s=0.02, timeout=0.2):
        """Up to ``max_messages`` messages: waits up to ``timeout`` for the first,
        then up to ``linger_s`` for more. [] when none came; ConnectionLost or
        MalformedPacket when the connection ended (it is then closed)."""
        if self.sock is None:
            raise ConnectionLost("not connected to %s" % self.broker)
        out, self._held = self._held[:max_messages], self._held[max_messages:]
        if len(out) < max_messages:
            self._parse(out, max_messages - len(out))
        end = time.monotonic() + (linger_s if out else timeout)
        while len(out) < max_messages:
            now = time.monotonic()
            if now >= end:
                break
            self.ping_if_due(now)
            wait = end - now
            if self.keepalive:  # wake up when the next PINGREQ is due
                wait = min(wait, self._last_sent + self.keepalive / 2 - now)
            if self._fill(wait):
                had = len(out)
                self._parse(out, max_messages - had)
                if not had and out:
                    end = time.monotonic() + linger_s
            else:
                self._check_alive(time.monotonic())
        return out
