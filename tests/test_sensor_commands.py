"""A sensor takes commands: its parts alone (the time left, the LED, the agent's outcomes, the
config), then the real `python -m sensor` process against real Mosquitto, commanded as its
gateway's forwarder would: each op run once and reported, duplicates answered from the journal
(a kill -9 between intent and result among them), forged, misaddressed and retained commands
refused and counted, and a commanded restart that exits for `Restart=on-failure`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from saltmarsh.config.commands import CommandsConfig
from saltmarsh.config.sensor import SensorConfig, sensor_config
from saltmarsh.config.table import Table
from saltmarsh.contract.command import Command, new_cmd_id
from saltmarsh.contract.command_state import CommandState
from saltmarsh.contract.envelope import parse
from saltmarsh.contract.errors import ConfigError
from saltmarsh.contract.signature import generate_key, load_private_key, sign
from saltmarsh.mqtt.paho import connect_client, make_client
from saltmarsh.ops.localfleet import configs
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess, wait_until
from saltmarsh.runtime.spool import Lane, Spool
from saltmarsh.runtime.status import find_status
from sensor.agent import Agent
from sensor.commands import EXIT_RESTART, Led, command_topics, remaining_of
from sensor.drivers import open_driver
from tests.conftest import BrokerFactory
from tests.support import Collector, broker_config

PEM, PUBLIC = generate_key()
OTHER_PEM, _ = generate_key()
KEY, OTHER_KEY = load_private_key(PEM), load_private_key(OTHER_PEM)
SITE, DEVICE = "marsh", "pi-1"
CMD_TOPIC = f"saltmarsh/v1/{SITE}/{DEVICE}/cmd"
CMDRES_TOPIC = f"saltmarsh/v1/{SITE}/{DEVICE}/cmdres"


# -- the parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "expiry_s", "expected"),
    [
        ([("remaining_ms", "1500")], None, 1500),
        ([("remaining_ms", "1500")], 9, 1500),  # the gateway's ms beat the broker's whole seconds
        ([], 7, 7000),
        ([("remaining_ms", "soon")], 3, 3000),
        ([("remaining_ms", "-5")], None, None),
        ([("msg", "r:1")], None, None),
        ([], None, None),
    ],
)
def test_the_time_left_a_gateway_hands_over(
    props: list[tuple[str, str]], expiry_s: int | None, expected: int | None
) -> None:
    assert remaining_of(props, expiry_s) == expected


def sensor_cfg(tmp_path: Path, **doc: Any) -> SensorConfig:
    base = {
        "device": DEVICE,
        "site": SITE,
        "state_dir": str(tmp_path / "state"),
        "status_dir": str(tmp_path / "status"),
        "broker": {"host": "127.0.0.1", "port": 1},
        "commands": {"public_keys": [PUBLIC]},
    }
    return sensor_config(Table(base | doc))


def test_a_device_listens_on_its_own_and_its_sites_broadcast_topic(tmp_path: Path) -> None:
    assert command_topics(sensor_cfg(tmp_path)) == [CMD_TOPIC, f"saltmarsh/v1/{SITE}/_all/cmd"]


@pytest.mark.parametrize(
    ("commands", "key", "detail"),
    [
        ({"public_keys": "abc"}, "commands.public_keys", "expected a list"),
        ({"public_keys": ["not base64!"]}, "commands.public_keys[0]", "is not base64"),
        ({"public_keys": ["AAAA"]}, "commands.public_keys[0]", "decodes to 3 bytes"),
        ({"public_keys": [7]}, "commands.public_keys[0]", "expected a base64 string"),
        ({"public_keys": [PUBLIC] * 9}, "commands.public_keys", "at most 8"),
        ({"queue_max": 0}, "commands.queue_max", "outside 1..10000"),
        ({"public_key": PUBLIC}, "commands.public_key", "unknown"),
    ],
)
def test_a_bad_commands_table_names_the_key(tmp_path: Path, commands: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sensor_cfg(tmp_path, commands=commands)
    assert caught.value.key == key and detail in caught.value.detail, (caught.value.key, caught.value.detail)


def test_without_a_key_a_device_takes_no_commands(tmp_path: Path) -> None:
    assert sensor_cfg(tmp_path, commands={}).commands == CommandsConfig()
    assert not CommandsConfig().enabled and CommandsConfig((PUBLIC,)).enabled


def test_the_led_blinks_then_goes_back_to_what_it_was(tmp_path: Path) -> None:
    led_dir = tmp_path / "ACT"
    led_dir.mkdir()
    (led_dir / "trigger").write_text("none timer [mmc0] heartbeat\n")
    led = Led([tmp_path / "led0", led_dir])
    assert led.blink(0.3) == "ACT"
    assert (led_dir / "trigger").read_text() == "timer"
    assert led.blink(0.3) == "ACT"  # again while blinking: longer, and still back to mmc0
    assert wait_until(lambda: (led_dir / "trigger").read_text() == "mmc0", 3)
    assert Led([tmp_path / "nothing"]).blink(1) is None


def test_an_outcome_is_spooled_with_the_next_seq_in_the_kept_lane(tmp_path: Path) -> None:
    from saltmarsh.contract.command_state import CommandOutcome

    cfg = sensor_cfg(tmp_path)
    spool = Spool.open(cfg.spool_dir, 1_000_000)
    try:
        agent = Agent(cfg, open_driver(cfg.driver), spool, "b1")
        reading = agent.tick(time.time())
        assert reading is not None and reading.seq == 1
        outcome = CommandOutcome(new_cmd_id(), "r-1", CommandState.SUCCEEDED, result={"interval_s": 5.0})
        envelope = agent.spool_outcome(outcome, time.time())
        assert envelope is not None and envelope.seq == 2 and agent.last_seq == 2
        assert str(envelope.topic) == CMDRES_TOPIC and envelope.cmd == outcome
        assert spool.stats().depth_messages == 2
        kept = [seg for seg in spool.pending() if seg.lane is Lane.KEEP]
        assert [topic for seg in kept for topic, _ in spool.lease(seg) or []] == [CMDRES_TOPIC]
    finally:
        spool.close()


def test_a_new_interval_applies_at_once(tmp_path: Path) -> None:
    cfg = replace(sensor_cfg(tmp_path), interval_s=3600.0)
    spool = Spool.open(cfg.spool_dir, 1_000_000)
    stop = threading.Event()
    agent = Agent(cfg, open_driver(cfg.driver), spool, "b1")
    producing = threading.Thread(target=agent.produce, args=(stop,))
    producing.start()
    try:
        assert wait_until(lambda: agent.readings_total == 1, 5)
        assert agent.set_interval(0.5) == 3600.0
        # Not an hour from now: within a slice of the old wait, then every half second.
        assert wait_until(lambda: agent.readings_total >= 4, 6), agent.readings_total
    finally:
        stop.set()
        producing.join(5)
        spool.close()


# -- the real process -------------------------------------------------------------------------


def command(**changes: Any) -> Command:
    now_ms = int(time.time() * 1000)
    base = Command(
        cmd_id=new_cmd_id(),
        rollout="r-1",
        site=SITE,
        device=DEVICE,
        op="set_interval",
        args={"interval_s": 30.0},
        issued_at_ms=now_ms,
        not_after_ms=now_ms + 600_000,
        run_timeout_s=10,
    )
    return replace(base, **changes)


class Commander:
    """What a forwarder does on the site broker: publish commands at QoS 1, never retained (unless told)."""

    def __init__(self, port: int) -> None:
        self.client = make_client(broker_config(port, "test-commander"))
        connect_client(self.client, broker_config(port, "test-commander"), clean_start=True)
        self.client.loop_start()
        assert wait_until(self.client.is_connected, 10), "the commander could not connect"

    def send(self, cmd: Command, key: Any = KEY, *, topic: str | None = None, retain: bool = False) -> None:
        payload = sign(cmd, key).encode() if key is not None else cmd.encode()
        self.client.publish(topic or str(cmd.topic), payload, qos=1, retain=retain).wait_for_publish(5)

    def send_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(tmp_path: Path, port: int, **overrides: Any) -> Path:
    doc = configs.sensor_config(
        device=DEVICE,
        site=SITE,
        broker=configs.broker_table(port, keepalive_s=5),
        state_dir=tmp_path / "state",
        status_dir=tmp_path / "status",
        interval_s=3600,  # one reading at start; every later one is a command's
        confirmations={"mode": "broker"},
        commands={"public_keys": [PUBLIC]},
        **overrides,
    )
    return configs.write_config(tmp_path / "sensor.toml", doc)


Outcome = tuple[str, CommandState, str | None, dict[str, Any]]


def outcomes(messages: list[mqtt.MQTTMessage]) -> list[Outcome]:
    now_ms = int(time.time() * 1000)
    found = []
    for m in messages:
        env = parse(m.topic, bytes(m.payload), now_ms)
        assert env.cmd is not None
        found.append((env.cmd.cmd_id, env.cmd.state, env.cmd.reason, dict(env.cmd.result)))
    return found


def readings(messages: list[mqtt.MQTTMessage]) -> int:
    return sum(1 for m in messages if m.topic.endswith("/reading"))


def counters(tmp_path: Path) -> dict[str, Any]:
    status = find_status(tmp_path / "status", "sensor", DEVICE)
    assert status is not None, "no status file yet"
    return dict(status.counters)


class Rig:
    def __init__(self, tmp_path: Path, broker: Mosquitto, config: Path) -> None:
        self.tmp_path, self.broker, self.config = tmp_path, broker, config
        self.results = Collector(broker.port, CMDRES_TOPIC, client_id="test-results")
        self.data = Collector(broker.port, f"saltmarsh/v1/{SITE}/{DEVICE}/reading", client_id="test-readings")
        self.commander = Commander(broker.port)
        self.sensor: ServiceProcess | None = None

    def start(self) -> ServiceProcess:
        """Start the agent; back once its first reading arrived, so its subscriptions are in place
        (it subscribes on connecting, before it publishes anything)."""
        before = readings(self.data.messages)
        self.sensor = ServiceProcess.service("sensor", "sensor", self.config, self.tmp_path / "sensor.log").start()
        assert wait_until(lambda: readings(self.data.messages) > before, 20), self.log()
        return self.sensor

    def log(self) -> str:
        return self.sensor.log_tail() if self.sensor else ""

    def wait_outcomes(self, n: int, timeout_s: float = 20) -> list[Outcome]:
        assert self.results.wait_for(lambda ms: len(ms) >= n, timeout_s), (outcomes(self.results.messages), self.log())
        return outcomes(self.results.messages)

    def close(self) -> None:
        if self.sensor is not None:
            self.sensor.stop(timeout_s=10)
        self.commander.close()
        self.results.close()
        self.data.close()


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[Rig]:
    built = Rig(tmp_path, broker, write_config(tmp_path, broker.port))
    yield built
    built.close()


def test_an_op_runs_and_reports_running_then_its_result(rig: Rig) -> None:
    rig.start()
    cmd = command(args={"interval_s": 45.0})
    rig.commander.send(cmd)
    assert rig.wait_outcomes(2) == [
        (cmd.cmd_id, CommandState.RUNNING, None, {}),
        (cmd.cmd_id, CommandState.SUCCEEDED, None, {"interval_s": 45.0, "was_s": 3600.0}),
    ]
    assert wait_until(lambda: counters(rig.tmp_path)["interval_s"] == 45.0, 5)
    found = counters(rig.tmp_path)
    assert (found["commands_succeeded_total"], found["outcomes_total"]) == (1, 2)


def test_a_command_delivered_three_times_runs_once(rig: Rig) -> None:
    rig.start()
    cmd = command(op="read_now", args={})
    for _ in range(3):
        rig.commander.send(cmd)
    got = rig.wait_outcomes(4)
    time.sleep(1.0)  # nothing more comes
    got = outcomes(rig.results.messages)
    assert [state for _, state, _, _ in got] == [CommandState.RUNNING] + [CommandState.SUCCEEDED] * 3, got
    assert len({json.dumps(result) for _, _, _, result in got[1:]}) == 1  # the same answer each time
    assert readings(rig.data.messages) == 2  # the one at start, and the command's: one side effect
    assert counters(rig.tmp_path)["commands_duplicates_total"] == 2


def test_a_kill_between_intent_and_result_reports_interrupted_and_never_runs_again(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = write_config(tmp_path, broker.port, driver={"type": "simulated", "read_time_s": 2.0})
    rig = Rig(tmp_path, broker, config)
    try:
        sensor = rig.start()
        cmd = command(op="read_now", args={})
        rig.commander.send(cmd)
        assert rig.wait_outcomes(1)[0][1] is CommandState.RUNNING  # the intent is in the journal
        sensor.kill9()  # inside the 2 s read
        rig.start()
        before = readings(rig.data.messages)
        rig.commander.send(cmd)
        rig.commander.send(cmd)
        got = rig.wait_outcomes(3)
        time.sleep(1.0)
        got = outcomes(rig.results.messages)
        assert [(state, reason) for _, state, reason, _ in got] == [
            (CommandState.RUNNING, None),
            (CommandState.FAILED, "interrupted"),
            (CommandState.FAILED, "interrupted"),
        ], got
        assert readings(rig.data.messages) == before == 2  # one at each start, none by the command
    finally:
        rig.close()


# Each untrustworthy command, and the counter that must count it (one device, sent in turn).
UNTRUSTED: list[tuple[str, Any, str]] = [
    ("bad signature", lambda c: c.send_raw(CMD_TOPIC, _tampered()), "commands_forged_total"),
    ("another key", lambda c: c.send(command(), OTHER_KEY), "commands_forged_total"),
    ("unsigned", lambda c: c.send(command(), None), "commands_forged_total"),
    ("another device", lambda c: c.send(command(device="pi-2"), topic=CMD_TOPIC), "commands_invalid_total"),
    ("another site", lambda c: c.send(command(site="fen"), topic=CMD_TOPIC), "commands_invalid_total"),
    ("not JSON", lambda c: c.send_raw(CMD_TOPIC, b"{set_interval"), "commands_invalid_total"),
    ("an unknown field", lambda c: c.send_raw(CMD_TOPIC, _with_field("sudo", True)), "commands_invalid_total"),
]


def test_a_command_it_cannot_trust_is_refused_and_counted_and_nothing_runs(rig: Rig) -> None:
    rig.start()
    expected: dict[str, int] = {}

    def seen() -> dict[str, Any]:
        return {key: counters(rig.tmp_path).get(key) for key in expected}

    for name, send, counter in UNTRUSTED:
        send(rig.commander)
        expected[counter] = expected.get(counter, 0) + 1
        assert wait_until(lambda: seen() == expected, 10), (name, seen())
    time.sleep(0.5)
    assert rig.results.count() == 0  # no report: a forger must not be able to write state
    found = counters(rig.tmp_path)
    assert (found["interval_s"], found["commands_received_total"], found["commands_succeeded_total"]) == (
        3600.0,
        len(UNTRUSTED),
        0,
    )


def _tampered() -> bytes:
    doc = json.loads(sign(command(), KEY).encode())
    doc["args"]["interval_s"] = 1.0
    return json.dumps(doc).encode()


def _with_field(name: str, value: Any) -> bytes:
    doc = json.loads(sign(command(), KEY).encode())
    doc[name] = value
    return json.dumps(doc).encode()


def test_a_retained_command_is_refused_at_every_reconnect(tmp_path: Path, broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    rig = Rig(tmp_path, broker, write_config(tmp_path, broker.port))
    try:
        rig.commander.send(command(), retain=True)  # left on the broker before the device connects
        sensor = rig.start()
        assert wait_until(lambda: counters(tmp_path).get("commands_retained_total") == 1, 10), counters(tmp_path)
        sensor.stop(timeout_s=10)
        rig.start()  # a reconnect: the broker hands it over again, and again it is refused
        assert wait_until(lambda: counters(tmp_path).get("commands_retained_total") == 1, 10), counters(tmp_path)
        assert rig.results.count() == 0 and counters(tmp_path)["interval_s"] == 3600.0
    finally:
        rig.commander.send_raw(CMD_TOPIC, b"", retain=True)
        rig.close()


def test_bad_args_and_an_expired_deadline_are_answered(rig: Rig) -> None:
    rig.start()
    now_ms = int(time.time() * 1000)
    wrong_type = command(args={"interval_s": "fast"})
    too_small = command(args={"interval_s": 0.01})
    unknown = command(op="launch", args={})
    expired = command(issued_at_ms=now_ms - 60_000, not_after_ms=now_ms - 1)
    for cmd in (wrong_type, too_small, unknown, expired):
        rig.commander.send(cmd)
    got = {cmd_id: (state, reason) for cmd_id, state, reason, _ in rig.wait_outcomes(4)}
    assert got[wrong_type.cmd_id][0] is CommandState.REJECTED and "interval_s" in str(got[wrong_type.cmd_id][1])
    assert got[too_small.cmd_id][0] is CommandState.REJECTED and "interval_s" in str(got[too_small.cmd_id][1])
    assert got[unknown.cmd_id][0] is CommandState.REJECTED and "launch" in str(got[unknown.cmd_id][1])
    assert got[expired.cmd_id][0] is CommandState.EXPIRED
    assert counters(rig.tmp_path)["interval_s"] == 3600.0


def test_a_commanded_restart_reports_then_exits_for_the_unit_to_restart(rig: Rig) -> None:
    sensor = rig.start()
    cmd = command(op="restart_agent", args={})
    rig.commander.send(cmd)
    assert sensor.wait(20) == EXIT_RESTART, rig.log()
    got = rig.wait_outcomes(2)
    assert got[-1][:2] == (cmd.cmd_id, CommandState.SUCCEEDED)
    # Started again by its unit, a duplicate delivery gets the same answer and no second restart.
    second = rig.start()
    rig.commander.send(cmd)
    assert rig.results.wait_for(lambda ms: len(ms) >= 3, 10)
    assert outcomes(rig.results.messages)[-1][:2] == (cmd.cmd_id, CommandState.SUCCEEDED)
    time.sleep(1.0)
    assert second.alive()
