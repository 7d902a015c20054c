"""The bench's readings: valid saltmarsh envelopes of about 321 bytes, cheap to mint in a loop.

The brief's example reading is about 321 bytes of JSON. These carry the same information in
the saltmarsh envelope, with a unique `(device, boot, seq)` and `ts` set to the send time in
milliseconds, so a subscriber can measure latency. A template is rendered once per device;
minting a reading is then one `%` format, so the load generator spends its CPU on the wire.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

from saltmarsh.contract.envelope import VERSION
from saltmarsh.contract.topics import Channel, Topic

TARGET_BYTES = 321
SITE = "bench"
LIVE_PREFIX = "live"  # device ids of live readings during a drain start with this
_SEQ = 999_999_999
_TS = 1_700_000_000_000


def boot_id() -> str:
    """Like the sensor agent's: hex start time, then randomness; unique per bench run."""
    return f"{int(time.time()):x}-{secrets.token_hex(4)}"


def device_id(prefix: str, index: int) -> str:
    return f"{prefix}-d{index:04d}"


def _document(device: str, boot: str, seq: int, ts_ms: int, pad: str) -> dict[str, object]:
    return {
        "v": VERSION,
        "kind": Channel.READING.value,
        "device": device,
        "site": SITE,
        "boot": boot,
        "seq": seq,
        "ts": ts_ms,
        "metrics": {"temperature": 22.0, "humidity": 50.0, "light": 1.0},
        "model": "HW-MD202",
        "firmware": "1.0.0",
        "location": {"lat": -27.4698, "lon": 153.0251, "place": "garden"},
        "detail": pad,
    }


@dataclass(frozen=True, slots=True)
class ReadingTemplate:
    """One device's topic and a payload with `%d` holes for seq and ts."""

    device: str
    topic: bytes
    payload_format: bytes

    def payload(self, seq: int, ts_ms: int) -> bytes:
        return self.payload_format % (seq, ts_ms)

    @classmethod
    def for_device(cls, device: str, boot: str) -> ReadingTemplate:
        # Size the padding with a 9-digit seq and a 13-digit ts, so typical readings land on target.
        probe = json.dumps(_document(device, boot, _SEQ, _TS, ""), separators=(",", ":"))
        pad = "x" * max(0, TARGET_BYTES - len(probe))
        text = json.dumps(_document(device, boot, _SEQ, _TS, pad), separators=(",", ":"))
        text = text.replace("%", "%%").replace(f'"seq":{_SEQ}', '"seq":%d').replace(f'"ts":{_TS}', '"ts":%d')
        topic = str(Topic(SITE, device, Channel.READING)).encode()
        return cls(device, topic, text.encode())


def parse_seq_ts(payload: bytes) -> tuple[int, int]:
    """(seq, ts) from a bench reading, without a JSON parse: the counter does this per message."""
    start = payload.index(b'"seq":') + 6
    end = payload.index(b",", start)
    seq = int(payload[start:end])
    ts_start = payload.index(b'"ts":', end) + 5
    ts_end = payload.index(b",", ts_start)
    return seq, int(payload[ts_start:ts_end])


def device_of(topic: str) -> str:
    """The device segment of `saltmarsh/v1/{site}/{device}/{channel}`."""
    end = topic.rindex("/")
    return topic[topic.rindex("/", 0, end) + 1 : end]
