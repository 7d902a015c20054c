"""The sensor agent's config: identity, driver, gateway broker and local spool."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.confirmations import ConfirmationsConfig
from saltmarsh.config.table import Table, load_toml
from saltmarsh.contract.envelope import Location

DRIVERS = ("simulated", "dht11", "dht22", "replay")
ANOMALY_KINDS = ("stuck", "spike", "drift", "dropout")
REPLAY_MODES = ("constant", "timestamps")


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

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"


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
    )
    t.done()
    return cfg


def load_sensor_config(path: Path) -> SensorConfig:
    return sensor_config(load_toml(path))
