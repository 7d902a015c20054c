"""The command-line shell every long-running service shares: config, logs, signals, exit codes.

exit 0  stopped on SIGTERM/SIGINT after a clean shutdown
exit 1  the service failed while running (its log says why)
exit 2  it cannot start: bad config (the key is named on stderr), a config, secret or key file
        that is missing, unreadable, not UTF-8 or readable by others (the file is named), a
        state or status directory it cannot create, or missing hardware
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from saltmarsh.contract.errors import ConfigError, SaltmarshError
from saltmarsh.runtime import logs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANNOT_START = 2

ConfigT = TypeVar("ConfigT")
log = logging.getLogger(__name__)


def serve(
    *,
    prog: str,
    service: str,
    description: str,
    argv: list[str] | None,
    load: Callable[[Path], ConfigT],
    run: Callable[[ConfigT, threading.Event], int],
    cannot_start: tuple[type[SaltmarshError], ...] = (ConfigError,),
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, type=Path, help=f"the {service}'s TOML config")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    logs.setup(service, args.log_level)
    try:
        cfg = load(args.config)
        _check_directories(cfg, str(args.config))
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return EXIT_CANNOT_START
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", extra={"event": "stopping", "signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(cfg, stop)
    except cannot_start as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return EXIT_CANNOT_START


def _check_directories(cfg: object, source: str) -> None:
    """Say which state or status directory of the config cannot be used, before anything is touched.

    Without this a service would find out only when its spool or first status write fails, and die
    with a traceback and exit 1, as if it had failed while running. Nothing is created here: a
    missing directory is fine if the service can create it (its nearest existing parent is a
    writable directory).
    """
    for key in ("state_dir", "status_dir"):
        directory = getattr(cfg, key, None)
        if not isinstance(directory, Path):
            continue
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(key, f"cannot use {directory}: {existing} is not a directory", source)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(key, f"cannot use {directory}: {existing} is not writable by this user", source)
