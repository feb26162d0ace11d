"""Configuration loading (bitrouter/config.py): .env, expansion, merge, derives, validation.

Unit tests call config.load with an explicit `environ`, so the developer's real keys never
leak in; the end-to-end tests run a real server with clean_env().
"""

import textwrap

import pytest
import requests

from bitrouter import boundary, config, registry
from bitrouter import home as home_mod
from fakes import FakeUpstream, openai_chat


def load(home, text="", dotenv=None, db=None, **environ):
    """Write bitrouter.yaml (and .env) into home and load it with exactly `environ`."""
    (home / "bitrouter.yaml").write_text(textwrap.dedent(text))
    if dotenv is not None:
        (home / ".env").write_text(textwrap.dedent(dotenv))
    h = home_mod.at(home)
    if db:
        h = home_mod.resolve(home_dir=home, db=db, environ={})
    return config.load(h, environ=environ)


def error_of(home, text, **environ) -> str:
    with pytest.raises(config.ConfigError) as info:
        load(home, text, **environ)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- defaults


@pytest.mark.parametrize("text", ["", "# only a comment\n", home_mod.CONFIG_TEMPLATE, "server:\n"])
def test_empty_config_gives_every_default(home, text):
    cfg = load(home, text)
    assert cfg.server == config.SERVER_DEFAULTS
    assert cfg.upstream == config.UPSTREAM_DEFAULTS
    assert cfg.routing == config.ROUTING_DEFAULTS
    assert cfg.auth == config.AUTH_DEFAULTS
    assert cfg.logging == config.LOGGING_DEFAULTS
    assert cfg.listen == "127.0.0.1:8787" and cfg.host_port == ("127.0.0.1", 8787)
    assert cfg.models == {} and cfg.unset_vars == []
    assert cfg.database_url == f"sqlite:///{home}/bitrouter.db"


def test_missing_config_file_is_an_empty_config(home):
    cfg = config.load(home_mod.at(home / "nowhere"), environ={})
    assert cfg.listen == config.DEFAULT_LISTEN


def test_section_values_override_defaults_one_key_at_a_time(home):
    cfg = load(home, """
        server: {listen: "[::1]:9000", drain_timeout: 2}
        upstream: {read_timeout: 60}
        routing: {cooldown_failures: 5}
        auth: {mode: "on", trusted_issuers: [abc]}
        logging: {backups: 1}
    """)
    assert cfg.host_port == ("::1", 9000)
    assert cfg.server["drain_timeout"] == 2
    assert cfg.server["max_body_bytes"] == config.SERVER_DEFAULTS["max_body_bytes"]
    assert cfg.upstream == {**config.UPSTREAM_DEFAULTS, "read_timeout": 60}
    assert cfg.routing["cooldown_failures"] == 5 and cfg.routing["cooldown_seconds"] == 5.0
    assert cfg.auth["mode"] == "on" and cfg.auth["trusted_issuers"] == ["abc"]
    assert cfg.logging == {"max_bytes": 10 * 1024 * 1024, "backups": 1}


# ---------------------------------------------------------------- .env and ${VAR}


def test_dotenv_fills_variables_and_the_process_environment_wins(home):
    cfg = load(home, """
        providers:
          openai: {api_key: "${KEY_A}", api_base: "${BASE}"}
    """, dotenv="""
        # comment
        KEY_A=from-file
        BASE='https://file.example/v1'
    """, BASE="https://process.example/v1")
    assert cfg.providers["openai"].api_key == "from-file"
    assert cfg.providers["openai"].api_base == "https://process.example/v1"


def test_dotenv_key_configures_a_builtin_through_its_prefix(home):
    cfg = load(home, "", dotenv="DEEPSEEK_API_KEY=ds-key\n")
    assert cfg.providers["deepseek"].api_key == "ds-key"
    assert cfg.configured_providers() == ["deepseek"]


def test_expansion_in_every_string_at_any_depth(home):
    cfg = load(home, """
        server:
          listen: "${HOST}:${PORT}"
        providers:
          acme:
            api_protocol: openai
            api_base: "https://${HOST_NAME:-acme.example}/v1"
            default_headers: {X-Team: "${TEAM}", X-Num: 5}
        models:
          "${NOT_EXPANDED}":
            endpoints: ["acme:${MODEL:-m1}", {provider: acme, model_id: "${MODEL2}"}]
    """, HOST="127.0.0.1", PORT="9100", TEAM="infra", MODEL2="m2")
    assert cfg.listen == "127.0.0.1:9100"
    assert cfg.providers["acme"].api_base == "https://acme.example/v1"
    assert cfg.providers["acme"].default_headers == {"X-Team": "infra", "X-Num": "5"}
    alias = cfg.models["${NOT_EXPANDED}"]  # keys are names, not values: left alone
    assert [e.model_id for e in alias.endpoints] == ["m1", "m2"]


def test_default_applies_when_variable_is_unset_or_empty(home):
    cfg = load(home, """
        providers:
          a: {api_protocol: openai, api_base: "${A_BASE:-https://a.example}", api_key: "${EMPTY:-fallback}"}
          b: {api_protocol: openai, api_base: "${B_BASE:-https://b.example}"}
    """, EMPTY="", B_BASE="https://set.example")
    assert cfg.providers["a"].api_base == "https://a.example"
    assert cfg.providers["a"].api_key == "fallback"
    assert cfg.providers["b"].api_base == "https://set.example"
    assert cfg.unset_vars == []


def test_unset_variables_become_empty_and_are_reported_once_sorted(home):
    cfg = load(home, """
        providers:
          openai: {api_key: "${ZED_KEY}"}
          anthropic: {api_key: "${ALPHA_KEY}", default_headers: {x-a: "${ZED_KEY}", x-b: "${BLANK}"}}
    """, BLANK="")
    assert cfg.unset_vars == ["ALPHA_KEY", "BLANK", "ZED_KEY"]
    assert cfg.providers["openai"].api_key == ""
    assert not cfg.providers["openai"].configured  # an empty key is no key


def test_unclosed_reference_is_kept_literally(home):
    cfg = load(home, """
        providers:
          openai: {api_key: "sk-${UNCLOSED"}
    """, UNCLOSED="x")
    assert cfg.providers["openai"].api_key == "sk-${UNCLOSED"


# ---------------------------------------------------------------- merge over the registry


def test_every_builtin_provider_exists_unconfigured_by_default(home):
    cfg = load(home)
    assert set(cfg.providers) == set(registry.providers())
    openai = cfg.providers["openai"]
    assert (openai.api_protocol, openai.api_base, openai.env_prefix, openai.auth) == (
        "openai", "https://api.openai.com/v1", "OPENAI", "bearer")
    assert cfg.providers["anthropic"].auth == "x-api-key"
    assert cfg.providers["google"].auth == "x-goog-api-key"
    assert "gpt-4o" in openai.models
    assert cfg.configured_providers() == []
    assert cfg.providers["mock"].configured  # the mock needs no key ...
    assert "mock" not in cfg.configured_providers()  # ... and is not listed as configured


def test_user_fields_replace_only_what_they_name(home):
    cfg = load(home, """
        providers:
          anthropic: {api_base: "https://gw.example/anthropic/"}
          openai:
            api_key: sk-literal
            models: {only-this: {context: 1000}}
    """)
    anthropic = cfg.providers["anthropic"]
    assert anthropic.api_base == "https://gw.example/anthropic"  # trailing slash dropped
    assert (anthropic.api_protocol, anthropic.env_prefix, anthropic.auth) == ("anthropic", "ANTHROPIC", "x-api-key")
    assert anthropic.models == registry.providers()["anthropic"]["models"]  # catalog kept
    assert cfg.providers["openai"].api_key == "sk-literal"
    assert cfg.providers["openai"].models == {"only-this": {"context": 1000}}  # replaced whole


def test_choosing_another_protocol_of_a_builtin_picks_its_base_url(home):
    cfg = load(home, """
        providers:
          deepseek: {api_protocol: anthropic}
    """)
    assert cfg.providers["deepseek"].api_base == registry.providers()["deepseek"]["protocols"]["anthropic"]


def test_a_new_provider_needs_protocol_and_base_and_gets_a_prefix_from_its_name(home):
    cfg = load(home, """
        providers:
          my-gateway.eu: {api_protocol: anthropic, api_base: "https://gw.example", auth: x-api-key}
    """, **{"MY_GATEWAY_EU_API_KEY": "gw-key"})
    p = cfg.providers["my-gateway.eu"]
    assert (p.api_protocol, p.env_prefix, p.api_key, p.auth) == ("anthropic", "MY_GATEWAY_EU", "gw-key", "x-api-key")


def test_endpoint_shorthand_and_per_endpoint_credentials(home):
    cfg = load(home, """
        models:
          default:
            strategy: load_balance
            cooldown_seconds: 1
            endpoints:
              - openai:gpt-4o
              - {provider: anthropic, model_id: claude-x, api_key: k2, api_base: "https://b.example/", weight: 3}
    """)
    alias = cfg.models["default"]
    assert alias.strategy == "load_balance" and alias.cooldown_seconds == 1
    assert alias.cooldown_failures == config.ROUTING_DEFAULTS["cooldown_failures"]
    first, second = alias.endpoints
    assert (first.provider, first.model_id, first.api_key, first.api_base, first.weight) == (
        "openai", "gpt-4o", None, None, 1)
    assert (second.label, second.api_key, second.api_base, second.weight) == (
        "anthropic:claude-x", "k2", "https://b.example", 3)


# ---------------------------------------------------------------- environment overrides


def test_prefix_variables_override_yaml_values(home):
    cfg = load(home, """
        providers:
          openai: {api_key: sk-yaml, api_base: "https://yaml.example/v1"}
    """, OPENAI_API_KEY="sk-env", OPENAI_BASE_URL="https://env.example/v1")
    assert cfg.providers["openai"].api_key == "sk-env"
    assert cfg.providers["openai"].api_base == "https://env.example/v1"


def test_empty_prefix_variables_override_nothing(home):
    cfg = load(home, """
        providers:
          openai: {api_key: sk-yaml}
    """, OPENAI_API_KEY="", OPENAI_BASE_URL="")
    assert cfg.providers["openai"].api_key == "sk-yaml"
    assert cfg.providers["openai"].api_base == "https://api.openai.com/v1"


def test_only_providers_with_a_key_are_configured_sorted(home):
    cfg = load(home, """
        providers:
          zeta: {derives: openai, api_base: "https://z.example", api_key: z}
          openai: {api_key: "${OPENAI_KEY_FROM_NOWHERE}"}
    """, XAI_API_KEY="x", ANTHROPIC_API_KEY="a", GOOGLE_API_KEY="")
    assert cfg.configured_providers() == ["anthropic", "xai", "zeta"]


def test_detection_lists_builtins_whose_key_is_set(home):
    environ = {"OPENROUTER_API_KEY": "o", "ANTHROPIC_API_KEY": "a", "GOOGLE_API_KEY": "",
               "MYCUSTOM_API_KEY": "c", "BITROUTER_MOCK_API_KEY": "m", "OPENAI_BASE_URL": "http://x"}
    assert config.detect_providers(environ) == ["anthropic", "openrouter"]
    assert config.detect_providers({}) == []


# ---------------------------------------------------------------- derives and the key leak


def test_derives_resolves_to_any_depth(home):
    cfg = load(home, """
        providers:
          leaf: {derives: mid, api_key: leaf-key}
          mid: {derives: root, api_base: "https://mid.example/v1"}
          root: {api_protocol: anthropic, api_base: "https://root.example", auth: x-api-key, api_key: root-key}
    """)
    leaf = cfg.providers["leaf"]
    assert leaf.api_protocol == "anthropic"  # from root, two levels up
    assert leaf.auth == "x-api-key"
    assert leaf.api_base == "https://mid.example/v1"  # from mid
    assert leaf.api_key == "leaf-key"
    assert cfg.providers["mid"].api_key == ""  # root's key stays with root


def test_derived_provider_takes_the_parent_catalog_unless_it_has_its_own(home):
    cfg = load(home, """
        providers:
          a: {derives: openai, api_base: "https://a.example"}
          b: {derives: openai, api_base: "https://b.example", models: {m: {context: 8}}}
    """)
    assert cfg.providers["a"].models == registry.providers()["openai"]["models"]
    assert cfg.providers["b"].models == {"m": {"context": 8}}


def test_derived_provider_on_another_protocol_gets_that_base(home):
    cfg = load(home, """
        providers:
          ds-claude: {derives: deepseek, api_protocol: anthropic}
    """)
    assert cfg.providers["ds-claude"].api_base == "https://api.deepseek.com/anthropic"


def test_key_leak_fixed_derived_provider_never_reads_the_parent_env(home):
    cfg = load(home, """
        providers:
          together:
            derives: openai
            api_base: "https://api.together.xyz/v1"
            api_key: "${TOGETHER_KEY}"
          keyless: {derives: openai, api_base: "https://keyless.example/v1"}
    """, OPENAI_API_KEY="sk-openai-secret", OPENAI_BASE_URL="https://evil.example/v1", TOGETHER_KEY="tg-1")
    together = cfg.providers["together"]
    assert (together.api_key, together.api_base, together.env_prefix) == (
        "tg-1", "https://api.together.xyz/v1", "TOGETHER")
    keyless = cfg.providers["keyless"]
    assert keyless.api_key == "" and keyless.api_base == "https://keyless.example/v1"
    assert not keyless.configured
    assert cfg.providers["openai"].api_key == "sk-openai-secret"  # the parent itself still reads it
    assert "sk-openai-secret" not in repr({n: p for n, p in cfg.providers.items() if n != "openai"})


def test_derived_provider_reads_its_own_prefix(home):
    cfg = load(home, """
        providers:
          together: {derives: openai, api_base: "https://api.together.xyz/v1"}
    """, TOGETHER_API_KEY="tg-env", TOGETHER_BASE_URL="https://tg-eu.example/v1", OPENAI_API_KEY="sk-o")
    assert cfg.providers["together"].api_key == "tg-env"
    assert cfg.providers["together"].api_base == "https://tg-eu.example/v1"


def test_child_never_inherits_a_key_written_on_the_parent(home):
    cfg = load(home, """
        providers:
          openai: {api_key: sk-parent}
          child: {derives: openai, api_base: "https://child.example/v1", default_headers: {}}
    """)
    assert cfg.providers["child"].api_key == ""


def test_own_prefix_may_not_be_another_providers(home):
    message = error_of(home, """
        providers:
          OpenAI: {derives: openai, api_base: "https://evil.example/v1"}
    """, OPENAI_API_KEY="sk-o")
    assert message.endswith("providers.OpenAI: its env prefix OPENAI belongs to provider 'openai'; "
                            "set env_prefix explicitly")


def test_an_explicit_env_prefix_is_the_users_choice(home):
    cfg = load(home, """
        providers:
          OpenAI: {derives: openai, api_base: "https://proxy.example/v1", env_prefix: OPENAI}
    """, OPENAI_API_KEY="sk-o")
    assert cfg.providers["OpenAI"].api_key == "sk-o"


def test_key_is_sent_only_to_the_derived_providers_own_base(home, start_server):
    """End to end: OPENAI_* in the environment, a provider deriving openai, a real server."""
    with FakeUpstream(openai_chat) as own, FakeUpstream(openai_chat) as openai_side:
        (home / ".env").write_text(f"OPENAI_API_KEY=sk-openai-secret\nOPENAI_BASE_URL={openai_side.url}/v1\n"
                                   "TOGETHER_KEY=tg-1\n")
        server = start_server({"providers": {
            "together": {"derives": "openai", "api_base": own.url + "/v1", "api_key": "${TOGETHER_KEY}"},
            "keyless": {"derives": "openai", "api_base": own.url + "/v1"}}})

        def chat(model):
            return requests.post(server.url + "/v1/chat/completions", timeout=30, json={
                "model": model, "messages": [{"role": "user", "content": "hi"}]})

        resp = chat("together:some-model")
        assert resp.status_code == 200, resp.text
        assert [r.headers["authorization"] for r in own.received] == ["Bearer tg-1"]
        assert own.received[0].body["model"] == "some-model"

        resp = chat("keyless:some-model")
        assert resp.status_code == 503, resp.text
        assert "sk-openai" not in resp.text
        assert len(own.received) == 1  # nothing went upstream without a key of its own

        # The parent itself still uses OPENAI_*: the override works where it belongs.
        assert chat("openai:gpt-4o").status_code == 200
        assert [r.headers["authorization"] for r in openai_side.received] == ["Bearer sk-openai-secret"]
        assert "sk-openai-secret" not in server.output()


# ---------------------------------------------------------------- database URL


def test_database_url_precedence(home):
    yaml_db = 'database: {url: "postgres://cfg@db/x"}'
    assert load(home, yaml_db, db="sqlite:///flag.db",
                BITROUTER_DATABASE_URL="postgres://env@db/x").database_url == "sqlite:///flag.db"
    assert load(home, yaml_db, BITROUTER_DATABASE_URL="postgres://env@db/x").database_url == "postgres://env@db/x"
    assert load(home, yaml_db, dotenv="BITROUTER_DATABASE_URL=postgres://dotenv@db/x\n").database_url == \
        "postgres://dotenv@db/x"
    assert load(home, yaml_db, dotenv="", BITROUTER_DATABASE_URL="").database_url == "postgres://cfg@db/x"
    assert load(home, 'database: {url: "${DB_URL}"}').database_url == f"sqlite:///{home}/bitrouter.db"


def test_mask_shows_only_the_ends_of_long_secrets():
    assert boundary.mask("sk-abcdefghijklmnop") == "sk-a...mnop"
    assert boundary.mask("short-secret") == "***"
    assert boundary.mask("") == ""


# ---------------------------------------------------------------- validation


PROVIDER = "providers: {acme: {api_protocol: openai, api_base: 'https://a.example'}}\n"

ERRORS = [
    ("server: [1, 2\n", "invalid YAML (line 2): did not find expected ',' or ']'"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("provider: {}\n", "provider: unknown key (did you mean 'providers'?)"),
    ("server: {listn: '127.0.0.1:1'}\n", "server.listn: unknown key (did you mean 'listen'?)"),
    ("server: [1]\n", "server: must be a mapping, got list"),
    ("server: {listen: 'localhost'}\n", "server.listen: expected host:port, got 'localhost'"),
    ("server: {listen: '127.0.0.1:70000'}\n", "server.listen: expected host:port, got '127.0.0.1:70000'"),
    ("server: {listen: 'example.com:80'}\n",
     "server.listen: 'example.com' does not appear to be an IPv4 or IPv6 address"),
    ("server: {listen: 8787}\n", "server.listen: must be a string"),
    ("server: {max_body_bytes: -1}\n", "server.max_body_bytes: must be a non-negative number, got -1"),
    ("upstream: {read_timeout: soon}\n", "upstream.read_timeout: must be a non-negative number, got 'soon'"),
    ("routing: {cooldown_failures: true}\n",
     "routing.cooldown_failures: must be a non-negative number, got True"),
    ("auth: {mode: opn}\n", "auth.mode: must be one of auto, on, open, got 'opn' (did you mean 'open'?)"),
    ("auth: {trusted_issuers: abc}\n", "auth.trusted_issuers: must be a list"),
    ("logging: {rotate: 1}\n", "logging.rotate: unknown key"),
    ("database: {uri: x}\n", "database.uri: unknown key (did you mean 'url'?)"),
    ("database: {url: 5}\n", "database.url: must be a string, got int (quote it)"),
    ("providers: [openai]\n", "providers: must be a mapping, got list"),
    ("providers: {'my gw': {}}\n", "providers.my gw: provider names may use letters, digits, '.', '_' and '-' only"),
    ("providers: {openai: {api-key: x}}\n", "providers.openai.api-key: unknown key (did you mean 'api_key'?)"),
    ("providers: {openai: {api_key: 12345}}\n", "providers.openai.api_key: must be a string, got int (quote it)"),
    ("providers: {openai: sk-123}\n", "providers.openai: must be a mapping, got str"),
    ("providers: {a: {derives: [openai]}}\n", "providers.a.derives: must be a string, got list (quote it)"),
    ("providers: {a: {derives: opnai}}\n", "providers.a.derives: unknown provider 'opnai' (did you mean 'openai'?)"),
    ("providers: {a: {derives: b}, b: {derives: a}}\n", "providers.a.derives: derives cycle: a -> b -> a"),
    ("providers: {a: {derives: a}}\n", "providers.a.derives: derives cycle: a -> a"),
    ("providers: {acme: {api_base: 'https://a.example'}}\n",
     "providers.acme: api_protocol is required for a new provider (or use derives)"),
    ("providers: {acme: {api_protocol: opneai, api_base: 'https://a.example'}}\n",
     "providers.acme.api_protocol: must be one of openai, responses, anthropic, google, got 'opneai' "
     "(did you mean 'openai'?)"),
    ("providers: {acme: {api_protocol: openai}}\n", "providers.acme: api_base is required"),
    ("providers: {acme: {api_protocol: openai, api_base: 'api.acme.example'}}\n",
     "providers.acme.api_base: not an http(s) URL: 'api.acme.example'"),
    ("providers: {openai: {auth: bearr}}\n",
     "providers.openai.auth: must be one of bearer, x-api-key, x-goog-api-key, got 'bearr' (did you mean 'bearer'?)"),
    ("providers: {openai: {default_headers: [a]}}\n", "providers.openai.default_headers: must be a mapping, got list"),
    ("providers: {openai: {models: [gpt-4o]}}\n", "providers.openai.models: must be a mapping, got list"),
    ("models: [default]\n", "models: must be a mapping, got list"),
    ("models: {default: {endpoint: []}}\n", "models.default.endpoint: unknown key (did you mean 'endpoints'?)"),
    ("models: {default: {endpoints: []}}\n", "models.default.endpoints: must be a non-empty list"),
    ("models: {default: {}}\n", "models.default.endpoints: must be a non-empty list"),
    ("models: {default: {strategy: load-balance, endpoints: [openai:gpt-4o]}}\n",
     "models.default.strategy: must be one of priority, load_balance, got 'load-balance' "
     "(did you mean 'load_balance'?)"),
    ("models: {default: {endpoints: [openai:gpt-4o, {provider: opnai, model_id: gpt-4o}]}}\n",
     "models.default.endpoints[1].provider: unknown provider 'opnai' (did you mean 'openai'?)"),
    ("models: {default: {endpoints: [openai]}}\n", "models.default.endpoints[0].model_id: is required"),
    ("models: {default: {endpoints: [{provider: openai, model: gpt-4o}]}}\n",
     "models.default.endpoints[0].model: unknown key (did you mean 'model_id'?)"),
    ("models: {default: {endpoints: [{provider: openai, model_id: m, weight: 0}]}}\n",
     "models.default.endpoints[0].weight: must be a positive integer"),
    ("models: {default: {endpoints: [{provider: openai, model_id: m, api_key: 5}]}}\n",
     "models.default.endpoints[0].api_key: must be a string, got int (quote it)"),
    ("models: {default: {endpoints: [7]}}\n", "models.default.endpoints[0]: must be a mapping, got int"),
    ("models: {default: {cooldown_seconds: -1, endpoints: [openai:m]}}\n",
     "models.default.cooldown_seconds: must be a non-negative number, got -1"),
]


@pytest.mark.parametrize("text, problem", ERRORS, ids=[p.split(":")[0] for _, p in ERRORS])
def test_each_validation_error_names_file_key_path_and_problem(home, text, problem):
    assert error_of(home, PROVIDER + text if text.startswith("models") else text) == \
        f"{home / 'bitrouter.yaml'}: {problem}"


def test_errors_name_the_overridden_config_file(tmp_path):
    path = tmp_path / "team.yaml"
    path.write_text("models: {default: {endpoints: [{provider: opnai, model_id: x}]}}\n")
    h = home_mod.resolve(home_dir=tmp_path / "h", config_file=path, environ={})
    with pytest.raises(config.ConfigError, match=rf"^{path}: models\.default\.endpoints\[0\]\.provider: "):
        config.load(h, environ={})


def test_unreadable_config_is_an_error_not_a_fallback(home):
    (home / "bitrouter.yaml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(config.ConfigError, match="bitrouter.yaml: cannot read"):
        config.load(home_mod.at(home), environ={})


# ---------------------------------------------------------------- the registry loader


def test_registry_loader_lists_featured_first_and_includes_the_mock():
    names = registry.names()
    assert names[:4] == ["openai", "anthropic", "google", "openrouter"]
    assert names[4:] == sorted(names[4:])
    assert "mock" in names and set(names) == set(registry.providers())
    for name in ("deepseek", "xai", "cerebras", "siliconflow", "zai", "moonshotai"):
        assert name in names


def test_registry_model_info_has_context_and_prices():
    info = registry.model_info("openai", "gpt-4o")
    assert info["context"] > 0
    assert info["pricing"]["input"] > 0 and info["pricing"]["output"] > 0
    assert registry.model_info("openai", "no-such-model") is None
    assert registry.model_info("no-such-provider", "gpt-4o") is None
    assert registry.model_info("mock", "echo")["pricing"] == {"input": 0, "output": 0}


def test_every_builtin_reads_its_prefix_key(home):
    environ = {p["env_prefix"] + "_API_KEY": f"key-{n}" for n, p in registry.providers().items() if n != "mock"}
    cfg = load(home, **environ)
    for name, provider in cfg.providers.items():
        if name != "mock":
            assert provider.api_key == f"key-{name}", name
    assert cfg.configured_providers() == sorted(n for n in registry.providers() if n != "mock")



def test_endpoint_api_base_without_its_own_key_is_refused(home):
    message = error_of(home, """
        models:
          m:
            endpoints:
              - {provider: openai, model_id: gpt-4o, api_base: "https://elsewhere.example/v1"}
        """, OPENAI_API_KEY="sk-o")
    assert message.endswith("models.m.endpoints[0]: an endpoint with its own api_base needs its own api_key")


def test_switching_protocol_switches_the_default_auth_style(home):
    cfg = load(home, """
        providers:
          deepseek: {api_protocol: anthropic}
          claude-ish: {derives: openai, api_protocol: anthropic, api_base: "https://gw.example/anthropic"}
          custom-auth: {derives: openai, api_protocol: anthropic, api_base: "https://gw.example", auth: bearer}
        """)
    assert cfg.providers["deepseek"].auth == "x-api-key"
    assert cfg.providers["claude-ish"].auth == "x-api-key"
    assert cfg.providers["custom-auth"].auth == "bearer"
    assert cfg.providers["openai"].auth == "bearer"
