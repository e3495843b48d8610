import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Firmware modules and the dual-runtime test helpers import as top-level packages,
# exactly as they do on the board and under the MicroPython unix port.
for path in (ROOT / "firmware", ROOT / "tests" / "firmware"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is missing: make test installs it (scripts/system-deps.sh)")
    d = tmp_path / "pki"
    d.mkdir()
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        openssl(d, "req", "-x509", *key, "-days", "2", "-subj", "/CN=%s" % ca,
                "-keyout", "%s.key" % ca, "-out", "%s.crt" % ca)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "gateway-test")):
        openssl(d, "req", *key, "-subj", "/CN=%s" % cn, "-keyout", "%s.key" % name, "-out", "%s.csr" % name)
        openssl(d, "x509", "-req", "-in", "%s.csr" % name, "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "%s.ext" % name, "-out", "%s.crt" % name)
    return d


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on loopback (metergate.backoffice.pgserver), shared
    by the back-office tests of one pytest worker; skipped with the reason where none can run."""
    from metergate.backoffice.pgserver import start_or_reason

    pg, why_not = start_or_reason(ROOT / "scripts" / "system-deps.sh", fsync=False)
    if pg is None:
        pytest.skip(why_not)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def broker(tmp_path):
    """A mosquitto with persistence on a free loopback port (metergate.bench.broker),
    for the end-to-end gateway tests; stopped afterwards."""
    from metergate.bench.broker import Broker

    b = Broker(workdir=tmp_path / "broker", persistence=True)
    b.start()
    yield b
    b.stop()
