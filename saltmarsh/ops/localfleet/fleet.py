"""A whole site and its cloud on one machine, as real processes on loopback.

Two real Mosquitto brokers (the site's gateway broker and the cloud broker), N sensor agents,
the forwarder and the ingester with the SQLite sink. `saltmarsh demo` drives it, and so do the
reliability tests, which kill its processes and cut its uplink.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from saltmarsh.config.ingester import load_ingester_config
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.ops.audit import AuditReport, run_audit
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess
from saltmarsh.runtime.status import ServiceStatus, read_statuses
from saltmarsh.sinks import open_audit_source

SENSOR_PLACES = (
    ("garden", -27.4698, 153.0251),
    ("greenhouse", -27.4705, 153.0260),
    ("shed", -27.4690, 153.0240),
    ("pond", -27.4712, 153.0233),
)


@dataclass(frozen=True, slots=True)
class FleetPlan:
    base_dir: Path
    sensors: int = 5
    rate_hz: float = 2.0
    readings_per_sensor: int = 60
    site: str = "demo"
    gateway_id: str = "gw1"
    drain_rate_limit: float = 2000.0
    spool_quota_bytes: int = 1_000_000_000
    seed: int = 7
    es_url: str | None = None  # the store of record: Elasticsearch when set, else embedded SQLite
    es_plain_json: bool = False

    @property
    def status_dir(self) -> Path:
        return self.base_dir / "status"

    @property
    def sink_path(self) -> Path:
        return self.base_dir / "state" / "ingester" / "saltmarsh.db"

    def device(self, index: int) -> str:
        return f"{self.site}-s{index + 1:03d}"


def _write_toml(path: Path, doc: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(dict(doc)))
    return path


class LocalFleet:
    def __init__(self, plan: FleetPlan) -> None:
        self.plan = plan
        base = plan.base_dir
        self.etc = base / "etc"
        self.logs = base / "logs"
        self.gateway_broker = Mosquitto.on_free_port("gateway", base / "brokers")
        self.cloud_broker = Mosquitto.on_free_port("cloud", base / "brokers")
        self.sensors: list[ServiceProcess] = []
        self.forwarder = ServiceProcess.python_module(
            "forwarder", "gateway", ["--config", str(self._forwarder_config())], self.logs / "forwarder.log"
        )
        self.ingester = ServiceProcess.python_module(
            "ingester", "cloud_ingester", ["--config", str(self._ingester_config())], self.logs / "ingester.log"
        )
        for index in range(plan.sensors):
            device = plan.device(index)
            self.sensors.append(
                ServiceProcess.python_module(
                    f"sensor-{device}",
                    "sensor",
                    ["--config", str(self._sensor_config(index))],
                    self.logs / f"sensor-{device}.log",
                )
            )

    @classmethod
    def fresh(cls, plan: FleetPlan) -> LocalFleet:
        """Start from an empty directory, so an audit sees only this run's readings."""
        shutil.rmtree(plan.base_dir, ignore_errors=True)
        plan.base_dir.mkdir(parents=True)
        return cls(plan)

    def _sensor_config(self, index: int) -> Path:
        plan = self.plan
        device = plan.device(index)
        place, lat, lon = SENSOR_PLACES[index % len(SENSOR_PLACES)]
        return _write_toml(
            self.etc / f"sensor-{device}.toml",
            {
                "device": device,
                "site": plan.site,
                "state_dir": str(plan.base_dir / "state" / f"sensor-{device}"),
                "status_dir": str(plan.status_dir),
                "interval_s": 1.0 / plan.rate_hz,
                "max_readings": plan.readings_per_sensor,
                "model": "HW-MD202",
                "firmware": "1.0.0",
                "location": {"lat": lat, "lon": lon, "place": place},
                "driver": {"type": "simulated", "seed": plan.seed + index},
                "broker": {"host": "127.0.0.1", "port": self.gateway_broker.port},
            },
        )

    def _forwarder_config(self) -> Path:
        plan = self.plan
        return _write_toml(
            self.etc / "forwarder.toml",
            {
                "gateway_id": plan.gateway_id,
                "site": plan.site,
                "state_dir": str(plan.base_dir / "state" / "forwarder"),
                "status_dir": str(plan.status_dir),
                "spool_quota_bytes": plan.spool_quota_bytes,
                "drain_rate_limit": plan.drain_rate_limit,
                "local": {"host": "127.0.0.1", "port": self.gateway_broker.port},
                "uplink": {"host": "127.0.0.1", "port": self.cloud_broker.port},
            },
        )

    def _sink_table(self) -> dict[str, Any]:
        plan = self.plan
        if plan.es_url is None:
            return {"type": "sqlite", "path": str(plan.sink_path)}
        return {
            "type": "elasticsearch",
            # A fresh prefix per run, so the audit sees only this run's readings.
            "elasticsearch": {
                "hosts": [plan.es_url],
                "index_prefix": f"saltmarsh-demo-{int(time.time())}",
                "plain_json": plan.es_plain_json,
            },
        }

    def _ingester_config(self) -> Path:
        plan = self.plan
        return _write_toml(
            self.etc / "ingester.toml",
            {
                "ingester_id": "ingester1",
                "status_dir": str(plan.status_dir),
                "broker": {"host": "127.0.0.1", "port": self.cloud_broker.port},
                "sink": self._sink_table(),
            },
        )

    @property
    def ingester_config_path(self) -> Path:
        return self.etc / "ingester.toml"

    def audit_if_stored(self) -> AuditReport | None:
        """The audit, or None while the sink holds nothing yet."""
        try:
            return self.audit()
        except SinkUnavailable:
            return None

    def audit(self) -> AuditReport:
        """Audit the sink against each sensor's own record of what it produced."""
        source = open_audit_source(load_ingester_config(self.ingester_config_path).sink)
        try:
            return run_audit(source.stored_keys(), self.expectations(), source.dead_letter_counts())
        finally:
            source.close()

    def start(self) -> None:
        self.cloud_broker.start()
        self.gateway_broker.start()
        # Subscribers first, so that their persistent sessions exist before anything is
        # published to them. The senders would cope anyway (a "no matching subscribers" PUBACK
        # is retried, never taken as delivered), but only after a retry delay.
        self.ingester.start()
        self.wait_for_counter("ingester", "subscribed")
        self.forwarder.start()
        self.wait_for_counter("forwarder", "local_connected")
        for sensor in self.sensors:
            sensor.start()

    def wait_for_counter(self, service: str, key: str, timeout_s: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(bool(s.counters.get(key)) for s in self.status_of(service)):
                return True
            time.sleep(0.05)
        return False

    def stop_cloud(self) -> None:
        self.cloud_broker.stop()

    def start_cloud(self) -> None:
        self.cloud_broker.start()

    def restart(self, process: ServiceProcess) -> None:
        process.start()

    def statuses(self) -> list[ServiceStatus]:
        return read_statuses(self.plan.status_dir)

    def status_of(self, service: str) -> list[ServiceStatus]:
        return [s for s in self.statuses() if s.service == service]

    def expectations(self) -> dict[str, tuple[str, int]]:
        """Each sensor's own word on what it produced: device -> (boot, last seq)."""
        return {
            s.instance: (str(s.counters["boot"]), int(s.counters["last_seq"]))
            for s in self.status_of("sensor")
            if "boot" in s.counters and "last_seq" in s.counters
        }

    def sensors_done(self) -> bool:
        """Every sensor has produced its readings and emptied its own spool."""
        done = [
            s
            for s in self.status_of("sensor")
            if int(s.counters.get("readings_total", 0)) >= self.plan.readings_per_sensor
            and int(s.counters.get("spool_depth", 1)) == 0
        ]
        return len(done) == self.plan.sensors

    def processes(self) -> list[ServiceProcess]:
        return [*self.sensors, self.forwarder, self.ingester]

    def stop(self) -> None:
        for process in self.sensors:
            process.stop()
        self.forwarder.stop()
        self.ingester.stop()
        self.gateway_broker.stop()
        self.cloud_broker.stop()
