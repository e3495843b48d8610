"""`metergate broker-acl` against a real mosquitto: a gateway publishes only
under its own topics and reads only its own commands."""

import subprocess

import pytest
from click.testing import CliRunner

from metergate.bench.broker import Broker, MqttProbe
from metergate.cli import main
from metergate.provision.credentials import (CredentialError, CredentialStore, acl_text, check_mosquitto_hash,
                                             mosquitto_hash, write_broker_files)

pytestmark = pytest.mark.timeout(60)
SERVICE_PW = "bo-secret-2"


@pytest.fixture
def fleet(tmp_path):
    store = CredentialStore(tmp_path / "records" / "credentials.json")
    a, _ = store.for_device("gw-a")
    b, _ = store.for_device("gw-b")
    write_broker_files(store, tmp_path / "broker", {"backoffice": SERVICE_PW})
    with Broker(allow_anonymous=False, password_file=tmp_path / "broker" / "passwd",
                acl_file=tmp_path / "broker" / "acl", workdir=tmp_path / "mosq") as broker:
        yield broker, a, b


def client(broker, cred=None, user=None, password=None):
    if cred is not None:
        user, password = cred["user"], cred["password"]
    return MqttProbe(broker.url, username=user, password=password, timeout=3).connect()


def only(probe, topic_payloads, timeout=1.0):
    """Everything `probe` receives within `timeout`, as (topic, payload) pairs."""
    got = []
    while True:
        try:
            msg = probe.get(timeout=timeout)
        except TimeoutError:
            return got
        got.append((msg.topic, msg.payload.decode()))


def test_a_gateway_publishes_only_under_its_own_topics(fleet):
    broker, a, b = fleet
    office = client(broker, user="backoffice", password=SERVICE_PW)
    office.subscribe("metergate/v1/#")
    gw_a = client(broker, a)
    gw_a.publish("metergate/v1/gw-a/reading", b"mine")
    gw_a.publish("metergate/v1/gw-b/reading", b"forged")        # into another gateway's topics
    gw_a.publish("metergate/v1/gw-b/health", b"forged", retain=True)
    gw_a.publish("metergate/v1/gw-b/cmd/reboot", b"{}")         # a command to another gateway
    gw_a.publish("metergate/v1/gw-a/cmd/reboot", b"{}")         # nor to itself: commands come from the office
    gw_a.publish("elsewhere/x", b"forged")
    gw_a.publish("metergate/v1/gw-a/health", b"mine too", retain=True)
    got = only(office, None)
    assert got == [("metergate/v1/gw-a/reading", "mine"), ("metergate/v1/gw-a/health", "mine too")]
    for probe in (office, gw_a):
        probe.disconnect()


def test_a_gateway_reads_only_its_own_commands(fleet):
    broker, a, b = fleet
    gw_a, gw_b = client(broker, a), client(broker, b)
    gw_b.subscribe("metergate/v1/gw-b/cmd/+")
    # mosquitto 2.0 grants these subscriptions and enforces `read` on delivery;
    # a broker that refuses them outright is as good
    for pattern in ("metergate/v1/gw-b/cmd/+", "metergate/v1/+/cmd/#", "metergate/v1/gw-b/reading", "#"):
        try:
            gw_a.subscribe(pattern)
        except ConnectionError:
            pass
    gw_a.subscribe("metergate/v1/gw-a/cmd/+")
    office = client(broker, user="backoffice", password=SERVICE_PW)
    office.publish("metergate/v1/gw-b/cmd/config_get", b'{"id": 1}')
    office.publish("metergate/v1/gw-a/cmd/health", b'{"id": 2}')
    gw_b.publish("metergate/v1/gw-b/reading", b"b's data")
    assert only(gw_b, None) == [("metergate/v1/gw-b/cmd/config_get", '{"id": 1}')]
    assert only(gw_a, None, timeout=0.3) == [("metergate/v1/gw-a/cmd/health", '{"id": 2}')]
    for probe in (office, gw_a, gw_b):
        probe.disconnect()


def test_wrong_or_unknown_credentials_are_refused(fleet):
    broker, a, b = fleet
    with pytest.raises(ConnectionError, match="refused"):
        client(broker, user="gw-a", password=b["password"])
    with pytest.raises(ConnectionError, match="refused"):
        client(broker, user="gw-c", password="whatever")
    with pytest.raises(ConnectionError, match="refused"):
        MqttProbe(broker.url, timeout=3).connect()  # anonymous


def test_password_file_format_is_mosquitto_passwd_s(tmp_path):
    # a line written by the real mosquitto_passwd verifies with our checker, ours with the same rule
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "someone", "s3cret"], check=True)
    stored = path.read_text().strip().split(":", 1)[1]
    assert stored.startswith("$7$")
    assert check_mosquitto_hash("s3cret", stored)
    assert not check_mosquitto_hash("s3creT", stored)
    ours = mosquitto_hash("s3cret")
    assert ours.split("$")[1:3] == stored.split("$")[1:3]  # same scheme and iteration count
    assert check_mosquitto_hash("s3cret", ours) and not check_mosquitto_hash("other", ours)


def test_credentials_are_made_once_and_kept(tmp_path):
    store = CredentialStore(tmp_path / "c.json")
    first, created = store.for_device("gw-1")
    again, created_again = store.for_device("gw-1")
    other, _ = store.for_device("gw-2")
    assert created and not created_again and first == again
    assert first["user"] == "gw-1" and len(first["password"]) >= 20 and other["password"] != first["password"]
    assert oct((tmp_path / "c.json").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="device id 'gw/1'"):
        store.for_device("gw/1")


def test_acl_text_and_bad_names():
    text = acl_text(["gw-1"], ["office"], prefix="acme/meters")
    assert "user gw-1\ntopic write acme/meters/v1/gw-1/reading\n" in text
    assert "topic read acme/meters/v1/gw-1/cmd/#" in text
    assert "user office\ntopic read acme/meters/v1/#\ntopic write acme/meters/v1/+/cmd/#" in text
    with pytest.raises(CredentialError, match="topic prefix"):
        acl_text(["gw-1"], prefix="a/#")
    with pytest.raises(CredentialError, match="service user 'bad user'"):
        acl_text(["gw-1"], ["bad user"])


def test_broker_acl_command(tmp_path):
    store = CredentialStore(tmp_path / "records" / "credentials.json")
    store.for_device("gw-9")
    runner = CliRunner()
    res = runner.invoke(main, ["broker-acl", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "o"),
                               "--service", "back-office"])
    assert res.exit_code == 1 and "METERGATE_SERVICE_PASSWORD_BACK_OFFICE" in res.output
    res = runner.invoke(main, ["broker-acl", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "o"),
                               "--service", "back-office"], env={"METERGATE_SERVICE_PASSWORD_BACK_OFFICE": "x1"})
    assert res.exit_code == 0, res.output
    assert "1 gateways, 1 service accounts" in res.output
    lines = (tmp_path / "o" / "passwd").read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["back-office", "gw-9"]
    assert oct((tmp_path / "o" / "passwd").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "records" / "credentials.json").write_text("{not json")
    res = runner.invoke(main, ["broker-acl", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "credentials.json: not JSON" in res.output


def test_credentials_made_by_parallel_provisioning_threads_are_all_kept(tmp_path):
    # a batch provisions its boards in threads: each makes its device's entry in the one store
    import threading

    store = CredentialStore(tmp_path / "records" / "credentials.json")
    ids = ["vb-%012x" % k for k in range(16)]
    errors = []

    def make(dev):
        try:
            store.for_device(dev)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(dev,)) for dev in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(CredentialStore(tmp_path / "records" / "credentials.json").devices()) == ids
    assert [p.name for p in (tmp_path / "records").iterdir() if p.name.endswith(".tmp")] == []
