"""The sensor agent's config: identity, driver, gateway broker and local spool; optionally
threshold alerts and a swarm.

An `[alerts]` table makes the agent mint an alert when a metric crosses a threshold
(`sensor.alerts`); without it, the agent mints readings only:

    [alerts.above]
    temperature = 30.0
    [alerts.below]
    humidity = 20.0

A `[swarm]` table makes one process run many simulated devices (`sensor.swarm`), for a test lab:
`device_configs` expands the swarm host's config into one config per device, each with its own
identity, client id, state directory and seed. Without it, the config is the one device it runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.commands import NO_COMMANDS, CommandsConfig
from saltmarsh.config.confirmations import ConfirmationsConfig
from saltmarsh.config.table import Table, load_toml
from saltmarsh.contract.envelope import Location
from saltmarsh.contract.errors import ConfigError, ValidationError
from saltmarsh.contract.topics import check_id

DRIVERS = ("simulated", "dht11", "dht22", "replay")
ANOMALY_KINDS = ("stuck", "spike", "drift", "dropout")
REPLAY_MODES = ("constant", "timestamps")
# The alert's metrics hold the crossing metric and this, the threshold it crossed: no metric may be
# called so.
THRESHOLD_METRIC = "threshold"
# A swarm simulates its devices: one GPIO-wired DHT cannot be fifty devices.
SWARM_DRIVERS = ("simulated", "replay")
SWARM_MAX_DEVICES = 1000


@dataclass(frozen=True, slots=True)
class Anomaly:
    """An injected fault in the simulated signal, from `start_s` after boot for `duration_s`."""

    kind: str
    start_s: float
    duration_s: float
    magnitude: float = 0.0
    metric: str = "temperature"


@dataclass(frozen=True, slots=True)
class DriverConfig:
    type: str = "simulated"
    pin: str = "D4"  # a `board` attribute name for DHT drivers
    retries: int = 3
    retry_backoff_s: float = 0.5
    seed: int | None = None
    base_temperature_c: float = 21.0
    base_humidity_pct: float = 55.0
    noise: float = 0.2
    anomalies: tuple[Anomaly, ...] = ()
    replay_file: Path | None = None
    replay_mode: str = "constant"
    replay_speed: float = 1.0
    # How long a simulated read takes: a DHT22 answers in about 0.25 s, up to seconds with its
    # retries; a test uses it to land a kill -9 inside a `read_now` command.
    read_time_s: float = 0.0


class Bound(StrEnum):
    """Which side of its threshold a metric must go to raise an alert."""

    ABOVE = "above"
    BELOW = "below"


@dataclass(frozen=True, slots=True)
class AlertThreshold:
    """`metric` beyond `value` (strictly above, or strictly below) raises an alert."""

    metric: str
    bound: Bound
    value: float

    @property
    def key(self) -> str:
        """The config key that sets it, as errors name it."""
        return f"alerts.{self.bound.value}.{self.metric}"

    def __post_init__(self) -> None:
        if not isinstance(self.bound, Bound):
            raise ConfigError(f"alerts.{self.bound}", f"{self.bound!r} is not one of above, below")
        try:
            check_id("metric", self.metric)
        except ValidationError as err:
            raise ConfigError(f"alerts.{self.bound.value}.{str(self.metric)[:80]}", err.detail) from None
        if self.metric == THRESHOLD_METRIC:
            raise ConfigError(self.key, "is reserved: an alert's metrics name its threshold so")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(self.key, f"expected a finite number, got {value!r}")

    def beyond(self, value: float) -> bool:
        return value > self.value if self.bound is Bound.ABOVE else value < self.value


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """The thresholds the agent watches, in the order the config lists them; () = no alerts.

    A metric may have one threshold of each bound, and then its `below` must be under its `above`:
    otherwise one value could be beyond both.
    """

    thresholds: tuple[AlertThreshold, ...] = ()

    def __post_init__(self) -> None:
        values: dict[tuple[str, Bound], float] = {}
        for threshold in self.thresholds:
            if not isinstance(threshold, AlertThreshold):
                raise ConfigError("alerts", f"expected an AlertThreshold, got {type(threshold).__name__}")
            if (threshold.metric, threshold.bound) in values:
                raise ConfigError(threshold.key, "is set twice")
            values[threshold.metric, threshold.bound] = threshold.value
        for (metric, bound), below in values.items():
            above = values.get((metric, Bound.ABOVE))
            if bound is Bound.BELOW and above is not None and below >= above:
                raise ConfigError(f"alerts.below.{metric}", f"{below} is not below alerts.above.{metric} {above}")


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    """`devices` simulated devices in one process, named `<device>-001`... after the swarm host.

    Each device's simulated driver is seeded `seed_base + n` (n as in its name), so no two send
    the same signal; without `seed_base`, the host's `driver.seed` is the base, and without that
    each device draws its own random seed, as a single sensor does.

    `faulty` of them, spread evenly (every fifth of 100 for 20), simulate a dead DHT: their driver
    never has a reading, so `read_now` fails on them, as it would on a sensor with a broken wire.
    """

    devices: int
    seed_base: int | None = None
    faulty: int = 0

    def is_faulty(self, n: int) -> bool:
        """Whether the n-th device (from 1) is one of the faulty."""
        return (n * self.faulty) // self.devices != ((n - 1) * self.faulty) // self.devices

    def __post_init__(self) -> None:
        if isinstance(self.devices, bool) or not isinstance(self.devices, int):
            raise ConfigError("swarm.devices", f"must be an integer 1..{SWARM_MAX_DEVICES}, got {self.devices!r}")
        if not 1 <= self.devices <= SWARM_MAX_DEVICES:
            raise ConfigError("swarm.devices", f"must be 1..{SWARM_MAX_DEVICES}, got {self.devices}")
        if self.seed_base is not None and (isinstance(self.seed_base, bool) or not isinstance(self.seed_base, int)):
            raise ConfigError("swarm.seed_base", f"must be an integer, got {self.seed_base!r}")
        if isinstance(self.faulty, bool) or not isinstance(self.faulty, int) or not 0 <= self.faulty <= self.devices:
            raise ConfigError(
                "swarm.faulty", f"must be an integer 0..{self.devices} (swarm.devices), got {self.faulty!r}"
            )


# A faulty swarm device's driver: a dropout from boot that never ends.
DEAD_SENSOR = Anomaly("dropout", start_s=0.0, duration_s=float("inf"))


def swarm_device_id(host: str, n: int) -> str:
    """The id of the swarm host's n-th device (from 1), zero-padded so that they sort in order."""
    return f"{host}-{n:03d}"


# While the forwarder is down the gateway broker holds at most this many of a device's readings;
# the rest wait in the device's own spool.
SENSOR_CONFIRMATIONS = ConfirmationsConfig(max_messages=1000, max_bytes=2**20)


@dataclass(frozen=True, slots=True)
class SensorConfig:
    device: str
    site: str
    broker: BrokerConfig
    state_dir: Path
    status_dir: Path
    # Also write the status counters as Prometheus text here, for node_exporter's textfile
    # collector (saltmarsh.runtime.metrics); None: no metrics file.
    metrics_dir: Path | None = None
    driver: DriverConfig = field(default_factory=DriverConfig)
    interval_s: float = 1.0
    max_readings: int = 0  # 0 = run until stopped
    publish_window: int = 100
    spool_quota_bytes: int = 50_000_000
    # The fleet's one message size limit (pillar saltmarsh:max_message_bytes): a larger reading is
    # refused and counted, never spooled, since the broker would refuse it on every retry.
    max_message_bytes: int = 16_384
    model: str | None = None
    firmware: str | None = None
    location: Location | None = None
    confirmations: ConfirmationsConfig = SENSOR_CONFIRMATIONS
    alerts: AlertsConfig = AlertsConfig()
    # One process, many simulated devices (sensor.swarm); None: this config is the one device.
    swarm: SwarmConfig | None = None
    # The command keys this device trusts (saltmarsh.config.commands); none: no commands.
    commands: CommandsConfig = NO_COMMANDS

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def journal_path(self) -> Path:
        """The command journal (saltmarsh.commands.journal): beside the spool, as durable as it."""
        return self.state_dir / "commands.db"


def device_configs(cfg: SensorConfig) -> tuple[SensorConfig, ...]:
    """The devices a sensor config runs: itself, or each device of its swarm.

    A swarm device is the host's config with its own identity: device id (so its own topics and
    status file), MQTT client id (one session each, under the host's one credential), state
    directory (its own spool) and seed. Everything else, `max_readings` and `alerts` included, is
    per device as the host's config says.
    """
    swarm = cfg.swarm
    if swarm is None:
        return (cfg,)
    base = swarm.seed_base if swarm.seed_base is not None else cfg.driver.seed
    members = []
    for n in range(1, swarm.devices + 1):
        device = swarm_device_id(cfg.device, n)
        members.append(
            dataclasses.replace(
                cfg,
                device=device,
                state_dir=cfg.state_dir / device,
                broker=dataclasses.replace(cfg.broker, client_id=swarm_device_id(cfg.broker.client_id, n)),
                driver=dataclasses.replace(
                    cfg.driver,
                    seed=None if base is None else base + n,
                    anomalies=(*cfg.driver.anomalies, DEAD_SENSOR) if swarm.is_faulty(n) else cfg.driver.anomalies,
                ),
                swarm=None,
            )
        )
    return tuple(members)


def _driver(t: Table) -> DriverConfig:
    kind = t.text("type", "simulated", choices=DRIVERS)
    anomalies = []
    for a in t.tables("anomalies"):
        anomalies.append(
            Anomaly(
                kind=a.text("kind", choices=ANOMALY_KINDS),
                start_s=a.number("start_s", lo=0),
                duration_s=a.number("duration_s", lo=0),
                magnitude=a.number("magnitude", 0.0),
                metric=a.text("metric", "temperature"),
            )
        )
        a.done()
    pin = t.text("pin", "D4")
    if not (pin.startswith("D") and pin[1:].isdigit()):
        raise t.error("pin", f"{pin!r} is not a board pin name such as D4")
    cfg = DriverConfig(
        type=kind,
        pin=pin,
        retries=t.integer("retries", 3, lo=0, hi=20),
        retry_backoff_s=t.number("retry_backoff_s", 0.5, lo=0.001),
        seed=t.integer("seed", None),
        base_temperature_c=t.number("base_temperature_c", 21.0),
        base_humidity_pct=t.number("base_humidity_pct", 55.0, lo=0, hi=100),
        noise=t.number("noise", 0.2, lo=0),
        read_time_s=t.number("read_time_s", 0.0, lo=0, hi=60),
        anomalies=tuple(anomalies),
        replay_file=t.path("replay_file", None),
        replay_mode=t.text("replay_mode", "constant", choices=REPLAY_MODES),
        replay_speed=t.number("replay_speed", 1.0, lo=0.001),
    )
    if kind == "replay" and cfg.replay_file is None:
        raise t.error("replay_file", "is required for driver type 'replay'")
    t.done()
    return cfg


def _location(t: Table) -> Location | None:
    if not t.has("lat") and not t.has("lon"):
        t.done()
        return None
    loc = Location(t.number("lat", lo=-90, hi=90), t.number("lon", lo=-180, hi=180), t.text("place", None))
    t.done()
    return loc


def _alerts(t: Table) -> AlertsConfig:
    thresholds: list[AlertThreshold] = []
    for bound in Bound:
        bound_table = t.table(bound.value)
        for metric in bound_table.names():
            value = bound_table.number(metric)
            try:
                thresholds.append(AlertThreshold(metric, bound, value))
            except ConfigError as err:
                # The dataclass names the key; the table adds the file it is in.
                raise bound_table.error(metric, err.detail) from None
        bound_table.done()
    t.done()
    try:
        return AlertsConfig(tuple(thresholds))
    except ConfigError as err:
        raise t.error(err.key.removeprefix("alerts."), err.detail) from None


def _swarm(t: Table) -> SwarmConfig:
    try:
        swarm = SwarmConfig(
            devices=t.integer("devices"), seed_base=t.integer("seed_base", None), faulty=t.integer("faulty", 0)
        )
    except ConfigError as err:
        # The dataclass names the key; the table adds the file it is in.
        raise t.error(err.key.rpartition(".")[2], err.detail) from None
    t.done()
    return swarm


def _check_swarm(t: Table, cfg: SensorConfig, swarm: SwarmConfig) -> None:
    """What a swarm needs of the rest of the config: a driver it can simulate, a short enough host id."""
    device, kind = cfg.device, cfg.driver.type
    if kind not in SWARM_DRIVERS:
        kinds = " or ".join(SWARM_DRIVERS)
        raise t.error("swarm", f"needs driver.type {kinds} (a swarm simulates its devices), got {kind!r}")
    longest = swarm_device_id(device, swarm.devices)
    try:
        check_id("device", longest)
    except ValidationError:
        detail = f"{device!r} is too long for a swarm: its device {longest!r} is over 64 characters"
        raise t.error("device", detail) from None


def sensor_config(t: Table) -> SensorConfig:
    device = t.ident("device")
    cfg = SensorConfig(
        device=device,
        site=t.ident("site"),
        broker=BrokerConfig.from_table(t.table("broker"), f"sensor-{device}"),
        state_dir=t.path("state_dir"),
        status_dir=t.path("status_dir"),
        metrics_dir=t.path("metrics_dir", None),
        driver=_driver(t.table("driver")),
        interval_s=t.number("interval_s", 1.0, lo=0.0001),
        max_readings=t.integer("max_readings", 0, lo=0),
        publish_window=t.integer("publish_window", 100, lo=1, hi=65535),
        spool_quota_bytes=t.integer("spool_quota_bytes", 50_000_000, lo=0),
        max_message_bytes=t.integer("max_message_bytes", 16_384, lo=64, hi=10_000_000),
        model=t.text("model", None),
        firmware=t.text("firmware", None),
        location=_location(t.table("location")),
        confirmations=ConfirmationsConfig.from_table(t.table("confirmations"), defaults=SENSOR_CONFIRMATIONS),
        alerts=_alerts(t.table("alerts")),
        swarm=_swarm(t.table("swarm")) if t.has("swarm") else None,
        commands=CommandsConfig.from_table(t.table("commands")),
    )
    t.done()
    if cfg.swarm is not None:
        _check_swarm(t, cfg, cfg.swarm)
    return cfg


def load_sensor_config(path: Path) -> SensorConfig:
    return sensor_config(load_toml(path))
