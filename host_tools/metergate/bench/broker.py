"""A real mosquitto broker for tests and the bench, plus a small MQTT probe.

``Broker`` writes a config file into a temporary directory and runs the Debian
mosquitto on a free loopback port. Tests talk to it with ``MqttProbe`` (paho-mqtt
with blocking connect/subscribe/publish and a queue of received messages), the
way the back office and a technician would.
"""

import getpass
import os
import pathlib
import queue
import shutil
import tempfile
import threading
import urllib.parse
import uuid

from metergate.bench.procs import LOOPBACK, ManagedProcess, ProcessError, free_tcp_port

__all__ = [
    "Broker",
    "ManagedBroker",
    "BrokerNotFound",
    "ExternalBroker",
    "MqttProbe",
    "TlsListener",
    "find_mosquitto",
    "parse_mqtt_url",
]

DEBIAN_PACKAGE = "mosquitto"
# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH
SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin")


class BrokerNotFound(RuntimeError):
    """mosquitto is not installed."""


def find_mosquitto(path=None, extra_dirs=SEARCH_DIRS):
    """Absolute path of the mosquitto binary, from PATH (or `path`) then `extra_dirs`."""
    found = shutil.which("mosquitto", path=path)
    if found:
        return found
    for directory in extra_dirs:
        candidate = pathlib.Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BrokerNotFound(
        "mosquitto not found on PATH or in %s; install the Debian package: "
        "sudo apt-get install %s (or run scripts/system-deps.sh)"
        % (", ".join(extra_dirs) or "no extra directories", DEBIAN_PACKAGE))


def parse_mqtt_url(url):
    """'mqtt://host:port' -> ('mqtt', host, port); mqtts defaults to 8883."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("not an MQTT URL (mqtt://HOST[:PORT] or mqtts://HOST[:PORT]): %r" % url)
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    return parts.scheme, parts.hostname, port


class TlsListener:
    """A second, TLS listener for Broker (file paths; port chosen when None)."""

    def __init__(self, cafile, certfile, keyfile, port=None, require_certificate=False):
        self.cafile = pathlib.Path(cafile)
        self.certfile = pathlib.Path(certfile)
        self.keyfile = pathlib.Path(keyfile)
        self.port = port
        self.require_certificate = require_certificate


class ManagedBroker:
    """A broker run as a child process on loopback: what mosquitto (Broker) and
    the demo's embedded broker (metergate.bench.embedded_broker) share. A port,
    fixed or a free one (tried again when another process takes it first); a
    work dir for its log (a temp dir by default, removed at stop unless the log
    was asked to live elsewhere); start / stop / context manager.

    A subclass names its LOG_NAME and WORKDIR_PREFIX and gives
    ``_prepare()`` (once before the first attempt: find the program, ...),
    ``_process()`` (the ManagedProcess for the chosen port) and, optionally,
    ``_explain(exc, log_text)`` (the error to raise when it did not start)."""

    kind = "?"
    LOG_NAME = "broker.log"
    WORKDIR_PREFIX = "metergate-broker-"

    def __init__(self, *, port=None, host=LOOPBACK, log_path=None, workdir=None, ready_timeout=10.0):
        self.host = host
        self._fixed_port = port
        self.port = port
        self.ready_timeout = ready_timeout
        self._own_workdir = workdir is None
        self.workdir = None if workdir is None else pathlib.Path(workdir)
        self._log_path = None if log_path is None else pathlib.Path(log_path)
        self.process = None

    @property
    def url(self):
        return "mqtt://%s:%d" % (self.host, self.port)

    @property
    def tls_url(self):
        return None  # no TLS listener unless a subclass has one

    @property
    def log_path(self):
        if self._log_path is None and self.workdir is not None:
            return self.workdir / self.LOG_NAME
        return self._log_path

    def _prepare(self):
        pass

    def _process(self):
        raise NotImplementedError("%s must say how its broker process is started" % type(self).__name__)

    def _explain(self, exc, log_text):
        return None  # the ManagedProcess error as it is

    def start(self):
        self._prepare()
        if self.workdir is None:
            self.workdir = pathlib.Path(tempfile.mkdtemp(prefix=self.WORKDIR_PREFIX))
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port is not None else 5
        for attempt in range(attempts):
            if self._fixed_port is None:
                self.port = free_tcp_port(self.host)
            self.process = self._process()
            self.process.start()
            try:
                self.process.wait_ready()
            except ProcessError as exc:
                text = self.process.log_text()
                self.process.stop(grace=1.0)
                if "address already in use" in text.lower() and attempt + 1 < attempts:
                    continue  # another process took the free port first
                better = self._explain(exc, text)
                if better is not None:
                    raise better from exc
                raise
            return self
        raise AssertionError("unreachable")

    def stop(self):
        if self.process is not None:
            self.process.stop()
        if self._own_workdir and self.workdir is not None:
            log = self.log_path
            if log is None or self.workdir not in log.resolve().parents:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return "<%s %s log=%s>" % (type(self).__name__, self.url if self.port else "(not started)", self.log_path)


class Broker(ManagedBroker):
    """mosquitto on loopback, configured from the arguments.

    ``port``: fixed port, or None for a free one (retried if another process
    takes it first). ``allow_anonymous`` / ``persistence``: as in
    mosquitto.conf (defaults: anonymous allowed, nothing persisted).
    ``password_file`` / ``acl_file``: paths to mosquitto_passwd and ACL files.
    ``tls``: a TlsListener for an extra mqtts listener. ``log_path``: the broker
    log (default: in the temp directory, which is then kept).
    """

    kind = "mosquitto"
    LOG_NAME = "mosquitto.log"
    WORKDIR_PREFIX = "metergate-broker-"

    def __init__(self, *, port=None, host=LOOPBACK, log_path=None, workdir=None,
                 allow_anonymous=True, persistence=False, password_file=None,
                 acl_file=None, tls=None, extra_config=(), ready_timeout=10.0,
                 mosquitto=None):
        super().__init__(port=port, host=host, log_path=log_path, workdir=workdir, ready_timeout=ready_timeout)
        self.allow_anonymous = allow_anonymous
        self.persistence = persistence
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.tls_port = None
        self.extra_config = list(extra_config)
        self._mosquitto = mosquitto
        self._binary = None
        self.config_path = None

    @property
    def tls_url(self):
        return None if self.tls_port is None else "mqtts://%s:%d" % (self.host, self.tls_port)

    def config_text(self):
        lines = [
            "# written by metergate.bench.broker for one test run",
            "per_listener_settings false",
            "listener %d %s" % (self.port, self.host),
            "allow_anonymous %s" % ("true" if self.allow_anonymous else "false"),
            "persistence %s" % ("true" if self.persistence else "false"),
            # mosquitto does not flush stdout when it is a file: let it write the log itself
            "log_dest file %s" % pathlib.Path(self.log_path).resolve(),
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_type unsubscribe",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.persistence:
            lines.append("persistence_location %s/" % self.workdir)
        if os.geteuid() == 0:
            # as root mosquitto switches to the `mosquitto` user, which cannot
            # read a private temp dir; stay the user that started it
            lines.append("user %s" % getpass.getuser())
        if self.password_file is not None:
            lines.append("password_file %s" % pathlib.Path(self.password_file).resolve())
        if self.acl_file is not None:
            lines.append("acl_file %s" % pathlib.Path(self.acl_file).resolve())
        if self.tls is not None:
            lines += [
                "listener %d %s" % (self.tls_port, self.host),
                "cafile %s" % self.tls.cafile.resolve(),
                "certfile %s" % self.tls.certfile.resolve(),
                "keyfile %s" % self.tls.keyfile.resolve(),
                "require_certificate %s" % ("true" if self.tls.require_certificate else "false"),
            ]
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def _prepare(self):
        self._binary = self._mosquitto or find_mosquitto()

    def _process(self):
        if self.tls is not None:
            self.tls_port = self.tls.port or free_tcp_port(self.host)
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text(self.config_text())
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        return ManagedProcess([self._binary, "-c", self.config_path], self.log_path, name="mosquitto",
                              ready_port=ports, ready_host=self.host, ready_timeout=self.ready_timeout, grace=5.0)


class ExternalBroker:
    """A broker given by URL (``--broker``): same attributes as Broker, nothing to run."""

    def __init__(self, url):
        self.scheme, self.host, self.port = parse_mqtt_url(url)
        self.url = url
        self.log_path = None
        self.tls_url = url if self.scheme == "mqtts" else None

    def __repr__(self):
        return "<ExternalBroker %s>" % self.url


class MqttProbe:
    """A paho-mqtt client with blocking calls, for tests.

    Received messages go to a queue: ``get()`` returns the next one or raises
    TimeoutError. Every call waits for the broker's acknowledgement.
    """

    def __init__(self, url, client_id=None, *, clean_session=True, username=None,
                 password=None, ca_certs=None, timeout=5.0):
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.scheme, self.host, self.port = parse_mqtt_url(url)
        self.client_id = client_id or "probe-" + uuid.uuid4().hex[:10]
        self.timeout = timeout
        self.messages = queue.Queue()
        self._connected = threading.Event()
        self._connack = None
        self._subacks = {}
        self._suback_cv = threading.Condition()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=clean_session, protocol=mqtt.MQTTv311)
        if username is not None:
            client.username_pw_set(username, password)
        if self.scheme == "mqtts":
            client.tls_set(ca_certs=None if ca_certs is None else str(ca_certs))
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connack = (reason_code, flags)
        self._connected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_cv:
            self._subacks[mid] = reason_codes
            self._suback_cv.notify_all()

    def connect(self):
        """Connect and wait for CONNACK; ConnectionError when the broker refuses."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(self.timeout):
            self.client.loop_stop()
            raise TimeoutError("no CONNACK from %s:%d in %.1f s" % (self.host, self.port, self.timeout))
        reason_code, flags = self._connack
        if reason_code.is_failure:
            self.client.disconnect()
            self.client.loop_stop()
            raise ConnectionError("broker refused %s: %s" % (self.client_id, reason_code))
        self.session_present = bool(flags.session_present)
        return self

    def subscribe(self, topic, qos=1):
        """Subscribe and wait for SUBACK; returns the granted QoS."""
        result, mid = self.client.subscribe(topic, qos)
        if result != self._mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError("subscribe %s failed: %s" % (topic, self._mqtt.error_string(result)))
        with self._suback_cv:
            if not self._suback_cv.wait_for(lambda: mid in self._subacks, self.timeout):
                raise TimeoutError("no SUBACK for %s" % topic)
            code = self._subacks.pop(mid)[0]
        if code.is_failure:
            raise ConnectionError("broker refused subscription to %s: %s" % (topic, code))
        return code.value

    def publish(self, topic, payload, qos=1, retain=False):
        """Publish and wait until done (PUBACK for QoS 1, PUBCOMP for QoS 2)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise TimeoutError("publish to %s not acknowledged in %.1f s" % (topic, self.timeout))
        return info

    def get(self, timeout=None):
        """The next received message (paho MQTTMessage); TimeoutError when none comes."""
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TimeoutError("no message for %s within %.1f s" % (
                self.client_id, self.timeout if timeout is None else timeout)) from None

    def disconnect(self):
        """Clean DISCONNECT (the broker then drops this client's will, keeps its session)."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.disconnect()
        return False
