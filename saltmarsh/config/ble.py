"""The BLE collector's config (`saltmarsh-ble --config ble.toml`): the devices it collects, how it
scans, and the site broker it publishes to.

    collector = "site01-gw1-ble"      # its MQTT user and client id, status instance, presence topic
    site = "site01"
    state_dir = "/var/lib/saltmarsh/ble"
    status_dir = "/run/saltmarsh/status"
    discovery = false                 # true: devices heard but not listed are ingested too
    stale_factor = 3.0                # unseen for expected_interval_s x this: a `stale` event

    [scan]
    backend = "bleak"                 # or "replay" (tests, the demo, the lab)
    adapters = []                     # [] = BlueZ's default adapter
    passive = true

    [broker]                          # as sensor.toml's
    [confirmations]                   # as sensor.toml's

    [[devices]]
    mac = "54:48:E6:8F:80:A5"
    kind = "bthome"                   # bthome | ruuvi
    place = "cold room 2"
    expected_interval_s = 60.0
    bindkey_file = "/etc/saltmarsh/ble-keys/5448E68F80A5.key"   # 32 hex digits, mode 0600

The collector is one sender on the site broker, for many devices: `as_sensor` is the
`SensorConfig` its spool sender runs with (identity = the collector, topics = each device's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.confirmations import ConfirmationsConfig
from saltmarsh.config.sensor import SENSOR_CONFIRMATIONS, SensorConfig
from saltmarsh.config.table import Secret, Table, load_toml
from saltmarsh.contract.envelope import Location
from saltmarsh.contract.errors import ConfigError, ValidationError
from saltmarsh.contract.mac import ble_device_id, normalize_mac

KINDS = ("bthome", "ruuvi")
ENCRYPTED_KINDS = ("bthome",)  # a Ruuvi tag's advertisements are in the clear
BACKENDS = ("bleak", "replay")
BINDKEY_HEX_CHARS = 32
MAX_DEVICES = 1000


def is_bindkey(text: str) -> bool:
    """A BTHome bindkey as pillar and key files hold it: 32 hex digits (an AES-128 key)."""
    return len(text) == BINDKEY_HEX_CHARS and all(c in "0123456789abcdefABCDEF" for c in text)


@dataclass(frozen=True, slots=True)
class BleDeviceConfig:
    mac: str
    kind: str
    place: str | None = None
    expected_interval_s: float = 60.0
    bindkey: Secret | None = None
    location: Location | None = None

    def __post_init__(self) -> None:
        try:
            normalize_mac(self.mac)
        except ValidationError as err:
            raise ConfigError("mac", err.detail) from None
        if self.mac != normalize_mac(self.mac):
            raise ConfigError("mac", f"{self.mac!r} is not in the form AA:BB:CC:DD:EE:FF")
        if self.kind not in KINDS:
            raise ConfigError("kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.expected_interval_s > 0:
            raise ConfigError("expected_interval_s", f"{self.expected_interval_s} is not above 0")
        if self.bindkey is not None:
            if self.kind not in ENCRYPTED_KINDS:
                raise ConfigError("bindkey_file", f"only a bthome device has a bindkey, not a {self.kind}")
            key = self.bindkey.reveal()
            if not is_bindkey(key):
                # Never the key itself, even in an error.
                raise ConfigError("bindkey_file", f"holds {len(key)} characters, not {BINDKEY_HEX_CHARS} hex digits")

    @property
    def device_id(self) -> str:
        return ble_device_id(self.mac)

    @property
    def bindkey_bytes(self) -> bytes | None:
        return None if self.bindkey is None else bytes.fromhex(self.bindkey.reveal())


@dataclass(frozen=True, slots=True)
class ScanConfig:
    backend: str = "bleak"
    adapters: tuple[str, ...] = ()
    passive: bool = True
    replay_file: Path | None = None
    replay_speed: float = 1.0  # 0: as fast as the collector takes them
    # The wall time the recording's first advertisement is on the air (replay only). A restarted
    # collector does not hear again what was sent while it was down, as with a radio; 0: now.
    replay_start_s: float = 0.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError("scan.backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "replay" and self.replay_file is None:
            raise ConfigError("scan.replay_file", "is required for backend 'replay'")
        if self.replay_speed < 0:
            raise ConfigError("scan.replay_speed", f"{self.replay_speed} is below 0")


@dataclass(frozen=True, slots=True)
class BleConfig:
    collector: str
    site: str
    broker: BrokerConfig
    state_dir: Path
    status_dir: Path
    metrics_dir: Path | None = None
    devices: tuple[BleDeviceConfig, ...] = ()
    scan: ScanConfig = field(default_factory=ScanConfig)
    discovery: bool = False
    stale_factor: float = 3.0
    publish_window: int = 100
    spool_quota_bytes: int = 50_000_000
    max_message_bytes: int = 16_384
    confirmations: ConfirmationsConfig = SENSOR_CONFIRMATIONS

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for device in self.devices:
            if device.mac in seen:
                raise ConfigError("devices", f"{device.mac} is listed twice")
            seen.add(device.mac)
        if not self.stale_factor >= 1:
            raise ConfigError("stale_factor", f"{self.stale_factor} is below 1")

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    def as_sensor(self) -> SensorConfig:
        """What the collector's spool sender needs, as a sensor's: its identity is the collector."""
        return SensorConfig(
            device=self.collector,
            site=self.site,
            broker=self.broker,
            state_dir=self.state_dir,
            status_dir=self.status_dir,
            metrics_dir=self.metrics_dir,
            publish_window=self.publish_window,
            spool_quota_bytes=self.spool_quota_bytes,
            max_message_bytes=self.max_message_bytes,
            confirmations=self.confirmations,
        )


def _device(t: Table) -> BleDeviceConfig:
    lat, lon = t.number("lat", None, lo=-90, hi=90), t.number("lon", None, lo=-180, hi=180)
    if (lat is None) != (lon is None):
        raise t.error("lat", "lat and lon go together")
    place = t.text("place", None)
    try:
        device = BleDeviceConfig(
            mac=t.text("mac"),
            kind=t.text("kind", choices=KINDS),
            place=place,
            expected_interval_s=t.number("expected_interval_s", 60.0, lo=0.001),
            bindkey=t.secret("bindkey"),
            location=None if lat is None else Location(lat, lon, place),
        )
    except ConfigError as err:
        raise t.error(err.key, err.detail) from None
    t.done()
    return device


def _scan(t: Table) -> ScanConfig:
    try:
        scan = ScanConfig(
            backend=t.text("backend", "bleak", choices=BACKENDS),
            adapters=tuple(str(a) for a in t.array("adapters", [])),
            passive=t.flag("passive", True),
            replay_file=t.path("replay_file", None),
            replay_speed=t.number("replay_speed", 1.0, lo=0),
            replay_start_s=t.number("replay_start_s", 0.0, lo=0),
        )
    except ConfigError as err:
        raise t.error(err.key.removeprefix("scan."), err.detail) from None
    t.done()
    return scan


def ble_config(t: Table) -> BleConfig:
    collector = t.ident("collector")
    devices = tuple(_device(d) for d in t.tables("devices"))
    if len(devices) > MAX_DEVICES:
        raise t.error("devices", f"{len(devices)} devices, more than {MAX_DEVICES}")
    try:
        cfg = BleConfig(
            collector=collector,
            site=t.ident("site"),
            broker=BrokerConfig.from_table(t.table("broker"), collector),
            state_dir=t.path("state_dir"),
            status_dir=t.path("status_dir"),
            metrics_dir=t.path("metrics_dir", None),
            devices=devices,
            scan=_scan(t.table("scan")),
            discovery=t.flag("discovery", False),
            stale_factor=t.number("stale_factor", 3.0, lo=1),
            publish_window=t.integer("publish_window", 100, lo=1, hi=65535),
            spool_quota_bytes=t.integer("spool_quota_bytes", 50_000_000, lo=0),
            max_message_bytes=t.integer("max_message_bytes", 16_384, lo=64, hi=10_000_000),
            confirmations=ConfirmationsConfig.from_table(t.table("confirmations"), defaults=SENSOR_CONFIRMATIONS),
        )
    except ConfigError as err:
        if err.key.startswith(("devices", "stale_factor")):
            raise t.error(err.key, err.detail) from None
        raise
    t.done()
    return cfg


def load_ble_config(path: Path) -> BleConfig:
    return ble_config(load_toml(path))
