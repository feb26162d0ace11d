"""The `bitrouter` command line through real subprocesses: status, help, errors, exit codes."""

import json
import os
import subprocess
import sys

import re

import pexpect
import pytest

import bitrouter
from conftest import BITROUTER, clean_env, free_port, run_cli, wait_until

COMMANDS = ["init", "serve", "start", "stop", "status", "restart", "reload", "account", "keygen",
            "keys", "usage", "tui", "logs", "providers", "models", "doctor", "route", "launch"]
HEAVY = ("gevent", "bottle", "peewee")


def status_lines(result, code=0) -> list:
    """(label, value) pairs of `bitrouter status`, checking the two-column layout.

    A line with a blank label continues the one above (one provider per line): its label is "".
    """
    assert result.returncode == code, result.stderr
    pairs = []
    for line in result.stdout.splitlines():
        label, value = line[:11], line[11:]
        assert (label.rstrip().endswith(":") or not label.strip()) and not value.startswith(" "), line
        pairs.append((label.rstrip()[:-1], value))
    return pairs


def one_error_line(result, code=1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- status


def test_status_of_a_fresh_home(home):
    pairs = status_lines(run_cli(home, "status"))
    assert pairs == [
        ("daemon", "stopped"), ("home", str(home)), ("config", str(home / "bitrouter.yaml")),
        ("env", str(home / ".env")), ("runtime", str(home / "run")), ("logs", str(home / "logs")),
        ("database", f"sqlite:///{home}/bitrouter.db"), ("listen", "127.0.0.1:8787"),
        ("auth", f"open: no token needed (auth.mode auto; `bitrouter --home-dir {home} account -g` "
                 "makes tokens required)"),
        ("providers", "(none configured)")]


def test_status_summarises_configuration_without_secrets(home):
    (home / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv-0123456789\n")
    (home / "bitrouter.yaml").write_text("""
server: {listen: "127.0.0.1:9123"}
providers:
  zeta: {derives: openai, api_base: "https://z.example/v1", api_key: "zk-literal-0123456789"}
  anthropic: {api_key: "${ANTHROPIC_KEY_NOT_SET}"}
  acme: {api_protocol: openai, api_base: "https://acme.example/v1"}
models:
  fast: {endpoints: ["zeta:m"]}
  default: {endpoints: ["openai:gpt-4o"]}
""")
    result = run_cli(home, "status", "--db", "postgres://br:hunter2-secret@db.example/br",
                     env=clean_env(home, XAI_API_KEY="xai-env-0123456789"))
    status = dict(status_lines(result, code=1))  # the unset variable is a problem
    assert status["listen"] == "127.0.0.1:9123"
    assert status["providers"] == "openai, xai, zeta"  # keyed ones only, sorted; no mock, no acme
    assert status["models"] == "default, fast"
    assert status["database"] == "postgres://br:***@db.example/br"
    assert status["unset"] == "${ANTHROPIC_KEY_NOT_SET}"
    assert status["problem"] == (f"${{ANTHROPIC_KEY_NOT_SET}} is used in {home}/bitrouter.yaml but is not set "
                                 f"(add it to {home}/.env)")
    for secret in ("sk-from-dotenv", "zk-literal", "xai-env", "hunter2"):
        assert secret not in result.stdout + result.stderr


def test_status_without_aliases_has_no_models_line(home):
    labels = [label for label, _ in status_lines(run_cli(home, "status"))]
    assert "models" not in labels and "unset" not in labels


def test_status_names_the_bad_key_of_a_broken_config(home):
    (home / "bitrouter.yaml").write_text(
        "models:\n  default:\n    endpoints:\n      - openai:gpt-4o\n      - {provider: opnai, model_id: x}\n")
    result = run_cli(home, "status")
    output = result.stdout + result.stderr
    assert (f"{home}/bitrouter.yaml: models.default.endpoints[1].provider: "
            "unknown provider 'opnai' (did you mean 'openai'?)") in output
    assert "Traceback" not in output


# ---------------------------------------------------------------- help and version


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_is_plain_on_stdout_and_runs_nothing(home, command):
    env = clean_env(home)
    del env["NO_COLOR"]  # plain because stdout is not a terminal, not because of NO_COLOR
    for flag in ("--help", "-h"):
        args = [command, flag] if command else [flag]
        result = run_cli(home, *args, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.startswith("usage: bitrouter" + (f" {command}" if command else " [COMMAND]"))
        assert "\x1b[" not in result.stdout and "INFO:" not in result.stdout
    assert list(home.iterdir()) == []  # init/start/account... were not run


@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_like_a_hand_written_cli(home, command):
    text = run_cli(home, command, "--help").stdout
    for fire_ism in ("Type: ", "Optional[", "Default: ", "NAME\n    bitrouter", "SYNOPSIS", " -\n", "--g=", "_"):
        if fire_ism == "_":  # option names use dashes, as the docs spell them
            assert not re.search(r"--\w*_", text), text
        else:
            assert fire_ism not in text, (fire_ism, text)
    assert "Global options" in text and "--home-dir DIR" in text and "--db URL" in text
    assert max(len(line) for line in text.splitlines()) <= 110, text


def test_help_spells_options_as_the_docs_do(home):
    keygen = run_cli(home, "keygen", "--help").stdout
    assert "--budget-scope session|account" in keygen and "--exp DURATION" in keygen
    assert "usage: bitrouter keygen [options]\n" in keygen
    assert "--by token|model|account" in run_cli(home, "usage", "--help").stdout
    account = run_cli(home, "account", "--help").stdout
    assert "-g, --generate-key" in account and "-l, --list" in account
    assert "usage: bitrouter models [PROVIDER] [options]" in run_cli(home, "models", "--help").stdout
    assert "bitrouter route add NAME PROVIDER:MODEL" in run_cli(home, "route", "--help").stdout


def test_every_option_of_every_command_has_help():
    import inspect

    from bitrouter import cli, helptext
    for name in [n for n in vars(cli.BitRouter) if not n.startswith("_")]:
        fn = getattr(cli.BitRouter, name)
        doc = helptext._Doc(fn)
        assert doc.summary, name
        for param in list(inspect.signature(fn).parameters.values())[1:]:
            if param.kind is param.KEYWORD_ONLY:
                assert param.name in doc.args, (name, param.name)


def test_help_lists_every_command(home):
    text = run_cli(home, "--help").stdout
    for command in COMMANDS:
        assert re.search(rf"\n  {command} +[A-Z]", text), command


def test_help_after_arguments_still_only_shows_help(home):
    result = run_cli(home, "init", "--provider", "openai", "--yes", "--help")
    assert result.returncode == 0 and "usage: bitrouter init" in result.stdout
    assert list(home.iterdir()) == []


def test_help_never_uses_a_pager_on_a_terminal(home):
    env = clean_env(home, PAGER="echo PAGER-WAS-USED", TERM="xterm")
    child = pexpect.spawn(BITROUTER, ["--home-dir", str(home), "status", "--help"], env=env,
                          encoding="utf-8", timeout=20, dimensions=(40, 120))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "bitrouter status" in child.before and "PAGER-WAS-USED" not in child.before


def test_hints_name_the_program_as_it_was_run_when_it_is_not_on_path(home, tmp_path):
    """After `make run` without activating .venv, hints must still be runnable as printed."""
    env = clean_env(home, PATH="/usr/bin:/bin")
    result = subprocess.run([BITROUTER, "--home-dir", str(home), "keys"], capture_output=True, text=True,
                            env=env, timeout=30, cwd=tmp_path)
    assert result.stderr == f"error: No active account. Run `{BITROUTER} --home-dir {home} account -g` to generate one.\n"
    hint = result.stderr.split("`")[1]
    assert subprocess.run(hint, shell=True, env=env, capture_output=True, timeout=30).returncode == 0
    after = run_cli(home, "keys")  # the hint created the account: keys now lists no tokens
    assert after.returncode == 0 and "No saved tokens" in after.stdout


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["--home-dir", "/nonexistent", "--version"]])
def test_version(args):
    result = subprocess.run([BITROUTER, *args], capture_output=True, text=True, timeout=30,
                            env=clean_env(os.devnull))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"bitrouter {bitrouter.__version__}\n", "")


# ---------------------------------------------------------------- errors and exit codes


@pytest.mark.parametrize("args, message", [
    (["bogus"], "unknown command 'bogus'; see `bitrouter --home-dir HOME --help` for the list"),
    (["stauts"], "unknown command 'stauts' (did you mean 'status'?); see `bitrouter --home-dir HOME --help` "
                 "for the list"),
    (["status", "extra"], "status: unexpected argument 'extra'; see `bitrouter --home-dir HOME status --help`"),
    (["status", "--nope"], "status: unknown option --nope; see `bitrouter --home-dir HOME status --help`"),
    (["stop", "--timout", "3"], "stop: unknown option --timout (did you mean '--timeout'?); "
                                "see `bitrouter --home-dir HOME stop --help`"),
    (["keygen", "--exp"], "keygen: --exp needs a value"),
    (["init", "--provider", "openai", "--yes", "--no-such-flag"],
     "init: unknown option --no-such-flag; see `bitrouter --home-dir HOME init --help`")])
def test_usage_errors_are_one_line_and_exit_2_before_anything_runs(home, args, message):
    result = run_cli(home, *args)
    assert result.stdout == ""
    assert one_error_line(result, code=2) == "error: " + message.replace("HOME", str(home))
    assert list(home.iterdir()) == []  # `init ... --no-such-flag` wrote nothing


def test_options_take_dashes_underscores_and_short_forms(home):
    assert run_cli(home, "account", "-g").returncode == 0
    for spelling in (["--budget-scope", "account"], ["--budget_scope=account"]):
        result = run_cli(home, "keygen", "--exp", "1h", *spelling)
        assert result.returncode == 0, result.stderr
    assert run_cli(home, "keys", "-l").stdout.count("expires ") == 2


def test_global_option_without_value_is_a_usage_error(home):
    result = subprocess.run([BITROUTER, "status", "--home-dir"], capture_output=True, text=True,
                            env=clean_env(home), timeout=30)
    assert one_error_line(result, code=2) == "error: --home-dir needs a value"


def test_a_user_error_is_one_line_on_stderr_and_exit_1(home):
    (home / "bitrouter.yaml").write_text("server: {listen: 'nowhere'}\n")
    result = run_cli(home, "serve")
    assert one_error_line(result) == f"error: {home}/bitrouter.yaml: server.listen: expected host:port, got 'nowhere'"
    assert result.stdout == ""


def test_an_unusable_home_is_one_line_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = subprocess.run([BITROUTER, "status"], capture_output=True, text=True, cwd=tmp_path,
                            env=clean_env(not_a_dir), timeout=30)
    assert one_error_line(result).startswith(f"error: cannot create the home directory {not_a_dir}/.bitrouter:")


# ---------------------------------------------------------------- global options, entry points


def test_global_options_work_before_or_after_the_command(tmp_path):
    h = tmp_path / "h"
    h.mkdir()
    cfg = tmp_path / "other.yaml"
    cfg.write_text("server: {listen: '127.0.0.1:9555'}\n")
    env = clean_env(tmp_path)
    runs = [["--home-dir", str(h), "--config-file", str(cfg), "status"],
            ["status", "--home-dir", str(h), "--config-file", str(cfg)],
            [f"--home-dir={h}", "status", f"--config-file={cfg}"]]
    outputs = {subprocess.run([BITROUTER, *args], capture_output=True, text=True, env=env,
                              timeout=30).stdout for args in runs}
    assert len(outputs) == 1
    status = dict(status_lines(subprocess.run([BITROUTER, *runs[0]], capture_output=True, text=True,
                                              env=env, timeout=30)))
    assert (status["home"], status["config"], status["listen"]) == (str(h), str(cfg), "127.0.0.1:9555")


def test_path_overrides_show_in_status(home, tmp_path):
    result = run_cli(home, "status", "--env-file", str(tmp_path / "e"), "--run-dir", str(tmp_path / "r"),
                     "--logs-dir", str(tmp_path / "l"))
    status = dict(status_lines(result))
    assert (status["env"], status["runtime"], status["logs"]) == (
        str(tmp_path / "e"), str(tmp_path / "r"), str(tmp_path / "l"))
    assert status["config"] == str(home / "bitrouter.yaml")


def test_python_dash_m_bitrouter_is_the_same_cli(home):
    via_module = subprocess.run([sys.executable, "-m", "bitrouter", "--home-dir", str(home), "status"],
                                capture_output=True, text=True, env=clean_env(home), timeout=30)
    assert via_module.returncode == 0, via_module.stderr
    assert via_module.stdout == run_cli(home, "status").stdout


def test_python_dash_m_bitrouter_server_serves_the_home(home):
    port = free_port()
    (home / "bitrouter.yaml").write_text(f"server: {{listen: '127.0.0.1:{port}'}}\n")
    child = subprocess.Popen([sys.executable, "-m", "bitrouter.server", "--home-dir", str(home)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env(home))
    try:
        wait_until(lambda: run_cli(home, "status", "--json").returncode == 0
                   and json.loads(run_cli(home, "status", "--json").stdout)["daemon"].get("pid") == child.pid,
                   20, what="the server's pid file")
    finally:
        child.terminate()
        output = child.communicate(timeout=20)[0].decode()
    assert child.returncode == 0, output
    assert f"server started (pid {child.pid}, foreground) on http://127.0.0.1:{port}" in output


# ---------------------------------------------------------------- startup cost


def imported_modules(*args, home) -> set:
    """Top-level package names a `python -X importtime` run imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True,
                            env=clean_env(home), timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in result.stderr.splitlines() if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("args", [["--help"], ["status"], ["status", "--help"], ["serve", "--help"]])
def test_help_and_status_never_import_the_server_stack(home, args):
    modules = imported_modules(BITROUTER, "--home-dir", str(home), *args, home=home)
    assert "bitrouter" in modules
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_importtime_check_sees_the_server_stack_when_it_is_imported(home):
    """The detector above must be able to fail: importing the server pulls in all three."""
    assert set(HEAVY) <= imported_modules("-c", "import bitrouter.server, bitrouter.store", home=home)


def test_a_positional_argument_may_also_be_named(home):
    by_name = run_cli(home, "models", "--provider", "xai")
    assert by_name.returncode == 0 and by_name.stdout == run_cli(home, "models", "xai").stdout
    assert one_error_line(run_cli(home, "models", "xai", "extra"), code=2) == (
        f"error: models: unexpected argument 'extra'; see `bitrouter --home-dir {home} models --help`")
