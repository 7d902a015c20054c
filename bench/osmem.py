"""osmem-server, the in-memory OpenSearch-API emulator the Elasticsearch benches write to.

It is an emulator, not Elasticsearch: it keeps documents in memory and fsyncs nothing, and its
own indexing speed bounds every figure measured against it. `Emulator.start` runs one on a free
loopback port and waits for the JSON line with its URL; `stop` ends it by PID. It also exits by
itself when this process disappears (`-parent-pid`), so a killed bench leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from dataclasses import dataclass
from importlib import metadata

import osmem_server  # type: ignore[import-untyped]
from elasticsearch import Elasticsearch

from saltmarsh.sinks.elasticsearch.plain import PlainJsonNode

READY_TIMEOUT_S = 30.0


def ready_url(line: str) -> str | None:
    """The URL from osmem-server's ready line (`{"url": "http://127.0.0.1:PORT", ...}`), else None."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if isinstance(message, dict) and isinstance(message.get("url"), str):
        return str(message["url"])
    return None


def version() -> str:
    """`osmem-server 0.1.6 (OpenSearch API 3.8.0)`, as the binary reports itself."""
    try:
        out = subprocess.run(
            [osmem_server.resolve_binary(), "-version"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def versions_line() -> str:
    """The client libraries and the emulator these figures were measured with."""
    libraries = []
    for package in ("elasticsearch", "elastic-transport"):
        try:
            libraries.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            libraries.append(f"{package} not installed")
    return f"{', '.join(libraries)}, {version()}"


@dataclass
class Emulator:
    process: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls) -> Emulator:
        args = [
            osmem_server.resolve_binary(),
            "-addr",
            "127.0.0.1:0",
            "-no-stdin-watch",
            "-no-ja",
            "-parent-pid",
            str(os.getpid()),
        ]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        urls: queue.Queue[str] = queue.Queue()

        def read_stdout() -> None:
            # Keeps draining after the ready line, so a chatty server never blocks on a full pipe.
            assert process.stdout is not None
            for line in process.stdout:
                url = ready_url(line)
                if url is not None:
                    urls.put(url)

        threading.Thread(target=read_stdout, name="osmem-stdout", daemon=True).start()
        try:
            url = urls.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            process.kill()
            process.wait()
            raise RuntimeError(f"osmem-server did not report ready within {READY_TIMEOUT_S:.0f} s") from None
        return cls(process, url)

    def client(self) -> Elasticsearch:
        """A plain client to the emulator, which refuses the client's vendor media types."""
        return Elasticsearch(self.url, node_class=PlainJsonNode, request_timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
