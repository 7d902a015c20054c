"""The ingester's parts alone, without a broker: validate, and batch -> write -> ack."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from cloud_ingester import validate as validate_module
from cloud_ingester.batcher import BatchWriter, IngesterCounters
from cloud_ingester.consumer import gateway_of
from cloud_ingester.service import main
from cloud_ingester.validate import validate

from saltmarsh.contract.envelope import Limits
from saltmarsh.contract.errors import Reason, SinkUnavailable
from saltmarsh.mqtt.wire import Publish
from saltmarsh.sinks.base import DeadLetter, Delivery, WriteResult

NOW_MS = 1_700_000_000_000
TOPIC = "saltmarsh/v1/marsh-1/probe-1/reading"


def payload(seq: int) -> bytes:
    doc = {"v": 1, "device": "probe-1", "site": "marsh-1", "boot": "b1", "seq": seq, "ts": NOW_MS, "metrics": {"t": 1}}
    return json.dumps(doc).encode()


def publish(seq: int, body: bytes | None = None) -> Publish:
    """A message as the wire client hands it over; the packet id is the seq, for the asserts."""
    return Publish(TOPIC, payload(seq) if body is None else body, 1, seq, False, False, (("gw", "gw-1"),))


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


class Recorder:
    """Stands in for the consumer's ack, noting how many batches the sink had committed by then."""

    def __init__(self, sink: FakeSink, connection: int = 1) -> None:
        self.sink = sink
        self.connection = connection  # the one still open
        self.acked: list[int] = []
        self.batches_committed_at_ack: list[int] = []

    def __call__(self, packet_ids: list[int], connection: int) -> bool:
        if connection != self.connection:
            return False
        self.acked += packet_ids
        self.batches_committed_at_ack += [len(self.sink.batches)] * len(packet_ids)
        return True


def writer_for(sink: FakeSink, max_messages: int = 100) -> tuple[BatchWriter, Recorder]:
    ack = Recorder(sink)
    writer = BatchWriter(sink, ack, IngesterCounters(sink.name), Limits(), max_messages=max_messages, interval_s=0.01)
    return writer, ack


def test_validate_returns_a_delivery_with_the_gateway() -> None:
    out = validate(TOPIC, payload(5), NOW_MS, "gw-7", Limits())
    assert isinstance(out, Delivery)
    assert (out.envelope.key, out.received_ms, out.gateway) == ("probe-1:b1:5", NOW_MS, "gw-7")


def test_validate_drops_a_malformed_gateway_id_but_keeps_the_reading() -> None:
    out = validate(TOPIC, payload(5), NOW_MS, "gw 7/../x", Limits())
    assert isinstance(out, Delivery) and out.gateway is None


def test_validate_turns_a_rejection_into_a_dead_letter_with_the_raw_bytes() -> None:
    out = validate("saltmarsh/v1/marsh-1/probe-1/status", b"\xffonline", NOW_MS, None, Limits())
    assert out == DeadLetter(
        NOW_MS,
        "saltmarsh/v1/marsh-1/probe-1/status",
        Reason.UNKNOWN_TOPIC,
        "topic.channel",
        "'status' carries no data",
        b"\xffonline",
    )


def test_validate_judges_the_future_by_the_arrival_clock() -> None:
    out = validate(TOPIC, payload(1), NOW_MS - 301_000, None, Limits(max_future_skew_ms=300_000))
    assert isinstance(out, DeadLetter) and out.reason is Reason.FUTURE_TIMESTAMP


def test_validate_survives_a_bug_in_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(validate_module, "parse", broken)
    out = validate(TOPIC, payload(1), NOW_MS, None, Limits())
    assert isinstance(out, DeadLetter)
    assert (out.reason, out.field, out.payload) == (Reason.INVALID_VALUE, "payload", payload(1))


def test_gateway_comes_from_the_gw_user_property() -> None:
    assert gateway_of(publish(1)) == "gw-1"
    assert gateway_of(Publish(TOPIC, b"", 1, 1, False, False, (("x", "1"), ("gw", "gw-2")))) == "gw-2"
    assert gateway_of(Publish(TOPIC, b"", 1, 1, False, False, ())) is None


def test_nothing_is_written_before_the_batch_is_due() -> None:
    sink = FakeSink()
    writer, ack = writer_for(sink, max_messages=3)
    now = time.monotonic()
    writer.take([publish(1), publish(2)], 1, NOW_MS, now)
    assert writer.wait_s(now) == pytest.approx(0.01)
    writer.write_due(now)
    assert (sink.calls, writer.held) == (0, 2)
    writer.take([publish(3)], 1, NOW_MS, now)  # full
    assert writer.wait_s(now) == 0
    writer.write_due(now)
    assert (sink.calls, writer.held, ack.acked) == (1, 0, [1, 2, 3])
    assert writer.wait_s(now) is None


def test_batch_is_acked_only_after_the_sink_took_it_and_retried_while_down() -> None:
    sink = FakeSink(failures=2)
    writer, ack = writer_for(sink)
    writer.take([*(publish(seq) for seq in range(1, 6)), publish(99, b"not json")], 1, NOW_MS, time.monotonic())
    assert writer.drain(time.monotonic() + 5)
    assert sink.calls == 3  # two failures, then the same batch again
    assert ack.acked == [1, 2, 3, 4, 5, 99]
    assert ack.batches_committed_at_ack == [1] * 6
    counters = writer.counters.snapshot()
    assert counters["received_total"] == 6  # validated once, not once per retry
    assert (counters["written_total"], counters["dead_letters_total"]) == (5, 1)
    assert counters["dead_letters_by_reason"] == {"malformed_json": 1}
    assert counters["write_failures_total"] == 2
    assert counters["sink_ok"] is True
    assert sink.batches[0][0][0].gateway == "gw-1"


def test_while_the_sink_is_down_nothing_is_acked_and_retries_back_off() -> None:
    sink = FakeSink(failures=10**6)
    writer, ack = writer_for(sink, max_messages=4)
    now = time.monotonic()
    writer.take([publish(seq) for seq in range(1, 11)], 1, NOW_MS, now)
    writer.write_due(now)
    assert sink.calls == 1  # the first batch failed; the later ones wait behind it, in order
    writer.write_due(now)
    assert sink.calls == 1  # not before the backoff
    assert writer.wait_s(now) == pytest.approx(0.1, abs=0.05)
    snapshot = writer.counters.snapshot()
    assert snapshot["sink_ok"] is False and "database is down" in snapshot["sink_why"]
    assert not writer.drain(time.monotonic() + 0.5)  # shutdown gives up, leaving all of it unacked
    assert ack.acked == [] and writer.held == 10


def test_batches_respect_the_size_limit_and_duplicates_are_counted() -> None:
    sink = FakeSink()
    writer, ack = writer_for(sink, max_messages=3)
    writer.take([publish(seq) for seq in [*range(1, 8), 3, 4]], 1, NOW_MS, time.monotonic())
    assert writer.drain(time.monotonic() + 5)
    assert [len(d) for d, _ in sink.batches] == [3, 3, 3]
    assert len(ack.acked) == 9
    counters = writer.counters.snapshot()
    assert (counters["written_total"], counters["duplicates_total"], counters["acked_total"]) == (7, 2, 9)


def test_a_batch_from_a_lost_connection_is_written_but_not_acked() -> None:
    sink = FakeSink()
    writer, ack = writer_for(sink)
    now = time.monotonic()
    writer.take([publish(1), publish(2)], 1, NOW_MS, now)
    writer.take([publish(3)], 2, NOW_MS, now)  # a new connection closes the open batch
    ack.connection = 2
    writer.write_due(now)
    assert [len(d) for d, _ in sink.batches] == [2]  # the closed one is due at once
    assert ack.acked == []  # its packet ids meant something only on connection 1
    assert writer.drain(time.monotonic() + 5)
    assert ack.acked == [3]
    counters = writer.counters.snapshot()
    assert (counters["written_total"], counters["acked_total"]) == (3, 1)


def test_a_resumed_session_drops_what_the_broker_will_redeliver() -> None:
    sink = FakeSink()
    writer, _ = writer_for(sink)
    now = time.monotonic()
    writer.take([publish(1), publish(2)], 1, NOW_MS, now)
    writer.take([publish(3)], 2, NOW_MS, now)
    assert writer.forget_before(2) == 2
    assert writer.held == 1
    assert writer.drain(time.monotonic() + 5)
    assert [[d.envelope.seq for d in batch] for batch, _ in sink.batches] == [[3]]


def test_main_refuses_a_bad_config_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ingester.toml"
    config.write_text(
        'ingester_id = "ing-1"\nstatus_dir = "/tmp/s"\nbatch_max_mesages = 5\n[sink]\npath = "/tmp/x.db"\n'
    )
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "batch_max_mesages" in err and "unknown key" in err
