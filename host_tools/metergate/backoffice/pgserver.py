"""A throwaway PostgreSQL server on loopback, for the back office's tests, the
bench, and trying the PostgreSQL store without touching a real one.

    with PostgresServer() as pg:
        Store(pg.url).connect()

It runs the Debian `postgresql` binaries (/usr/lib/postgresql/<ver>/bin) on a
free port with its data in a temp dir. PostgreSQL refuses to run as root, so
as root it runs as the `postgres` user (runuser). ``stop_server()`` /
``start_server()`` take it down and bring it back on the same port and data,
as an outage would.
"""

from __future__ import annotations

import glob
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import tempfile

from metergate.bench.procs import LOOPBACK, ManagedProcess, free_tcp_port

DEBIAN_PACKAGE = "postgresql"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be run here; the message says why and how to fix it."""


def find_bindir():
    """Directory of initdb/postgres/pg_ctl: pg_config's, else the newest /usr/lib/postgresql/<ver>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    if found:
        return pathlib.Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return pathlib.Path(initdb).parent
    raise PostgresUnavailable("PostgreSQL server programs (initdb, postgres) not found; install the Debian "
                              "package: apt-get install %s (or run scripts/system-deps.sh as root)" % DEBIAN_PACKAGE)


class PostgresServer:
    def __init__(self, *, fsync=True, dbname="metergate", workdir=None):
        self.fsync = fsync
        self.dbname = dbname
        self.bindir = find_bindir()
        self.port = None
        self.process = None
        self._own = workdir is None
        self.workdir = None if workdir is None else pathlib.Path(workdir)
        self.run_as = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no `postgres` user to run the server as "
                                          "(PostgreSQL refuses root); install the Debian package %s, which "
                                          "creates it" % DEBIAN_PACKAGE) from None
            if not shutil.which("runuser"):
                raise PostgresUnavailable("running as root and `runuser` (util-linux) is missing: cannot drop "
                                          "to the postgres user")
            self.run_as = "postgres"

    @property
    def datadir(self):
        return self.workdir / "data"

    @property
    def url(self):
        return "postgresql://postgres@%s:%d/%s" % (LOOPBACK, self.port, self.dbname)

    def _argv(self, program, *args):
        argv = [str(self.bindir / program)] + [str(a) for a in args]
        return (["runuser", "-u", self.run_as, "--"] + argv) if self.run_as else argv

    def start(self):
        if self.workdir is None:
            self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="metergate-pg-"))
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        if not (self.datadir / "PG_VERSION").exists():
            done = subprocess.run(self._argv("initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
                                             "-E", "UTF8", "--locale=C", "--no-sync"),
                                  capture_output=True, text=True, cwd=self.workdir)
            if done.returncode != 0:
                raise PostgresUnavailable("initdb failed (%d): %s" % (done.returncode, done.stderr.strip()[-2000:]))
        self.port = self.port or free_tcp_port()
        self.start_server()
        import psycopg

        with psycopg.connect("postgresql://postgres@%s:%d/postgres" % (LOOPBACK, self.port),
                             autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone():
                conn.execute('CREATE DATABASE "%s"' % self.dbname)
        return self

    def start_server(self):
        """(Re)start the server process on the same port and data."""
        self.process = ManagedProcess(
            self._argv("postgres", "-D", self.datadir, "-p", self.port, "-h", LOOPBACK, "-k", self.workdir,
                       "-c", "fsync=%s" % ("on" if self.fsync else "off"),
                       "-c", "max_connections=50", "-c", "shared_buffers=32MB"),
            self.workdir / "postgres.log", name="postgres", ready_line="ready to accept connections",
            ready_timeout=30.0, grace=10.0, cwd=self.workdir)
        self.process.start()
        try:
            self.process.wait_ready()
        except Exception:
            self.process.stop(grace=1.0)
            raise
        return self

    def stop_server(self):
        """Fast shutdown (clients are disconnected), data kept."""
        if self.process is None or not self.process.running:
            return
        subprocess.run(self._argv("pg_ctl", "-D", self.datadir, "stop", "-m", "fast", "-w", "-t", "20"),
                       capture_output=True, cwd=self.workdir)
        self.process.stop()
        self.process = None

    def stop(self):
        self.stop_server()
        if self._own and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False


def start_or_reason(install_script=None, **kwargs):
    """(started PostgresServer, None), or (None, why not) when PostgreSQL cannot
    run here; as root the Debian package is installed first with
    `install_script` (scripts/system-deps.sh) when it is missing."""
    try:
        return PostgresServer(**kwargs).start(), None
    except PostgresUnavailable as first:
        if os.geteuid() != 0 or install_script is None:
            return None, "PostgreSQL cannot run here (not root, so not installed for you): %s" % first
        subprocess.run([str(install_script)], check=False)
        try:
            return PostgresServer(**kwargs).start(), None
        except PostgresUnavailable as exc:
            return None, "PostgreSQL not available even after %s: %s" % (install_script, exc)
