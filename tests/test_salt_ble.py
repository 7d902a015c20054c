"""The BLE collector in the formula: what a site's BLE pillar renders on its gateway (ble.toml, the
collector's credential and bindkeys, its ACL block and password line), that the rendered Mosquitto
enforces that ACL, and that each kind of bad BLE pillar stops the render naming its key.

Every apply runs `salt-call --local` into a sandbox root (tests.salt_support), so nothing leaves
the test's temp dir.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config import load_ble_config
from saltmarsh.contract.mac import ble_device_id as device_id_for
from saltmarsh.ops.localfleet.mosquitto import mosquitto_binary
from saltmarsh.ops.localfleet.processes import ServiceProcess, free_port, wait_for_port
from tests.salt_support import (
    PILLAR,
    LocalMinion,
    Result,
    changed_states,
    failed_states,
    grains_for,
    sandbox_pillar,
)
from tests.test_salt_configs import NOT_AUTHORIZED, Probe

BTHOME = "54:48:E6:8F:80:A5"  # encrypted: it has a bindkey
RUUVI = "C4:7C:8D:6A:3E:7A"
BINDKEY = "231d39c1d7cc1ab1aee224cd096db932"  # bthome-ble's own test key
PASSWORD = "example-gw1-ble-test-password"
SECRETS = {"ble_collector_password": PASSWORD, "ble_bindkeys": {BTHOME: BINDKEY}}
TWO_DEVICES = {
    "gateway": "gw1",
    "devices": {
        BTHOME: {"kind": "bthome", "place": "cold room 2", "expected_interval_s": 60},
        RUUVI: {"kind": "ruuvi", "place": "freezer", "expected_interval_s": 30},
    },
}
CHANNELS_WRITTEN = ("reading", "event", "alert", "status", "cmdres")
CHANNELS_READ = ("cmd", "ack")


def _pillar(ble: dict[str, Any] | None, secrets: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """Pillar overrides: the site's BLE block, gw1's BLE secrets, and any other settings."""
    site: dict[str, Any] = {} if ble is None else {"ble": ble}
    if secrets:
        site["gateways"] = {"gw1": secrets}
    return {"sites": {"example": site}, **settings}


# Each case: its pillar, then the files it writes under the sandbox root, each with what it must
# hold ("{root}" is the sandbox) and what it must not; a file whose lists are None must not exist.
Files = dict[str, tuple[list[str], list[str]] | None]
BLE_TOML = "etc/saltmarsh/ble.toml"
ACL = "etc/mosquitto/saltmarsh.acl"
PASSWD = "etc/mosquitto/saltmarsh.passwd.src"
BROKER_PASSWORD = "etc/saltmarsh/secrets/ble-broker-password"
BTHOME_KEY = "etc/saltmarsh/secrets/ble-keys/5448E68F80A5.key"
METRICS_DIR = "var/lib/prometheus/node-exporter"


def _device_block(mac: str, kind: str, place: str, interval: str, bindkey: bool) -> str:
    block = f'\n[[devices]]\nmac = "{mac}"\nkind = "{kind}"\nplace = "{place}"\nexpected_interval_s = {interval}\n'
    if bindkey:
        block += f'bindkey_file = "{{root}}/etc/saltmarsh/secrets/ble-keys/{mac.replace(":", "")}.key"\n'
    return block


CASES: dict[str, tuple[dict[str, Any], Files]] = {
    "two-devices": (
        _pillar(TWO_DEVICES, SECRETS),
        {
            BLE_TOML: (
                [
                    '\ncollector = "gw1-ble"\nsite = "example"\nstate_dir = "{root}/var/lib/saltmarsh/ble"\n'
                    'status_dir = "{root}/run/saltmarsh/status"\n'
                    'metrics_dir = "{root}/var/lib/prometheus/node-exporter"\n'
                    "publish_window = 100\n"
                    "spool_quota_bytes = 50000000\nmax_message_bytes = 16384\ndiscovery = false\n"
                    "stale_factor = 3.0\n",
                    '\n[scan]\nbackend = "bleak"\nadapters = []\npassive = true\n\n',
                    '\n[confirmations]\nmode = "end-to-end"\novertaken_s = 10.0\nsilence_s = 60.0\n'
                    "silence_max_s = 600.0\n",
                    '\n[broker]\nhost = "127.0.0.1"\nport = {port}\nusername = "gw1-ble"\n'
                    'password_file = "{root}/etc/saltmarsh/secrets/ble-broker-password"\n',
                    _device_block(BTHOME, "bthome", "cold room 2", "60.0", bindkey=True),
                    _device_block(RUUVI, "ruuvi", "freezer", "30.0", bindkey=False).rstrip("\n"),
                ],
                [BINDKEY, PASSWORD, "replay_", "tls"],
            ),
            BROKER_PASSWORD: ([PASSWORD + "\n"], []),
            BTHOME_KEY: ([BINDKEY + "\n"], []),
            PASSWD: ([f"\ngw1-ble:{PASSWORD}\n"], []),
        },
    ),
    "discovery": (
        _pillar(
            {"discovery": True, "stale_factor": 5, "devices": {RUUVI: {"kind": "ruuvi"}}},
            SECRETS | {"ble_bindkeys": {}},
        ),
        {
            BLE_TOML: (
                [
                    "\ndiscovery = true\nstale_factor = 5.0\n",
                    f'mac = "{RUUVI}"\nkind = "ruuvi"\nexpected_interval_s = 60.0',
                ],
                ["place", "bindkey_file"],
            ),
            BROKER_PASSWORD: ([PASSWORD], []),
            BTHOME_KEY: None,
        },
    ),
    "replay-lab": (
        _pillar(
            {"devices": {BTHOME: {"kind": "bthome", "place": "lab bench"}}},
            {"ble_collector_password": PASSWORD},
            gateway={
                "ble": {
                    "scan": {
                        "backend": "replay",
                        "adapters": ["hci0", "hci1"],
                        "passive": False,
                        "replay_file": "{root}/ble-recording.jsonl",
                        "replay_speed": 4,
                    }
                }
            },
        ),
        {
            BLE_TOML: (
                [
                    '\n[scan]\nbackend = "replay"\nadapters = ["hci0", "hci1"]\npassive = false\n'
                    'replay_file = "{root}/ble-recording.jsonl"\nreplay_speed = 4.0\n'
                ],
                ["bindkey_file"],
            ),
            BTHOME_KEY: None,
        },
    ),
    "enabled-without-devices": (
        _pillar(None, {"ble_collector_password": PASSWORD}, gateway={"ble": {"enabled": True}}),
        {
            BLE_TOML: (['collector = "gw1-ble"\n', "discovery = false\n"], ["[[devices]]"]),
            ACL: (["\nuser gw1-ble\ntopic write saltmarsh/v1/example/gw1-ble/status\n"], ["/ble-"]),
        },
    ),
    # The site's BLE devices belong to its other gateway: nothing of them on gw1.
    "collected-elsewhere": (
        {"sites": {"example": {"ble": TWO_DEVICES | {"gateway": "gw2"}, "gateways": {"gw2": {}}}}},
        {BLE_TOML: None, BROKER_PASSWORD: None, ACL: ([], ["gw1-ble", "gw2-ble", "ble-"]), PASSWD: ([], ["-ble"])},
    ),
    "no-ble": (_pillar(None), {BLE_TOML: None, BROKER_PASSWORD: None, ACL: ([], ["-ble"]), PASSWD: ([], ["-ble"])}),
}


@dataclass
class Applied:
    root: Path
    port: int
    first: Result
    second: Result

    def text(self, relative: str) -> str:
        return (self.root / relative).read_text()


def _apply(base: Path, case: str, pillar: dict[str, Any], port: int) -> Applied:
    root = base / case / "sandbox"
    settings = _fill(pillar, root)
    gateway = settings.setdefault("gateway", {})
    gateway["mosquitto"] = {"port": port, "bind": "127.0.0.1"}
    minion = LocalMinion(base / case, "gw1", grains_for(["gateway"]))
    first = minion.call("state.apply", "saltmarsh.gateway.config", pillar=sandbox_pillar(root, **settings))
    second = minion.call("state.apply", "saltmarsh.gateway.config", pillar=sandbox_pillar(root, **settings))
    return Applied(root, port, first, second)


def _fill(value: Any, root: Path) -> Any:
    """`value` with "{root}" in its strings replaced by the sandbox root."""
    if isinstance(value, dict):
        return {key: _fill(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, root) for item in value]
    return value.replace("{root}", str(root)) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Applied]:
    """Every case applied twice (the second must change nothing), four at a time."""
    base = tmp_path_factory.mktemp("ble")
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = {case: pool.submit(_apply, base, case, pillar, free_port()) for case, (pillar, _) in CASES.items()}
        return {case: job.result() for case, job in jobs.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ble_pillar_renders_its_files(applied: dict[str, Applied], case: str) -> None:
    done = applied[case]
    assert done.first.returncode == 0 and not failed_states(done.first.data), done.first.explain()
    assert done.second.returncode == 0 and changed_states(done.second.data) == [], done.second.explain()
    for relative, expected in CASES[case][1].items():
        path = done.root / relative
        if expected is None:
            assert not path.exists(), f"{case}: {relative} was written"
            continue
        text = path.read_text()
        present, absent = expected
        for template in present:
            wanted = template.replace("{root}", str(done.root)).replace("{port}", str(done.port))
            assert wanted in text, f"{case}: {relative} lacks {wanted!r}:\n{text}"
        for unwanted in absent:
            assert unwanted not in text, f"{case}: {relative} holds {unwanted!r}:\n{text}"


def test_collector_secrets_are_for_the_service_user_only(applied: dict[str, Applied]) -> None:
    root = applied["two-devices"].root
    for relative in (BROKER_PASSWORD, BTHOME_KEY):
        assert stat.S_IMODE((root / relative).stat().st_mode) == 0o600, relative
    assert stat.S_IMODE((root / "etc/saltmarsh/secrets/ble-keys").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / BLE_TOML).stat().st_mode) == 0o640
    assert (root / "var/lib/saltmarsh/ble").is_dir(), "the collector's state dir"


def test_rendered_ble_toml_loads(applied: dict[str, Applied]) -> None:
    root = applied["two-devices"].root
    cfg = load_ble_config(root / BLE_TOML)
    assert (cfg.collector, cfg.site, cfg.discovery, cfg.stale_factor) == ("gw1-ble", "example", False, 3.0)
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.username) == (
        "127.0.0.1",
        applied["two-devices"].port,
        "gw1-ble",
    )
    assert cfg.broker.password is not None and cfg.broker.password.reveal() == PASSWORD
    assert [(d.mac, d.kind, d.place, d.expected_interval_s, d.device_id) for d in cfg.devices] == [
        (BTHOME, "bthome", "cold room 2", 60.0, device_id_for(BTHOME)),
        (RUUVI, "ruuvi", "freezer", 30.0, device_id_for(RUUVI)),
    ]
    assert [d.bindkey_bytes for d in cfg.devices] == [bytes.fromhex(BINDKEY), None]
    assert (cfg.state_dir, cfg.metrics_dir) == (root / "var/lib/saltmarsh/ble", root / METRICS_DIR)
    assert BINDKEY not in repr(cfg) and PASSWORD not in repr(cfg), "a secret in the config's repr"
    discovery = load_ble_config(applied["discovery"].root / BLE_TOML)
    assert (discovery.discovery, discovery.stale_factor, [d.mac for d in discovery.devices]) == (True, 5.0, [RUUVI])
    lab = applied["replay-lab"].root
    scan = load_ble_config(lab / BLE_TOML).scan
    assert (scan.backend, scan.adapters, scan.passive) == ("replay", ("hci0", "hci1"), False)
    assert (scan.replay_file, scan.replay_speed) == (lab / "ble-recording.jsonl", 4.0)
    assert load_ble_config(applied["enabled-without-devices"].root / BLE_TOML).devices == ()


def _acl_users(text: str) -> dict[str, list[str]]:
    """user -> its topic lines, in order; comments and blank lines dropped."""
    users: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("user "):
            current = users.setdefault(line.removeprefix("user "), [])
        elif line.startswith("topic "):
            current.append(line)
    return users


def _device_topics(site: str, device: str) -> list[str]:
    return [f"topic write saltmarsh/v1/{site}/{device}/{c}" for c in CHANNELS_WRITTEN] + [
        f"topic read saltmarsh/v1/{site}/{device}/{c}" for c in CHANNELS_READ
    ]


PRESENCE = "topic write saltmarsh/v1/example/gw1-ble/status"
DISCOVERY = [f"topic write saltmarsh/v1/example/+/{c}" for c in ("reading", "event", "alert", "status")] + [
    "topic read saltmarsh/v1/example/+/ack"
]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "two-devices",
            [
                PRESENCE,
                *_device_topics("example", device_id_for(BTHOME)),
                *_device_topics("example", device_id_for(RUUVI)),
            ],
        ),
        ("discovery", [PRESENCE, *DISCOVERY, *_device_topics("example", device_id_for(RUUVI))]),
        ("enabled-without-devices", [PRESENCE]),
    ],
)
def test_collector_acl_lists_exactly_its_devices(applied: dict[str, Applied], case: str, expected: list[str]) -> None:
    users = _acl_users(applied[case].text(ACL))
    assert users["gw1-ble"] == expected
    # The Pi sensors' and the forwarder's blocks are what they are without BLE.
    without = _acl_users(applied["no-ble"].text(ACL))
    assert {user: topics for user, topics in users.items() if user != "gw1-ble"} == without
    assert not any("sensor" in topic for topic in users["gw1-ble"])


def test_discovery_acl_says_what_it_costs(applied: dict[str, Applied]) -> None:
    acl = applied["discovery"].text(ACL)
    assert "That is the price of discovery: Mosquitto ACLs have no prefix patterns" in acl
    assert "price of discovery" not in applied["two-devices"].text(ACL)


# --- the rendered Mosquitto, for real --------------------------------------------------------


@pytest.fixture(scope="module")
def brokers(applied: dict[str, Applied], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """The gateway Mosquitto of the two-devices and the discovery sandboxes, from their rendered configs."""
    logs = tmp_path_factory.mktemp("ble-mosquitto")
    processes = []
    try:
        for case in ("two-devices", "discovery"):
            conf = applied[case].root / "etc/mosquitto/mosquitto.conf"
            process = ServiceProcess(f"mosquitto-{case}", [mosquitto_binary(), "-c", str(conf)], logs / f"{case}.log")
            processes.append(process.start())
            assert wait_for_port(applied[case].port, 10), process.log_tail()
        yield {case: applied[case].port for case in ("two-devices", "discovery")}
    finally:
        for process in processes:
            process.stop()


OTHER_BLE = "ble-0a0b0c0d0e0f"  # heard, but not in pillar
# case, topic the collector publishes, allowed
PUBLISHES = [
    ("two-devices", f"saltmarsh/v1/example/{device_id_for(BTHOME)}/reading", True),
    ("two-devices", f"saltmarsh/v1/example/{device_id_for(RUUVI)}/cmdres", True),
    ("two-devices", "saltmarsh/v1/example/gw1-ble/status", True),
    ("two-devices", f"saltmarsh/v1/example/{OTHER_BLE}/reading", False),
    ("two-devices", "saltmarsh/v1/example/sensor1/reading", False),
    ("two-devices", f"saltmarsh/v1/example/{device_id_for(BTHOME)}/cmd", False),
    ("two-devices", f"saltmarsh/v1/example/{device_id_for(BTHOME)}/ack", False),
    ("two-devices", "saltmarsh/v1/other-site/gw1-ble/status", False),
    ("discovery", f"saltmarsh/v1/example/{OTHER_BLE}/reading", True),
    ("discovery", f"saltmarsh/v1/example/{OTHER_BLE}/status", True),
    ("discovery", "saltmarsh/v1/example/sensor1/reading", True),  # the price of discovery
    ("discovery", f"saltmarsh/v1/example/{OTHER_BLE}/cmdres", False),
    ("discovery", f"saltmarsh/v1/example/{OTHER_BLE}/cmd", False),
]


def test_rendered_broker_holds_the_collector_to_its_acl(brokers: dict[str, int]) -> None:
    probes = {case: Probe(port, f"gw1-ble-{case}", "gw1-ble", PASSWORD) for case, port in brokers.items()}
    sensor = Probe(brokers["two-devices"], "sensor1", "sensor1", "example-sensor1-placeholder-password")
    try:
        for probe in probes.values():
            assert probe.connack is not None and probe.connack.value == 0, "the collector's password"
        codes = [(case, topic, probes[case].publish(topic)) for case, topic, _ in PUBLISHES]
        # Taken is a success code (0, or 0x10 when no one subscribes); refused is Not authorized.
        assert [(case, topic, code < 0x80) for case, topic, code in codes] == PUBLISHES
        assert {code for _, _, code in codes if code >= 0x80} == {NOT_AUTHORIZED}
        # ...and no Pi sensor may publish as a BLE device.
        assert sensor.publish(f"saltmarsh/v1/example/{device_id_for(BTHOME)}/reading") == NOT_AUTHORIZED
    finally:
        for probe in [*probes.values(), sensor]:
            probe.close()


# --- the unit, the service, and what stays out of the compiled states ----------------------------


def test_unit_runs_the_collector_and_secrets_stay_out_of_the_states(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    cases = {"with": _pillar(TWO_DEVICES, SECRETS), "without": _pillar(None)}
    minions = {case: LocalMinion(tmp_path / case, "gw1", grains_for(["gateway"])) for case in cases}
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {
            case: pool.submit(
                minions[case].call, "state.show_sls", "saltmarsh.gateway", pillar=sandbox_pillar(root, **p)
            )
            for case, p in cases.items()
        }
        results = {case: job.result() for case, job in jobs.items()}
    for result in results.values():
        assert result.returncode == 0, result.explain()
        assert PASSWORD not in result.stdout and BINDKEY not in result.stdout, "a BLE secret in the compiled states"
    states = results["with"].data
    unit = states["saltmarsh-gateway-service-ble-unit-file-managed"]["file"]
    context = next(arg["context"] for arg in unit if isinstance(arg, dict) and "context" in arg)
    assert context["exec_start"].endswith(f"/bin/saltmarsh-ble --config {root}/etc/saltmarsh/ble.toml")
    assert context["read_write_paths"] == [
        f"{root}/var/lib/saltmarsh/ble",
        f"{root}/run/saltmarsh/status",
        f"{root}/var/lib/prometheus/node-exporter",
    ]
    running = states["saltmarsh-gateway-service-ble-running"]["service"]
    assert {"sls": "saltmarsh.gateway.config"} in next(
        a["watch"] for a in running if isinstance(a, dict) and "watch" in a
    )
    without = results["without"].data
    assert "saltmarsh-gateway-service-ble-dead" not in states
    assert "saltmarsh-gateway-service-ble-running" not in without
    assert "dead" in without["saltmarsh-gateway-service-ble-dead"]["service"]


def test_the_last_device_removed_takes_its_files_with_it(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    minion = LocalMinion(tmp_path, "gw1", grains_for(["gateway"]))
    steps = [
        _pillar(TWO_DEVICES, SECRETS),
        _pillar(TWO_DEVICES, {"ble_collector_password": PASSWORD}),  # the bthome device's key taken out
        _pillar(None),
    ]
    seen = []
    for pillar in steps:
        result = minion.call("state.apply", "saltmarsh.gateway.config", pillar=sandbox_pillar(root, **pillar))
        assert result.returncode == 0 and not failed_states(result.data), result.explain()
        seen.append(((root / BTHOME_KEY).exists(), (root / BROKER_PASSWORD).exists(), (root / BLE_TOML).exists()))
    assert seen == [(True, True, True), (False, True, True), (False, False, False)]
    assert (root / "var/lib/saltmarsh/ble").is_dir(), "the spool's directory is never removed"


# --- bad pillar ----------------------------------------------------------------------------------

SITE = "sites/example.sls"
GW1 = "secrets/example/gw1.sls"


def _site_ble(body: str) -> tuple[str, str, str]:
    """An edit that appends a `ble:` block to the example site (its keys at 6 spaces)."""
    return (SITE, "", "      ble:\n" + "".join(f"        {line}\n" for line in body.splitlines()))


def _gw1(body: str) -> tuple[str, str, str]:
    """An edit that appends keys to gw1's secrets (at 10 spaces)."""
    return (GW1, "", "".join(f"          {line}\n" for line in body.splitlines()))


A_DEVICE = f'devices:\n  "{BTHOME}": {{kind: bthome, place: cold room 2}}'
A_PASSWORD = f"ble_collector_password: {PASSWORD}"
PREFIX = "saltmarsh pillar: saltmarsh:sites:example"
# 12:34:56:12:34:56, unquoted, is a base-60 integer to YAML 1.1.
SEXAGESIMAL = ((((12 * 60 + 34) * 60 + 56) * 60 + 12) * 60 + 34) * 60 + 56

# Each case: the edits (file, old, new; old "" appends), and the message the render stops with.
BAD_BLE: dict[str, tuple[list[tuple[str, str, str]], str]] = {
    "lower-case-mac": (
        [_site_ble('devices:\n  "54:48:e6:8f:80:a5": {kind: bthome}')],
        f"{PREFIX}:ble:devices:54:48:e6:8f:80:a5 is not a MAC address in upper-case colon form such as {BTHOME}",
    ),
    "mac-read-as-a-number": (
        [_site_ble("devices:\n  12:34:56:12:34:56: {kind: ruuvi}")],
        f"{PREFIX}:ble:devices:{SEXAGESIMAL} is not a MAC address in upper-case colon form such as {BTHOME} "
        "(quote it: YAML reads 12:34:56:... as a number)",
    ),
    "unknown-kind": (
        [_site_ble(f'devices:\n  "{BTHOME}": {{kind: eddystone}}')],
        f"{PREFIX}:ble:devices:{BTHOME}:kind 'eddystone' is not a BLE device kind; expected one of bthome, ruuvi",
    ),
    "zero-interval": (
        [_site_ble(f'devices:\n  "{BTHOME}": {{kind: bthome, expected_interval_s: 0}}')],
        f"{PREFIX}:ble:devices:{BTHOME}:expected_interval_s 0 is not a positive number of seconds, at most 86400",
    ),
    "negative-interval": (
        [_site_ble(f'devices:\n  "{RUUVI}": {{kind: ruuvi, expected_interval_s: -5.5}}')],
        f"{PREFIX}:ble:devices:{RUUVI}:expected_interval_s -5.5 is not a positive number of seconds, at most 86400",
    ),
    "bindkey-in-the-site-file": (
        [_site_ble(f'devices:\n  "{BTHOME}": {{kind: bthome, bindkey: {BINDKEY}}}')],
        f"{PREFIX}:ble:devices:{BTHOME}:bindkey is not a BLE device key; expected one of kind, place, "
        "expected_interval_s (a bindkey is a secret: it goes in the gateway secret file",
    ),
    "unknown-collecting-gateway": (
        [_site_ble(f"gateway: gw9\n{A_DEVICE}")],
        f"{PREFIX}:ble:gateway 'gw9' is not a gateway of the site; expected one of gw1",
    ),
    "discovery-not-a-bool": (
        [_site_ble("discovery: sometimes")],
        f"{PREFIX}:ble:discovery sometimes is not true or false",
    ),
    "stale-factor-below-one": (
        [_site_ble(f"stale_factor: 0.5\n{A_DEVICE}")],
        f"{PREFIX}:ble:stale_factor 0.5 is not a number between 1 and 1000",
    ),
    "ble-device-is-a-pi-device": (
        [(SITE, "      devices:\n", "      devices:\n        ble-5448e68f80a5: {}\n"), _site_ble(A_DEVICE)],
        f"{PREFIX}:ble:devices:{BTHOME} is device 'ble-5448e68f80a5', which is also a Pi device of the site",
    ),
    "collector-is-a-pi-device": (
        [
            (SITE, "      devices:\n", "      devices:\n        gw1-ble: {password: x}\n"),
            _site_ble(A_DEVICE),
            _gw1(A_PASSWORD),
        ],
        f"{PREFIX}:gateways:gw1 runs the BLE collector 'gw1-ble', which is also a device of the site",
    ),
    "missing-collector-password": (
        [_site_ble(A_DEVICE)],
        f"{PREFIX}:gateways:gw1:ble_collector_password is missing; set it in the gateway secret file "
        "(pillar matched by minion id)",
    ),
    "bindkey-not-hex": (
        [_site_ble(A_DEVICE), _gw1(f'{A_PASSWORD}\nble_bindkeys:\n  "{BTHOME}": {"zq" * 16}')],
        f"{PREFIX}:gateways:gw1:ble_bindkeys:{BTHOME} is not a bindkey: it must be 32 hex characters "
        "(the value is not shown)",
    ),
    "bindkey-too-short": (
        [_site_ble(A_DEVICE), _gw1(f'{A_PASSWORD}\nble_bindkeys:\n  "{BTHOME}": {BINDKEY[:31]}')],
        f"{PREFIX}:gateways:gw1:ble_bindkeys:{BTHOME} is not a bindkey: it must be 32 hex characters",
    ),
    "bindkey-for-a-mac-that-is-no-device": (
        [_site_ble(A_DEVICE), _gw1(f'{A_PASSWORD}\nble_bindkeys:\n  "11:22:33:44:55:66": {BINDKEY}')],
        f"{PREFIX}:gateways:gw1:ble_bindkeys:11:22:33:44:55:66 is a bindkey for a MAC that is not a BLE device "
        "of this gateway (saltmarsh:sites:example:ble:devices)",
    ),
    "bindkey-for-a-ruuvi": (
        [
            _site_ble(f'devices:\n  "{RUUVI}": {{kind: ruuvi}}'),
            _gw1(f'{A_PASSWORD}\nble_bindkeys:\n  "{RUUVI}": {BINDKEY}'),
        ],
        f"{PREFIX}:gateways:gw1:ble_bindkeys:{RUUVI} is a bindkey for a ruuvi device; only bthome devices encrypt",
    ),
    "replay-without-a-recording": (
        [
            _site_ble(A_DEVICE),
            _gw1(A_PASSWORD),
            (SITE, "saltmarsh:\n", "saltmarsh:\n  gateway: {ble: {scan: {backend: replay}}}\n"),
        ],
        "saltmarsh pillar: saltmarsh:gateway:ble:scan:replay_file is missing: the replay backend reads a recording",
    ),
    "unknown-scan-backend": (
        [
            (SITE, "saltmarsh:\n", "saltmarsh:\n  gateway: {ble: {enabled: true, scan: {backend: hcitool}}}\n"),
            _gw1(A_PASSWORD),
        ],
        "saltmarsh pillar: saltmarsh:gateway:ble:scan:backend 'hcitool' is not a scan backend; "
        "expected one of bleak, replay",
    ),
}


def _render_bad(base: Path, case: str) -> Result:
    edits, _ = BAD_BLE[case]
    pillar_root = base / case / "pillar"
    shutil.copytree(PILLAR, pillar_root)
    for relative, old, new in edits:
        target = pillar_root / relative
        text = target.read_text()
        assert old in text, f"{relative} no longer holds {old!r}"
        target.write_text(text + new if not old else text.replace(old, new, 1))
    minion = LocalMinion(base / case, "gw1", grains_for(["gateway"]), pillar_root=pillar_root)
    return minion.call("state.show_sls", "saltmarsh.gateway")


@pytest.fixture(scope="module")
def bad_renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    base = tmp_path_factory.mktemp("bad-ble")
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(BAD_BLE, pool.map(lambda case: _render_bad(base, case), BAD_BLE), strict=True))


@pytest.mark.parametrize("case", sorted(BAD_BLE))
def test_bad_ble_pillar_stops_the_render_naming_the_key(bad_renders: dict[str, Result], case: str) -> None:
    result = bad_renders[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0, result.explain()
    assert BAD_BLE[case][1] in output, result.explain()
    assert "zq" * 16 not in output and BINDKEY[:31] not in output, "a bindkey in the error"
