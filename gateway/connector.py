"""Bringing a link up without blocking the loop: one helper thread per link, only while it is down.

In:  a blocking `connect` (`source.connect_local`, `sender.connect_uplink`), started by the loop
     when its link goes down.
Out: the connected result, left for the loop to `take`, and a wake-up so that it looks now.

Connecting blocks (DNS, TCP, CONNACK, SUBACK); the loop must keep reading the other link
meanwhile, so the retries run here, waiting `saltmarsh.runtime.backoff` between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from saltmarsh.contract.errors import WireError
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy

# Capped at one second: a broker back from a restart is then seen at once (a retry is one SYN),
# and little live traffic is spooled as backlog meanwhile. Jittered, so that a fleet of gateways
# does not reconnect to a restarted cloud broker in lockstep.
RECONNECT_BACKOFF = BackoffPolicy(base_s=0.1, cap_s=1.0)
LINK_ERRORS = (OSError, WireError)  # ConnectionError and TimeoutError are OSErrors
_WARN_AT_ATTEMPTS = (1, 5)  # the first failure, and once more when the wait has reached its cap

log = logging.getLogger(__name__)

T = TypeVar("T")


class Connector(Generic[T]):
    """Connects one link from a helper thread, retrying with backoff, and leaves the result for the loop."""

    def __init__(
        self,
        link: str,
        connect: Callable[[], T],
        wake: Callable[[], None],
        close: Callable[[T], None],
        policy: BackoffPolicy = RECONNECT_BACKOFF,
    ) -> None:
        self._link = link
        self._connect = connect
        self._wake = wake
        self._close = close
        self._policy = policy
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: T | None = None
        self._lock = threading.Lock()
        self.last_failure_ms: int | None = None  # wall clock: when the link was last known down

    def start(self) -> None:
        """Connect in the background, unless that is already under way (loop thread)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name=f"connect-{self._link}", daemon=True)
        self._thread.start()

    def take(self) -> T | None:
        """The new connection, once; None while there is none (loop thread)."""
        with self._lock:
            result, self._result = self._result, None
        return result

    def stop(self) -> None:
        """Give up connecting, and close a connection that was made but never taken."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(15)
        leftover = self.take()
        if leftover is not None:
            self._close(leftover)

    def _run(self) -> None:
        backoff = Backoff(self._policy)
        while not self._stopping.is_set():
            try:
                result = self._connect()
            except LINK_ERRORS as err:
                self.last_failure_ms = int(time.time() * 1000)
                delay = backoff.next_delay()
                if backoff.attempts in _WARN_AT_ATTEMPTS:
                    log.warning(
                        "cannot reach broker; retrying",
                        extra={"event": f"{self._link}_unreachable", "why": repr(err), "retry_in_s": delay},
                    )
                self._stopping.wait(delay)
                continue
            with self._lock:
                self._result = result
            self._wake()
            return
