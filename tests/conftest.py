"""Shared fixtures: isolated homes, a real BitRouter server process, fake upstreams."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeUpstream, openai_chat  # noqa: E402

BITROUTER = str(Path(sys.executable).with_name("bitrouter"))


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll check() until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def clean_env(home: Path, **extra) -> dict:
    """A process environment that cannot see the developer's real keys or home."""
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and not k.endswith("_BASE_URL") and not k.startswith("BITROUTER")}
    # `bitrouter` on PATH is this installation, as after `pipx install .` or activating .venv.
    env.update(HOME=str(home), NO_COLOR="1", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(BITROUTER).parent), env.get("PATH", "")]))
    env.update(extra)
    return env


def run_cli(home: Path, *args, env=None, input=None, timeout=30) -> subprocess.CompletedProcess:
    """Run `bitrouter --home-dir HOME args...` and capture its output."""
    return subprocess.run([BITROUTER, "--home-dir", str(home), *args], capture_output=True, text=True,
                          env=env or clean_env(home), input=input, timeout=timeout)


class ServerProcess:
    """A `bitrouter serve` subprocess on a free loopback port, with a given config."""

    def __init__(self, home: Path, cfg: dict, env=None, args=(), command=None):
        self.home = home
        self.port = free_port()
        cfg = dict(cfg)
        cfg.setdefault("server", {})
        cfg["server"] = {**cfg["server"], "listen": f"127.0.0.1:{self.port}"}
        self.write_config(cfg)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or clean_env(home)
        self.log = open(home / "server.out", "w")
        self.proc = subprocess.Popen(command or [BITROUTER, "--home-dir", str(home), *args, "serve"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        wait_until(self._healthy, 20, what="server health")

    def write_config(self, cfg: dict) -> None:
        (self.home / "bitrouter.yaml").write_text(yaml.safe_dump(cfg))

    def output(self) -> str:
        return (self.home / "server.out").read_text()

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.output()}")
        try:
            return requests.get(self.url + "/health", timeout=1).ok
        except requests.ConnectionError:
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def home(tmp_path) -> Path:
    """An empty, isolated BitRouter home."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def start_server(home):
    """Factory: start_server(cfg, env=None) -> ServerProcess; all are stopped at teardown."""
    servers = []

    def start(cfg=None, env=None, args=()):
        server = ServerProcess(home, cfg or {}, env=env, args=args)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_openai():
    """A running fake OpenAI-compatible upstream with the default chat behaviour."""
    with FakeUpstream(openai_chat) as fake:
        yield fake


@pytest.fixture
def server(world):
    """A module's shared server from its `world` fixture (server, Fleet), the fakes reset."""
    world[1].reset()
    return world[0]


@pytest.fixture(scope="session")
def pg_cluster():
    """One throw-away PostgreSQL server for the whole session (tests/postgres.py)."""
    from postgres import Cluster
    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return pg_cluster.database()
