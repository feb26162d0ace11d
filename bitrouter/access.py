"""Access control for the server: trust, auth modes, token checks, model allowlists, budgets.

One Gate lives as long as the server. It verifies tokens once and caches the result by the
token's hash; any change to `<home>/.keys` (a new account, a revocation stamp) or a reloaded
configuration clears that cache before the next request is checked. Finished requests go
to the spend log through `Gate.record` (the Server lists it among the metrics' deferred
listeners, and has a budget check fold them in first through `settle`).
"""

import logging
import os
import time
from dataclasses import replace

from bitrouter import Error, accounts, config, hints, store, tokens
from bitrouter.tokens import AuthError

log = logging.getLogger("bitrouter")

CACHE_LIMIT = 10_000  # verified tokens kept; the cache starts afresh when full
# A change within this many seconds of the last one may share its mtime (coarse file
# system clocks), so `.keys` is re-read on every request until it has been quiet this long.
RACY_SECONDS = 2.0
_UNSEEN = object()
TOKEN_HINT = "send it as Authorization: Bearer <token>, x-api-key, x-goog-api-key or ?key="


def credential(headers, query) -> str | None:
    """The presented token: Authorization Bearer, then x-api-key, x-goog-api-key, then ?key=."""
    for part in (headers.get("authorization") or "").split(","):
        part = part.strip()
        if part[:7].lower() == "bearer ":
            return part[7:].strip() or None
    for name in ("x-api-key", "x-goog-api-key"):
        value = (headers.get(name) or "").strip()
        if value:
            return value
    return (query.get("key") or "").strip() or None


def configured_issuers(cfg) -> set[str]:
    """`auth.trusted_issuers` entries that are Solana CAIP-10 ids or base58 Ed25519 keys."""
    found = set()
    for entry in map(str, cfg.auth["trusted_issuers"]):
        address = entry.rsplit(":", 1)[-1]
        if accounts.is_public_key(address) and (
                entry == address or (entry.startswith("solana:") and entry.count(":") == 2)):
            found.add(entry)
        else:
            log.warning("auth.trusted_issuers: ignoring %r (not a Solana CAIP-10 id or base58 key)", entry)
    return found


class Gate:
    """Decides who may use the server, which models, and whether their budget allows it."""

    def __init__(self, home, cfg, db, settle=lambda: None):
        self.home = home
        self.store = db  # a store.Store, open on cfg.database_url; its owner closes it
        self.settle = settle  # hands every finished request not yet recorded to `record`
        self._keys_path = os.fspath(home.keys_dir)  # stat()ed per request: resolved once
        self._cache: dict = {}
        self._apply(cfg)
        self._load_keys(self._keys_signature(), revocations=False)  # the database is not open yet
        host, port = cfg.host_port
        if self.mode == "auto" and not self.trusted and not self.loopback:
            raise Error(f"refusing to serve without authentication on {host}:{port}: no issuer is "
                        f"trusted. Create an account (`{hints.command('account', '-g')}`) and use "
                        f"`{hints.command('keygen')}` tokens, list auth.trusted_issuers, or set auth.mode: open")
        self.revoked = db.revoked_hashes()
        self.writer = store.SpendWriter(cfg.database_url)
        self.holds = Holds()

    def announce(self) -> None:
        """Say how the server authenticates (once logging is set up)."""
        host, port = self.cfg.host_port
        if not self.required:
            reason = "auth.mode open" if self.mode == "open" else "no trusted issuers yet; loopback only"
            log.warning("authentication is off (%s): anyone who can reach %s:%s may use the "
                        "configured providers", reason, host, port)
        elif not self.trusted:
            log.warning("auth.mode is on but no issuer is trusted: every request will be refused")
        else:
            log.info("authentication is on: %d trusted issuer(s)", len(self.trusted))

    def authenticate(self, cfg, token, scope: str):
        """The token's Claims (None when the server runs open); AuthError 401/403 otherwise."""
        self._refresh(cfg)
        if not self.required:
            return None
        if not token:
            raise AuthError(401, f"missing token: {TOKEN_HINT}")
        digest = tokens.token_hash(token)
        claims = self._cache.get(digest)
        now = time.time()
        if claims is None or (claims.exp is not None and now >= claims.exp + self.leeway):
            claims = tokens.verify(token, self.trusted, now=now, leeway=self.leeway,
                                   revoked=self.revoked)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = claims
        if scope == "admin" and claims.scope != "admin":
            raise AuthError(403, "this route needs an admin token (keygen --scope admin)")
        return claims

    def authorize(self, claims, route, record=None):
        """The route narrowed to the endpoints the token's models allow; 403 if none, 402 over budget.

        With the request's `record`, a budgeted token's request also holds one round and an
        estimated cost until that record finishes (see `Holds`).
        """
        if claims is None:
            return route
        if claims.models and not tokens.model_allowed(claims.models, route.name):
            allowed = [e for e in route.endpoints if tokens.model_allowed(claims.models, e.label)]
            if not allowed:
                raise AuthError(403, f"model {route.name!r} is not allowed for this token "
                                     f"(allowed: {', '.join(claims.models)})")
            route = replace(route, endpoints=allowed)
        key = self._check_budget(claims)
        if key is not None and record is not None:
            self.holds.take(record.id, key)
        return route

    def record(self, rec) -> None:
        """Deferred metrics listener: queue a finished request for the spend log, release its hold.

        Requests refused before they passed authentication are left out: there is no one
        to bill, and a flood of bad credentials or bad requests must not fill the database.
        """
        if rec.refused or (rec.status == 401 and not rec.account):
            return
        usage = rec.usage
        row = (rec.account or None, rec.token_hash or None, rec.model, rec.upstream or None,  # store.SPEND_FIELDS
               rec.protocol, rec.status, rec.started, int(rec.latency_ms), usage.input, usage.output,
               usage.cache_read, usage.cache_write, usage.reasoning, rec.cost_micro_usd)
        try:
            self.writer.log_values(row)  # queued (and counted as pending) before the hold is released
        except RuntimeError:  # finished after shutdown began (drain timeout passed)
            log.warning("spend row for request %s dropped: the spend writer is closed", rec.id)
        finally:
            self.holds.release(rec.id, rec.cost_micro_usd if rec.status < 400 else None)

    def adopt_revocations(self, hashes: set) -> None:
        """Use the database's current revocations (read by `cluster.Sync`); clears the cache."""
        if hashes != self.revoked:
            self.revoked = hashes
            self._cache.clear()

    def close(self) -> None:
        """Write every queued spend row."""
        self.writer.close()

    # ------------------------------------------------------------ helpers

    def _apply(self, cfg) -> None:
        """Adopt a (re)loaded configuration: mode, clock skew, trusted issuers."""
        self.cfg = cfg
        self.mode = cfg.auth["mode"]
        self.leeway = cfg.auth["clock_skew"]
        self.loopback = config.is_loopback(cfg.host_port[0])
        self.configured = configured_issuers(cfg)
        self._keys_seen = _UNSEEN  # so the next check re-reads accounts and revocations

    def _refresh(self, cfg) -> None:
        """Pick up a reload, a new or removed account, or a revocation, before checking."""
        if cfg is not self.cfg:
            self._apply(cfg)
        seen = self._keys_signature()
        if seen != self._keys_seen or (seen and time.time() - seen[0] / 1e9 < RACY_SECONDS):
            self._load_keys(seen)

    def _load_keys(self, seen, revocations=True) -> None:
        """Re-read local accounts (and revocations); clear the verification cache."""
        self.trusted = accounts.trusted_issuers(self.home) | self.configured
        if revocations:
            try:
                self.revoked = self.store.revoked_hashes()
            except Error as exc:
                # A revocation is written to the database before anything announces it, so
                # while the database is down the set read last is still complete.
                log.error("cannot read revocations (%s); using the ones read last", exc)
        # Open only where nobody else can connect: with no trusted issuer on a public
        # address (reachable after a reload removed them), every request is refused.
        self.required = self.mode == "on" or (self.mode == "auto" and (bool(self.trusted) or not self.loopback))
        self._cache.clear()
        self._keys_seen = seen

    def _keys_signature(self):
        """(mtime_ns, inode) of `.keys`; renames inside it (accounts, revocation stamps) change it."""
        try:
            st = os.stat(self._keys_path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def _check_budget(self, claims):
        """The budget key of a budgeted token (None if unbudgeted); 402 once it is used up.

        Counted: committed spend, rows queued but not yet written, and the holds of requests
        still in flight on this instance.
        """
        limit = claims.budget_range or {}
        if claims.budget is None and limit.get("type") != "rounds":
            return None
        key = ("account", claims.iss) if claims.budget_scope == "account" else ("token", claims.token_hash)
        where = {"account": claims.iss} if key[0] == "account" else {"token_hash": claims.token_hash}
        since = time.time() - limit["seconds"] if limit.get("type") == "duration" else None
        self.settle()  # a request that finished before this one must count with its cost
        try:
            spent, rounds = self.store.totals(since=since, **where)
        except Error as exc:
            log.error("cannot read spend totals: %s", exc)
            raise AuthError(503, "cannot check the budget: the database is unavailable") from None
        queued, queued_rounds = self.writer.pending(**where)
        held, held_rounds = self.holds.held(key)
        spent, rounds = spent + queued + held, rounds + queued_rounds + held_rounds
        whose = key[0]
        if limit.get("type") == "rounds" and rounds >= limit["count"]:
            raise AuthError(402, f"budget exhausted: this {whose} has used all {limit['count']} rounds")
        if claims.budget is not None and spent >= claims.budget:
            window = f" in the last {limit['seconds']} s" if since is not None else ""
            raise AuthError(402, f"budget exhausted: this {whose} spent {spent} of {claims.budget} "
                                 f"micro-USD{window}")
        return key


class Holds:
    """Rounds and estimated costs held by the budgeted requests in flight on this instance.

    A request takes its hold when it is authorized and releases it when its record
    finishes, right after its spend row was queued, so a round is never uncounted. The
    estimate is a moving average of the key's successful requests here (0 until one
    settled), so within one instance a `rounds:N` budget is never overrun and a cost
    budget is overrun by at most the in-flight requests' cost beyond their estimates.
    """

    def __init__(self):
        self._held: dict = {}  # budget key -> [micro-USD, rounds]
        self._taken: dict = {}  # record id -> (budget key, estimate)
        self._means: dict = {}  # budget key -> moving average cost of its successes (micro-USD)

    def held(self, key) -> tuple[int, int]:
        """(micro-USD, rounds) held for a budget key."""
        cost, rounds = self._held.get(key, (0, 0))
        return cost, rounds

    def take(self, record_id: int, key) -> None:
        """Hold one round and the estimated cost for a request."""
        estimate = int(self._means.get(key, 0))
        total = self._held.setdefault(key, [0, 0])
        total[0] += estimate
        total[1] += 1
        self._taken[record_id] = (key, estimate)

    def release(self, record_id: int, cost) -> None:
        """Release a finished request's hold, if it took one.

        `cost` is what a successful request cost (None for a failure); it moves the
        estimate for the key's next requests.
        """
        taken = self._taken.pop(record_id, None)
        if taken is None:
            return
        key, estimate = taken
        total = self._held[key]
        total[0] -= estimate
        total[1] -= 1
        if not total[1]:
            del self._held[key]
        if cost is not None:
            if len(self._means) >= CACHE_LIMIT and key not in self._means:
                self._means.clear()
            mean = self._means.get(key)
            self._means[key] = cost if mean is None else 0.8 * mean + 0.2 * cost
