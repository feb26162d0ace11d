"""The database layer: tables, the batching spend writer and budget totals."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import wait_until

from bitrouter import Error, store


@pytest.fixture
def db(tmp_path):
    """An open store on a fresh SQLite database."""
    with store.Store(f"sqlite:///{tmp_path / 'bitrouter.db'}") as opened:
        yield opened


@pytest.fixture
def url(db):
    """The URL of that fresh database, tables created."""
    return db.url


def count_rows(url) -> int:
    with sqlite3.connect(url[len("sqlite:///"):]) as conn:
        return conn.execute("select count(*) from spend_logs").fetchone()[0]


def row(**fields) -> dict:
    return {"token_hash": "t" * 64, "account": "acct", "model": "default", "upstream": "openai:gpt-4o",
            "protocol": "openai", "status": 200, "cost_micro_usd": 10, **fields}


def test_sqlite_uses_wal_and_creates_both_tables(url):
    with sqlite3.connect(url[len("sqlite:///"):]) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        tables = {name for (name,) in conn.execute("select name from sqlite_master where type='table'")}
    assert {"tokens", "spend_logs"} <= tables


def test_unreachable_database_is_a_user_error_without_the_password():
    with pytest.raises(Error) as caught:
        store.Store("postgresql://alice:s3cr3t-pw@127.0.0.1:1/bitrouter")
    assert "s3cr3t-pw" not in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("cannot open database postgresql://alice:***@127.0.0.1:1/bitrouter: ")


def test_bad_sqlite_path_is_a_user_error(tmp_path):
    with pytest.raises(Error, match="cannot open database"):
        store.Store(f"sqlite:///{tmp_path}/missing-dir/x.db")


def test_full_batches_go_without_waiting_for_the_interval(url):
    writer = store.SpendWriter(url, interval=60, batch_size=500)
    for i in range(1200):
        writer.log(row(model=f"m{i}"))
    # The rows are in the database a moment before the writer has the child's answer: wait for that.
    wait_until(lambda: writer.pending(token_hash="t" * 64) == (200 * 10, 200), what="two full batches")
    assert count_rows(url) == 1000  # the last 200 wait for the interval or close()
    writer.close()
    assert count_rows(url) == 1200
    assert writer.pending(token_hash="t" * 64) == (0, 0)


def test_partial_batch_goes_after_the_interval(url):
    writer = store.SpendWriter(url, interval=0.05, batch_size=500)
    for _ in range(3):
        writer.log(row())
    wait_until(lambda: count_rows(url) == 3, what="the interval flush")
    writer.close()
    assert count_rows(url) == 3


def test_close_flushes_everything(url):
    writer = store.SpendWriter(url, interval=60, batch_size=100_000)
    for _ in range(777):
        writer.log(row())
    writer.close()
    assert count_rows(url) == 777
    writer.close()  # idempotent
    with pytest.raises(RuntimeError):
        writer.log(row())


def test_concurrent_writers_each_row_exactly_once(url):
    writer = store.SpendWriter(url, interval=0.01, batch_size=64)
    start = threading.Barrier(32)

    def work(thread):
        start.wait()
        for i in range(250):
            writer.log(row(model=f"{thread}-{i}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    with sqlite3.connect(url[len("sqlite:///"):]) as conn:
        models = [m for (m,) in conn.execute("select model from spend_logs")]
    assert len(models) == 32 * 250
    assert set(models) == {f"{t}-{i}" for t in range(32) for i in range(250)}


def test_logging_never_waits_on_a_locked_database(db, url):
    writer = store.SpendWriter(url, interval=0.01, batch_size=1)
    blocker = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    blocker.execute("begin exclusive")
    try:
        for _ in range(50):  # would hang or fail here if log() touched the database
            writer.log(row(cost_micro_usd=3))
        assert writer.pending(account="acct") == (150, 50)
        assert blocker.execute("select count(*) from spend_logs").fetchone()[0] == 0
    finally:
        blocker.execute("rollback")
        blocker.close()
    writer.close()
    assert count_rows(url) == 50
    assert db.totals(account="acct") == (150, 50)


def test_writer_under_gevent_monkey_patching(tmp_path):
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import gevent
        from bitrouter import store
        url = "sqlite:///{tmp_path / 'g.db'}"
        db = store.Store(url)
        writer = store.SpendWriter(url, interval=0.01, batch_size=50)
        def work(n):
            for i in range(100):
                writer.log({{"model": f"{{n}}-{{i}}", "cost_micro_usd": 1, "account": "a"}})
                gevent.sleep(0)
        gevent.joinall([gevent.spawn(work, n) for n in range(20)])
        writer.close()
        print(db.totals(account="a"))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2000, 2000)"


def test_totals_by_token_account_period_and_success(db, url):
    writer = store.SpendWriter(url)
    now = time.time()
    writer.log(row(token_hash="a" * 64, account="x", cost_micro_usd=100, time=now - 7200))
    writer.log(row(token_hash="a" * 64, account="x", cost_micro_usd=20, time=now - 10))
    writer.log(row(token_hash="b" * 64, account="x", cost_micro_usd=3, time=now - 10))
    writer.log(row(token_hash="a" * 64, account="x", cost_micro_usd=0, status=502, time=now - 5))
    writer.close()
    assert db.totals(token_hash="a" * 64) == (120, 2)
    assert db.totals(token_hash="a" * 64, since=now - 3600) == (20, 1)
    assert db.totals(account="x") == (123, 3)
    assert db.totals(account="nobody") == (0, 0)


def test_rows_keep_their_fields(db, url):
    writer = store.SpendWriter(url)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    writer.log(row(time=when, latency_ms=42, input_tokens=1, output_tokens=2, cache_read_tokens=3,
                   cache_write_tokens=4, reasoning_tokens=5, protocol="anthropic", status=200,
                   unknown_field="ignored"))
    writer.close()
    saved = store.SpendLog.select().bind(db.db).get()
    assert saved.time == datetime(2026, 1, 2, 3, 4, 5)
    assert (saved.latency_ms, saved.input_tokens, saved.output_tokens, saved.cache_read_tokens,
            saved.cache_write_tokens, saved.reasoning_tokens) == (42, 1, 2, 3, 4, 5)
    assert (saved.protocol, saved.upstream, saved.model) == ("anthropic", "openai:gpt-4o", "default")


def test_record_and_revoke(db):
    db.record_token("h1", name="ci", account="P", claims={"iss": "solana:x:y", "scope": "api",
                                                        "models": ["a*"], "exp": 5})
    db.revoke("h1", name="ci", account="P")
    db.revoke("h2")  # never saved: still revocable
    assert db.revoked_hashes() == {"h1", "h2"}
    saved = store.TokenRecord.select().where(store.TokenRecord.token_hash == "h1").bind(db.db).get()
    assert (saved.name, saved.scope, saved.models, saved.exp, saved.revoked) == ("ci", "api", '["a*"]', 5, True)


def test_postgresql_store_writes_totals_and_revocations(pg_url):
    db = store.Store(pg_url)
    writer = store.SpendWriter(pg_url)
    for _ in range(10):
        writer.log(row(account="pg-test", cost_micro_usd=7))
    writer.close()
    assert db.totals(account="pg-test") == (70, 10)
    db.revoke("pg-" + "0" * 61)
    assert "pg-" + "0" * 61 in db.revoked_hashes()
    assert db.usage(by="account")[0]["requests"] == 10
    db.close()


def test_pooled_postgresql_url(pg_url):
    pooled = pg_url.replace("postgresql://", "postgresql+pool://") + "?max_connections=2&stale_timeout=300"
    db = store.Store(pooled)
    db.save_route("r", {"model": "r", "endpoints": ["mock:echo"]})
    assert db.routes() == {"r": {"model": "r", "endpoints": ["mock:echo"]}}
    before = db.shared_stamp()
    db.revoke("h" * 64)
    assert db.shared_stamp() != before
    assert db.delete_route("r") and not db.delete_route("r")
    db.close()


def test_hostile_strings_are_cleaned_and_never_block_other_rows(url):
    writer = store.SpendWriter(url, interval=0.01, batch_size=50)
    hostile = ["\ud800", "nul\x00byte", "m" * 10_000, "\udcff\ud83d"]
    for i in range(200):
        writer.log(row(model=hostile[i // 2 % 4] if i % 2 else "good", latency_ms=10 ** 12))
    writer.close()
    with sqlite3.connect(url[len("sqlite:///"):]) as conn:
        models = [m for (m,) in conn.execute("select model from spend_logs")]
    assert len(models) == 200
    assert models.count("good") == 100
    assert {"\\ud800", "nul\\x00byte", "m" * 255, "\\udcff\\ud83d"} == set(models) - {"good"}
    assert writer.pending(token_hash="t" * 64) == (0, 0)


def test_a_row_that_cannot_be_stored_is_dropped_alone(url, caplog):
    writer = store.SpendWriter(url, interval=60, batch_size=100_000)
    for i in range(10):
        writer.log(row(model=f"m{i}"))
    writer.log(row(model="slow", latency_ms="very"))  # no integer: the writer process cannot bind it
    writer.close()
    assert count_rows(url) == 10
    assert writer.pending(token_hash="t" * 64) == (0, 0)
    assert "spend row dropped, it cannot be stored" in caplog.text and "'slow'" in caplog.text


def test_two_stores_in_one_process_keep_to_their_own_database(tmp_path):
    with store.Store(f"sqlite:///{tmp_path / 'a.db'}") as a, store.Store(f"sqlite:///{tmp_path / 'b.db'}") as b:
        a.revoke("h" * 64)
        a.save_route("r", {"model": "r", "endpoints": ["mock:echo"]})
        assert b.revoked_hashes() == set() and b.routes() == {}
        stamp = b.shared_stamp()
        assert b.shared_stamp() == stamp  # asked again: the same, until something changes
        b.revoke("g" * 64)
        assert b.shared_stamp() != stamp
        stamps = [b.shared_stamp()]
        for _ in range(2):  # a new route, then the same route saved again (a new tag)
            b.save_route("s", {"model": "s", "endpoints": ["mock:echo"]})
            stamps.append(b.shared_stamp())
        assert len(set(stamps)) == 3
        assert a.revoked_hashes() == {"h" * 64} and b.revoked_hashes() == {"g" * 64}
        assert a.delete_route("r") and not b.delete_route("r")
    assert store.TokenRecord._meta.database is None  # no store bound the models for the process


def test_a_closed_store_reopens_on_its_next_call(db):
    db.revoke("h" * 64)
    db.close()
    assert db.db.is_closed()
    assert db.revoked_hashes() == {"h" * 64}


def writer_process(writer, url):
    """The writer's child process, once a first batch has gone through it."""
    writer.log(row(model="first"))
    wait_until(lambda: count_rows(url) >= 1, what="the first batch")
    return writer._child.pid


def test_a_killed_writer_process_is_replaced_and_no_row_is_lost(url):
    writer = store.SpendWriter(url, interval=0.01, batch_size=50)
    first = writer_process(writer, url)
    os.kill(first, signal.SIGKILL)
    for i in range(120):
        writer.log(row(model=f"m{i}"))
    writer.close()
    assert count_rows(url) == 121
    assert writer.pending(token_hash="t" * 64) == (0, 0)
    with pytest.raises(ProcessLookupError):  # reaped, not left a zombie
        os.kill(first, 0)


def test_the_writer_process_ignores_group_signals_and_never_sees_the_url_in_its_arguments(tmp_path):
    url = f"sqlite:///{tmp_path / 'secret-name.db'}"
    store.Store(url).close()
    writer = store.SpendWriter(url, interval=0.01, batch_size=50)
    pid = writer_process(writer, url)
    assert b"secret-name" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGINT)  # what Ctrl-C and a supervisor's stop send the whole group
    os.kill(pid, signal.SIGTERM)
    for _ in range(30):
        writer.log(row())
    writer.close()  # the server's close, not the signals, ends it: every row is written
    assert count_rows(url) == 31


def test_the_writer_process_ends_with_the_server_however_it_dies(url):
    script = textwrap.dedent(f"""
        import os, time
        from bitrouter import store
        writer = store.SpendWriter({url!r}, interval=0.01)
        writer.log({{"model": "m"}})
        while writer._child is None or writer._pending:
            time.sleep(0.01)
        print(writer._child.pid, flush=True)
        os.kill(os.getpid(), 9)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    child = int(result.stdout)

    def gone():
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"  # exited, its parent gone
    wait_until(gone, what="the orphaned writer process to exit")
    assert count_rows(url) == 1
