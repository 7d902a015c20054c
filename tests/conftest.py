"""Shared fixtures: real Mosquitto brokers on ephemeral loopback ports, cleaned up by PID."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saltmarsh.ops.localfleet.mosquitto import Mosquitto

BrokerFactory = Callable[..., Mosquitto]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start real Mosquitto brokers; every one is stopped at teardown."""
    started: list[Mosquitto] = []

    def start(name: str = "broker", **spec_args: object) -> Mosquitto:
        broker = Mosquitto.on_free_port(name, tmp_path / "brokers", **spec_args).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Mosquitto:
    return broker_factory("cloud")


def pytest_configure(config: pytest.Config) -> None:
    """Salt's pytest plugin leaves a deferred stderr handler on the root logger that replays every
    record at interpreter exit, into a stream pytest has closed by then: remove it."""
    try:
        from salt._logging.impl import shutdown_temp_handler  # type: ignore[import-untyped]
    except ImportError:
        return
    shutdown_temp_handler()
