"""`bitrouter init`: set up providers, keys, the `default` alias and the listen address.

Interactive on a terminal (inquirer), or scripted with flags / an answers file. Every answer
is collected into a Plan first; files are written only after the merged result validates
and the user confirms, so Ctrl-C or "no" at any point leaves the disk untouched.
"""

import contextlib
import dataclasses
import datetime
import difflib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bitrouter import Error, boundary, config, did_you_mean, hints, protocols, registry
from bitrouter.home import CONFIG_TEMPLATE, ENV_TEMPLATE, write_private

# The custom-provider kinds: the built-in parent written as `derives`, each the namesake of
# the protocol it speaks (whose title is the label shown, see _compatible).
COMPATIBLE = ("openai", "anthropic", "google")

VERIFY_TIMEOUT = (3.05, 8.0)  # connect, read: a model list is cheap, a hang is not worth waiting for

ANSWER_KEYS = ("providers", "api_key_env", "custom", "default", "listen", "verify")

CONFIG_HEADER = """\
# BitRouter configuration (docs/configuration.md lists every key), last written by `bitrouter init`.
# Keys live in the .env file; values here reference them as "${OPENAI_API_KEY}".
"""


@dataclasses.dataclass
class Plan:
    """Everything init will change, collected before anything is written."""

    providers: dict = dataclasses.field(default_factory=dict)  # name -> YAML fields to set
    secrets: dict = dataclasses.field(default_factory=dict)    # env var -> value for .env
    default: list | None = None   # "provider:model_id" chain; None keeps the current alias
    listen: str | None = None
    notes: list = dataclasses.field(default_factory=list)      # shown with the summary


def init(home, provider=None, api_key_env=None, default=None, listen=None, answers=None,
         yes=False, verify=False) -> bool:
    """Run `bitrouter init`; True when files were written, False when cancelled."""
    scripted = any(v not in (None, "", (), []) for v in (provider, api_key_env, default, listen, answers))
    if scripted:
        given = _read_answers(answers) if answers else {}
        flags = {"providers": provider, "api_key_env": api_key_env, "default": default,
                 "listen": listen, "verify": verify or None}
        given.update({k: v for k, v in flags.items() if v not in (None, "", (), [])})
        return _scripted(home, given, yes)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise Error(f"bitrouter init needs an interactive terminal; edit {home.config_file} and "
                    f"{home.env_file} instead, or pass --provider NAME[,NAME] "
                    f"(see `{hints.command('init', '--help')}`)")
    return _on_terminal(lambda ask: _interactive(home, ask))


def needs_setup(home) -> bool:
    """True when no provider has a key and the config defines no alias (the first-run state)."""
    cfg = config.load(home)
    return not cfg.configured_providers() and not cfg.models


def verify_key(provider) -> tuple:
    """Ask a resolved provider for its model list: (True/False/None, message, model ids)."""
    import requests

    wire = protocols.get(provider.api_protocol)
    if not wire.models_path:
        return None, f"no key check for the {provider.api_protocol} protocol", []
    if not provider.api_key:
        return False, "no key set", []
    url = provider.api_base + wire.models_path
    headers = {**provider.default_headers, **wire.fixed_headers,
               **protocols.AUTH_STYLES[provider.auth](provider.api_key)}
    try:
        resp = requests.get(url, headers=headers, timeout=VERIFY_TIMEOUT)
    except requests.Timeout:
        return None, f"timed out waiting for {url}", []
    except requests.ConnectionError:
        return None, f"could not connect to {url}", []
    except requests.RequestException as exc:
        return None, f"could not reach {url}: {type(exc).__name__}", []
    detail = boundary.redact(protocols.error_message(resp.status_code, resp.content)[:200], [provider.api_key])
    if resp.status_code in (401, 403):
        return False, f"key rejected (HTTP {resp.status_code}{': ' + detail if detail else ''})", []
    if not resp.ok:
        return None, f"unexpected HTTP {resp.status_code} from {url}{': ' + detail if detail else ''}", []
    try:
        entries = resp.json().get(wire.models_list_key) or []
        models = [str(e[wire.models_id_key]).removeprefix("models/") for e in entries if isinstance(e, dict)]
    except (ValueError, AttributeError, KeyError):
        models = []
    return True, f"key accepted ({len(models)} model{'' if len(models) == 1 else 's'} listed)", models


# ---------------------------------------------------------------- interactive flow


def _interactive(home, ask) -> bool:
    """The terminal wizard; returns True when it wrote the files."""
    tree, current = _existing(home)
    plan, session = Plan(), _Session()
    print("\nBitRouter setup")
    print(f"  config: {home.config_file}\n  env:    {home.env_file}")
    configured = _saved_providers(home, tree, current)
    if configured or current.models:
        print(f"\nExisting configuration: providers {', '.join(configured) or '(none with keys)'}"
              f"; aliases {', '.join(sorted(current.models)) or '(none)'}.")
        print("  Your answers are merged into it; everything else is kept.")
    detected = config.detect_providers(os.environ)
    if detected:
        print("\nAPI keys found in your environment:")
        for name in detected:
            var = _key_var(name)
            print(f"  ✓ {_label(name)}  {var} = {boundary.mask(os.environ[var])}")
    chosen = _choose_providers(ask, detected, configured)
    for name in chosen:
        _builtin_key(ask, home, plan, session, name)
    while ask.confirm("Add a custom OpenAI-, Anthropic- or Gemini-compatible provider?", default=False):
        _custom_provider(ask, plan, session, tree)
    if not plan.providers and not configured:
        print(f"\nNo providers chosen; nothing was written. Run `{hints.command('init')}` again any time.")
        return False
    _verify_step(ask, home, plan, session)
    _default_step(ask, plan, session, tree, configured)
    _listen_step(ask, plan, tree)
    yaml_text, env_text, backup = _prepare(home, plan)
    print("\n" + _summary(home, plan, session.sources, backup))
    if not _write_confirmed(ask):
        return False
    _write(home, plan, yaml_text, env_text, backup)
    return True


@dataclasses.dataclass
class _Session:
    """What the interactive flow learned along the way (for verification and the summary)."""

    sources: dict = dataclasses.field(default_factory=dict)   # provider -> where its key comes from
    keyed: list = dataclasses.field(default_factory=list)     # providers with a key to check
    live: dict = dataclasses.field(default_factory=dict)      # provider -> model ids it reported


def _choose_providers(ask, detected: list, configured: list) -> list:
    """The provider checkbox: featured, detected and configured ones, plus a search step."""
    table = registry.providers()
    search = "*search*"  # cannot clash: provider names never contain '*'
    shown = [n for n in registry.names() if n in registry.FEATURED or n in detected or n in configured]
    shown += [n for n in configured if n not in table]  # custom providers set up on an earlier run
    choices = [(_label(n, detected, configured), n) for n in shown]
    choices.append((f"Search all {len(table)} providers...", search))
    picked = ask.checkbox("Providers to set up (space ticks, enter continues)", choices, default=detected)
    chosen = [n for n in picked if n != search]
    searching = search in picked
    while searching:
        query = ask.text("Search providers (part of a name; Enter lists all)",
                         validate=lambda q: None if _search(q) else f"no provider matches {q!r}")
        matches = _search(query)
        ticked = ask.checkbox(f"Providers matching {query!r}" if query else "All providers",
                              [(_label(n, detected, configured), n) for n in matches],
                              default=[n for n in chosen if n in matches])
        chosen = [n for n in chosen if n not in matches] + list(ticked)
        searching = ask.confirm("Search for more providers?", default=False)
    return [n for n in registry.names() if n in chosen] + [n for n in chosen if n not in table]


def _builtin_key(ask, home, plan: Plan, session: _Session, name: str) -> None:
    """Offer the detected or stored key, or ask for one (hidden); blank leaves it unset."""
    plan.providers[name] = {}
    if not _needs_key(name):
        session.sources[name] = "no key needed"
        return
    var = _key_var(name)
    plan.providers[name] = {"api_key": f"${{{var}}}"}
    in_env, in_file = os.environ.get(var), _env_file_values(home).get(var)
    if in_env and _secret_problem(in_env):
        print(f"  note: {var} in your environment cannot be stored: {_secret_problem(in_env)}")
        in_env = None
    if in_env and ask.confirm(f"Use {var} from your environment ({boundary.mask(in_env)})?", default=True):
        plan.secrets[var] = in_env
        session.sources[name] = f"{boundary.mask(in_env)} from your environment"
        session.keyed.append(name)
        return
    if in_file and not in_env and ask.confirm(
            f"Keep the {_label(name)} key already in {home.env_file.name} ({boundary.mask(in_file)})?",
            default=True):
        session.sources[name] = f"{boundary.mask(in_file)}, kept"
        session.keyed.append(name)
        return
    secret = ask.password(f"{_label(name)} API key ({var}; Enter skips)")
    _store_key(plan, session, name, var, secret)


def _custom_provider(ask, plan: Plan, session: _Session, tree: dict) -> None:
    """Ask for one custom provider: name, protocol, base URL and key."""
    taken = _taken(tree, plan)
    name = ask.text("Name for the custom provider (e.g. together)",
                    validate=lambda v: _name_problem(v, taken)).strip()
    parent = ask.choose(f"API that {name} speaks", _compatible())
    api_base = ask.text(f"Base URL of {name} (e.g. https://api.example.com/v1)",
                        validate=_url_problem).strip().rstrip("/")
    prefix = _env_prefix(name)
    var = prefix + "_API_KEY"
    plan.providers[name] = {"derives": parent, "api_base": api_base, "env_prefix": prefix,
                            "api_key": f"${{{var}}}"}
    secret = ask.password(f"{name} API key ({var}; Enter skips)")
    _store_key(plan, session, name, var, secret)
    print(f"  -> {name}: derives {parent}, {api_base}, key in {var}")


def _store_key(plan: Plan, session: _Session, name: str, var: str, secret: str) -> None:
    """Record a typed key (or its absence) and warn when the shell would override it."""
    secret = secret.strip()
    if not secret:
        session.sources[name] = f"not set yet: add {var} to the env file"
        return
    plan.secrets[var] = secret
    session.sources[name] = boundary.mask(secret)
    if name not in session.keyed:
        session.keyed.append(name)
    if os.environ.get(var) and os.environ[var] != secret:
        note = f"{var} is also set in your shell; while it is, it overrides the .env value"
        print(f"  note: {note}")
        plan.notes.append(note)


def _verify_step(ask, home, plan: Plan, session: _Session) -> None:
    """Optionally check each new key against the provider's model list, re-asking on failure."""
    if not session.keyed or not ask.confirm(
            "Check the keys now (one quick request to each provider's model list)?", default=True):
        return
    for name in session.keyed:
        while True:
            try:
                cfg = _resolve(home, _merged_yaml(home, plan), _merged_env(home, plan),
                               {**os.environ, **plan.secrets})
            except config.ConfigError as exc:
                print(f"  ? cannot check the keys: {exc}")
                return
            print(f"  checking {name} at {cfg.providers[name].api_base} ...", flush=True)
            ok, message, models = verify_key(cfg.providers[name])
            print(f"  {_MARK[ok]} {name}: {message}")
            if ok:
                session.live[name] = models
                break
            if ok is None:  # the provider was not reached: a new key cannot help
                print(f"    (the key was not checked; fix the base URL or the network, then run "
                      f"`{hints.command('doctor')}`)")
                break
            if not ask.confirm(f"Enter the {name} key again?", default=True):
                break
            var = _var_of(plan.providers[name])
            secret = ask.password(f"{name} API key ({var}; Enter keeps the current one)")
            if not secret.strip():
                break
            _store_key(plan, session, name, var, secret)


def _default_step(ask, plan: Plan, session: _Session, tree: dict, configured: list) -> None:
    """Build the `default` alias: one model per provider, tried in order (priority)."""
    candidates = list(plan.providers) + [n for n in configured if n not in plan.providers]
    if not candidates:
        return
    old = _section(_section(tree, "models"), "default")
    chain = [_endpoint_label(e) for e in old.get("endpoints") or []]
    if chain:
        question = f"Replace the `default` alias (now {' -> '.join(chain)})?"
    else:
        question = "Set up the `default` alias (clients ask for model \"default\"; providers are tried in order)?"
    if not ask.confirm(question, default=not chain):
        return
    picked = []
    for name in candidates:
        catalog = session.live.get(name) or _catalog(name)
        model = _ask_model(ask, name, catalog)
        if model:
            picked.append(f"{name}:{model}")
    plan.default = picked or None


def _ask_model(ask, name: str, catalog: list) -> str:
    """One model id for a provider; ids missing from its catalog need a second yes."""
    hint = f"Tab completes from {len(catalog)} models; " if catalog else ""
    while True:
        model = ask.text(f"Model on {name} for `default` ({hint}Enter skips)",
                         autocomplete=_completer(catalog)).strip()
        if not model or not catalog or model in catalog:
            return model
        close = _similar(model, catalog)
        print(f"  {model} is not in {name}'s model list" + (f"; close: {', '.join(close)}" if close else ""))
        if ask.confirm(f"Use {model} anyway?", default=False):
            return model


def _listen_step(ask, plan: Plan, tree: dict) -> None:
    """The listen address, re-asked until it parses."""
    server = _section(tree, "server")
    current = str(server.get("listen") or config.DEFAULT_LISTEN)
    answer = ask.text(f"Listen address (host:port; Enter keeps {current})",
                      validate=lambda v: v.strip() and _listen_problem(v)).strip() or current
    if answer != current or "listen" not in server:
        plan.listen = answer


# ---------------------------------------------------------------- scripted flow


def _scripted(home, given: dict, yes: bool) -> bool:
    """The non-interactive form: flags and/or an answers file."""
    tree, _ = _existing(home)
    plan = _plan_from_answers(home, given, tree)
    yaml_text, env_text, backup = _prepare(home, plan)
    if given.get("verify"):
        cfg = _resolve(home, yaml_text, env_text, {**os.environ, **plan.secrets})
        for name, fields in plan.providers.items():
            if fields.get("api_key"):
                ok, message, _ = verify_key(cfg.providers[name])
                print(f"  {_MARK[ok]} {name}: {message}")
                if not ok:
                    raise Error(f"{name}: key check failed ({message}); nothing was written")
    sources = {n: _scripted_source(n, f, plan, home) for n, f in plan.providers.items()}
    print(_summary(home, plan, sources, backup))
    if not yes and sys.stdin.isatty() and sys.stdout.isatty() and not _on_terminal(_write_confirmed):
        return False
    _write(home, plan, yaml_text, env_text, backup)
    return True


def _plan_from_answers(home, given: dict, tree: dict) -> Plan:
    """Turn flags / answers into a Plan; keys are read from the environment, never from files."""
    unknown = [k for k in given if k not in ANSWER_KEYS]
    if unknown:
        raise Error(f"unknown answer {unknown[0]!r}{did_you_mean(unknown[0], ANSWER_KEYS)}; "
                    f"expected {', '.join(ANSWER_KEYS)}")
    plan = Plan()
    names = _as_list(given.get("providers"))
    table = registry.providers()
    for name in names:
        if name not in table:
            raise Error(f"unknown provider {name!r}{did_you_mean(name, table)}")
    key_env = given.get("api_key_env")
    if isinstance(key_env, str):
        if len(names) != 1:
            raise Error("--api-key-env names the key of exactly one --provider; "
                        "use an answers file (api_key_env: {provider: VAR}) for several")
        key_env = {names[0]: key_env}
    key_env = key_env or {}
    if not isinstance(key_env, dict):
        raise Error("api_key_env must be a variable name or a mapping provider: VAR")
    file_values = _env_file_values(home)
    for name in names:
        plan.providers[name] = {}
        if _needs_key(name):
            var = str(key_env.get(name) or _key_var(name))
            plan.providers[name] = {"api_key": f"${{{var}}}"}
            _scripted_key(plan, var, explicit=name in key_env, file_values=file_values, home=home)
    for name in key_env:
        if name not in names:
            raise Error(f"api_key_env names {name!r}, which is not among the providers")
    for i, spec in enumerate(_as_list(given.get("custom"), split=False)):
        _scripted_custom(plan, spec, i, tree, file_values, home)
    if given.get("default") is not None:
        plan.default = _as_list(given["default"])
        for entry in plan.default:
            provider, sep, model = entry.partition(":")
            if not sep or not provider or not model:
                raise Error(f"default: expected provider:model_id, got {entry!r}")
            catalog = _catalog(provider)
            if catalog and model not in catalog:
                plan.notes.append(f"{model} is not in {provider}'s model list"
                                  f"{did_you_mean(model, catalog)}")
    if given.get("listen") is not None:
        plan.listen = str(given["listen"]).strip()
        problem = _listen_problem(plan.listen)
        if problem:
            raise Error(f"listen: {problem}")
    return plan


def _scripted_key(plan: Plan, var: str, explicit: bool, file_values: dict, home) -> None:
    """Copy a key from the environment into .env, or note that it is still missing."""
    if os.environ.get(var):
        problem = _secret_problem(os.environ[var])
        if problem:
            raise Error(f"{var}: {problem}")
        plan.secrets[var] = os.environ[var]
    elif not file_values.get(var):
        if explicit:
            raise Error(f"{var} is not set in the environment or in {home.env_file}")
        plan.notes.append(f"{var} is not set; add it to {home.env_file} before starting")


def _scripted_custom(plan: Plan, spec, i: int, tree: dict, file_values: dict, home) -> None:
    """One `custom:` entry of an answers file: name, derives, api_base, optional api_key_env."""
    where = f"custom[{i}]"
    if not isinstance(spec, dict):
        raise Error(f"{where}: expected a mapping with name, derives and api_base")
    extra = [k for k in spec if k not in ("name", "derives", "api_base", "api_key_env")]
    if extra:
        raise Error(f"{where}: unknown key {extra[0]!r}")
    name = str(spec.get("name") or "")
    taken = _taken(tree, plan)
    if _section(_section(tree, "providers"), name).get("derives") and name not in plan.providers:
        del taken[name]  # re-running a script updates the custom provider it wrote before
    problem = (_name_problem(name, taken) or _url_problem(str(spec.get("api_base") or ""))
               or (None if spec.get("derives") in COMPATIBLE else f"derives must be one of {', '.join(COMPATIBLE)}"))
    if problem:
        raise Error(f"{where}: {problem}")
    prefix = _env_prefix(name)
    var = str(spec.get("api_key_env") or prefix + "_API_KEY")
    plan.providers[name] = {"derives": spec["derives"], "api_base": str(spec["api_base"]).rstrip("/"),
                            "env_prefix": prefix, "api_key": f"${{{var}}}"}
    _scripted_key(plan, var, explicit="api_key_env" in spec, file_values=file_values, home=home)


def _scripted_source(name: str, fields: dict, plan: Plan, home) -> str:
    """Where a scripted provider's key comes from, masked, for the summary."""
    var = _var_of(fields)
    if not var:
        return "no key needed"
    if var in plan.secrets:
        return f"{boundary.mask(plan.secrets[var])} from {var} in your environment"
    return f"{var} in {home.env_file.name}" if _env_file_values(home).get(var) else "not set"


def _read_answers(path) -> dict:
    """Parse an answers file (YAML or JSON)."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise Error(f"cannot read answers file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise Error(f"answers file {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Error(f"answers file {path}: the top level must be a mapping")
    return data


# ---------------------------------------------------------------- merging and writing


def _existing(home) -> tuple:
    """The current YAML tree (for merging) and its Config; a config that does not load stops init."""
    import yaml
    tree = {}
    if home.config_file.exists():
        try:
            tree = yaml.safe_load(home.config_file.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise Error(f"cannot merge into {home.config_file}: {exc}; fix it or move it aside") from None
        if not isinstance(tree, dict):
            raise Error(f"cannot merge into {home.config_file}: the top level is not a mapping")
    try:
        return tree, config.load(home)
    except config.ConfigError as exc:
        raise Error(f"{exc} (fix this first: init merges its answers into the existing file)") from None


def _saved_providers(home, tree: dict, cfg) -> list:
    """Configured providers the files set up; a key only exported in the shell does not count."""
    user = _section(tree, "providers")
    stored = _env_file_values(home)
    return [n for n in cfg.configured_providers()
            if n in user or cfg.providers[n].env_prefix + "_API_KEY" in stored]


def _prepare(home, plan: Plan) -> tuple:
    """The new config and .env texts and the backup path, after validating them together."""
    yaml_text, env_text = _merged_yaml(home, plan), _merged_env(home, plan)
    try:
        _resolve(home, yaml_text, env_text, os.environ)
    except config.ConfigError as exc:
        raise Error(f"the merged configuration would be invalid, nothing was written: {exc}") from None
    old = home.config_file.read_text(encoding="utf-8") if home.config_file.exists() else ""
    keep = bool(old.strip()) and old != CONFIG_TEMPLATE and old != yaml_text
    backup = _backup_path(home.config_file) if keep else None
    return yaml_text, env_text, backup


def _resolve(home, yaml_text: str, env_text: str, environ) -> config.Config:
    """Load the merged texts from a private temporary copy, exactly as the server would."""
    with tempfile.TemporaryDirectory(prefix="bitrouter-init-") as tmp:
        trial = dataclasses.replace(home, config_file=Path(tmp) / home.config_file.name,
                                    env_file=Path(tmp) / ".env")
        trial.config_file.write_text(yaml_text, encoding="utf-8")
        write_private(trial.env_file, env_text)
        try:
            return config.load(trial, environ)
        except config.ConfigError as exc:
            raise config.ConfigError(str(exc).replace(str(trial.config_file), str(home.config_file))) from None


def _merged_yaml(home, plan: Plan) -> str:
    """The existing YAML with this plan laid over it; unrelated keys keep their place."""
    import yaml
    old = {}
    if home.config_file.exists():
        old = yaml.safe_load(home.config_file.read_text(encoding="utf-8")) or {}
    tree = dict(old)
    if plan.listen:
        server = dict(_section(tree, "server"))
        server["listen"] = plan.listen
        tree["server"] = server
    if plan.providers:
        providers = dict(_section(tree, "providers"))
        for name, fields in plan.providers.items():
            entry = dict(_section(providers, name))
            entry.update(fields)
            providers[name] = entry
        tree["providers"] = providers
    if plan.default:
        models = dict(_section(tree, "models"))
        models["default"] = {"strategy": "priority", "endpoints": [
            {"provider": p, "model_id": m} for p, _, m in (e.partition(":") for e in plan.default)]}
        tree["models"] = models
    return CONFIG_HEADER + "\n" + yaml.safe_dump(tree, sort_keys=False, default_flow_style=False,
                                                 allow_unicode=True)


def _merged_env(home, plan: Plan) -> str:
    """The .env text with this plan's keys set in place; other lines and comments are kept."""
    path = Path(home.env_file)
    text = path.read_text(encoding="utf-8") if path.exists() else ENV_TEMPLATE
    lines, done = text.splitlines(), set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if m and m.group(1) in plan.secrets:
            lines[i] = f"{m.group(1)}={_env_value(plan.secrets[m.group(1)])}"
            done.add(m.group(1))
    lines += [f"{var}={_env_value(value)}" for var, value in plan.secrets.items() if var not in done]
    return "\n".join(lines) + "\n"


def _write(home, plan: Plan, yaml_text: str, env_text: str, backup) -> None:
    """Back up, then replace the config and .env atomically; report what happened."""
    if backup:
        shutil.copy2(home.config_file, backup)
    if plan.secrets:
        write_private(home.env_file, env_text)
    write_private(home.config_file, yaml_text)
    print(f"\n✓ Wrote {home.config_file}")
    print(f"✓ Wrote {home.env_file} (mode 0600)" if plan.secrets else f"  {home.env_file} unchanged")
    if backup:
        print(f"  Your previous config is saved as {backup} (the YAML writer drops comments).")
    cfg = config.load(home)
    host, port = cfg.host_port
    host = f"[{host}]" if ":" in host else host
    model = "default" if "default" in cfg.models else f"{next(iter(plan.providers), 'openai')}:MODEL_ID"
    if not _reload_running(home):
        print(f"\nStart the server:  {hints.command('serve')}   (foreground)   or   "
              f"{hints.command('start')}   (background)")
    print(f"Try it:  curl http://{host}:{port}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
          f"           -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")


def _reload_running(home) -> bool:
    """Reload this home's running server onto what was just written; False when none runs."""
    from bitrouter import daemon
    current = daemon.running(home)
    if current is None or current.url is None:
        return False
    print(f"\nA server of this home is running (pid {current.pid}); reloading it:")
    try:
        daemon.reload(home)
    except Error as exc:
        print(f"warning: the reload failed ({exc}); run `{hints.command('reload')}` once it is fixed",
              file=sys.stderr)
    return True


def _backup_path(path: Path) -> Path:
    """`bitrouter.yaml.bak-YYYYmmdd-HHMMSS`, with a counter if that name is taken."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = path.with_name(f"{path.name}.bak-{stamp}"), 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.bak-{stamp}-{n}"), n + 1
    return candidate


def _summary(home, plan: Plan, sources: dict, backup) -> str:
    """What will be written, with keys masked."""
    rows = [("config", f"{home.config_file}" + (f" (merged; backup {backup.name})" if backup else "")),
            ("env file", f"{home.env_file}" + (" (mode 0600)" if plan.secrets else " (unchanged)"))]
    for name, fields in plan.providers.items():
        kind = f"derives {fields['derives']}, {fields['api_base']}, " if fields.get("derives") else ""
        rows.append(("provider", f"{name}: {kind}key {sources.get(name, '')}".rstrip()))
    if plan.default:
        rows.append(("default", " -> ".join(plan.default)))
    if plan.listen:
        rows.append(("listen", plan.listen))
    rows += [("note", note) for note in plan.notes]
    return "Summary\n" + "\n".join(f"  {label + ':':<10}{value}" for label, value in rows)


# ---------------------------------------------------------------- prompts and terminal


class _Prompts:
    """inquirer prompts on one renderer whose key reader never discards type-ahead."""

    def __init__(self):
        from inquirer import events
        self.render = _renderer()(event_generator=events.KeyEventGenerator(_readkey))

    def text(self, message, validate=None, autocomplete=None) -> str:
        import inquirer
        return inquirer.text(message, validate=_validator(validate),
                             autocomplete=autocomplete, render=self.render)

    def password(self, message) -> str:
        import inquirer
        return inquirer.password(message, validate=_validator(_secret_problem), render=self.render)

    def confirm(self, message, default=False) -> bool:
        import inquirer
        return inquirer.confirm(message, default=default, render=self.render)

    def choose(self, message, choices):
        import inquirer
        return inquirer.list_input(message, choices=choices, render=self.render)

    def checkbox(self, message, choices, default=()) -> list:
        import inquirer
        return inquirer.checkbox(message, choices=choices, default=list(default), render=self.render)


def _renderer():
    """inquirer's console renderer, fixed where it misleads (built on first use, not at import).

    - a long question is shortened in the middle, never at the end, where the default is;
    - yes/no waits for Enter, so a `y` is never followed by an Enter that answers the next question;
    - a rejected text answer is cleared for the next try, and the error line goes away once answered;
    - the error line goes on the last row (inquirer takes the width for the height).
    """
    from inquirer import errors
    from inquirer.render.console import ConsoleRender
    from inquirer.render.console._confirm import Confirm

    class YesNo(Confirm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.choice = None

        def get_current_value(self):
            return "" if self.choice is None else ("yes" if self.choice else "no")

        def process_input(self, pressed):
            if pressed in ("\r", "\n"):
                raise errors.EndOfInput(self.question.default if self.choice is None else self.choice)
            if pressed in "yYnN" and pressed:
                self.choice = pressed in "yY"
            elif pressed == "\x7f":
                self.choice = None

    class Render(ConsoleRender):
        @property
        def height(self):
            return self.terminal.height or 24

        def render_factory(self, question_type):
            return YesNo if question_type == "confirm" else super().render_factory(question_type)

        def render(self, question, answers=None):
            try:
                return super().render(question, answers)
            finally:
                self.clear_bottombar()

        def _print_header(self, render):
            get_header = render.get_header
            render.get_header = lambda: _fit_prompt(get_header(), self.width - 12 - len(str(render.get_current_value())))
            try:
                super()._print_header(render)
            finally:
                render.get_header = get_header

        def _process_input(self, render):
            before = self._previous_error
            super()._process_input(render)
            if self._previous_error is not before and self._previous_error and hasattr(render, "current"):
                render.current, render.cursor_offset = "", 0  # rejected: start the answer afresh

    return Render


def _fit_prompt(text: str, width: int) -> str:
    """The question within width columns: the middle gives way, the ending (its default) stays."""
    width = max(width, 20)
    if len(text) <= width:
        return text
    cut = text.rfind(" (")
    tail = text[cut:] if cut > 0 and len(text) - cut < width - 10 else text[-(width // 2):]
    return text[:width - len(tail) - 1] + "…" + tail


def _on_terminal(step) -> bool:
    """step(ask) with key-at-a-time input; Ctrl-C cancels it, and nothing is written."""
    try:
        with _keyboard():
            return step(_Prompts())
    except KeyboardInterrupt:
        print("\nSetup cancelled; nothing was written.")
        return False


def _write_confirmed(ask) -> bool:
    """The last question before writing; "no" cancels."""
    if ask.confirm("Write these files?", default=True):
        return True
    print("Setup cancelled; nothing was written.")
    return False


@contextlib.contextmanager
def _keyboard():
    """Key-at-a-time input without echo for the whole wizard, restored on every exit.

    readchar flushes pending input before each key (TCSAFLUSH), which loses keys typed or
    pasted quickly; switching modes once, without flushing, keeps them.
    """
    import termios
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[3] &= ~(termios.ICANON | termios.ECHO)
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _readkey() -> str:
    """One keypress; escape sequences are read whole (the same rules as readchar)."""
    def read():
        ch = sys.stdin.read(1)
        if ch in ("", "\x03", "\x04"):  # end of input or Ctrl-C/Ctrl-D: cancel
            raise KeyboardInterrupt
        return ch
    seq = read()
    if seq != "\x1b":
        return seq
    for follow in ("O[", "12356", "01345789"):
        seq += read()
        if seq[-1] not in follow:
            return seq
    return seq + read()


def _validator(check):
    """Adapt `check(value) -> problem or None` to inquirer's validate signature."""
    if check is None:
        return True

    def validate(_answers, value):
        from inquirer import errors
        problem = check(value)
        if problem:
            raise errors.ValidationError(value, reason=problem)
        return True
    return validate


def _completer(candidates: list):
    """Tab completion over model ids: each Tab shows the next id starting with the text."""
    def complete(text, state):
        matches = [c for c in candidates if c.startswith(text)]
        return matches[state] if state < len(matches) else None
    return complete


# ---------------------------------------------------------------- small helpers

_MARK = {True: "✓", False: "✗", None: "?"}


def _name_problem(value: str, taken: dict) -> str | None:
    """Why a custom provider name is unusable (taken maps names to env prefixes), or None."""
    value = value.strip()
    if not value:
        return "a name is required"
    if re.search(r"[:/\s]", value):
        return "names cannot contain ':', '/' or spaces (they separate provider and model)"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", value):
        return "use letters, digits, '.', '_' or '-', starting with a letter"
    if value.lower() in {t.lower() for t in taken}:
        return f"{value!r} is already a provider; pick another name"
    prefix = _env_prefix(value)
    clash = [n for n, p in taken.items() if p == prefix]
    if clash:
        return f"its key variable {prefix}_API_KEY belongs to {clash[0]}; pick another name"
    return None


def _url_problem(value: str) -> str | None:
    """Why a base URL is unusable, or None."""
    from urllib.parse import urlsplit
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        return "enter an http:// or https:// URL, e.g. https://api.example.com/v1"
    return None


def _listen_problem(value: str) -> str | None:
    """Why a listen address is unusable, or None."""
    try:
        config.split_listen(value.strip())
    except ValueError as exc:
        return f"expected host:port such as 127.0.0.1:8787 ({exc})"
    return None


def _secret_problem(value: str) -> str | None:
    """Keys are single tokens; `${` cannot be stored because .env files expand it."""
    if re.search(r"\s", value.strip()):
        return "the key contains spaces or line breaks"
    return "the key contains '${', which .env files would expand" if "${" in value else None


def _taken(tree: dict, plan: Plan) -> dict:
    """Every provider name in use (built-in, in the config, chosen now) with its env prefix."""
    taken = {n: p["env_prefix"] for n, p in registry.providers().items()}
    user = _section(tree, "providers")
    for name, fields in list(user.items()) + list(plan.providers.items()):
        fields = fields if isinstance(fields, dict) else {}
        taken[str(name)] = fields.get("env_prefix") or taken.get(name) or _env_prefix(str(name))
    return taken


def _section(tree: dict, key) -> dict:
    """tree[key] when it is a mapping, else an empty one (a hand-edited file may hold anything)."""
    value = tree.get(key)
    return value if isinstance(value, dict) else {}


def _search(query: str) -> list:
    """Built-in providers whose name or display name contains the query."""
    q = query.strip().casefold()
    table = registry.providers()
    return [n for n in registry.names() if q in n.casefold() or q in table[n]["display_name"].casefold()]


def _label(name: str, detected=(), configured=()) -> str:
    """`OpenAI (openai)`, plus where a key was found."""
    builtin = registry.providers().get(name)
    text = f"{builtin['display_name']} ({name})" if builtin else f"{name} (custom)"
    if name in detected:
        return text + " - key in environment"
    return text + " - configured" if name in configured else text


def _compatible() -> list:
    """(label, parent) choices for a custom provider (loads those protocols: only when asked)."""
    return [(protocols.get(name).title, name) for name in COMPATIBLE]


def _needs_key(name: str) -> bool:
    """Every network provider needs a key; the in-process mock does not."""
    return registry.needs_key(registry.providers().get(name, {}).get("api_base", ""))


def _key_var(name: str) -> str:
    """The key variable of a built-in, or of a custom provider init wrote (its name, upper-cased)."""
    return (registry.providers().get(name, {}).get("env_prefix") or _env_prefix(name)) + "_API_KEY"


def _env_prefix(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def _var_of(fields: dict) -> str | None:
    """The variable an `api_key: "${VAR}"` reference names."""
    m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", str(fields.get("api_key") or ""))
    return m.group(1) if m else None


def _catalog(name: str) -> list:
    """Model ids the registry knows for a built-in provider (custom ones have none)."""
    return sorted(registry.providers().get(name, {}).get("models", {}))


def _similar(model: str, catalog: list) -> list:
    """A few ids that start with the text or look like it."""
    starts = [c for c in catalog if c.startswith(model)]
    return (starts or difflib.get_close_matches(model, catalog, n=3))[:3]


def _endpoint_label(entry) -> str:
    if isinstance(entry, dict):
        return f"{entry.get('provider')}:{entry.get('model_id')}"
    return str(entry)


def _env_file_values(home) -> dict:
    """The .env file alone (no process environment), for telling stored keys apart."""
    return {k: v for k, v in config.load_env(home.env_file, {}).items() if v}


def _env_value(value: str) -> str:
    """A .env value, quoted only when python-dotenv would otherwise misread it."""
    if re.fullmatch(r"[A-Za-z0-9_.,:/+=@~%^-]*", value):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _as_list(value, split=True) -> list:
    """Flags arrive as `a,b` strings or tuples (fire), answers as lists."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()] if split else [value]
    if isinstance(value, (list, tuple)):
        return [v.strip() if isinstance(v, str) else v for v in value]
    return [value]
