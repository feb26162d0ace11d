"""The daemon lifecycle through the real CLI: start, status, stop, restart, pid file, logs."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests
import yaml

from conftest import free_port, run_cli, wait_until
from fakes import FakeUpstream, Reply, chat_completion, chat_stream, error

MOCK_ALIAS = {"echo": {"endpoints": ["mock:echo"]}}


class DaemonHome:
    """A home whose daemon the test drives through `bitrouter [flags] COMMAND`."""

    def __init__(self, home, cfg=None, flags=(), config_file=None, run_dir=None, logs_dir=None):
        self.home = home
        self.flags = list(flags)
        self.config_file = config_file or home / "bitrouter.yaml"
        self.run_dir = run_dir or home / "run"
        self.logs_dir = logs_dir or home / "logs"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_config(cfg or {"models": MOCK_ALIAS})

    def write_config(self, cfg: dict) -> None:
        """Write cfg, listening on this home's port unless cfg names its own address."""
        cfg = dict(cfg)
        cfg["server"] = {"listen": f"127.0.0.1:{self.port}", **cfg.get("server", {})}
        self.config_file.write_text(yaml.safe_dump(cfg))

    def cli(self, *args, timeout=60) -> subprocess.CompletedProcess:
        return run_cli(self.home, *self.flags, *args, timeout=timeout)

    def start(self, *args) -> int:
        """`bitrouter start`; returns the daemon's pid."""
        result = self.cli("start", *args)
        assert result.returncode == 0, result.stderr
        match = re.fullmatch(r"bitrouter daemon started \(pid (\d+)\) on (\S+)\n", result.stdout)
        assert match and match.group(2) == self.url, result.stdout
        return int(match.group(1))

    @property
    def pid_file(self):
        return self.run_dir / "bitrouter.pid"

    @property
    def log(self) -> str:
        return (self.logs_dir / "bitrouter.log").read_text()

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split("\n")[0])
        except (FileNotFoundError, ValueError):
            return None

    def chat(self, model="echo", text="hello daemon", stream=False, **kw):
        body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
        return requests.post(self.url + "/v1/chat/completions", json=body, timeout=30, stream=stream, **kw)


@pytest.fixture
def daemon_home(home):
    """Factory for DaemonHomes; any daemon still running at teardown is stopped (then killed)."""
    made = []

    def make(cfg=None, **kw):
        made.append(DaemonHome(home, cfg, **kw))
        return made[-1]
    yield make
    for d in made:
        pid = d.pid()
        if pid and alive(pid) and d.cli("stop", "--timeout", "10").returncode != 0 and alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether pid is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def status_fields(result) -> dict:
    assert result.returncode == 0, result.stderr
    return dict(re.match(r"(\w+):\s+(.*)", line).groups() for line in result.stdout.splitlines()
                if not line.startswith(" "))  # a provider line continues the `providers:` one


# ---------------------------------------------------------------- lifecycle


def test_start_status_restart_stop(daemon_home):
    d = daemon_home()
    pid = d.start()
    assert os.getsid(pid) == pid, "the daemon runs in its own session"
    assert d.pid() == pid
    assert d.chat().json()["choices"][0]["message"]["content"] == "hello daemon"

    fields = status_fields(d.cli("status"))
    assert fields["daemon"] == f"running (pid {pid})"
    assert fields["mode"] == "daemon"
    assert fields["url"] == d.url
    assert fields["health"] == "ok"
    assert re.fullmatch(r"\d+s", fields["uptime"])

    again = d.cli("start")
    assert again.returncode == 1
    assert again.stderr == f"error: daemon is already running (pid {pid}) on {d.url}\n"

    restarted = d.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    new_pid = d.pid()
    assert new_pid != pid and not alive(pid)
    assert restarted.stdout.splitlines()[-1] == f"bitrouter daemon restarted (pid {new_pid}) on {d.url}"
    assert d.chat().status_code == 200

    stopped = d.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert re.fullmatch(rf"bitrouter daemon stopped \(pid {new_pid}, [\d.]+s\)\n", stopped.stdout)
    assert not alive(new_pid)
    assert not d.pid_file.exists()
    with pytest.raises(requests.ConnectionError):
        d.chat()

    again = d.cli("stop")
    assert (again.returncode, again.stderr) == (1, "error: daemon is not running\n")
    assert status_fields(d.cli("status"))["daemon"] == "stopped"
    lifecycle = [line.split(" INFO ", 1)[1] for line in d.log.splitlines() if " INFO " in line]
    assert f"server started (pid {pid}, daemon) on {d.url}" in lifecycle
    assert sum(line.startswith("server stopped; drained in") for line in lifecycle) == 2


def test_start_fails_clearly_when_the_port_is_taken(daemon_home):
    d = daemon_home()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", d.port))
        taken.listen()
        result = d.cli("start")
    assert result.returncode == 1
    assert result.stderr.startswith("error: the server exited during startup (exit code 1); last lines of ")
    assert f"error: cannot listen on 127.0.0.1:{d.port}: Address already in use" in result.stderr
    assert not d.pid_file.exists()
    assert status_fields(d.cli("status"))["daemon"] == "stopped"


def test_start_with_a_broken_config_spawns_nothing(daemon_home):
    d = daemon_home()
    d.config_file.write_text("models:\n  echo:\n    endpoints: [nosuch:model]\n")
    result = d.cli("start")
    assert result.returncode == 1
    assert result.stderr == (f"error: {d.config_file}: models.echo.endpoints[0].provider: "
                             "unknown provider 'nosuch'\n")
    assert not d.logs_dir.exists() and not d.run_dir.exists(), "nothing was spawned"


def test_start_forwards_every_global_option(daemon_home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env_file = elsewhere / "keys.env"
    env_file.write_text("UP_KEY=from-the-env-file\n")
    flags = ["--config-file", str(elsewhere / "x.yaml"), "--env-file", str(env_file),
             "--run-dir", str(elsewhere / "run"), "--logs-dir", str(elsewhere / "logs"),
             "--db", f"sqlite:///{elsewhere / 'x.db'}"]
    with FakeUpstream(lambda req: Reply(body=chat_completion("from X"))) as fake:
        cfg = {"providers": {"up": {"derives": "openai", "api_base": fake.url + "/v1", "api_key": "${UP_KEY}"}},
               "models": {"only-in-x": {"endpoints": ["up:m"]}}}
        d = daemon_home(cfg, flags=flags, config_file=elsewhere / "x.yaml", run_dir=elsewhere / "run",
                        logs_dir=elsewhere / "logs")
        pid = d.start()
        reply = d.chat("only-in-x")
        assert reply.status_code == 200, reply.text
        assert fake.received[-1].headers["authorization"] == "Bearer from-the-env-file"
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    for flag, value in zip(flags[::2], flags[1::2]):
        assert argv[argv.index(flag) + 1] == value
    assert (elsewhere / "logs" / "bitrouter.log").exists() and not (d.home / "logs").exists()
    assert status_fields(d.cli("status"))["daemon"] == f"running (pid {pid})"
    assert d.cli("stop").returncode == 0
    assert not d.pid_file.exists()


# ---------------------------------------------------------------- pid file


def test_stale_pid_file_of_a_dead_process_is_cleaned(daemon_home):
    d = daemon_home()
    dead = subprocess.Popen(["true"])
    dead.wait()
    d.run_dir.mkdir()
    d.pid_file.write_text(f"{dead.pid}\nhttp://127.0.0.1:1\n1.0\ndaemon\n")
    assert status_fields(d.cli("status"))["daemon"] == "stopped"
    assert not d.pid_file.exists()
    d.pid_file.write_text(str(dead.pid))
    assert d.cli("stop").stderr == "error: daemon is not running\n"
    assert not d.pid_file.exists()
    d.start()


@pytest.mark.parametrize("command", ["stop", "reload", "restart"])
def test_pid_file_naming_an_unrelated_process_never_signals_it(daemon_home, command):
    d = daemon_home()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        d.run_dir.mkdir()
        d.pid_file.write_text(f"{sleeper.pid}\n{d.url}\n{time.time()}\ndaemon\n")
        result = d.cli(command)
        if command == "restart":  # nothing ran, so it simply starts
            assert result.returncode == 0, result.stderr
            assert d.pid() != sleeper.pid
        else:
            assert (result.returncode, result.stderr) == (1, "error: daemon is not running\n")
            assert not d.pid_file.exists()
        assert sleeper.poll() is None, "the unrelated process was signalled"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_locked_pid_file_rewritten_to_another_pid_is_refused(daemon_home):
    d = daemon_home()
    pid = d.start()
    original = d.pid_file.read_text()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open(d.pid_file, "r+") as f:  # same file, so the server keeps its lock
            f.write(original.replace(str(pid), str(sleeper.pid), 1))
        result = d.cli("stop")
        assert result.returncode == 1
        assert f"names pid {sleeper.pid}, which is not a BitRouter server; not signalling it" in result.stderr
        assert sleeper.poll() is None and alive(pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    d.pid_file.write_text(original)
    assert d.cli("stop").returncode == 0


def test_two_servers_cannot_share_a_run_dir(daemon_home, tmp_path):
    d = daemon_home()
    pid = d.start()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"server": {"listen": f"127.0.0.1:{free_port()}"}}))
    result = d.cli("--config-file", str(other), "serve", timeout=20)
    assert result.returncode == 1
    assert f"error: another BitRouter server (pid {pid}) is already running with run dir {d.run_dir}" \
        in result.stderr
    assert d.pid() == pid and d.chat().status_code == 200


def test_foreground_serve_owns_a_pid_file_too(start_server, home):
    server = start_server({"models": MOCK_ALIAS})
    pid_file = home / "run" / "bitrouter.pid"
    pid, url, started, mode, end = pid_file.read_text().split("\n")
    assert (pid, url, mode, end) == (str(server.proc.pid), server.url, "foreground", "")
    assert abs(float(started) - time.time()) < 60
    fields = status_fields(run_cli(home, "status"))
    assert (fields["daemon"], fields["mode"], fields["url"], fields["health"]) == (
        f"running (pid {server.proc.pid})", "foreground", server.url, "ok")
    reloaded = run_cli(home, "reload")
    assert reloaded.stdout == "configuration reloaded\n", reloaded.stderr
    assert server.stop() == 0
    assert not pid_file.exists()
    assert "configuration reloaded (POST /admin/reload)" in server.output()


# ---------------------------------------------------------------- stopping


def test_stop_kills_a_server_that_does_not_stop(daemon_home):
    d = daemon_home()
    pid = d.start()
    os.kill(pid, signal.SIGSTOP)  # it can no longer act on SIGTERM
    clock = time.monotonic()
    result = d.cli("stop", "--timeout", "1")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - clock < 10
    assert result.stderr == f"warning: the server (pid {pid}) did not stop within 1s; killing it\n"
    assert not alive(pid)
    assert not d.pid_file.exists()


def test_drain_is_bounded_by_drain_timeout(daemon_home):
    gate = threading.Event()  # never set: the stream hangs after its first frame
    with FakeUpstream(lambda req: Reply(frames=chat_stream(), gate=gate)) as fake:
        d = daemon_home({"server": {"drain_timeout": 1},
                         "providers": {"up": {"derives": "openai", "api_base": fake.url + "/v1", "api_key": "k"}}})
        d.start()
        reply = d.chat("up:m", stream=True)
        assert reply.status_code == 200
        lines = reply.iter_lines()
        assert next(lines).startswith(b"data: ")
        clock = time.monotonic()
        result = d.cli("stop")
        elapsed = time.monotonic() - clock
        gate.set()
    assert result.returncode == 0, result.stderr
    assert 1 <= elapsed < 5
    assert "1 request(s) still running at drain_timeout were cut off" in d.log
    assert not d.pid_file.exists()


def test_stop_hangs_up_idle_keep_alive_connections_at_once(daemon_home):
    gate = threading.Event()
    with FakeUpstream(lambda req: Reply(frames=chat_stream(), gate=gate)) as fake:
        d = daemon_home({"providers": {"up": {"derives": "openai", "api_base": fake.url + "/v1", "api_key": "k"}}})
        d.start()
        idle = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _whole_reply(idle).startswith(b"HTTP/1.1 200")  # served, and kept alive
        streaming = d.chat("up:m", stream=True)  # keeps the drain going until the gate opens
        stopping = threading.Thread(target=d.cli, args=("stop",))
        stopping.start()
        wait_until(lambda: "stopping: draining" in d.log, what="the drain")
        assert idle.recv(4096) == b"", "an idle connection is closed while the drain goes on"
        assert stopping.is_alive()
        gate.set()
        stopping.join(30)
        assert _stream_done(streaming)
    assert not d.pid_file.exists()


def _whole_reply(sock) -> bytes:
    """Read one complete Content-Length reply from a raw socket."""
    got = b""
    while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < _content_length(got):
        got += sock.recv(4096)
    return got


def _content_length(head: bytes) -> int:
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    return int(match.group(1)) if match else 0


def _stream_done(resp) -> bool:
    return resp.status_code == 200 and resp.content.rstrip().endswith(b"data: [DONE]")


def test_start_gives_up_after_its_timeout_and_stops_the_child(daemon_home):
    d = daemon_home()
    result = d.cli("start", "--timeout", "0.001")
    assert result.returncode == 1
    assert result.stderr.startswith("error: the server did not answer GET /health within 0.001s, so it was "
                                    "stopped (raise the limit with --timeout)")
    wait_until(lambda: not d.pid_file.exists(), 5, what="pid file removal")
    with pytest.raises(requests.ConnectionError):
        d.chat()


# ---------------------------------------------------------------- logs


def test_log_has_one_line_per_request_rotates_and_hides_keys(daemon_home):
    secret = "sk-live-0123456789abcdef"
    echoes_key = lambda req: error(401, f"Incorrect API key provided: {secret}")  # noqa: E731
    with FakeUpstream(echoes_key) as fake:
        d = daemon_home({"logging": {"max_bytes": 3000, "backups": 2}, "models": MOCK_ALIAS,
                         "providers": {"up": {"derives": "openai", "api_base": fake.url + "/v1",
                                              "api_key": secret}}})
        d.start()
        assert d.chat("up:m").status_code == 502
        assert b"data: [DONE]" in d.chat("echo", text="one two three", stream=True).content
        first = wait_until(lambda: d.log.count(" INFO request ") == 2 and d.log, what="two request lines")
        for _ in range(60):  # about 9 KB of lines: three rotations
            assert d.chat("echo").status_code == 200
    lines = [line for line in first.splitlines() if " INFO request " in line]
    assert re.fullmatch(r"\S+ \S+ INFO request openai model=up:m upstream=- status=502 latency=\d+ms "
                        r"tokens=0/0 stream=no attempts=1 error=\"all 1 upstream attempt.*\"", lines[0]), lines[0]
    assert re.fullmatch(r"\S+ \S+ INFO request openai model=echo upstream=mock:echo status=200 latency=\d+ms "
                        r"tokens=3/3 stream=yes attempts=1", lines[1]), lines[1]
    rotated = ["bitrouter.log", "bitrouter.log.1", "bitrouter.log.2"]  # request lines are written in batches
    wait_until(lambda: sorted(p.name for p in d.logs_dir.iterdir()) == rotated, what="the log rotated twice")
    for path in d.logs_dir.iterdir():
        text = path.read_text()
        assert secret not in text and secret[4:] not in text
        assert path.stat().st_size <= 3000
    assert d.cli("stop").returncode == 0
    assert "server stopped; drained in" in d.log
