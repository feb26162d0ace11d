"""`bitrouter doctor`: check the setup end to end and say what to fix, one line per check."""

import resource
import socket

from bitrouter import Error, boundary, client, config, daemon, hints

FD_WANTED = 4096  # open files a busy server needs: two sockets per streamed request, plus pools


def run(home, offline: bool = False) -> bool:
    """Print every check as `ok`, `warn` or `FAIL`; True when nothing failed."""
    results = list(checks(home, offline))
    width = max(len(name) for _, name, _ in results)
    for level, name, detail in results:
        print(f"{level.upper() if level == 'fail' else level:<4}  {name:<{width}}  {detail}")
    failed = sum(1 for level, _, _ in results if level == "fail")
    print(f"\n{failed} problem{'' if failed == 1 else 's'} found" if failed else "\neverything looks fine")
    return not failed


def checks(home, offline: bool):
    """(level, what, detail) for config, keys, port, daemon, token and the file limit."""
    try:
        cfg = config.load(home)
    except config.ConfigError as exc:
        yield "fail", "config", str(exc)
        return
    yield "ok", "config", f"{home.config_file} loads"
    for var in cfg.unset_vars:
        yield "fail", "config", f"${{{var}}} is not set (add {var}=... to {home.env_file})"
    names = cfg.configured_providers()
    if not names:
        yield "warn", "providers", f"no provider has a key; `{hints.command('init')}` sets one up"
    for name in names:
        yield _key_check(cfg.providers[name], offline)
    current = daemon.running(home)
    yield _port_check(cfg, current)
    yield _daemon_check(current)
    yield from _token_checks(home, cfg, current)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < FD_WANTED:
        yield "warn", "open files", (f"the limit is {soft}; a busy server wants {FD_WANTED} or more "
                                     f"(`ulimit -n {FD_WANTED}` before starting it)")
    else:
        yield "ok", "open files", f"limit {'unlimited' if soft == resource.RLIM_INFINITY else soft}"


def _key_check(provider, offline: bool) -> tuple:
    what = f"key {provider.name}"
    masked = boundary.mask(provider.api_key)
    if offline:
        return "ok", what, f"{masked} set (not checked: --offline)"
    from bitrouter import wizard
    verdict, message, _ = wizard.verify_key(provider)
    level = {True: "ok", False: "fail", None: "warn"}[verdict]
    return level, what, f"{masked}: {message}"


def _port_check(cfg, current) -> tuple:
    host, port = cfg.host_port
    if current and current.url:
        return "ok", "port", f"{cfg.listen} is served by this home's server (pid {current.pid})"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            return "fail", "port", (f"cannot listen on {cfg.listen}: {exc.strerror}; pick another with "
                                    f"`{hints.command('serve', '--listen', f'{host}:{port + 1}')}`")
    return "ok", "port", f"{cfg.listen} is free"


def _daemon_check(current) -> tuple:
    if current is None:
        return "ok", "daemon", f"not running (`{hints.command('start')}` starts it)"
    if current.url is None:
        return "warn", "daemon", "starting"
    healthy, detail = client.health(current.url)
    return ("ok" if healthy else "fail"), "daemon", f"pid {current.pid} on {current.url}: {detail}"


def _token_checks(home, cfg, current):
    from bitrouter import accounts
    try:
        account = accounts.active(home)
    except Error as exc:
        yield "fail", "account", str(exc)
        return
    if account is None:
        open_ok = cfg.auth["mode"] != "on" and config.is_loopback(cfg.host_port[0])
        yield ("ok" if open_ok else "fail"), "token", (
            "no account: the server runs open on loopback" if open_ok else
            f"tokens are required but there is no account: `{hints.command('account', '-g')}`")
        return
    yield "ok", "account", f"{account.prefix} signs tokens"
    if current and current.url:
        try:
            with client.Client(current.url, home) as admin:
                reply = admin.get("/admin/metrics?recent=0", 3.0)
        except client.Unreachable as exc:
            yield "fail", "token", f"the server did not answer: {exc}"
            return
        if reply.status == 200:
            yield "ok", "token", "the running server accepts this account's tokens"
        else:
            yield "fail", "token", (f"the running server refuses this account's tokens "
                                    f"({reply.message}); `{hints.command('reload')}`")
