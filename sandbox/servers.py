"""Throwaway PostgreSQL and Redis servers started from the installed binaries.

Each server runs as a direct child process in the foreground (not daemonised), so that
stopping the parent can always reap it, and can be stopped and started again on the same
port to inject a real outage.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from sandbox.ports import free_port, wait_for_port
from sandbox.processes import die_with_parent


class ServerBinaryMissing(RuntimeError):
    """A server binary the sandbox needs is not installed."""


def find_pg_bin() -> Path:
    """Directory holding initdb and postgres: PATH first, then Debian's versioned dirs."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in candidates:
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    raise ServerBinaryMissing("PostgreSQL server binaries (initdb, postgres) not found")


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ServerBinaryMissing("redis-server not found")
    return found


class _ChildServer:
    """A server process we own; `stop` then `start` keeps the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _log_path(self) -> Path:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        log = self._log_path().open("ab")
        self.proc = subprocess.Popen(
            self._argv(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=self._popen_user(),
            preexec_fn=die_with_parent,
            cwd=self._log_path().parent,
        )
        log.close()
        if not wait_for_port(self.host, self.port, timeout, alive=lambda: self.running):
            self.stop()
            raise RuntimeError(f"{type(self).__name__} did not start; see {self._log_path()}")
        self._after_start()

    def _popen_user(self) -> str | None:
        return None

    def _after_start(self) -> None:
        """Hook for readiness beyond an open port."""

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PostgresServer(_ChildServer):
    """A PostgreSQL cluster on loopback with a password, database `registry`.

    PostgreSQL refuses to run as root; when we are root the cluster lives in its own
    directory under the system temp dir, owned by an unprivileged user, and the server
    runs as that user.
    """

    user = "registry"
    database = "registry"

    def __init__(self, data_dir: Path, port: int | None = None, password: str = "") -> None:
        super().__init__(port)
        self.password = password
        self.bin = find_pg_bin()
        self.run_as = _unprivileged_user() if os.geteuid() == 0 else None
        if self.run_as is not None:
            self._owned_dir: Path | None = Path(tempfile.mkdtemp(prefix="hokusai-pg-"))
            shutil.chown(self._owned_dir, self.run_as, self.run_as)
            self.data_dir = self._owned_dir / "data"
        else:
            self._owned_dir = None
            self.data_dir = Path(data_dir)
        self._initialised = (self.data_dir / "PG_VERSION").exists()
        self._database_created = self._initialised

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.database}"

    def _log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _argv(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self.data_dir),  # socket dir: never collide with the system server's
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]

    def _popen_user(self) -> str | None:
        return self.run_as

    def start(self, timeout: float = 30.0) -> None:
        if not self._initialised:
            self._initdb()
        super().start(timeout)

    def _initdb(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        pwfile = self.data_dir.parent / "initdb.pw"
        pwfile.write_text(self.password or "unused")
        pwfile.chmod(0o600)
        if self.run_as:
            shutil.chown(pwfile, self.run_as, self.run_as)
        # UTF-8, as any production cluster: a SQL_ASCII one refuses non-ASCII \u escapes in
        # jsonb (Prefect's event store lost every event carrying one).
        argv = [str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", self.user]
        argv += ["--encoding=UTF8", "--locale=C"]
        argv += ["-A", "scram-sha-256" if self.password else "trust"]
        argv += [f"--pwfile={pwfile}", "--no-sync", "--no-instructions"]
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
            user=self.run_as,
            cwd=self.data_dir.parent,
        )
        pwfile.unlink()
        self._initialised = True

    def _after_start(self) -> None:
        # The port opens before the server accepts logins; wait until it answers.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            result = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", self.host, "-p", str(self.port)],
                capture_output=True,
            )
            if result.returncode == 0:
                self._ensure_database()
                return
            time.sleep(0.05)
        raise RuntimeError("PostgreSQL did not become ready")

    def _ensure_database(self) -> None:
        if self._database_created:
            return
        argv = [str(self.bin / "createdb"), "-h", self.host, "-p", str(self.port)]
        argv += ["-U", self.user, self.database]
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run(argv, check=True, capture_output=True, env=env)
        self._database_created = True

    def remove(self) -> None:
        """Stop and delete the cluster directory we created."""
        self.stop()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


class RedisServer(_ChildServer):
    """A Redis server on loopback; with a password, every client must AUTH first."""

    def __init__(self, work_dir: Path, port: int | None = None, password: str = "") -> None:
        super().__init__(port)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.binary = find_redis_server()
        self.password = password
        self._config = self.work_dir / "redis.conf"
        # In a file of our own, not on the command line, where `ps` would show it.
        self._config.touch(mode=0o600)
        self._config.write_text(f'requirepass "{password}"\n' if password else "")

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _log_path(self) -> Path:
        return self.work_dir / "redis.log"

    def _argv(self) -> list[str]:
        return [
            self.binary,
            str(self._config),  # the configuration file comes first
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.work_dir),
        ]
