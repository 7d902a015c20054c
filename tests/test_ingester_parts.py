"""The ingester's stages alone, without a broker: validate, and batch -> write -> what to ack."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from cloud_ingester import service
from cloud_ingester import validate as validate_module
from cloud_ingester.batcher import Batch, BatchWriter, IngesterCounters
from cloud_ingester.consumer import SUBSCRIPTION_OPTIONS, Consumer
from cloud_ingester.service import main
from cloud_ingester.validate import gateway_of, validate, validate_publishes

from saltmarsh.contract.envelope import Limits
from saltmarsh.contract.errors import Reason, SinkUnavailable
from saltmarsh.mqtt.codec import QOS_AT_LEAST_ONCE, RETAIN_AS_PUBLISHED, RETAIN_DO_NOT_SEND
from saltmarsh.mqtt.wire import Publish
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy
from saltmarsh.sinks.base import DEAD_LETTER_HEAD_BYTES, DeadLetter, Delivery, WriteResult

NOW_MS = 1_700_000_000_000
TOPIC = "saltmarsh/v1/marsh-1/probe-1/reading"


def payload(seq: int) -> bytes:
    doc = {"v": 1, "device": "probe-1", "site": "marsh-1", "boot": "b1", "seq": seq, "ts": NOW_MS, "metrics": {"t": 1}}
    return json.dumps(doc).encode()


def publish(seq: int, body: bytes | None = None, *, retain: bool = False) -> Publish:
    """A message as the wire client hands it over; the packet id is the seq, for the asserts."""
    return Publish(TOPIC, payload(seq) if body is None else body, 1, seq, False, retain, (("gw", "gw-1"),))


class FakeSink:
    """Records every write; fails the first `failures` calls as a down database would."""

    name = "fake"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.batches: list[tuple[list[Delivery], list[DeadLetter]]] = []
        self.keys: set[str] = set()

    def write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise SinkUnavailable("database is down")
        self.batches.append((list(deliveries), list(dead_letters)))
        new = {d.envelope.key for d in deliveries} - self.keys
        self.keys |= new
        return WriteResult(len(new), len(deliveries) - len(new), len(dead_letters))

    def close(self) -> None:
        pass


class FakeConsumer:
    """Stands in for the consumer's ack, noting how many batches the sink had committed by then."""

    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink
        self.connection = 1  # the one still open
        self.acked: list[int] = []
        self.batches_committed_at_ack: list[int] = []

    def ack(self, packet_ids: list[int], connection: int) -> bool:
        if connection != self.connection:
            return False
        self.acked += packet_ids
        self.batches_committed_at_ack += [len(self.sink.batches)] * len(packet_ids)
        return True


class Pipeline:
    """validate -> BatchWriter -> ack, as `service.pump` wires them, minus the broker."""

    def __init__(self, sink: FakeSink, max_messages: int) -> None:
        # No jitter, so the first retry waits exactly the base.
        backoff = Backoff(BackoffPolicy(base_s=0.1, cap_s=5.0, jitter=False))
        self.counters = IngesterCounters(sink.name)
        self.writer = BatchWriter(sink, self.counters, max_messages=max_messages, interval_s=0.01, backoff=backoff)
        self.consumer = FakeConsumer(sink)

    def take(self, publishes: list[Publish], connection: int, now: float) -> None:
        outcomes = validate_publishes(publishes, NOW_MS, Limits())
        self.writer.take(outcomes, [p.packet_id for p in publishes], connection, now)

    def write_due(self, now: float) -> None:
        self._ack(self.writer.write_due(now))

    def drain(self, deadline: float) -> bool:
        self._ack(self.writer.drain(deadline))
        return self.writer.held == 0

    def _ack(self, written: list[Batch]) -> None:
        service.ack(cast(Consumer, self.consumer), self.counters, written)


def test_validate_returns_a_delivery_with_the_gateway() -> None:
    out = validate(TOPIC, payload(5), NOW_MS, "gw-7", Limits())
    assert isinstance(out, Delivery)
    assert (out.envelope.key, out.received_ms, out.gateway) == ("probe-1:b1:5", NOW_MS, "gw-7")


def test_validate_drops_a_malformed_gateway_id_but_keeps_the_reading() -> None:
    out = validate(TOPIC, payload(5), NOW_MS, "gw 7/../x", Limits())
    assert isinstance(out, Delivery) and out.gateway is None


def test_validate_turns_a_rejection_into_a_dead_letter_with_the_raw_bytes() -> None:
    out = validate("saltmarsh/v1/marsh-1/probe-1/status", b"\xffonline", NOW_MS, None, Limits())
    assert out == DeadLetter.of(
        NOW_MS,
        "saltmarsh/v1/marsh-1/probe-1/status",
        b"\xffonline",
        reason=Reason.UNKNOWN_TOPIC,
        field="topic.channel",
        detail="'status' carries no data",
    )
    assert isinstance(out, DeadLetter) and (out.payload_head, out.payload_bytes) == (b"\xffonline", 7)


def test_validate_judges_the_future_by_the_arrival_clock() -> None:
    out = validate(TOPIC, payload(1), NOW_MS - 301_000, None, Limits(max_future_skew_ms=300_000))
    assert isinstance(out, DeadLetter) and out.reason is Reason.FUTURE_TIMESTAMP


def test_validate_survives_a_bug_in_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(validate_module, "parse", broken)
    out = validate(TOPIC, payload(1), NOW_MS, None, Limits())
    assert isinstance(out, DeadLetter)
    assert (out.reason, out.field, out.payload_head) == (Reason.INVALID_VALUE, "payload", payload(1))


def test_gateway_comes_from_the_gw_user_property() -> None:
    assert gateway_of(publish(1)) == "gw-1"
    assert gateway_of(Publish(TOPIC, b"", 1, 1, False, False, (("x", "1"), ("gw", "gw-2")))) == "gw-2"
    assert gateway_of(Publish(TOPIC, b"", 1, 1, False, False, ())) is None


def test_a_valid_message_published_retained_is_refused_as_a_dead_letter() -> None:
    live, kept, bad_kept = validate_publishes(
        [publish(1), publish(2, retain=True), publish(3, b"}}}", retain=True)], NOW_MS, Limits()
    )
    assert isinstance(live, Delivery)
    assert isinstance(kept, DeadLetter) and (kept.reason, kept.field) == (Reason.RETAINED, "retain")
    assert kept.payload_head == payload(2)
    assert isinstance(bad_kept, DeadLetter) and bad_kept.reason is Reason.MALFORMED_JSON  # its own reason first


def test_the_subscription_flags_retained_messages_and_never_sends_the_kept_copy() -> None:
    # Retain As Published, so validate sees the flag; Retain Handling 2, so no restart re-ingests.
    assert SUBSCRIPTION_OPTIONS == QOS_AT_LEAST_ONCE | RETAIN_AS_PUBLISHED | RETAIN_DO_NOT_SEND == 0x29


def test_an_oversized_message_leaves_a_bounded_dead_letter_with_its_size_and_hash() -> None:
    body = b"x" * 10_000_000
    out = validate(TOPIC, body, NOW_MS, None, Limits())
    assert isinstance(out, DeadLetter) and out.reason is Reason.OVERSIZED
    assert (len(out.payload_head), out.payload_bytes) == (DEAD_LETTER_HEAD_BYTES, 10_000_000)
    assert out.payload_sha256 == hashlib.sha256(body).hexdigest()


def test_a_head_cut_inside_a_utf8_character_stays_utf8() -> None:
    body = "é".encode() * DEAD_LETTER_HEAD_BYTES  # two bytes each: the cut falls on a boundary
    odd = b"x" + body  # ... and here inside a character
    even_letter = DeadLetter.of(NOW_MS, TOPIC, body, reason=Reason.OVERSIZED, field="payload", detail="big")
    odd_letter = DeadLetter.of(NOW_MS, TOPIC, odd, reason=Reason.OVERSIZED, field="payload", detail="big")
    assert even_letter.payload_text() == ("utf-8", "é" * (DEAD_LETTER_HEAD_BYTES // 2))
    assert odd_letter.payload_text() == ("utf-8", "x" + "é" * (DEAD_LETTER_HEAD_BYTES // 2 - 1))
    whole = DeadLetter.of(NOW_MS, TOPIC, b"\xc3", reason=Reason.NOT_UTF8, field="payload", detail="bad")
    assert whole.payload_text() == ("base64", "ww==")  # not cut: really not UTF-8


def test_write_retries_back_off_through_the_shared_helper() -> None:
    sink = FakeSink(failures=3)
    rig = Pipeline(sink, max_messages=100)
    now = time.monotonic()
    rig.take([publish(1)], 1, now)
    waits = []
    for _ in range(3):
        rig.write_due(time.monotonic() + 10)  # due whatever the backoff
        waits.append(rig.writer.wait_s(time.monotonic()))
    assert waits == [pytest.approx(w, abs=0.01) for w in (0.1, 0.2, 0.4)]
    rig.write_due(time.monotonic() + 10)
    assert rig.consumer.acked == [1]
    rig.take([publish(2)], 1, now)
    sink.failures = 10**6
    rig.write_due(time.monotonic() + 10)
    assert rig.writer.wait_s(time.monotonic()) == pytest.approx(0.1, abs=0.01)  # reset by the success


def test_nothing_is_written_before_the_batch_is_due() -> None:
    sink = FakeSink()
    rig = Pipeline(sink, max_messages=3)
    now = time.monotonic()
    rig.take([publish(1), publish(2)], 1, now)
    assert rig.writer.wait_s(now) == pytest.approx(0.01)
    rig.write_due(now)
    assert (sink.calls, rig.writer.held) == (0, 2)
    rig.take([publish(3)], 1, now)  # full
    assert rig.writer.wait_s(now) == 0
    rig.write_due(now)
    assert (sink.calls, rig.writer.held, rig.consumer.acked) == (1, 0, [1, 2, 3])
    assert rig.writer.wait_s(now) is None


def test_batch_is_acked_only_after_the_sink_took_it_and_retried_while_down() -> None:
    sink = FakeSink(failures=2)
    rig = Pipeline(sink, max_messages=100)
    rig.take([*(publish(seq) for seq in range(1, 6)), publish(99, b"not json")], 1, time.monotonic())
    assert rig.drain(time.monotonic() + 5)
    assert sink.calls == 3  # two failures, then the same batch again
    assert rig.consumer.acked == [1, 2, 3, 4, 5, 99]
    assert rig.consumer.batches_committed_at_ack == [1] * 6
    counters = rig.counters.snapshot()
    assert counters["received_total"] == 6  # validated once, not once per retry
    assert (counters["written_total"], counters["dead_letters_total"]) == (5, 1)
    assert counters["dead_letters_by_reason"] == {"malformed_json": 1}
    assert counters["write_failures_total"] == 2
    assert counters["sink_ok"] is True
    assert sink.batches[0][0][0].gateway == "gw-1"


def test_while_the_sink_is_down_nothing_is_acked_and_retries_back_off() -> None:
    sink = FakeSink(failures=10**6)
    rig = Pipeline(sink, max_messages=4)
    now = time.monotonic()
    rig.take([publish(seq) for seq in range(1, 11)], 1, now)
    rig.write_due(now)
    assert sink.calls == 1  # the first batch failed; the later ones wait behind it, in order
    rig.write_due(now)
    assert sink.calls == 1  # not before the backoff
    assert rig.writer.wait_s(now) == pytest.approx(0.1, abs=0.01)
    snapshot = rig.counters.snapshot()
    assert snapshot["sink_ok"] is False and "database is down" in snapshot["sink_why"]
    assert not rig.drain(time.monotonic() + 0.5)  # shutdown gives up, leaving all of it unacked
    assert rig.consumer.acked == [] and rig.writer.held == 10


def test_batches_respect_the_size_limit_and_duplicates_are_counted() -> None:
    sink = FakeSink()
    rig = Pipeline(sink, max_messages=3)
    rig.take([publish(seq) for seq in [*range(1, 8), 3, 4]], 1, time.monotonic())
    assert rig.drain(time.monotonic() + 5)
    assert [len(d) for d, _ in sink.batches] == [3, 3, 3]
    assert len(rig.consumer.acked) == 9
    counters = rig.counters.snapshot()
    assert (counters["written_total"], counters["duplicates_total"], counters["acked_total"]) == (7, 2, 9)


def test_a_batch_from_a_lost_connection_is_written_but_not_acked() -> None:
    sink = FakeSink()
    rig = Pipeline(sink, max_messages=100)
    now = time.monotonic()
    rig.take([publish(1), publish(2)], 1, now)
    rig.take([publish(3)], 2, now)  # a new connection closes the open batch
    rig.consumer.connection = 2
    rig.write_due(now)
    assert [len(d) for d, _ in sink.batches] == [2]  # the closed one is due at once
    assert rig.consumer.acked == []  # its packet ids meant something only on connection 1
    assert rig.drain(time.monotonic() + 5)
    assert rig.consumer.acked == [3]
    counters = rig.counters.snapshot()
    assert (counters["written_total"], counters["acked_total"]) == (3, 1)


def test_a_resumed_session_drops_what_the_broker_will_redeliver() -> None:
    sink = FakeSink()
    rig = Pipeline(sink, max_messages=100)
    now = time.monotonic()
    rig.take([publish(1), publish(2)], 1, now)
    rig.take([publish(3)], 2, now)
    assert rig.writer.forget_before(2) == 2
    assert rig.writer.held == 1
    assert rig.drain(time.monotonic() + 5)
    assert [[d.envelope.seq for d in batch] for batch, _ in sink.batches] == [[3]]


def test_main_refuses_a_bad_config_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ingester.toml"
    config.write_text(
        'ingester_id = "ing-1"\nstatus_dir = "/tmp/s"\nbatch_max_mesages = 5\n[sink]\npath = "/tmp/x.db"\n'
    )
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "batch_max_mesages" in err and "unknown key" in err
