"""Private server processes for tests: started on a free port, stopped and started again.

A subclass says how to start its server (`command`) and how to tell that it answers
(`is_ready`); `ServerProcess` does the rest. Each instance keeps its port, so a fault test
can `stop()` the server, check how clients behave, and `start()` it again at the same url.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

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

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ServerProcess:
        if self.running:
            return self
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir
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
                self._proc.terminate()
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
