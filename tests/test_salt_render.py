"""Every sls of the saltmarsh formula renders, for every role and each cpuarch, with the example
pillar; and each kind of bad pillar stops the render with its documented message."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config.commander import load_commander_config
from saltmarsh.config.sensor import AlertsConfig, AlertThreshold, Bound, device_configs, load_sensor_config
from saltmarsh.contract.signature import generate_key
from tests.salt_support import (
    CPUARCHES,
    PILLAR,
    ROLE_MINIONS,
    LocalMinion,
    Result,
    failed_states,
    grains_for,
    sandbox_pillar,
)

CASES = [(minion, arch) for minion in ROLE_MINIONS for arch in CPUARCHES]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Result]:
    """All role x cpuarch renders at once: each salt-call spends seconds starting up."""
    base = tmp_path_factory.mktemp("render")

    def render(case: tuple[str, str]) -> Result:
        minion_id, arch = case
        roles, sls = ROLE_MINIONS[minion_id]
        minion = LocalMinion(base / f"{minion_id}-{arch}", minion_id, grains_for(roles, arch))
        return minion.call("state.show_sls", ",".join(sls))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(render, CASES), strict=True))


@pytest.mark.parametrize(("minion_id", "cpuarch"), CASES)
def test_every_sls_renders(rendered: dict[tuple[str, str], Result], minion_id: str, cpuarch: str) -> None:
    result = rendered[(minion_id, cpuarch)]
    assert result.returncode == 0, result.explain()
    states = result.data
    assert isinstance(states, dict) and states, result.explain()
    # template-formula ids: <formula>-<sls path>-<function>, so an id says where it lives.
    for state_id, body in states.items():
        sls_prefix = body["__sls__"].replace(".", "-").replace("-init", "")
        assert state_id.startswith(sls_prefix + "-"), f"{state_id} is not under {body['__sls__']}"


def _unit_limits(states: dict[str, Any], state_id: str) -> dict[str, str]:
    for arg in states[state_id]["file"]:
        if isinstance(arg, dict) and "context" in arg:
            limits: dict[str, str] = arg["context"]["limits"]
            return limits
    raise AssertionError(f"{state_id} has no context")


def test_pi_zero_gets_the_smallest_limits(rendered: dict[tuple[str, str], Result]) -> None:
    zero = rendered[("sensor1", "armv6l")].data
    pc = rendered[("sensor1", "x86_64")].data
    unit = "saltmarsh-sensor-service-unit-file-managed"
    assert _unit_limits(zero, unit) == {"memory_max": "64M", "cpu_quota": "40%"}
    assert _unit_limits(pc, unit) == {"memory_max": "128M", "cpu_quota": "50%"}


def test_secrets_stay_out_of_the_compiled_states(rendered: dict[tuple[str, str], Result]) -> None:
    # Compiled states go to the job cache and show_sls output; passwords must reach the host
    # only through contents_pillar or templates that read pillar themselves.
    secrets: tuple[str, ...] = (
        "placeholder-password",
        "placeholder-api-key",
        "placeholder-secret-access-key",
        "PLACEHOLDERKEYID",
    )
    secrets += ("PLACEHOLDER-EXAMPLE-gw1-client-key", "PLACEHOLDER-EXAMPLE-cloud-broker-key")
    for result in rendered.values():
        leaked = [secret for secret in secrets if secret in result.stdout]
        assert not leaked, f"{leaked} in {result.argv}"


# Each bad pillar, the minion that renders it, and the documented message (pillar.example).
BAD_PILLAR = {
    "missing-device-password": (
        "secrets/example/sensor2.sls",
        "password: example-sensor2-placeholder-password",
        "note: no password",
        "gw1",
        "saltmarsh pillar: saltmarsh:sites:example:devices:sensor2:password is missing; "
        "set it in the device secret file (pillar matched by minion id)",
    ),
    "malformed-pin": (
        "sites/example.sls",
        "pin: D4,",
        "pin: GPIO4,",
        "sensor1",
        "saltmarsh pillar: saltmarsh:sites:example:devices:sensor1:driver:pin 'GPIO4' "
        "is not a board pin name such as D4",
    ),
    "bad-max-message-bytes": (
        "cloud.sls",
        "saltmarsh:\n  cloud:\n",
        "saltmarsh:\n  max_message_bytes: 10\n  cloud:\n",
        "master",
        "saltmarsh pillar: saltmarsh:max_message_bytes 10 is not an integer between 64 and 10000000",
    ),
    "old-max-payload-bytes": (
        "cloud.sls",
        "    ingester:\n      instances: 2\n",
        "    ingester:\n      instances: 2\n      limits: {max_payload_bytes: 4096}\n",
        "master",
        "saltmarsh pillar: saltmarsh:cloud:ingester:limits:max_payload_bytes "
        "is replaced by saltmarsh:max_message_bytes",
    ),
    "unknown-confirmation-mode": (
        "sites/example.sls",
        "saltmarsh:\n",
        "saltmarsh:\n  confirmations: {mode: acked}\n",
        "sensor1",
        "saltmarsh pillar: saltmarsh:confirmations:mode 'acked' is not a confirmation mode; "
        "expected one of end-to-end, broker",
    ),
    "command-key-not-a-list": (
        "sites/example.sls",
        "saltmarsh:\n",
        "saltmarsh:\n  commands: {public_keys: abc}\n",
        "sensor1",
        "saltmarsh pillar: saltmarsh:commands:public_keys is not a list of at most 8 base64 public keys",
    ),
    "command-signing-key-in-pillar": (
        "sites/example.sls",
        "saltmarsh:\n",
        "saltmarsh:\n  commands: {public_keys: ['-----BEGIN PRIVATE KEY-----']}\n",
        "gw1",
        "saltmarsh pillar: saltmarsh:commands:public_keys:0 is not a public key: the signing key stays on the master,"
        " never in pillar",
    ),
    "command-key-bad-base64": (
        "sites/example.sls",
        "saltmarsh:\n",
        "saltmarsh:\n  commands: {public_keys: [AAAA]}\n",
        "sensor1",
        "saltmarsh pillar: saltmarsh:commands:public_keys:0 is not the base64 of a 32-byte Ed25519 public key",
    ),
    "confirmation-silence-out-of-range": (
        "sites/example.sls",
        "saltmarsh:\n",
        "saltmarsh:\n  confirmations: {silence_s: 0}\n",
        "gw1",
        "saltmarsh pillar: saltmarsh:confirmations:silence_s 0 is not a number of seconds between 0.1 and 86400",
    ),
    "alert-threshold-not-a-number": (
        "sites/example.sls",
        "saltmarsh:\n",
        "saltmarsh:\n  sensor: {alerts: {above: {temperature: hot}}}\n",
        "sensor1",
        "saltmarsh pillar: saltmarsh:sensor:alerts:above:temperature hot is not a finite number",
    ),
    "swarm-of-none": (
        "sites/example.sls",
        "driver: {type: simulated, pin: D4, seed: 1}",
        "swarm: 0\n          driver: {type: simulated, pin: D4, seed: 1}",
        "sensor1",
        "saltmarsh pillar: saltmarsh:sites:example:devices:sensor1:swarm 0 is not an integer between 1 and 1000",
    ),
    "unknown-driver": (
        "sites/example.sls",
        "type: simulated, pin: D17",
        "type: bme280, pin: D17",
        "gw1",
        "saltmarsh pillar: saltmarsh:sites:example:devices:sensor2:driver:type 'bme280' is not a known driver; "
        "expected one of simulated, dht11, dht22, replay",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PILLAR))
def test_bad_pillar_fails_with_its_message(tmp_path: Path, case: str) -> None:
    relative, old, new, minion_id, message = BAD_PILLAR[case]
    pillar_root = tmp_path / "pillar"
    shutil.copytree(PILLAR, pillar_root)
    target = pillar_root / relative
    assert old in target.read_text(), f"{relative} no longer holds {old!r}"
    target.write_text(target.read_text().replace(old, new))
    roles, sls = ROLE_MINIONS[minion_id]
    minion = LocalMinion(tmp_path, minion_id, grains_for(roles), pillar_root=pillar_root)
    result = minion.call("state.show_sls", ",".join(sls))
    assert result.returncode != 0, result.explain()
    assert message in result.stdout + result.stderr, result.explain()


def _functions(states: dict[str, Any]) -> dict[str, str]:
    """state id -> 'module.function' as show_sls lists it."""
    out = {}
    for state_id, body in states.items():
        for module, args in body.items():
            if not module.startswith("__") and isinstance(args, list):
                function = next(a for a in args if isinstance(a, str))
                out[state_id] = f"{module}.{function}"
    return out


def test_pillar_switches_render_docker_mosquitto_and_es_templates(tmp_path: Path) -> None:
    gateway = LocalMinion(tmp_path / "gw1", "gw1", grains_for(["gateway"]))
    cloud = LocalMinion(tmp_path / "master", "master", grains_for(["cloud"]))
    docker = {"saltmarsh": {"gateway": {"mosquitto": {"docker": {"enabled": True}}}}}
    elastic = {
        "saltmarsh": {"cloud": {"elasticsearch": {"enabled": True}, "ingester": {"sink": {"type": "elasticsearch"}}}}
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        gateway_job = pool.submit(gateway.call, "state.show_sls", "saltmarsh.gateway", pillar=docker)
        cloud_job = pool.submit(cloud.call, "state.show_sls", "saltmarsh.cloud", pillar=elastic)
    gateway_result, cloud_result = gateway_job.result(), cloud_job.result()
    assert gateway_result.returncode == 0, gateway_result.explain()
    functions = _functions(gateway_result.data)
    assert functions["saltmarsh-gateway-service-mosquitto-docker-container-running"] == "docker_container.running"
    assert "saltmarsh-gateway-service-mosquitto-running" not in functions
    # The SDK the docker_* states import, in Salt's own Python, before the image is pulled.
    assert functions["saltmarsh-gateway-package-docker-sdk-pip-installed"] == "pip.installed"
    image = gateway_result.data["saltmarsh-gateway-package-mosquitto-docker-image-present"]["docker_image"]
    assert {"pip": "saltmarsh-gateway-package-docker-sdk-pip-installed"} in next(
        a["require"] for a in image if isinstance(a, dict) and "require" in a
    )
    assert cloud_result.returncode == 0, cloud_result.explain()
    templates = cloud_result.data["saltmarsh-cloud-elasticsearch-templates-cmd-run"]["cmd"]
    command = next(a["name"] for a in templates if isinstance(a, dict) and "name" in a)
    assert "/bin/saltmarsh es-templates --config /etc/saltmarsh/ingester-1.toml" in command
    assert any(isinstance(a, dict) and "unless" in a for a in templates), "applied once: guarded by unless"


def test_the_docker_sdk_is_present_in_the_minions_own_python(tmp_path: Path) -> None:
    """The formula's pip state, run for real on a minion: satisfied by what Salt's Python holds
    (the `salt` extra installs the SDK), so it changes nothing and needs no network."""
    gateway = LocalMinion(tmp_path / "gw1", "gw1", grains_for(["gateway"]))
    docker = {"saltmarsh": {"gateway": {"mosquitto": {"docker": {"enabled": True}}}}}
    state_id = "saltmarsh-gateway-package-docker-sdk-pip-installed"
    result = gateway.call("state.sls_id", state_id, "saltmarsh.gateway", pillar=docker)
    assert result.returncode == 0, result.explain()
    (ret,) = result.data.values()
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert "docker" in ret["comment"] and "already installed" in ret["comment"], ret["comment"]


def _swarm_block(device: str) -> str:
    channels = ("reading", "event", "alert", "status", "cmdres")
    topics = [f"topic write saltmarsh/v1/example/{device}/{c}" for c in channels]
    topics += [f"topic read saltmarsh/v1/example/{device}/{c}" for c in ("cmd", "ack")]
    return "\n".join(topics) + "\n"


# Each row: the pillar it renders with, the minion, the sls it applies, the file it writes (under
# the sandbox root), what that file must hold and what it must not. sensor1 as a swarm host of 3,
# the ACL that gives its credential its three devices, and sensor1 with threshold alerts.
SWARM_PILLAR = {"sites": {"example": {"devices": {"sensor1": {"swarm": 3}}}}}
COMMAND_KEY = generate_key()[1]
ALERTS_PILLAR = {
    "sensor": {"alerts": {"above": {"temperature": 30, "humidity": 95.5}, "below": {"humidity": 20.0}}},
    "commands": {"public_keys": [COMMAND_KEY]},
}
RENDERS: dict[str, tuple[dict[str, Any], str, str, str, list[str], list[str]]] = {
    "swarm-sensor": (
        SWARM_PILLAR,
        "sensor1",
        "saltmarsh.sensor.config",
        "etc/saltmarsh/sensor.toml",
        ["\n[swarm]\ndevices = 3\n", 'device = "sensor1"\n', 'username = "sensor1"\n'],
        ["[alerts", "[commands]"],
    ),
    "swarm-acl": (
        SWARM_PILLAR,
        "gw1",
        "saltmarsh.gateway.config",
        "etc/mosquitto/saltmarsh.acl",
        [
            "\nuser sensor1\n",
            "in a swarm).\ntopic read saltmarsh/v1/example/_all/cmd\n",
            *(f"\n# sensor1-00{n}\n" + _swarm_block(f"sensor1-00{n}") for n in (1, 2, 3)),
            "\nuser sensor2\ntopic read saltmarsh/v1/example/_all/cmd\n" + _swarm_block("sensor2"),
        ],
        ["sensor1-004", "/sensor1/"],
    ),
    "alerts": (
        ALERTS_PILLAR,
        "sensor1",
        "saltmarsh.sensor.config",
        "etc/saltmarsh/sensor.toml",
        [
            '\n[alerts.above]\n"humidity" = 95.5\n"temperature" = 30.0\n',
            '\n[alerts.below]\n"humidity" = 20.0\n',
            f'\n[commands]\npublic_keys = ["{COMMAND_KEY}"]\n',
        ],
        ["[swarm]"],
    ),
}


def test_pillar_renders_files_that_hold_it_and_that_the_sensor_loads(tmp_path: Path) -> None:
    def apply(case: str) -> tuple[Result, str]:
        pillar, minion_id, sls, path, _, _ = RENDERS[case]
        root = tmp_path / case / "sandbox"
        minion = LocalMinion(tmp_path / case, minion_id, grains_for(ROLE_MINIONS[minion_id][0]))
        result = minion.call("state.apply", sls, pillar=sandbox_pillar(root, **pillar))
        written = root / path
        return result, written.read_text() if written.is_file() else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = dict(zip(RENDERS, pool.map(apply, RENDERS), strict=True))
    for case, (result, text) in outcomes.items():
        _, minion_id, _, path, present, absent = RENDERS[case]
        assert result.returncode == 0 and not failed_states(result.data), result.explain()
        for expected in present:
            assert expected in text, f"{case}: {minion_id} {path} lacks {expected!r}:\n{text}"
        for unexpected in absent:
            assert unexpected not in text, f"{case}: {minion_id} {path} holds {unexpected!r}:\n{text}"
    # And the agent loads what was rendered: three devices under sensor1's one credential, no alerts...
    cfg = load_sensor_config(tmp_path / "swarm-sensor/sandbox/etc/saltmarsh/sensor.toml")
    members = device_configs(cfg)
    assert [(m.device, m.broker.username, m.driver.seed) for m in members] == [
        ("sensor1-001", "sensor1", 2),
        ("sensor1-002", "sensor1", 3),
        ("sensor1-003", "sensor1", 4),
    ]
    assert cfg.alerts == AlertsConfig()
    assert not cfg.commands.enabled
    # ...and the thresholds, each bound's sorted by metric, and the command key it trusts.
    with_alerts = load_sensor_config(tmp_path / "alerts/sandbox/etc/saltmarsh/sensor.toml")
    assert with_alerts.commands.public_keys == (COMMAND_KEY,)
    alerts = with_alerts.alerts
    assert alerts.thresholds == (
        AlertThreshold("humidity", Bound.ABOVE, 95.5),
        AlertThreshold("temperature", Bound.ABOVE, 30.0),
        AlertThreshold("humidity", Bound.BELOW, 20.0),
    )


def test_the_commander_gets_a_publish_only_user_and_a_config_that_loads(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    key = tmp_path / "command.key"
    key.write_bytes(generate_key()[0])
    key.chmod(0o600)
    commander = {"enabled": True, "password": "commander-secret-1", "signing_key_file": str(key)}
    minion = LocalMinion(tmp_path, "master", grains_for(ROLE_MINIONS["master"][0]))
    result = minion.call(
        "state.apply", "saltmarsh.cloud.config", pillar=sandbox_pillar(root, cloud={"commander": commander})
    )
    assert result.returncode == 0 and not failed_states(result.data), result.explain()
    acl = (root / "etc/mosquitto/saltmarsh.acl").read_text()
    assert "\nuser commander\ntopic write saltmarsh/v1/+/+/cmd\n" in acl
    assert "commander:commander-secret-1" in (root / "etc/mosquitto/saltmarsh.passwd.src").read_text()
    cfg = load_commander_config(root / "etc/saltmarsh/commander.toml")
    assert (cfg.broker.username, cfg.broker.host, cfg.signing_key_file) == ("commander", "127.0.0.1", key)
    assert cfg.sink.type == "sqlite" and cfg.sink.path == root / "var/lib/saltmarsh/ingester/sink.db"
    assert cfg.store == root / "var/lib/saltmarsh/commands/rollouts.db"
    assert (root / "etc/saltmarsh/secrets/commander-broker-password").read_text().strip() == "commander-secret-1"
    assert "commander-secret-1" not in (root / "etc/saltmarsh/commander.toml").read_text()


def test_without_the_commander_no_one_may_publish_a_command(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    minion = LocalMinion(tmp_path, "master", grains_for(ROLE_MINIONS["master"][0]))
    result = minion.call("state.apply", "saltmarsh.cloud.config", pillar=sandbox_pillar(root))
    assert result.returncode == 0 and not failed_states(result.data), result.explain()
    assert "topic write saltmarsh/v1/+/+/cmd" not in (root / "etc/mosquitto/saltmarsh.acl").read_text()
    assert not (root / "etc/saltmarsh/commander.toml").exists()
