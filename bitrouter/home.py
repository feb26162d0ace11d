"""Where BitRouter keeps its files: home resolution, path overrides, scaffolding and private files."""

import os
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from bitrouter import Error

CONFIG_NAME = "bitrouter.yaml"

CONFIG_TEMPLATE = """\
# BitRouter configuration (docs/configuration.md lists every key).
# Values may reference the environment: "${OPENAI_API_KEY}" or "${VAR:-default}".
#
# server:
#   listen: "127.0.0.1:8787"
#
# providers:
#   openai:
#     api_key: "${OPENAI_API_KEY}"
#
# models:
#   default:
#     strategy: priority
#     endpoints:
#       - provider: openai
#         model_id: gpt-4o
"""

ENV_TEMPLATE = """\
# BitRouter environment variables. Place your API keys here; this file is ignored by git.
#
# OPENAI_API_KEY=sk-...
# ANTHROPIC_API_KEY=sk-ant-...
# GOOGLE_API_KEY=...
"""

GITIGNORE_TEMPLATE = "logs/\nrun/\n.env\n.keys/\n"



@dataclass(frozen=True)
class Home:
    """The resolved locations of every file BitRouter reads or writes."""

    root: Path
    config_file: Path
    env_file: Path
    run_dir: Path
    logs_dir: Path
    db_url: str | None = None  # an explicit --db; config.load resolves the rest

    @property
    def keys_dir(self) -> Path:
        """Local signing accounts, saved tokens and the revocation stamp."""
        return self.root / ".keys"

    @property
    def pid_file(self) -> Path:
        """The running daemon's process id."""
        return self.run_dir / "bitrouter.pid"

    @property
    def log_file(self) -> Path:
        """The server log (rotated by size)."""
        return self.logs_dir / "bitrouter.log"

    @property
    def default_db_url(self) -> str:
        """The SQLite database in the home, used when nothing else names one."""
        return "sqlite:///" + str(self.root / "bitrouter.db")

    def cli_args(self) -> list[str]:
        """The global options that reproduce this Home in a child process."""
        args = ["--home-dir", str(self.root), "--config-file", str(self.config_file),
                "--env-file", str(self.env_file), "--run-dir", str(self.run_dir),
                "--logs-dir", str(self.logs_dir)]
        if self.db_url:
            args += ["--db", self.db_url]
        return args


def resolve(home_dir=None, config_file=None, env_file=None, run_dir=None, logs_dir=None,
            db=None, cwd=None, environ=None) -> Home:
    """Find the home directory (flag, ./bitrouter.yaml, $BITROUTER_HOME, ~/.bitrouter) and apply overrides.

    Only computes paths, it writes nothing: `create_if_missing` scaffolds the default home.
    """
    environ = os.environ if environ is None else environ
    cwd = Path(cwd or os.getcwd())
    if home_dir:
        root = _absolute(home_dir, cwd)
    elif (cwd / CONFIG_NAME).is_file():
        root = cwd
    elif environ.get("BITROUTER_HOME") and _absolute(environ["BITROUTER_HOME"], cwd).is_dir():
        root = _absolute(environ["BITROUTER_HOME"], cwd)
    else:
        root = Path(environ.get("HOME") or Path.home()) / ".bitrouter"
    home = at(root)
    overrides = {"config_file": config_file, "env_file": env_file, "run_dir": run_dir,
                 "logs_dir": logs_dir}
    home = replace(home, **{k: _absolute(v, cwd) for k, v in overrides.items() if v})
    return replace(home, db_url=str(db)) if db else home


def create_if_missing(home: Home) -> Home:
    """Scaffold a home that does not exist yet (the default ~/.bitrouter on first use)."""
    if not home.root.exists():
        try:
            scaffold(home.root)
        except OSError as exc:
            raise Error(f"cannot create the home directory {home.root}: {exc.strerror} "
                        "(use --home-dir or BITROUTER_HOME)") from None
    return home


def given_options(paths: dict) -> list:
    """The global options a hint must repeat: those --home-dir does not imply, a database password masked."""
    layout = at(_absolute(paths["home_dir"], Path.cwd())) if paths.get("home_dir") else None
    given = []
    for key, value in paths.items():
        if layout and key != "home_dir" and getattr(layout, key, None) == _absolute(value, Path.cwd()):
            continue  # what --home-dir implies anyway (a daemon's command line spells it all out)
        given += ["--" + key.replace("_", "-"), mask_url(str(value)) if key == "db" else str(value)]
    return given


def mask_url(url: str) -> str:
    """Hide the password in a database URL."""
    # Greedy up to the last `@` before the path: an unencoded `@` may sit in the password.
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def require_existing(home: Home) -> Home:
    """An explicit --home-dir must exist, for every command alike: a typo never makes a stray home."""
    if not home.root.is_dir():
        what = "is not a directory" if home.root.exists() else "does not exist"
        raise Error(f"--home-dir {home.root} {what}; create it first (mkdir -p {shlex.quote(str(home.root))})")
    return home


def at(root) -> Home:
    """The default layout under one home directory, without looking at flags or the environment."""
    root = Path(root)
    return Home(root=root, config_file=root / CONFIG_NAME, env_file=root / ".env",
                run_dir=root / "run", logs_dir=root / "logs")


def scaffold(root) -> Home:
    """Create a home with commented templates; existing files are left alone."""
    root = Path(root)
    for folder in (root, root / "run", root / "logs"):
        private_folder(folder)
    _write_new(root / CONFIG_NAME, CONFIG_TEMPLATE, 0o600)
    _write_new(root / ".env", ENV_TEMPLATE, 0o600)
    _write_new(root / ".gitignore", GITIGNORE_TEMPLATE, 0o644)
    return at(root)


def write_private(path, text: str) -> None:
    """Replace a file in one step, private to its owner: 0600 when new, else its owner bits kept.

    Group and other bits are always dropped (the file may hold keys); a new folder gets 0700.
    """
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    mode = path.stat().st_mode & 0o700 if path.exists() else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)  # O_CREAT's mode is narrowed by the umask, and ignored for a stale tmp
    os.replace(tmp, path)


def private_folder(path) -> Path:
    """Create a folder (and missing parents) with mode 0700; an existing one is left as it is."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is narrowed by the umask, never widened
    return path


def private_file(path) -> Path:
    """Make sure a file exists with mode 0600 (its folder 0700 if new): logs, pid file, database."""
    path = Path(path)
    private_folder(path.parent)
    try:  # never open an existing file: closing any fd on a SQLite file drops this process's locks on it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    return path


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create a file with the given mode unless it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _absolute(path, cwd: Path) -> Path:
    """Expand ~ and make a path absolute against cwd, without resolving symlinks."""
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else cwd / path
