"""Command signatures: what a device runs is what the master signed, for the device it named."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from saltmarsh.contract.command import Command, parse_command
from saltmarsh.contract.errors import ConfigError, Reason, ValidationError
from saltmarsh.contract.signature import (
    generate_key,
    load_private_key,
    load_public_key,
    public_key_b64,
    sign,
    verify,
)
from saltmarsh.contract.topics import BROADCAST, Channel, Topic

NOW_MS = 1_700_000_000_000
PRIVATE_PEM, PUBLIC_B64 = generate_key()
OTHER_PEM, OTHER_B64 = generate_key()
KEY = load_private_key(PRIVATE_PEM)
TRUSTED = [load_public_key(PUBLIC_B64)]

UNSIGNED = Command(
    cmd_id="01HF7YAT00XGHYZ3KT8V94F16P",
    rollout="r-1",
    site="marsh-1",
    device="probe-7",
    op="set_interval",
    args={"interval_s": 30},
    issued_at_ms=NOW_MS,
    not_after_ms=NOW_MS + 600_000,
    run_timeout_s=60,
)
SIGNED = sign(UNSIGNED, KEY)


def received(wire: dict[str, Any]) -> Command:
    """A wire document as a device parses it, on the topic its own body names."""
    return parse_command(str(Topic(wire["site"], wire["device"], Channel.COMMAND)), json.dumps(wire).encode())


def tampered(**changes: Any) -> dict[str, Any]:
    wire = SIGNED.to_json()
    for key, value in changes.items():
        if value is None:
            wire.pop(key)
        else:
            wire[key] = value
    return wire


def test_a_signed_command_verifies_after_the_wire() -> None:
    assert SIGNED.signature and SIGNED.signature != UNSIGNED.signature
    assert replace(SIGNED, signature="") == UNSIGNED
    verify(SIGNED, TRUSTED)
    verify(parse_command(str(SIGNED.topic), SIGNED.encode()), TRUSTED)


def test_any_trusted_key_will_do_so_keys_can_be_rolled() -> None:
    verify(SIGNED, [load_public_key(OTHER_B64), *TRUSTED])
    verify(sign(UNSIGNED, load_private_key(OTHER_PEM)), [load_public_key(OTHER_B64), *TRUSTED])


def test_signing_again_replaces_the_signature_and_is_deterministic() -> None:
    assert sign(SIGNED, KEY) == SIGNED
    other = sign(SIGNED, load_private_key(OTHER_PEM))
    assert other.signature != SIGNED.signature
    with pytest.raises(ValidationError):
        verify(other, TRUSTED)


def _sig(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _stray_low_bit(sig: str) -> str:
    """The same 64 bytes, spelt otherwise: the last character's unused low bits set."""
    last = sig[-3]  # 64 bytes are 86 characters and "==": the 86th holds 2 bits, and 4 unused
    return sig[:-3] + _ALPHABET[_ALPHABET.index(last) | 1] + "=="


REFUSED: list[tuple[str, dict[str, Any]]] = [
    # every signed field, changed after signing
    ("cmd_id changed", tampered(cmd_id="01HF7YAT00XGHYZ3KT8V94F16Q")),
    ("rollout changed", tampered(rollout="r-2")),
    ("redirected to another device", tampered(device="probe-8")),
    ("redirected to the whole site", tampered(device=BROADCAST)),
    ("redirected to another site", tampered(site="marsh-2")),
    ("op changed", tampered(op="restart_agent")),
    ("arg changed", tampered(args={"interval_s": 1})),
    ("arg added", tampered(args={"interval_s": 30, "extra": 1})),
    ("args emptied", tampered(args={})),
    ("arg respelt as a float", tampered(args={"interval_s": 30.0})),
    ("issued_at changed", tampered(issued_at=NOW_MS + 1)),
    ("deadline extended", tampered(not_after=NOW_MS + 86_400_000)),
    ("run_timeout_s changed", tampered(run_timeout_s=3600)),
    ("coalesce added", tampered(coalesce="interval")),
    # the signature itself
    ("another key", tampered(sig=sign(UNSIGNED, load_private_key(OTHER_PEM)).signature)),
    ("empty sig", tampered(sig="")),
    ("not base64", tampered(sig="!" * 88)),
    ("base64 with a space", tampered(sig=SIGNED.signature[:40] + " " + SIGNED.signature[41:])),
    ("base64url alphabet", tampered(sig=_sig(b"\xfb" * 64).replace("+", "-"))),
    ("base64 without padding", tampered(sig=SIGNED.signature.rstrip("="))),
    ("non-canonical base64", tampered(sig=_stray_low_bit(SIGNED.signature))),
    ("63 bytes", tampered(sig=_sig(base64.b64decode(SIGNED.signature)[:63]))),
    ("65 bytes", tampered(sig=_sig(base64.b64decode(SIGNED.signature) + b"\0"))),
    ("32 bytes", tampered(sig=_sig(b"\0" * 32))),
    ("all zeros", tampered(sig=_sig(b"\0" * 64))),
    (
        "one bit flipped",
        tampered(sig=_sig(bytes([base64.b64decode(SIGNED.signature)[0] ^ 1]) + base64.b64decode(SIGNED.signature)[1:])),
    ),
]


@pytest.mark.parametrize("wire", [c[1] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(wire: dict[str, Any]) -> None:
    cmd = received(wire)
    with pytest.raises(ValidationError) as caught:
        verify(cmd, TRUSTED)
    assert (caught.value.reason, caught.value.field) == (Reason.BAD_SIGNATURE, "sig")
    assert SIGNED.signature not in str(caught.value) and PUBLIC_B64 not in str(caught.value)


def test_the_non_canonical_case_decodes_to_the_same_signature() -> None:
    # Otherwise the case above would only test a bad signature again.
    (wire,) = [w for name, w in REFUSED if name == "non-canonical base64"]
    assert wire["sig"] != SIGNED.signature
    assert base64.b64decode(wire["sig"]) == base64.b64decode(SIGNED.signature)


def test_no_trusted_keys_trusts_nothing() -> None:
    with pytest.raises(ValidationError) as caught:
        verify(SIGNED, [])
    assert caught.value.reason is Reason.BAD_SIGNATURE


def test_generated_keys_load_and_match() -> None:
    assert PRIVATE_PEM.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(base64.b64decode(PUBLIC_B64)) == 32
    assert public_key_b64(KEY.public_key()) == PUBLIC_B64
    assert load_public_key(PUBLIC_B64 + "\n") is not None  # as a YAML block scalar leaves it


def _ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    "pem",
    [b"", b"not a key", PRIVATE_PEM[:60], PRIVATE_PEM.replace(b"PRIVATE", b"PUBLIC"), _ec_pem()],
    ids=["empty", "text", "truncated", "wrong armour", "an EC key"],
)
def test_a_bad_private_key_names_the_key_and_never_quotes_it(pem: bytes) -> None:
    with pytest.raises(ConfigError) as caught:
        load_private_key(pem, "command.signing_key_file")
    assert caught.value.key == "command.signing_key_file"
    body = pem.decode(errors="replace").splitlines()[1:2]
    assert not body or body[0] not in str(caught.value)


@pytest.mark.parametrize(
    "b64",
    ["", "%%%%-key-%%%%", PUBLIC_B64[:-4], base64.b64encode(b"\1" * 33).decode(), PRIVATE_PEM.decode(), 32],
    ids=["empty", "not base64", "short", "33 bytes", "a private key", "an int"],
)
def test_a_bad_public_key_names_the_key_and_never_quotes_it(b64: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        load_public_key(b64, "sensor.command_keys[1]")
    assert caught.value.key == "sensor.command_keys[1]"
    if isinstance(b64, str) and b64:
        assert b64[:12] not in str(caught.value)
