"""The `bitrouter` command line: a thin python-fire front over the feature modules.

Every command is a method of BitRouter. Parameters before `*` are positional, the rest are
`--options`; a one-letter parameter is the short form of the long flag with its initial.
Help is rendered from the signature and the docstring (see `helptext.py`), and arguments
are checked against the signature before fire runs anything, so a usage error is one line.
"""

import os
import sys

import bitrouter
from bitrouter import helptext, hints
from bitrouter.home import create_if_missing, given_options, require_existing, resolve

GLOBAL_FLAGS = ("--home-dir", "--config-file", "--env-file", "--run-dir", "--logs-dir", "--db")


class BitRouter:
    """BitRouter: a local LLM router for agent runtimes.

    Run `bitrouter` with no command to start the server with the live dashboard
    (`bitrouter --listen HOST:PORT` picks the address).
    """

    def __init__(self, agent_args=(), **paths):
        self._paths = paths
        self._agent_args = list(agent_args)

    def _home(self):
        home = resolve(**self._paths)
        return require_existing(home) if self._paths.get("home_dir") else create_if_missing(home)

    def status(self, *, json=False):
        """Show the daemon, paths, auth state and each provider; exit 1 when something is wrong.

        Args:
          json: print the same report as one JSON object.
        """
        from bitrouter import daemon
        if not daemon.status_command(self._home(), as_json=json):
            sys.exit(1)

    def serve(self, *, listen=None, workers=None):
        """Run the API server in the foreground (Ctrl-C stops it, draining requests).

        Args:
          listen (HOST:PORT): listen here instead of server.listen (also $BITROUTER_LISTEN).
          workers (N): server processes sharing the port (default: server.workers, 1).
        """
        from bitrouter import server
        _use_listen(listen)
        server.serve(self._home(), worker_count=workers)

    def start(self, *, listen=None, timeout=None):
        """Start the server as a background daemon and wait until it is healthy.

        Args:
          listen (HOST:PORT): listen here instead of server.listen (also $BITROUTER_LISTEN).
          timeout (SECONDS): how long to wait for GET /health to answer (default 20).
        """
        from bitrouter import daemon
        _use_listen(listen)
        daemon.start(self._home(), timeout)

    def stop(self, *, timeout=None):
        """Stop the daemon, letting in-flight requests finish first.

        Args:
          timeout (SECONDS): how long to wait before SIGKILL (default: server.drain_timeout + 10).
        """
        from bitrouter import daemon
        daemon.stop(self._home(), timeout)

    def restart(self, *, listen=None, timeout=None):
        """Stop the daemon if it runs, then start it again.

        Args:
          listen (HOST:PORT): listen here instead of server.listen (also $BITROUTER_LISTEN).
          timeout (SECONDS): how long each for the stop and the start (defaults as for those).
        """
        from bitrouter import daemon
        _use_listen(listen)
        daemon.restart(self._home(), timeout)

    def reload(self):
        """Reload the configuration of the running server without dropping requests."""
        from bitrouter import daemon
        daemon.reload(self._home())

    def init(self, *, provider=None, api_key_env=None, default=None, listen=None, answers=None,
             yes=False, verify=False):
        """Set up providers and keys: interactive on a terminal, or scripted with options.

        A running server of this home is reloaded afterwards, so it serves the new setup.

        Args:
          provider (NAME[,NAME]): built-in providers to configure (the non-interactive form).
          api_key_env (VAR): the environment variable that holds the key (one provider only).
          default (PROVIDER:MODEL[,...]): the chain of the `default` alias.
          listen (HOST:PORT): the listen address to write, e.g. 127.0.0.1:8787.
          answers (FILE): a YAML or JSON file with the same answers, for scripts (docs/wizard.md).
          yes: do not ask for confirmation.
          verify: check each key against the provider's model list first; a failure writes nothing.
        """
        from bitrouter import wizard
        if not wizard.init(self._home(), provider=provider, api_key_env=api_key_env,
                           default=default, listen=listen, answers=answers, yes=yes, verify=verify):
            sys.exit(1)  # cancelled: nothing was written

    def account(self, *, generate_key=False, list=False, set=None):
        """Manage the local signing accounts that issue BitRouter tokens.

        Args:
          generate_key: create a new account and make it the active one.
          list: list the accounts (the default).
          set (INDEX|PREFIX): make another account the active one.
        """
        from bitrouter import accounts, daemon
        accounts.command(self._home(), generate_key=generate_key, listing=list, select=set,
                         on_first_account=daemon.warn_open_server)

    def keygen(self, *, exp=None, models=None, name=None, scope="api", budget=None,
               budget_scope=None, budget_range=None, chain="solana"):
        """Mint a BitRouter token with the active account, record it and print it.

        Args:
          exp (DURATION): lifetime: 30s, 5m, 1h, 30d, 1y or never (default never; admin tokens need one).
          models (GLOB[,GLOB]): the model names the token may use (default: all).
          name (NAME): the token's name in `bitrouter keys` (default: token-N).
          scope (api|admin): api (default) or admin.
          budget (MICRO_USD): spend limit in micro-USD (1 USD = 1000000).
          budget_scope (session|account): what the budget counts: this token or the whole account.
          budget_range (rounds:N|duration:Ns): the window the budget applies to.
          chain (solana): the signing chain; only solana is supported.
        """
        from bitrouter import tokens
        tokens.keygen_command(self._home(), exp=exp, models=models, name=name, scope=scope,
                              budget=budget, budget_scope=budget_scope,
                              budget_range=budget_range, chain=chain)

    def keys(self, *, list=False, show=None, rm=None):
        """List, show or revoke the tokens the active account issued.

        Args:
          list: list the tokens with their expiry (the default).
          show (TOKEN): print one token and its claims; by name, index, name prefix or the token itself.
          rm (TOKEN): revoke one token and forget it; chosen as for --show.
        """
        from bitrouter import tokens
        tokens.keys_command(self._home(), listing=list, show=show, rm=rm)

    def usage(self, *, since="30d", by="token"):
        """Spend per token and model over a period.

        Args:
          since (PERIOD): how far back: 30s, 5m, 1h, 7d, 1y or all (default 30d).
          by (token|model|account): how to group the rows (default token).
        """
        from bitrouter import tokens
        tokens.usage_command(self._home(), since=since, by=by)

    def logs(self, *, follow=False, lines=40):
        """Print the end of the server log; -f keeps following it.

        Args:
          follow: keep printing new lines as the server writes them (Ctrl-C ends).
          lines (N): how many lines to print first (default 40).
        """
        from bitrouter import daemon
        daemon.logs(self._home(), follow=follow, lines=lines)

    def providers(self, *, json=False):
        """List the built-in providers: protocol, key variable, model count, and whether you set the key.

        Args:
          json: print the list as JSON.
        """
        from bitrouter import catalog
        catalog.providers_command(self._home(), as_json=json)

    def models(self, provider=None, *, json=False):
        """List the models a provider offers with context sizes and prices (all configured ones by default).

        Args:
          provider (PROVIDER): one provider, configured or not.
          json: print the list as JSON.
        """
        from bitrouter import catalog
        catalog.models_command(self._home(), provider, as_json=json)

    def doctor(self, *, offline=False):
        """Check the setup: config, each provider's key (a cheap model-list call), port, daemon, token.

        Args:
          offline: skip the calls to the providers.
        """
        from bitrouter import doctor
        if not doctor.run(self._home(), offline=offline):
            sys.exit(1)

    def route(self, action="list", name=None, *endpoints, strategy="priority"):
        """List, add or remove dynamic routes on the running server (gone after a restart).

        Usage:
          bitrouter route list
          bitrouter route add NAME PROVIDER:MODEL [PROVIDER:MODEL...] [--strategy priority|load_balance]
          bitrouter route rm NAME

        Args:
          strategy (priority|load_balance): how the new route uses its endpoints (default priority).
        """
        from bitrouter import daemon
        daemon.route_command(self._home(), action, name, endpoints, strategy=strategy)

    def launch(self, agent, *, model=None, small_model=None):
        """Run an agent CLI (claude, codex or gemini) wired to BitRouter.

        Starts the daemon when no server runs, gives the agent a token when the server
        requires one, and passes everything after `--` to the agent.

        Usage:
          bitrouter launch claude|codex|gemini [options] [-- AGENT ARGS...]

        Args:
          model (MODEL): the model name the agent asks for (default: the `default` alias, else the first alias).
          small_model (MODEL): Claude Code's model for quick side tasks (default: an alias named small, fast or haiku).
        """
        from bitrouter import launch
        launch.launch(self._home(), agent, self._agent_args, model=model, small_model=small_model)

    def tui(self, *, url=None):
        """Attach the live dashboard to a running server (this home's, or --url).

        Args:
          url (URL): the server's base URL, e.g. http://127.0.0.1:8787.
        """
        from bitrouter import tui
        tui.attach(self._home(), url=url)


def main(argv=None) -> None:
    """Entry point: run one command; user errors print `error: ...` (exit 1, usage errors 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        paths, rest = split_global_flags(argv)
        hints.remember_invocation(sys.argv[0], given_options(paths))
        if rest in (["--version"], ["-V"]):
            print(f"bitrouter {bitrouter.__version__}")
            return
        agent_args = []
        if rest[:1] == ["launch"] and "--" in rest:  # the agent's own arguments, not BitRouter's
            cut = rest.index("--")
            rest, agent_args = rest[:cut], rest[cut + 1:]
        if helptext.wants_help(rest):
            print(helptext.render(BitRouter, rest), end="")
            return
        if rest and rest[0].startswith("--listen"):  # `bitrouter --listen HOST:PORT`: the dashboard
            _use_listen(helptext.parse(BitRouter, ["serve", *rest])["listen"])
            rest = []
        if rest:
            helptext.parse(BitRouter, rest)  # a usage error (exit 2) before anything runs
    except helptext.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except bitrouter.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if rest[:1] in ([], ["serve"]):
        # The server runs on gevent; it must patch sockets and ssl before fire (asyncio)
        # and urllib3 import them, or HTTPS upstreams would block the event loop.
        from gevent import monkey
        monkey.patch_all()
    import fire
    commands = BitRouter(agent_args, **paths)
    try:
        if not rest:
            run_default(commands._home())
        else:
            fire.Fire(commands, command=helptext.normalized(BitRouter, rest), name="bitrouter")
    except bitrouter.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # an unwritable home, an unreadable file: the user can fix these
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}",
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def run_default(home) -> None:
    """`bitrouter`: first-run setup if needed, then the server and the dashboard in one process."""
    from bitrouter import server, tui, wizard
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("bitrouter: no terminal for the dashboard; serving without it", file=sys.stderr)
        server.serve(home)
        return
    if wizard.needs_setup(home):
        wizard.init(home)  # a cancelled setup leads to the dashboard's empty state
    try:
        running = server.start(home, mode="dashboard")
    except bitrouter.Error:
        url = tui.server_url(home)
        remote = tui.Remote.find(home, url)
        if remote is None:
            raise
        tui.dashboard(remote, note=f"{url} is taken by a running BitRouter: showing its dashboard "
                                   "(q leaves that server running)")
        return
    try:
        tui.dashboard(tui.Local(running.srv))
    finally:
        busy = running.busy
        if busy:
            print(f"bitrouter: letting {busy} running request(s) finish (Ctrl-C to stop now)", flush=True)
        running.stop()


def split_global_flags(argv: list) -> tuple[dict, list]:
    """Pull the global path options out of argv wherever they appear."""
    paths, rest, i = {}, [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        key = name.lstrip("-").replace("-", "_")
        if name.startswith("--") and "--" + key.replace("_", "-") in GLOBAL_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise helptext.UsageError(f"{name} needs a value")
                i += 1
                value = argv[i]
            paths[key] = value
        else:
            rest.append(argv[i])
        i += 1
    return paths, rest


def _use_listen(listen) -> None:
    """`--listen HOST:PORT` wins over the config for this process and the daemon it spawns."""
    if listen is None:
        return
    from bitrouter import config
    try:
        config.split_listen(str(listen))
    except ValueError as exc:
        raise bitrouter.Error(f"--listen: {exc}") from None
    os.environ[config.LISTEN_ENV] = str(listen)
