"""One bench run's processes and files: brokers, services, publishers and counters.

Everything started through a `Lab` is stopped by PID when the `with` block ends, in reverse
order, whatever happened inside it. Files live in a fresh temporary directory laid out as the
local fleet's (`saltmarsh.ops.localfleet.layout`), removed at the end unless `keep` is set (to
read logs after a failure).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from saltmarsh.ops.localfleet.configs import write_config
from saltmarsh.ops.localfleet.layout import Layout
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess, StopList, StoppableT
from saltmarsh.runtime.status import ServiceStatus, find_status


class Lab:
    def __init__(self, name: str, keep: bool = False) -> None:
        self.layout = Layout(Path(tempfile.mkdtemp(prefix=f"saltmarsh-bench-{name}-")))
        self.base = self.layout.base
        self.keep = keep
        self.status_dir = self.layout.status_dir
        self.logs = self.layout.logs_dir
        self._started = StopList()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close(failed=err is not None)

    def track(self, thing: StoppableT) -> StoppableT:
        return self._started.track(thing)

    def broker(self, name: str, **spec_args: object) -> Mosquitto:
        return self.track(Mosquitto.on_free_port(name, self.layout.brokers_dir, **spec_args)).start()

    def config(self, name: str, doc: Mapping[str, Any]) -> Path:
        return write_config(self.layout.config_path(name), doc)

    def service(self, name: str, module: str, config: Path) -> ServiceProcess:
        return self.track(ServiceProcess.service(name, module, config, self.layout.log_path(name))).start()

    def status(self, service: str, instance: str) -> ServiceStatus | None:
        return find_status(self.status_dir, service, instance)

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
        for thing, err in self._started.stop_all():
            print(f"    warning: stopping {thing!r} failed: {err!r}")
        if failed or self.keep:
            print(f"    files kept in {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
