"""An MQTT broker written in Python (amqtt), for the demo where mosquitto is not installed.

``EmbeddedBroker`` runs ``python -m metergate.bench.embedded_broker`` as a
ManagedProcess on a free loopback port, anonymous, and offers the surface of
``metergate.bench.broker.Broker`` that the demo uses (``url``, ``host``,
``port``, ``log_path``, ``start()``, ``stop()``, context manager). It runs out
of process so that the broker's asyncio loop never competes with the demo's
threads, and so that stopping it is the same as stopping mosquitto.

Mosquitto stays the broker for tests and production (ARCHITECTURE.md). What
amqtt 0.12 does differently, and what this module does about it, is in
docs/virtual-board.md ("The demo's MQTT broker") and checked by tests/host/test_embedded_broker.py.
"""

import argparse
import asyncio
import functools
import importlib.util
import itertools
import logging
import signal
import sys

from metergate.bench.broker import BrokerNotFound, ManagedBroker
from metergate.bench.procs import LOOPBACK, ManagedProcess, ProcessError

__all__ = ["EmbeddedBroker", "amqtt_missing"]

READY = "metergate embedded broker ready on"
FAILED = "metergate embedded broker failed: "


def amqtt_missing():
    """Why the embedded broker cannot run here (a sentence), or None when it can."""
    if importlib.util.find_spec("amqtt") is None:
        return "the amqtt package is not installed (pip install amqtt)"
    return None


class EmbeddedBroker(ManagedBroker):
    """amqtt in a child process on loopback; the demo's broker when mosquitto is missing.

    ``workdir``: where the log goes (default: a temp directory, removed at stop
    unless the log was asked to live elsewhere). ``port``: fixed, or None for a
    free one (retried if another process takes it first).
    """

    kind = "embedded"
    LOG_NAME = "amqtt.log"
    WORKDIR_PREFIX = "metergate-amqtt-"

    def __init__(self, *, port=None, host=LOOPBACK, workdir=None, log_path=None, ready_timeout=20.0,
                 python=None):
        super().__init__(port=port, host=host, log_path=log_path, workdir=workdir, ready_timeout=ready_timeout)
        self.python = python or sys.executable

    def _prepare(self):
        missing = amqtt_missing()
        if missing:
            raise BrokerNotFound(missing)

    def _process(self):
        return ManagedProcess(
            [self.python, "-m", "metergate.bench.embedded_broker", "--host", self.host, "--port", self.port],
            # ready when it says so (printed once listening): a port probe would be logged as a bad client
            self.log_path, name="amqtt", ready_line=READY, ready_timeout=self.ready_timeout, grace=5.0)

    def _explain(self, exc, log_text):
        said = [line for line in log_text.splitlines() if line.startswith(FAILED)]
        if said:  # its own one-line reason first, then the log for the rest
            return ProcessError("%s (log: %s)" % (said[-1][len(FAILED):], self.log_path))
        return None


# -- the child process -------------------------------------------------------------

PLUGINS = ("OpenAuth", "BrokerLog")
_RESUMING = "metergate.resuming"  # session attribute: between CONNACK and the client's own traffic


@functools.lru_cache(maxsize=None)
def _amqtt_classes():
    """The amqtt subclasses, made on first use so that importing this module needs no amqtt."""
    import amqtt.broker as amqtt_broker_module
    from amqtt.broker import Broker as AmqttBroker
    from amqtt.mqtt.constants import QOS_0
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.session import OUTGOING
    from amqtt.mqtt.packet import DISCONNECT
    from amqtt.plugins.base import BaseAuthPlugin, BasePlugin

    def _forget(task):
        if not task.cancelled() and task.exception() is not None:
            logging.getLogger("metergate.embedded").info("delivery ended: %r", task.exception())

    class OpenAuth(BaseAuthPlugin):
        """Lets every client in, like mosquitto's allow_anonymous.

        amqtt's own AnonymousAuthPlugin marks such clients anonymous, and amqtt
        keeps no session for anonymous clients: a clean_session=False client
        (the ingest, the gateway) would lose what was published while it was
        away. Loopback only, so nothing is lost by not checking.
        """

        async def authenticate(self, *, session):
            return True

    class BrokerLog(BasePlugin):
        """A log line per connect and disconnect with the client id; and a DISCONNECT discards the will.

        amqtt 0.12 decides on the will when the connection ends; a client that
        sends DISCONNECT and closes at once (paho, the ingest, the gateway) often
        gets there before amqtt handled the DISCONNECT, and its will went out
        after a clean goodbye. Packet events run first, so dropping the will here
        settles it (MQTT 3.1.1, 3.14.4: DISCONNECT discards the will).
        """

        async def on_mqtt_packet_received(self, *, packet, session=None):
            if session is not None and packet.fixed_header.packet_type == DISCONNECT:
                session.will_flag = False

        async def on_broker_client_connected(self, *, client_id, client_session):
            self.context.logger.info("connected %s (clean_session %s, keepalive %s)", client_id,
                                     client_session.clean_session, client_session.keep_alive)

        async def on_broker_client_disconnected(self, *, client_id, client_session):
            self.context.logger.info("disconnected %s", client_id)

    class Handler(BrokerProtocolHandler):
        """amqtt's per-connection handler, keeping unacknowledged QoS 1 messages until a PUBACK.

        amqtt 0.12 waits 5 s for a PUBACK and then forgets the message, and
        forgets it too when the connection ends: nothing was ever delivered
        again, so an ingest that stopped before its commit lost those
        readings. Here a message stays in the session until its PUBACK and goes
        again, flagged DUP, on the session's next connection (MQTT 3.1.1, 4.4).
        """

        async def _handle_qos1_message_flow(self, app_message):
            if app_message.direction != OUTGOING:
                return await super()._handle_qos1_message_flow(app_message)
            pid = app_message.packet_id
            session = self.session
            session.inflight_out[pid] = app_message
            packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
            waiter = asyncio.get_running_loop().create_future()
            self._puback_waiters[pid] = waiter  # before sending: the PUBACK may come at once
            try:
                await self._send_packet(packet)
                app_message.publish_packet = packet
                app_message.puback_packet = await waiter
                session.inflight_out.pop(pid, None)  # only the acknowledgement ends it
            finally:
                if self._puback_waiters.get(pid) is waiter:
                    del self._puback_waiters[pid]
            return None

        def handle_read_timeout(self):
            # amqtt 0.12 waits for a silent client for ever, so a gateway that lost power or
            # Wi-Fi (no FIN) never got its will published. MQTT 3.1.1 (3.1.2.10): after
            # 1.5 x keepalive without a packet the server ends the connection, will and all
            if self.session is not None:
                logging.getLogger("metergate.embedded").info(
                    "nothing from %s within 1.5 x keepalive: closing its connection", self.session.client_id)
                asyncio.ensure_future(self.handle_connection_closed()).add_done_callback(_forget)

        async def _retry_deliveries(self):
            # amqtt waited here (up to 10 s each) before reading the client's SUBSCRIBE;
            # the ingest acknowledges only after its SUBACK
            for message in list(itertools.chain(self.session.inflight_in.values(),
                                                self.session.inflight_out.values())):
                asyncio.ensure_future(self._handle_message_flow(message)).add_done_callback(_forget)

    # amqtt makes its handlers through this module-level name (in this child process only)
    amqtt_broker_module.BrokerProtocolHandler = Handler

    class Amqtt(AmqttBroker):
        """amqtt's broker with three more deliveries put right (tests/host/test_embedded_broker.py).

        - Messages queued for a persistent session while its client was away
          went out flagged RETAIN; the gateway ignores retained commands as stale
          (MQTT 3.1.1 sets RETAIN only for messages sent because of a new
          subscription). Now flagged as what they are.
        - They were sent before the client's SUBSCRIBE was read, and amqtt
          waited for every PUBACK first: a client that acknowledges after its
          SUBACK (the ingest acknowledges after a commit) waited for a SUBACK that
          never came. Now they are sent without holding the session up.
        - At every connect amqtt sent the retained messages that match any
          client's subscription, whether or not this client subscribed to them.
          Now retained messages go only with a new subscription, as in mosquitto.
        """

        async def _initialize_client_session(self, *args, **kwargs):
            handler, session = await super()._initialize_client_session(*args, **kwargs)
            if session.keep_alive > 0:  # the reader's wait for a packet: 1.5 x keepalive (see Handler)
                session.keep_alive = (session.keep_alive * 3 + 1) // 2
            return handler, session

        async def _publish_session_retained_messages(self, session):
            handler = self._get_handler(session)
            if handler:
                while not session.retained_messages.empty():
                    queued = session.retained_messages.get_nowait()
                    task = asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos,
                                                                      retain=False))
                    task.add_done_callback(_forget)
            # the connect-time retained sweep that amqtt runs next is skipped (see above)
            session.attributes[_RESUMING] = True

        async def _publish_retained_messages_for_subscription(self, subscription, session):
            if session.attributes.get(_RESUMING):
                return
            handler = self._get_handler(session)
            if handler is None:
                return
            topic_filter, qos = subscription
            for retained in list(self._retained_messages.values()):
                if self._matches(retained.topic, topic_filter):
                    task = asyncio.ensure_future(handler.mqtt_publish(
                        retained.topic, retained.data, min(qos, QOS_0 if retained.qos is None else retained.qos),
                        retain=True))
                    task.add_done_callback(_forget)

        async def _client_message_loop(self, client_session, handler):
            client_session.attributes.pop(_RESUMING, None)
            await super()._client_message_loop(client_session, handler)

    return {"OpenAuth": OpenAuth, "BrokerLog": BrokerLog, "Amqtt": Amqtt}


def __getattr__(name):
    # amqtt loads plugins by dotted path: hand it the classes above on demand
    if name in PLUGINS:
        return _amqtt_classes()[name]
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def broker_config(host, port):
    return {
        "listeners": {"default": {"type": "tcp", "bind": "%s:%d" % (host, port)}},
        # no $SYS publisher: the demo's subscribers would see its topics as noise
        "plugins": {"%s.%s" % (__name__, name): {} for name in PLUGINS},
    }


async def _serve(host, port):
    broker = _amqtt_classes()["Amqtt"](broker_config(host, port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    from importlib.metadata import version

    print("%s %s:%d (amqtt %s)" % (READY, host, port, version("amqtt")), flush=True)
    await stop.wait()
    await broker.shutdown()
    print("metergate embedded broker stopped", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m metergate.bench.embedded_broker",
                                     description="An amqtt MQTT broker on loopback, anonymous (the demo's fallback).")
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--debug", action="store_true", help="log every packet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(args.host, args.port))
    except Exception as exc:  # noqa: BLE001 - one clear line for the parent's error message
        cause = exc.__cause__ or exc
        print("%s%s: %s" % (FAILED, type(cause).__name__, cause), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    # run as the importable module, the one amqtt loads the plugins from
    from metergate.bench import embedded_broker

    sys.exit(embedded_broker.main())
