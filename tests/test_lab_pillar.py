"""The lab's pillar, written for a generated fleet: the repo's layout, fresh secrets kept to the
secret files, and TLS material from the lab CA that really chains to it."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from saltmarsh.contract.signature import load_private_key, public_key_b64
from saltmarsh.ops.lab.ca import LabCA
from saltmarsh.ops.lab.fleet import Fleet, generated_fleet
from saltmarsh.ops.lab.pillar import ELASTICSEARCH_URL, LabPillar, LabSettings, write_command_key, write_lab_pillar

REPO_PILLAR = Path(__file__).resolve().parent.parent / "pillar"
PUBLIC_KEY = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik="


@dataclass(frozen=True)
class Written:
    root: Path
    fleet: Fleet
    ca: LabCA
    pillar: LabPillar

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def secret_files(self) -> list[Path]:
        return [p for p in self.files() if p.relative_to(self.root).parts[0] == "secrets"]

    def public_files(self) -> list[Path]:
        return [p for p in self.files() if p.relative_to(self.root).parts[0] != "secrets"]

    def load(self, relative: str) -> Any:
        return yaml.safe_load((self.root / relative).read_text())


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    root = tmp_path_factory.mktemp("lab-pillar")
    fleet = generated_fleet(2, 2)
    ca = LabCA()
    settings = LabSettings(venv="/v", command_public_key=PUBLIC_KEY)
    return Written(root, fleet, ca, write_lab_pillar(root, fleet, settings, ca))


def test_the_files_are_the_ones_top_sls_assigns(written: Written) -> None:
    # pillar/top.sls assigns cloud, secrets.cloud, sites.<site> and secrets.<site>.<minion>
    # (and <gateway>-uplink) from fleet.yaml.
    assert [str(p.relative_to(written.root)) for p in written.files()] == sorted(
        [
            "cloud.sls",
            "fleet.yaml",
            "secrets/cloud.sls",
            "sites/site01.sls",
            "sites/site02.sls",
            *[
                f"secrets/{site}/{minion}.sls"
                for site in ("site01", "site02")
                for minion in (f"{site}-gw1", f"{site}-gw1-uplink", f"{site}-s001", f"{site}-s002")
            ],
        ]
    )


def test_every_file_is_valid_yaml(written: Written) -> None:
    for path in written.files():
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_secret_files_are_only_for_their_owner(written: Written) -> None:
    assert len(written.secret_files()) == 9
    for path in written.secret_files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_fleet_yaml_lists_each_sites_gateway_and_sensors(written: Written) -> None:
    assert written.load("fleet.yaml") == {
        "cloud": {"minions": ["master"]},
        "sites": {
            "site01": {"gateways": ["site01-gw1"], "sensors": ["site01-s001", "site01-s002"]},
            "site02": {"gateways": ["site02-gw1"], "sensors": ["site02-s001", "site02-s002"]},
        },
    }
    # The shape pillar/top.sls reads, as in the repo's own fleet.yaml.
    repo = yaml.safe_load((REPO_PILLAR / "fleet.yaml").read_text())
    lab = written.load("fleet.yaml")
    assert lab.keys() == repo.keys()
    assert lab["sites"]["site01"].keys() == repo["sites"]["example"].keys()


@pytest.mark.parametrize("site", ["site01", "site02"])
def test_each_site_file_points_at_the_master_over_tls(written: Written, site: str) -> None:
    doc = written.load(f"sites/{site}.sls")["saltmarsh"]
    entry = doc["sites"][site]
    gateway = written.fleet.gateway_of(site)
    assert entry["uplink"] == {"host": "192.168.56.10", "port": 8883, "tls": True, "ca_cert": written.ca.cert_pem}
    assert entry["uplink"]["host"] == str(written.fleet.master.uplink)
    assert entry["broker"]["host"] == str(gateway.lan)
    assert list(entry["gateways"]) == [gateway.id]
    assert list(entry["devices"]) == [f"{site}-s001", f"{site}-s002"]
    assert doc["install"] == {"enabled": False, "venv": "/v"}
    # The same keys an operator's site file has (pillar/sites/example.sls).
    example = yaml.safe_load((REPO_PILLAR / "sites" / "example.sls").read_text())["saltmarsh"]["sites"]["example"]
    assert entry.keys() == example.keys()


def leaves(doc: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaves(value, (*path, str(key)))
    else:
        yield path, doc


def test_every_password_is_fresh_and_distinct(written: Written) -> None:
    passwords = [
        value
        for path in written.secret_files()
        for keys, value in leaves(yaml.safe_load(path.read_text()))
        if keys[-1].endswith("password") or keys[-1] in ("api_key", "secret_access_key")
    ]
    # ingester, commander, elasticsearch, kinesis; per site a forwarder, an uplink and two sensors.
    assert len(passwords) == 4 + 2 * 4
    assert len(set(passwords)) == len(passwords)
    assert all(isinstance(p, str) and len(p) >= 32 for p in passwords)
    assert set(passwords) <= set(written.pillar.secrets)


def test_no_secret_leaves_the_secret_files(written: Written) -> None:
    secrets = written.pillar.secrets
    assert secrets
    secret_text = "".join(p.read_text() for p in written.secret_files())
    public_text = {p: p.read_text() for p in written.public_files()}
    for secret in secrets:
        assert secret in secret_text  # a secret the pillar holds, so looking for it proves something
        for path, text in public_text.items():
            assert secret not in text, f"a secret is in {path}"


def test_secret_files_hold_the_keys_of_the_repo_placeholders(written: Written) -> None:
    def keys(path: Path, *inside: str) -> set[str]:
        doc = yaml.safe_load(path.read_text())
        for key in inside:
            doc = doc[key]
        return set(doc)

    lab, repo = written.root / "secrets", REPO_PILLAR / "secrets"
    sites = ("saltmarsh", "sites")
    assert keys(lab / "cloud.sls", "saltmarsh", "cloud") == keys(repo / "cloud.sls", "saltmarsh", "cloud")
    for section in ("broker", "ingester", "commander", "elasticsearch", "kinesis"):
        assert keys(lab / "cloud.sls", "saltmarsh", "cloud", section) == keys(
            repo / "cloud.sls", "saltmarsh", "cloud", section
        )
    for lab_file, lab_entry, repo_file, repo_entry in [
        ("site01/site01-gw1.sls", "gateways.site01-gw1", "example/gw1.sls", "gateways.gw1"),
        ("site01/site01-gw1-uplink.sls", "gateways.site01-gw1", "example/gw1-uplink.sls", "gateways.gw1"),
        ("site02/site02-s002.sls", "devices.site02-s002", "example/sensor2.sls", "devices.sensor2"),
    ]:
        site = lab_file.split("/")[0]
        assert keys(lab / lab_file, *sites, site, *lab_entry.split(".")) == keys(
            repo / repo_file, *sites, "example", *repo_entry.split(".")
        ), lab_file


# -- the lab CA -----------------------------------------------------------------------------------


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def public_bytes(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_public_bytes(pem: str) -> bytes:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def extended_key_usage(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_broker_certificate_is_the_masters_and_chains_to_the_ca(written: Written) -> None:
    ca = cert(written.ca.cert_pem)
    cloud = written.load("cloud.sls")["saltmarsh"]["cloud"]["broker"]
    assert cloud["ca_cert"] == written.ca.cert_pem
    broker = cert(cloud["tls_cert"])
    assert broker.issuer == ca.subject
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert IPv4Address("192.168.56.10") in san.get_values_for_type(x509.IPAddress)
    assert "master" in san.get_values_for_type(x509.DNSName)
    assert extended_key_usage(broker) == [ExtendedKeyUsageOID.SERVER_AUTH]
    now = datetime.now(UTC)
    assert broker.not_valid_before_utc <= now < broker.not_valid_after_utc
    # Its key is in the secret file, not the public one.
    key_pem = written.load("secrets/cloud.sls")["saltmarsh"]["cloud"]["broker"]["tls_key"]
    assert key_public_bytes(key_pem) == public_bytes(broker)


@pytest.mark.parametrize("site", ["site01", "site02"])
def test_a_gateway_certificate_is_a_client_certificate_from_the_ca(written: Written, site: str) -> None:
    gateway = f"{site}-gw1"
    secret = written.load(f"secrets/{site}/{gateway}.sls")["saltmarsh"]["sites"][site]["gateways"][gateway]
    client = cert(secret["tls_cert"])
    client.verify_directly_issued_by(cert(written.ca.cert_pem))
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gateway
    assert extended_key_usage(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert key_public_bytes(secret["tls_key"]) == public_bytes(client)


def test_the_ca_is_a_ca() -> None:
    ca = cert(LabCA().cert_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)


def test_an_expired_certificate_is_expired() -> None:
    ca = LabCA()
    expired = cert(ca.issue("site01-gw1", server=False, expired=True).cert_pem)
    now = datetime.now(UTC)
    assert expired.not_valid_after_utc < now
    assert expired.not_valid_before_utc < expired.not_valid_after_utc
    expired.verify_directly_issued_by(cert(ca.cert_pem))
    fresh = cert(ca.issue("site01-gw1", server=False).cert_pem)
    assert fresh.not_valid_after_utc > now


def test_another_labs_ca_does_not_vouch_for_this_ones_certificates() -> None:
    issued = cert(LabCA().issue("master", server=True).cert_pem)
    other = cert(LabCA().cert_pem)
    assert issued.issuer == other.subject  # every lab's CA has the same name: only the key differs
    with pytest.raises(InvalidSignature):
        issued.verify_directly_issued_by(other)


@pytest.mark.parametrize(
    ("sink", "sink_type", "elasticsearch"),
    [
        ("sqlite", None, {"enabled": False}),
        ("elasticsearch", "elasticsearch", {"enabled": True, "hosts": [ELASTICSEARCH_URL], "plain_json": True}),
    ],
)
def test_the_cloud_pillar_names_the_labs_sink(
    tmp_path: Path, sink: str, sink_type: str | None, elasticsearch: dict[str, Any]
) -> None:
    fleet = generated_fleet(1, 1)
    write_lab_pillar(tmp_path, fleet, LabSettings(venv="/v", sink=sink), LabCA())
    cloud = yaml.safe_load((tmp_path / "cloud.sls").read_text())["saltmarsh"]["cloud"]
    assert cloud["ingester"].get("sink", {}).get("type") == sink_type
    assert cloud["elasticsearch"] == elasticsearch


# -- the command key --------------------------------------------------------------------------------


def test_every_minion_trusts_the_command_key_and_the_master_may_send(written: Written) -> None:
    for relative in ["cloud.sls", "sites/site01.sls", "sites/site02.sls"]:
        assert written.load(relative)["saltmarsh"]["commands"] == {"public_keys": [PUBLIC_KEY]}, relative
    assert written.load("cloud.sls")["saltmarsh"]["cloud"]["commander"] == {"enabled": True}
    password = written.load("secrets/cloud.sls")["saltmarsh"]["cloud"]["commander"]["password"]
    assert password in written.pillar.secrets


def test_without_a_key_nothing_is_trusted_and_no_commander_runs(tmp_path: Path) -> None:
    write_lab_pillar(tmp_path, generated_fleet(1, 1), LabSettings(venv="/v"), LabCA())
    cloud = yaml.safe_load((tmp_path / "cloud.sls").read_text())["saltmarsh"]
    assert (cloud["commands"], cloud["cloud"]["commander"]) == ({"public_keys": []}, {"enabled": False})


def test_the_command_key_is_root_only_matches_its_public_half_and_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "etc.upper" / "saltmarsh" / "command.key"
    public, secret_line = write_command_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert public_key_b64(load_private_key(pem).public_key()) == public
    assert secret_line in pem.decode() and secret_line not in public
    with pytest.raises(FileExistsError):  # a new key would strand every device that trusts the old one
        write_command_key(path)
    assert path.read_bytes() == pem
