"""What Salt renders is what the services load, and the rendered Mosquitto really enforces the ACL.

Each role's config sls is applied with `salt-call --local` into a sandbox root; the service TOMLs
are then loaded with saltmarsh's own strict loaders, and the gateway's Mosquitto is started from
the rendered config to try the credentials and the ACL with an MQTT 5 client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml  # type: ignore[import-untyped]
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from saltmarsh.config import load_gateway_config, load_ingester_config, load_sensor_config
from saltmarsh.ops.localfleet.mosquitto import mosquitto_binary
from saltmarsh.ops.localfleet.processes import ServiceProcess, free_port, wait_for_port
from tests.salt_support import LocalMinion, Result, changed_states, failed_states, grains_for, sandbox_pillar

NOT_AUTHORIZED = 0x87
ROLES = {
    "sensor1": (["sensor"], "saltmarsh.sensor.config"),
    "gw1": (["gateway"], "saltmarsh.gateway.config"),
    "master": (["cloud", "master"], "saltmarsh.cloud.config,saltmarsh.master.config"),
}


@dataclass
class Applied:
    roots: dict[str, Path]  # one sandbox per minion: the gateway and the cloud both own /etc/mosquitto
    port: int
    first: dict[str, Result]
    second: dict[str, Result]


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    base = tmp_path_factory.mktemp("configs")
    roots = {minion_id: base / minion_id / "sandbox" for minion_id in ROLES}
    port = free_port()
    minions = {mid: LocalMinion(base / mid, mid, grains_for(roles)) for mid, (roles, _) in ROLES.items()}

    def apply(minion_id: str) -> Result:
        pillar = sandbox_pillar(roots[minion_id], gateway={"mosquitto": {"port": port, "bind": "127.0.0.1"}})
        return minions[minion_id].call("state.apply", ROLES[minion_id][1], pillar=pillar)

    with ThreadPoolExecutor(max_workers=3) as pool:
        first = dict(zip(ROLES, pool.map(apply, ROLES), strict=True))
        second = dict(zip(ROLES, pool.map(apply, ROLES), strict=True))
    return Applied(roots, port, first, second)


METRICS_DIR = "var/lib/prometheus/node-exporter"  # paths:metrics_dir, under the minion's root


@pytest.mark.parametrize("minion_id", sorted(ROLES))
def test_config_applies_then_changes_nothing(applied: Applied, minion_id: str) -> None:
    first, second = applied.first[minion_id], applied.second[minion_id]
    assert first.returncode == 0 and not failed_states(first.data), first.explain()
    assert changed_states(first.data), "the first apply should have written the configs"
    assert second.returncode == 0, second.explain()
    assert changed_states(second.data) == [], second.explain()


def test_sensor_config_loads(applied: Applied) -> None:
    cfg = load_sensor_config(applied.roots["sensor1"] / "etc/saltmarsh/sensor.toml")
    assert (cfg.device, cfg.site) == ("sensor1", "example")
    assert (cfg.driver.type, cfg.driver.pin, cfg.driver.seed) == ("simulated", "D4", 1)
    assert cfg.location is not None and cfg.location.place == "garden"
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.username) == ("192.168.57.1", 1883, "sensor1")
    assert cfg.broker.password is not None
    assert cfg.broker.password.reveal() == "example-sensor1-placeholder-password"
    assert cfg.state_dir == applied.roots["sensor1"] / "var/lib/saltmarsh/sensor"
    assert cfg.metrics_dir == applied.roots["sensor1"] / METRICS_DIR


def test_forwarder_config_loads(applied: Applied) -> None:
    cfg = load_gateway_config(applied.roots["gw1"] / "etc/saltmarsh/forwarder.toml")
    assert (cfg.gateway_id, cfg.site) == ("gw1", "example")
    assert (cfg.local.port, cfg.local.username) == (applied.port, "forwarder-gw1")
    assert cfg.uplink.tls and cfg.uplink.ca_file == applied.roots["gw1"] / "etc/saltmarsh/tls/uplink-ca.pem"
    assert cfg.uplink.password is not None
    assert cfg.uplink.password.reveal() == "example-gw1-uplink-placeholder-password"
    assert cfg.metrics_dir == applied.roots["gw1"] / METRICS_DIR
    assert (applied.roots["gw1"] / METRICS_DIR).is_dir()


def test_ingester_configs_load(applied: Applied) -> None:
    configs = [load_ingester_config(applied.roots["master"] / f"etc/saltmarsh/ingester-{i}.toml") for i in (1, 2)]
    assert [c.ingester_id for c in configs] == ["master-1", "master-2"]
    assert {c.share_group for c in configs} == {"saltmarsh-ingesters"}
    assert {c.sink.path for c in configs} == {applied.roots["master"] / "var/lib/saltmarsh/ingester/sink.db"}
    assert configs[0].broker.password is not None
    assert configs[0].broker.password.reveal() == "example-ingester-placeholder-password"
    assert {c.metrics_dir for c in configs} == {applied.roots["master"] / METRICS_DIR}


def test_one_message_size_reaches_both_brokers_and_every_service(applied: Applied) -> None:
    # saltmarsh:max_message_bytes (16384 by default), plus 1024 for the MQTT header, topic and properties.
    for minion_id in ("gw1", "master"):
        conf = (applied.roots[minion_id] / "etc/mosquitto/mosquitto.conf").read_text()
        assert "\nmax_packet_size 17408\n" in conf, minion_id
    assert load_sensor_config(applied.roots["sensor1"] / "etc/saltmarsh/sensor.toml").max_message_bytes == 16384
    assert load_gateway_config(applied.roots["gw1"] / "etc/saltmarsh/forwarder.toml").max_message_bytes == 16384
    ingester = load_ingester_config(applied.roots["master"] / "etc/saltmarsh/ingester-1.toml")
    assert ingester.limits.max_payload_bytes == 16384


def test_secret_files_are_written_for_their_owner_only(applied: Applied) -> None:
    secrets = [path for root in applied.roots.values() for path in (root / "etc/saltmarsh/secrets").glob("*")]
    secrets += list((applied.roots["gw1"] / "etc/saltmarsh/tls").glob("*key*"))
    assert len(secrets) >= 4
    assert {path: oct(path.stat().st_mode & 0o777) for path in secrets} == dict.fromkeys(secrets, "0o600")


def test_cloud_acl_confines_each_gateway_to_its_site(applied: Applied) -> None:
    acl = (applied.roots["master"] / "etc/mosquitto/saltmarsh.acl").read_text()
    assert "user gateway-gw1\ntopic write saltmarsh/v1/example/#\ntopic read saltmarsh/v1/example/+/cmd" in acl
    assert "user ingester\ntopic read saltmarsh/v1/#" in acl


def test_master_config_has_engine_reactor_and_nodegroups(applied: Applied) -> None:
    conf: dict[str, Any] = yaml.safe_load((applied.roots["master"] / "etc/salt/master.d/saltmarsh.conf").read_text())
    assert conf["engines_dirs"] == [str(applied.roots["master"] / "srv/saltmarsh/salt/engines")]
    assert conf["runner_dirs"] == [str(applied.roots["master"] / "srv/saltmarsh/salt/runners")]
    assert conf["engines"] == [{"saltmarsh_relay": {}}]
    reactor_file = str(applied.roots["master"] / "srv/salt/reactor/saltmarsh/forwarder-down.sls")
    assert conf["reactor"] == [{"salt/beacon/*/service/saltmarsh-forwarder": [reactor_file]}]
    assert conf["nodegroups"]["site-example-gateways"] == "G@site:example and G@roles:gateway"
    assert Path(reactor_file).is_file()


# --- the rendered gateway Mosquitto, for real ---------------------------------------------------


@pytest.fixture(scope="module")
def gateway_broker(applied: Applied, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    conf = applied.roots["gw1"] / "etc/mosquitto/mosquitto.conf"
    log = tmp_path_factory.mktemp("mosquitto") / "mosquitto.log"
    process = ServiceProcess("gateway-mosquitto", [mosquitto_binary(), "-c", str(conf)], log).start()
    try:
        assert wait_for_port(applied.port, 10), process.log_tail()
        yield applied.port
    finally:
        process.stop()


class Probe:
    """One MQTT 5 client that records CONNACK and PUBACK reason codes and what it receives."""

    def __init__(self, port: int, client_id: str, username: str | None, password: str | None) -> None:
        self.connected = threading.Event()
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.received: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.connected.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self.acked:
            self.pubacks[mid] = reason
            self.acked.notify_all()

    def publish(self, topic: str) -> int:
        info = self.client.publish(topic, b"{}", qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, 10), f"no PUBACK for {topic}"
            return self.pubacks[info.mid].value

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_rendered_acl_and_credentials_hold(gateway_broker: int) -> None:
    forwarder = Probe(gateway_broker, "forwarder-gw1", "forwarder-gw1", "example-gw1-forwarder-placeholder-password")
    sensor = Probe(gateway_broker, "sensor-sensor1", "sensor1", "example-sensor1-placeholder-password")
    try:
        assert forwarder.connack is not None and forwarder.connack.value == 0
        assert sensor.connack is not None and sensor.connack.value == 0
        forwarder.client.subscribe("saltmarsh/v1/example/#", qos=1)
        sensor.client.subscribe("saltmarsh/v1/example/sensor1/cmd", qos=1)
        threading.Event().wait(0.3)  # let both SUBACKs land before publishing

        own = "saltmarsh/v1/example/sensor1/reading"
        other = "saltmarsh/v1/example/sensor2/reading"
        own_cmd = "saltmarsh/v1/example/sensor1/cmd"
        assert sensor.publish(own) == 0
        assert sensor.publish(other) == NOT_AUTHORIZED
        assert sensor.publish(own_cmd) == NOT_AUTHORIZED, "a sensor must not publish commands"
        assert forwarder.publish(own_cmd) == 0, "the forwarder brings commands down"
        threading.Event().wait(0.5)
        assert own in forwarder.received
        assert other not in forwarder.received
        assert forwarder.received.count(own_cmd) == 1, "only the forwarder's command was delivered"
        assert sensor.received == [own_cmd], "the sensor reads its own command topic"
    finally:
        forwarder.close()
        sensor.close()


def test_rendered_broker_refuses_a_message_over_max_packet_size(gateway_broker: int) -> None:
    sensor = Probe(gateway_broker, "sensor-big", "sensor1", "example-sensor1-placeholder-password")
    try:
        assert sensor.publish("saltmarsh/v1/example/sensor1/reading") < 0x80  # taken (no subscriber yet)
        info = sensor.client.publish("saltmarsh/v1/example/sensor1/reading", b"x" * 17408, qos=1)
        # paho refuses to send it (the broker announced its limit in CONNACK), or the broker drops
        # the connection: either way no PUBACK says it was taken.
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with sensor.acked:
                assert not sensor.acked.wait_for(lambda: info.mid in sensor.pubacks, 3)
    finally:
        sensor.close()


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("sensor1", "wrong-password"), ("sensor9", "example-sensor1-placeholder-password")],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_refused_logins(gateway_broker: int, username: str | None, password: str | None) -> None:
    probe = Probe(gateway_broker, f"probe-{username}", username, password)
    try:
        assert probe.connack is not None and probe.connack.value != 0, "the broker let this client in"
    finally:
        probe.close()
