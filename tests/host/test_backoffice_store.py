"""The back-office store: database URLs, the schema applied by the tool itself
(fresh, again, by several processes at once, refusing a newer schema) on
SQLite and a real PostgreSQL."""

import multiprocessing
import pathlib
import uuid

import pytest

from metergate.backoffice import migrations
from metergate.backoffice.store import Store, StoreError, Unavailable, parse_db_url

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite:///%s" % (tmp_path / "bo.db")
    import psycopg

    pg = request.getfixturevalue("postgres")
    name = "m_" + uuid.uuid4().hex[:10]
    base = pg.url.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute('CREATE DATABASE "%s"' % name)
    return base + "/" + name


def test_urls():
    assert parse_db_url("sqlite:///build/bo.db") == ("sqlite", "build/bo.db")
    assert parse_db_url("sqlite:////var/lib/bo.db") == ("sqlite", "/var/lib/bo.db")
    assert parse_db_url("bo.db") == ("sqlite", "bo.db")
    assert parse_db_url("postgresql://mg@db:5432/metergate")[0] == "postgresql"
    for bad, words in (("mysql://x/y", "unsupported database URL scheme 'mysql'"),
                       ("sqlite://", "SQLite URL needs a file"), ("", "empty")):
        with pytest.raises(ValueError, match=words):
            parse_db_url(bad)
    assert Store("postgresql://mg:secret@db/metergate").display_url == "postgresql://mg:***@db/metergate"


def _migrate(url):
    return Store(url).connect(migrate=False).migrate()


def test_schema_applied_once_even_by_concurrent_processes(url):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        applied = pool.map(_migrate, [url] * 4)
    assert sorted(applied, key=len) == [[], [], [], [v for v, _, _ in migrations.MIGRATIONS]]
    with Store(url).connect() as s:
        assert s.schema_version() == migrations.latest()
        assert s.migrate() == []
        # the tables the ingest writes exist and take rows
        with s.transaction():
            s.execute("INSERT INTO quarantine (received_at, topic, reason, digest, payload) VALUES (?, ?, ?, ?, ?)",
                      (1, "t", "why", "d", b"\x00\xff"))
        assert bytes(s.query("SELECT payload FROM quarantine")[0][0]) == b"\x00\xff"


def test_a_newer_schema_is_refused(url):
    with Store(url).connect() as s:
        with s.transaction():
            s.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', 0)",
                      (migrations.latest() + 1,))
    with pytest.raises(StoreError, match="newer than this metergate knows"):
        Store(url).connect()


def test_a_failed_transaction_leaves_nothing(url):
    with Store(url).connect() as s:
        with pytest.raises(ZeroDivisionError):
            with s.transaction():
                s.execute("INSERT INTO collectors (collector_id, kind, source) VALUES ('k', 'wireless', 't')")
                1 / 0
        assert s.query("SELECT COUNT(*) FROM collectors")[0][0] == 0
        with pytest.raises(StoreError):
            with s.transaction():
                s.execute("INSERT INTO collectors (collector_id, kind, source) VALUES ('k', 'radio', 't')")


def test_unreachable_databases_are_unavailable(tmp_path):
    from metergate.bench.procs import free_tcp_port

    with pytest.raises(Unavailable, match="PostgreSQL"):
        Store("postgresql://postgres@127.0.0.1:%d/x" % free_tcp_port(), connect_timeout_s=2).connect()
    with pytest.raises(StoreError, match="does not exist"):
        Store("sqlite:///%s/no/such/dir/bo.db" % tmp_path).connect()
