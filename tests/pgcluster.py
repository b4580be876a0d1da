"""A throwaway PostgreSQL cluster for the test suite, started from the installed binaries.

Debian keeps them in /usr/lib/postgresql/<version>/bin. `initdb` refuses to run as root, so as
root the cluster belongs to the `postgres` system user and every server command runs through
`runuser -u postgres --`. The server listens on 127.0.0.1 on a free port, with trust auth.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgresUnavailable(Exception):
    pass


def find_bindir() -> Path | None:
    explicit = os.environ.get("WASTATS_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "PostgreSQL binaries not found (install Debian's `postgresql` package, or set "
                "WASTATS_PG_BINDIR)"
            )
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="wastats-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "server.log"
        self.extra_options = ""
        """More server options (`-c name=value ...`), e.g. Citus's `shared_preload_libraries`."""
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()[-500:]}"
            )
        return result

    def start(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        self.resume()

    def resume(self) -> None:
        """Start (again) the server on the same data and port."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            # Test data is throwaway: skipping fsync makes each test database cheap.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            f"-c max_connections=300 {self.extra_options}"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(PostgresUnavailable):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


class CitusCluster:
    """A real Citus cluster: a coordinator and two workers, each a `PostgresCluster` of its own
    (one data directory, one port) with `shared_preload_libraries = 'citus'`.

    `CREATE DATABASE` is not propagated by Citus: `create_database` creates it on every node,
    with the extension, and registers the workers with the coordinator. Clients connect to the
    coordinator only (`url`), as every wastats process must (the advisory locks live there)."""

    def __init__(self, workers: int = 2) -> None:
        bindir = find_bindir()
        if bindir is None or not (bindir.parent / "lib" / "citus.so").exists():
            raise PostgresUnavailable(
                "Citus is not installed for this PostgreSQL (sh ../shared/citus/install.sh)"
            )
        self.nodes = [PostgresCluster() for _ in range(workers + 1)]
        for node in self.nodes:
            # Few shards: a test database is distributed in seconds, not tens of seconds.
            node.extra_options = (
                "-c shared_preload_libraries=citus -c citus.shard_count=4 "
                "-c citus.shard_replication_factor=1"
            )
        self.coordinator = self.nodes[0]
        self.workers = self.nodes[1:]

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def destroy(self) -> None:
        for node in self.nodes:
            node.destroy()

    @property
    def port(self) -> int:
        return self.coordinator.port

    def url(self, database: str = "postgres") -> str:
        return self.coordinator.url(database)

    def create_database(self, name: str) -> None:
        import psycopg

        for node in self.nodes:
            with psycopg.connect(node.url().replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            with psycopg.connect(node.url(name).replace("+psycopg", ""), autocommit=True) as db:
                db.execute("CREATE EXTENSION citus")
        with psycopg.connect(self.url(name).replace("+psycopg", ""), autocommit=True) as db:
            db.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.port,))
            for worker in self.workers:
                db.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))

    def drop_database(self, name: str) -> None:
        import psycopg

        for node in self.nodes:
            with psycopg.connect(node.url().replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
