"""A swarm of simulated devices in one sensor process: its `[swarm]` table, each device's derived
config, and the real `python -m sensor` swarm against a real Mosquitto and a real forwarder.

The forwarder is there to confirm: the swarm runs with end-to-end confirmations, as a site does,
so every device's spool empties only when the forwarder says, on that device's own `ack` topic,
that it has committed the device's readings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from saltmarsh.config.sensor import SwarmConfig, device_configs, sensor_config
from saltmarsh.config.table import Table
from saltmarsh.contract.envelope import Envelope, parse
from saltmarsh.contract.errors import ConfigError
from saltmarsh.contract.topics import ID_PATTERN
from saltmarsh.ops.localfleet import configs
from saltmarsh.ops.localfleet.processes import ServiceProcess, wait_until
from saltmarsh.runtime.status import ServiceStatus, find_status, read_statuses
from sensor.drivers.simulated import SimulatedDriver
from tests.conftest import BrokerFactory
from tests.support import Collector

SITE = "marsh"
HOST = "rack"


def doc(**overrides: Any) -> dict[str, Any]:
    """A sensor config document, in memory: the swarm host `rack`."""
    return {
        "device": HOST,
        "site": SITE,
        "state_dir": "/var/lib/saltmarsh/sensor",
        "status_dir": "/run/saltmarsh/status",
        "broker": {"host": "gw1.local", "username": HOST},
        "driver": {"type": "simulated"},
        **overrides,
    }


def load(**overrides: Any) -> Any:
    return sensor_config(Table(doc(**overrides), "", "sensor.toml"))


# --- the [swarm] table ---------------------------------------------------------------------------

SEEDED = {"type": "simulated", "seed": 10}
# name, the config's overrides, its swarm's (devices, seed_base), each device's driver seed
VALID: list[tuple[str, dict[str, Any], tuple[int, int | None], list[int | None]]] = [
    ("one device", {"swarm": {"devices": 1}}, (1, None), [None]),
    ("seeds from driver.seed", {"swarm": {"devices": 3}, "driver": SEEDED}, (3, None), [11, 12, 13]),
    ("seed_base over driver.seed", {"swarm": {"devices": 2, "seed_base": 100}, "driver": SEEDED}, (2, 100), [101, 102]),
    ("seed_base alone", {"swarm": {"devices": 2, "seed_base": 0}}, (2, 0), [1, 2]),
    ("negative seed_base", {"swarm": {"devices": 2, "seed_base": -5}}, (2, -5), [-4, -3]),
    ("no seed anywhere: each draws its own", {"swarm": {"devices": 2}}, (2, None), [None, None]),
    (
        "replay driver",
        {"swarm": {"devices": 2}, "driver": {"type": "replay", "replay_file": "r.csv"}},
        (2, None),
        [None] * 2,
    ),
    ("the most", {"swarm": {"devices": 1000, "seed_base": 0}}, (1000, 0), list(range(1, 1001))),
    ("a 60-character host, 999 devices", {"device": "h" * 60, "swarm": {"devices": 999}}, (999, None), [None] * 999),
]


@pytest.mark.parametrize(("overrides", "swarm", "seeds"), [r[1:] for r in VALID], ids=[r[0] for r in VALID])
def test_valid_swarm(overrides: dict[str, Any], swarm: tuple[int, int | None], seeds: list[int | None]) -> None:
    cfg = load(**overrides)
    assert cfg.swarm == SwarmConfig(*swarm)
    members = device_configs(cfg)
    assert [m.driver.seed for m in members] == seeds
    assert all(ID_PATTERN.match(m.device) for m in members)


# name, the config's overrides, the key the error names, what it says
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("no devices", {"swarm": {"devices": 0}}, "swarm.devices", "must be 1..1000, got 0"),
    ("negative devices", {"swarm": {"devices": -3}}, "swarm.devices", "must be 1..1000, got -3"),
    ("too many devices", {"swarm": {"devices": 1001}}, "swarm.devices", "must be 1..1000, got 1001"),
    ("devices as text", {"swarm": {"devices": "50"}}, "swarm.devices", "expected an integer, got str '50'"),
    ("devices as a fraction", {"swarm": {"devices": 2.5}}, "swarm.devices", "expected an integer, got float 2.5"),
    ("devices as a flag", {"swarm": {"devices": True}}, "swarm.devices", "expected an integer, got bool True"),
    ("devices missing", {"swarm": {}}, "swarm.devices", "is required"),
    ("seed_base as text", {"swarm": {"devices": 2, "seed_base": "7"}}, "swarm.seed_base", "expected an integer"),
    ("more faulty than devices", {"swarm": {"devices": 2, "faulty": 3}}, "swarm.faulty", "must be an integer 0..2"),
    ("negative faulty", {"swarm": {"devices": 2, "faulty": -1}}, "swarm.faulty", "must be an integer 0..2"),
    ("faulty as text", {"swarm": {"devices": 2, "faulty": "1"}}, "swarm.faulty", "expected an integer"),
    ("a typo", {"swarm": {"devices": 2, "device": 3}}, "swarm.device", "unknown key"),
    ("swarm is not a table", {"swarm": 50}, "swarm", "expected a table, got int"),
    (
        "a DHT cannot be a swarm",
        {"swarm": {"devices": 2}, "driver": {"type": "dht22", "pin": "D4"}},
        "swarm",
        "needs driver.type simulated or replay (a swarm simulates its devices), got 'dht22'",
    ),
    (
        "a 60-character host, 1000 devices",
        {"device": "h" * 60, "swarm": {"devices": 1000}},
        "device",
        f"its device '{'h' * 60}-1000' is over 64 characters",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "detail"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
def test_invalid_swarm_names_the_key(overrides: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**overrides)
    assert caught.value.key == key
    assert detail in caught.value.detail
    assert caught.value.source == "sensor.toml"


# devices, seed_base, the key, what it says: the dataclass checks itself, whoever builds it
SELF_CHECKS: list[tuple[Any, Any, str, str]] = [
    (0, None, "swarm.devices", "must be 1..1000, got 0"),
    (1001, None, "swarm.devices", "must be 1..1000, got 1001"),
    (True, None, "swarm.devices", "must be an integer 1..1000, got True"),
    ("5", None, "swarm.devices", "must be an integer 1..1000, got '5'"),
    (5, 1.5, "swarm.seed_base", "must be an integer, got 1.5"),
    (5, False, "swarm.seed_base", "must be an integer, got False"),
]


@pytest.mark.parametrize(("devices", "seed_base", "key", "detail"), SELF_CHECKS)
def test_swarm_config_checks_itself(devices: Any, seed_base: Any, key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SwarmConfig(devices, seed_base)
    assert (caught.value.key, caught.value.detail) == (key, detail)


@pytest.mark.parametrize(
    ("devices", "faulty", "which"),
    [(100, 20, list(range(5, 101, 5))), (10, 3, [4, 7, 10]), (3, 3, [1, 2, 3]), (5, 0, []), (4, 1, [4])],
)
def test_faulty_devices_are_spread_evenly_and_never_read(devices: int, faulty: int, which: list[int]) -> None:
    members = device_configs(load(swarm={"devices": devices, "faulty": faulty}))
    dead = [n for n, m in enumerate(members, 1) if m.driver.anomalies]
    assert dead == which
    for n in dead:
        driver = SimulatedDriver(members[n - 1].driver, boot_s=0.0)
        assert [driver.read(t) for t in (0.0, 60.0, 86_400.0 * 365)] == [None] * 3
    alive = next(m for n, m in enumerate(members, 1) if n not in dead) if len(dead) < devices else None
    assert alive is None or SimulatedDriver(alive.driver, boot_s=0.0).read(1.0) is not None


def test_without_a_swarm_the_config_is_its_one_device() -> None:
    cfg = load()
    assert cfg.swarm is None
    assert device_configs(cfg) == (cfg,)


def test_each_device_has_its_own_identity_spool_and_session_under_the_hosts_credential() -> None:
    cfg = load(swarm={"devices": 3}, max_readings=7, broker={"host": "gw1.local", "username": HOST})
    members = device_configs(cfg)
    assert [m.device for m in members] == ["rack-001", "rack-002", "rack-003"]
    assert [m.broker.client_id for m in members] == ["sensor-rack-001", "sensor-rack-002", "sensor-rack-003"]
    assert [m.spool_dir for m in members] == [Path(f"/var/lib/saltmarsh/sensor/rack-00{n}/spool") for n in (1, 2, 3)]
    assert {(m.broker.username, m.broker.host, m.site, m.status_dir) for m in members} == {
        (HOST, "gw1.local", SITE, Path("/run/saltmarsh/status"))
    }
    assert {(m.max_readings, m.swarm) for m in members} == {(7, None)}


def test_an_explicit_client_id_is_numbered_per_device() -> None:
    cfg = load(swarm={"devices": 2}, broker={"host": "gw1.local", "client_id": "lab"})
    assert [m.broker.client_id for m in device_configs(cfg)] == ["lab-001", "lab-002"]


# --- the real process ------------------------------------------------------------------------------

DEVICES = 5
READINGS = 25


def device_ids() -> list[str]:
    return [f"{HOST}-{n:03d}" for n in range(1, DEVICES + 1)]


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout_s=10)


def start_site(tmp_path: Path, broker_factory: BrokerFactory, processes: list[ServiceProcess]) -> int:
    """A gateway broker and a forwarder confirming from it (its uplink a cloud broker); the gateway's port."""
    gateway, cloud = broker_factory("gateway"), broker_factory("cloud")
    forwarder = configs.forwarder_config(
        gateway_id="gw1",
        site=SITE,
        local=configs.broker_table(gateway.port),
        uplink=configs.broker_table(cloud.port),
        state_dir=tmp_path / "forwarder",
        status_dir=tmp_path / "status",
        confirm_interval_ms=500,
    )
    path = configs.write_config(tmp_path / "forwarder.toml", forwarder)
    processes.append(ServiceProcess.service("forwarder", "gateway", path, tmp_path / "forwarder.log").start())
    # Subscribed before any device publishes, so nothing waits for a retry.
    ready = wait_until(lambda: _counter(tmp_path, "forwarder", "local_connected"), 20)
    assert ready, processes[-1].log_tail()
    return gateway.port


def _counter(tmp_path: Path, service: str, key: str) -> bool:
    status = find_status(tmp_path / "status", service)
    return status is not None and bool(status.counters.get(key))


def start_swarm(tmp_path: Path, port: int, processes: list[ServiceProcess], max_readings: int) -> ServiceProcess:
    sensor = configs.sensor_config(
        device=HOST,
        site=SITE,
        broker=configs.broker_table(port, keepalive_s=5),
        state_dir=tmp_path / "state",
        status_dir=tmp_path / "status",
        interval_s=0.05,
        max_readings=max_readings,
        model="HW-MD202",
        driver={"type": "simulated"},
        swarm={"devices": DEVICES, "seed_base": 40},
    )
    path = configs.write_config(tmp_path / "swarm.toml", sensor)
    proc = ServiceProcess.service("swarm", "sensor", path, tmp_path / "swarm.log").start()
    processes.append(proc)
    return proc


def by_device(messages: list[mqtt.MQTTMessage]) -> dict[str, list[Envelope]]:
    out: dict[str, list[Envelope]] = {}
    for message in messages:
        envelope = parse(message.topic, bytes(message.payload), int(time.time() * 1000))
        out.setdefault(envelope.device, []).append(envelope)
    return out


def sensor_statuses(tmp_path: Path) -> dict[str, ServiceStatus]:
    return {s.instance: s for s in read_statuses(tmp_path / "status") if s.service == "sensor"}


def test_a_swarm_delivers_each_devices_readings_with_its_own_boot_and_seq(
    tmp_path: Path, broker_factory: BrokerFactory, processes: list[ServiceProcess]
) -> None:
    port = start_site(tmp_path, broker_factory, processes)
    collector = Collector(port, f"saltmarsh/v1/{SITE}/+/reading", client_id="swarm-collector")
    try:
        swarm = start_swarm(tmp_path, port, processes, max_readings=READINGS)
        # It exits by itself once every device has produced its readings and the forwarder has
        # confirmed them all: each spool is then empty.
        assert swarm.wait(60) == 0, swarm.log_tail()
        assert collector.wait_for(lambda msgs: len(msgs) >= DEVICES * READINGS, 10)
        got = by_device(collector.messages)
    finally:
        collector.close()

    assert sorted(got) == device_ids()
    for device, envelopes in got.items():
        assert [e.seq for e in envelopes] == list(range(1, READINGS + 1)), device  # no gap, no repeat
        assert len({e.boot for e in envelopes}) == 1, device
    boots = {device: envelopes[0].boot for device, envelopes in got.items()}
    assert len(set(boots.values())) == DEVICES  # a boot each
    # Their own signal: seeded apart, no two devices send the same series.
    series = {json.dumps([e.metrics for e in envelopes], sort_keys=True) for envelopes in got.values()}
    assert len(series) == DEVICES

    statuses = sensor_statuses(tmp_path)
    assert sorted(statuses) == device_ids()
    assert {s.pid for s in statuses.values()} == {swarm.pid}  # one process
    for device, status in statuses.items():
        final = status.counters
        assert (final["device"], final["boot"], final["last_seq"]) == (device, boots[device], READINGS)
        assert (final["spool_depth"], final["unconfirmed"], final["confirmed_total"]) == (0, 0, READINGS)
        assert final["acknowledgement"] == "end-to-end" and final["connected"] is False
    spools = sorted(p.parent.name for p in (tmp_path / "state").glob("*/spool"))
    assert spools == device_ids()


def test_sigterm_flushes_every_device_and_says_offline(
    tmp_path: Path, broker_factory: BrokerFactory, processes: list[ServiceProcess]
) -> None:
    port = start_site(tmp_path, broker_factory, processes)
    readings = Collector(port, f"saltmarsh/v1/{SITE}/+/reading", client_id="swarm-readings")
    try:
        swarm = start_swarm(tmp_path, port, processes, max_readings=0)  # until stopped
        every_device_sent = lambda msgs: {d for d, e in by_device(msgs).items() if len(e) >= 5} == set(device_ids())  # noqa: E731
        assert readings.wait_for(every_device_sent, 30), swarm.log_tail()
        assert swarm.stop(timeout_s=30) == 0, swarm.log_tail()
        statuses = sensor_statuses(tmp_path)
        last_seqs = {device: int(s.counters["last_seq"]) for device, s in statuses.items()}
        # Flushed: whatever a device produced before the signal reached the gateway broker.
        delivered = lambda msgs: all(  # noqa: E731
            {e.seq for e in by_device(msgs).get(d, [])} >= set(range(1, n + 1)) for d, n in last_seqs.items()
        )
        assert readings.wait_for(delivered, 10)
    finally:
        readings.close()

    assert sorted(statuses) == device_ids()
    for device, status in statuses.items():
        assert status.counters["connected"] is False, device
        assert status.counters["spool_depth"] == 0, device  # confirmed before the goodbye
    presence = Collector(port, f"saltmarsh/v1/{SITE}/+/status", client_id="swarm-presence")
    try:
        assert presence.wait_for(lambda msgs: len(msgs) >= DEVICES, 10)
        retained = {m.topic.split("/")[3]: json.loads(m.payload) for m in presence.messages}
    finally:
        presence.close()
    assert {device: (p["state"], p["boot"]) for device, p in retained.items()} == {
        device: ("offline", status.counters["boot"]) for device, status in statuses.items()
    }
