"""Shared fixtures: real Mosquitto brokers on ephemeral loopback ports, cleaned up by PID; the Salt
event recorder; and a root logger that every test gets back as it found it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from tests.salt_support import EventRecorder

BrokerFactory = Callable[..., Mosquitto]
# Salt and salt-factories log everything at debug in the test process (salt sets the root logger's
# level to 1), and so then do the HTTP clients the Kinesis and Elasticsearch tests poll with: keep
# their warnings and worse for the people reading a failure.
QUIET_LOGGERS = ("salt", "saltfactories", "pytestshellutils", "botocore", "boto3", "urllib3", "elastic_transport")


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


@pytest.fixture(scope="session")
def event_listener() -> Iterator[EventRecorder]:
    """What salt-factories' daemons forward their events to (salt_factories asks for it by this name)."""
    with EventRecorder() as recorder:
        yield recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Give the root logger back as the test found it: a test that runs a service's `main()` in
    process gets `logs.setup`'s JSON handler on the root logger, which would otherwise print every
    later record, Salt's included, under that service's name. This wraps setup, call and teardown,
    outside the handlers pytest adds for each phase."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return (yield)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def pytest_configure(config: pytest.Config) -> None:
    """Quiet Salt's loggers. Salt's pytest plugin also leaves a deferred stderr handler on the root
    logger that replays every record at interpreter exit, into a stream pytest has closed by then:
    remove it."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from salt._logging.impl import shutdown_temp_handler  # type: ignore[import-untyped]
    except ImportError:
        return
    shutdown_temp_handler()
