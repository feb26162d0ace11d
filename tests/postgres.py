"""A throw-away PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary directory.

The Debian `postgresql` package is installed when its binaries are missing (apt-get, as
root: CI runs on a fresh machine). initdb refuses to run as root, so a root test run owns
the cluster by `nobody`. The server listens on a loopback port only, without fsync: its
data is thrown away with the directory.
"""

import glob
import itertools
import os
import shutil
import subprocess
import tempfile

from conftest import free_port


class Cluster:
    """A running PostgreSQL server; `database()` makes a fresh, empty database on it."""

    def __init__(self):
        self.bin = _binaries()
        self.dir = tempfile.mkdtemp(prefix="bitrouter-pg-")
        self.port = free_port()
        self.user = "bitrouter"
        self._names = itertools.count(1)
        self._as = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "nobody")
        data = os.path.join(self.dir, "data")
        self._run("initdb", "-D", data, "-U", self.user, "-A", "trust", "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off " \
                  "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        self._run("pg_ctl", "-D", data, "-o", options, "-l", os.path.join(self.dir, "log"), "-w", "start")
        self.data = data

    def url(self, name: str = "postgres") -> str:
        """The peewee URL of one database of this cluster."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg2
        name = f"t{next(self._names)}"
        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once and delete its files."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, tool: str, *args) -> None:
        result = subprocess.run([*self._as, os.path.join(self.bin, tool), *args],
                                capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr or result.stdout}")


def _binaries() -> str:
    """The directory of initdb and pg_ctl, installing the Debian package if they are missing."""
    found = _find()
    if found is None:
        if os.geteuid() != 0:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (as root)")
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
            subprocess.run(command, check=True, capture_output=True, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = _find()
    if found is None:
        raise RuntimeError("apt-get installed postgresql but initdb is not where Debian puts it")
    return found


def _find() -> str | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb, or the one on PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if versions:
        return os.path.dirname(versions[-1])
    on_path = shutil.which("initdb")
    return os.path.dirname(on_path) if on_path else None
