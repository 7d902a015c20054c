"""A real salt-master with three minions (gw1, sensor1, sensor2) on loopback, provisioning the
example site into per-minion sandbox roots.

The minions use `providers: {service: saltmarsh_svc}`, so Salt's own service states really start
Mosquitto, the forwarder and the sensor agents as processes from the rendered units. Minions take
seconds to stop, so one master and its minions serve the whole module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.ops.localfleet.processes import free_port, wait_for_port
from tests.salt_support import (
    PILLAR,
    STATES,
    changed_states,
    failed_states,
    forwarded_logs,
    grains_for,
    sandbox_pillar,
)

MINIONS = {"gw1": ["gateway"], "sensor1": ["sensor"], "sensor2": ["sensor"]}
GATEWAY_UNITS = ("mosquitto.service", "saltmarsh-forwarder.service")


@dataclass
class Fleet:
    master: Any
    cli: Any
    roots: dict[str, Path]
    svc_dirs: dict[str, Path]
    gateway_port: int
    uplink_port: int

    def pillar(self, minion_id: str) -> dict[str, Any]:
        site = {
            # Sensors reach gw1's Mosquitto on loopback; gw1's uplink points at a closed port,
            # without TLS: the placeholder certificates are not real, and the forwarder must
            # keep running (and spooling) while the cloud is unreachable anyway.
            "broker": {"host": "127.0.0.1", "port": self.gateway_port},
            "uplink": {"host": "127.0.0.1", "port": self.uplink_port, "tls": False},
        }
        return sandbox_pillar(
            self.roots[minion_id],
            sites={"example": site},
            gateway={"mosquitto": {"port": self.gateway_port, "bind": "127.0.0.1"}},
        )

    def apply(self, minion_id: str, sls: str) -> dict[str, Any]:
        ret = self.cli.run(
            "state.apply", sls, f"pillar={json.dumps(self.pillar(minion_id))}", minion_tgt=minion_id, _timeout=180
        )
        assert isinstance(ret.data, dict), f"{minion_id} {sls}: {ret.stdout}\n{ret.stderr}"
        return ret.data


def _kill_leftovers(svc_dir: Path) -> None:
    """Safety net: stop by PID anything saltmarsh_svc started that clean did not."""
    for pid_file in svc_dir.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture(scope="module")
def fleet(salt_factories: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    master = salt_factories.salt_master_daemon(
        "saltmarsh-master",
        overrides={
            "interface": "127.0.0.1",
            "file_roots": {"base": [str(STATES)]},
            "pillar_roots": {"base": [str(PILLAR)]},
            "log_level_logfile": "warning",
            **forwarded_logs("master"),
        },
    )
    roots = {minion_id: base / minion_id / "sandbox" for minion_id in MINIONS}
    svc_dirs = {minion_id: base / minion_id / "svc" for minion_id in MINIONS}
    minions = [
        master.salt_minion_daemon(
            minion_id,
            overrides={
                "grains": grains_for(roles),
                "providers": {"service": "saltmarsh_svc"},
                "saltmarsh_svc": {
                    "unit_dirs": [str(roots[minion_id] / "etc/systemd/system")],
                    "state_dir": str(svc_dirs[minion_id]),
                },
                "log_level_logfile": "warning",
                **forwarded_logs("minion"),
            },
        )
        for minion_id, roles in MINIONS.items()
    ]
    # The ExitStack holds every started() context: a dropped one stops its daemon when collected.
    with contextlib.ExitStack() as daemons:
        daemons.enter_context(master.started())
        for minion in minions:
            daemons.enter_context(minion.started())
        try:
            cli = master.salt_cli(timeout=180)
            # state.apply of named sls does not sync custom modules (only a highstate does), and
            # the service provider must be in place before the first service state runs.
            synced = cli.run("saltutil.sync_all", minion_tgt="*", _timeout=120)
            assert synced.returncode == 0, synced.stdout
            yield Fleet(master, cli, roots, svc_dirs, free_port(), free_port())
        finally:
            for svc_dir in svc_dirs.values():
                _kill_leftovers(svc_dir)


def test_grain_targeting_selects_the_gateway(fleet: Fleet) -> None:
    ret = fleet.cli.run("-G", "test.ping", minion_tgt="roles:gateway", _timeout=60)
    assert sorted(ret.data) == ["gw1"], ret.stdout


def test_compound_targeting_selects_the_sites_sensors(fleet: Fleet) -> None:
    ret = fleet.cli.run("-C", "test.ping", minion_tgt="G@roles:sensor and G@site:example", _timeout=60)
    assert sorted(ret.data) == ["sensor1", "sensor2"], ret.stdout
    ret = fleet.cli.run("-C", "test.ping", minion_tgt="G@roles:sensor and G@site:elsewhere", _timeout=60)
    assert not ret.data, ret.stdout


def test_gateway_apply_is_real_then_idempotent_then_clean(fleet: Fleet) -> None:
    root = fleet.roots["gw1"]
    first = fleet.apply("gw1", "saltmarsh.gateway")
    assert not failed_states(first), failed_states(first)
    made = [
        "etc/mosquitto/mosquitto.conf",
        "etc/mosquitto/saltmarsh.passwd",
        "etc/mosquitto/saltmarsh.acl",
        "etc/systemd/system/mosquitto.service.d/saltmarsh.conf",
        "etc/systemd/system/saltmarsh-forwarder.service",
        "etc/saltmarsh/forwarder.toml",
        "etc/saltmarsh/secrets/forwarder-local-password",
    ]
    for path in made:
        assert (root / path).is_file(), path
    assert (root / "etc/mosquitto/saltmarsh.passwd").read_text().startswith("forwarder-gw1:$7$")
    # Salt's service states started the broker and the forwarder from the rendered units.
    assert wait_for_port(fleet.gateway_port, 10)
    for unit in GATEWAY_UNITS:
        assert (fleet.svc_dirs["gw1"] / f"{unit}.pid").is_file(), unit
        assert (fleet.svc_dirs["gw1"] / f"{unit}.enabled").is_file(), unit
    status_file = root / "run/saltmarsh/status/forwarder-gw1.json"
    deadline = time.monotonic() + 15
    while not status_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status_file.exists(), "the forwarder never wrote its status"

    second = fleet.apply("gw1", "saltmarsh.gateway")
    assert not failed_states(second), failed_states(second)
    assert changed_states(second) == [], "a second apply must change nothing"

    # The sensors provision against the gateway that Salt just started.
    for sensor in ("sensor1", "sensor2"):
        ret = fleet.apply(sensor, "saltmarsh.sensor")
        assert not failed_states(ret), failed_states(ret)
        assert (fleet.svc_dirs[sensor] / "saltmarsh-sensor.service.pid").is_file()

    for sensor in ("sensor1", "sensor2"):
        ret = fleet.apply(sensor, "saltmarsh.sensor.clean")
        assert not failed_states(ret), failed_states(ret)
        assert not (fleet.roots[sensor] / "etc/saltmarsh/sensor.toml").exists()
    cleaned = fleet.apply("gw1", "saltmarsh.gateway.clean")
    assert not failed_states(cleaned), failed_states(cleaned)
    for path in made:
        assert not (root / path).exists(), path
    for unit in GATEWAY_UNITS:
        assert not (fleet.svc_dirs["gw1"] / f"{unit}.pid").exists(), unit
    # The spool is data, not config: clean keeps it.
    assert (root / "var/lib/saltmarsh/forwarder").is_dir()
