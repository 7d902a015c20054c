"""Why an advertisement gave no reading: the reasons the intake counts, per device and in total.

Two families. A duplicate is a good advertisement already turned into a reading (the device
re-sent it, a second adapter heard it): dropped silently, only counted. Bad input is an
advertisement that could not become a reading at all: counted by reason, and the ones that
say something about security (a wrong key, a replayed counter, a downgrade) are what an
operator is alerted to.
"""

from __future__ import annotations

from enum import StrEnum


class DuplicateReason(StrEnum):
    REPEAT = "repeat"  # the same bytes from the same address within the repeat window, on any adapter
    PACKET_ID = "packet_id"  # bthome-ble: a BTHome packet id already seen (or older) within 4 s
    SAME_ENCRYPTED = "same_encrypted"  # bthome-ble: identical encrypted service data, re-sent
    SEQUENCE = "sequence"  # a Ruuvi data format 5 measurement sequence already turned into a reading


class BadReason(StrEnum):
    TRUNCATED = "truncated"  # shorter than its format needs
    OVERSIZED = "oversized"  # longer than its format, or than an advertising data structure, can be
    UNKNOWN_FORMAT = "unknown_format"  # a BTHome version or Ruuvi data format the parsers do not know
    GARBAGE = "garbage_service_data"  # the right header, but nothing the parser could read after it
    DECRYPT_FAILED = "decrypt_failed"  # encrypted, and the bindkey does not open it (wrong key or corrupt)
    MISSING_BINDKEY = "missing_bindkey"  # encrypted, and no bindkey is configured for this MAC
    REPLAYED = "replayed_counter"  # bthome-ble refused an encryption counter lower than the last one
    DOWNGRADE = "downgrade"  # plaintext from a device known to encrypt: refused, and alerted

    @property
    def is_decrypt_failure(self) -> bool:
        """Counted in the device's `decrypt_failures`: the key is wrong or missing."""
        return self in (BadReason.DECRYPT_FAILED, BadReason.MISSING_BINDKEY)
