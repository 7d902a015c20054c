"""The lab's own fleet CA, made fresh for each lab and never committed.

In: the cloud broker's names and addresses, and each gateway's id. Out: PEM text for the pillar
(the CA certificate, the broker's certificate and key, each gateway's client certificate and
key), and, for the security checks, a certificate from another CA and one already expired.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Issued:
    cert_pem: str
    key_pem: str


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "saltmarsh lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class LabCA:
    def __init__(
        self, name: str = "saltmarsh lab fleet CA", key_pem: str | None = None, cert_pem: str | None = None
    ) -> None:
        if key_pem is not None and cert_pem is not None:
            loaded = serialization.load_pem_private_key(key_pem.encode(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            self._key = loaded
            self._cert = x509.load_pem_x509_certificate(cert_pem.encode())
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> str:
        return _cert_pem(self._cert)

    def save(self, directory: Path) -> None:
        """The CA's key stays with the lab (0600, under its git-ignored directory), so the
        security checks can issue more from it: an expired certificate, say."""
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(_key_pem(self._key))
        (directory / "ca.crt").write_text(self.cert_pem)

    @classmethod
    def load(cls, directory: Path) -> LabCA:
        return cls(key_pem=(directory / "ca.key").read_text(), cert_pem=(directory / "ca.crt").read_text())

    def issue(
        self,
        common_name: str,
        *,
        server: bool,
        dns: tuple[str, ...] = (),
        ips: tuple[IPv4Address, ...] = (),
        expired: bool = False,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start, end = (now - 2 * VALID, now - VALID) if expired else (now - timedelta(minutes=5), now + VALID)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ip) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(_cert_pem(builder.sign(self._key, hashes.SHA256())), _key_pem(key))
