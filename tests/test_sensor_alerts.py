"""Threshold alerts: the edge-triggered rule, the `[alerts]` config, and the agent spooling each
alert in the KEEP lane right after the reading that raised it, in one append, on the next seq."""

from __future__ import annotations

import logging
import math
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

import sensor.agent as sensor_agent
from saltmarsh.config import BrokerConfig, DriverConfig, SensorConfig
from saltmarsh.config.confirmations import AckMode, ConfirmationsConfig
from saltmarsh.config.sensor import AlertsConfig, AlertThreshold, Bound, device_configs, sensor_config
from saltmarsh.config.table import Table
from saltmarsh.contract.envelope import Envelope, parse
from saltmarsh.contract.errors import ConfigError, SpoolError
from saltmarsh.contract.mint import mint, mint_alert
from saltmarsh.contract.topics import Channel
from saltmarsh.runtime.spool import Lane, Record, Segment, Spool
from sensor.agent import Agent
from sensor.alerts import ThresholdWatch
from sensor.device import counters
from sensor.drivers import Driver, Sample
from sensor.sender import SpoolSender

ABOVE, BELOW = Bound.ABOVE, Bound.BELOW
HOT = AlertThreshold("temperature", ABOVE, 30.0)
COLD = AlertThreshold("temperature", BELOW, 5.0)
DRY = AlertThreshold("humidity", BELOW, 20.0)
UNITS = {"temperature": "°C", "humidity": "%"}
T0 = 1_700_000_000.0

# The rule. Each row: the thresholds, then one reading's metrics after another, and for each the
# crossings it makes as (alert name, metric, value); every reading is committed before the next.
Reading = dict[str, float]
Fired = list[tuple[str, str, float]]
WATCH_ROWS: dict[str, tuple[tuple[AlertThreshold, ...], list[tuple[Reading, Fired]]]] = {
    "inside to above fires once": (
        (HOT,),
        [({"temperature": 25.0}, []), ({"temperature": 30.5}, [("threshold_above", "temperature", 30.5)])],
    ),
    "the first reading beyond fires": ((HOT,), [({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)])]),
    "staying above does not fire again": (
        (HOT,),
        [
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
            ({"temperature": 35.0}, []),
            ({"temperature": 30.1}, []),
        ],
    ),
    "back inside, then above fires again": (
        (HOT,),
        [
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
            ({"temperature": 29.0}, []),
            ({"temperature": 32.0}, [("threshold_above", "temperature", 32.0)]),
        ],
    ),
    "equal to the threshold is inside": (
        (HOT,),
        [
            ({"temperature": 30.0}, []),
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
            ({"temperature": 30.0}, []),
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
        ],
    ),
    "below fires going under, once": (
        (DRY,),
        [
            ({"humidity": 40.0}, []),
            ({"humidity": 19.5}, [("threshold_below", "humidity", 19.5)]),
            ({"humidity": 10.0}, []),
            ({"humidity": 20.0}, []),
            ({"humidity": 15.0}, [("threshold_below", "humidity", 15.0)]),
        ],
    ),
    "going above does not trip a below": ((DRY,), [({"humidity": 99.0}, [])]),
    "two metrics at once": (
        (HOT, DRY),
        [
            ({"temperature": 20.0, "humidity": 50.0}, []),
            (
                {"temperature": 31.0, "humidity": 12.0},
                [("threshold_above", "temperature", 31.0), ("threshold_below", "humidity", 12.0)],
            ),
            ({"temperature": 31.0, "humidity": 30.0}, []),
            ({"temperature": 31.0, "humidity": 12.0}, [("threshold_below", "humidity", 12.0)]),
        ],
    ),
    "a metric absent from a reading changes nothing": (
        (HOT,),
        [
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
            ({"humidity": 50.0}, []),
            ({"temperature": 32.0}, []),
            ({"humidity": 50.0}, []),
            ({"temperature": 25.0}, []),
            ({"humidity": 50.0}, []),
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
        ],
    ),
    "above and below of one metric": (
        (HOT, COLD),
        [
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
            ({"temperature": 4.0}, [("threshold_below", "temperature", 4.0)]),
            ({"temperature": 31.0}, [("threshold_above", "temperature", 31.0)]),
        ],
    ),
    "no thresholds, no alerts": ((), [({"temperature": 99.0}, []), ({"temperature": -99.0}, [])]),
}


@pytest.mark.parametrize("case", list(WATCH_ROWS))
def test_threshold_watch(case: str) -> None:
    thresholds, readings = WATCH_ROWS[case]
    watch = ThresholdWatch(AlertsConfig(thresholds))
    for metrics, fired in readings:
        check = watch.check(metrics)
        assert [(c.name, c.threshold.metric, c.value) for c in check.crossings] == fired, metrics
        watch.commit(check)


def test_a_check_not_committed_leaves_the_state_as_it_was() -> None:
    watch = ThresholdWatch(AlertsConfig((HOT,)))
    assert len(watch.check({"temperature": 31.0}).crossings) == 1
    assert len(watch.check({"temperature": 31.0}).crossings) == 1, "the first check was never spooled"
    assert watch.tripped == frozenset()


def test_a_crossing_says_what_its_alert_carries() -> None:
    (crossing,) = ThresholdWatch(AlertsConfig((HOT,))).check({"temperature": 31.5, "humidity": 40.0}).crossings
    assert crossing.name == "threshold_above"
    assert crossing.metrics == {"temperature": 31.5, "threshold": 30.0}
    assert crossing.units(UNITS) == {"temperature": "°C", "threshold": "°C"}
    assert crossing.units({}) == {}
    assert crossing.detail == "temperature 31.5 is above 30.0"


# The config. A minimal sensor.toml, then the `[alerts]` part of each row.
BASE_TOML = 'device = "pi-7"\nsite = "marsh"\nstate_dir = "/tmp/s"\nstatus_dir = "/tmp/t"\nbroker = {}\n'


def load(alerts_toml: str) -> SensorConfig:
    return sensor_config(Table(tomllib.loads(BASE_TOML + alerts_toml), "", "sensor.toml"))


GOOD_CONFIG: list[tuple[str, str, tuple[AlertThreshold, ...]]] = [
    ("no table", "", ()),
    ("empty table", "[alerts]\n", ()),
    ("empty bounds", "[alerts.above]\n[alerts.below]\n", ()),
    ("above", "[alerts.above]\ntemperature = 30.0\n", (HOT,)),
    ("below", "[alerts.below]\nhumidity = 20.0\n", (DRY,)),
    ("an integer", "[alerts.above]\ntemperature = 30\n", (HOT,)),
    ("negative", "[alerts.below]\ntemperature = -5.5\n", (AlertThreshold("temperature", BELOW, -5.5),)),
    ("quoted dotted name", '[alerts.above]\n"soil.moisture" = 0.4\n', (AlertThreshold("soil.moisture", ABOVE, 0.4),)),
    (
        "inline tables",
        "[alerts]\nabove = {temperature = 30.0}\nbelow = {humidity = 20.0, temperature = 5.0}\n",
        (HOT, DRY, COLD),
    ),
    ("both bounds, file order", "[alerts.below]\ntemperature = 5.0\n[alerts.above]\ntemperature = 30.0\n", (HOT, COLD)),
]


@pytest.mark.parametrize(("alerts_toml", "thresholds"), [r[1:] for r in GOOD_CONFIG], ids=[r[0] for r in GOOD_CONFIG])
def test_alerts_config_loads(alerts_toml: str, thresholds: tuple[AlertThreshold, ...]) -> None:
    assert load(alerts_toml).alerts == AlertsConfig(thresholds)


# Each bad row: the `[alerts]` text, the key the error must name, a fragment of its detail.
BAD_CONFIG: list[tuple[str, str, str, str]] = [
    ("text", '[alerts.above]\ntemperature = "hot"\n', "alerts.above.temperature", "expected a finite number"),
    ("nan", "[alerts.above]\ntemperature = nan\n", "alerts.above.temperature", "expected a finite number"),
    ("inf", "[alerts.below]\nhumidity = -inf\n", "alerts.below.humidity", "expected a finite number"),
    ("bool", "[alerts.above]\ntemperature = true\n", "alerts.above.temperature", "expected a finite number"),
    ("list", "[alerts.above]\ntemperature = [30]\n", "alerts.above.temperature", "expected a finite number"),
    ("bare dotted key", "[alerts.above]\ntemp.c = 30\n", "alerts.above.temp", "expected a finite number"),
    ("bad metric name", '[alerts.above]\n"-temp" = 30\n', "alerts.above.-temp", "must match"),
    ("space in name", '[alerts.below]\n"air temp" = 3\n', "alerts.below.air temp", "must match"),
    ("name too long", f'[alerts.above]\n"{"t" * 65}" = 3\n', f"alerts.above.{'t' * 65}", "must match"),
    ("reserved name", "[alerts.above]\nthreshold = 3\n", "alerts.above.threshold", "is reserved"),
    ("unknown bound", "[alerts.sideways]\ntemperature = 3\n", "alerts.sideways", "unknown key"),
    ("unknown key", "[alerts]\nhysteresis = 0.5\n", "alerts.hysteresis", "unknown key"),
    ("bound not a table", "[alerts]\nabove = 30\n", "alerts.above", "expected a table"),
    ("alerts not a table", "alerts = 30\n", "alerts", "expected a table"),
    (
        "below not under above",
        "[alerts.above]\ntemperature = 30\n[alerts.below]\ntemperature = 30\n",
        "alerts.below.temperature",
        "is not below alerts.above.temperature 30.0",
    ),
]


@pytest.mark.parametrize(("alerts_toml", "key", "detail"), [r[1:] for r in BAD_CONFIG], ids=[r[0] for r in BAD_CONFIG])
def test_bad_alerts_config_names_the_key(alerts_toml: str, key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(alerts_toml)
    assert (caught.value.key, caught.value.source) == (key, "sensor.toml")
    assert detail in caught.value.detail


# The dataclasses refuse the same, built by hand.
BAD_THRESHOLDS: list[tuple[str, Any, Any, Any, str]] = [
    ("nan", "temperature", ABOVE, math.nan, "alerts.above.temperature"),
    ("text", "temperature", BELOW, "5", "alerts.below.temperature"),
    ("bool", "temperature", ABOVE, False, "alerts.above.temperature"),
    ("bad name", "temp/c", ABOVE, 1.0, "alerts.above.temp/c"),
    ("reserved", "threshold", BELOW, 1.0, "alerts.below.threshold"),
    ("bound as text", "temperature", "above", 1.0, "alerts.above"),
]


@pytest.mark.parametrize(
    ("metric", "bound", "value", "key"), [r[1:] for r in BAD_THRESHOLDS], ids=[r[0] for r in BAD_THRESHOLDS]
)
def test_an_alert_threshold_validates_itself(metric: Any, bound: Any, value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AlertThreshold(metric, bound, value)
    assert caught.value.key == key


def test_alerts_config_refuses_a_threshold_set_twice_and_a_below_over_its_above() -> None:
    with pytest.raises(ConfigError) as caught:
        AlertsConfig((HOT, AlertThreshold("temperature", ABOVE, 31.0)))
    assert (caught.value.key, caught.value.detail) == ("alerts.above.temperature", "is set twice")
    with pytest.raises(ConfigError) as caught:
        AlertsConfig((AlertThreshold("temperature", BELOW, 40.0), HOT))
    assert caught.value.key == "alerts.below.temperature"


def test_every_swarm_device_inherits_the_alerts() -> None:
    cfg = load("[alerts.above]\ntemperature = 30.0\n[swarm]\ndevices = 3\n")
    assert [m.alerts for m in device_configs(cfg)] == [AlertsConfig((HOT,))] * 3


# The agent, with a scripted driver and a real spool.


class Scripted(Driver):
    """One sample per tick from a list of temperatures (None: nothing this tick)."""

    def __init__(self, temperatures: Sequence[float | None]) -> None:
        super().__init__()
        self.temperatures = list(temperatures)

    def read(self, now_s: float) -> Sample | None:
        value = self.temperatures.pop(0)
        return None if value is None else Sample({"temperature": value, "humidity": 50.0}, UNITS)


def config(tmp_path: Path, **overrides: Any) -> SensorConfig:
    fields: dict[str, Any] = {
        "device": "pi-7",
        "site": "marsh",
        "broker": BrokerConfig("127.0.0.1", 1, "sensor-pi-7"),
        "state_dir": tmp_path / "state",
        "status_dir": tmp_path / "status",
        "driver": DriverConfig(),
        "alerts": AlertsConfig((HOT,)),
        "confirmations": ConfirmationsConfig(max_messages=1000, max_bytes=0, mode=AckMode.BROKER),
    }
    fields.update(overrides)
    return SensorConfig(**fields)


class RecordingSpool(Spool):
    """A real spool that remembers each append's batches, and refuses one when told to."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.appends: list[list[tuple[Lane, int]]] = []
        self.refuse_next = False

    def append(
        self,
        batches: Sequence[tuple[Lane, Sequence[Record]]],
        now_ms: int | None = None,
        *,
        remove: Sequence[Segment] = (),
    ) -> list[Segment]:
        if self.refuse_next:
            self.refuse_next = False
            raise SpoolError("disk full")
        self.appends.append([(lane, len(records)) for lane, records in batches])
        return super().append(batches, now_ms, remove=remove)


def spooled(spool: Spool) -> list[tuple[Lane, Envelope]]:
    out = []
    now_ms = int(time.time() * 1000)
    for seg in spool.pending():
        records = spool.lease(seg)
        assert records is not None
        out += [(seg.lane, parse(topic, payload, now_ms)) for topic, payload in records]
    return out


def run(agent: Agent, ticks: int) -> None:
    for i in range(ticks):
        agent.tick(T0 + i)


def test_the_agent_spools_each_alert_in_keep_after_its_reading_on_the_next_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    spool = RecordingSpool(cfg.spool_dir)
    agent = Agent(cfg, Scripted([25.0, 31.0, None, 32.0, 29.0, 33.5]), spool, "boot-1")
    # A plain logging.Logger at INFO, as the service logs (Salt's pytest plugin installs a logger
    # class that drops `extra`, which would hide an extra key that logging refuses).
    records: list[logging.LogRecord] = []
    plain = logging.Logger("sensor.agent", logging.INFO)
    plain.addHandler(type("Keep", (logging.Handler,), {"emit": lambda self, r: records.append(r)})())
    monkeypatch.setattr(sensor_agent, "log", plain)
    try:
        run(agent, 6)
        raised = [r for r in records if getattr(r, "event", None) == "alert_raised"]
        assert [getattr(r, "alert", None) for r in raised] == ["threshold_above", "threshold_above"]
        messages = spooled(spool)
        assert [(lane, e.kind, e.seq) for lane, e in messages] == [
            (Lane.BULK, Channel.READING, 1),
            (Lane.BULK, Channel.READING, 2),
            (Lane.KEEP, Channel.ALERT, 3),
            (Lane.BULK, Channel.READING, 4),
            (Lane.BULK, Channel.READING, 5),
            (Lane.BULK, Channel.READING, 6),
            (Lane.KEEP, Channel.ALERT, 7),
        ]
        # One append per reading, its alert in the same one: one transaction.
        assert spool.appends == [
            [(Lane.BULK, 1)],
            [(Lane.BULK, 1), (Lane.KEEP, 1)],
            [(Lane.BULK, 1)],
            [(Lane.BULK, 1)],
            [(Lane.BULK, 1), (Lane.KEEP, 1)],
        ]
        assert (agent.last_seq, agent.readings_total, agent.alerts_total) == (7, 5, 2)
        reading, alert = messages[1][1], messages[2][1]
        assert str(alert.topic) == "saltmarsh/v1/marsh/pi-7/alert"
        assert (alert.device, alert.site, alert.boot, alert.ts_ms) == (
            reading.device,
            reading.site,
            "boot-1",
            reading.ts_ms,
        )
        assert alert.name == "threshold_above"
        assert dict(alert.metrics) == {"temperature": 31.0, "threshold": 30.0}
        assert dict(alert.units) == {"temperature": "°C", "threshold": "°C"}
        assert alert.detail == "temperature 31.0 is above 30.0"
    finally:
        spool.close()


def test_two_crossings_take_two_seqs_in_one_append(tmp_path: Path) -> None:
    cfg = config(tmp_path, alerts=AlertsConfig((HOT, AlertThreshold("humidity", ABOVE, 40.0))))
    spool = RecordingSpool(cfg.spool_dir)
    agent = Agent(cfg, Scripted([31.0]), spool, "b")
    try:
        run(agent, 1)
        assert [(lane, e.seq, e.name) for lane, e in spooled(spool)] == [
            (Lane.BULK, 1, None),
            (Lane.KEEP, 2, "threshold_above"),
            (Lane.KEEP, 3, "threshold_above"),
        ]
        assert spool.appends == [[(Lane.BULK, 1), (Lane.KEEP, 2)]]
        assert (agent.last_seq, agent.alerts_total) == (3, 2)
    finally:
        spool.close()


def test_a_refused_append_loses_the_reading_and_its_alert_and_the_next_reading_raises_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    spool = RecordingSpool(cfg.spool_dir)
    agent = Agent(cfg, Scripted([31.0, 32.0]), spool, "b")
    try:
        spool.refuse_next = True
        assert agent.tick(T0) is None
        assert (agent.last_seq, agent.readings_total, agent.alerts_total, agent.spool_errors) == (0, 0, 0, 1)
        assert agent.tick(T0 + 1) is not None
        assert [(lane, e.seq) for lane, e in spooled(spool)] == [(Lane.BULK, 1), (Lane.KEEP, 2)]
        assert (agent.last_seq, agent.alerts_total) == (2, 1)
    finally:
        spool.close()


def test_an_oversized_alert_is_refused_and_counted_without_a_seq(tmp_path: Path, caplog: Any) -> None:
    ts_ms = int(T0 * 1000)
    reading = mint(
        device="pi-7",
        site="marsh",
        boot="b",
        seq=1,
        ts_ms=ts_ms,
        metrics={"temperature": 31.0, "humidity": 50.0},
        units=UNITS,
    )
    alert = mint_alert(
        device="pi-7",
        site="marsh",
        boot="b",
        seq=2,
        ts_ms=ts_ms,
        name="threshold_above",
        metrics={"temperature": 31.0, "threshold": 30.0},
        units={"temperature": "°C", "threshold": "°C"},
        detail="temperature 31.0 is above 30.0",
    )
    assert len(reading.encode()) < len(alert.encode())
    cfg = config(tmp_path, max_message_bytes=len(reading.encode()))
    spool = RecordingSpool(cfg.spool_dir)
    agent = Agent(cfg, Scripted([31.0, 32.0, 25.0]), spool, "b")
    try:
        with caplog.at_level(logging.WARNING):
            run(agent, 3)
        assert [(lane, e.seq) for lane, e in spooled(spool)] == [(Lane.BULK, 1), (Lane.BULK, 2), (Lane.BULK, 3)]
        assert (agent.last_seq, agent.alerts_total, agent.oversized_total) == (3, 0, 1), "refused once, not per reading"
        (message,) = [r.getMessage() for r in caplog.records if r.name == "sensor.agent"]
        assert message.startswith("alert refused: ") and "on saltmarsh/v1/marsh/pi-7/alert" in message
    finally:
        spool.close()


def test_max_readings_counts_readings_not_alerts(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_readings=2)
    spool = RecordingSpool(cfg.spool_dir)
    agent = Agent(cfg, Scripted([31.0, 25.0, 31.0]), spool, "b")
    try:
        agent.tick(T0)
        assert not agent.done and agent.last_seq == 2
        agent.tick(T0 + 1)
        assert agent.done and (agent.last_seq, agent.readings_total) == (3, 2)
    finally:
        spool.close()


# The sender: both lanes go out, in spool order, each on its own topic.


class Published:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, properties: Any = None) -> Any:
        self.topics.append(topic)
        return type("Info", (), {"mid": len(self.topics), "rc": MQTTErrorCode.MQTT_ERR_SUCCESS})()


def test_the_sender_publishes_the_alert_on_its_topic_after_its_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    spool = Spool.open(cfg.spool_dir)
    sender = SpoolSender(cfg, spool, "b")
    agent = Agent(cfg, Scripted([31.0, 25.0]), spool, "b", on_spooled=sender.notify)
    published = Published()
    monkeypatch.setattr(sender.client, "publish", published.publish)
    try:
        run(agent, 2)
        sender.on_connect(sender.client, None, None, ReasonCode(PacketTypes.CONNACK, identifier=0), None)
        sender.step()
        assert published.topics == [
            "saltmarsh/v1/marsh/pi-7/status",
            "saltmarsh/v1/marsh/pi-7/reading",
            "saltmarsh/v1/marsh/pi-7/alert",
            "saltmarsh/v1/marsh/pi-7/reading",
        ]
        status = counters(agent, sender, spool)
        assert (status["alerts_total"], status["readings_total"], status["last_seq"]) == (1, 2, 3)
    finally:
        spool.close()
