"""Salt bus events as fleet-event documents: flat, JSON-safe, and with an id that never changes.

In: an event's tag, its data dict as it came off the bus, and when the relay received it.
Out: the document for `{prefix}-fleet-events-YYYY.MM`, its `_id`, and the Kinesis record.

    @timestamp   the event's `_stamp` (Salt sets it when firing), else when it was received
    tag          the event tag
    minion_id    data `id`, else the nested payload's `id`, else the minion named in the tag
    fun, jid     data `fun` / `jid` (or the nested payload's); jid also from a salt/job/<jid>/ tag
    success      data `success` when it is a boolean
    retcode      data `retcode` when it is an integer
    data         the whole event data, JSON-safe: dots in keys become '_', bytes become text
                 (base64 when not UTF-8), sets and tuples become lists, non-finite floats strings

The `_id` is a digest of the tag, the jid or stamp, the minion and the JSON-safe data, so the
same event delivered live and again from the spool is one document (create-only writes turn the
second into a 409), while two events that differ in anything are two.

Everything here is pure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from saltmarsh.sinks.elasticsearch.bulk import BulkDoc
from saltmarsh.sinks.elasticsearch.sink import iso_ms, parse_ms
from saltmarsh.sinks.elasticsearch.templates import FLEET_EVENTS, monthly_index
from saltmarsh.sinks.kinesis.selection import Match
from saltmarsh.sinks.kinesis.sink import MAX_PARTITION_KEY_CHARS, KinesisRecord

# Where a tag names the minion, for events whose data does not carry `id`.
_MINION_IN_TAG = (
    re.compile(r"^salt/job/[^/]+/ret/(?P<minion>[^/]+)"),
    re.compile(r"^salt/beacon/(?P<minion>[^/]+)/"),
    re.compile(r"^salt/minion/(?P<minion>[^/]+)/"),
    re.compile(r"^salt/presence/change/(?P<minion>[^/]+)"),
)
_JID_IN_TAG = re.compile(r"^salt/(?:job|run)/(?P<jid>[^/]+)/")
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def safe_key(key: object) -> str:
    """A key Elasticsearch will not read as an object path."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    return text.replace(".", "_")


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types; applying it twice changes nothing, so spooled data keeps its id."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {safe_key(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, set | frozenset):
        items = [json_safe(v) for v in value]
        # A set has no order; sorting its JSON form makes the document (and its id) stable.
        return sorted(items, key=_canonical)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def stamp_ms(stamp: object) -> int | None:
    """Salt's `_stamp` (ISO 8601, naive meaning UTC in older releases) as epoch milliseconds."""
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    return ms if ms >= 0 else None


def _nested(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The payload of an event a minion fired (`event.send`): Salt wraps it as data['data']."""
    inner = data.get("data")
    return inner if isinstance(inner, Mapping) else {}


def _text(data: Mapping[str, Any], name: str) -> str | None:
    for source in (data, _nested(data)):
        value = source.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def minion_of(tag: str, data: Mapping[str, Any]) -> str | None:
    found = _text(data, "id")
    if found is not None:
        return found
    for pattern in _MINION_IN_TAG:
        match = pattern.match(tag)
        if match:
            return match["minion"]
    return None


def jid_of(tag: str, data: Mapping[str, Any]) -> str | None:
    found = _text(data, "jid")
    if found is not None:
        return found
    match = _JID_IN_TAG.match(tag)
    return match["jid"] if match else None


def event_document(tag: str, data: Mapping[str, Any], received_ms: int) -> dict[str, Any]:
    """The stored form of one bus event; `data` may be raw or already JSON-safe."""
    safe: dict[str, Any] = json_safe(data)
    ts_ms = stamp_ms(safe.get("_stamp"))
    doc: dict[str, Any] = {
        "@timestamp": iso_ms(received_ms if ts_ms is None else ts_ms),
        "tag": tag,
        "minion_id": minion_of(tag, safe),
        "fun": _text(safe, "fun"),
        "jid": jid_of(tag, safe),
        "success": None,
        "retcode": None,
        "data": safe,
    }
    for source in (safe, _nested(safe)):
        success = source.get("success")
        if doc["success"] is None and isinstance(success, bool):
            doc["success"] = success
        retcode = source.get("retcode")
        if doc["retcode"] is None and isinstance(retcode, int) and not isinstance(retcode, bool):
            doc["retcode"] = retcode
    return doc


def event_id(doc: Mapping[str, Any]) -> str:
    """Deterministic: the same event always gets the same id, however often it is delivered."""
    digest = hashlib.sha256()
    when = doc["jid"] or doc["data"].get("_stamp") or doc["@timestamp"]
    for part in (doc["tag"], str(when), doc["minion_id"] or ""):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(_canonical(doc["data"]).encode())
    return digest.hexdigest()[:40]


def fleet_event(prefix: str, doc: Mapping[str, Any]) -> BulkDoc:
    """Routed by the event's own month, so a late backfill lands next to its id's first copy."""
    return BulkDoc(monthly_index(prefix, FLEET_EVENTS, parse_ms(doc["@timestamp"])), event_id(doc), doc)


def kinesis_record(doc: Mapping[str, Any], match: Match) -> KinesisRecord:
    """Partitioned by minion, so one minion's events stay in order on one shard."""
    key = (doc["minion_id"] or doc["tag"])[:MAX_PARTITION_KEY_CHARS]
    return KinesisRecord.of_json(key, {**doc, "_id": event_id(doc), "selected_by": match.to_json()})
