"""Both sinks keep each target's command state beside the cmdres messages, only ever moving it
forward, whatever order or how many times the outcomes arrive, in one batch or in many: SQLite by
its conditional upsert, Elasticsearch by external versions (`version` = rank). The same tables run
against both, on osmem-server (and a real cluster when SALTMARSH_TEST_ES_URL is set), and the
master's `state_reader` reads the same records back from either."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from saltmarsh.commands.states import state_reader
from saltmarsh.config.elasticsearch import ElasticsearchConfig
from saltmarsh.config.ingester import SinkConfig
from saltmarsh.config.table import Secret
from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop, advances
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.ops.localfleet.processes import free_port
from saltmarsh.sinks.base import DeadLetter, Delivery, StoredKey, WriteResult
from saltmarsh.sinks.command_state import CommandRecord, command_records
from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink
from saltmarsh.sinks.sqlite import SqliteSink
from tests import es_support
from tests.es_support import EsBackend

# Bound here so pytest finds them: osmem, plus a real cluster when SALTMARSH_TEST_ES_URL is set.
es_backend = es_support.es_backend
es_prefix = es_support.es_prefix

CMD = "01HF7YAT00XGHYZ3KT8V94F16P"
S = CommandState


class CommandSink(Protocol):
    def write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult: ...
    def stored_keys(self) -> Iterator[StoredKey]: ...
    def command_states(self, rollout: str | None = None) -> list[CommandRecord]: ...


def delivery(
    state: CommandState,
    seq: int,
    *,
    device: str = "pi-1",
    target: str | None = None,
    cmd_id: str = CMD,
    rollout: str = "r-1",
) -> Delivery:
    outcome = CommandOutcome(
        cmd_id,
        rollout,
        state,
        hop=Hop.GATEWAY if state is S.EXPIRED else None,
        reason="superseded" if state is S.CANCELED else None,
        result={"seq": seq, "ok": True, "ratio": 0.25} if state is S.SUCCEEDED else {},
        target=target,
    )
    env = mint_cmdres(device=device, site="marsh", boot="b1", seq=seq, ts_ms=1_700_000_000_000 + seq, outcome=outcome)
    return Delivery(env, received_ms=1_700_000_000_500 + seq)


def es_config(backend: EsBackend, prefix: str, url: str | None = None) -> ElasticsearchConfig:
    """What an ingester's or commander's `[sink.elasticsearch]` would say for this backend."""
    return backend.config(
        prefix,
        url,
        api_key=None if backend.api_key is None else Secret(backend.api_key),
        verify_certs=backend.verify_certs,
        plain_json=backend.node_class is not None,
    )


@pytest.fixture
def es_sink(es_backend: EsBackend, es_prefix: str) -> Iterator[ElasticsearchSink]:
    sink = ElasticsearchSink(es_config(es_backend, es_prefix))
    with contextlib.closing(sink):
        yield sink


@pytest.fixture
def sqlite_sink(tmp_path: Path) -> Iterator[SqliteSink]:
    sink = SqliteSink(tmp_path / "sink.db")
    with contextlib.closing(sink):
        yield sink


SEQUENCES = {
    "in order": ([S.RUNNING, S.SUCCEEDED], S.SUCCEEDED),
    "a late lower state": ([S.SUCCEEDED, S.RUNNING], S.SUCCEEDED),
    "a late result after the timeout": ([S.RUNNING, S.TIMED_OUT, S.SUCCEEDED], S.SUCCEEDED),
    "a timeout after the result": ([S.SUCCEEDED, S.TIMED_OUT], S.SUCCEEDED),
    "a second timeout": ([S.TIMED_OUT, S.TIMED_OUT, S.RUNNING], S.TIMED_OUT),
    "the first final stands": ([S.SUCCEEDED, S.CANCELED], S.SUCCEEDED),
    "a cancel that came first": ([S.CANCELED, S.SUCCEEDED], S.CANCELED),
    "a failure then an expiry": ([S.FAILED, S.EXPIRED, S.SUCCEEDED], S.FAILED),
    "the gateway's then the device's": ([S.AT_GATEWAY, S.DELIVERED, S.RUNNING, S.FAILED], S.FAILED),
    "expired at the gateway": ([S.AT_GATEWAY, S.EXPIRED, S.RUNNING], S.EXPIRED),
    "a duplicate": ([S.SUCCEEDED, S.SUCCEEDED], S.SUCCEEDED),
}
BATCHING = pytest.mark.parametrize("one_batch", [True, False], ids=["one batch", "a batch each"])


def check_sequence(sink: CommandSink, name: str, one_batch: bool) -> None:
    states, expected = SEQUENCES[name]
    deliveries = [delivery(state, seq) for seq, state in enumerate(states, start=1)]
    for batch in [deliveries] if one_batch else [[d] for d in deliveries]:
        sink.write(batch, [])
    sink.write(deliveries, [])  # and everything again, as a replayed batch would be
    (record,) = sink.command_states("r-1")
    assert (record.cmd_id, record.device, record.state) == (CMD, "pi-1", expected.value), name
    winner = next(seq for seq, state in enumerate(states, start=1) if state is expected)
    assert record.reported_by == f"pi-1/b1/{winner}"
    assert record == command_records([deliveries[winner - 1]])[0]  # every field the winner's
    assert sum(1 for _ in sink.stored_keys()) == len(states)  # every message kept, once


@BATCHING
@pytest.mark.parametrize("name", SEQUENCES)
def test_a_targets_state_only_moves_forward_in_sqlite(sqlite_sink: SqliteSink, name: str, one_batch: bool) -> None:
    check_sequence(sqlite_sink, name, one_batch)


@BATCHING
@pytest.mark.parametrize("name", SEQUENCES)
def test_a_targets_state_only_moves_forward_in_elasticsearch(
    es_sink: ElasticsearchSink, name: str, one_batch: bool
) -> None:
    check_sequence(es_sink, name, one_batch)
    states, _ = SEQUENCES[name]
    # One document per target per batch; each one the cluster stored is one the rank rule keeps.
    sent = (1 if one_batch else len(states)) + 1
    stored: CommandState | None = None
    advanced = 0
    for state in states if not one_batch else []:
        if advances(stored, state):
            stored, advanced = state, advanced + 1
    assert es_sink.command_states_stored == (1 if one_batch else advanced)
    assert es_sink.command_states_stale == sent - es_sink.command_states_stored


def test_external_versions_order_states_as_the_rank_rule_does() -> None:
    """External versioning replaces iff the version is higher: that must be `advances`, exactly."""
    for stored, incoming in itertools.product(CommandState, repeat=2):
        record = command_records([delivery(stored, 1)])[0]
        newer = command_records([delivery(incoming, 2)])[0]
        assert (newer.version > record.version) == advances(stored, incoming), (stored, incoming)


def every_pair() -> tuple[list[Delivery], list[Delivery]]:
    """One target per (stored, incoming) pair of states: what each sink first holds, then is sent."""
    first, then = [], []
    for i, (stored, incoming) in enumerate(itertools.product(CommandState, repeat=2)):
        first.append(delivery(stored, 1, device=f"pi-{i}"))
        then.append(delivery(incoming, 2, device=f"pi-{i}"))
    return first, then


def test_both_sinks_keep_the_same_state_for_every_pair_of_states(
    sqlite_sink: SqliteSink, es_sink: ElasticsearchSink
) -> None:
    first, then = every_pair()
    for sink in (sqlite_sink, es_sink):
        sink.write(first, [])
        sink.write(then, [])
    in_sqlite, in_es = sqlite_sink.command_states("r-1"), es_sink.command_states("r-1")
    assert len(in_sqlite) == len(CommandState) ** 2
    assert in_es == in_sqlite
    kept_later = sum(1 for r in in_sqlite if r.reported_by.endswith("/2"))
    assert es_sink.command_states_stale == len(in_sqlite) - kept_later


def test_a_gateway_reports_for_its_device_on_its_own_sequence(sqlite_sink: SqliteSink) -> None:
    sqlite_sink.write(
        [
            delivery(S.EXPIRED, 9, device="gw-1", target="pi-1"),
            delivery(S.AT_GATEWAY, 3, device="gw-1", target="pi-2"),
        ],
        [],
    )
    got = {(r.device, r.state, r.hop, r.reported_by) for r in sqlite_sink.command_states()}
    assert got == {("pi-1", "expired", "gateway", "gw-1/b1/9"), ("pi-2", "at_gateway", None, "gw-1/b1/3")}
    assert sqlite_sink.command_states("another") == []


def rollouts() -> list[Delivery]:
    """Two rollouts over 40 devices, two commands each, in every kind of state and order."""
    cmd_ids = ["01HF7YAT00XGHYZ3KT8V94F16P", "01HF7YAT00XGHYZ3KT8V94F16Q", "01HF7YB000XGHYZ3KT8V94F16R"]
    walk = [S.AT_GATEWAY, S.RUNNING, S.SUCCEEDED, S.DELIVERED, S.TIMED_OUT, S.FAILED, S.CANCELED, S.EXPIRED]
    out: list[Delivery] = []
    seq = itertools.count(1)
    for n in range(40):
        for c, (cmd_id, rollout) in enumerate(zip(cmd_ids, ["r-1", "r-1", "r-2"], strict=True)):
            steps = walk[(n + c) % len(walk) :][: 1 + n % 4]
            out.extend(delivery(s, next(seq), device=f"pi-{n:02d}", cmd_id=cmd_id, rollout=rollout) for s in steps)
    return out


def test_state_reader_reads_the_same_records_from_elasticsearch_as_from_sqlite(
    tmp_path: Path, es_backend: EsBackend, es_prefix: str
) -> None:
    deliveries = rollouts()
    sqlite_cfg = SinkConfig(type="sqlite", path=tmp_path / "sink.db")
    es_cfg = SinkConfig(type="elasticsearch", elasticsearch=es_config(es_backend, es_prefix))
    read_sqlite, read_es = state_reader(sqlite_cfg), state_reader(es_cfg)
    assert read_es("r-1") == [] == read_sqlite("r-1")  # nothing written yet: no index, no file
    sqlite_sink, es_sink = SqliteSink(tmp_path / "sink.db"), ElasticsearchSink(es_config(es_backend, es_prefix))
    with contextlib.closing(sqlite_sink), contextlib.closing(es_sink):
        for start in range(0, len(deliveries), 50):
            sqlite_sink.write(deliveries[start : start + 50], [])
            es_sink.write(deliveries[start : start + 50], [])
    for rollout, targets in (("r-1", 80), ("r-2", 40)):
        from_sqlite = read_sqlite(rollout)
        assert len(from_sqlite) == targets
        assert read_es(rollout) == from_sqlite
    assert read_es("r-3") == []


def test_the_elasticsearch_reader_pages_through_every_target(es_sink: ElasticsearchSink) -> None:
    deliveries = rollouts()
    es_sink.write(deliveries, [])
    es_sink.audit_page_size = 7  # 80 targets in r-1: twelve pages, the last one short
    got = es_sink.command_states("r-1")
    assert [(r.cmd_id, r.device) for r in got] == sorted({(r.cmd_id, r.device) for r in got})
    assert len(got) == 80
    assert len(es_sink.command_states()) == 120


def test_an_unreachable_cluster_is_sink_unavailable_naming_it(es_backend: EsBackend, es_prefix: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    read = state_reader(SinkConfig(type="elasticsearch", elasticsearch=es_config(es_backend, es_prefix, url)))
    with pytest.raises(SinkUnavailable, match=f"elasticsearch unreachable at {url}: command states not read"):
        read("r-1")
