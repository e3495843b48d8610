# MQTT 3.1.1 packet codec of gateway/mqtt.py: runs under CPython and MicroPython.
# Expected bytes are written out from the OASIS MQTT 3.1.1 spec, sections 2.2.3
# (remaining length), 3.1 (CONNECT), 3.3 (PUBLISH), 3.8 (SUBSCRIBE).
from gateway import mqtt
from gateway.mqtt import MQTTError, ConnectRefused
from checks import raises, h


def test_varint_boundaries():
    cases = (
        (0, "00"), (127, "7F"), (128, "80 01"), (16383, "FF 7F"), (16384, "80 80 01"),
        (2097151, "FF FF 7F"), (2097152, "80 80 80 01"), (268435455, "FF FF FF 7F"),
    )
    for n, enc in cases:
        assert mqtt.varint(n) == h(enc), n
        assert mqtt.get_varint(h(enc)) == (n, len(h(enc))), n
        # decoding at an offset, inside a larger buffer
        assert mqtt.get_varint(h("AA " + enc + " BB"), 1) == (n, 1 + len(h(enc)))


def test_varint_out_of_range_and_malformed():
    raises(ValueError, mqtt.varint, 268435456)
    raises(ValueError, mqtt.varint, -1)
    raises(ValueError, mqtt.get_varint, h("FF FF FF FF 01"))  # five bytes
    raises(ValueError, mqtt.get_varint, h("80 80"))  # cut short
    raises(ValueError, mqtt.get_varint, b"")


def test_connect_minimal():
    pkt = mqtt.connect_packet("gw", clean_session=True, keepalive=60)
    assert pkt == h("10 0E 00 04 4D 51 54 54 04 02 00 3C 00 02 67 77")


def test_connect_flags_will_user_password():
    pkt = mqtt.connect_packet("c1", clean_session=False, keepalive=300, user="u", password="pw",
                              will=("st", b"off", 1, True))
    # variable header: protocol name, level 4, flags, keepalive 300
    assert pkt[2:10] == h("00 04 4D 51 54 54 04") + bytes((0x80 | 0x40 | 0x20 | 0x08 | 0x04,))
    assert pkt[10:12] == h("01 2C")
    assert pkt[12:] == h("00 02 63 31  00 02 73 74  00 03 6F 66 66  00 01 75  00 02 70 77")
    assert pkt[1] == len(pkt) - 2
    # will qos 0, not retained, clean session, no credentials
    pkt = mqtt.connect_packet("c", clean_session=True, keepalive=0, will=("t", b"", 0, False))
    assert pkt[9] == 0x02 | 0x04
    assert pkt[10:12] == h("00 00")


def test_connect_rejects_bad_arguments():
    raises(ValueError, mqtt.connect_packet, "c", True, 70000)
    raises(ValueError, mqtt.connect_packet, "c", True, 60, None, "pw")
    raises(ValueError, mqtt.connect_packet, "c", True, 60, None, None, ("t", b"", 3, False))


def test_connect_long_client_id_uses_two_byte_length():
    pkt = mqtt.connect_packet("x" * 200, keepalive=60)
    n, off = mqtt.get_varint(pkt, 1)
    assert off == 3 and n == 10 + 2 + 200 and len(pkt) == off + n


def test_connack():
    assert mqtt.parse_connack(h("00 00")) is False
    assert mqtt.parse_connack(h("01 00")) is True
    exc = raises(ConnectRefused, mqtt.parse_connack, h("00 05"))
    assert exc.code == 5 and "not authorized" in str(exc)
    exc = raises(ConnectRefused, mqtt.parse_connack, h("00 04"))
    assert "bad user name or password" in str(exc)
    assert isinstance(exc, MQTTError)
    raises(MQTTError, mqtt.parse_connack, h("02 00"))  # reserved flag bits
    raises(MQTTError, mqtt.parse_connack, h("00"))


def test_publish_qos0_without_pid():
    pkt = mqtt.publish_packet("a/b", b"hi")
    assert pkt == h("30 07 00 03 61 2F 62 68 69")
    assert mqtt.decode_publish(pkt) == ("a/b", b"hi", 0, False, False, 0)


def test_publish_qos1_with_pid_retain_dup():
    pkt = mqtt.publish_packet("a/b", b"hi", qos=1, retain=True, dup=True, pid=0x1234)
    assert pkt == h("3B 09 00 03 61 2F 62 12 34 68 69")
    assert mqtt.decode_publish(pkt) == ("a/b", b"hi", 1, True, True, 0x1234)
    # DUP is never set on QoS 0
    assert mqtt.publish_packet("t", b"", qos=0, dup=True)[0] == 0x30


def test_publish_lengths_across_varint_boundary():
    for plen in (0, 120, 121, 122, 200, 16370, 16380):
        pkt = mqtt.publish_packet("t/x", b"p" * plen, qos=1, pid=7)
        topic, payload, qos, retain, dup, pid = mqtt.decode_publish(pkt)
        assert (topic, len(payload), qos, pid) == ("t/x", plen, 1, 7)
        n, off = mqtt.get_varint(pkt, 1)
        assert n == 2 + 3 + 2 + plen and len(pkt) == off + n


def test_publish_header_in_place():
    buf = bytearray(32)
    n = mqtt.publish_header(buf, b"m/1", 5, qos=1, pid=65535)
    assert bytes(buf[:n]) == h("32 0C 00 03 6D 2F 31 FF FF")
    raises(ValueError, mqtt.publish_header, buf, b"t", 0, 1, False, False, 0)
    raises(ValueError, mqtt.publish_header, buf, b"t", 0, 1, False, False, 65536)
    raises(ValueError, mqtt.publish_header, buf, b"t", 0, 2, False, False, 1)


def test_utf8_topic():
    pkt = mqtt.publish_packet("zähler/1", b"x")
    assert mqtt.decode_publish(pkt)[0] == "zähler/1"


def test_malformed_publish_rejected():
    raises(MQTTError, mqtt.decode_publish, h("30 02 00 05"))  # topic runs past the end
    raises(MQTTError, mqtt.decode_publish, h("32 05 00 01 74 00 00"))  # QoS 1, pid 0
    raises(MQTTError, mqtt.decode_publish, h("36 05 00 01 74 00 01"))  # QoS 3
    raises(MQTTError, mqtt.decode_publish, h("30 01 00"))  # no room for the topic length
    raises(MQTTError, mqtt.decode_publish, h("30 09 00 01 74"))  # remaining length too long
    raises(MQTTError, mqtt.decode_publish, h("30 FF FF FF FF 01"))  # bad varint
    raises(MQTTError, mqtt.decode_publish, h("30 03 00 01 FF"))  # topic not UTF-8
    raises(MQTTError, mqtt.decode_publish, h("40 02 00 01"))  # a PUBACK


def test_parse_publish_bounds():
    body = h("00 03 61 2F 62 00 09 41")
    assert mqtt.parse_publish(0x32, body, len(body)) == (5, 7, 1, 9)
    raises(MQTTError, mqtt.parse_publish, 0x32, body, 6)  # pid cut off


def test_subscribe_and_ack_packets():
    assert mqtt.subscribe_packet(10, (("a/#", 1),)) == h("82 08 00 0A 00 03 61 2F 23 01")
    assert mqtt.subscribe_packet(1, (("a", 0), ("b", 1))) == h("82 0A 00 01 00 01 61 00 00 01 62 01")
    assert mqtt.ack_packet(mqtt.PUBACK, 0xABCD) == h("40 02 AB CD")


def test_parse_url():
    assert mqtt.parse_url("mqtt://broker.example") == {
        "host": "broker.example", "port": 1883, "user": None, "password": None, "ssl": None}
    assert mqtt.parse_url("mqtts://gw:s%40cret@10.0.0.2") == {
        "host": "10.0.0.2", "port": 8883, "user": "gw", "password": "s@cret", "ssl": True}
    assert mqtt.parse_url("mqtt://u@h:1884/")["port"] == 1884
    assert mqtt.parse_url("mqtt://u@h:1884")["user"] == "u"
    assert mqtt.parse_url("mqtt://u@h:1884")["password"] is None
    assert mqtt.parse_url("mqtt://[::1]:1999")["host"] == "::1"
    raises(ValueError, mqtt.parse_url, "http://h")
    raises(ValueError, mqtt.parse_url, "mqtt://:1883")
    raises(ValueError, mqtt.parse_url, "mqtt://h:0")


def test_backoff_grows_capped_and_jittered():
    seq = [0.0, 0.999999, 0.5]
    draws = []

    def rand():
        draws.append(1)
        return seq[(len(draws) - 1) % len(seq)]

    c = mqtt.MQTTClient("b", "127.0.0.1", backoff_ms=(100, 1000), rand=rand)
    # rand 0 -> lower end (half), ~1 -> upper end (the full doubled delay)
    assert [c.backoff_delay(a) for a in range(5)] == [50, 200, 300, 400, 1000]
    assert c.backoff_delay(60) in range(500, 1001)
    lo = [mqtt.MQTTClient("b", "h", backoff_ms=(100, 1000), rand=lambda: 0.0).backoff_delay(a) for a in range(6)]
    hi = [mqtt.MQTTClient("b", "h", backoff_ms=(100, 1000), rand=lambda: 0.9999).backoff_delay(a) for a in range(6)]
    assert lo == [50, 100, 200, 400, 500, 500]
    assert hi == [100, 200, 400, 800, 1000, 1000]


def test_packet_ids_wrap_and_skip_inflight():
    c = mqtt.MQTTClient("p", "h")
    c._pid = 65533
    c._inflight[65535] = [b"t", b"", False, 1, 1]
    c._inflight[1] = [b"t", b"", False, 1, 2]
    assert [c._new_pid() for _ in range(3)] == [65534, 2, 3]


def test_run_backs_off_with_jitter_when_refused():
    # nothing listens on port 1: every attempt is refused; a fake sleep records
    # the waits and stops the client after six
    import asyncio

    delays = []
    draws = (0.0, 0.5, 0.999)
    c = mqtt.MQTTClient("b", "127.0.0.1", port=1, backoff_ms=(100, 800),
                        rand=lambda: draws[len(delays) % 3], connect_timeout_ms=2000)

    async def fake_sleep(ms):
        delays.append(ms)
        if len(delays) == 6:
            c._stop = True

    c._sleep = fake_sleep
    asyncio.run(c.run())
    assert delays == [50, 150, 400, 400, 600, 800]
    assert c.stats["connect_failures"] == 6 and c.stats["connects"] == 0
    assert "111" in c.stats["last_error"] or "refused" in c.stats["last_error"].lower()
    assert not c.connected


def test_pem_to_der():
    der = bytes(range(40))
    from binascii import b2a_base64

    b64 = b2a_base64(der).strip()
    pem = b"-----BEGIN CERTIFICATE-----\n" + b64[:32] + b"\r\n" + b64[32:] + b"\n-----END CERTIFICATE-----\n"
    assert mqtt.pem_to_der(pem) == der
    assert mqtt.pem_to_der(b"junk before\n" + pem + pem) == der  # the first block
    assert mqtt.pem_to_der(der) == der
    raises(ValueError, mqtt.pem_to_der, b"-----BEGIN X-----\nAAAA")


def test_outgoing_messages_are_not_bound_by_the_receive_buffer():
    # a gateway with many meters publishes a health message larger than what it
    # needs to receive: max_packet sizes the receive buffer, max_publish the sends
    from gateway.mqtt import MQTTClient

    c = MQTTClient("gw", "127.0.0.1", 1, max_packet=4096)
    pid = c._put("t/health", b"x" * 6000, 1, True)  # offline: queued for the next connection
    assert pid and c.inflight == [pid]
    exc = raises(ValueError, c._put, "t/health", b"x" * 20000, 1, True)
    assert "max_publish" in str(exc)
