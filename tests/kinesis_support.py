"""Kinesis test helpers: a real moto server on an ephemeral port, an in-memory fake, and a
fault-injecting wrapper that works over either."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.topics import Channel
from saltmarsh.ops.localfleet.processes import free_port
from saltmarsh.sinks.base import Delivery

REGION = "eu-west-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
THROTTLED = "ProvisionedThroughputExceededException"


@dataclass
class MotoServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return boto3.session.Session().client(
            "kinesis",
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )


@contextmanager
def moto_server(log_dir: Path, timeout_s: float = 20.0) -> Iterator[MotoServer]:
    """`python -m moto.server` on a free loopback port; stopped by its PID on exit."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}; see {log_dir / 'moto.log'}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"moto server not listening on {port} after {timeout_s} s") from None
                time.sleep(0.05)
        yield MotoServer(process, port)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_stream(client: Any, name: str, shards: int) -> None:
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})


def read_stream(client: Any, name: str) -> dict[str, list[dict[str, Any]]]:
    """Every record of every shard, in sequence-number order, by shard id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for shard in client.list_shards(StreamName=name)["Shards"]:
        shard_id = shard["ShardId"]
        iterator = client.get_shard_iterator(StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        records: list[dict[str, Any]] = []
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        out[shard_id] = records
    return out


def decoded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(record["Data"]) for record in records]


def envelope(
    device: str = "dev-1",
    seq: int = 0,
    kind: Channel = Channel.READING,
    site: str = "marsh",
    name: str | None = None,
    **metrics: float,
) -> Envelope:
    if kind is Channel.READING and not metrics:
        metrics = {"temperature": 20.0}
    if kind is not Channel.READING and name is None:
        name = "threshold"
    return Envelope(kind, device, site, "b1", seq, 1_700_000_000_000 + seq, metrics, name=name)


def delivery(env: Envelope) -> Delivery:
    return Delivery(env, received_ms=env.ts_ms + 5, gateway="gw-1")


def throttle_error() -> ClientError:
    return ClientError({"Error": {"Code": THROTTLED, "Message": "Rate exceeded for stream"}}, "PutRecords")


@dataclass
class MemoryKinesis:
    """An in-memory stream: partition keys hash to shards, sequence numbers only grow."""

    shards: int = 4
    stored: dict[int, list[tuple[int, str, bytes]]] = field(default_factory=dict)
    _next_seq: int = 0

    def shard_of(self, partition_key: str) -> int:
        return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big") % self.shards

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        results = []
        for entry in Records:
            shard = self.shard_of(entry["PartitionKey"])
            self._next_seq += 1
            self.stored.setdefault(shard, []).append((self._next_seq, entry["PartitionKey"], entry["Data"]))
            results.append({"SequenceNumber": str(self._next_seq), "ShardId": f"shardId-{shard:012d}"})
        return {"FailedRecordCount": 0, "Records": results}

    def by_key(self) -> dict[str, list[dict[str, Any]]]:
        """Each partition key's records in its shard's sequence order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for rows in self.stored.values():
            for _, key, data in sorted(rows):
                out.setdefault(key, []).append(json.loads(data))
        return out

    def close(self) -> None:
        pass


# A chooser sees one record's decoded JSON and how often that record has been sent before, and
# returns an error code to fail it with, or None to pass it on.
Chooser = Callable[[dict[str, Any], int], str | None]


@dataclass
class FlakyClient:
    """Wraps a client (moto's or MemoryKinesis) and fails chosen records or whole calls.

    Failed records are withheld from the inner client, as Kinesis would not store them, and
    the merged response keeps one result per request record in request order.
    """

    inner: Any
    fail_record: Chooser = lambda doc, sent_before: None
    fail_calls: list[Exception] = field(default_factory=list)  # raised, first to last, by the next calls
    calls: list[list[dict[str, Any]]] = field(default_factory=list)
    _sent: dict[bytes, int] = field(default_factory=dict)

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append([json.loads(r["Data"]) for r in Records])
        if self.fail_calls:
            raise self.fail_calls.pop(0)
        passed: list[dict[str, Any]] = []
        results: list[dict[str, Any] | None] = []
        for entry in Records:
            sent_before = self._sent.get(entry["Data"], 0)
            self._sent[entry["Data"]] = sent_before + 1
            code = self.fail_record(json.loads(entry["Data"]), sent_before)
            if code is None:
                passed.append(entry)
                results.append(None)
            else:
                results.append({"ErrorCode": code, "ErrorMessage": f"injected {code}"})
        inner_results = iter(self.inner.put_records(StreamName=StreamName, Records=passed)["Records"] if passed else [])
        merged = [result if result is not None else next(inner_results) for result in results]
        return {"FailedRecordCount": sum(1 for r in merged if "ErrorCode" in r), "Records": merged}

    def close(self) -> None:
        self.inner.close()


def fail_first_time(keys: set[tuple[str, int]], code: str = THROTTLED) -> Chooser:
    """Fail the records of these (device, seq) on their first send only."""

    def choose(doc: dict[str, Any], sent_before: int) -> str | None:
        return code if sent_before == 0 and (doc.get("device"), doc.get("seq")) in keys else None

    return choose
