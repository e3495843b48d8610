"""The back office's database: SQLite (a file, the default) or PostgreSQL.

    store = Store("sqlite:///build/backoffice.db").connect()   # applies migrations
    with store.transaction():
        store.execute("INSERT ...", (...))

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, a plain
file path (SQLite too), or ``postgresql://user@host:port/dbname`` (psycopg 3).
SQL is written once with ``?`` placeholders; the PostgreSQL connection gets
``%s``. A database that cannot be reached or is locked raises ``Unavailable``
(the ingest then stops acknowledging and retries); anything else is a real
error and propagates.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import time
import urllib.parse

from metergate.backoffice import migrations

DEFAULT_URL = "sqlite:///metergate-backoffice.db"
# serialises concurrent schema upgrades on PostgreSQL (several ingest processes start together)
_PG_MIGRATION_LOCK = 0x6D677462  # "mgtb"


class StoreError(RuntimeError):
    """The database refused something or is not one this tool can use."""


class Unavailable(StoreError):
    """The database cannot be reached right now (down, locked, disk full): retry later."""


def parse_db_url(url: str):
    """('sqlite', path) or ('postgresql', conninfo URL); ValueError naming the URL otherwise."""
    if not url:
        raise ValueError("empty database URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.hostname and not parts.path.strip("/"):
            raise ValueError("PostgreSQL URL needs a host or a database name: %r" % url)
        return "postgresql", url
    if parts.scheme == "sqlite":
        # sqlite:///rel.db -> 'rel.db', sqlite:////abs.db -> '/abs.db' (as SQLAlchemy reads them)
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError("SQLite URL needs a file: sqlite:///relative.db or sqlite:////absolute.db, not %r" % url)
        return "sqlite", path
    if parts.scheme and len(parts.scheme) > 1:  # 'C:' style drive letters are paths, not schemes
        raise ValueError("unsupported database URL scheme %r in %r (sqlite:///FILE or postgresql://...)"
                         % (parts.scheme, url))
    return "sqlite", url


def _pg_module():
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        raise StoreError("PostgreSQL needs psycopg 3: pip install 'psycopg[binary]' (%s)" % exc) from None
    return psycopg


class Store:
    def __init__(self, url: str = DEFAULT_URL, *, busy_timeout_s: float = 5.0, connect_timeout_s: int = 5,
                 sqlite_synchronous: str = "FULL"):
        self.url = url
        self.dialect, self.target = parse_db_url(url)
        self.busy_timeout_s = busy_timeout_s
        self.connect_timeout_s = connect_timeout_s
        # FULL: a commit is on disk before the broker hears the acknowledgement,
        # so not even a power cut loses an acknowledged reading
        self.sqlite_synchronous = sqlite_synchronous
        self.conn = None
        self._in_tx = False

    def __repr__(self):
        return "<Store %s>" % self.display_url

    @property
    def display_url(self):
        """The URL without a password, for logs and status."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return self.url

    # -- connection --------------------------------------------------------
    def connect(self, migrate: bool = True):
        self.close()
        try:
            if self.dialect == "sqlite":
                path = pathlib.Path(self.target)
                if path.parent and not path.parent.exists():
                    raise StoreError("SQLite database %s: directory %s does not exist" % (path, path.parent))
                conn = sqlite3.connect(str(path), timeout=self.busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=%s" % self.sqlite_synchronous)
                conn.execute("PRAGMA foreign_keys=ON")
            else:
                psycopg = _pg_module()
                conn = psycopg.connect(self.target, autocommit=True, connect_timeout=self.connect_timeout_s)
        except Exception as exc:
            raise self._translate(exc) from exc
        self.conn = conn
        if migrate:
            self.migrate()
        return self

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self.conn = None
            self._in_tx = False

    def __enter__(self):
        return self if self.conn is not None else self.connect()

    def __exit__(self, *exc):
        self.close()
        return False

    def _translate(self, exc):
        """Unavailable for what a retry can cure, else StoreError / the original."""
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, sqlite3.OperationalError):
            return Unavailable("SQLite %s: %s" % (self.target, exc))
        if isinstance(exc, sqlite3.DatabaseError):
            return StoreError("SQLite %s: %s" % (self.target, exc))
        if self.dialect == "postgresql":
            psycopg = _pg_module()
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                return Unavailable("PostgreSQL %s: %s" % (self.display_url, str(exc).strip()))
            if isinstance(exc, psycopg.DatabaseError):
                return StoreError("PostgreSQL %s: %s" % (self.display_url, str(exc).strip()))
        return exc

    # -- statements ----------------------------------------------------------
    def sql(self, statement: str) -> str:
        if self.dialect == "postgresql":  # psycopg's placeholders are %s, a literal % is %%
            return statement.replace("%", "%%").replace("?", "%s")
        return statement

    def _require(self):
        if self.conn is None:
            raise Unavailable("not connected to %s" % self.display_url)
        return self.conn

    def execute(self, statement, params=()):
        conn = self._require()
        try:
            return conn.execute(self.sql(statement), tuple(params))
        except Exception as exc:
            raise self._translate(exc) from exc

    def executemany(self, statement, rows):
        rows = list(rows)
        if not rows:
            return
        conn = self._require()
        try:
            if self.dialect == "sqlite":
                conn.executemany(statement, rows)
            else:
                with conn.cursor() as cur:
                    cur.executemany(self.sql(statement), rows)
        except Exception as exc:
            raise self._translate(exc) from exc

    def query(self, statement, params=()):
        return self.execute(statement, params).fetchall()

    def iterate(self, statement, params=(), batch=5000):
        """Rows one by one without holding the whole result (a server-side cursor on PostgreSQL)."""
        conn = self._require()
        try:
            if self.dialect == "sqlite":
                cur = conn.execute(statement, tuple(params))
                while True:
                    rows = cur.fetchmany(batch)
                    if not rows:
                        return
                    yield from rows
            else:
                with conn.transaction(), conn.cursor(name="mg_iter") as cur:
                    cur.itersize = batch
                    cur.execute(self.sql(statement), tuple(params))
                    yield from cur
        except Exception as exc:
            raise self._translate(exc) from exc

    @contextlib.contextmanager
    def transaction(self):
        """All or nothing; on SQLite the write lock is taken at the start (BEGIN IMMEDIATE)."""
        conn = self._require()
        if self._in_tx:
            yield self
            return
        try:
            if self.dialect == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
                self._in_tx = True
                try:
                    yield self
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
            else:
                with conn.transaction():
                    self._in_tx = True
                    yield self
        except Exception as exc:
            if self.dialect == "sqlite" and conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the connection may be gone
                    pass
            raise self._translate(exc) from exc
        finally:
            self._in_tx = False

    # -- schema ------------------------------------------------------------
    def schema_version(self) -> int:
        rows = self.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    def migrate(self):
        """Apply the migrations this database lacks; returns their versions."""
        applied = []
        with self.transaction():
            if self.dialect == "postgresql":
                self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
            self.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
            have = self.schema_version()
            if have > migrations.latest():
                raise StoreError("%s has schema version %d, newer than this metergate knows (%d): "
                                 "upgrade metergate" % (self.display_url, have, migrations.latest()))
            for version, name, statements in migrations.MIGRATIONS:
                if version <= have:
                    continue
                for statement in statements:
                    self.execute(migrations.render(statement, self.dialect))
                self.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                             (version, name, int(time.time())))
                applied.append(version)
        return applied

    @property
    def greatest(self):
        """The two-argument maximum: MAX on SQLite, GREATEST on PostgreSQL."""
        return "MAX" if self.dialect == "sqlite" else "GREATEST"

    @property
    def bytewise(self):
        """A collation that orders text as Python does (merge joins need the same order on both sides)."""
        return "BINARY" if self.dialect == "sqlite" else '"C"'


@contextlib.contextmanager
def using_store(db):
    """A connected Store for a URL, closed afterwards; a Store given is used (and left open)."""
    if isinstance(db, Store):
        yield db if db.conn is not None else db.connect()
        return
    store = Store(db).connect()
    try:
        yield store
    finally:
        store.close()
