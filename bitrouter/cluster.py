"""Agreement between BitRouter instances on one database: revocations and dynamic routes.

Several instances (processes, `serve --workers N`, or hosts) share one database. Budgets
and `bitrouter usage` need nothing more: every instance writes its spend to the same
table and checks totals there. Revocations and dynamic routes live in the database too,
and each instance polls a cheap signature of them (`Store.shared_stamp`, one small query)
every POLL_SECONDS; when it changes, the instance re-reads them. A revocation made through
any instance is therefore refused by all of them within POLL_SECONDS plus one query.
Cooldowns and provider health stay per instance: each one learns them from its own calls.
"""

import logging
import time

from bitrouter import Error
from bitrouter.router import dynamic_route

log = logging.getLogger("bitrouter")

POLL_SECONDS = 0.25


class Sync:
    """Keeps one server's revocations and dynamic routes equal to the database's."""

    def __init__(self, srv):
        self.srv = srv
        self.stamp = None
        self._runtime = None
        self.failing = False
        self._greenlet = None
        self.poll()  # routes stored before this instance started are served from its first request

    def start(self, stack) -> None:
        """Poll in the background until `stack` closes."""
        import gevent
        self._greenlet = gevent.spawn(self._run)
        stack.callback(self._greenlet.kill)

    def poll(self) -> bool:
        """Re-read revocations and routes if the database's copy changed; False if it is unreachable."""
        runtime = self.srv.runtime  # a reload may add (or remove) a stored route's provider
        try:
            db = self.srv.store
            stamp = db.shared_stamp()
            changed = stamp != self.stamp or runtime is not self._runtime
            if changed:
                revoked, specs = db.revoked_hashes(), db.routes()
        except Error as exc:
            if not self.failing:
                log.error("cannot read revocations and routes from the database (%s); serving with "
                          "the ones read last until it answers again", exc)
            self.failing = True
            return False
        if self.failing:
            log.info("the database answers again; revocations and routes are shared once more")
            self.failing = False
        if changed:
            self.srv.gate.adopt_revocations(revoked)
            self._adopt_routes(specs, runtime)
            self.stamp, self._runtime = stamp, runtime
        return True

    def _run(self) -> None:
        import gevent
        while True:
            gevent.sleep(POLL_SECONDS)
            started = time.monotonic()
            self.poll()
            if time.monotonic() - started > POLL_SECONDS:
                log.warning("polling the database for revocations took %.2fs",
                            time.monotonic() - started)

    def _adopt_routes(self, specs: dict, rt) -> None:
        """Replace the server's dynamic routes with the stored ones (in place: routers hold the dict)."""
        routes = {}
        for name, spec in specs.items():
            try:
                routes[name] = dynamic_route(spec, rt.providers, rt.cfg.routing)
            except ValueError as exc:  # e.g. its provider is not configured on this instance
                log.warning("dynamic route %r from the database is not served here: %s", name, exc)
        self.srv.dynamic.clear()
        self.srv.dynamic.update(routes)
