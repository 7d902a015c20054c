"""`saltmarsh-sensor --config sensor.toml`: wires driver -> agent -> spool -> sender, and the status file.

One device per process (`sensor.device`); a config with a `[swarm]` table runs many simulated
devices in this one process instead (`sensor.swarm`).

Stops on SIGTERM or SIGINT: no more readings, a few seconds to flush, "offline", a last status
write (after the last spool append, so the audit's `last_seq` is final), exit 0. A
`restart_agent` command stops it the same way, then exits `EXIT_RESTART` for the unit's
`Restart=on-failure` (sensor.commands).
"""

from __future__ import annotations

import logging
import threading

from saltmarsh.config import SensorConfig, load_sensor_config
from saltmarsh.contract.errors import ConfigError
from saltmarsh.runtime.daemon import serve
from sensor import swarm
from sensor.commands import EXIT_RESTART, command_inbox
from sensor.device import SERVICE, deliver, flush, open_device
from sensor.drivers import Driver, DriverError

log = logging.getLogger("sensor")

EXIT_OK = 0
EXIT_CANNOT_START = 2


def run(cfg: SensorConfig, stop: threading.Event | None = None, driver: Driver | None = None) -> int:
    """Run until stopped, or until `max_readings` are produced and delivered. Returns the exit code."""
    stop = stop or threading.Event()
    if cfg.swarm is not None:
        return swarm.run(cfg, stop)
    restarting = threading.Event()
    inbox = command_inbox(cfg, stop, restarting)
    device = open_device(cfg, stop, driver, inbox)
    backlog = device.spool.stats()
    log.info(
        "sensor starting",
        extra={
            "event": "started",
            "device": cfg.device,
            "site": cfg.site,
            "boot": device.boot,
            "driver": cfg.driver.type,
            "interval_s": cfg.interval_s,
            "backlog": backlog.depth_messages,
        },
    )
    try:
        device.start()
        if inbox is not None:
            inbox.start()
        device.agent.produce(stop)
        deliver([device], stop)
        flush([device])
    finally:
        if inbox is not None:
            inbox.close()
        final = device.close()
    log.info(
        "sensor stopped",
        extra={"event": "stopped", **{k: final[k] for k in ("boot", "last_seq", "acked_total", "spool_depth")}},
    )
    return EXIT_RESTART if restarting.is_set() else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return serve(
        prog="saltmarsh-sensor",
        service=SERVICE,
        description="Read a sensor (or run a swarm of simulated ones) and send to the gateway.",
        argv=argv,
        load=load_sensor_config,
        run=run,
        cannot_start=(ConfigError, DriverError),
    )
