"""The reading envelope, version 1: what a sensor sends and what a sink stores.

Every data message (reading, event, alert or cmdres) carries `(device, boot, seq)`, minted at the
sensor. That triple is the message's identity all the way to the sink: it is the dedup key,
the Elasticsearch `_id` and what `saltmarsh audit` checks for gaps.

A `cmdres` is a device's report on a command: a normal envelope whose `cmd` field holds the
`CommandOutcome` and whose `name` is its state, so that it rides the same spool and end-to-end
confirmations as a reading, and the audit finds a lost result as it finds a lost reading.

Parsing is pure: bytes and a topic in, an `Envelope` or a `ValidationError` naming the field out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saltmarsh.contract.command_state import CommandOutcome
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import ID_PATTERN, Channel, Topic, check_id

VERSION = 1
MAX_METRICS = 64
MAX_TEXT = 256
# seq and ts stay within the integers a double holds exactly, so that Elasticsearch (whose
# `long` a JavaScript client or a `double` aggregation reads as a float) and any JavaScript reader
# see the very number the sensor minted.
MAX_SEQ = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """What the ingester accepts; from config, so an operator can tighten it."""

    max_payload_bytes: int = 16_384
    max_future_skew_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float
    place: str | None = None

    def __post_init__(self) -> None:
        _check_location(self.lat, self.lon, self.place)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lat": self.lat, "lon": self.lon}
        if self.place is not None:
            out["place"] = self.place
        return out


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Channel
    device: str
    site: str
    boot: str
    seq: int
    ts_ms: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    name: str | None = None  # events and alerts: what happened, e.g. "threshold"
    detail: str | None = None
    units: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    firmware: str | None = None
    location: Location | None = None
    cmd: CommandOutcome | None = None  # cmdres only
    # The payload text this envelope was parsed from, set by `parse` only when that text holds the
    # envelope's fields and nothing else: no unknown fields, no duplicate keys (which JSON parsers
    # resolve differently), no escapes. A sink may store it as is instead of encoding the envelope
    # again. Outside __init__ and comparison, so `dataclasses.replace` never carries a stale copy.
    raw_json: str | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Refuse an envelope the contract would refuse on the wire, naming the field."""
        if not isinstance(self.kind, Channel) or not self.kind.carries_data:
            raise ValidationError(Reason.INVALID_VALUE, "kind", f"{self.kind!r} is not a data channel")
        for name in ("device", "site", "boot"):
            check_id(name, getattr(self, name))
        _int("seq", self.seq, 0, MAX_SEQ)
        _int("ts", self.ts_ms, 0, MAX_SEQ)
        _metrics(self.metrics)
        if self.kind is Channel.CMDRES:
            if self.cmd is None:
                raise ValidationError(Reason.MISSING_FIELD, "cmd", "is required for a cmdres")
            if not isinstance(self.cmd, CommandOutcome):
                raise ValidationError(
                    Reason.WRONG_TYPE, "cmd", f"expected a CommandOutcome, got {type(self.cmd).__name__}"
                )
            if self.name is None:
                raise ValidationError(Reason.MISSING_FIELD, "name", "is required for a cmdres: its state")
            if self.name != self.cmd.state.value:
                raise ValidationError(
                    Reason.INVALID_VALUE, "name", f"{self.name!r} is not the state {self.cmd.state.value!r}"
                )
        elif self.cmd is not None:
            raise ValidationError(Reason.INVALID_VALUE, "cmd", f"only a cmdres carries one, not a {self.kind.value}")
        if self.kind is Channel.READING:
            if not self.metrics:
                raise ValidationError(Reason.INVALID_VALUE, "metrics", "a reading needs at least one metric")
        elif self.name is None:
            raise ValidationError(Reason.MISSING_FIELD, "name", f"is required for a {self.kind.value}")
        for name in ("name", "detail", "model", "firmware"):
            value = getattr(self, name)
            if value is not None:
                _text(name, value)
        _units(self.units)
        if self.location is not None and not isinstance(self.location, Location):
            got = type(self.location).__name__
            raise ValidationError(Reason.WRONG_TYPE, "location", f"expected a Location, got {got}")

    @property
    def key(self) -> str:
        """The message's identity end to end: dedup key and sink id."""
        return f"{self.device}:{self.boot}:{self.seq}"

    @property
    def topic(self) -> Topic:
        return Topic(self.site, self.device, self.kind)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": VERSION,
            "kind": self.kind.value,
            "device": self.device,
            "site": self.site,
            "boot": self.boot,
            "seq": self.seq,
            "ts": self.ts_ms,
            "metrics": dict(self.metrics),
        }
        for name in ("name", "detail", "model", "firmware"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.units:
            out["units"] = dict(self.units)
        if self.location is not None:
            out["location"] = self.location.to_json()
        if self.cmd is not None:
            out["cmd"] = self.cmd.to_json()
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> float:
    # json.loads would otherwise turn NaN/Infinity literals into floats silently.
    raise ValueError(f"non-finite literal {name}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON parsers disagree on which of two equal keys wins (Python and Elasticsearch keep the
    # last, others the first or refuse), so a document with one says two things: refuse it.
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValidationError(Reason.MALFORMED_JSON, key[:80], f"duplicate key {key[:80]!r}")
            seen.add(key)
    return doc


def decode_json(payload: bytes, limits: Limits) -> dict[str, Any]:
    """Bytes to a JSON object, or a ValidationError naming why not."""
    if len(payload) > limits.max_payload_bytes:
        raise ValidationError(
            Reason.OVERSIZED, "payload", f"{len(payload)} bytes exceeds limit {limits.max_payload_bytes}"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValidationError(Reason.NOT_UTF8, "payload", f"invalid UTF-8 at byte {err.start}") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_object)
    except RecursionError:
        # Deeply nested arrays exhaust the C scanner's stack guard well inside the size limit.
        raise ValidationError(Reason.MALFORMED_JSON, "payload", "nested too deeply") from None
    except ValueError as err:
        if "non-finite" in str(err):
            raise ValidationError(Reason.NON_FINITE, "payload", str(err)) from None
        raise ValidationError(Reason.MALFORMED_JSON, "payload", str(err)[:200]) from None
    if not isinstance(doc, dict):
        raise ValidationError(Reason.WRONG_TYPE, "payload", f"expected JSON object, got {type(doc).__name__}")
    return doc


def _required(doc: Mapping[str, Any], name: str, path: str = "") -> Any:
    if name not in doc:
        raise ValidationError(Reason.MISSING_FIELD, path or name, "is required")
    return doc[name]


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValidationError(Reason.INVALID_VALUE, name, f"{value} is outside [{lo}, {hi}]")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        # An integer literal beyond float range is as unusable as Infinity.
        raise ValidationError(Reason.NON_FINITE, name, "integer too large for a float") from None
    if not math.isfinite(number):
        raise ValidationError(Reason.NON_FINITE, name, f"{value!r} is not finite")
    return number


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValidationError(Reason.INVALID_VALUE, name, f"longer than {MAX_TEXT} characters")
    return value


def _optional_text(doc: Mapping[str, Any], name: str) -> str | None:
    return None if doc.get(name) is None else _text(name, doc[name])


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValidationError(Reason.WRONG_TYPE, "metrics", f"expected object, got {type(value).__name__}")
    if len(value) > MAX_METRICS:
        raise ValidationError(Reason.INVALID_VALUE, "metrics", f"more than {MAX_METRICS} metrics")
    out: dict[str, float] = {}
    for metric, number in value.items():
        check_id(f"metrics.{str(metric)[:40]}", metric)
        out[metric] = _number(f"metrics.{metric}", number)
    return out


def _units(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValidationError(Reason.WRONG_TYPE, "units", f"expected object, got {type(value).__name__}")
    for unit in value:
        if not isinstance(unit, str):
            raise ValidationError(Reason.WRONG_TYPE, "units", f"expected string keys, got {type(unit).__name__}")
    return {k: _text(f"units.{k}", v) for k, v in value.items()}


def _location(value: Any) -> Location:
    if not isinstance(value, dict):
        raise ValidationError(Reason.WRONG_TYPE, "location", f"expected object, got {type(value).__name__}")
    lat = _number("location.lat", _required(value, "lat", "location.lat"))
    lon = _number("location.lon", _required(value, "lon", "location.lon"))
    place = value.get("place")
    _check_location(lat, lon, place)
    return _trusted_location(lat, lon, place)


def _check_location(lat: Any, lon: Any, place: Any) -> None:
    lat = _number("location.lat", lat)
    lon = _number("location.lon", lon)
    if not -90.0 <= lat <= 90.0:
        raise ValidationError(Reason.INVALID_VALUE, "location.lat", f"{lat} is outside [-90, 90]")
    if not -180.0 <= lon <= 180.0:
        raise ValidationError(Reason.INVALID_VALUE, "location.lon", f"{lon} is outside [-180, 180]")
    if place is not None:
        _text("location.place", place)


def from_json(doc: Mapping[str, Any], topic: Topic, now_ms: int, limits: Limits) -> Envelope:
    """Validate a decoded document against the contract and the topic it arrived on."""
    version = _required(doc, "v")
    if type(version) is not int or version != VERSION:  # true == 1 and 1.0 == 1 in Python
        raise ValidationError(Reason.UNSUPPORTED_VERSION, "v", f"{version!r} is not {VERSION}")
    kind_text = doc.get("kind", Channel.READING.value)
    if kind_text != topic.channel.value:
        raise ValidationError(
            Reason.TOPIC_MISMATCH, "kind", f"{str(kind_text)[:40]!r} arrived on channel {topic.channel.value!r}"
        )
    device = check_id("device", _required(doc, "device"))
    site = check_id("site", _required(doc, "site"))
    if device != topic.device:
        raise ValidationError(Reason.TOPIC_MISMATCH, "device", f"{device!r} differs from topic {topic.device!r}")
    if site != topic.site:
        raise ValidationError(Reason.TOPIC_MISMATCH, "site", f"{site!r} differs from topic {topic.site!r}")
    boot = check_id("boot", _required(doc, "boot"))
    seq = _int("seq", _required(doc, "seq"), 0, MAX_SEQ)
    ts_ms = _int("ts", _required(doc, "ts"), 0, MAX_SEQ)
    if ts_ms > now_ms + limits.max_future_skew_ms:
        raise ValidationError(
            Reason.FUTURE_TIMESTAMP, "ts", f"{ts_ms} is {(ts_ms - now_ms) // 1000} s ahead of the ingester clock"
        )
    is_reading = topic.channel is Channel.READING
    metrics = _metrics(_required(doc, "metrics") if is_reading else doc.get("metrics", {}))
    if is_reading and not metrics:
        raise ValidationError(Reason.INVALID_VALUE, "metrics", "a reading needs at least one metric")
    name = _text("name", _required(doc, "name")) if not is_reading else _optional_text(doc, "name")
    cmd = _outcome(doc, topic.channel, name)
    # Every field was checked above, with the wire's own field names and order of checks.
    return _trusted_envelope(
        topic.channel,
        device,
        site,
        boot,
        seq,
        ts_ms,
        metrics,
        name,
        _optional_text(doc, "detail"),
        _units(doc["units"]) if doc.get("units") is not None else {},
        _optional_text(doc, "model"),
        _optional_text(doc, "firmware"),
        _location(doc["location"]) if doc.get("location") is not None else None,
        cmd,
        None,
    )


def _outcome(doc: Mapping[str, Any], channel: Channel, name: str | None) -> CommandOutcome | None:
    raw = doc.get("cmd")
    if channel is not Channel.CMDRES:
        if raw is not None:
            raise ValidationError(Reason.INVALID_VALUE, "cmd", f"only a cmdres carries one, not a {channel.value}")
        return None
    if raw is None:
        raise ValidationError(Reason.MISSING_FIELD, "cmd", "is required for a cmdres")
    outcome = CommandOutcome.from_json(raw)
    if name != outcome.state.value:
        raise ValidationError(Reason.INVALID_VALUE, "name", f"{name!r} is not the state {outcome.state.value!r}")
    return outcome


# Trusted constructors, for the two validators above and below only. They build exactly what the
# dataclass __init__ builds but skip __post_init__, because their caller has just checked every
# field against the same rules (with the wire's field names and order of checks) and the
# ingester's fast path cannot afford to check each one twice: at ~40k messages a second,
# __post_init__ would add about as much again as the whole fast path costs. Anything else that
# makes an Envelope (mint, replace, tests) goes through __init__ and is validated.
_new = object.__new__
_set = object.__setattr__
# The slots' own setters, which a frozen dataclass's __setattr__ does not intercept: calling them
# directly costs a third less than object.__setattr__ by name.
_ENVELOPE_SETTERS = tuple(Envelope.__dict__[name].__set__ for name in Envelope.__slots__)
assert Envelope.__slots__ == (
    "kind", "device", "site", "boot", "seq", "ts_ms", "metrics",
    "name", "detail", "units", "model", "firmware", "location", "cmd", "raw_json",
)  # fmt: skip


def _trusted_location(lat: float, lon: float, place: str | None) -> Location:
    location = _new(Location)
    _set(location, "lat", lat)
    _set(location, "lon", lon)
    _set(location, "place", place)
    return location


def _trusted_envelope(  # noqa: PLR0917 - positional on purpose: the fast path calls it per message
    kind: Channel,
    device: str,
    site: str,
    boot: str,
    seq: int,
    ts_ms: int,
    metrics: dict[str, float],
    name: str | None,
    detail: str | None,
    units: dict[str, str],
    model: str | None,
    firmware: str | None,
    location: Location | None,
    cmd: CommandOutcome | None,
    raw_json: str | None,
) -> Envelope:
    envelope = _new(Envelope)
    (
        set_kind, set_device, set_site, set_boot, set_seq, set_ts_ms, set_metrics,
        set_name, set_detail, set_units, set_model, set_firmware, set_location, set_cmd, set_raw_json,
    ) = _ENVELOPE_SETTERS  # fmt: skip
    set_kind(envelope, kind)
    set_device(envelope, device)
    set_site(envelope, site)
    set_boot(envelope, boot)
    set_seq(envelope, seq)
    set_ts_ms(envelope, ts_ms)
    set_metrics(envelope, metrics)
    set_name(envelope, name)
    set_detail(envelope, detail)
    set_units(envelope, units)
    set_model(envelope, model)
    set_firmware(envelope, firmware)
    set_location(envelope, location)
    set_cmd(envelope, cmd)
    set_raw_json(envelope, raw_json)
    return envelope


def parse(topic: str, payload: bytes, now_ms: int, limits: Limits = Limits()) -> Envelope:
    """Topic string and raw payload to a validated Envelope: the one entry point for the ingester."""
    envelope = _parse_common(topic, payload, now_ms, limits)
    if envelope is not None:
        return envelope
    parsed_topic = Topic.parse(topic)
    if not parsed_topic.channel.carries_data:
        raise ValidationError(Reason.UNKNOWN_TOPIC, "topic.channel", f"{parsed_topic.channel.value!r} carries no data")
    return from_json(decode_json(payload, limits), parsed_topic, now_ms, limits)


# The fast path. The ingester parses tens of thousands of messages a second, nearly all of them
# valid and shaped alike, and the detailed validator above spends most of its time in per-field
# calls and error bookkeeping they never need. `_parse_common` accepts only documents that
# `from_json` accepts, builds the same Envelope, and answers None for anything else, valid or
# not, so that rejections always come from the one validator that names their reason and field.

_decode = json.JSONDecoder(parse_constant=_reject_constant).decode  # json.loads builds one per call
_isfinite = math.isfinite
_FIELDS = frozenset((
    "v", "kind", "device", "site", "boot", "seq", "ts", "metrics",
    "name", "detail", "units", "model", "firmware", "location",
))  # fmt: skip
_LOCATION_FIELDS = frozenset(["lat", "lon", "place"])
_EXACT_INT = 2**53  # integers a float holds exactly; larger ones take the long way

# Ids, metric names and topics repeat on nearly every message, and a regex match costs more than
# a set lookup. Only values that passed are remembered; the bound caps what a stream of unique
# ids can make this hold (a full memo is simply dropped and refilled).
_MEMO_MAX = 65_536
_good_ids: set[str] = set()
_data_topics: dict[str, tuple[str, str, Channel]] = {}


def _id_ok(value: str) -> bool:
    if value in _good_ids:
        return True
    if not ID_PATTERN.match(value):
        return False
    if len(_good_ids) >= _MEMO_MAX:
        _good_ids.clear()
    _good_ids.add(value)
    return True


def _data_topic(topic: str) -> tuple[str, str, Channel] | None:
    """(site, device, channel) of a well-formed data topic the fast path takes, else None."""
    known = _data_topics.get(topic)
    if known is not None:
        return known
    try:
        parsed = Topic.parse(topic)
    except ValidationError:
        return None
    # A cmdres takes the detailed validator: its outcome is checked nowhere else, and results
    # are rare next to readings.
    if not parsed.channel.carries_data or parsed.channel is Channel.CMDRES:
        return None
    if len(_data_topics) >= _MEMO_MAX:
        _data_topics.clear()
    known = _data_topics[topic] = (parsed.site, parsed.device, parsed.channel)
    return known


def _fast_number(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value if _isfinite(value) else None
    if kind is int and -_EXACT_INT <= value <= _EXACT_INT:
        return float(value)
    return None  # bool, text, null, huge or non-finite: the detailed validator names it


def _parse_common(topic: str, payload: bytes, now_ms: int, limits: Limits) -> Envelope | None:
    """The common valid message in one pass, or None to leave it to the detailed validator."""
    if len(payload) > limits.max_payload_bytes:
        return None
    topic_levels = _data_topic(topic)
    if topic_levels is None:
        return None
    topic_site, topic_device, channel = topic_levels
    try:
        text = payload.decode()
        doc = _decode(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if type(doc) is not dict or not doc.keys() <= _FIELDS:
        return None
    get = doc.get
    version = get("v")
    boot = get("boot")
    seq = get("seq")
    ts_ms = get("ts")
    # Equal to the topic's levels, which were checked as ids, the device and site need no more.
    if (
        type(version) is not int
        or version != VERSION
        or get("kind", "reading") != channel.value
        or get("device") != topic_device
        or get("site") != topic_site
        or type(boot) is not str
        or (boot not in _good_ids and not _id_ok(boot))
        or type(seq) is not int
        or not 0 <= seq <= MAX_SEQ
        or type(ts_ms) is not int
        or not 0 <= ts_ms <= MAX_SEQ
        or ts_ms > now_ms + limits.max_future_skew_ms
    ):
        return None
    # Every string token in the payload, counted from the parsed document: a duplicate key would
    # make the text hold more than this. Counted alongside the checks, compared at the end.
    strings = len(doc) + 3  # the keys, and the device, site and boot values
    if "kind" in doc:
        strings += 1

    is_reading = channel is Channel.READING
    raw_metrics = get("metrics") if is_reading else get("metrics", {})
    if type(raw_metrics) is not dict or len(raw_metrics) > MAX_METRICS or (is_reading and not raw_metrics):
        return None
    # Written out rather than calling _fast_number and _id_ok: this loop runs for every metric.
    metrics: dict[str, float] = {}
    for metric, value in raw_metrics.items():
        kind = type(value)
        if kind is float:
            if not _isfinite(value):
                return None
            number = value
        elif kind is int and -_EXACT_INT <= value <= _EXACT_INT:
            number = float(value)
        else:
            return None
        if metric not in _good_ids and not _id_ok(metric):
            return None
        metrics[metric] = number
    strings += len(metrics)

    name, detail, model, firmware = get("name"), get("detail"), get("model"), get("firmware")
    if name is None and not is_reading:
        return None
    for text_value in (name, detail, model, firmware):
        if text_value is not None:
            if type(text_value) is not str or len(text_value) > MAX_TEXT:
                return None
            strings += 1

    units = get("units")
    if units is None:
        units = {}
    else:
        if type(units) is not dict:
            return None
        for unit in units.values():
            if type(unit) is not str or len(unit) > MAX_TEXT:
                return None
        strings += 2 * len(units)

    location = None
    raw_location = get("location")
    if raw_location is not None:
        if type(raw_location) is not dict or not raw_location.keys() <= _LOCATION_FIELDS:
            return None
        lat = _fast_number(raw_location.get("lat"))
        lon = _fast_number(raw_location.get("lon"))
        place = raw_location.get("place")
        if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            return None
        if place is not None:
            if type(place) is not str or len(place) > MAX_TEXT:
                return None
            strings += 1
        strings += len(raw_location)
        location = _trusted_location(lat, lon, place)

    # Every quote in the text that is not escaped delimits a string token; more of them than the
    # document's strings means a key appeared twice, which the detailed validator refuses by name.
    # Escaped backslashes are removed first, so that what remains of `\"` is an escaped quote.
    if "\\" in text:
        unescaped = text.replace("\\\\", "")
        if unescaped.count('"') - unescaped.count('\\"') != 2 * strings:
            return None
        raw_json = None  # the text says the same thing, but spelled differently from our encoding
    elif text.count('"') != 2 * strings:
        return None
    else:
        raw_json = text
    return _trusted_envelope(
        channel,
        topic_device,
        topic_site,
        boot,
        seq,
        ts_ms,
        metrics,
        name,
        detail,
        units,
        model,
        firmware,
        location,
        None,
        raw_json,
    )
