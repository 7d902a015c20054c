"""One typed, validated config object per service, loaded here and nowhere else.

In: a TOML file that Salt rendered (or the demo wrote), read through the one loader in `table`
(UTF-8 checked, unknown keys refused, secrets only from 0600 files or the environment).
Out: frozen config objects (`SensorConfig`, `BleConfig`, `GatewayConfig`, `IngesterConfig` with its sink's
Elasticsearch and Kinesis parts, `RelayConfig`, `BrokerConfig`), or a `ConfigError` naming the
key and the file.
"""

from saltmarsh.config.ble import BleConfig, BleDeviceConfig, ScanConfig, load_ble_config
from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.gateway import GatewayConfig, load_gateway_config
from saltmarsh.config.ingester import IngesterConfig, SinkConfig, load_ingester_config
from saltmarsh.config.sensor import (
    AlertsConfig,
    AlertThreshold,
    Anomaly,
    Bound,
    DriverConfig,
    SensorConfig,
    load_sensor_config,
)
from saltmarsh.config.table import Secret, Table, load_toml

__all__ = [
    "AlertThreshold",
    "AlertsConfig",
    "Anomaly",
    "BleConfig",
    "BleDeviceConfig",
    "Bound",
    "BrokerConfig",
    "DriverConfig",
    "GatewayConfig",
    "IngesterConfig",
    "ScanConfig",
    "Secret",
    "SensorConfig",
    "SinkConfig",
    "Table",
    "load_ble_config",
    "load_gateway_config",
    "load_ingester_config",
    "load_sensor_config",
    "load_toml",
]
