"""A whole site and its cloud on one machine, as real processes on loopback.

Two real Mosquitto brokers (the site's gateway broker and the cloud broker), N sensor agents,
the forwarder and the ingester with the SQLite sink, and, with `ble_devices`, a BLE collector
hearing that many simulated thermometers through the replay backend (a recording written here,
BTHome plain and encrypted and RuuviTags, each measurement sent twice). `saltmarsh demo` drives
it, and so do the reliability tests, which kill its processes and cut its uplink.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.ble.advertisement import Advertisement
from gateway.ble.recording import Measurement, SimDevice, sim_devices, site_recording
from gateway.ble.replay import dump
from saltmarsh.config.ingester import load_ingester_config
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.ops.audit import AuditReport, expectations_from, run_audit
from saltmarsh.ops.localfleet.configs import (
    ConfigDoc,
    ble_config,
    ble_device_rows,
    broker_table,
    forwarder_config,
    ingester_config,
    sensor_config,
    sqlite_sink,
    write_config,
)
from saltmarsh.ops.localfleet.layout import Layout
from saltmarsh.ops.localfleet.mosquitto import BrokerPair
from saltmarsh.ops.localfleet.processes import ServiceProcess, wait_until
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
    ingesters: int = 1  # in one share group
    # `[confirmations]` settings for the sensors and the forwarder (tests shorten the timings).
    confirmations: dict[str, Any] = field(default_factory=dict)
    forwarder_settings: dict[str, Any] = field(default_factory=dict)
    # A `[commands]` table for the sensors and the forwarder (the keys they trust); empty: none.
    commands: dict[str, Any] = field(default_factory=dict)
    sensor_settings: dict[str, Any] = field(default_factory=dict)
    ble_devices: int = 0  # simulated BLE thermometers, heard by a collector on the gateway
    ble_interval_s: float = 2.0  # between one BLE device's measurements

    @property
    def status_dir(self) -> Path:
        return Layout(self.base_dir).status_dir

    @property
    def sink_path(self) -> Path:
        return Layout(self.base_dir).state_dir("ingester") / "saltmarsh.db"

    def device(self, index: int) -> str:
        return f"{self.site}-s{index + 1:03d}"

    @property
    def duration_s(self) -> float:
        """How long the sensors produce: the BLE recording lasts as long."""
        return self.readings_per_sensor / self.rate_hz


def ble_site(plan: FleetPlan) -> tuple[list[SimDevice], list[Advertisement], dict[str, list[Measurement]]]:
    """The plan's simulated BLE thermometers, their air for `duration_s`, and what each measured."""
    devices = sim_devices(plan.ble_devices, interval_s=plan.ble_interval_s)
    air, taken = site_recording(devices, plan.duration_s, repeats=2)
    return devices, air, taken


class LocalFleet:
    def __init__(self, plan: FleetPlan) -> None:
        self.plan = plan
        self.layout = Layout(plan.base_dir)
        # A fresh prefix per run, the same for every ingester, so the audit sees this run's readings.
        self._es_prefix = f"saltmarsh-demo-{int(time.time())}"
        self.brokers = BrokerPair.on_free_ports(self.layout.brokers_dir)
        self.gateway_broker = self.brokers.gateway
        self.cloud_broker = self.brokers.cloud
        self.forwarder = self._service("forwarder", "gateway", self._forwarder_config())
        self.ingesters = [
            self._service(self._ingester_name(index), "cloud_ingester", self._ingester_config(index))
            for index in range(plan.ingesters)
        ]
        self.ingester = self.ingesters[0]
        self.sensors = [
            self._service(f"sensor-{plan.device(index)}", "sensor", self._sensor_config(index))
            for index in range(plan.sensors)
        ]
        self.ble_measurements = 0  # in the BLE recording: one reading each must reach the sink
        self.ble = self._service("ble", "gateway.ble", self._ble_config()) if plan.ble_devices else None

    @classmethod
    def fresh(cls, plan: FleetPlan) -> LocalFleet:
        """Start from an empty directory, so an audit sees only this run's readings."""
        shutil.rmtree(plan.base_dir, ignore_errors=True)
        plan.base_dir.mkdir(parents=True)
        return cls(plan)

    def _service(self, name: str, module: str, doc: ConfigDoc) -> ServiceProcess:
        config = write_config(self.layout.config_path(name), doc)
        return ServiceProcess.service(name, module, config, self.layout.log_path(name))

    def _sensor_config(self, index: int) -> ConfigDoc:
        plan = self.plan
        device = plan.device(index)
        place, lat, lon = SENSOR_PLACES[index % len(SENSOR_PLACES)]
        return sensor_config(
            device=device,
            site=plan.site,
            broker=broker_table(self.gateway_broker.port),
            state_dir=self.layout.state_dir(f"sensor-{device}"),
            status_dir=plan.status_dir,
            interval_s=1.0 / plan.rate_hz,
            max_readings=plan.readings_per_sensor,
            model="HW-MD202",
            firmware="1.0.0",
            location={"lat": lat, "lon": lon, "place": place},
            driver={"type": "simulated", "seed": plan.seed + index},
            **self._confirmations(),
            **self._commands(),
            **plan.sensor_settings,
        )

    def _commands(self) -> ConfigDoc:
        return {"commands": dict(self.plan.commands)} if self.plan.commands else {}

    def _confirmations(self) -> ConfigDoc:
        return {"confirmations": dict(self.plan.confirmations)} if self.plan.confirmations else {}

    def _forwarder_config(self) -> ConfigDoc:
        plan = self.plan
        return forwarder_config(
            gateway_id=plan.gateway_id,
            site=plan.site,
            local=broker_table(self.gateway_broker.port),
            uplink=broker_table(self.cloud_broker.port),
            state_dir=self.layout.state_dir("forwarder"),
            status_dir=plan.status_dir,
            spool_quota_bytes=plan.spool_quota_bytes,
            drain_rate_limit=plan.drain_rate_limit,
            # On loopback a confirmation to a sensor costs next to nothing: send them each second,
            # so that a run ends (every sensor's spool empty) soon after its last reading.
            **{"confirm_interval_ms": 1000, **self._confirmations(), **self._commands(), **plan.forwarder_settings},
        )

    def _ble_config(self) -> ConfigDoc:
        """The collector's config, and its recording: `ble_devices` thermometers for `duration_s`."""
        plan = self.plan
        devices, air, taken = ble_site(plan)
        self.ble_measurements = sum(len(m) for m in taken.values())
        recording = self.layout.base / "ble-air.jsonl"
        recording.write_text("".join(dump(a) + "\n" for a in air))
        return ble_config(
            collector=f"{plan.site}-{plan.gateway_id}-ble",
            site=plan.site,
            broker=broker_table(self.gateway_broker.port),
            state_dir=self.layout.state_dir("ble"),
            status_dir=plan.status_dir,
            # Moved to the collector's start, at the pace recorded: readings of now, not of 2023.
            scan={"backend": "replay", "replay_file": str(recording), "replay_speed": 1.0},
            devices=[
                {**row, "place": SENSOR_PLACES[n % len(SENSOR_PLACES)][0]}
                for n, row in enumerate(
                    ble_device_rows(devices, self.layout.base / "ble-keys", expected_interval_s=plan.ble_interval_s)
                )
            ],
            **self._confirmations(),
        )

    def _sink_table(self) -> ConfigDoc:
        plan = self.plan
        if plan.es_url is None:
            return sqlite_sink(plan.sink_path)
        return {
            "type": "elasticsearch",
            "elasticsearch": {
                "hosts": [plan.es_url],
                "index_prefix": self._es_prefix,
                "plain_json": plan.es_plain_json,
            },
        }

    @staticmethod
    def _ingester_name(index: int) -> str:
        return "ingester" if index == 0 else f"ingester{index + 1}"

    def _ingester_config(self, index: int) -> ConfigDoc:
        return ingester_config(
            ingester_id=f"ingester{index + 1}",
            broker=broker_table(self.cloud_broker.port),
            sink=self._sink_table(),
            status_dir=self.plan.status_dir,
        )

    @property
    def ingester_config_path(self) -> Path:
        return self.layout.config_path("ingester")

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
        self.brokers.start()
        # Subscribers first, so that their persistent sessions exist before anything is
        # published to them. The senders would cope anyway (a "no matching subscribers" PUBACK
        # is retried, never taken as delivered), but only after a retry delay.
        for ingester in self.ingesters:
            ingester.start()
        self.wait_for_counter("ingester", "subscribed")
        self.forwarder.start()
        self.wait_for_counter("forwarder", "local_connected")
        for sensor in self.sensors:
            sensor.start()
        if self.ble is not None:
            self.ble.start()

    def wait_for_counter(self, service: str, key: str, timeout_s: float = 15.0) -> bool:
        return wait_until(lambda: any(bool(s.counters.get(key)) for s in self.status_of(service)), timeout_s)

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
        """Each device's own word on what it produced: device -> (boot, last seq)."""
        return expectations_from(self.statuses())

    def sensors_done(self) -> bool:
        """Every sensor has produced its readings and emptied its own spool."""
        done = [
            s
            for s in self.status_of("sensor")
            if int(s.counters.get("readings_total", 0)) >= self.plan.readings_per_sensor
            and int(s.counters.get("spool_depth", 1)) == 0
        ]
        return len(done) == self.plan.sensors and self.ble_done()

    def ble_done(self) -> bool:
        """No collector, or its recording has played out and its spool is empty."""
        if self.ble is None:
            return True
        return any(
            s.counters.get("scan_state") == "finished"
            and s.counters.get("spool_depth") == 0
            and s.counters.get("unconfirmed") == 0
            for s in self.status_of("ble")
        )

    def processes(self) -> list[ServiceProcess]:
        return [*self.sensors, *([self.ble] if self.ble is not None else []), self.forwarder, *self.ingesters]

    def stop(self) -> None:
        for process in self.sensors:
            process.stop()
        if self.ble is not None:
            self.ble.stop()
        self.forwarder.stop()
        for ingester in self.ingesters:
            ingester.stop()
        self.brokers.stop()
