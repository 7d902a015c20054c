"""`saltmarsh.ops.pillar.new_site`: a new site's pillar with fresh secrets that the formula accepts."""

from __future__ import annotations

import re
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from saltmarsh.contract.errors import ConfigError
from saltmarsh.ops.pillar import new_site
from tests.salt_support import PILLAR, LocalMinion, grains_for

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
