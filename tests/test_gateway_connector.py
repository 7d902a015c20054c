"""The link connector on its own: retries with the shared backoff, hands over once, cleans up."""

from __future__ import annotations

import threading

from gateway.connector import RECONNECT_BACKOFF, Connector
from saltmarsh.contract.errors import WireError
from saltmarsh.runtime.backoff import BackoffPolicy

FAST = BackoffPolicy(base_s=0.001, cap_s=0.002)


class Flaky:
    """Fails `failures` times (alternating the two kinds of link error), then returns `result`."""

    def __init__(self, failures: int, result: str = "link") -> None:
        self.failures = failures
        self.result = result
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError("down") if self.calls % 2 else WireError("bad CONNACK")
        return self.result


def test_the_reconnect_policy_is_capped_at_one_second_and_jittered() -> None:
    assert (RECONNECT_BACKOFF.base_s, RECONNECT_BACKOFF.cap_s, RECONNECT_BACKOFF.jitter) == (0.1, 1.0, True)


def test_retries_until_connected_then_wakes_and_hands_over_once() -> None:
    woken = threading.Event()
    connect = Flaky(failures=3)
    connector: Connector[str] = Connector("uplink", connect, woken.set, lambda _: None, FAST)
    assert connector.last_failure_ms is None
    connector.start()
    assert woken.wait(5)
    assert connect.calls == 4
    assert connector.last_failure_ms is not None
    assert connector.take() == "link"
    assert connector.take() is None
    connector.stop()


def test_start_while_connecting_does_not_start_a_second_attempt() -> None:
    release = threading.Event()
    calls: list[int] = []

    def connect() -> str:
        calls.append(1)
        release.wait(5)
        return "link"

    woken = threading.Event()
    connector: Connector[str] = Connector("local", connect, woken.set, lambda _: None, FAST)
    connector.start()
    connector.start()
    release.set()
    assert woken.wait(5)
    assert calls == [1]
    connector.stop()


def test_stop_closes_a_connection_that_was_never_taken() -> None:
    closed: list[str] = []
    woken = threading.Event()
    connector: Connector[str] = Connector("local", Flaky(failures=0), woken.set, closed.append, FAST)
    connector.start()
    assert woken.wait(5)
    connector.stop()
    assert closed == ["link"]


def test_stop_ends_the_retries_of_a_link_that_stays_down() -> None:
    connect = Flaky(failures=10**9)
    connector: Connector[str] = Connector("uplink", connect, lambda: None, lambda _: None, RECONNECT_BACKOFF)
    connector.start()
    connector.stop()  # waits out no backoff: the retry wait ends with the stop
    calls = connect.calls
    assert calls >= 1
    assert connector.take() is None
