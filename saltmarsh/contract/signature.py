"""Command signatures: Ed25519 over `Command.signing_bytes()`, so only the master can command.

The signing key stays on the master, in a file only root reads; devices hold public keys alone,
from pillar, as raw 32-byte keys in base64 (one line of YAML each). A device accepts a command
signed by any key it trusts, so a new key can be rolled out before the old one is retired.

No key material, private or public, ever appears in an error or a log line: errors say what is
wrong with a key, never what it is.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from saltmarsh.contract.command import Command
from saltmarsh.contract.errors import ConfigError, Reason, ValidationError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def generate_key() -> tuple[bytes, str]:
    """A new command key: (the private key as unencrypted PKCS#8 PEM, the public key in base64)."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private_pem, public_key_b64(private_key.public_key())


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_private_key(pem: bytes, key: str = "command.signing_key") -> Ed25519PrivateKey:
    """The master's signing key from PEM; `key` names where it came from in the error."""
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The library's message is dropped: it is not ours to promise it never quotes the input.
        raise ConfigError(key, "is not an unencrypted PEM private key") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ConfigError(key, f"is a {type(private_key).__name__}, not an Ed25519 key")
    return private_key


def load_public_key(b64: str, key: str = "command.public_keys") -> Ed25519PublicKey:
    """A trusted public key: 32 raw bytes in base64; `key` names where it came from in the error."""
    if not isinstance(b64, str):
        raise ConfigError(key, f"expected a base64 string, got {type(b64).__name__}")
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(key, "is not base64") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ConfigError(key, f"decodes to {len(raw)} bytes; an Ed25519 public key is {PUBLIC_KEY_BYTES}")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(cmd: Command, private_key: Ed25519PrivateKey) -> Command:
    """A copy of `cmd` with its signature set (any signature it had is replaced)."""
    raw = private_key.sign(cmd.signing_bytes())
    return dataclasses.replace(cmd, signature=base64.b64encode(raw).decode("ascii"))


def verify(cmd: Command, public_keys: Sequence[Ed25519PublicKey]) -> None:
    """Refuse a command whose signature is absent, malformed, or not made by a trusted key."""
    if not cmd.signature:
        raise ValidationError(Reason.BAD_SIGNATURE, "sig", "the command is not signed")
    try:
        raw = base64.b64decode(cmd.signature, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(Reason.BAD_SIGNATURE, "sig", "is not base64") from None
    # One spelling per signature: base64 with stray low bits or no padding decodes all the same,
    # and a second spelling of a valid signature is nothing any signer produced.
    if base64.b64encode(raw).decode("ascii") != cmd.signature:
        raise ValidationError(Reason.BAD_SIGNATURE, "sig", "is not canonical base64")
    if len(raw) != SIGNATURE_BYTES:
        raise ValidationError(
            Reason.BAD_SIGNATURE, "sig", f"decodes to {len(raw)} bytes; an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    if not public_keys:
        raise ValidationError(Reason.BAD_SIGNATURE, "sig", "no trusted keys to verify it with")
    signed = cmd.signing_bytes()
    for public_key in public_keys:
        try:
            public_key.verify(raw, signed)
        except InvalidSignature:
            continue
        return
    # A changed field and a stranger's key look alike from here: the signature fits no key.
    raise ValidationError(
        Reason.BAD_SIGNATURE, "sig", f"does not match this command under any of the {len(public_keys)} trusted keys"
    )
