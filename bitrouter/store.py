"""The database (peewee): saved-token records, revocations and the spend log.

SQLite by default, any peewee URL otherwise (`postgresql://user:pass@host/db` needs a
PostgreSQL driver such as psycopg2 installed). A `Store` is one open database; the models
are bound to none, each store binds its own queries. The spend writer's rows are
committed by a process of their own.
"""

import contextlib
import json
import logging
import marshal
import math
import numbers
import os
import secrets
import signal
import sys
import time
from datetime import datetime, timedelta, timezone

import peewee

from bitrouter import Error, native
from bitrouter.home import mask_url, private_file

log = logging.getLogger("bitrouter.store")

USAGE_GROUPS = ("token", "model", "account")
MAX_BUFFERED = 100_000  # spend rows kept in memory while the database is unreachable
SCHEMA_LOCK = 0x62697472  # PostgreSQL advisory lock held while creating the tables ("bitr")


class TokenRecord(peewee.Model):
    """A token saved with `keygen --name`, or one that was revoked."""

    name = peewee.CharField(null=True)
    account = peewee.CharField(null=True)  # the account prefix
    issuer = peewee.CharField(null=True)  # CAIP-10
    scope = peewee.CharField(null=True)
    models = peewee.TextField(null=True)  # JSON list
    iat = peewee.BigIntegerField(null=True)
    exp = peewee.BigIntegerField(null=True)
    budget = peewee.BigIntegerField(null=True)
    budget_scope = peewee.CharField(null=True)
    budget_range = peewee.TextField(null=True)  # JSON object
    token_hash = peewee.CharField(max_length=64, unique=True)
    revoked = peewee.BooleanField(default=False)
    created = peewee.DateTimeField()

    class Meta:
        table_name = "tokens"


class SpendLog(peewee.Model):
    """Proxied requests alike in who, which model and how it went, finished in the same second
    and written together: how many, and what they cost together.

    A row's `time` is its latest request's; the token, cost and latency columns are sums
    (a busy server writes a row or two a second per kind of request, not one per request).
    """

    time = peewee.DateTimeField(index=True)  # naive UTC
    account = peewee.CharField(null=True)  # issuer CAIP-10; null when the server runs open
    token_hash = peewee.CharField(max_length=64, null=True)
    model = peewee.CharField(null=True)  # as requested by the client
    upstream = peewee.CharField(null=True)  # provider:model_id that served it
    protocol = peewee.CharField(null=True)  # inbound protocol: openai, anthropic, google, ...
    status = peewee.IntegerField(default=200)
    latency_ms = peewee.IntegerField(default=0)
    input_tokens = peewee.IntegerField(default=0)
    output_tokens = peewee.IntegerField(default=0)
    cache_read_tokens = peewee.IntegerField(default=0)
    cache_write_tokens = peewee.IntegerField(default=0)
    reasoning_tokens = peewee.IntegerField(default=0)
    cost_micro_usd = peewee.BigIntegerField(default=0)
    # The database's own default too: a row an older BitRouter inserts on a shared database is one request.
    requests = peewee.IntegerField(default=1, constraints=[peewee.SQL("DEFAULT 1")])

    class Meta:
        table_name = "spend_logs"
        indexes = ((("token_hash", "time"), False), (("account", "time"), False))


class RouteRecord(peewee.Model):
    """A dynamic route added through `POST /admin/routes`: every instance on the database serves it."""

    name = peewee.CharField(unique=True)
    spec = peewee.TextField()  # the JSON body it was added with
    tag = peewee.IntegerField()  # random, new on every write: a change the instances' poll can see

    class Meta:
        table_name = "routes"


MODELS = (TokenRecord, SpendLog, RouteRecord)
# What says which row a request joins (with the second of its time), and what a row sums.
KIND_FIELDS = ("account", "token_hash", "model", "upstream", "protocol", "status")
SUMMED_FIELDS = ("latency_ms", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens", "cost_micro_usd")
# A request's values, as `SpendWriter.log_values` takes them: its kind, then its time and sums
# (a slice each: a waiting row keeps its requests' times and sums to add up when it is taken). A
# stored row is a kind, the latest time, the sums and the count of requests; the insert names
# its columns, so the model's own order does not matter.
SPEND_FIELDS = (*KIND_FIELDS, "time", *SUMMED_FIELDS)
STORED_FIELDS = (*SPEND_FIELDS, "requests")


def connect(url: str, thread_safe: bool = True) -> peewee.Database:
    """A new peewee database for a URL with the tables created (SQLite in WAL mode)."""
    from playhouse.db_url import connect as url_connect
    params = {"thread_safe": thread_safe}
    if url.split(":", 1)[0] in ("sqlite", "sqlite+pool"):
        _private_sqlite(url)
        # WAL lets the CLI and the spend writer work while the server reads; the busy
        # timeout makes a second writer wait instead of failing with "database is locked".
        # It goes first: switching to WAL needs the lock, which workers starting together race for.
        params["pragmas"] = {"busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal"}
    try:
        db = url_connect(url, **params)
        # Instances starting together take turns: SQLite's write lock from the start, PostgreSQL's advisory lock.
        with db.atomic(*("IMMEDIATE",) if isinstance(db, peewee.SqliteDatabase) else ()):
            if isinstance(db, peewee.PostgresqlDatabase):
                db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for model in MODELS:  # a SchemaManager: the models are bound to no database
                peewee.SchemaManager(model, db).create_all(safe=True)
            _add_requests_column(db)
    except Exception as exc:  # drivers raise their own types; all mean "cannot use it"
        raise Error(f"cannot open database {mask_url(url)}: {_reason(exc, url)}") from None
    return db


class Store:
    """One open database: saved-token records, revocations, dynamic routes and spend totals.

    Every query is bound to this store's database, so two stores (two homes, two URLs) live
    side by side in one process. `shared` keeps one connection for the whole process instead
    of one per thread: right for a gevent server, whose greenlets would each open (and leak)
    a connection otherwise, and whose database calls never yield mid-query. Close it with
    `close()` or use it as a context manager.
    """

    def __init__(self, url: str, shared: bool = False):
        self.url = url
        self.db = connect(url, thread_safe=not shared)
        self._stamp_query = None  # shared_stamp's SQL and parameters, in this database's dialect

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record_token(self, token_hash: str, name=None, account=None, claims=None) -> None:
        """Save a minted token's metadata (the token text itself is never stored)."""
        claims = claims or {}
        row = {"token_hash": token_hash, "name": name, "account": account, "issuer": claims.get("iss"),
               "scope": claims.get("scope"), "iat": claims.get("iat"), "exp": claims.get("exp"),
               "budget": claims.get("budget"), "budget_scope": claims.get("budget_scope"),
               "models": _json(claims.get("models")), "budget_range": _json(claims.get("budget_range")),
               "created": _utcnow()}
        self._write(TokenRecord.insert(**row).on_conflict(
            conflict_target=[TokenRecord.token_hash],
            update={k: v for k, v in row.items() if k not in ("token_hash", "created")}))

    def revoke(self, token_hash: str, name=None, account=None) -> None:
        """Mark a token revoked, creating its record if it was never saved."""
        row = {"token_hash": token_hash, "name": name, "account": account, "revoked": True,
               "created": _utcnow()}
        self._write(TokenRecord.insert(**row).on_conflict(
            conflict_target=[TokenRecord.token_hash], update={TokenRecord.revoked: True}))

    def revoked_hashes(self) -> set[str]:
        """The hashes of every revoked token."""
        query = TokenRecord.select(TokenRecord.token_hash).where(TokenRecord.revoked == True)  # noqa: E712
        return {row.token_hash for row in self._read(lambda db: list(query.bind(db)))}

    def totals(self, token_hash=None, account=None, since=None) -> tuple[int, int]:
        """(micro-USD spent, successful requests) for a token or an account, optionally since a Unix time."""
        query = SpendLog.select(peewee.fn.COALESCE(peewee.fn.SUM(SpendLog.cost_micro_usd), 0),
                                peewee.fn.COALESCE(peewee.fn.SUM(SpendLog.requests), 0)).where(SpendLog.status < 400)
        if token_hash is not None:
            query = query.where(SpendLog.token_hash == token_hash)
        if account is not None:
            query = query.where(SpendLog.account == account)
        if since is not None:
            query = query.where(SpendLog.time >= _utc_naive(since))
        cost, count = self._read(lambda db: query.tuples().get(db))
        return int(cost), int(count)

    def usage(self, since=None, by="token") -> list[dict]:
        """Spend grouped by token and upstream model (or by model, or account and model), costliest first."""
        name = peewee.fn.COALESCE(TokenRecord.name, peewee.fn.SUBSTR(SpendLog.token_hash, 1, 12), "(none)")
        account = peewee.fn.COALESCE(SpendLog.account, "(none)")
        upstream = peewee.fn.COALESCE(SpendLog.upstream, SpendLog.model, "?")
        keys = {"token": (name, upstream), "model": (upstream,), "account": (account, upstream)}[by]
        cost = peewee.fn.SUM(SpendLog.cost_micro_usd)
        query = (SpendLog.select(*keys, peewee.fn.SUM(SpendLog.requests), peewee.fn.SUM(SpendLog.input_tokens),
                                 peewee.fn.SUM(SpendLog.output_tokens), cost)
                 .join(TokenRecord, peewee.JOIN.LEFT_OUTER,
                       on=(SpendLog.token_hash == TokenRecord.token_hash))
                 .group_by(*keys).order_by(cost.desc()))
        if since is not None:
            query = query.where(SpendLog.time >= _utc_naive(since))
        rows = self._read(lambda db: list(query.tuples().bind(db)))
        width = len(keys)
        return [{"keys": tuple(str(k) for k in row[:width]), "requests": int(row[width]),
                 "input_tokens": int(row[width + 1] or 0), "output_tokens": int(row[width + 2] or 0),
                 "cost": int(row[width + 3] or 0)} for row in rows]

    # ------------------------------------------------------------ shared by every instance

    def save_route(self, name: str, spec: dict) -> None:
        """Store (or replace) a dynamic route's validated spec."""
        row = {"name": name, "spec": _json(spec), "tag": secrets.randbits(31)}
        self._write(RouteRecord.insert(**row).on_conflict(
            conflict_target=[RouteRecord.name], update={k: v for k, v in row.items() if k != "name"}))

    def delete_route(self, name: str) -> bool:
        """Remove a dynamic route; False if there was none of that name."""
        return bool(self._write(RouteRecord.delete().where(RouteRecord.name == name)))

    def routes(self) -> dict:
        """Every stored dynamic route: name -> spec."""
        rows = self._read(lambda db: list(RouteRecord.select().bind(db)))
        return {row.name: json.loads(row.spec) for row in rows}

    def shared_stamp(self) -> tuple:
        """A cheap signature of what instances share: it changes with every revocation or route change."""
        if self._stamp_query is None:  # built once: peewee takes 0.2 ms to build it, the server
            # asks 4 times a second from its event loop, and the query itself takes microseconds
            revoked = TokenRecord.select(peewee.fn.COUNT(TokenRecord.id)).where(TokenRecord.revoked == True)  # noqa: E712
            routes_count = RouteRecord.select(peewee.fn.COUNT(RouteRecord.id))
            routes_tags = RouteRecord.select(peewee.fn.SUM(RouteRecord.tag))
            self._stamp_query = peewee.Select(columns=[revoked, routes_count, routes_tags]).bind(self.db).sql()
        sql, params = self._stamp_query
        return self._read(lambda db: tuple(db.execute_sql(sql, params).fetchone()))  # one round trip

    # ------------------------------------------------------------ helpers

    def _write(self, query):
        """Execute a write query in a transaction, turning driver errors into a user error."""
        try:
            with self.db.atomic():
                return query.bind(self.db).execute()
        except peewee.PeeweeException as exc:
            _drop_connection(self.db)
            raise Error(f"database error: {_reason(exc)}") from None

    def _read(self, operation):
        """Run `operation(db)`, turning driver errors into a user error."""
        try:
            return operation(self.db)
        except peewee.PeeweeException as exc:
            _drop_connection(self.db)
            raise Error(f"database error: {_reason(exc)}") from None


class SpendWriter:
    """Writes spend rows in batches through a writer process; `log` never waits on the database.

    `log` adds a request to the waiting row of its kind (same account, token, model, upstream,
    protocol and status, and the same second), or starts one: at a thousand requests a second
    of one kind, the database gets a row or two a second instead of a thousand. A row keeps
    its requests' times and sums as they came, the least a request can cost while it is being
    served; a background OS thread takes the rows `interval` seconds after the first of them
    was started (or when `batch_size` are waiting), adds them up (`_summed_rows`, in C loops
    for the most part), hands them to a child process over a pipe and waits for its answer;
    the child (`write_rows`) binds them and commits them. The database work is a
    process's, not a thread's: a thread that binds and inserts rows takes this process's
    interpreter lock in many short turns (SQLite's driver lets go of it around every call),
    and every turn made the event loop that serves requests wait once more. The thread and
    its locks are the interpreter's own even when gevent has monkey-patched the process, and
    the child starts with the first batch.

    A request is pending (counted by `pending`, for budget checks) until the child says its row
    is stored. If the child dies, its batch is sent again to a new one: a child killed between
    its commit and its answer writes that batch twice (counted twice, never lost). `close()`
    writes everything still waiting; the child ignores SIGINT and SIGTERM, which a terminal or
    a supervisor sends the whole process group, and ends when its pipe closes.
    """

    def __init__(self, url: str, interval: float = 0.2, batch_size: int = 500):
        self.url = url
        self.interval = interval
        self.batch_size = batch_size
        connect(url).close()  # fail at start-up, not on the first flush
        allocate_lock = native("_thread", "allocate_lock")
        self._lock = allocate_lock()  # guards _rows and _pending
        self._wakeup = allocate_lock()  # held while the thread may sleep; released to wake it
        self._done = allocate_lock()
        self._rows: dict = {}  # (kind, second) -> the times and sums of the row's requests so far
        self._pending: dict = {}
        self._closed = False
        self._failing = False  # the last write failed: the backoff, not a full batch, decides when
        self._child = None  # the writer process, started with the first batch
        self._wakeup.acquire()
        self._done.acquire()
        native("_thread", "start_new_thread")(self._run, ())

    def log(self, row: dict) -> None:
        """Queue one request's spend (SpendLog field names but `requests`; `time` may be a Unix
        time or omitted, the others their column's default)."""
        self.log_values(tuple(row.get(name, default) for name, default in _DEFAULTS))

    def log_values(self, values: tuple) -> None:
        """`log` for a request given as its values in SPEND_FIELDS order (the server's: no dict
        to build and read back)."""
        if self._closed:
            raise RuntimeError("the spend writer is closed")
        with self._lock:
            started = self._join(values)
            waiting = len(self._rows)
        if started and (waiting == 1 or (waiting >= self.batch_size and not self._failing)):
            self._wake()  # the first row starts the interval; a full batch goes at once

    def pending(self, token_hash=None, account=None) -> tuple[int, int]:
        """(micro-USD, successful requests) logged but not yet committed, for budget checks."""
        key = ("token", token_hash) if token_hash is not None else ("account", account)
        with self._lock:
            cost, successes, _rows = self._pending.get(key, (0, 0, 0))
        return cost, successes

    def close(self, timeout: float = 30.0) -> None:
        """Flush every queued row and stop the thread; logs how many rows were lost, if any."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        if not self._done.acquire(timeout=timeout):
            log.error("spend writer did not finish within %.0f s; unwritten rows are lost", timeout)

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        """Every interval (or when woken), take the waiting rows and have them committed."""
        batch: list = []
        failures = 0
        try:
            while True:
                # The wake-up lock doubles as the timer; with nothing to write the thread sleeps
                # until the next row arrives.
                if failures:
                    timeout = min(5.0, self.interval * 2 ** failures)
                else:
                    timeout = self.interval if batch or self._rows else -1
                woken = self._wakeup.acquire(timeout=timeout)
                stopping = self._closed  # read first: every row logged before close() is taken below
                taken = {}
                with self._lock:  # woken by the first row, the interval starts; else every row goes
                    if not woken or stopping or len(self._rows) >= self.batch_size:
                        taken, self._rows = self._rows, {}
                batch += _summed_rows(taken)
                if batch:
                    if self._flush(batch):
                        failures = 0
                    else:
                        failures += 1
                        if stopping and failures >= 5:
                            log.error("could not write %d spend rows at shutdown; they are lost",
                                      len(batch))
                            self._forget(batch)
                            break
                        if len(batch) > MAX_BUFFERED:
                            log.error("database unreachable: dropping %d oldest spend rows",
                                      len(batch) - MAX_BUFFERED)
                            self._forget(batch[:-MAX_BUFFERED])
                            del batch[:-MAX_BUFFERED]
                    self._failing = bool(failures)
                if stopping and not batch:
                    break
        finally:
            self._stop_child()
            self._done.release()

    def _wake(self) -> None:
        """Wake the thread now (a full batch, or close)."""
        try:
            self._wakeup.release()
        except RuntimeError:  # already released: a wake-up is pending
            pass

    def _flush(self, batch: list) -> bool:
        """Have the writer process store a batch; True once every row is stored or dropped.

        The rows it has done are forgotten and taken off the batch; the rest stay for the
        next try (the database may be back by then, or a new child started).
        """
        try:
            if self._child is None:
                self._child = _WriterProcess(self.url)
            _send(self._child.rows, batch)
            done, notes = _receive(self._child.answers)
        except (OSError, EOFError) as exc:
            log.warning("spend writer process failed (%d rows kept): %s", len(batch),
                        str(exc) or type(exc).__name__)
            self._stop_child(kill=True)
            return False
        for level, text in notes:  # the child's log lines, already masked
            log.log(level, "%s", text)
        self._forget(batch[:done])
        del batch[:done]
        return not batch

    def _stop_child(self, kill: bool = False) -> None:
        """End the writer process: its pipe closes, it finishes its batch and exits."""
        child, self._child = self._child, None
        if child is not None:
            child.close(kill)

    def _forget(self, rows: list) -> None:
        """Take committed (or dropped) rows' requests out of the pending totals."""
        with self._lock:
            if not self._pending:  # no row counts for a budget (an open server's): no loop holding the GIL
                return
            for values in rows:
                self._count(values, -1, values[_REQUESTS])

    def _join(self, values: tuple) -> bool:
        """Count a request as pending and add its time and sums to the waiting row of its kind
        and second, or start one (lock held); whether it started one.

        The common case costs the least: a row of its kind is waiting, and the request joins
        it as it is (`_summed_rows` adds up its sums, and checks them, when the row is taken).
        A request that starts a row is first made what the pipe carries (`_plain`); one without
        a finite Unix time gets a row of its own.
        """
        try:
            times_and_sums = self._rows.get(_row_key(values))
        except TypeError:  # a value no dictionary key can hold (a list): _plain makes it a string
            times_and_sums = None
        if times_and_sums is None:
            values = _plain(values)  # counted and keyed as the pipe will carry it
            key = _row_key(values) or (values[_KIND], object())
        self._count(values, +1, 1)  # before it is queued: a request it cannot count (a cost of "abc") is not
        if times_and_sums is None:
            times_and_sums = self._rows.setdefault(key, [])
        times_and_sums.append(values[_TIME_AND_SUMS])
        return len(times_and_sums) == 1

    def _count(self, values, sign: int, requests: int) -> None:
        """Add a row's requests to (or take them from) the pending totals of its token and
        account (lock held)."""
        token_hash, account = values[_TOKEN_HASH], values[_ACCOUNT]
        if token_hash is None and account is None:  # an open server's rows: nobody's budget
            return
        cost = sign * int(values[_COST] or 0)
        status = values[_STATUS]
        successes = sign * requests * (status is None or int(status) < 400)
        keys = [("token", token_hash)] if token_hash is not None else []
        if account is not None:
            keys.append(("account", account))
        for key in keys:
            total = self._pending.get(key, (0, 0, 0))
            total = (total[0] + cost, total[1] + successes, total[2] + sign * requests)
            if total[2]:  # entries go when no row of theirs is pending, not when they sum to 0
                self._pending[key] = total
            else:
                self._pending.pop(key, None)


def write_rows() -> None:
    """The writer process (`SpendWriter` starts it): on standard input the database URL, then
    batches of rows, each answered on standard output with (rows done, log lines) once
    committed; ends when standard input closes."""
    source, answers = sys.stdin.buffer, sys.stdout.buffer
    for name in ("SIGINT", "SIGTERM"):  # sent to the whole group; the server's close() ends this
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    notes = _Notes()
    log.addHandler(notes)
    log.propagate = False
    inserter = _Inserter(_receive(source))
    try:
        while True:
            try:
                batch = _receive(source)
            except EOFError:
                return
            done = inserter.write(batch)
            try:
                _send(answers, (done, notes.take()))
            except OSError:  # the server is gone: the rows are stored, nobody to tell
                return
    finally:
        inserter.close()


class _Inserter:
    """The writer process's side: binds rows and commits them in multi-row INSERTs."""

    def __init__(self, url: str):
        self.url = url
        self.db = None  # connected for the first batch, and again after a failure to connect

    def close(self) -> None:
        """Close the connection, if there is one."""
        if self.db is not None:
            self.db.close()

    def write(self, batch: list) -> int:
        """Store a batch in one transaction; how many of its rows are done (stored, or dropped
        as unstorable, with a log line): all of them unless the database became unusable.

        Statements of ROWS_PER_INSERT rows: a driver's executemany runs one statement per row.
        When the batch fails for any reason but an unusable database, its rows are tried one
        by one, so a row the database refuses is set aside instead of blocking every other.
        """
        if self.db is None:
            try:
                self._connect()
            except Error as exc:  # its message masks the URL's password
                log.warning("spend log write failed (%d rows kept): %s", len(batch), exc)
                return 0
        rows = [_bound_or_none(values) for values in batch]
        storable = [values for values in rows if values is not None]
        try:
            with self.db.atomic(), peewee.__exception_wrapper__:
                cursor = self.db.cursor()
                for start in range(0, len(storable), ROWS_PER_INSERT):
                    chunk = storable[start:start + ROWS_PER_INSERT]
                    cursor.execute(self.insert_head + ", ".join([self.row_marks] * len(chunk)),
                                   [value for values in chunk for value in values])
        except (peewee.OperationalError, peewee.InterfaceError) as exc:  # unreachable, locked, closed: retry
            _drop_connection(self.db)
            log.warning("spend log write failed (%d rows kept): %s", len(batch), _reason(exc, self.url))
            return 0
        except Exception:
            return self._write_each(rows)
        return len(batch)

    def _connect(self) -> None:
        """Open the database and make the insert statement's parts in its dialect."""
        self.db = connect(self.url)
        left, right = self.db.quote  # the driver's identifier quotes: "" or ``
        columns = ", ".join(f"{left}{name}{right}" for name in STORED_FIELDS)
        self.insert_head = f"INSERT INTO {left}{SpendLog._meta.table_name}{right} ({columns}) VALUES "
        self.row_marks = f"({', '.join([self.db.param] * len(STORED_FIELDS))})"

    def _write_each(self, rows: list) -> int:
        """Insert rows one at a time; a row refused for its content is dropped with a log line."""
        for i, values in enumerate(rows):
            if values is None:
                continue
            try:
                with self.db.atomic():
                    self.db.execute_sql(self.insert_head + self.row_marks, values)
            except (peewee.OperationalError, peewee.InterfaceError) as exc:
                _drop_connection(self.db)
                log.warning("spend log write failed (%d rows kept): %s", len(rows) - i,
                            _reason(exc, self.url))
                return i
            except Exception as exc:
                log.error("spend row dropped, the database refused it (%s): %r", _reason(exc, self.url),
                          {k: values[_COLUMN[k]] for k in ("model", "status", "token_hash")})
        return len(rows)


class _Notes(logging.Handler):
    """The writer process's log lines, kept to go back with the next answer."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record) -> None:
        self.lines.append((record.levelno, record.getMessage()))

    def take(self) -> list:
        lines, self.lines = self.lines, []
        return lines


# Rows per INSERT statement: its parameters stay within SQLite's oldest limit of 999.
ROWS_PER_INSERT = 999 // len(STORED_FIELDS)
# A spend row as the insert binds it: every column in STORED_FIELDS order, defaults filled in.
_COLUMN = {name: i for i, name in enumerate(STORED_FIELDS)}
_TIME, _TOKEN_HASH, _ACCOUNT = _COLUMN["time"], _COLUMN["token_hash"], _COLUMN["account"]
_COST, _STATUS, _REQUESTS = _COLUMN["cost_micro_usd"], _COLUMN["status"], _COLUMN["requests"]
_KIND = slice(0, len(KIND_FIELDS))  # what a row's requests share
_TIME_AND_SUMS = slice(_TIME, len(SPEND_FIELDS))
_INTEGERS = frozenset((int,))
_TIMES = frozenset((int, float))
_DEFAULTS = tuple((name, SpendLog._meta.fields[name].default) for name in SPEND_FIELDS)
_PIPED = frozenset((str, int, float, bool, type(None)))  # what `log` hands the writer process unchanged


# ---------------------------------------------------------------- helpers


def _add_requests_column(db) -> None:
    """Give a spend log from before requests shared rows its `requests` column: each old row is one."""
    table = SpendLog._meta.table_name
    if "requests" not in {column.name for column in db.get_columns(table)}:
        left, right = db.quote
        db.execute_sql(f"ALTER TABLE {left}{table}{right} ADD COLUMN {left}requests{right} INTEGER NOT NULL DEFAULT 1")


def _drop_connection(db) -> None:
    """Close a connection that failed, so the next call opens a new one (the server may be back)."""
    with contextlib.suppress(Exception):  # a dead connection may fail to close, too
        db.close()


def _reason(exc: Exception, url: str = "") -> str:
    """A driver's message on one line, with any URL's password masked."""
    text = " ".join((str(exc) or type(exc).__name__).split())  # psycopg2 spreads it over lines
    return mask_url(text.replace(url, mask_url(url)) if url else text)


def _bound(raw: tuple) -> tuple:
    """A spend row as the insert binds it, storable by every database: encodable strings of
    bounded length, ints in range, the time as naive UTC, defaults for the rest.

    The usual value is accepted by a type and range check, and only another one is converted.
    """
    values = list(raw)
    for i, default, size in _TEXT_COLUMNS:
        value = values[i]
        if value is None:
            values[i] = default
        elif value.__class__ is not str or not value.isascii() or "\x00" in value or len(value) > size:
            values[i] = _text(value, size)
    for i, default, limit in _INT_COLUMNS:
        value = values[i]
        if value is None:
            values[i] = default
        elif value.__class__ is not int or not -limit <= value <= limit:
            values[i] = max(-limit, min(limit, int(value)))
    values[_TIME] = _utc_naive(values[_TIME])
    return tuple(values)


def _bound_or_none(raw: tuple) -> tuple | None:
    """`_bound`, or None with a log line for a row that cannot be stored (a status of "abc")."""
    try:
        return _bound(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        log.error("spend row dropped, it cannot be stored (%s): %r", exc,
                  {k: raw[_COLUMN[k]] for k in ("model", "status", "token_hash")})
        return None


def _piped(value):
    """A row's value as the pipe to the writer process carries it (marshal's plain types).

    Never raises: the writer thread makes a request plain when it takes a row (a value
    it cannot convert becomes its type's name, which `_bound` then keeps or refuses)."""
    try:
        if isinstance(value, datetime):  # naive means UTC, as the tables store it
            return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return float(value)
        return None if value is None else str(value)
    except Exception:  # an object whose conversion fails: what it is, by its type
        return f"<{type(value).__name__}>"


class _WriterProcess:
    """A running `write_rows` process and its two pipes, told the database URL through its
    pipe, never in its arguments (a password would show in `ps`).

    Started with the interpreter's own posix_spawn rather than the subprocess module: it is
    called from the writer thread, and a monkey-patched process's subprocess and posix_spawn
    are gevent's, which watch the child from the event loop's thread.
    """

    def __init__(self, url: str):
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        search_path = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
        rows_in, rows_out = os.pipe()  # both ends close on exec but for the two dup2'ed below
        answers_in, answers_out = os.pipe()
        self.rows = os.fdopen(rows_out, "wb")
        self.answers = os.fdopen(answers_in, "rb")
        self.pid = None
        try:
            self.pid = native("os", "posix_spawn")(
                sys.executable, [sys.executable, "-c", "from bitrouter import store; store.write_rows()"],
                {**os.environ, "PYTHONPATH": search_path},
                file_actions=[(os.POSIX_SPAWN_DUP2, rows_in, 0), (os.POSIX_SPAWN_DUP2, answers_out, 1)])
            _send(self.rows, url)
        except OSError:
            self.close(kill=True)
            raise
        finally:
            os.close(rows_in)
            os.close(answers_out)

    def close(self, kill: bool = False) -> None:
        """Close its pipe and wait for it to exit (kill it first for a failed one)."""
        if kill and self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        for pipe in (self.rows, self.answers):
            with contextlib.suppress(OSError):
                pipe.close()
        if self.pid:
            with contextlib.suppress(ChildProcessError):  # gevent's SIGCHLD handler may have reaped it
                native("os", "waitpid")(self.pid, 0)


def _send(pipe, message) -> None:
    """One message on a pipe: its length, then its marshal bytes."""
    data = marshal.dumps(message)
    pipe.write(len(data).to_bytes(4, "big"))
    pipe.write(data)
    pipe.flush()


def _receive(pipe):
    """The next message on a pipe; EOFError once it has closed."""
    head = pipe.read(4)
    size = int.from_bytes(head, "big") if len(head) == 4 else -1
    data = pipe.read(size) if size >= 0 else b""
    if size < 0 or len(data) < size:
        raise EOFError("the writer pipe closed")
    return marshal.loads(data)


def _text(value, size: int) -> str:
    """Any value as a string the database can store: UTF-8 encodable, no NUL, at most size characters."""
    value = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\x00", "\\x00")[:size]


def _private_sqlite(url: str) -> None:
    """Create a SQLite file 0600 before SQLite does (its -wal and -shm files copy that mode)."""
    path = url.split(":///", 1)[-1].split("?", 1)[0]  # sqlite:///relative.db, sqlite:////absolute.db
    if path and path != ":memory:" and not path.startswith("file:") and os.path.isdir(os.path.dirname(path) or "."):
        try:
            private_file(path)
        except OSError:
            pass  # SQLite reports what is wrong with the path, in its own words


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _summed_rows(waiting: dict) -> list:
    """Waiting rows as they are stored: a kind, its requests' latest time and sums, and how
    many they were. A request with a sum that is no integer (which `_bound` may refuse) gets a
    row of its own, so a value the database refuses never takes others with it."""
    rows = []
    for (kind, _second), times_and_sums in waiting.items():
        when, *columns = zip(*times_and_sums)
        try:
            sums = list(map(sum, columns))
        except Exception:  # a string or None among them (or an object whose addition fails)
            sums = None
        if sums is not None and _INTEGERS.issuperset(map(type, sums)):
            rows.append([*kind, max(when), *sums, len(times_and_sums)])
            continue
        summable = []
        for request in times_and_sums:
            if _INTEGERS.issuperset(map(type, request[1:])):
                summable.append(request)
            else:
                rows.append([*_plain((*kind, *request)), 1])
        if summable:
            rows += _summed_rows({(kind, None): summable})
    return rows


def _row_key(values: tuple):
    """Which waiting row a request joins: its kind and the second of its time (None without a
    finite Unix time)."""
    when = values[_TIME]
    if when.__class__ in _TIMES and math.isfinite(when):
        return values[_KIND], int(when)  # a row spans a second at most
    return None


def _plain(values: tuple) -> tuple:
    """A request's values as the pipe to the writer process carries them (marshal's plain
    types), its time now when it has none."""
    if not _PIPED.issuperset(map(type, values)):
        values = tuple(map(_piped, values))
    if values[_TIME] is None:
        values = (*values[:_TIME], time.time(), *values[_TIME + 1:])
    return values


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _utc_naive(value) -> datetime:
    """A Unix time (or a datetime) as the naive UTC datetime the tables store."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    # the same microsecond as fromtimestamp(value, timezone.utc), in half the time (per row, in the writer)
    return _EPOCH + timedelta(seconds=float(value))


_EPOCH = datetime(1970, 1, 1)


# (column index, default, size or limit) of the text and integer columns, for `_bound`.
_TEXT_COLUMNS = tuple((i, SpendLog._meta.fields[name].default, SpendLog._meta.fields[name].max_length)
                      for i, name in enumerate(STORED_FIELDS) if isinstance(SpendLog._meta.fields[name], peewee.CharField))
_INT_COLUMNS = tuple((i, SpendLog._meta.fields[name].default,
                      2 ** 63 - 1 if isinstance(SpendLog._meta.fields[name], peewee.BigIntegerField) else 2 ** 31 - 1)
                     for i, name in enumerate(STORED_FIELDS) if isinstance(SpendLog._meta.fields[name], peewee.IntegerField))
