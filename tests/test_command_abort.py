"""A rollout's abort threshold on real processes: 100 simulated devices of one swarm host behind
a real forwarder, site Mosquitto, cloud Mosquitto and ingester; every fifth device's sensor is
dead, so `read_now` fails on it. The master's dispatcher (the one `saltmarsh cmd send` runs),
reading states back from the sink, stops dispatching at its threshold, and every target's state
adds up to the rollout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saltmarsh.commands.dispatch import Dispatcher
from saltmarsh.commands.rollout import ABORTED, DISPATCHING, RolloutSpec, RolloutStore, Target
from saltmarsh.commands.states import state_reader
from saltmarsh.config.ingester import SinkConfig
from saltmarsh.config.sensor import SwarmConfig, swarm_device_id
from saltmarsh.contract.signature import generate_key, load_private_key
from saltmarsh.mqtt.paho import connect_client, make_client
from saltmarsh.ops.localfleet.fleet import LocalFleet
from saltmarsh.ops.localfleet.processes import wait_until
from tests.e2e import running_fleet
from tests.support import broker_config

pytestmark = pytest.mark.timeout(300)

PEM, PUBLIC = generate_key()
DEVICES, FAULTY = 100, 20
SWARM = SwarmConfig(DEVICES, faulty=FAULTY)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    with running_fleet(
        tmp_path / "fleet",
        sensors=1,
        rate_hz=0.2,  # 20 readings/s in all: the commands are what is measured here
        readings_per_sensor=100_000,
        confirmations={"overtaken_s": 2, "silence_s": 5, "silence_max_s": 10},
        commands={"public_keys": [PUBLIC], "redeliver_s": 5},
        sensor_settings={"swarm": {"devices": DEVICES, "faulty": FAULTY}},
    ) as built:
        assert wait_until(lambda: len(built.status_of("sensor")) == DEVICES, 60), len(built.status_of("sensor"))
        assert wait_until(lambda: all(s.counters.get("connected") for s in built.status_of("sensor")), 60)
        yield built


def test_a_rollout_to_100_devices_a_fifth_failing_stops_at_its_threshold_and_adds_up(
    fleet: LocalFleet, tmp_path: Path
) -> None:
    host = fleet.plan.device(0)
    devices = [swarm_device_id(host, n) for n in range(1, DEVICES + 1)]
    dead = {swarm_device_id(host, n) for n in range(1, DEVICES + 1) if SWARM.is_faulty(n)}
    assert len(dead) == FAULTY
    now_ms = int(time.time() * 1000)
    store = RolloutStore.open(tmp_path / "rollouts.db")
    # 10% failed once 20 results are in; 2 a second, so results come back while it dispatches.
    spec = RolloutSpec(
        rollout="r-abort",
        op="read_now",
        args={},
        target=f"{host}*",
        target_type="glob",
        created_ms=now_ms,
        not_after_ms=now_ms + 120_000,
        run_timeout_s=10,
        max_per_minute=120,
        abort_after_pct=10.0,
        abort_min=20,
    )
    store.create(spec, [Target(host, fleet.plan.site, d) for d in devices])
    client = make_client(broker_config(fleet.cloud_broker.port, "test-commander"))
    connect_client(client, broker_config(fleet.cloud_broker.port, "test-commander"), clean_start=True)
    client.loop_start()
    try:
        assert wait_until(client.is_connected, 10)

        def publish(topic: str, payload: bytes, seconds_left: int) -> None:
            client.publish(topic, payload, qos=1).wait_for_publish(10)

        dispatcher = Dispatcher(
            store,
            load_private_key(PEM),
            publish,
            state_reader(SinkConfig(type="sqlite", path=fleet.plan.sink_path)),
            resend_s=30,
        )
        deadline = time.monotonic() + 150
        while store.status("r-abort") == DISPATCHING and time.monotonic() < deadline:
            dispatcher.step("r-abort")
            time.sleep(0.5)
        assert store.status("r-abort") == ABORTED, store.summary("r-abort", int(time.time() * 1000))
        assert "abort after 10%" in str(store.reason("r-abort"))
        sent = dispatcher.published_total

        # What was sent before the abort still runs and answers: wait for every answer.
        def all_answered() -> bool:
            dispatcher.collect("r-abort")
            return store.summary("r-abort", int(time.time() * 1000)).finished

        assert wait_until(all_answered, 60, interval_s=0.5), store.summary("r-abort", int(time.time() * 1000))
    finally:
        client.loop_stop()
        client.disconnect()
    summary = store.summary("r-abort", int(time.time() * 1000))
    counts = summary.counts
    assert sum(counts.values()) == DEVICES == summary.targets
    assert set(counts) == {"succeeded", "failed", "canceled"}, counts
    assert counts["canceled"] == DEVICES - sent > 0  # never dispatched
    assert counts["succeeded"] + counts["failed"] == sent
    states = {target.device: state for target, _, state in store.targets("r-abort")}
    dispatched = {d for d, s in states.items() if s != "canceled"}
    assert {d for d, s in states.items() if s == "failed"} == dead & dispatched  # the dead, and only they
    assert dispatched == set(devices[:sent])  # in order, up to the abort
    store.close()
