"""One bench run's processes and files: brokers, services, publishers and counters.

Everything started through a `Lab` is stopped by PID when the `with` block ends, in reverse
order, whatever happened inside it. Files live in a fresh temporary directory, removed at the
end unless `keep` is set (to read logs after a failure).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import tomli_w

from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess
from saltmarsh.runtime.status import ServiceStatus, read_statuses


class Stoppable(Protocol):
    def stop(self) -> Any: ...


class Lab:
    def __init__(self, name: str, keep: bool = False) -> None:
        self.base = Path(tempfile.mkdtemp(prefix=f"saltmarsh-bench-{name}-"))
        self.keep = keep
        self.status_dir = self.base / "status"
        self.logs = self.base / "logs"
        self._started: list[Stoppable] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close(failed=err is not None)

    def track(self, thing: Stoppable) -> None:
        self._started.append(thing)

    def broker(self, name: str, **spec_args: object) -> Mosquitto:
        broker = Mosquitto.on_free_port(name, self.base / "brokers", **spec_args)
        self.track(broker)
        return broker.start()

    def config(self, name: str, doc: Mapping[str, Any]) -> Path:
        path = self.base / "etc" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(dict(doc)))
        return path

    def service(self, name: str, module: str, config: Path) -> ServiceProcess:
        process = ServiceProcess.python_module(name, module, ["--config", str(config)], self.logs / f"{name}.log")
        self.track(process)
        return process.start()

    def status(self, service: str, instance: str) -> ServiceStatus | None:
        return next((s for s in read_statuses(self.status_dir) if (s.service, s.instance) == (service, instance)), None)

    def wait_status(
        self,
        service: str,
        instance: str,
        ready: Callable[[Mapping[str, Any]], bool],
        timeout_s: float,
        alive: Callable[[], bool] = lambda: True,
    ) -> Mapping[str, Any]:
        """Poll a service's status file until `ready(counters)`; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(service, instance)
            if status is not None and ready(status.counters):
                return status.counters
            if not alive():
                raise RuntimeError(f"{service}-{instance} exited; see {self.logs}")
            time.sleep(0.05)
        raise TimeoutError(f"{service}-{instance} not ready within {timeout_s:.0f} s; see {self.logs}")

    def close(self, failed: bool = False) -> None:
        for thing in reversed(self._started):
            try:
                thing.stop()
            except Exception as err:  # keep stopping the rest
                print(f"    warning: stopping {thing!r} failed: {err!r}")
        self._started.clear()
        if failed or self.keep:
            print(f"    files kept in {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
