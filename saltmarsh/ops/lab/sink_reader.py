"""The cloud's sink, read from inside the cloud node for the lab's audit on the host.

The host must not read the sink itself. A SQLite file seen through the node's overlay and the
same file in its upper layer are two inodes to POSIX locks, so SQLite's WAL protocol breaks
between them: a checkpoint rewound the WAL under the host's reader ("database disk image is
malformed", 20 sites x 50 sensors). Elasticsearch listens inside the node, out of the host's
reach. So `python -m saltmarsh.ops.lab.sink_reader CONFIG` runs in the node, through the sink
config Salt rendered there, and writes one line per record to stdout:

    k <TAB> device <TAB> boot <TAB> seq <TAB> ts_ms     every stored key, in audit order
    d <TAB> {"reason": count, ...}                       dead letters by reason
    a <TAB> count                                        alerts stored

`read_lines` is the host's side: the lines back into keys and counts, pure.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from saltmarsh.config.ingester import SinkConfig, load_sink_config
from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.sinks import StoredKey, open_audit_source


@dataclass
class SinkTotals:
    """What follows the keys: filled once the key stream has been read to its end."""

    dead_letters: dict[str, int] = field(default_factory=dict)
    alerts: int | None = None
    complete: bool = False


def _alerts(sink: SinkConfig) -> int:
    if sink.type == "sqlite" and sink.path is not None:
        with contextlib.closing(sqlite3.connect(f"file:{sink.path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM messages WHERE kind = 'alert'").fetchone()[0])
    from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink
    from saltmarsh.sinks.elasticsearch.templates import READINGS, index_pattern

    assert sink.elasticsearch is not None
    es = ElasticsearchSink(sink.elasticsearch, read_only=True)
    try:
        pattern = index_pattern(es.prefix, READINGS)
        es.client.indices.refresh(index=pattern, allow_no_indices=True)
        found = es.client.count(index=pattern, query={"term": {"saltmarsh.kind": "alert"}}, allow_no_indices=True)
        return int(found["count"])
    finally:
        es.close()


def write_records(sink: SinkConfig, out: TextIO) -> None:
    source = open_audit_source(sink)
    try:
        for key in source.stored_keys():
            out.write(f"k\t{key.device}\t{key.boot}\t{key.seq}\t{key.ts_ms}\n")
        out.write("d\t" + json.dumps(source.dead_letter_counts()) + "\n")
    finally:
        source.close()
    out.write(f"a\t{_alerts(sink)}\n")


def read_lines(lines: Iterable[str], totals: SinkTotals) -> Iterator[StoredKey]:
    """The reader's output as stored keys; the counts after them go into `totals`."""
    for number, line in enumerate(lines, 1):
        tag, _, rest = line.rstrip("\n").partition("\t")
        if tag == "k":
            device, boot, seq, ts_ms = rest.split("\t")
            yield StoredKey(device, boot, int(seq), int(ts_ms))
        elif tag == "d":
            totals.dead_letters = {str(k): int(v) for k, v in json.loads(rest).items()}
        elif tag == "a":
            totals.alerts = int(rest)
            totals.complete = True
        else:
            raise SaltmarshError(f"sink reader: line {number}: unknown record {tag[:20]!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m saltmarsh.ops.lab.sink_reader INGESTER_CONFIG", file=sys.stderr)
        return 2
    write_records(load_sink_config(Path(args[0])), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
