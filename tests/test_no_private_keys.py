"""No tracked file holds a private key; the Vagrant fleet's keys are made on the machine instead.

A private key in git is one that everyone has, and users copy the pattern. The detector looks
for PEM key material (a BEGIN ... PRIVATE KEY block whose body decodes as base64), so that the
pillar's documented placeholders and tests that write a key header do not count.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO = Path(__file__).resolve().parents[1]
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----\s+(?P<body>[A-Za-z0-9+/=\s]+?)\s*-----END \1-----",
)
MIN_KEY_BYTES = 32  # an EC key's body is about 120 bytes; a placeholder decodes to nothing


def private_keys(text: str) -> list[str]:
    """The kinds of private key PEM blocks in `text` that hold real key material."""
    found = []
    for match in _PEM.finditer(text):
        try:
            body = base64.b64decode("".join(match.group("body").split()), validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(body) >= MIN_KEY_BYTES:
            found.append(match.group(1))
    return found


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())

DETECTOR_CASES: dict[str, tuple[str, list[str]]] = {
    "rsa, traditional": (_pem(RSA_KEY, serialization.PrivateFormat.TraditionalOpenSSL), ["RSA PRIVATE KEY"]),
    "ec, pkcs8, indented in yaml": (
        "tls_key: |\n"
        + "".join(f"  {line}\n" for line in _pem(EC_KEY, serialization.PrivateFormat.PKCS8).splitlines()),
        ["PRIVATE KEY"],
    ),
    "openssh": (_pem(EC_KEY, serialization.PrivateFormat.OpenSSH), ["OPENSSH PRIVATE KEY"]),
    "pillar placeholder": (
        "-----BEGIN PRIVATE KEY-----\nPLACEHOLDER-EXAMPLE-gw1-client-key\n-----END PRIVATE KEY-----\n",
        [],
    ),
    "a header alone": ('key = b"-----BEGIN PRIVATE KEY-----\\n"', []),
    "a public key": (
        RSA_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        [],
    ),
}


@pytest.mark.parametrize("case", sorted(DETECTOR_CASES))
def test_detector(case: str) -> None:
    text, expected = DETECTOR_CASES[case]
    assert private_keys(text) == expected


def test_no_tracked_file_holds_a_private_key() -> None:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    offenders = []
    for name in filter(None, listed.decode().split("\0")):
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        kinds = private_keys(path.read_text(errors="replace"))
        if kinds:
            offenders.append(f"{name}: {', '.join(kinds)}")
    assert not offenders, f"private keys in tracked files: {offenders}"


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby comes with vagrant (make system-deps)")
def test_vagrant_keys_are_made_once_each_and_private(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    script = f'require "{REPO / "salt" / "vagrant" / "keys.rb"}"; SaltmarshKeys.ensure(ARGV[0], %w[master gw1 gw1])'
    subprocess.run(["ruby", "-e", script, str(keys)], check=True, capture_output=True)
    assert sorted(p.name for p in keys.iterdir()) == ["gw1.pem", "gw1.pub", "master.pem", "master.pub"]
    for name in ("master", "gw1"):
        private = serialization.load_pem_private_key((keys / f"{name}.pem").read_bytes(), password=None)
        public = serialization.load_pem_public_key((keys / f"{name}.pub").read_bytes())
        assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
        assert isinstance(public, rsa.RSAPublicKey)
        assert private.public_key().public_numbers() == public.public_numbers()
        assert (keys / f"{name}.pem").stat().st_mode & 0o777 == 0o600
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    subprocess.run(["ruby", "-e", script, str(keys)], check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before, "existing keys are kept"
    assert os.access(keys / "gw1.pem", os.R_OK)
