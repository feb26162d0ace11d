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


def count_requests(url) -> int:
    """Requests the spend log holds (a row holds every request of its kind in one write)."""
    with sqlite3.connect(url[len("sqlite:///"):]) as conn:
        return conn.execute("select coalesce(sum(requests), 0) from spend_logs").fetchone()[0]


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
    for i in range(500):
        writer.log(row(model=f"m{i}"))  # 500 kinds of request: 500 rows, a full batch
    # The rows are in the database a moment before the writer has the child's answer: wait for that.
    wait_until(lambda: writer.pending(token_hash="t" * 64) == (0, 0), what="the full batch")
    assert count_requests(url) == 500
    for i in range(10):
        writer.log(row(model=f"m{i}"))
    assert writer.pending(token_hash="t" * 64) == (100, 10)  # waiting for the interval or close()
    assert count_requests(url) == 500
    writer.close()
    assert count_requests(url) == 510
    assert writer.pending(token_hash="t" * 64) == (0, 0)


def test_requests_of_one_kind_share_a_row_with_their_sums(db, url):
    writer = store.SpendWriter(url, interval=60)
    now = time.time()
    first_time = int(now) - 0.5  # 300 ms of requests within one second (a row spans no more)
    for i in range(300):
        writer.log(row(time=first_time + i / 1000, latency_ms=2, input_tokens=10, output_tokens=i, cost_micro_usd=5,
                       cache_read_tokens=1, cache_write_tokens=2, reasoning_tokens=3))
    writer.log(row(time=now - 5, status=502, cost_micro_usd=0))  # another status: a row of its own
    writer.log(row(time=now - 5, token_hash="u" * 64))  # another token
    writer.log(row(time=first_time, latency_ms=1.5))  # a float latency, in the same second: summed with nothing
    writer.log(row(time=now - 5, model="other"))  # another model, earlier
    writer.close()
    with sqlite3.connect(url[len("sqlite:///"):]) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("select * from spend_logs order by requests desc, id")]
    assert [r["requests"] for r in rows] == [300, 1, 1, 1, 1]
    first = rows[0]
    latest = datetime.fromisoformat(first.pop("time")).replace(tzinfo=timezone.utc).timestamp()
    assert abs(latest - (first_time + 299 / 1000)) < 1e-5  # the latest request's time
    first.pop("id")
    assert first == {"account": "acct", "token_hash": "t" * 64, "model": "default",
                     "upstream": "openai:gpt-4o", "protocol": "openai", "status": 200, "latency_ms": 600,
                     "input_tokens": 3000, "output_tokens": sum(range(300)), "cache_read_tokens": 300,
                     "cache_write_tokens": 600, "reasoning_tokens": 900, "cost_micro_usd": 1500,
                     "requests": 300}
    assert sorted((r["model"], r["status"], r["token_hash"][0], r["latency_ms"]) for r in rows[1:]) == [
        ("default", 200, "t", 1), ("default", 200, "u", 0), ("default", 502, "t", 0), ("other", 200, "t", 0)]
    assert db.totals(token_hash="t" * 64) == (1520, 302)  # the 502 bills nothing and is no success
    assert db.totals(token_hash="t" * 64, since=now - 2) == (1510, 301)
    assert db.usage(by="account") == [{"keys": ("acct", "openai:gpt-4o"), "requests": 304, "input_tokens": 3000,
                                       "output_tokens": sum(range(300)), "cost": 1530}]


def test_a_spend_log_from_before_shared_rows_gets_its_requests_column(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the table as BitRouter created it before `requests`
        conn.execute('CREATE TABLE "spend_logs" ("id" INTEGER NOT NULL PRIMARY KEY, "time" DATETIME NOT NULL, '
                     '"account" VARCHAR(255), "token_hash" VARCHAR(64), "model" VARCHAR(255), '
                     '"upstream" VARCHAR(255), "protocol" VARCHAR(255), "status" INTEGER NOT NULL, '
                     '"latency_ms" INTEGER NOT NULL, "input_tokens" INTEGER NOT NULL, '
                     '"output_tokens" INTEGER NOT NULL, "cache_read_tokens" INTEGER NOT NULL, '
                     '"cache_write_tokens" INTEGER NOT NULL, "reasoning_tokens" INTEGER NOT NULL, '
                     '"cost_micro_usd" INTEGER NOT NULL)')
        conn.executemany("INSERT INTO spend_logs VALUES (NULL, '2026-01-01 00:00:00', 'acct', NULL, 'old', "
                         "NULL, 'openai', 200, 1, 1, 1, 0, 0, 0, ?, )".replace(", )", ")"), [(4,), (6,)])
    url = f"sqlite:///{path}"
    writer = store.SpendWriter(url)
    writer.log(row(cost_micro_usd=10))
    writer.close()
    with store.Store(url) as db:
        assert db.totals(account="acct") == (20, 3)
    with sqlite3.connect(path) as conn:  # a row inserted without the column (an older BitRouter's) is one request
        conn.execute("INSERT INTO spend_logs (time, model, status, latency_ms, input_tokens, output_tokens, "
                     "cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_micro_usd, account) "
                     "VALUES ('2026-01-01', 'older', 200, 0, 0, 0, 0, 0, 0, 1, 'acct')")
    with store.Store(url) as db:
        assert db.totals(account="acct") == (21, 4)


def test_partial_batch_goes_after_the_interval(url):
    writer = store.SpendWriter(url, interval=0.05, batch_size=500)
    for _ in range(3):
        writer.log(row())
    wait_until(lambda: count_requests(url) == 3, what="the interval flush")
    writer.close()
    assert count_requests(url) == 3


def test_requests_arriving_faster_than_the_interval_do_not_hold_their_row_back(url):
    writer = store.SpendWriter(url, interval=0.05)
    same = row(time=time.time())  # one kind, one second: every request joins the first one's row

    def logged_meanwhile():
        writer.log(same)  # every 20 ms, within the interval: a row is joined, not started
        return count_requests(url)

    wait_until(logged_meanwhile, what="the row the first request started")
    writer.close()


def test_close_flushes_everything(url):
    writer = store.SpendWriter(url, interval=60, batch_size=100_000)
    for _ in range(777):
        writer.log(row())
    writer.close()
    assert count_requests(url) == 777
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
    assert count_requests(url) == 50
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
        requests = dict(conn.execute("select model, sum(requests) from spend_logs group by model"))
        latencies = {n for (n,) in conn.execute("select latency_ms from spend_logs")}
    assert requests == {"good": 100, "\\ud800": 25, "nul\\x00byte": 25, "m" * 255: 25, "\\udcff\\ud83d": 25}
    assert latencies == {2 ** 31 - 1}  # a sum beyond the column's range is its largest value
    assert writer.pending(token_hash="t" * 64) == (0, 0)


def test_a_row_that_cannot_be_stored_is_dropped_alone(url, caplog):
    writer = store.SpendWriter(url, interval=60, batch_size=100_000)
    for i in range(10):
        writer.log(row(model=f"m{i}"))
    writer.log(row(model="slow", latency_ms="very"))  # no integer: the writer process cannot bind it
    writer.log(row(model="m0", latency_ms="very"))  # nor alongside a row of its kind
    with pytest.raises(ValueError):  # a cost that cannot be counted against a budget is refused at once
        writer.log(row(model="m1", cost_micro_usd="abc"))
    assert writer.pending(token_hash="t" * 64) == (120, 12)
    writer.log(row(token_hash=["x"]))  # no key can hold a list: counted and stored as its text
    assert writer.pending(token_hash="['x']") == (10, 1)
    writer.close()
    assert count_requests(url) == 11
    assert writer.pending(token_hash="t" * 64) == (0, 0) and writer.pending(token_hash="['x']") == (0, 0)
    assert "spend row dropped, it cannot be stored" in caplog.text and "'slow'" in caplog.text


class Unruly:
    """A value whose addition and conversion both fail, as a careless caller of `log` might pass."""

    def __radd__(self, other):
        raise RuntimeError("no adding")

    def __str__(self):
        raise RuntimeError("no printing")


def test_a_value_that_fails_every_conversion_never_stops_the_writer(url, caplog):
    writer = store.SpendWriter(url, interval=0.01)
    writer.log(row())
    writer.log(row(output_tokens=Unruly()))  # joins the waiting row as it is; summed only when taken
    wait_until(lambda: writer.pending(token_hash="t" * 64) == (0, 0), what="the first batch")
    writer.log(row())  # the writer thread is still there
    writer.close()
    assert count_requests(url) == 2
    assert writer.pending(token_hash="t" * 64) == (0, 0)
    assert "spend row dropped, it cannot be stored" in caplog.text


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
    wait_until(lambda: count_requests(url) >= 1, what="the first batch")
    return writer._child.pid


def test_a_killed_writer_process_is_replaced_and_no_row_is_lost(url):
    writer = store.SpendWriter(url, interval=0.01, batch_size=50)
    first = writer_process(writer, url)
    os.kill(first, signal.SIGKILL)
    for i in range(120):
        writer.log(row(model=f"m{i}"))
    writer.close()
    assert count_requests(url) == 121
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
    assert count_requests(url) == 31


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
    assert count_requests(url) == 1
