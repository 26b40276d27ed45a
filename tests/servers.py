"""Private server processes for tests: started on a free port, stopped and started again.

A subclass says how to start its server (`command`) and how to tell that it answers
(`is_ready`); `ServerProcess` does the rest. Each instance keeps its port, so a fault test
can `stop()` the server, check how clients behave, and `start()` it again at the same url.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

SEARCH_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, *, install_hint: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """The path of a server binary, from PATH or the usual system directories."""
    found = shutil.which(name)
    if found:
        return found
    for directory in (*SEARCH_DIRS, *extra_dirs):
        path = Path(directory) / name
        if path.is_file():
            return str(path)
    raise RuntimeError(
        f"{name} not found on PATH or in {', '.join((*SEARCH_DIRS, *extra_dirs))}; "
        f"install it with `{install_hint}`"
    )


class ServerProcess:
    """One server process on a fixed port, with its files and log under `workdir`."""

    name = "server"
    start_timeout_s = 20.0
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra `subprocess.Popen` arguments for the server process (e.g. `user`)."""
        return {}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ServerProcess:
        if self.running:
            return self
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            **self.popen_kwargs(),
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            if self.is_ready():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer in {self.start_timeout_s}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(self.stop_signal)
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RedisServer(ServerProcess):
    """A private redis-server: no persistence, loopback only."""

    name = "redis"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = find_binary("redis-server", install_hint="apt-get install redis-server")
        super().__init__(workdir, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class PostgresServer(ServerProcess):
    """A private PostgreSQL cluster: trust auth, loopback TCP plus a unix socket in its own
    directory, no fsync (tests need speed, not durability; `settings` overrides any server
    setting). `initdb` runs on the first `start()`; later starts reuse the data.

    PostgreSQL refuses to run as root. Under root, `initdb` and `postgres` run as the
    `postgres` OS user, and the data and socket live in a private directory that user
    owns (pytest's temporary directories are root-only); `cleanup()` removes it.
    """

    name = "postgres"
    start_timeout_s = 30.0
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave
    superuser = "postgres"

    def __init__(
        self, workdir: Path, port: int | None = None, settings: dict[str, str] | None = None
    ) -> None:
        hint = "apt-get install postgresql"
        extra = tuple(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
        self.initdb = find_binary("initdb", install_hint=hint, extra_dirs=extra)
        # postgres itself must come from the same installation as initdb
        self.binary = str(Path(os.path.realpath(self.initdb)).parent / "postgres")
        if not Path(self.binary).is_file():
            self.binary = find_binary("postgres", install_hint=hint, extra_dirs=extra)
        super().__init__(workdir, port)
        self._run_as: str | None = None
        self._private: Path | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(self.superuser)
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL does not run as root and there is no 'postgres' OS user to run "
                    f"it as; install the server package (`{hint}`), which creates that user"
                ) from None
            self._run_as = self.superuser
            self._private = Path(tempfile.mkdtemp(prefix="ado-pg-"))
            os.chown(self._private, owner.pw_uid, owner.pw_gid)
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "60",
            "max_wal_size": "1GB",
            "logging_collector": "off",
        } | (settings or {})
        home = self._private or self.workdir
        self.data_dir = home / "data"
        self.socket_dir = home / "socket"

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        auth = self.superuser + (f":{password}" if password is not None else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def popen_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as, "group": self._run_as, "extra_groups": []}

    def start(self) -> PostgresServer:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        super().start()
        return self

    def _initdb(self) -> None:
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
            if self._run_as is not None:
                shutil.chown(directory, self._run_as, self._run_as)
        command = [
            self.initdb,
            "--pgdata", str(self.data_dir),
            "--username", self.superuser,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            done = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, check=False, **self.popen_kwargs()
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {done.returncode}):\n{self.log_tail()}")

    def command(self) -> list[str]:
        settings = self.settings | {"unix_socket_directories": str(self.socket_dir)}
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        return [self.binary, "-D", str(self.data_dir), "-p", str(self.port), *options]

    def is_ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def cleanup(self) -> None:
        """Stop the server and delete its private directory (root only), data included."""
        self.stop()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
