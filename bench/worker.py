"""A bench helper in its own process (spawned), returning one result over a pipe; stopped by PID."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from collections.abc import Callable
from typing import Any, Generic, TypeVar

R = TypeVar("R")
_CTX = multiprocessing.get_context("spawn")


def context() -> Any:
    """The spawn context, for Events and Values shared with workers."""
    return _CTX


class Worker(Generic[R]):
    """`target(*args, conn)` runs in a child process and sends its result with `conn.send`."""

    def __init__(self, name: str, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.name = name
        self._parent, child = _CTX.Pipe(duplex=False)
        self._process = _CTX.Process(target=target, args=(*args, child), name=name, daemon=True)
        self._child = child

    def start(self) -> Worker[R]:
        self._process.start()
        self._child.close()
        return self

    @property
    def pid(self) -> int:
        pid = self._process.pid
        if pid is None:
            raise RuntimeError(f"{self.name} was never started")
        return pid

    def alive(self) -> bool:
        return bool(self._process.is_alive())

    def result(self, timeout_s: float) -> R:
        """The worker's result; raises TimeoutError (and stops it) if none comes in time."""
        if not self._parent.poll(timeout_s):
            self.stop()
            raise TimeoutError(f"{self.name} (pid {self.pid}) sent no result within {timeout_s:.0f} s")
        try:
            value: R = self._parent.recv()
        except EOFError:
            self.stop()
            raise RuntimeError(f"{self.name} (pid {self.pid}) exited without a result") from None
        self._process.join(10)
        return value

    def stop(self) -> None:
        """Terminate (SIGTERM), then kill (SIGKILL) this one process if it is still running."""
        if self._process.pid is None:
            return
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
