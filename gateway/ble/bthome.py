"""BTHome (v1 and v2, plain and encrypted) through bthome-ble, one parser per device.

bthome-ble is stateful per device: it drops a repeated or older packet id (within 4 s), refuses
an encryption counter lower than the last one it accepted (replay protection, allowing the
restarts after a wrap or a battery change that it allows), and refuses plaintext from a device
with a bindkey (a downgrade). Those decisions are its own and stay its own: `parse` calls
`update()` exactly once per advertisement, never `supported()` first, which would feed the same
advertisement twice and make the second call drop it as a repeat.

The library reports why it dropped an advertisement only in its log. `_ObservedBTHome` overrides
the private checks that make each decision, calls the library's own code, and records which one
said no; the checks are asserted to exist at import, so a bthome-ble release that renames one
fails here at start-up, not silently in the field.
"""

from __future__ import annotations

from bthome_ble import BTHomeBluetoothDeviceData
from bthome_ble.parser import BTHomeData, EncryptionScheme, UuidType
from cryptography.exceptions import InvalidTag
from habluetooth import BluetoothServiceInfoBleak

from gateway.ble.parsed import Parsed
from gateway.ble.reasons import BadReason, DuplicateReason
from gateway.ble.updates import FreshValues
from saltmarsh.contract.errors import ConfigError

BTHOME_UUIDS = frozenset(uuid.value for uuid in UuidType)
BINDKEY_BYTES = 16  # AES-128-CCM

_OBSERVED_CHECKS = (
    "_is_same_as_last",
    "_skip_old_or_duplicated_advertisement",
    "_check_bind_key",
    "_check_encryption_counter",
    "_check_minimum_length",
    "_handle_decryption_error",
    "_set_bthome_version",
)
_missing = [name for name in _OBSERVED_CHECKS if not callable(getattr(BTHomeBluetoothDeviceData, name, None))]
if _missing:
    raise ImportError(f"bthome-ble no longer has {', '.join(_missing)}: gateway/ble/bthome.py must follow it")


class _ObservedBTHome(BTHomeBluetoothDeviceData):
    """bthome-ble's parser, unchanged, noting which of its checks refused the advertisement."""

    def __init__(self, bindkey: bytes | None) -> None:
        super().__init__(bindkey=bindkey)
        self.verdict: BadReason | DuplicateReason | None = None
        self.version_known = False

    def begin(self) -> None:
        self.verdict = None
        self.version_known = False

    def _is_same_as_last(self, service_info: BluetoothServiceInfoBleak) -> bool:
        same = super()._is_same_as_last(service_info)
        if same:
            self.verdict = DuplicateReason.SAME_ENCRYPTED
        return same

    def _skip_old_or_duplicated_advertisement(self, new_packet_id: float, adv_time: float) -> bool:
        skip = super()._skip_old_or_duplicated_advertisement(new_packet_id, adv_time)
        if skip:
            self.verdict = DuplicateReason.PACKET_ID
        return skip

    def _check_bind_key(self) -> None:
        try:
            super()._check_bind_key()
        except ValueError:
            self.verdict = BadReason.MISSING_BINDKEY
            raise

    def _check_encryption_counter(self, new_encryption_counter: float) -> None:
        try:
            super()._check_encryption_counter(new_encryption_counter)
        except ValueError:
            self.verdict = BadReason.REPLAYED
            raise

    def _check_minimum_length(self, bthome_data: BTHomeData, payload: bytes) -> None:
        try:
            super()._check_minimum_length(bthome_data, payload)
        except ValueError:
            self.verdict = BadReason.TRUNCATED
            raise

    def _handle_decryption_error(self, error: InvalidTag, encrypted_payload: bytes, nonce: bytes, mic: bytes) -> None:
        self.verdict = BadReason.DECRYPT_FAILED
        super()._handle_decryption_error(error, encrypted_payload, nonce, mic)

    def _set_bthome_version(self, bthome_data: BTHomeData) -> None:
        # Reached only past the version check: an advertisement that never gets here had a version
        # bthome-ble does not know.
        self.version_known = True
        super()._set_bthome_version(bthome_data)


class BTHomeParser:
    """One BTHome device: its bthome-ble state (packet id, encryption counter) and its last values."""

    def __init__(self, bindkey: bytes | None = None) -> None:
        if bindkey is not None and len(bindkey) != BINDKEY_BYTES:
            raise ConfigError(
                "bindkey", f"a BTHome bindkey is {BINDKEY_BYTES} bytes (32 hex digits), got {len(bindkey)}"
            )
        self.bindkey = bindkey
        self._parser = _ObservedBTHome(bindkey)
        self._fresh = FreshValues()
        self._last_counter: float | None = None

    def parse(self, service_info: BluetoothServiceInfoBleak) -> Parsed:
        parser = self._parser
        parser.begin()
        try:
            update = parser.update(service_info)
        except Exception as exc:  # the library's own failures on hostile bytes, counted
            self._recover()
            # An empty service data fails reading its first byte; bthome-ble's v1 path raises
            # OverflowError, OSError or AssertionError on random bytes (3.25).
            return Parsed(bad=BadReason.TRUNCATED if isinstance(exc, IndexError) else BadReason.GARBAGE)
        fresh = self._fresh.take(update)
        encrypted = parser.encryption_scheme is EncryptionScheme.BTHOME_BINDKEY
        # "Known to encrypt" means a bindkey in pillar, as bthome-ble decides it. Having once heard
        # an encrypted frame from a MAC without a key would not do: anyone could send one, and every
        # honest plaintext frame after it would then be refused.
        if parser.downgrade_detected:
            return Parsed(bad=BadReason.DOWNGRADE)
        if isinstance(parser.verdict, DuplicateReason):
            return Parsed(duplicate=parser.verdict, encrypted=encrypted)
        if parser.verdict is not None:
            return Parsed(bad=parser.verdict, encrypted=encrypted)
        if not parser.version_known:
            return Parsed(bad=BadReason.UNKNOWN_FORMAT)
        if not (fresh.metrics or fresh.events):
            return Parsed(bad=BadReason.GARBAGE, encrypted=encrypted)
        if encrypted:
            # A counter accepted twice is the same frame again (AES-CCM never reuses a nonce):
            # bthome-ble lets an equal counter through and relies on a packet id, which is optional.
            if parser.encryption_counter == self._last_counter:
                return Parsed(duplicate=DuplicateReason.SAME_ENCRYPTED, encrypted=True)
            self._last_counter = parser.encryption_counter
        info = update.devices.get(None)
        return Parsed(
            metrics=fresh.metrics,
            units=fresh.units,
            events=fresh.events,
            encrypted=encrypted,
            model=info.model if info is not None else None,
            firmware=info.sw_version if info is not None else None,
        )

    def _recover(self) -> None:
        """After the library raised midway, forget the values it set before failing."""
        if not self._fresh.resync():
            # Nothing accepted yet, so no counter or packet id to keep: start the parser afresh.
            self._parser = _ObservedBTHome(self.bindkey)
