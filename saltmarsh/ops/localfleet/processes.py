"""Starting and stopping the real processes of a local fleet, always by PID.

Shared by `saltmarsh demo`, the tests and the benches, so that every one of them cleans up the
same way: SIGTERM, a bounded wait, then SIGKILL. A `StopList` holds what one run started and
stops it all, newest first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago (callers retry on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll until `predicate()` holds; whether it does at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class ServiceProcess:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def python_module(cls, name: str, module: str, args: Sequence[str], log_path: Path) -> ServiceProcess:
        return cls(name, [sys.executable, "-m", module, *args], log_path)

    @classmethod
    def service(cls, name: str, module: str, config: Path, log_path: Path) -> ServiceProcess:
        """A saltmarsh service (`python -m sensor|gateway|cloud_ingester`) reading one config file."""
        return cls.python_module(name, module, ["--config", str(config)], log_path)

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the demo, not every child
            )
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def kill9(self) -> None:
        """The crash under test: no chance to flush, close or say goodbye."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self._proc is not None
            self._proc.wait()

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    def wait(self, timeout_s: float) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stoppable(Protocol):
    def stop(self) -> object: ...


StoppableT = TypeVar("StoppableT", bound=Stoppable)


class StopList:
    """What one run started (brokers, services, publishers), stopped newest first."""

    def __init__(self) -> None:
        self._started: list[Stoppable] = []

    def track(self, thing: StoppableT) -> StoppableT:
        self._started.append(thing)
        return thing

    def stop_all(self) -> list[tuple[Stoppable, Exception]]:
        """Stop everything, going on past a failure; returns what failed to stop, and why."""
        failed: list[tuple[Stoppable, Exception]] = []
        while self._started:
            thing = self._started.pop()
            try:
                thing.stop()
            except Exception as err:  # keep stopping the rest
                failed.append((thing, err))
        return failed
