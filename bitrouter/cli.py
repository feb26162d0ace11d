"""The `bitrouter` command line: a thin python-fire front over the feature modules."""

import functools
import sys

import bitrouter
from bitrouter import home as home_mod

GLOBAL_FLAGS = ("--home-dir", "--config-file", "--env-file", "--run-dir", "--logs-dir", "--db")


class BitRouter:
    """BitRouter: a local LLM router for agent runtimes.

    Run `bitrouter` with no command to start the server with the live dashboard.
    Global options, before or after the command: --home-dir, --config-file, --env-file,
    --run-dir, --logs-dir, --db.
    """

    def __init__(self, agent_args=(), **paths):
        self._paths = paths
        self._agent_args = list(agent_args)

    def _home(self):
        return home_mod.resolve(**self._paths)

    def status(self):
        """Show resolved paths, configured providers and aliases, and the daemon state."""
        from bitrouter import daemon
        print(daemon.status_text(self._home()))

    def serve(self, workers=None):
        """Run the API server in the foreground (Ctrl-C stops it, draining requests).

        Args:
          workers: server processes sharing the port (default: server.workers, 1).
        """
        from bitrouter import server
        server.serve(self._home(), worker_count=workers)

    def start(self, timeout=None):
        """Start the server as a background daemon and wait until it is healthy.

        Args:
          timeout: seconds to wait for GET /health to answer (default 20).
        """
        from bitrouter import daemon
        daemon.start(self._home(), timeout)

    def stop(self, timeout=None):
        """Stop the daemon, letting in-flight requests finish first.

        Args:
          timeout: seconds to wait before SIGKILL (default: server.drain_timeout + 10).
        """
        from bitrouter import daemon
        daemon.stop(self._home(), timeout)

    def restart(self, timeout=None):
        """Stop the daemon if it runs, then start it again.

        Args:
          timeout: seconds each for the stop and the start (defaults as for stop and start).
        """
        from bitrouter import daemon
        daemon.restart(self._home(), timeout)

    def reload(self):
        """Reload the configuration of the running server without dropping requests."""
        from bitrouter import daemon
        daemon.reload(self._home())

    def init(self, provider=None, api_key_env=None, default=None, listen=None, answers=None,
             yes=False, verify=False):
        """Set up providers and keys: interactive on a terminal, or scripted with flags.

        Args:
          provider: comma-separated built-in providers to configure (non-interactive form).
          api_key_env: the environment variable that holds the key (one provider only).
          default: comma-separated provider:model_id chain for the `default` alias.
          listen: the listen address, e.g. 127.0.0.1:8787.
          answers: a YAML/JSON file with the same answers, for scripts (docs/wizard.md).
          yes: do not ask for confirmation.
          verify: check each key against the provider's model list first; a failure writes nothing.
        """
        from bitrouter import wizard
        if not wizard.init(self._home(), provider=provider, api_key_env=api_key_env,
                           default=default, listen=listen, answers=answers, yes=yes, verify=verify):
            sys.exit(1)  # cancelled: nothing was written

    def account(self, generate_key=False, list=False, set=None, g=False, l=False):
        """Manage local signing accounts: -g/--generate-key, -l/--list (default), --set INDEX|PREFIX."""
        from bitrouter import accounts
        accounts.command(self._home(), generate_key=generate_key or g, listing=list or l, select=set)

    def keygen(self, exp=None, models=None, name=None, scope="api", budget=None,
               budget_scope=None, budget_range=None, chain="solana"):
        """Mint a BitRouter token with the active account and print it.

        Args:
          exp: lifetime such as 30s, 5m, 1h, 30d, 1y, or `never` (admin tokens require one).
          models: comma-separated model globs the token may use (default: all).
          name: save the token under this name (see `bitrouter keys`).
          scope: `api` (default) or `admin`.
          budget: spend limit in micro-USD (1 USD = 1000000).
          budget_scope: `session` or `account`.
          budget_range: `rounds:N` or `duration:Ns`.
          chain: signing chain; only `solana` is supported.
        """
        from bitrouter import tokens
        tokens.keygen_command(self._home(), exp=exp, models=models, name=name, scope=scope,
                              budget=budget, budget_scope=budget_scope,
                              budget_range=budget_range, chain=chain)

    def keys(self, list=False, show=None, rm=None, l=False):
        """Saved tokens: --list (default), --show NAME|INDEX, --rm NAME|INDEX (also revokes)."""
        from bitrouter import tokens
        tokens.keys_command(self._home(), listing=list or l, show=show, rm=rm)

    def usage(self, since="30d", by="token"):
        """Spend per token and model over a period (e.g. --since 7d)."""
        from bitrouter import tokens
        tokens.usage_command(self._home(), since=since, by=by)

    def launch(self, agent, model=None, small_model=None):
        """Run an agent CLI wired to BitRouter: bitrouter launch claude|codex|gemini [-- ARGS...].

        Starts the daemon when no server runs, gives the agent a token when the server
        requires one, and passes everything after `--` to the agent.

        Args:
          agent: claude, codex or gemini.
          model: the model name the agent asks for (default: the `default` alias, else the first alias).
          small_model: Claude Code's model for quick side tasks (default: an alias named small, fast or haiku).
        """
        from bitrouter import launch
        launch.launch(self._home(), agent, self._agent_args, model=model, small_model=small_model)

    def tui(self, url=None):
        """Attach the live dashboard to a running server (this home's, or --url)."""
        from bitrouter import tui
        tui.attach(self._home(), url=url)


def main(argv=None) -> None:
    """Entry point: run one command, print user errors as `error: ...` (exit 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        paths, rest = split_global_flags(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if rest in (["--version"], ["-V"]):
        print(f"bitrouter {bitrouter.__version__}")
        return
    agent_args = []
    if rest[:1] == ["launch"] and "--" in rest:  # the agent's own arguments, not fire's flags
        cut = rest.index("--")
        rest, agent_args = rest[:cut], rest[cut + 1:]
    if _wants_help(rest):
        _show_help(rest)
    if rest[:1] in ([], ["serve"]):
        # The server runs on gevent; it must patch sockets and ssl before fire (asyncio)
        # and urllib3 import them, or HTTPS upstreams would block the event loop.
        from gevent import monkey
        monkey.patch_all()
    import fire
    commands = BitRouter(agent_args, **paths)
    try:
        if not rest:
            from bitrouter import tui
            tui.run_default(commands._home())
        else:
            _check_usage(rest)
            fire.Fire(commands, command=rest, name="bitrouter")
    except bitrouter.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # an unwritable home, an unreadable file: the user can fix these
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}",
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def split_global_flags(argv: list) -> tuple[dict, list]:
    """Pull the global path options out of argv wherever they appear."""
    paths, rest, i = {}, [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        key = name.lstrip("-").replace("-", "_")
        if name.startswith("--") and "--" + key.replace("_", "-") in GLOBAL_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                i += 1
                value = argv[i]
            paths[key] = value
        else:
            rest.append(argv[i])
        i += 1
    return paths, rest


def _wants_help(argv: list) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _show_help(rest: list) -> None:
    """Print the help of the command in rest on stdout, never through a pager, and exit."""
    import contextlib
    import io

    import fire
    # `cmd -- --help` is fire's own form: it shows help without calling cmd or saying "INFO: ...".
    command = [a for a in rest[:1] if not a.startswith("-")] + ["--", "--help"]
    text, code = io.StringIO(), 0
    try:
        # fire pages only when stdout is a terminal: a StringIO never is.
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            fire.Fire(BitRouter(), command=command, name="bitrouter")
    except SystemExit as exc:
        code = exc.code or 0
    (sys.stderr if code else sys.stdout).write(text.getvalue())
    sys.exit(code)


def _check_usage(rest: list) -> None:
    """Parse the command against do-nothing stand-ins, so a usage error (exit 2) runs nothing.

    fire calls a command before it notices unconsumed arguments: `bitrouter init --provider
    openai --bogus` would write the config and only then fail.
    """
    import fire
    stand_ins = {name: functools.wraps(fn)(lambda *args, **kwargs: None)
                 for name, fn in vars(BitRouter).items() if callable(fn) and not name.startswith("_")}
    fire.Fire(type("BitRouter", (), stand_ins)(), command=rest, name="bitrouter")
