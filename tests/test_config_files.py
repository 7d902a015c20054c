"""Config, secret and key files every service reads: each bad one is exit 2, naming the file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config.gateway import load_gateway_config
from saltmarsh.config.ingester import load_ingester_config
from saltmarsh.config.sensor import load_sensor_config
from saltmarsh.config.table import Secret
from saltmarsh.contract.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _sensor(tmp: Path, broker: str) -> str:
    return f'device = "d1"\nsite = "s1"\nstate_dir = "{tmp}/state"\nstatus_dir = "{tmp}/status"\n[broker]\n{broker}'


def _gateway(tmp: Path, broker: str) -> str:
    return f'gateway_id = "gw1"\nstate_dir = "{tmp}/state"\nstatus_dir = "{tmp}/status"\n[local]\n[uplink]\n{broker}'


def _ingester(tmp: Path, broker: str) -> str:
    return f'ingester_id = "i1"\nstatus_dir = "{tmp}/status"\n[sink]\npath = "{tmp}/sink.db"\n[broker]\n{broker}'


Service = tuple[str, str, Callable[[Path, str], str], Callable[[Path], Any], str]
SERVICES: list[Service] = [
    # name, module, config text, loader, the broker table's dotted key
    ("sensor", "sensor", _sensor, load_sensor_config, "broker"),
    ("forwarder", "gateway", _gateway, load_gateway_config, "uplink"),
    ("ingester", "cloud_ingester", _ingester, load_ingester_config, "broker"),
]
IDS = [s[0] for s in SERVICES]


def _secret(tmp: Path, mode: int, data: bytes = b"s3cret\n", name: str = "pw") -> Path:
    path = tmp / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _run(module: str, config: Path) -> subprocess.CompletedProcess[str]:
    env_path = f"{REPO}:{REPO / 'cloud-ingester'}"
    return subprocess.run(
        [sys.executable, "-m", module, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        check=False,
    )


# The reproduction from the defect report, for each service: a config that is not UTF-8.
@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_a_config_that_is_not_utf8_exits_2_naming_file_and_offset(tmp_path: Path, service: Service) -> None:
    module = service[1]
    config = tmp_path / "c.toml"
    config.write_bytes(b'device = "\xff"\n')
    done = _run(module, config)
    assert done.returncode == 2, done.stderr
    assert f"{config}: not UTF-8: byte 0xff at byte offset 10" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_a_password_file_readable_by_others_stops_the_service(tmp_path: Path, service: Service) -> None:
    _, module, text, loader, _ = service
    secret = _secret(tmp_path, 0o644)
    config = tmp_path / "c.toml"
    config.write_text(text(tmp_path, f'username = "u"\npassword_file = "{secret}"\n'))
    done = _run(module, config)
    assert done.returncode == 2, done.stderr
    assert f"permissions 0644 for '{secret}' are too open" in done.stderr
    secret.chmod(0o600)
    assert loader(config) is not None


# mode of the password file -> the error's detail, or None if it is accepted
SECRET_MODES = [
    (0o600, None),
    (0o400, None),
    (0o700, None),
    (0o640, "permissions 0640"),
    (0o644, "permissions 0644"),
    (0o604, "permissions 0604"),
    (0o660, "permissions 0660"),
    (0o610, "permissions 0610"),
    (0o666, "permissions 0666"),
]


@pytest.mark.parametrize(("mode", "detail"), SECRET_MODES, ids=[f"{m:04o}" for m, _ in SECRET_MODES])
@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_secret_file_modes(tmp_path: Path, service: Service, mode: int, detail: str | None) -> None:
    _, _, text, loader, broker = service
    secret = _secret(tmp_path, mode)
    config = tmp_path / "c.toml"
    config.write_text(text(tmp_path, f'username = "u"\npassword_file = "{secret}"\n'))
    if detail is None:
        assert getattr(loader(config), broker).password == Secret("s3cret")
        return
    with pytest.raises(ConfigError) as caught:
        loader(config)
    assert caught.value.key == f"{broker}.password_file"
    assert f"{detail} for '{secret}' are too open" in caught.value.detail


def _directory(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


# a password file's content or kind -> the error's detail
BAD_SECRETS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("not utf-8", lambda tmp: _secret(tmp, 0o600, b"s3\xffcret"), "is not UTF-8 at byte offset 2"),
    ("empty", lambda tmp: _secret(tmp, 0o600, b""), "is empty"),
    ("only whitespace", lambda tmp: _secret(tmp, 0o600, b"\n \n"), "is empty"),
    ("missing", lambda tmp: tmp / "absent", "cannot read"),
    ("a directory", lambda tmp: _directory(tmp / "dir"), "is not a file"),
]


@pytest.mark.parametrize(("make", "detail"), [c[1:] for c in BAD_SECRETS], ids=[c[0] for c in BAD_SECRETS])
def test_bad_secret_files(tmp_path: Path, make: Callable[[Path], Path], detail: str) -> None:
    secret = make(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(_sensor(tmp_path, f'username = "u"\npassword_file = "{secret}"\n'))
    with pytest.raises(ConfigError) as caught:
        load_sensor_config(config)
    assert caught.value.key == "broker.password_file"
    assert str(secret) in caught.value.detail and detail in caught.value.detail


# mode of the TLS private key -> the error's detail, or None if it is accepted
KEY_MODES = [(0o600, None), (0o400, None), (0o640, "permissions 0640"), (0o644, "permissions 0644")]


@pytest.mark.parametrize(("mode", "detail"), KEY_MODES, ids=[f"{m:04o}" for m, _ in KEY_MODES])
def test_tls_private_key_modes(tmp_path: Path, mode: int, detail: str | None) -> None:
    key = _secret(tmp_path, mode, b"-----BEGIN PRIVATE KEY-----\n", "client.key")
    cert = _secret(tmp_path, 0o644, b"-----BEGIN CERTIFICATE-----\n", "client.pem")
    config = tmp_path / "c.toml"
    config.write_text(_gateway(tmp_path, f'tls = true\ncert_file = "{cert}"\nkey_file = "{key}"\n'))
    if detail is None:
        assert load_gateway_config(config).uplink.key_file == key
        return
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(config)
    assert caught.value.key == "uplink.key_file"
    assert f"{detail} for '{key}' are too open" in caught.value.detail


def test_a_missing_tls_key_is_refused_at_load(tmp_path: Path) -> None:
    cert = _secret(tmp_path, 0o644, b"cert", "client.pem")
    config = tmp_path / "c.toml"
    config.write_text(_gateway(tmp_path, f'cert_file = "{cert}"\nkey_file = "{tmp_path}/absent.key"\n'))
    with pytest.raises(ConfigError, match=r"'uplink.key_file'.*cannot read .*absent.key"):
        load_gateway_config(config)


def test_a_state_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(_sensor(tmp_path, "").replace(f"{tmp_path}/state", str(config)))
    done = _run("sensor", config)
    assert done.returncode == 2, done.stderr
    assert f"config key 'state_dir' in {config}: cannot use {config}: {config} is not a directory" in done.stderr


def test_a_sink_file_that_is_not_sqlite_stops_the_ingester_with_exit_2(tmp_path: Path) -> None:
    sink = tmp_path / "sink.db"
    sink.write_bytes(b"not a database " * 100)
    config = tmp_path / "c.toml"
    config.write_text(_ingester(tmp_path, "port = 1\n"))
    done = _run("cloud_ingester", config)
    assert done.returncode == 2, done.stderr
    assert f"sqlite {sink}: file is not a database" in done.stderr + done.stdout


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
@pytest.mark.parametrize("given", [True, False], ids=["metrics_dir set", "metrics_dir absent"])
def test_metrics_dir(tmp_path: Path, service: Service, given: bool) -> None:
    _, _, make, load, _ = service
    text = make(tmp_path, "")
    if given:
        text = f'metrics_dir = "{tmp_path}/metrics"\n' + text
    config = tmp_path / "c.toml"
    config.write_text(text)
    assert load(config).metrics_dir == (tmp_path / "metrics" if given else None)
