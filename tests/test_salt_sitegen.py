"""`saltmarsh.ops.pillar`: a new site's pillar with fresh secrets, and BLE devices added to a site
(`saltmarsh pillar add-ble-device`), that the formula accepts."""

from __future__ import annotations

import difflib
import re
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.contract.errors import ConfigError
from saltmarsh.ops.cli import main
from saltmarsh.ops.pillar import add_ble_device, new_site
from tests.salt_support import PILLAR, LocalMinion, failed_states, grains_for, sandbox_pillar

PASSWORD = re.compile(r'(?:password|forwarder_password|uplink_password): "([^"]+)"')


@pytest.fixture
def pillar_root(tmp_path: Path) -> Path:
    root = tmp_path / "pillar"
    shutil.copytree(PILLAR, root)
    return root


def test_writes_site_secrets_and_fleet_entry(pillar_root: Path) -> None:
    written = new_site("north", 3, pillar_root)
    names = sorted(str(p.relative_to(pillar_root)) for p in written)
    assert names == [
        "fleet.yaml",
        "secrets/north/north-gw1-uplink.sls",
        "secrets/north/north-gw1.sls",
        "secrets/north/north-s001.sls",
        "secrets/north/north-s002.sls",
        "secrets/north/north-s003.sls",
        "sites/north.sls",
    ]
    passwords = [m for p in written if "secrets" in p.parts for m in PASSWORD.findall(p.read_text())]
    assert len(passwords) == 5 and len(set(passwords)) == 5
    assert all(len(pw) >= 40 for pw in passwords)
    for path in written:
        if "secrets" in path.parts:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    fleet = (pillar_root / "fleet.yaml").read_text()
    assert fleet.endswith("  north:\n    gateways: [north-gw1]\n    sensors: [north-s001, north-s002, north-s003]\n")
    assert "  example:\n" in fleet, "existing sites are kept"


@pytest.mark.parametrize(
    ("name", "sensors", "key"),
    [("example", 2, "site"), ("has.dot", 2, "site"), ("ok", 0, "sensors"), ("ok", 1001, "sensors")],
)
def test_refuses_bad_requests(pillar_root: Path, name: str, sensors: int, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        new_site(name, sensors, pillar_root)
    assert err.value.key == key


def test_formula_accepts_the_generated_site(pillar_root: Path, tmp_path: Path) -> None:
    new_site("north", 2, pillar_root)
    sensor = LocalMinion(tmp_path / "s", "north-s001", grains_for(["sensor"], site="north"), pillar_root=pillar_root)
    gateway = LocalMinion(tmp_path / "g", "north-gw1", grains_for(["gateway"], site="north"), pillar_root=pillar_root)
    with ThreadPoolExecutor(max_workers=2) as pool:
        sensor_job = pool.submit(sensor.call, "state.show_sls", "saltmarsh.sensor")
        gateway_job = pool.submit(gateway.call, "state.show_sls", "saltmarsh.gateway")
    sensor_result, gateway_result = sensor_job.result(), gateway_job.result()
    assert sensor_result.returncode == 0, sensor_result.explain()
    # TLS material comes from the fleet CA, not from the generator: the gateway says what is missing.
    assert gateway_result.returncode != 0
    assert (
        "saltmarsh pillar: saltmarsh:sites:north:uplink:ca_cert is missing"
        in gateway_result.stdout + gateway_result.stderr
    ), gateway_result.explain()


# --- saltmarsh pillar add-ble-device -----------------------------------------------------------

BTHOME = "54:48:E6:8F:80:A5"
RUUVI = "C4:7C:8D:6A:3E:7A"
BINDKEY = "231D39C1D7CC1AB1AEE224CD096DB932"  # bthome-ble's test key, as a vendor app shows it
SITE = "sites/example.sls"
GW1 = "secrets/example/gw1.sls"
COLLECTOR_PASSWORD = re.compile(r'^          ble_collector_password: "([A-Za-z0-9_-]{43})"$')
BTHOME_LINE = f'          "{BTHOME}": {{kind: bthome, place: "cold room 2", expected_interval_s: 60}}'
RUUVI_LINE = f'          "{RUUVI}": {{kind: ruuvi, place: "freezer", expected_interval_s: 2.5}}'
BLE_HEAD = ["      ble:", "        gateway: gw1", "        devices:"]
BTHOME_SITE_LINE = (
    "wrote {dir}/sites/example.sls: BLE device 54:48:E6:8F:80:A5 (ble-5448e68f80a5, bthome, 'cold room 2'),"
    " collected by gw1-ble on gw1"
)
RUUVI_SITE_LINE = (
    "wrote {dir}/sites/example.sls: BLE device C4:7C:8D:6A:3E:7A (ble-c47c8d6a3e7a, ruuvi, 'freezer'),"
    " collected by gw1-ble on gw1"
)
ADD_BTHOME = ["example", "54-48-e6-8f-80-a5", "--kind", "bthome", "--place", "cold room 2", "--bindkey-file", "{key}"]
ADD_RUUVI = ["example", RUUVI.lower(), "--kind", "ruuvi", "--place", "freezer", "--expected-interval-s", "2.5"]


def _add_ble(capsys: pytest.CaptureFixture[str], root: Path, key: Path, argv: list[str]) -> tuple[int, str]:
    """`saltmarsh pillar add-ble-device ARGV --dir ROOT`: its exit code and everything it printed."""
    args = ["pillar", "add-ble-device", *(arg.replace("{key}", str(key)) for arg in argv)]
    args += [] if "--dir" in args else ["--dir", str(root)]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's refusals
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


def _inserted(before: str, after: str) -> list[str]:
    """The lines `after` adds to `before`; every line of `before` (comments too) must still be there, in order."""
    old, new = before.splitlines(), after.splitlines()
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    assert all(tag == "insert" for tag, *_ in changes), f"lines changed or lost: {changes}"
    return [line for _, _, _, j1, j2 in changes for line in new[j1:j2]]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "bindkey.txt"
    path.write_text(BINDKEY + "\n")
    return path


# Each case: the invocations in turn, then the lines the site file and gw1's secret file gain
# (a collector password stands as PASSWORD), and what the last invocation prints.
ADDED: dict[str, tuple[list[list[str]], list[str], list[str], list[str]]] = {
    "bthome-with-its-bindkey": (
        [ADD_BTHOME],
        [*BLE_HEAD, BTHOME_LINE],
        ["PASSWORD", "          ble_bindkeys:", f'            "{BTHOME}": "{BINDKEY.lower()}"'],
        [
            BTHOME_SITE_LINE,
            "wrote {dir}/secrets/example/gw1.sls: the bindkey of 54:48:E6:8F:80:A5 and a new password for gw1-ble",
        ],
    ),
    "ruuvi-with-every-option": (
        [[*ADD_RUUVI, "--gateway", "gw1"]],
        [*BLE_HEAD, RUUVI_LINE],
        ["PASSWORD"],
        [RUUVI_SITE_LINE, "wrote {dir}/secrets/example/gw1.sls: a new password for gw1-ble"],
    ),
    "a-second-device": (
        [ADD_BTHOME, ADD_RUUVI],
        [*BLE_HEAD, BTHOME_LINE, RUUVI_LINE],
        ["PASSWORD", "          ble_bindkeys:", f'            "{BTHOME}": "{BINDKEY.lower()}"'],
        [RUUVI_SITE_LINE],  # the password exists and a ruuvi has no key: gw1's secrets are left alone
    ),
}


@pytest.mark.parametrize("case", sorted(ADDED))
def test_add_ble_device_writes_both_files(
    pillar_root: Path, key_file: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    invocations, site_lines, secret_lines, printed = ADDED[case]
    site_before, secret_before = (pillar_root / SITE).read_text(), (pillar_root / GW1).read_text()
    for argv in invocations:
        code, output = _add_ble(capsys, pillar_root, key_file, argv)
        assert code == 0, output
    site_after, secret_after = (pillar_root / SITE).read_text(), (pillar_root / GW1).read_text()
    assert _inserted(site_before, site_after) == site_lines
    added = _inserted(secret_before, secret_after)
    password = COLLECTOR_PASSWORD.match(added[0])
    assert password, added
    assert ["PASSWORD", *added[1:]] == secret_lines
    assert output.splitlines() == [line.format(dir=pillar_root) for line in printed]
    # Never a secret on the terminal.
    assert BINDKEY.lower() not in output.lower() and password[1] not in output
    assert stat.S_IMODE((pillar_root / GW1).stat().st_mode) == 0o600


def test_add_ble_device_fills_an_empty_devices_mapping(
    pillar_root: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = pillar_root / SITE
    site.write_text(
        site.read_text() + "      ble:  # BLE thermometers\n        discovery: true\n        devices: {}  # none yet\n"
    )
    code, output = _add_ble(capsys, pillar_root, key_file, ADD_RUUVI)
    assert code == 0, output
    assert site.read_text().endswith(
        "      ble:  # BLE thermometers\n        discovery: true\n        devices:  # none yet\n"
        f"{RUUVI_LINE}\n        gateway: gw1\n"
    )


def test_add_ble_device_to_a_generated_site(pillar_root: Path, key_file: Path) -> None:
    new_site("north", 1, pillar_root)
    added = add_ble_device("north", BTHOME, "bthome", "dock", pillar_root, bindkey_file=key_file)
    assert (added.gateway, added.collector, added.device) == ("north-gw1", "north-gw1-ble", "ble-5448e68f80a5")
    assert added.secret_file == pillar_root / "secrets/north/north-gw1.sls"
    secret = added.secret_file.read_text()
    assert secret.startswith("# Generated by `saltmarsh pillar new-site`"), "its header is kept"
    assert f'            "{BTHOME}": "{BINDKEY.lower()}"\n' in secret
    assert (
        f'      ble:\n        gateway: north-gw1\n        devices:\n          "{BTHOME}": '
        in added.site_file.read_text()
    )


# Each refusal: invocations that succeed first, the one refused, and what its message says ({dir},
# {key}: the pillar root and a bindkey file). Neither file may change.
BAD_KEY = "zq" * 16
REFUSED: dict[str, tuple[list[list[str]], list[str], str]] = {
    "unknown-site": (
        [],
        ["nowhere", BTHOME, "--kind", "bthome", "--place", "x"],
        "config key 'site': 'nowhere' is not a site",
    ),
    "short-mac": (
        [],
        ["example", "54:48:E6:8F:80", "--kind", "ruuvi", "--place", "x"],
        "config key 'mac': '54:48:E6:8F:80' is not a MAC address",
    ),
    "mac-not-hex": (
        [],
        ["example", "54:48:E6:8F:80:AG", "--kind", "ruuvi", "--place", "x"],
        "'54:48:E6:8F:80:AG' is not a MAC address",
    ),
    "mac-already-there": (
        [ADD_BTHOME],
        ["example", BTHOME.lower(), "--kind", "bthome", "--place", "x"],
        f"config key 'mac': {BTHOME} is already a BLE device of site 'example'",
    ),
    "unknown-kind": (
        [],
        ["example", BTHOME, "--kind", "eddystone", "--place", "x"],
        "argument --kind: invalid choice: 'eddystone'",
    ),
    "bindkey-not-hex": (
        [],
        ["example", BTHOME, "--kind", "bthome", "--place", "x", "--bindkey-file", "{key}.bad"],
        "config key 'bindkey-file': {key}.bad does not hold a bindkey: 32 hex characters and nothing else",
    ),
    "bindkey-for-a-ruuvi": (
        [],
        [*ADD_RUUVI, "--bindkey-file", "{key}"],
        "config key 'bindkey-file': a ruuvi device does not encrypt",
    ),
    "bindkey-file-missing": (
        [],
        ["example", BTHOME, "--kind", "bthome", "--place", "x", "--bindkey-file", "{key}.missing"],
        "config key 'bindkey-file': {key}.missing: No such file or directory",
    ),
    "unknown-gateway": (
        [],
        [*ADD_RUUVI, "--gateway", "gw9"],
        "config key 'gateway': 'gw9' is not a gateway of site 'example'; expected one of gw1",
    ),
    "place-with-jinja": ([], ["example", BTHOME, "--kind", "bthome", "--place", "{{ pillar }}"], "config key 'place'"),
    "zero-interval": (
        [],
        [*ADD_RUUVI[:6], "--expected-interval-s", "0"],
        "argument --expected-interval-s: '0' must be above 0",
    ),
    "no-pillar-dir": ([], [*ADD_RUUVI, "--dir", "{dir}/nowhere"], "pillar directory {dir}/nowhere does not exist"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_add_ble_device_refuses(
    pillar_root: Path, key_file: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    before_argv, argv, message = REFUSED[case]
    key_file.with_name(key_file.name + ".bad").write_text(BAD_KEY + "\n")
    for earlier in before_argv:
        assert _add_ble(capsys, pillar_root, key_file, earlier)[0] == 0
    files = {path: path.read_bytes() for path in (pillar_root / SITE, pillar_root / GW1)}
    argv = [arg.replace("{dir}", str(pillar_root)) for arg in argv]
    code, output = _add_ble(capsys, pillar_root, key_file, argv)
    assert code == 2, output
    assert message.format(dir=pillar_root, key=key_file) in output
    assert "Traceback" not in output
    assert BAD_KEY not in output and BINDKEY.lower() not in output.lower()
    assert {path: path.read_bytes() for path in files} == files, "a refused add changed a file"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: "{%- set gateway = 'gw1' %}\n" + text, "holds Jinja, which only Salt can render"),
        (lambda text: text + "      ble: {gateway: gw1}\n", "is not a block mapping: add the BLE device by hand"),
        (
            lambda text: text + "      ble:\n        devices: [oops]\n",
            "config key 'saltmarsh:sites:example:ble:devices' in",
        ),
    ],
    ids=["jinja", "flow-style-ble", "devices-not-a-mapping"],
)
def test_add_ble_device_refuses_a_site_file_it_cannot_edit_safely(
    pillar_root: Path, key_file: Path, capsys: pytest.CaptureFixture[str], edit: Any, message: str
) -> None:
    site = pillar_root / SITE
    site.write_text(edit(site.read_text()))
    before = site.read_bytes()
    code, output = _add_ble(capsys, pillar_root, key_file, ADD_RUUVI)
    assert (code, site.read_bytes()) == (2, before), output
    assert message in output


def test_formula_renders_the_added_devices(pillar_root: Path, key_file: Path, tmp_path: Path) -> None:
    add_ble_device("example", BTHOME, "bthome", "cold room 2", pillar_root, bindkey_file=key_file)
    add_ble_device("example", RUUVI, "ruuvi", "freezer", pillar_root, expected_interval_s=2.5)
    root = tmp_path / "sandbox"
    gateway = LocalMinion(tmp_path / "g", "gw1", grains_for(["gateway"]), pillar_root=pillar_root)
    result = gateway.call("state.apply", "saltmarsh.gateway.config", pillar=sandbox_pillar(root))
    assert result.returncode == 0 and not failed_states(result.data), result.explain()
    ble_toml = (root / "etc/saltmarsh/ble.toml").read_text()
    assert (
        f'mac = "{BTHOME}"\nkind = "bthome"\nplace = "cold room 2"\nexpected_interval_s = 60.0\nbindkey_file = '
        in ble_toml
    )
    assert f'mac = "{RUUVI}"\nkind = "ruuvi"\nplace = "freezer"\nexpected_interval_s = 2.5' in ble_toml
    assert (root / "etc/saltmarsh/secrets/ble-keys/5448E68F80A5.key").read_text() == BINDKEY.lower() + "\n"
    assert "\nuser gw1-ble\n" in (root / "etc/mosquitto/saltmarsh.acl").read_text()
