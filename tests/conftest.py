"""Shared fixtures: real Mosquitto brokers on ephemeral loopback ports, cleaned up by PID."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saltmarsh.mosquitto import Mosquitto

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
