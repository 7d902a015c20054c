"""Elasticsearch test backends: osmem-server on loopback, or a real cluster; and a fault proxy.

`es_backend` is parametrized: `osmem` always runs (an in-memory OpenSearch-API server, one per
test module, stopped by PID), `elasticsearch` runs only when SALTMARSH_TEST_ES_URL names a real
cluster. Every test gets its own index prefix, so tests never see each other's documents.

`FaultProxy` sits between the sink and either backend and can refuse whole requests, refuse
chosen bulk items (without forwarding them, as a busy cluster would), drop connections after N
bulk requests, or stop listening altogether and come back on the same port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import pytest
from elastic_transport import BaseNode
from elasticsearch import Elasticsearch, NotFoundError

from bench.osmem import Emulator
from saltmarsh.config.elasticsearch import ElasticsearchConfig
from saltmarsh.sinks.elasticsearch.plain import PlainJsonNode
from saltmarsh.sinks.elasticsearch.templates import FAMILIES, policy_name, template_name

ES_URL_ENV = "SALTMARSH_TEST_ES_URL"
ES_API_KEY_ENV = "SALTMARSH_TEST_ES_API_KEY"
ES_INSECURE_ENV = "SALTMARSH_TEST_ES_INSECURE"  # "1": skip TLS verification of a test cluster


def start_osmem() -> Emulator:
    """osmem-server on an ephemeral loopback port (one launcher for the tests and the benches)."""
    return Emulator.start()


@dataclass
class EsBackend:
    """One cluster to test against, and how to talk to it."""

    name: str
    url: str
    node_class: type[BaseNode] | None
    api_key: str | None = None
    verify_certs: bool = True

    def client(self, url: str | None = None) -> Elasticsearch:
        kwargs: dict[str, Any] = {"request_timeout": 30}
        if self.node_class is not None:
            kwargs["node_class"] = self.node_class
        if self.api_key is not None:
            kwargs["api_key"] = self.api_key
        if not self.verify_certs:
            kwargs.update(verify_certs=False, ssl_show_warn=False)
        return Elasticsearch(url or self.url, **kwargs)

    def config(self, prefix: str, url: str | None = None, **overrides: Any) -> ElasticsearchConfig:
        """Fast-retrying test config. The client comes from `client()`, so no secrets here."""
        base = ElasticsearchConfig(
            hosts=(url or self.url,),
            index_prefix=prefix,
            retry_max=3,
            retry_backoff_base_s=0.01,
            retry_backoff_cap_s=0.05,
            request_timeout_s=10.0,
        )
        return replace(base, **overrides)

    def behind_proxy(self, proxy: FaultProxy) -> str:
        """The backend's URL with the proxy's address, keeping any credentials in it."""
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
        return urlunsplit(("http", netloc, parts.path, "", ""))

    def cleanup(self, prefix: str) -> None:
        with contextlib.closing(self.client()) as client:
            # By name: Elasticsearch refuses wildcard deletes (action.destructive_requires_name).
            names = list(client.indices.get(index=f"{prefix}-*", allow_no_indices=True, expand_wildcards="all"))
            if names:
                client.indices.delete(index=",".join(names))
            for family in FAMILIES:
                with contextlib.suppress(NotFoundError):
                    client.indices.delete_index_template(name=template_name(prefix, family))
            if self.name == "elasticsearch":
                with contextlib.suppress(NotFoundError):
                    client.ilm.delete_lifecycle(name=policy_name(prefix))


BACKENDS = [
    pytest.param("osmem", id="osmem"),
    pytest.param("elasticsearch", id="elasticsearch", marks=pytest.mark.es),
]


@pytest.fixture(scope="module", params=BACKENDS)
def es_backend(request: pytest.FixtureRequest) -> Iterator[EsBackend]:
    if request.param == "elasticsearch":
        url = os.environ.get(ES_URL_ENV)
        if not url:
            pytest.skip(f"{ES_URL_ENV} is not set: no real Elasticsearch to run this suite against")
        yield EsBackend(
            "elasticsearch",
            url,
            None,
            api_key=os.environ.get(ES_API_KEY_ENV),
            verify_certs=os.environ.get(ES_INSECURE_ENV) != "1",
        )
        return
    server = start_osmem()
    try:
        yield EsBackend("osmem", server.url, PlainJsonNode)
    finally:
        server.stop()


@pytest.fixture
def es_prefix(es_backend: EsBackend) -> Iterator[str]:
    """A fresh index prefix per test; its indices, templates and policy are removed afterwards."""
    prefix = f"smtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    es_backend.cleanup(prefix)


@pytest.fixture
def es_client(es_backend: EsBackend) -> Iterator[Elasticsearch]:
    """A client straight to the backend, bypassing any proxy: what the cluster really holds."""
    with contextlib.closing(es_backend.client()) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# Fault-injecting proxy


@dataclass
class _RequestFault:
    path_suffix: str
    status: int
    remaining: int


@dataclass
class _ItemFault:
    status: int
    times: int
    ids: frozenset[str] | None
    refused: dict[str, int] = field(default_factory=dict)

    def applies(self, doc_id: str) -> bool:
        if self.ids is not None and doc_id not in self.ids:
            return False
        if self.refused.get(doc_id, 0) >= self.times:
            return False
        self.refused[doc_id] = self.refused.get(doc_id, 0) + 1
        return True


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


class FaultProxy:
    """An HTTP relay on 127.0.0.1 in front of a backend, with faults a test switches on."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream_https = parts.scheme == "https"
        self._upstream_host = parts.hostname or "127.0.0.1"
        self._upstream_port = parts.port or (443 if self._upstream_https else 80)
        self._insecure = os.environ.get(ES_INSECURE_ENV) == "1"
        self._lock = threading.Lock()
        self._request_faults: list[_RequestFault] = []
        self._item_fault: _ItemFault | None = None
        self._drop_after_bulks: int | None = None
        self.bulk_item_counts: list[int] = []  # documents in each bulk request that reached the proxy
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults -------------------------------------------------------------------------------

    def refuse_requests(self, status: int, count: int, path_suffix: str = "/_bulk") -> None:
        """Answer the next `count` requests to `path_suffix` with `status`, forwarding nothing."""
        with self._lock:
            self._request_faults.append(_RequestFault(path_suffix, status, count))

    def refuse_items(self, status: int, times: int, ids: set[str] | None = None) -> None:
        """Refuse each bulk item (of `ids`, or all) `times` times with `status`, never forwarding it."""
        with self._lock:
            self._item_fault = _ItemFault(status, times, frozenset(ids) if ids is not None else None)

    def drop_after_bulks(self, count: int) -> None:
        """Forward `count` more bulk requests, then cut every connection as a dying cluster would."""
        with self._lock:
            self._drop_after_bulks = count

    def heal(self) -> None:
        with self._lock:
            self._request_faults.clear()
            self._item_fault = None
            self._drop_after_bulks = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again, on the same port after `stop`)."""
        handler = type("BoundRelay", (_Relay,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="es-fault-proxy", daemon=True).start()

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections: the cluster is gone."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- relaying -----------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The response to send, or None to drop the connection unanswered."""
        path = urlsplit(target).path
        is_bulk = method in ("POST", "PUT") and path.endswith("/_bulk")
        with self._lock:
            for fault in self._request_faults:
                if fault.remaining > 0 and path.endswith(fault.path_suffix):
                    fault.remaining -= 1
                    error = {"error": {"type": "injected", "reason": f"test proxy answers {fault.status}"}}
                    return fault.status, [("Content-Type", "application/json")], json.dumps(error).encode()
            if is_bulk and self._drop_after_bulks is not None:
                if self._drop_after_bulks <= 0:
                    return None
                self._drop_after_bulks -= 1
            item_fault = self._item_fault
        if not is_bulk:
            return self._forward(method, target, headers, body)
        return self._bulk(method, target, headers, body, item_fault)

    def _bulk(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, item_fault: _ItemFault | None
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        lines = [line for line in body.split(b"\n") if line.strip()]
        pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
        with self._lock:
            self.bulk_item_counts.append(len(pairs))
            refused_at: dict[int, dict[str, Any]] = {}
            if item_fault is not None:
                for position, (action_line, _source) in enumerate(pairs):
                    op, meta = next(iter(json.loads(action_line).items()))
                    if item_fault.applies(str(meta.get("_id"))):
                        reason = f"test proxy refuses this item with {item_fault.status}"
                        refused_at[position] = {
                            op: {
                                "_index": meta.get("_index"),
                                "_id": meta.get("_id"),
                                "status": item_fault.status,
                                "error": {"type": "injected_rejection", "reason": reason},
                            }
                        }
        if not refused_at:
            return self._forward(method, target, headers, body)
        kept = [pair for position, pair in enumerate(pairs) if position not in refused_at]
        forwarded: list[Any] = []
        response_headers = [("Content-Type", "application/json")]
        if kept:
            kept_body = b"".join(action + b"\n" + source + b"\n" for action, source in kept)
            answer = self._forward(method, target, headers, kept_body)
            if answer is None or answer[0] != 200:
                return answer
            forwarded = list(json.loads(answer[2])["items"])
            response_headers = answer[1]
        items = [refused_at[p] if p in refused_at else forwarded.pop(0) for p in range(len(pairs))]
        merged = json.dumps({"took": 1, "errors": True, "items": items}).encode()
        return 200, response_headers, merged

    def _forward(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        conn: http.client.HTTPConnection
        if self._upstream_https:
            context = ssl._create_unverified_context() if self._insecure else ssl.create_default_context()
            conn = http.client.HTTPSConnection(self._upstream_host, self._upstream_port, timeout=30, context=context)
        else:
            conn = http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=30)
        # Identity encoding, so bulk responses can be read and merged.
        send = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP | {"accept-encoding"}}
        try:
            conn.request(method, target, body=body or None, headers=send)
            response = conn.getresponse()
            payload = response.read()
        except OSError:
            return None
        finally:
            conn.close()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        return response.status, kept, payload


class _Relay(BaseHTTPRequestHandler):
    proxy: ClassVar[FaultProxy]
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.proxy.track(self.connection, True)

    def finish(self) -> None:
        self.proxy.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.proxy.handle(self.command, self.path, dict(self.headers.items()), body)
        if answer is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        status, headers, payload = answer
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay
