"""The ingester's parts alone, without a broker: validate, and batch -> write -> ack."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from cloud_ingester import validate as validate_module
from cloud_ingester.batcher import BatchWriter, IngesterCounters
from cloud_ingester.consumer import Inbound
from cloud_ingester.service import main
from cloud_ingester.validate import validate

from saltmarsh.envelope import Limits
from saltmarsh.errors import Reason
from saltmarsh.sinks.base import DeadLetter, Delivery, SinkUnavailable, WriteResult

NOW_MS = 1_700_000_000_000
TOPIC = "saltmarsh/v1/marsh-1/probe-1/reading"


def payload(seq: int) -> bytes:
    doc = {"v": 1, "device": "probe-1", "site": "marsh-1", "boot": "b1", "seq": seq, "ts": NOW_MS, "metrics": {"t": 1}}
    return json.dumps(doc).encode()


def inbound(seq: int, body: bytes | None = None, session: int = 1) -> Inbound:
    return Inbound(TOPIC, payload(seq) if body is None else body, "gw-1", NOW_MS, mid=seq, qos=1, session=session)


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

    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink
        self.acked: list[int] = []
        self.batches_committed_at_ack: list[int] = []

    def __call__(self, message: Inbound) -> None:
        self.acked.append(message.mid)
        self.batches_committed_at_ack.append(len(self.sink.batches))


def writer_for(sink: FakeSink, inbox: queue.Queue[Inbound], max_messages: int = 100) -> tuple[BatchWriter, Recorder]:
    ack = Recorder(sink)
    writer = BatchWriter(
        inbox, sink, ack, IngesterCounters(sink.name), Limits(), max_messages=max_messages, interval_s=0.01
    )
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


def test_batch_is_acked_only_after_the_sink_took_it_and_retried_while_down() -> None:
    inbox: queue.Queue[Inbound] = queue.Queue()
    for seq in range(1, 6):
        inbox.put(inbound(seq))
    inbox.put(inbound(99, b"not json"))
    sink = FakeSink(failures=2)
    writer, ack = writer_for(sink, inbox)
    stopping = threading.Event()
    stopping.set()  # drain what is there, then return
    writer.run(stopping, threading.Event())
    assert sink.calls == 3  # two failures, then the same batch again
    assert ack.acked == [1, 2, 3, 4, 5, 99]
    assert ack.batches_committed_at_ack == [1] * 6
    counters = writer.counters.snapshot()
    assert counters["received_total"] == 6  # validated once, not once per retry
    assert (counters["written_total"], counters["dead_letters_total"]) == (5, 1)
    assert counters["dead_letters_by_reason"] == {"malformed_json": 1}
    assert counters["write_failures_total"] == 2
    assert counters["sink_ok"] is True


def test_nothing_new_is_taken_while_the_sink_is_down_and_nothing_is_acked() -> None:
    inbox: queue.Queue[Inbound] = queue.Queue()
    for seq in range(1, 11):
        inbox.put(inbound(seq))
    sink = FakeSink(failures=10**6)
    writer, ack = writer_for(sink, inbox, max_messages=4)
    stopping, abandon = threading.Event(), threading.Event()
    thread = threading.Thread(target=writer.run, args=(stopping, abandon))
    thread.start()
    while sink.calls < 2:
        threading.Event().wait(0.01)
    assert inbox.qsize() == 6  # one batch of 4 held, the rest left to the broker's flow control
    snapshot = writer.counters.snapshot()
    assert snapshot["sink_ok"] is False and "database is down" in snapshot["sink_why"]
    stopping.set()
    abandon.set()
    thread.join(5)
    assert not thread.is_alive()
    assert ack.acked == []


def test_batches_respect_the_size_limit_and_duplicates_are_counted() -> None:
    inbox: queue.Queue[Inbound] = queue.Queue()
    for seq in [*range(1, 8), 3, 4]:
        inbox.put(inbound(seq))
    sink = FakeSink()
    writer, ack = writer_for(sink, inbox, max_messages=3)
    stopping = threading.Event()
    stopping.set()
    writer.run(stopping, threading.Event())
    assert [len(d) for d, _ in sink.batches] == [3, 3, 3]
    assert len(ack.acked) == 9
    counters = writer.counters.snapshot()
    assert (counters["written_total"], counters["duplicates_total"], counters["acked_total"]) == (7, 2, 9)


def test_main_refuses_a_bad_config_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ingester.toml"
    config.write_text(
        'ingester_id = "ing-1"\nstatus_dir = "/tmp/s"\nbatch_max_mesages = 5\n[sink]\npath = "/tmp/x.db"\n'
    )
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "batch_max_mesages" in err and "unknown key" in err
