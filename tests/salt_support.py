"""Running the saltmarsh formula with real Salt 3008: `salt-call --local` in a throwaway config dir.

Every call gets its own minion config (id, grains, file_roots = salt/states, pillar_roots = a
pillar tree), so a test picks which minion it is and which pillar it sees, and nothing touches
/etc/salt. Sandbox pillar overrides point `saltmarsh:root` at a temp dir and make the services
run as the current user, so applying states writes only under that dir.

For the daemons salt-factories starts: `EventRecorder` receives the events they forward (in place of
salt-factories' own listener), and `forwarded_logs` keeps the log records they forward to warnings.
"""

from __future__ import annotations

import fnmatch
import getpass
import grp
import json
import logging
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
STATES = REPO / "salt" / "states"
PILLAR = REPO / "pillar"
BIN = Path(sys.executable).parent
SALT_CALL = BIN / "salt-call"
CPUARCHES = ("armv6l", "armv7l", "aarch64", "x86_64")

# Which example minion plays which roles, and the sls trees each must render.
ROLE_MINIONS: dict[str, tuple[list[str], list[str]]] = {
    "sensor1": (["sensor"], ["saltmarsh.common", "saltmarsh.sensor", "saltmarsh.sensor.clean"]),
    "gw1": (["gateway"], ["saltmarsh.common", "saltmarsh.gateway", "saltmarsh.gateway.clean"]),
    "master": (
        ["cloud", "master"],
        ["saltmarsh", "saltmarsh.cloud", "saltmarsh.master", "saltmarsh.cloud.clean", "saltmarsh.master.clean"],
    ),
}


def current_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


def sandbox_pillar(root: Path, **extra: Any) -> dict[str, Any]:
    """Pillar that confines the formula to `root` and runs everything as the current user."""
    user, group = getpass.getuser(), current_group()
    settings: dict[str, Any] = {
        "root": str(root),
        "user": {"manage": False, "name": user, "group": group},
        # The project is already installed here, editable: the units run it from this venv.
        "install": {"enabled": False, "venv": str(BIN.parent)},
        "gateway": {"mosquitto": {"user": user, "group": group}},
        "master": {"manage_service": False},
    }
    return {"saltmarsh": _merge(settings, extra)}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class LocalMinion:
    """One `salt-call --local` identity: minion id, grains, and the pillar tree it reads."""

    base_dir: Path
    minion_id: str
    grains: dict[str, Any]
    pillar_root: Path = PILLAR
    opts: dict[str, Any] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.base_dir / "conf"

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "id": self.minion_id,
            "root_dir": str(self.base_dir / "root"),
            "file_client": "local",
            "file_roots": {"base": [str(STATES)]},
            "pillar_roots": {"base": [str(self.pillar_root)]},
            "grains": self.grains,
            "log_level": "error",
            "log_level_logfile": "error",
            **self.opts,
        }
        # JSON is YAML: no YAML emitter needed in the tests.
        (self.config_dir / "minion").write_text(json.dumps(config))

    def call(self, *args: str, pillar: Mapping[str, Any] | None = None, timeout_s: float = 120) -> Result:
        self.write_config()
        argv = [str(SALT_CALL), "--local", "--config-dir", str(self.config_dir), "--retcode-passthrough"]
        argv += ["--out", "json", *args]
        if pillar is not None:
            argv.append(f"pillar={json.dumps(pillar)}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        return Result(argv, done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Result:
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def data(self) -> Any:
        return json.loads(self.stdout)["local"] if self.stdout.strip() else None

    def explain(self) -> str:
        command = " ".join(self.argv)
        out, err = self.stdout[-4000:], self.stderr[-4000:]
        return f"$ {command}\nrc={self.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def grains_for(roles: list[str], cpuarch: str = "x86_64", site: str = "example") -> dict[str, Any]:
    return {"roles": roles, "site": site, "cpuarch": cpuarch, "os_family": "Debian"}


def failed_states(result: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(value.get("comment")) for key, value in result.items() if value.get("result") is False}


def changed_states(result: Mapping[str, Any]) -> list[str]:
    return sorted(key for key, value in result.items() if value.get("changes"))


def forwarded_logs(role: str, level: str = "warning") -> dict[str, Any]:
    """Config overrides for a daemon salt-factories starts (`role` is master or minion): which of its
    log records it forwards into the test process. salt-factories' default is every debug record."""
    return {f"pytest-{role}": {"log": {"level": level}}}


@dataclass(frozen=True)
class SaltEvent:
    """One event a daemon saw on its bus: `data` without Salt's `_` keys, `stamp` in epoch seconds."""

    daemon_id: str
    tag: str
    stamp: float
    data: dict[str, Any]


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            while chunk := self.request.recv(65536):
                unpacker.feed(chunk)
                for payload in unpacker:
                    if payload is None:  # the engine says goodbye
                        return
                    self.server.recorder.record(payload)
        except ConnectionError:
            return  # the daemon went away


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, recorder: EventRecorder) -> None:
        super().__init__(("127.0.0.1", 0), _Connection)
        self.recorder = recorder


class EventRecorder:
    """Every event the Salt daemons salt-factories starts forward to the test process, in arrival order.

    It takes the place of salt-factories' event listener (whose plugin pyproject turns off): that
    listener's expiry thread iterates its deque while the receiving thread appends to it, and under
    a flood of events that raises "deque mutated during iteration" in a thread, which pytest reports.
    Here one lock guards one list. salt-factories asks it for `host`, `port`, `get_events` (its start
    checks) and the auth handlers (a master accepting its minions' keys); each daemon's `pytest`
    engine connects and sends msgpack maps `{id, tag, data}`.
    """

    def __init__(self) -> None:
        self._events: list[SaltEvent] = []
        self._lock = threading.Lock()
        self._auth_handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._server = _Server(self)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="salt-events")

    def __enter__(self) -> EventRecorder:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def record(self, payload: dict[str, Any]) -> None:
        data = payload["data"]
        stamp = data.get("_stamp")
        event = SaltEvent(
            daemon_id=payload["id"],
            tag=payload["tag"],
            stamp=datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() if stamp else time.time(),
            data={key: value for key, value in data.items() if not key.startswith("_")},
        )
        with self._lock:
            self._events.append(event)
            on_auth = self._auth_handlers.get(event.daemon_id) if event.tag == "salt/auth" else None
        if on_auth is not None:
            try:
                on_auth(event.data)
            except Exception:  # its start check then names the minion that never came up
                logging.getLogger(__name__).exception("accepting %s failed", event.data.get("id"))

    def get_events(self, patterns: Sequence[tuple[str, str]], after_time: float | None = None) -> list[SaltEvent]:
        """The events seen by daemon `daemon_id` whose tag matches `tag_pattern` (fnmatch), fired at or
        after `after_time` (default: now), for each `(daemon_id, tag_pattern)` in `patterns`."""
        after = time.time() if after_time is None else after_time
        with self._lock:
            events = list(self._events)
        return [
            event
            for event in events
            if event.stamp >= after
            and any(event.daemon_id == daemon_id and fnmatch.fnmatch(event.tag, tag) for daemon_id, tag in patterns)
        ]

    def register_auth_event_handler(self, master_id: str, callback: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            self._auth_handlers[master_id] = callback

    def unregister_auth_event_handler(self, master_id: str) -> None:
        with self._lock:
            self._auth_handlers.pop(master_id, None)
