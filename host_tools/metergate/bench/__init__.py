"""Test-bench process management: managed child processes and a real broker.

- ``procs``: ``ManagedProcess`` (log file, readiness by port/path/log line,
  SIGTERM-then-SIGKILL of the whole process group), ``free_tcp_port``.
- ``broker``: ``Broker`` (mosquitto on a free loopback port), ``ExternalBroker``,
  ``MqttProbe`` (blocking paho-mqtt client for tests).
"""

from metergate.bench.broker import Broker, BrokerNotFound, ExternalBroker, MqttProbe, TlsListener, find_mosquitto
from metergate.bench.procs import ManagedProcess, ProcessError, ReadyTimeout, free_tcp_port

__all__ = [
    "Broker",
    "BrokerNotFound",
    "ExternalBroker",
    "ManagedProcess",
    "MqttProbe",
    "ProcessError",
    "ReadyTimeout",
    "TlsListener",
    "find_mosquitto",
    "free_tcp_port",
]
