"""Commands down the real path and their outcomes back: a command published on the cloud broker,
held by the real forwarder, delivered through the site Mosquitto to the real sensor agents, and
each target's state in the SQLite sink, written by the real ingester from the cmdres messages.
Devices offline, superseded commands, deadlines passed at the gateway across restarts of every
process and broker on the way, and a site-wide broadcast."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from saltmarsh.contract.command import Command, new_cmd_id
from saltmarsh.contract.signature import generate_key, load_private_key, sign
from saltmarsh.contract.topics import BROADCAST
from saltmarsh.mqtt.paho import connect_client, make_client
from saltmarsh.ops.localfleet.fleet import LocalFleet
from saltmarsh.ops.localfleet.processes import wait_until
from saltmarsh.sinks.command_state import CommandRecord
from saltmarsh.sinks.sqlite import SqliteSink
from tests.e2e import running_fleet
from tests.support import broker_config

pytestmark = pytest.mark.timeout(300)

PEM, PUBLIC = generate_key()
KEY = load_private_key(PEM)
SITE = "demo"
FAST = {"overtaken_s": 2, "silence_s": 5, "silence_max_s": 10}


class Master:
    """The master's side, as far as the broker sees it: signed commands on the cloud broker."""

    def __init__(self, port: int) -> None:
        self.client = make_client(broker_config(port, "test-master"))
        connect_client(self.client, broker_config(port, "test-master"), clean_start=True)
        self.client.loop_start()
        assert wait_until(self.client.is_connected, 10), "the master's client could not connect"

    def send(self, device: str, op: str, args: dict[str, Any] | None = None, **fields: Any) -> Command:
        now_ms = int(time.time() * 1000)
        cmd = Command(
            cmd_id=new_cmd_id(),
            rollout=fields.pop("rollout", "r-1"),
            site=SITE,
            device=device,
            op=op,
            args=args or {},
            issued_at_ms=now_ms,
            not_after_ms=now_ms + int(fields.pop("expires_in_s", 120) * 1000),
            run_timeout_s=fields.pop("run_timeout_s", 10),
            **fields,
        )
        cmd = sign(cmd, KEY)
        # Across a restart of the cloud broker (the expiry test), paho reconnects on its own.
        assert wait_until(self.client.is_connected, 20), "the master's client is not connected"
        self.client.publish(str(cmd.topic), cmd.encode(), qos=1).wait_for_publish(5)
        time.sleep(0.01)  # distinct, ordered ULIDs
        return cmd

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def states(fleet: LocalFleet, rollout: str | None = None) -> dict[tuple[str, str], CommandRecord]:
    if not fleet.plan.sink_path.exists():
        return {}
    sink = SqliteSink(fleet.plan.sink_path, read_only=True)
    try:
        return {(r.cmd_id, r.device): r for r in sink.command_states(rollout)}
    finally:
        sink.close()


def wait_for_states(fleet: LocalFleet, expected: dict[tuple[str, str], str], timeout_s: float = 60) -> None:
    def matched() -> bool:
        got = states(fleet)
        return all(key in got and got[key].state == state for key, state in expected.items())

    assert wait_until(matched, timeout_s, interval_s=0.5), {k: (v.state, v.reason) for k, v in states(fleet).items()}


def sensor_counters(fleet: LocalFleet, device: str) -> dict[str, Any]:
    found = [s.counters for s in fleet.status_of("sensor") if s.instance == device]
    assert found, f"no status for {device}"
    return dict(found[0])


def forwarder_counters(fleet: LocalFleet) -> dict[str, Any]:
    return dict(fleet.status_of("forwarder")[0].counters)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """One fleet for the module: each test leaves both sensors running, and uses its own rollout."""
    with running_fleet(
        tmp_path_factory.mktemp("commands") / "fleet",
        sensors=2,
        rate_hz=2.0,
        readings_per_sensor=100_000,  # runs until stopped
        confirmations=FAST,
        commands={"public_keys": [PUBLIC], "redeliver_s": 2},
    ) as built:
        assert built.wait_for_counter("sensor", "connected")
        yield built


@pytest.fixture(scope="module")
def master(fleet: LocalFleet) -> Iterator[Master]:
    built = Master(fleet.cloud_broker.port)
    yield built
    built.close()


def test_a_command_runs_on_its_device_and_its_state_reaches_the_sink(fleet: LocalFleet, master: Master) -> None:
    device = fleet.plan.device(0)
    before = forwarder_counters(fleet)
    cmd = master.send(device, "set_interval", {"interval_s": 0.75}, rollout="r-one")
    wait_for_states(fleet, {(cmd.cmd_id, device): "succeeded"})
    record = states(fleet)[(cmd.cmd_id, device)]
    assert record.rollout == "r-one" and '"interval_s":0.75' in record.result_json
    assert record.reported_by.startswith(f"{device}/")  # the device's own answer, not the gateway's
    assert wait_until(lambda: sensor_counters(fleet, device)["interval_s"] == 0.75, 10)
    assert sensor_counters(fleet, fleet.plan.device(1))["interval_s"] == 0.5  # the other one untouched
    # The forwarder let go of it when the device's final answer passed by (its status lags a second).
    done = before["commands_done_total"] + 1
    assert wait_until(lambda: forwarder_counters(fleet)["commands_done_total"] == done, 10), forwarder_counters(fleet)
    after = forwarder_counters(fleet)
    assert (after["commands_received_total"] - before["commands_received_total"], after["commands_held"]) == (1, 0)


def test_an_offline_device_gets_only_the_last_of_five_coalesced_commands(fleet: LocalFleet, master: Master) -> None:
    device = fleet.plan.device(0)
    sensor = fleet.sensors[0]
    sensor.stop()
    sent = [
        master.send(device, "set_interval", {"interval_s": 1.0 + n}, coalesce="interval", rollout="r-co")
        for n in range(5)
    ]
    first_four, last = sent[:4], sent[4]
    wait_for_states(fleet, {(c.cmd_id, device): "canceled" for c in first_four} | {(last.cmd_id, device): "at_gateway"})
    fleet.restart(sensor)
    wait_for_states(fleet, {(last.cmd_id, device): "succeeded"})
    got = states(fleet, "r-co")
    assert {got[(c.cmd_id, device)].reason for c in first_four} == {"superseded"}
    assert {got[(c.cmd_id, device)].reported_by.split("/")[0] for c in first_four} == {"gw1"}
    assert wait_until(lambda: sensor_counters(fleet, device).get("interval_s") == 5.0, 10)
    assert sensor_counters(fleet, device)["commands_succeeded_total"] == 1  # one run, the last value


def test_a_deadline_passed_at_the_gateway_across_restarts_is_expired_there(fleet: LocalFleet, master: Master) -> None:
    """The issue's test, at a tenth of its length: a 6 s deadline to an offline device; the cloud
    broker, the site Mosquitto and the forwarder all restarted; the device back after 9 s."""
    device = fleet.plan.device(0)
    sensor = fleet.sensors[0]
    sensor.stop()
    cmd = master.send(device, "read_now", expires_in_s=6, rollout="r-exp")
    wait_for_states(fleet, {(cmd.cmd_id, device): "at_gateway"}, timeout_s=20)
    started = time.monotonic()
    fleet.stop_cloud()
    fleet.start_cloud()
    fleet.gateway_broker.stop()
    fleet.gateway_broker.start()
    fleet.forwarder.kill9()
    fleet.restart(fleet.forwarder)
    time.sleep(max(0.0, 9 - (time.monotonic() - started)))
    fleet.restart(sensor)
    wait_for_states(fleet, {(cmd.cmd_id, device): "expired"})
    record = states(fleet)[(cmd.cmd_id, device)]
    assert record.hop == "gateway" and record.reported_by.startswith("gw1/")
    time.sleep(3)
    counters = sensor_counters(fleet, device)
    assert counters.get("commands_received_total", 0) == 0, counters  # never delivered, never run


def test_a_forged_command_is_held_by_no_one(fleet: LocalFleet, master: Master) -> None:
    device = fleet.plan.device(0)
    other_key = load_private_key(generate_key()[0])
    now_ms = int(time.time() * 1000)
    forged = sign(
        Command(
            cmd_id=new_cmd_id(),
            rollout="r-x",
            site=SITE,
            device=device,
            op="restart_agent",
            issued_at_ms=now_ms,
            not_after_ms=now_ms + 60_000,
            run_timeout_s=5,
        ),
        other_key,
    )
    tampered = replace(sign(replace(forged, rollout="r-y"), KEY), op="read_now")
    forged_before = forwarder_counters(fleet).get("commands_forged_total", 0)
    received_before = sensor_counters(fleet, device).get("commands_received_total", 0)
    master.client.publish(str(forged.topic), forged.encode(), qos=1).wait_for_publish(5)
    master.client.publish(str(tampered.topic), tampered.encode(), qos=1).wait_for_publish(5)
    assert wait_until(lambda: forwarder_counters(fleet).get("commands_forged_total") == forged_before + 2, 10)
    time.sleep(2)
    assert states(fleet, "r-x") == {} and states(fleet, "r-y") == {}
    assert fleet.sensors[0].alive()  # not restarted
    assert sensor_counters(fleet, device).get("commands_received_total", 0) == received_before


def test_the_gateways_own_ops_change_the_forwarder_and_a_commanded_restart_runs_once(
    fleet: LocalFleet, master: Master
) -> None:
    gateway = fleet.plan.gateway_id
    rate = master.send(gateway, "set_drain_rate", {"messages_per_s": 321}, rollout="r-gw")
    wait_for_states(fleet, {(rate.cmd_id, gateway): "succeeded"})
    assert states(fleet)[(rate.cmd_id, gateway)].reported_by.startswith(f"{gateway}/")
    assert wait_until(lambda: forwarder_counters(fleet)["drain_rate_limit"] == 321, 10), forwarder_counters(fleet)
    forwarder = fleet.forwarder
    restart = master.send(gateway, "restart_forwarder", rollout="r-gw-restart")
    assert forwarder.wait(30) == 75, forwarder.log_tail()  # EX_TEMPFAIL: the unit's Restart=on-failure
    fleet.restart(forwarder)
    wait_for_states(fleet, {(restart.cmd_id, gateway): "succeeded"})
    # The same command again (a resend the master makes when no hop answered): the journal's answer.
    master.client.publish(str(restart.topic), restart.encode(), qos=1).wait_for_publish(5)
    assert wait_until(lambda: forwarder_counters(fleet).get("own_commands_duplicates_total") == 1, 15)
    assert forwarder.alive()
    assert forwarder_counters(fleet)["drain_rate_limit"] != 321  # a command's change lasts until a restart


def test_a_broadcast_reaches_every_device_of_the_site(fleet: LocalFleet, master: Master) -> None:
    """Last in the module: it is held, and delivered again, until its deadline."""
    devices = [fleet.plan.device(i) for i in range(2)]
    before = {d: sensor_counters(fleet, d).get("commands_succeeded_total", 0) for d in devices}
    cmd = master.send(BROADCAST, "identify", {"duration_s": 1.0}, rollout="r-all", expires_in_s=30)
    wait_for_states(fleet, {(cmd.cmd_id, d): "succeeded" for d in devices})
    # Held at the gateway until its deadline (no single answer ends a broadcast), run once each.
    time.sleep(4)  # two redeliveries
    for device in devices:
        assert sensor_counters(fleet, device)["commands_succeeded_total"] == before[device] + 1
