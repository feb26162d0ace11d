"""Home resolution, path overrides and scaffolding (bitrouter/home.py).

Every call passes `cwd` and an `environ` with HOME inside tmp_path: nothing here can see or
create the real ~/.bitrouter.
"""

import os
import stat
import subprocess

import pytest
import yaml

from bitrouter import Error, config, home
from bitrouter.cli import split_global_flags
from conftest import BITROUTER, clean_env


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def places(tmp_path):
    """A user home (with no .bitrouter yet), a project directory and a BITROUTER_HOME."""
    user = tmp_path / "user"
    project = tmp_path / "project"
    env_home = tmp_path / "env-home"
    for d in (user, project, env_home):
        d.mkdir()
    return user, project, env_home


# ---------------------------------------------------------------- resolution order


def test_home_dir_flag_wins_and_is_made_absolute_but_not_created(places):
    user, project, env_home = places
    (project / "bitrouter.yaml").write_text("{}")
    h = home.resolve(home_dir="custom", cwd=project,
                     environ={"HOME": str(user), "BITROUTER_HOME": str(env_home)})
    assert h.root == project / "custom"
    assert not h.root.exists()  # --home-dir is used as given, never scaffolded
    assert not (user / ".bitrouter").exists()


def test_current_directory_with_a_config_beats_bitrouter_home(places):
    user, project, env_home = places
    (project / "bitrouter.yaml").write_text("{}")
    h = home.resolve(cwd=project, environ={"HOME": str(user), "BITROUTER_HOME": str(env_home)})
    assert h.root == project
    assert h.config_file == project / "bitrouter.yaml"


def test_current_directory_without_a_config_is_skipped(places):
    user, project, env_home = places
    (project / "bitrouter.yml").write_text("{}")  # not the file name that counts
    h = home.resolve(cwd=project, environ={"HOME": str(user), "BITROUTER_HOME": str(env_home)})
    assert h.root == env_home


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_bitrouter_home_counts_only_when_it_is_an_existing_directory(places, kind):
    user, project, env_home = places
    target = {"missing": str(env_home / "nope"), "file": str(env_home / "f"), "empty": ""}[kind]
    (env_home / "f").write_text("")
    h = home.resolve(cwd=project, environ={"HOME": str(user), "BITROUTER_HOME": target})
    assert h.root == user / ".bitrouter"


def test_relative_bitrouter_home_is_made_absolute(places):
    user, project, env_home = places
    (project / "sub").mkdir()
    h = home.resolve(cwd=project, environ={"HOME": str(user), "BITROUTER_HOME": "sub"})
    assert h.root == project / "sub"
    assert h.root.is_absolute()


def test_resolving_writes_nothing(places):
    user, project, _ = places
    h = home.resolve(cwd=project, environ={"HOME": str(user)})
    assert h.root == user / ".bitrouter" and not h.root.exists()


def test_default_home_is_scaffolded_with_commented_templates(places):
    user, project, _ = places
    h = home.create_if_missing(home.resolve(cwd=project, environ={"HOME": str(user)}))
    root = user / ".bitrouter"
    assert h.root == root
    assert sorted(p.name for p in root.iterdir()) == [".env", ".gitignore", "bitrouter.yaml", "logs", "run"]
    assert (root / "logs").is_dir() and (root / "run").is_dir()
    assert not (root / ".keys").exists()

    cfg_text = (root / "bitrouter.yaml").read_text()
    assert cfg_text == home.CONFIG_TEMPLATE
    assert all(line.startswith("#") for line in cfg_text.splitlines())
    assert yaml.safe_load(cfg_text) is None  # all comments: an empty config
    assert 'api_key: "${OPENAI_API_KEY}"' in cfg_text and 'listen: "127.0.0.1:8787"' in cfg_text

    env_text = (root / ".env").read_text()
    assert all(line.startswith("#") for line in env_text.splitlines())
    for var in ("OPENAI_API_KEY=", "ANTHROPIC_API_KEY=", "GOOGLE_API_KEY="):
        assert var in env_text
    assert mode(root / ".env") == 0o600

    assert (root / ".gitignore").read_text().split() == ["logs/", "run/", ".env", ".keys/"]

    # The scaffold is a working configuration: the defaults, nothing configured.
    cfg = config.load(h, environ={})
    assert cfg.listen == "127.0.0.1:8787"
    assert cfg.configured_providers() == [] and cfg.models == {}


def test_env_template_is_private_even_under_a_permissive_umask(places):
    user, project, _ = places
    old = os.umask(0)
    try:
        home.create_if_missing(home.resolve(cwd=project, environ={"HOME": str(user)}))
    finally:
        os.umask(old)
    assert mode(user / ".bitrouter" / ".env") == 0o600


def test_existing_default_home_is_not_touched(places):
    user, project, _ = places
    (user / ".bitrouter").mkdir()
    h = home.create_if_missing(home.resolve(cwd=project, environ={"HOME": str(user)}))
    assert h.root == user / ".bitrouter"
    assert list(h.root.iterdir()) == []


def test_scaffold_keeps_files_that_exist(tmp_path):
    root = tmp_path / "h"
    root.mkdir()
    (root / ".env").write_text("OPENAI_API_KEY=sk-mine\n")
    (root / "bitrouter.yaml").write_text("server: {listen: '127.0.0.1:9000'}\n")
    home.scaffold(root)
    assert (root / ".env").read_text() == "OPENAI_API_KEY=sk-mine\n"
    assert "9000" in (root / "bitrouter.yaml").read_text()
    assert (root / ".gitignore").read_text() == home.GITIGNORE_TEMPLATE


def test_unwritable_default_home_is_a_user_error(tmp_path):
    blocker = tmp_path / "user"
    blocker.write_text("not a directory")
    with pytest.raises(Error, match=r"cannot create the home directory .*user/\.bitrouter"):
        home.create_if_missing(home.resolve(cwd=tmp_path, environ={"HOME": str(blocker)}))


# ---------------------------------------------------------------- derived paths and overrides


def test_default_layout(tmp_path):
    h = home.at(tmp_path)
    assert (h.config_file, h.env_file, h.run_dir, h.logs_dir) == (
        tmp_path / "bitrouter.yaml", tmp_path / ".env", tmp_path / "run", tmp_path / "logs")
    assert h.keys_dir == tmp_path / ".keys"
    assert h.pid_file == tmp_path / "run" / "bitrouter.pid"
    assert h.db_url is None
    assert h.default_db_url == f"sqlite:///{tmp_path}/bitrouter.db"


@pytest.mark.parametrize("flag, attr", [("config_file", "config_file"), ("env_file", "env_file"),
                                        ("run_dir", "run_dir"), ("logs_dir", "logs_dir")])
def test_each_override_replaces_just_its_path(tmp_path, flag, attr):
    root = tmp_path / "h"
    plain = home.resolve(home_dir=root, cwd=tmp_path, environ={})
    h = home.resolve(home_dir=root, cwd=tmp_path, environ={}, **{flag: "elsewhere/x"})
    assert getattr(h, attr) == tmp_path / "elsewhere" / "x"  # relative to the working directory
    for other in ("root", "config_file", "env_file", "run_dir", "logs_dir", "db_url"):
        if other != attr:
            assert getattr(h, other) == getattr(plain, other), other
    assert h.keys_dir == root / ".keys"  # never overridable
    assert h.default_db_url == plain.default_db_url


def test_db_override_is_kept_as_given(tmp_path):
    h = home.resolve(home_dir=tmp_path, cwd=tmp_path, environ={}, db="postgres://u:p@db/x")
    assert h.db_url == "postgres://u:p@db/x"
    assert h.config_file == tmp_path / "bitrouter.yaml"


def test_tilde_in_a_path_means_the_user_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    h = home.resolve(home_dir="~/h", logs_dir="~/logs", cwd="/", environ={"HOME": str(tmp_path)})
    assert h.root == tmp_path / "h"
    assert h.logs_dir == tmp_path / "logs"


def test_cli_args_reproduce_the_home_in_a_child(tmp_path):
    h = home.resolve(home_dir=tmp_path / "h", config_file=tmp_path / "c.yaml", env_file=tmp_path / "e",
                     run_dir=tmp_path / "r", logs_dir=tmp_path / "l", db="sqlite:///x.db",
                     cwd=tmp_path, environ={})
    paths, rest = split_global_flags(h.cli_args() + ["status"])
    assert rest == ["status"]
    assert home.resolve(cwd="/", environ={}, **paths) == h


# ---------------------------------------------------------------- private files


def test_write_private_creates_0600_file_in_0700_folder(tmp_path):
    target = tmp_path / "secret" / "key.json"
    home.write_private(target, "one")
    assert target.read_text() == "one"
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700


def test_write_private_replaces_content_and_tightens_mode(tmp_path):
    target = tmp_path / "token"
    target.write_text("old")
    os.chmod(target, 0o644)
    home.write_private(target, "new")
    assert target.read_text() == "new"
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left behind


# ---------------------------------------------------------------- through the real command


def status_of(cwd, env) -> dict:
    out = subprocess.run([BITROUTER, "status"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(line.split(":", 1) for line in out.stdout.splitlines())


def test_cli_uses_the_current_directory_when_it_holds_a_config(places):
    user, project, env_home = places
    (project / "bitrouter.yaml").write_text("server: {listen: '127.0.0.1:9001'}\n")
    status = status_of(project, clean_env(user, BITROUTER_HOME=str(env_home)))
    assert status["home"].strip() == str(project)
    assert status["listen"].strip() == "127.0.0.1:9001"


def test_cli_scaffolds_the_default_home_under_home(places):
    user, project, _ = places
    status = status_of(project, clean_env(user))
    assert status["home"].strip() == str(user / ".bitrouter")
    assert mode(user / ".bitrouter" / ".env") == 0o600


@pytest.mark.parametrize("url, masked", [
    ("postgres://user:s3cret@db.example:5432/br", "postgres://user:***@db.example:5432/br"),
    ("postgres://user:p@ss@db/br", "postgres://user:***@db/br"),
    ("redis://:only-pass@cache/0", "redis://:***@cache/0"),
    ("postgres://user@db/br", "postgres://user@db/br"),
    ("sqlite:////home/u/.bitrouter/bitrouter.db", "sqlite:////home/u/.bitrouter/bitrouter.db"),
])
def test_mask_url_hides_only_the_password(url, masked):
    assert home.mask_url(url) == masked
